"""The iCEBreaker (iCE40 UP5K) board core: the sequential NPU, the UP5K's single-port RAMs as its external
memory and private RAM, and the same UART host link as the ULX3S.

The UP5K has 5,280 LUT4, 30 block RAMs of 512 bytes and four 32 KiB single-port RAMs (SB_SPRAM256KA,
16 bits wide). Two of those, side by side, make a 32-bit 64 KiB memory: one pair is the sequential core's
RAM (buffers, run state, stack; :mod:`tessera.hdl.seq.core`), the other the NPU's external memory
(``dram_bytes`` = 64 KiB), which the host fills through the link. The firmware ROM is block RAM.

Outside a device build (``platform`` None, or not an iCE40) :func:`spram32` is an Amaranth memory with the
same port, so the Verilated board simulation runs this very system.
"""


from amaranth.hdl import Cat, ClockSignal, Const, Instance, Module, Signal, unsigned
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from tessera.arch import ConfigError, NpuConfig

from ..common import MemPortSignature, log2
from .protocol import BOARD_IDLE_SECONDS, DEFAULT_BAUD
from .system import LinkedNpu
from .uart import connect_uart_pins, divisor_for

__all__ = ["SPRAM_PAIR_BYTES", "IcebreakerCore", "OnChipMemory", "OnChipSystem", "is_ice40", "spram32"]

#: Bytes of one 32-bit memory made of two SB_SPRAM256KA.
SPRAM_PAIR_BYTES = 64 << 10


def is_ice40(platform) -> bool:
    from amaranth.vendor import SiliconBluePlatform
    return isinstance(platform, SiliconBluePlatform)


def spram32(m: Module, words: int, *, name: str, platform=None, what: str | None = None):
    """A 32-bit single-port RAM of ``words`` words: ``(addr, rdata, wdata, wstrb)``.

    ``rdata`` holds the word at the previous cycle's ``addr`` when that cycle did not write; a cycle with
    ``wstrb`` set writes those bytes. On an iCE40, two SB_SPRAM256KA (one per half word, nibble write
    masks); elsewhere an Amaranth memory. ``what`` names the memory in the error when it is too large.
    """
    if words > SPRAM_PAIR_BYTES // 4:
        raise ConfigError(f"{what or name}: {words * 4} bytes do not fit one pair of SB_SPRAM256KA "
                          f"({SPRAM_PAIR_BYTES} bytes)")
    ab = max(1, log2(1 << (words - 1).bit_length()))
    addr, rdata, wdata, wstrb = Signal(ab, name=f"{name}_addr"), Signal(32, name=f"{name}_rdata"), \
        Signal(32, name=f"{name}_wdata"), Signal(4, name=f"{name}_wstrb")
    if is_ice40(platform):
        for half in range(2):
            strb = wstrb[2 * half:2 * half + 2]
            m.submodules[f"{name}_spram{half}"] = Instance(
                "SB_SPRAM256KA",
                i_ADDRESS=addr,
                i_DATAIN=wdata[16 * half:16 * half + 16],
                # One mask bit per nibble: a byte's strobe enables its two.
                i_MASKWREN=Cat(strb[0], strb[0], strb[1], strb[1]),
                i_WREN=strb.any(), i_CHIPSELECT=Const(1), i_CLOCK=ClockSignal(),
                i_STANDBY=Const(0), i_SLEEP=Const(0), i_POWEROFF=Const(1),
                o_DATAOUT=rdata[16 * half:16 * half + 16])
        return addr, rdata, wdata, wstrb
    m.submodules[name] = mem = memory.Memory(shape=unsigned(32), depth=1 << ab, init=[])
    rd, wr = mem.read_port(), mem.write_port(granularity=8)
    m.d.comb += [rd.addr.eq(addr), wr.addr.eq(addr), wr.data.eq(wdata), wr.en.eq(wstrb), rdata.eq(rd.data)]
    return addr, rdata, wdata, wstrb


