"""Controller for a 16-bit SDR SDRAM (the ULX3S's 32 MiB) behind the NPU's memory port.

The controller serves :func:`tessera.hdl.common.MemPortSignature` (beat reads with in-order
responses, beat writes with byte strobes) one beat at a time: ACTIVE, then one or more bursts of
``bus_bytes / 2`` words in total with auto-precharge on the last, then a recovery wait. Every
access closes its row, so a refresh can always start between two beats. The pins are plain
signals here (commands active high); the board top puts them on I/O buffers (the pins are active
low), the simulation connects them to the behavioural model of :mod:`.sdram_model`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from tessera.arch import NpuConfig

from ..common import MemPortSignature, log2

__all__ = ["ULX3S_SDRAM", "SdramController", "SdramGeometry", "SdramPinsSignature", "SdramTiming"]


@dataclass(frozen=True)
class SdramGeometry:
    """Organization of a 16-bit SDR SDRAM: banks, row and column address bits."""
    banks: int = 4
    row_bits: int = 13
    col_bits: int = 9

    @property
    def bank_bits(self) -> int:
        return log2(self.banks)

    @property
    def nbytes(self) -> int:
        return self.banks << (self.row_bits + self.col_bits + 1)

    @property
    def addr_bits(self) -> int:
        """Width of the A pins (rows need row_bits; A10 selects auto-precharge in column commands)."""
        return max(self.row_bits, 11)


#: ULX3S v3: 32 MiB, 4 banks x 8192 rows x 512 columns x 16 bit (IS42S16160 / AS4C16M16 class).
ULX3S_SDRAM = SdramGeometry(banks=4, row_bits=13, col_bits=9)


@dataclass(frozen=True)
class SdramTiming:
    """Timing in clock cycles (:meth:`for_clock` derives them from data-sheet nanoseconds).

    ``init_wait``: power-up wait before the first command; ``refresh_interval``: cycles between
    AUTO REFRESH commands (64 ms / 8192 rows); ``init_refreshes``: AUTO REFRESH count of the
    initialization (8 satisfies both the 2 of ISSI and the 8 of Alliance parts).
    """
    cas_latency: int = 3
    t_rp: int = 2
    t_rcd: int = 2
    t_rfc: int = 7
    t_mrd: int = 2
    t_wr: int = 2
    t_ras: int = 5
    refresh_interval: int = 780
    init_wait: int = 20000
    init_refreshes: int = 8

    @classmethod
    def for_clock(cls, clock_hz: float, *, cas_latency: int = 3, t_rp_ns=20, t_rcd_ns=20, t_rfc_ns=70,
                  t_wr_ns=15, t_ras_ns=42, refresh_ns=7800, init_ns=200_000) -> SdramTiming:
        """Cycles at ``clock_hz`` from nanoseconds (defaults: -7 speed grade parts at up to 143 MHz)."""
        def cyc(ns):
            return max(1, math.ceil(ns * clock_hz / 1e9))
        return cls(cas_latency=cas_latency, t_rp=cyc(t_rp_ns), t_rcd=cyc(t_rcd_ns), t_rfc=cyc(t_rfc_ns),
                   t_mrd=2, t_wr=max(2, cyc(t_wr_ns)), t_ras=cyc(t_ras_ns),
                   refresh_interval=int(refresh_ns * clock_hz / 1e9), init_wait=cyc(init_ns))


def SdramPinsSignature(geometry: SdramGeometry) -> wiring.Signature:
    """The SDRAM's pins seen from the controller; ``cs``/``ras``/``cas``/``we`` are the asserted (active-high) levels."""
    return wiring.Signature({
        "clk_en": Out(1), "cs": Out(1), "ras": Out(1), "cas": Out(1), "we": Out(1),
        "ba": Out(geometry.bank_bits), "a": Out(geometry.addr_bits), "dqm": Out(2),
        "dq_o": Out(16), "dq_oe": Out(1), "dq_i": In(16),
    })


# Commands as (ras, cas, we) asserted levels.
_NOP = (0, 0, 0)
_ACTIVE = (1, 0, 0)
_READ = (0, 1, 0)
_WRITE = (0, 1, 1)
_PRECHARGE = (1, 0, 1)
_REFRESH = (1, 1, 0)
_MODE = (1, 1, 1)


