"""cocotb bench of hdl/fetch.py (instruction fetch and decode) against the emulator's fetch.

Instruction words come from a Python memory model with latency (random extra
latency and random request backpressure under ``TB_BACKPRESSURE``); the
decoded stream goes to a sink with random ``ready``. Every delivered
(pc, word, unit) is matched in order against the emulator's fetch of the same
memory, which also gives the fault (code and pc) a stream ends with.
"""

import cocotb
from tb import TB, Ports, ReadMemory, StreamSink, config
from tessera.sim.emulator import Emulator, NpuError

from tessera.isa import (
    FORMATS,
    HEADER,
    INSTR_BYTES,
    ErrorCode,
    Instruction,
    Opcode,
    encode,
)

UNIT_OPS = [op for op in FORMATS if op != Opcode.END]


def random_instruction(rng, op: Opcode) -> Instruction:
    """Any legal instruction of ``op``: every field random within the ISA table's range."""
    vals = {}
    for f in HEADER[1:] + FORMATS[op].fields:
        if isinstance(f.kind, type):
            vals[f.name] = rng.choice(list(f.kind))
        elif f.kind != "mask":
            vals[f.name] = rng.choice([f.min, f.max, rng.randint(f.min, f.max)])
    unit = vals["unit"] if op == Opcode.SYNC else FORMATS[op].unit
    others = 0xF & ~(1 << unit.value)
    vals["wait"], vals["signal"] = rng.getrandbits(4) & others, rng.getrandbits(4) & others
    return Instruction(op, **vals)


class FetchBench:
    def __init__(self, dut):
        self.c = c = config()
        self.tb = tb = TB(dut)
        self.dut = dut = Ports(dut, "fetch_")
        self.emu = Emulator(c)
        self.mem = tb.add(ReadMemory(tb, self.emu.dram, c.bus_bytes, c.mem_latency, dut.mem__req__valid,
                                     dut.mem__req__ready, dut.mem__req__payload, dut.mem__resp__valid,
                                     dut.mem__resp__payload))
        self.out = tb.scoreboard("decoded instructions")
        self.faults = tb.scoreboard("faults")
        tb.add(StreamSink(tb, dut.o_valid, dut.o_ready, dut.o_instr,
                          lambda v: self.out.got((int(dut.pc.value), v, int(dut.o_unit.value)))))
        self.fault = None
        self.codes = set()
        tb.add(self)

    def drive(self):
        pass

    def sample(self):
        # err pulses once, in the cycle fetch halts; a second pulse would find nothing expected.
        if int(self.dut.err.value):
            self.fault = (int(self.dut.err_code.value), int(self.dut.pc.value))
            self.faults.got(self.fault)

    def expect(self, prog_addr: int):
        """What the emulator's fetch makes of memory from ``prog_addr`` on."""
        pc = prog_addr
        while True:
            try:
                entry = self.emu._fetch(pc)
            except NpuError as e:
                self.faults.expect((e.code.value, e.pc))
                self.codes.add(e.code)
                return
            if entry is None:
                return
            raw = int.from_bytes(self.emu.dram[pc:pc + INSTR_BYTES].tobytes(), "little")
            self.out.expect((pc, raw, entry[1]))
            pc += INSTR_BYTES

    async def run(self, prog_addr: int, words: list[bytes]):
        """Fetch ``words`` placed at ``prog_addr`` from reset on, until END or a fault."""
        dut, tb = self.dut, self.tb
        for i, w in enumerate(words):
            self.emu.write(prog_addr + i * INSTR_BYTES, w)
        self.expect(prog_addr)
        self.fault = None
        await tb.reset(fetch_prog_addr=prog_addr)
        await tb.until(lambda: int(dut.finished.value) or self.fault is not None, 4000, "END or a fault")
        for _ in range(10):             # nothing more comes out
            await tb.step()
        await tb.until(lambda: self.mem.idle, 200, "the memory's last answers")
        assert not self.out.pending and not self.faults.pending, "fetch stopped early"
        assert int(dut.finished.value) == (self.fault is None)


@cocotb.test()
async def fetch_delivers_programs_in_order(dut):
    b = FetchBench(dut)
    c, rng = b.c, b.tb.rng
    for n in (1, 3, 12, 20):
        prog = [encode(random_instruction(rng, rng.choice(UNIT_OPS))) for _ in range(n)] + [encode(Instruction("end"))]
        base = INSTR_BYTES * rng.randint(0, c.dram_bytes // INSTR_BYTES - len(prog))
        await b.run(base, prog)
    assert b.out.matched == 36
    b.tb.finish()


@cocotb.test()
async def fetch_stops_at_faults(dut):
    b = FetchBench(dut)
    c, rng = b.c, b.tb.rng
    good = [encode(random_instruction(rng, rng.choice(UNIT_OPS))) for _ in range(5)]
    sync = random_instruction(rng, Opcode.SYNC)
    bad_words = [
        bytes(INSTR_BYTES),                                                     # opcode 0
        bytes([0x0B]) + bytes(INSTR_BYTES - 1),                                 # opcode 11
        encode(Instruction("load", rows=1, cols=1, buf="act"))[:-1] + b"\x80",  # reserved bit set
        encode(Instruction("load", rows=0, cols=1), check=False),               # zero count
        encode(sync.replace(wait=1 << sync.unit.value)),                        # waits for itself
    ]
    for i, bad in enumerate(bad_words):
        await b.run(INSTR_BYTES * (8 + 8 * i), good[:i] + [bad, encode(Instruction("end"))])
    # A program that runs off the end of memory, and one that starts outside it.
    tail = c.dram_bytes - 3 * INSTR_BYTES
    await b.run(tail, [encode(Instruction("sync", unit="load"))] * 3)
    await b.run(c.dram_bytes, [])
    assert b.faults.matched == 7, b.faults.matched
    assert b.codes == {ErrorCode.ILLEGAL_OPCODE, ErrorCode.BAD_FIELD, ErrorCode.DRAM_RANGE}, b.codes
    b.tb.finish()
