"""cocotb bench of hdl/dispatch.py (unit queues and dependency-token counters).

Instructions arrive on the fetch-side valid/ready port (random gaps under
``TB_BACKPRESSURE``); four unit models take each start and answer ``done``
after a random number of cycles (1 without backpressure). The bench keeps its
own model of the token counters and queue levels and checks every start
against the ISA's rules (waits available, room to signal, program order per
unit, nothing while ``hold``) and ``i_ready`` against the queue bound. Whether
a program finishes or deadlocks, and at which pc, comes from the emulator.
"""

import cocotb
from tb import TB, Ports, StreamSource, config
from tessera.sim.emulator import Emulator, NpuError

from tessera.isa import (
    INSTR_BYTES,
    ErrorCode,
    Instruction,
    Opcode,
    Unit,
    encode,
    mask_units,
)

UNITS = list(Unit)
PROG = 1024


def unit_op(u: Unit, wait: int, signal: int) -> Instruction:
    """A tiny real instruction of unit ``u`` (the emulator executes it; dispatch only sees its header)."""
    h = {"wait": wait, "signal": signal}
    if u == Unit.LOAD:
        return Instruction("load", buf="act", dram_addr=0, rows=1, cols=1, **h)
    if u == Unit.COMPUTE:
        return Instruction("conv", in_h=1, in_w=1, in_cb=1, out_h=1, out_w=1, k_h=1, k_w=1, stride_h=1, stride_w=1,
                           dil_h=1, dil_w=1, ob_count=1, **h)
    if u == Unit.POST:
        return Instruction("epilogue", pixels=1, ob_count=1, out_addr=4, out_max=127, **h)
    return Instruction("store", buf="act", dram_addr=2048, rows=1, cols=1, **h)


def random_program(rng, n: int, depth: int, *, sync: bool, deadlock: bool) -> list[Instruction]:
    """Instructions whose tokens flow in program order (so they run), optionally with SYNCs and one
    instruction waiting for a token no earlier instruction sends."""
    avail = {(s, d): 0 for s in UNITS for d in UNITS if s != d}
    prog = []
    stuck_at = rng.randrange(n) if deadlock else -1
    for i in range(n):
        u = rng.choice(UNITS)
        others = [x for x in UNITS if x != u]
        if i == stuck_at and any(avail[(s, u)] == 0 for s in others):
            wait = [rng.choice([s for s in others if avail[(s, u)] == 0])]
        else:
            wait = [s for s in others if avail[(s, u)] and rng.random() < 0.6]
        for s in wait:
            avail[(s, u)] = max(0, avail[(s, u)] - 1)
        signal = [d for d in others if avail[(u, d)] < depth and rng.random() < 0.4]
        for d in signal:
            avail[(u, d)] += 1
        w, s = sum(1 << x.value for x in wait), sum(1 << x.value for x in signal)
        if sync and rng.random() < 0.3:
            prog.append(Instruction("sync", unit=u, wait=w, signal=s))
        else:
            prog.append(unit_op(u, w, s))
    return prog


