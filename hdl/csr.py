"""The host's CSR block: start/stop, status, error code and pc, counters, watchdog."""


from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from tessera.arch import NpuConfig
from tessera.isa import Csr, ErrorCode, Status, Unit

from .common import ADDR_BITS, delay

__all__ = ["CTRL_RESET", "CTRL_START", "CsrBlock", "CsrSignature"]

CTRL_START = 1
CTRL_RESET = 2


def CsrSignature() -> wiring.Signature:
    """Word-addressed 32-bit register bus (host's side is the flipped one); reads are combinational."""
    return wiring.Signature({"addr": Out(Csr), "wdata": Out(32), "we": Out(1), "rdata": In(32)})


class CsrBlock(wiring.Component):
    """Registers of :class:`tessera.isa.Csr` and the run state machine.

    The core is held in reset (``core_rst``) except while running. A finished
    or failed run drains the memory reads still in flight (``reads_idle``)
    before STATUS shows DONE, so a new run never sees an old answer.
    ``cycles`` is the CYCLES counter (cycles since the run started).

    With ``timing_stages`` the block takes its inputs from registers of its own: a bus write takes
    effect a cycle later (reads stay combinational), the units' per-cycle ``mac``, ``stall`` and
    ``progress`` are counted a cycle later (every cycle of a run still counts once: the last one in
    the first cycle of the drain), and the watchdog's verdict is registered, so it fires a cycle
    later. The counters' enables and the start decode then begin at flip-flops beside them: from
    the units and the host link across the die they were 350 late endpoints of the routed NPU
    (docs/synthesis.md, session 20).
    """

    bus: In(CsrSignature())
    core_rst: Out(1)
    prog_addr: Out(ADDR_BITS)
    irq: Out(1)
    done: Out(1)
    core_done: In(1)
    core_err: In(1)
    core_err_code: In(ErrorCode)
    core_err_pc: In(ADDR_BITS)
    oldest_pc: In(ADDR_BITS)
    progress: In(1)
    mac: In(1)
    stall: In(len(Unit))
    reads_idle: In(1)
    cycles: Out(64)

    def __init__(self, config: NpuConfig):
        self.config = config
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        c = self.config
        regs = {r: Signal(32, name=r.name.lower()) for r in (Csr.ERROR, Csr.ERROR_PC, Csr.IRQ_ENABLE, Csr.WATCHDOG)}
        cycles, macs = self.cycles, Signal(64)
        stalls = [Signal(32, name=f"stall_{u.name.lower()}") for u in Unit]
        done_f, err_f = Signal(), Signal()
        wd = Signal(32)
        state_run, state_drain = Signal(), Signal()
        busy = state_run | state_drain
        m.d.comb += [self.core_rst.eq(~state_run), self.done.eq(~busy & (done_f | err_f)),
                     self.irq.eq(regs[Csr.IRQ_ENABLE][0] & self.done)]

        hash32 = int(c.hash(), 16) & 0xFFFFFFFF
        status = Signal(3)
        m.d.comb += status.eq(Mux(busy, Status.BUSY.value, 0) | Mux(~busy & (done_f | err_f), Status.DONE.value, 0)
                              | Mux(~busy & err_f, Status.ERROR.value, 0))
        with m.Switch(self.bus.addr):
            for r, s in {Csr.STATUS: status, Csr.ERROR: regs[Csr.ERROR], Csr.ERROR_PC: regs[Csr.ERROR_PC],
                         Csr.PROG_ADDR: self.prog_addr, Csr.CYCLES_LO: cycles[:32], Csr.CYCLES_HI: cycles[32:],
                         Csr.STALL_LOAD: stalls[0], Csr.STALL_COMPUTE: stalls[1], Csr.STALL_POST: stalls[2],
                         Csr.STALL_STORE: stalls[3], Csr.IRQ_ENABLE: regs[Csr.IRQ_ENABLE],
                         Csr.WATCHDOG: regs[Csr.WATCHDOG], Csr.MACS_LO: macs[:32], Csr.MACS_HI: macs[32:],
                         Csr.CONFIG_HASH: hash32}.items():
                with m.Case(r):
                    m.d.comb += self.bus.rdata.eq(s)

        timed = c.timing_stages

        def late(v, name):
            return delay(m, v, 1 if timed else 0, name)

        we, addr, wdata = late(self.bus.we, "bus_we"), late(self.bus.addr, "bus_addr"), late(self.bus.wdata, "bus_wdata")
        with m.If(we), m.Switch(addr):
            with m.Case(Csr.PROG_ADDR), m.If(~busy):
                m.d.sync += self.prog_addr.eq(wdata)
            with m.Case(Csr.IRQ_ENABLE):
                m.d.sync += regs[Csr.IRQ_ENABLE].eq(wdata)
            with m.Case(Csr.WATCHDOG):
                m.d.sync += regs[Csr.WATCHDOG].eq(wdata)

        # The CTRL commands are decoded before that register (with timing_stages): the 32-bit compare
        # after it ran on through ``start`` into every counter's clear (docs/synthesis.md, session 22).
        ctrl = self.bus.we & (self.bus.addr == Csr.CTRL)
        start = late(ctrl & (self.bus.wdata == CTRL_START), "ctrl_start") & ~busy
        soft_reset = late(ctrl & (self.bus.wdata == CTRL_RESET), "ctrl_reset")
        # The counters count a run's cycles (as `counting` says) from registers of the units' inputs.
        counting, mac, stall, progress = (late(state_run, "run"), late(self.mac, "mac"), late(self.stall, "stall"),
                                          late(self.progress, "progress"))
        expired = Signal()
        m.d.comb += expired.eq((regs[Csr.WATCHDOG] != 0) & (wd >= regs[Csr.WATCHDOG]) & (wd >= c.pc_stages))
        if timed:
            expired_r = Signal()
            m.d.sync += expired_r.eq(expired & ~start)
            expired = expired_r

        def fail(code, pc):
            m.d.sync += [regs[Csr.ERROR].eq(code), regs[Csr.ERROR_PC].eq(pc), err_f.eq(1),
                         state_run.eq(0), state_drain.eq(1)]

        with m.If(start):
            m.d.sync += [macs.eq(0), wd.eq(0)]
            m.d.sync += [s.eq(0) for s in stalls]
        with m.Elif(counting):
            m.d.sync += [macs.eq(macs + Mux(mac, c.macs_per_cycle, 0)), wd.eq(Mux(progress, 0, wd + 1))]
            m.d.sync += [s.eq(s + stall[i]) for i, s in enumerate(stalls)]
        with m.If(start):
            m.d.sync += [state_run.eq(1), done_f.eq(0), err_f.eq(0), regs[Csr.ERROR].eq(0),
                         regs[Csr.ERROR_PC].eq(0), cycles.eq(0)]
        with m.Elif(state_run):
            m.d.sync += cycles.eq(cycles + 1)
            with m.If(soft_reset):
                m.d.sync += [state_run.eq(0), state_drain.eq(1)]
            with m.Elif(self.core_err):
                fail(self.core_err_code.as_value(), self.core_err_pc)
            # oldest_pc lags pc_stages cycles (hdl/dispatch.py): it names the stalled instruction only
            # after that many cycles without progress.
            with m.Elif(expired):
                fail(ErrorCode.WATCHDOG.value, self.oldest_pc)
            with m.Elif(self.core_done):
                m.d.sync += [done_f.eq(1), state_run.eq(0), state_drain.eq(1)]
        with m.Elif(state_drain & self.reads_idle):
            m.d.sync += state_drain.eq(0)
        return m
