"""cocotb bench of hdl/csr.py (the host's CSR block: run state, error latch, counters, watchdog, irq).

A host agent writes the test's register operations and otherwise reads a
random register every cycle; a core agent drives random MAC issue, unit
stalls and progress, and the run's end (done, a fault) when the test asks.
:class:`CsrSpec` is the register map of tessera.isa.Csr and docs/hardware.md
as a cycle-level Python model; every output and every read must equal it.
Under ``TB_BACKPRESSURE`` the memory reads of a stopped run drain slowly
(``reads_idle`` mostly low) and progress is rarer. With ``timing_stages`` the spec takes the bus
write, the counted inputs and the watchdog's verdict a cycle late, as the block does.
"""

import cocotb
from tb import TB, Ports, config

from tessera.isa import Csr, ErrorCode, Status, Unit

CTRL_START, CTRL_RESET = 1, 2
M32 = 0xFFFFFFFF


class CsrSpec:
    """The CSR block's documented behaviour, one clock cycle per :meth:`step`."""

    def __init__(self, c):
        self.c = c
        self.run = self.drain = self.done_f = self.err_f = False
        self.error = self.error_pc = self.prog_addr = self.irq_en = self.watchdog = 0
        self.cycles = self.macs = self.idle_cycles = 0
        self.stalls = [0] * len(Unit)
        # timing_stages: the bus write, the units' counted inputs, the run for counting and the
        # watchdog's verdict, each a cycle late.
        self.host_r, self.core_r, self.run_r, self.expired_r = (0, Csr.CTRL, 0), None, False, False

    @property
    def busy(self):
        return self.run or self.drain

    def outputs(self):
        finished = not self.busy and (self.done_f or self.err_f)
        return {"core_rst": int(not self.run), "prog_addr": self.prog_addr, "done": int(finished),
                "irq": int(bool(self.irq_en & 1) and finished)}

    def read(self, reg: Csr) -> int:
        finished = not self.busy and (self.done_f or self.err_f)
        status = ((Status.BUSY.value if self.busy else 0) | (Status.DONE.value if finished else 0)
                  | (Status.ERROR.value if finished and self.err_f else 0))
        return {Csr.CTRL: 0, Csr.STATUS: status, Csr.ERROR: self.error, Csr.ERROR_PC: self.error_pc,
                Csr.PROG_ADDR: self.prog_addr, Csr.CYCLES_LO: self.cycles & M32, Csr.CYCLES_HI: self.cycles >> 32,
                **{Csr[f"STALL_{u.name}"]: self.stalls[u.value] & M32 for u in Unit},
                Csr.IRQ_ENABLE: self.irq_en, Csr.WATCHDOG: self.watchdog, Csr.MACS_LO: self.macs & M32,
                Csr.MACS_HI: self.macs >> 32, Csr.CONFIG_HASH: int(self.c.hash(), 16) & M32}[reg]

    def step(self, we, reg, wdata, core):
        if self.c.timing_stages:
            (we, reg, wdata), self.host_r = self.host_r, (we, reg, wdata)
            counted, self.core_r = self.core_r, core
            counting, self.run_r = self.run_r, self.run
        else:
            counted, counting = core, self.run
        busy = self.busy
        expiring = bool(self.watchdog) and self.idle_cycles >= self.watchdog and self.idle_cycles >= self.c.pc_stages
        expired = self.expired_r if self.c.timing_stages else expiring
        if we:
            if reg == Csr.PROG_ADDR and not busy:
                self.prog_addr = wdata
            elif reg == Csr.IRQ_ENABLE:
                self.irq_en = wdata
            elif reg == Csr.WATCHDOG:
                self.watchdog = wdata
        start = we and reg == Csr.CTRL and wdata == CTRL_START and not busy
        soft = we and reg == Csr.CTRL and wdata == CTRL_RESET
        self.expired_r = expiring and not start
        if start:
            self.macs = self.idle_cycles = 0
            self.stalls = [0] * len(Unit)
        elif counting:
            self.macs += self.c.macs_per_cycle * counted["mac"]
            self.stalls = [s + (counted["stall"] >> u.value & 1) for u, s in zip(Unit, self.stalls)]
            self.idle_cycles = 0 if counted["progress"] else self.idle_cycles + 1
        if start:
            self.run, self.done_f, self.err_f = True, False, False
            self.error = self.error_pc = self.cycles = 0
        elif self.run:
            self.cycles += 1
            if soft:
                self.run, self.drain = False, True
            elif core["err"]:
                self.fail(core["err_code"], core["err_pc"])
            elif expired:
                self.fail(ErrorCode.WATCHDOG.value, core["oldest_pc"])
            elif core["done"]:
                self.run, self.drain, self.done_f = False, True, True
        elif self.drain and core["reads_idle"]:
            self.drain = False

    def fail(self, code, pc):
        self.error, self.error_pc, self.err_f = code, pc, True
        self.run, self.drain = False, True