class OnChipMemory(wiring.Component):
    """The NPU memory port served by :func:`spram32` (``config.dram_bytes``, 4-byte beats).

    One access a cycle (the RAM has one port): a read is answered two cycles after it is accepted (the
    RAM's output, then a register), in order; when a read and a write both wait they take turns.
    """

    def __init__(self, config: NpuConfig):
        if config.bus_bytes != 4:
            raise ValueError(f"config {config.name!r}: on-chip memory serves 4-byte beats, not {config.bus_bytes}")
        self.config = config
        super().__init__({"bus": In(MemPortSignature(config))})

    def elaborate(self, platform):
        m = Module()
        c = self.config
        addr, rdata, wdata, wstrb = spram32(m, c.dram_bytes // 4, name="dram", platform=platform)
        bus = self.bus
        turn = Signal()   # 1: the write goes first when both wait
        take_wr = bus.wr_req.valid & (turn | ~bus.rd_req.valid)
        take_rd = bus.rd_req.valid & ~take_wr
        m.d.comb += [bus.wr_req.ready.eq(take_wr), bus.rd_req.ready.eq(take_rd)]
        with m.If(take_wr):
            m.d.comb += [addr.eq(bus.wr_req.payload.addr), wdata.eq(bus.wr_req.payload.data),
                         wstrb.eq(bus.wr_req.payload.strb)]
        with m.Else():
            m.d.comb += addr.eq(bus.rd_req.payload.addr)
        with m.If(bus.rd_req.valid & bus.wr_req.valid):
            m.d.sync += turn.eq(~take_wr)
        rd_valid, rd_id = Signal(), Signal()
        m.d.sync += [rd_valid.eq(take_rd), rd_id.eq(bus.rd_req.payload.id),
                     bus.rd_resp.valid.eq(rd_valid), bus.rd_resp.payload.id.eq(rd_id),
                     bus.rd_resp.payload.data.eq(rdata)]
        return m


class OnChipSystem(wiring.Component):
    """NPU + on-chip external memory + UART link, with plain ports for the pins (cf. :class:`.system.BoardSystem`).

    Parameters
    ----------
    config : NpuConfig
        ``dram_bytes`` must fit one SPRAM pair (64 KiB).
    divisor : int
        UART clock cycles per bit.
    idle_cycles : int
        Idle line time that ends a broken frame.
    """

    def __init__(self, config: NpuConfig, *, divisor: int, idle_cycles: int):
        if config.dram_bytes > SPRAM_PAIR_BYTES:
            raise ConfigError(f"config {config.name!r}: dram_bytes {config.dram_bytes} exceeds the "
                              f"{SPRAM_PAIR_BYTES}-byte on-chip memory")
        self.config, self.divisor, self.idle_cycles = config, divisor, idle_cycles
        super().__init__({"uart_rx": In(1, init=1), "uart_tx": Out(1, init=1), "led": Out(1)})

    @property
    def macs_per_cycle(self):
        return self.config.macs_per_cycle

    def elaborate(self, platform):
        m = Module()
        m.submodules.linked = linked = LinkedNpu(self.config, divisor=self.divisor, idle_cycles=self.idle_cycles)
        m.submodules.dram = dram = OnChipMemory(self.config)
        wiring.connect(m, linked.mem, dram.bus)
        m.d.comb += [linked.uart_rx.eq(self.uart_rx), self.uart_tx.eq(linked.uart_tx), self.led.eq(linked.led)]
        return m


class IcebreakerCore(wiring.Component):
    """:class:`OnChipSystem` on the iCEBreaker's pins (FTDI UART, LED); ``led`` lights when a run has ended.

    Parameters
    ----------
    config : NpuConfig
        A ``core="sequential"`` config with ``bus_bytes=4`` and at most 64 KiB of ``dram_bytes``; its
        ``clock_mhz`` is the core clock the PLL makes from 12 MHz.
    baud : int
        UART rate of the host link.
    """

    led: Out(1)

    def __init__(self, config: NpuConfig, *, baud: int = DEFAULT_BAUD):
        from .clocks import ice40_pll_setting
        self.clock_hz = ice40_pll_setting(12e6, config.clock_mhz * 1e6).fout_hz   # what BoardTop's PLL makes
        self.config, self.baud = config, baud
        self.system = OnChipSystem(config, divisor=divisor_for(self.clock_hz, baud),
                                   idle_cycles=int(self.clock_hz * BOARD_IDLE_SECONDS))
        super().__init__()

    @property
    def macs_per_cycle(self):
        return self.config.macs_per_cycle

    def description(self) -> str:
        return (f"Npu {self.config.rows}x{self.config.lanes} ({self.config.core}) + {self.config.dram_bytes >> 10} KiB "
                f"on-chip memory + UART link at {self.baud} baud")

    def elaborate(self, platform):
        m = Module()
        m.submodules.system = s = self.system
        m.d.comb += self.led.eq(s.led)
        if platform is None:
            return m
        connect_uart_pins(m, platform, s)
        return m