class SdramController(wiring.Component):
    """The NPU's memory port on a 16-bit SDR SDRAM: initialization, refresh, bursts, byte strobes.

    Beat address ``b`` holds bytes ``b * bus_bytes ...``; the SDRAM word address is
    ``b * bus_bytes / 2 + i``, split (low to high) into column, bank and row, so consecutive beats
    walk through a row and then the next bank. Addresses beyond the SDRAM wrap around.

    Burst length is ``min(8, bus_bytes / 2)`` words, programmed in the mode register; a beat of
    more than 8 words is several bursts within one row. Outputs are registered; read data is
    registered once on entry and stored ``read_delay`` cycles after its READ command is decided
    (CAS latency + 2 for the two registers), which is right for the zero-delay simulation model
    and must be checked against the board's clock phase on hardware.

    A write is accepted only when the controller is idle and finishes before the next command,
    so a read accepted after it sees it. When a read and a write both wait they take turns.

    Parameters
    ----------
    config : NpuConfig
        ``bus_bytes`` (2 to 64, a power of two) sets the beat size.
    geometry : SdramGeometry
    timing : SdramTiming
    read_delay : int, optional
        Cycles from deciding a READ to storing its first word (default ``cas_latency + 2``).
    """

    def __init__(self, config: NpuConfig, geometry: SdramGeometry = ULX3S_SDRAM,
                 timing: SdramTiming = SdramTiming(), *, read_delay: int | None = None):
        bb = config.bus_bytes
        if bb < 2 or bb > 64:
            raise ValueError(f"bus_bytes={bb}: the SDRAM controller serves beats of 2 to 64 bytes")
        self.config, self.geometry, self.timing = config, geometry, timing
        self.words = bb // 2
        self.burst = min(8, self.words)
        if self.words > (1 << geometry.col_bits):
            raise ValueError(f"a beat of {self.words} words is longer than a row of {1 << geometry.col_bits}")
        if timing.t_rcd + 1 + self.words < timing.t_ras:
            raise ValueError(f"a {self.words}-word access ends before tRAS ({timing.t_ras} cycles)")
        self.read_delay = timing.cas_latency + 2 if read_delay is None else read_delay
        super().__init__({"bus": In(MemPortSignature(config)), "pins": Out(SdramPinsSignature(geometry)),
                          "init_done": Out(1)})

    def mode_register(self) -> int:
        """Mode register value: burst length code, sequential bursts, CAS latency, programmed-burst writes."""
        return log2(self.burst) | (self.timing.cas_latency << 4)

    def elaborate(self, platform):
        m = Module()
        g, t = self.geometry, self.timing
        bus, pins = self.bus, self.pins
        W, BL = self.words, self.burst
        nb = W // BL
        # Word address of the beat: beat * W; column, bank, row from its low bits upward.
        beat = Signal(len(bus.rd_req.payload.addr))
        word = Cat(Const(0, log2(W)), beat)
        col = word[:g.col_bits]
        bank = word[g.col_bits:g.col_bits + g.bank_bits]
        row = word[g.col_bits + g.bank_bits:g.col_bits + g.bank_bits + g.row_bits]
        is_write = Signal()
        wdata = Signal(8 * self.config.bus_bytes)
        wstrb = Signal(self.config.bus_bytes)
        rid = Signal()
        rdata = Signal(8 * self.config.bus_bytes)
        # The response's payload is the registers themselves (meaningful while valid): gated by the
        # state it was a LUT more between them and the masters' response registers.
        m.d.comb += [bus.rd_resp.payload.data.eq(rdata), bus.rd_resp.payload.id.eq(rid)]

        # Registered pins; every cycle sends NOP and releases the data bus unless a state says otherwise.
        cmd = Signal(3)
        a, ba, dqm, dq_o, dq_oe = Signal(g.addr_bits), Signal(g.bank_bits), Signal(2), Signal(16), Signal()
        dq_in = Signal(16)
        m.d.sync += dq_in.eq(pins.dq_i)
        m.d.comb += [pins.clk_en.eq(1), pins.cs.eq(1), Cat(pins.ras, pins.cas, pins.we).eq(cmd),
                     pins.a.eq(a), pins.ba.eq(ba), pins.dqm.eq(dqm), pins.dq_o.eq(dq_o), pins.dq_oe.eq(dq_oe)]
        m.d.sync += [cmd.eq(Cat(*_NOP)), dq_oe.eq(0), dqm.eq(0)]

        def issue(c, *, addr=None, bank_=None):
            m.d.sync += cmd.eq(Cat(*c))
            if addr is not None:
                m.d.sync += a.eq(addr)
            if bank_ is not None:
                m.d.sync += ba.eq(bank_)

        # Refresh timer: a refresh is owed every refresh_interval cycles.
        ref_timer = Signal(range(t.refresh_interval + 1), init=t.refresh_interval)
        ref_due, ref_ack = Signal(), Signal()
        m.d.sync += ref_timer.eq(Mux(ref_timer == 0, t.refresh_interval, ref_timer - 1))
        with m.If(ref_timer == 0):
            m.d.sync += ref_due.eq(1)  # an acknowledgement in the same cycle costs one extra refresh, not one lost
        with m.Elif(ref_ack):
            m.d.sync += ref_due.eq(0)

        # After the last data in, auto-precharge needs tWR + tRP before the next ACTIVE or REFRESH
        # (tDAL); a read's precharge is over before its last word has been stored.
        recover = t.t_wr + t.t_rp
        wait = Signal(range(max(t.init_wait, t.t_rfc, t.t_rcd, t.t_mrd, t.t_rp, recover) + 1))
        count = Signal(range(max(t.init_refreshes, W + self.read_delay) + 1))
        turn = Signal()  # 1: a waiting write goes before a waiting read

        with m.FSM(init="INIT_WAIT"):
            with m.State("INIT_WAIT"):
                m.d.sync += wait.eq(wait + 1)
                with m.If(wait == t.init_wait - 1):
                    issue(_PRECHARGE, addr=1 << 10)  # A10: all banks
                    m.d.sync += wait.eq(0)
                    m.next = "INIT_PRECHARGE"
            with m.State("INIT_PRECHARGE"):
                m.d.sync += wait.eq(wait + 1)
                with m.If(wait == t.t_rp - 1):
                    m.d.sync += [wait.eq(0), count.eq(0)]
                    m.next = "INIT_REFRESH"
            with m.State("INIT_REFRESH"):
                with m.If(wait == 0):
                    issue(_REFRESH)
                m.d.sync += wait.eq(wait + 1)
                with m.If(wait == t.t_rfc - 1):
                    m.d.sync += [wait.eq(0), count.eq(count + 1)]
                    with m.If(count == t.init_refreshes - 1):
                        m.next = "INIT_MODE"
            with m.State("INIT_MODE"):
                with m.If(wait == 0):
                    issue(_MODE, addr=self.mode_register(), bank_=0)
                m.d.sync += wait.eq(wait + 1)
                with m.If(wait == t.t_mrd):
                    m.d.sync += wait.eq(0)
                    m.next = "IDLE"

            with m.State("IDLE"):
                m.d.comb += self.init_done.eq(1)
                # The write's data and strobes load in every idle cycle (a taken write's are the last), so
                # their enable is the state's, not the request's valid (docs/synthesis.md, session 21).
                m.d.sync += [wdata.eq(bus.wr_req.payload.data), wstrb.eq(bus.wr_req.payload.strb)]
                take_wr = bus.wr_req.valid & (turn | ~bus.rd_req.valid)
                with m.If(ref_due):
                    issue(_REFRESH)
                    m.d.comb += ref_ack.eq(1)
                    m.d.sync += wait.eq(0)
                    m.next = "REFRESH"
                with m.Elif(take_wr):
                    m.d.comb += bus.wr_req.ready.eq(1)
                    m.d.sync += [beat.eq(bus.wr_req.payload.addr), is_write.eq(1), turn.eq(0)]
                    m.next = "ACTIVATE"
                with m.Elif(bus.rd_req.valid):
                    m.d.comb += bus.rd_req.ready.eq(1)
                    m.d.sync += [beat.eq(bus.rd_req.payload.addr), rid.eq(bus.rd_req.payload.id),
                                 is_write.eq(0), turn.eq(1)]
                    m.next = "ACTIVATE"
            with m.State("REFRESH"):
                m.d.sync += wait.eq(wait + 1)
                with m.If(wait == t.t_rfc - 1):
                    m.next = "IDLE"
            with m.State("ACTIVATE"):
                issue(_ACTIVE, addr=row, bank_=bank)
                m.d.sync += wait.eq(0)
                m.next = "RCD"
            with m.State("RCD"):
                m.d.sync += wait.eq(wait + 1)
                with m.If(wait == t.t_rcd - 1):
                    m.d.sync += [wait.eq(0), count.eq(0)]
                    with m.If(is_write):
                        m.next = "WRITE"
                    with m.Else():
                        m.next = "READ"
            with m.State("WRITE"):
                # One word per cycle; a WRITE command starts each burst, the last with auto-precharge.
                with m.Switch(count):
                    for i in range(W):
                        with m.Case(i):
                            m.d.sync += [dq_o.eq(wdata[16 * i:16 * i + 16]), dq_oe.eq(1),
                                         dqm.eq(~wstrb[2 * i:2 * i + 2])]
                            if i % BL == 0:
                                ap = int(i // BL == nb - 1) << 10
                                issue(_WRITE, addr=(col + i)[:g.col_bits] | ap, bank_=bank)
                m.d.sync += count.eq(count + 1)
                with m.If(count == W - 1):
                    m.d.sync += wait.eq(0)
                    m.next = "RECOVER"
            with m.State("READ"):
                # READ commands at word 0, BL, 2BL, ...; word j is stored read_delay cycles after its
                # command was decided (count == j + read_delay).
                for b in range(nb):
                    with m.If(count == b * BL):
                        ap = int(b == nb - 1) << 10
                        issue(_READ, addr=(col + b * BL)[:g.col_bits] | ap, bank_=bank)
                with m.Switch(count):
                    for j in range(W):
                        with m.Case(j + self.read_delay):
                            m.d.sync += rdata[16 * j:16 * j + 16].eq(dq_in)
                m.d.sync += count.eq(count + 1)
                with m.If(count == W - 1 + self.read_delay):
                    m.next = "RESPOND"
            with m.State("RESPOND"):
                m.d.comb += bus.rd_resp.valid.eq(1)
                m.next = "IDLE"
            with m.State("RECOVER"):
                m.d.sync += wait.eq(wait + 1)
                with m.If(wait == recover - 1):
                    m.next = "IDLE"
        return m