class CsrBench:
    """Host and core agents around the CSR block, checked against :class:`CsrSpec` every cycle."""

    def __init__(self, dut):
        self.c = config()
        self.dut = Ports(dut, "csr_")
        self.tb = TB(dut)
        self.spec = CsrSpec(self.c)
        self.ops = []                     # host writes to come, one per cycle
        self.p_progress = 0.3 if self.tb.backpressure else 0.8
        self.p_idle = 0.2 if self.tb.backpressure else 1.0
        self.end = None                   # "done" or (code, pc): driven while the core is running
        self.seen = set()
        self.tb.add(self)

    def write(self, reg: Csr, value: int):
        self.ops.append((reg, value))

    def drive(self):
        d, rng = self.dut, self.tb.rng
        if self.ops:
            reg, wdata = self.ops.pop(0)
            self.host = (1, reg, wdata)
        else:
            self.host = (0, Csr(rng.randrange(len(Csr))), rng.getrandbits(32))
        we, reg, wdata = self.host
        d.bus__we.value, d.bus__addr.value, d.bus__wdata.value = we, reg.value, wdata
        end = self.end if self.spec.run else None
        self.core = {"mac": int(rng.random() < 0.5), "stall": rng.getrandbits(len(Unit)),
                     "progress": int(rng.random() < self.p_progress), "done": int(end == "done"),
                     "err": int(isinstance(end, tuple)), "err_code": end[0] if isinstance(end, tuple) else 0,
                     "err_pc": end[1] if isinstance(end, tuple) else rng.getrandbits(32),
                     "oldest_pc": rng.getrandbits(32), "reads_idle": int(rng.random() < self.p_idle)}
        for k in ("mac", "stall", "progress", "oldest_pc", "reads_idle"):
            getattr(d, k).value = self.core[k]
        d.core_done.value, d.core_err.value = self.core["done"], self.core["err"]
        d.core_err_code.value, d.core_err_pc.value = self.core["err_code"], self.core["err_pc"]

    def sample(self):
        d = self.dut
        for k, v in self.spec.outputs().items():
            assert int(getattr(d, k).value) == v, f"cycle {self.tb.cycle}: {k}={int(getattr(d, k).value)}, spec {v}"
        we, reg, wdata = self.host
        got, want = int(d.bus__rdata.value), self.spec.read(reg)
        assert got == want, f"cycle {self.tb.cycle}: {reg.name} reads 0x{got:x}, spec 0x{want:x}"
        self.seen.add(self.spec.read(Csr.STATUS))
        self.spec.step(we, reg, wdata, self.core)

    async def cycles(self, n):
        for _ in range(n):
            await self.tb.step()

    async def finish_run(self, limit=400):
        await self.tb.until(lambda: not self.spec.busy, limit, "the run to end")
        await self.cycles(5)


@cocotb.test()
async def csr_runs_count_and_finish(dut):
    b = CsrBench(dut)
    rng = b.tb.rng
    await b.tb.reset()
    b.write(Csr.IRQ_ENABLE, 1)
    for _ in range(4):
        b.write(Csr.PROG_ADDR, rng.getrandbits(32) & ~31)
        b.write(Csr.CTRL, CTRL_START)
        await b.cycles(rng.randint(3, 40))
        b.write(Csr.PROG_ADDR, 0x1234)           # ignored while busy
        b.write(Csr.CTRL, CTRL_START)            # so is a second start
        await b.cycles(rng.randint(3, 40))
        b.end = "done"
        await b.finish_run()
        b.end = None
        assert b.spec.done_f and b.spec.cycles > 0 and not b.spec.err_f
    assert b.seen >= {Status.BUSY.value, Status.DONE.value}
    assert b.spec.macs and any(b.spec.stalls)


@cocotb.test()
async def csr_faults_latch_code_and_pc(dut):
    b = CsrBench(dut)
    rng = b.tb.rng
    await b.tb.reset()
    for code in (ErrorCode.ILLEGAL_OPCODE, ErrorCode.DRAM_RANGE, ErrorCode.DEADLOCK):
        b.write(Csr.CTRL, CTRL_START)
        await b.cycles(rng.randint(2, 30))
        b.end = (code.value, rng.getrandbits(32))
        await b.finish_run()
        b.end = None
        assert b.spec.error == code.value
    assert (Status.DONE | Status.ERROR).value in b.seen


@cocotb.test()
async def csr_watchdog_ends_a_stuck_run(dut):
    b = CsrBench(dut)
    await b.tb.reset()
    b.write(Csr.WATCHDOG, 12)
    b.write(Csr.CTRL, CTRL_START)
    await b.cycles(30)
    b.p_progress = 0.0                           # the core stops making progress
    await b.finish_run()
    assert b.spec.error == ErrorCode.WATCHDOG.value
    b.write(Csr.WATCHDOG, 0)                     # off: a run without progress goes on
    b.write(Csr.CTRL, CTRL_START)
    await b.cycles(100)
    assert b.spec.run


@cocotb.test()
async def csr_soft_reset_stops_a_run(dut):
    b = CsrBench(dut)
    rng = b.tb.rng
    await b.tb.reset()
    for _ in range(3):
        b.write(Csr.CTRL, CTRL_START)
        await b.cycles(rng.randint(2, 30))
        b.write(Csr.CTRL, CTRL_RESET)
        await b.finish_run()
        assert not b.spec.done_f and not b.spec.err_f
    b.end = "done"                               # and the next run is normal
    b.write(Csr.CTRL, CTRL_START)
    await b.finish_run()
    assert b.spec.done_f
