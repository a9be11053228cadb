"""The ULX3S-85F board core: :class:`.system.BoardSystem` on the board's SDRAM and USB serial pins.

:class:`.top.BoardTop` adds the PLL and reset; this core requests the ``uart`` (FTDI FT231X) and
``sdram`` resources of amaranth-boards' ``ULX3S_85F_Platform`` itself. The SDRAM clock is the core
clock through a DDR output flop (same phase as the simulation model assumes: the SDRAM samples a
command one cycle after it leaves its register, and read data is stored CAS latency + 2 cycles after
the READ is decided). The I/O timing of that choice is not measured on hardware yet: if reads fail
on a board, a phase-shifted SDRAM clock (second PLL output) and a matching ``read_delay`` are the
knobs. The NPU core's reset travels on a global clock network (:func:`.clocks.ecp5_global`).
"""

from amaranth.hdl import Module
from amaranth.lib import io, wiring
from amaranth.lib.wiring import Out

from tessera.arch import NpuConfig

from .clocks import ecp5_global, ecp5_pll_setting
from .protocol import BOARD_IDLE_SECONDS, DEFAULT_BAUD
from .sdram import ULX3S_SDRAM, SdramGeometry, SdramTiming
from .system import BoardSystem
from .uart import connect_uart_pins, divisor_for

__all__ = ["Ulx3sCore"]


class Ulx3sCore(wiring.Component):
    """NPU + SDRAM controller + UART link on the ULX3S pins; ``led`` lights when a run has ended.

    Parameters
    ----------
    config : NpuConfig
        The NPU; its ``clock_mhz`` is the core clock the PLL makes from 25 MHz.
    baud : int
        UART rate of the host link.
    geometry : SdramGeometry
        The board's SDRAM (32 MiB on ULX3S v3).
    """

    led: Out(1)

    def __init__(self, config: NpuConfig, *, baud: int = DEFAULT_BAUD, geometry: SdramGeometry = ULX3S_SDRAM):
        self.clock_hz = ecp5_pll_setting(25e6, config.clock_mhz * 1e6).fout_hz  # what BoardTop's PLL makes
        self.config, self.baud = config, baud
        self.system = BoardSystem(config, divisor=divisor_for(self.clock_hz, baud),
                                  idle_cycles=int(self.clock_hz * BOARD_IDLE_SECONDS), geometry=geometry,
                                  timing=SdramTiming.for_clock(self.clock_hz), reset_buffer=ecp5_global)
        super().__init__()

    @property
    def macs_per_cycle(self):
        return self.config.macs_per_cycle

    def description(self) -> str:
        g = self.system.geometry
        return (f"Npu {self.config.rows}x{self.config.lanes} + SDRAM controller ({g.nbytes >> 20} MiB) + UART link "
                f"at {self.baud} baud")

    def elaborate(self, platform):
        m = Module()
        m.submodules.system = s = self.system
        m.d.comb += self.led.eq(s.led)
        if platform is None:
            return m  # elaborated alone (tests): no pins
        connect_uart_pins(m, platform, s)

        pins = platform.request("sdram", 0, dir="-")
        m.submodules.sdram_clk = clk = io.DDRBuffer("o", pins.clk)
        m.d.comb += [clk.o[0].eq(1), clk.o[1].eq(0)]
        sd = s.sdram
        for name in ("clk_en", "cs", "ras", "cas", "we", "ba", "a", "dqm"):
            buf = io.Buffer("o", getattr(pins, name))
            m.submodules[f"sdram_{name}"] = buf
            m.d.comb += buf.o.eq(getattr(sd, name))
        m.submodules.sdram_dq = dq = io.Buffer("io", pins.dq)
        m.d.comb += [dq.o.eq(sd.dq_o), dq.oe.eq(sd.dq_oe), sd.dq_i.eq(dq.i)]
        return m