class DispatchBench:
    """Drives the fetch side and models the four units; checks every start against a token/queue model."""

    def __init__(self, dut):
        self.c = config()
        self.tb = tb = TB(dut)
        self.dut = dut = Ports(dut, "disp_")
        self.port = {u: (lambda n, u=u: getattr(dut, f"u_{u.name.lower()}__{n}")) for u in UNITS}
        tb.add(self)            # before the source: it sees the handshake before the source forgets it
        self.src = tb.add(StreamSource(tb, dut.i_valid, dut.i_ready, (dut.i_instr, dut.i_unit, dut.i_pc)))
        self.hold = 0
        self.fail = {}

    def load(self, prog: list[Instruction]):
        """Start a program: fresh models and scoreboards, every instruction queued at the source."""
        self.exact = not any(i.op == Opcode.SYNC for i in prog)
        self.tok = {(s, d): 0 for s in UNITS for d in UNITS if s != d}
        self.queued = {u: 0 for u in UNITS}
        self.active = {u: None for u in UNITS}
        self.order = {u: self.tb.scoreboard(f"{u.name} starts") for u in UNITS}
        self.n = len(prog)
        self.src.sent = 0
        self.src.queue.clear()
        self.src.offered = False
        self.errors = []
        for i, ins in enumerate(prog):
            pc = PROG + i * INSTR_BYTES
            word = int.from_bytes(encode(ins), "little")
            if ins.op != Opcode.SYNC:
                self.order[ins.unit].expect((pc, word))
            self.src.send((word, ins.unit.value, pc))

    def drive(self):
        self.dut.hold.value = self.hold
        self.dut.fetch_finished.value = int(self.src.sent == self.n)
        for u in UNITS:
            p, a = self.port[u], self.active[u]
            if a is not None:
                a[2] -= 1
            last = a is not None and a[2] == 0
            code = self.fail.get(a[0]) if last else None
            p("busy").value = int(a is not None and a[2] >= 0)
            p("done").value = int(last and code is None)
            p("err").value = int(last and code is not None)
            p("err_code").value = 0 if code is None else code.value
            p("progress").value = 0
            p("stall").value = 0

    def sample(self):
        c, dut = self.c, self.dut
        if self.src.offered and self.exact:
            u = Unit(self.src.queue[0][1])
            assert int(dut.i_ready.value) == (self.queued[u] < c.queue_depth), \
                f"i_ready={int(dut.i_ready.value)} with {self.queued[u]} queued for {u.name}"
        starts = [u for u in UNITS if int(self.port[u]("start").value)]
        for u in starts:
            assert not self.hold, f"{u.name} started while hold"
            assert self.active[u] is None, f"{u.name} started while busy"
            pc, word = int(self.port[u]("pc").value), int(self.port[u]("instr").value)
            self.order[u].got((pc, word))
            wait, sig = word >> 4 & 0xF, word >> 8 & 0xF
            if self.exact:
                for s in mask_units(wait):
                    assert self.tok[(s, u)] > 0, f"{u.name} at 0x{pc:x} started without a token from {s.name}"
                for d in mask_units(sig):
                    assert self.tok[(u, d)] < c.token_depth, f"{u.name} at 0x{pc:x}: no room to signal {d.name}"
            lat = self.tb.rng.randint(1, 6) if self.tb.backpressure else 1
            self.active[u] = [pc, sig, lat]
        for u in UNITS:
            a = self.active[u]
            code = None if a is None else self.fail.get(a[0])
            # A fault reaches dispatch err_stages cycles after the unit raised it (in its last cycle, a[2] == 0);
            # until then the unit, idle again, must not be started.
            if a is not None and a[2] == (0 if code is None else -c.err_stages):
                if code is not None:
                    self.errors.append(a[0])
                    assert int(dut.err.value) and int(dut.err_code.value) == code.value \
                        and int(dut.err_pc.value) == a[0], f"{u.name}'s fault at 0x{a[0]:x} not reported"
                else:
                    for d in mask_units(a[1]):
                        self.tok[(u, d)] += 1
                self.active[u] = None
        if self.exact:
            for u in starts:
                self.queued[u] -= 1
                for s in mask_units(int(self.port[u]("instr").value) >> 4 & 0xF):
                    self.tok[(s, u)] -= 1
            if self.src.offered and int(dut.i_ready.value):
                self.queued[Unit(self.src.queue[0][1])] += 1

    async def run(self, prog: list[Instruction]):
        """Run ``prog`` from reset; finish or deadlock (at the same pc) as the emulator does."""
        tb, dut = self.tb, self.dut
        emu = Emulator(self.c)
        code = b"".join(encode(i) for i in prog) + encode(Instruction("end"))
        emu.write(PROG, code)
        try:
            emu.run(PROG)
            want = None
        except NpuError as e:
            assert e.code == ErrorCode.DEADLOCK, e
            want = e.pc
        self.load(prog)
        await tb.reset()
        await tb.until(lambda: int(dut.idle.value) or int(dut.deadlock.value), 3000, "idle or deadlock")
        if want is None:
            assert int(dut.idle.value), f"RTL deadlocked at 0x{int(dut.deadlock_pc.value):x}, emulator finished"
            assert self.src.idle and all(a is None for a in self.active.values())
            tb.finish()
        else:
            assert int(dut.deadlock.value), "RTL finished, emulator deadlocked"
            assert int(dut.deadlock_pc.value) == want, f"deadlock at 0x{int(dut.deadlock_pc.value):x}, emulator 0x{want:x}"
        for sb in self.order.values():
            tb.scoreboards.remove(sb)
        return want


@cocotb.test()
async def dispatch_follows_tokens_and_queue_bounds(dut):
    b = DispatchBench(dut)
    rng = b.tb.rng
    for _ in range(6):
        await b.run(random_program(rng, 30, b.c.token_depth, sync=False, deadlock=False))


@cocotb.test()
async def dispatch_hold_starts_nothing(dut):
    b = DispatchBench(dut)
    rng = b.tb.rng
    prog = random_program(rng, 20, b.c.token_depth, sync=False, deadlock=False)
    b.load(prog)
    await b.tb.reset()
    for _ in range(300):
        b.hold = int(rng.random() < 0.5)        # sample() fails on any start while hold
        await b.tb.step()
    b.hold = 0
    await b.tb.until(lambda: int(b.dut.idle.value), 2000, "idle")
    b.tb.finish()


@cocotb.test()
async def dispatch_sync_and_deadlocks_as_emulator(dut):
    b = DispatchBench(dut)
    rng = b.tb.rng
    outcomes = []
    for i in range(10):
        prog = random_program(rng, 16, b.c.token_depth, sync=True, deadlock=i % 2 == 1)
        outcomes.append(await b.run(prog) is None)
    assert set(outcomes) == {True, False}, outcomes


@cocotb.test()
async def dispatch_reports_unit_faults(dut):
    b = DispatchBench(dut)
    rng = b.tb.rng
    prog = random_program(rng, 12, b.c.token_depth, sync=False, deadlock=False)
    pc = PROG + INSTR_BYTES * rng.randrange(len(prog))
    b.fail = {pc: ErrorCode.BUFFER_RANGE}
    b.load(prog)
    await b.tb.reset()
    await b.tb.until(lambda: b.errors, 2000, "the unit fault")     # sample() checks err, err_code and err_pc
    b.hold = 1
    for _ in range(20):
        await b.tb.step()
    assert b.errors == [pc]
