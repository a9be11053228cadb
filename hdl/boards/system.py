"""The board system: NPU, SDRAM controller, UART host link, and the arbiter between them.

:class:`BoardSystem` is everything of the ULX3S board top except the clock/reset generation and
the I/O buffers, so the same design runs in the RTL simulation (with :mod:`.sdram_model`) and on
the board (:class:`.ulx3s.Ulx3sTop` puts its ports on the FPGA's pins)::

    uart_rx ─▶ UartRx ─▶ FIFO ─▶ Link ─▶ UartTx ─▶ uart_tx
                                  │ csr ─▶ Npu ─ mem ─┐
                                  └─ mem ─▶ MemArbiter ─▶ RequestRegister ─▶ SdramController ─▶ sdram pins
"""

from __future__ import annotations

from amaranth.hdl import Module
from amaranth.lib import fifo, wiring
from amaranth.lib.wiring import In, Out

from tessera.arch import ConfigError, NpuConfig

from ..common import MemPortSignature
from ..npu import Npu
from .link import Link, MemArbiter, RequestRegister
from .sdram import (
    ULX3S_SDRAM,
    SdramController,
    SdramGeometry,
    SdramPinsSignature,
    SdramTiming,
)
from .uart import UartRx, UartTx

__all__ = ["BoardSystem", "LinkedNpu"]


class LinkedNpu(wiring.Component):
    """The NPU, the UART host link and the arbiter that lets either use the memory port ``mem``.

    Every board system is this plus a memory behind ``mem``: :class:`BoardSystem` (the ULX3S's SDRAM)
    and :class:`.ice40.OnChipSystem` (the iCEBreaker's single-port RAMs).

    Parameters
    ----------
    config : NpuConfig
    divisor : int
        UART clock cycles per bit.
    idle_cycles : int
        Idle line time that ends a broken frame (see :class:`.link.Link`).
    reset_buffer : callable, optional
        How the NPU core's reset reaches its flip-flops on the device (see :class:`~tessera.hdl.npu.Npu`).
    """

    def __init__(self, config: NpuConfig, *, divisor: int, idle_cycles: int, reset_buffer=None):
        self.config, self.divisor, self.idle_cycles, self.reset_buffer = config, divisor, idle_cycles, reset_buffer
        super().__init__({"uart_rx": In(1, init=1), "uart_tx": Out(1, init=1), "led": Out(1),
                          "mem": Out(MemPortSignature(config))})

    def elaborate(self, platform):
        m = Module()
        c = self.config
        m.submodules.npu = npu = Npu(c, reset_buffer=self.reset_buffer)
        m.submodules.arbiter = arb = MemArbiter(c)
        m.submodules.link = link = Link(c, idle_cycles=self.idle_cycles)
        m.submodules.uart_rx = urx = UartRx(self.divisor)
        m.submodules.uart_tx = utx = UartTx(self.divisor)
        m.submodules.rx_fifo = rxf = fifo.SyncFIFOBuffered(width=8, depth=16)

        m.d.comb += [urx.rx.eq(self.uart_rx), self.uart_tx.eq(utx.tx)]
        wiring.connect(m, urx.o_stream, rxf.w_stream)
        wiring.connect(m, rxf.r_stream, link.i_stream)
        wiring.connect(m, link.o_stream, utx.i_stream)
        wiring.connect(m, link.csr, npu.csr)
        wiring.connect(m, npu.mem, arb.npu)
        wiring.connect(m, link.mem, arb.link)
        wiring.connect(m, arb.out, wiring.flipped(self.mem))
        m.d.comb += arb.sel_link.eq(link.mem_active)
        m.d.comb += self.led.eq(npu.done)
        return m


class BoardSystem(wiring.Component):
    """NPU + SDRAM + UART link, with plain ports for the pins.

    Parameters
    ----------
    config : NpuConfig
        The NPU; ``dram_bytes`` must fit the SDRAM (the link refuses addresses beyond it).
    divisor : int
        UART clock cycles per bit.
    idle_cycles : int
        Idle line time that ends a broken frame (see :class:`.link.Link`).
    geometry, timing : SdramGeometry, SdramTiming
        The SDRAM device and its timing in clock cycles.
    read_delay : int, optional
        SDRAM read capture delay (see :class:`.sdram.SdramController`).
    reset_buffer : callable, optional
        How the NPU core's reset reaches its flip-flops on the device (see :class:`~tessera.hdl.npu.Npu`).
    """

    def __init__(self, config: NpuConfig, *, divisor: int, idle_cycles: int,
                 geometry: SdramGeometry = ULX3S_SDRAM, timing: SdramTiming | None = None,
                 read_delay: int | None = None, reset_buffer=None):
        if config.dram_bytes > geometry.nbytes:
            raise ConfigError(f"config {config.name!r}: dram_bytes {config.dram_bytes} exceeds the "
                              f"{geometry.nbytes}-byte SDRAM")
        self.config, self.divisor, self.idle_cycles = config, divisor, idle_cycles
        self.geometry, self.timing, self.read_delay = geometry, timing or SdramTiming(), read_delay
        self.reset_buffer = reset_buffer
        super().__init__({"uart_rx": In(1, init=1), "uart_tx": Out(1, init=1), "led": Out(1),
                          "sdram": Out(SdramPinsSignature(geometry))})

    @property
    def macs_per_cycle(self):
        return self.config.macs_per_cycle

    def elaborate(self, platform):
        m = Module()
        c = self.config
        m.submodules.linked = linked = LinkedNpu(c, divisor=self.divisor, idle_cycles=self.idle_cycles,
                                                 reset_buffer=self.reset_buffer)
        m.submodules.sdram_ctl = ctl = SdramController(c, self.geometry, self.timing, read_delay=self.read_delay)
        m.submodules.req_reg = req = RequestRegister(c)
        wiring.connect(m, linked.mem, req.up)
        wiring.connect(m, req.down, ctl.bus)
        wiring.connect(m, ctl.pins, wiring.flipped(self.sdram))
        m.d.comb += [linked.uart_rx.eq(self.uart_rx), self.uart_tx.eq(linked.uart_tx), self.led.eq(linked.led)]
        return m
