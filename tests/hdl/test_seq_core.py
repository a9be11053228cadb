"""The sequential core's own logic under Amaranth's Python simulator (PicoRV32 itself runs under Verilator:
tests/rtl/test_seq.py)."""

import numpy as np
from amaranth.sim import Simulator

from tessera.arch import PRESETS
from tessera.hdl.seq.core import Dot4, ram_bytes
from tessera.hdl.seq.firmware import DOT4_OPCODE


def _insn(opcode=DOT4_OPCODE, funct3=0, funct7=0, rd=5, rs1=6, rs2=7):
    return opcode | rd << 7 | funct3 << 12 | rs1 << 15 | rs2 << 20 | funct7 << 25


def _byte(v, i):
    b = (v >> 8 * i) & 0xFF
    return b - 256 if b & 0x80 else b


def _dot4(x, y):
    return sum(_byte(x, i) * _byte(y, i) for i in range(4)) & 0xFFFFFFFF


def test_dot4_answers_each_request_once_with_the_sum_of_int8_products():
    dut = Dot4()
    rng = np.random.default_rng(0)
    cases = [(0x80808080, 0x80808080), (0x7F7F7F7F, 0x80808080), (0xFFFFFFFF, 0x01010101), (0, 0x12345678)]
    cases += [tuple(int(v) for v in rng.integers(0, 1 << 32, 2)) for _ in range(20)]
    got = []

    async def bench(ctx):
        for x, y in cases:
            # PicoRV32 holds valid until ready; the answer must come once, well inside its 16-cycle timeout.
            ctx.set(dut.valid, 1)
            ctx.set(dut.insn, _insn())
            ctx.set(dut.rs1, x)
            ctx.set(dut.rs2, y)
            for cycle in range(16):
                assert ctx.get(dut.wait)
                if ctx.get(dut.ready):
                    assert ctx.get(dut.wr)
                    got.append(ctx.get(dut.rd))
                    break
                await ctx.tick()
            else:
                raise AssertionError("no answer within 16 cycles")
            await ctx.tick()
            ctx.set(dut.valid, 0)
            assert not ctx.get(dut.ready)
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert got == [_dot4(x, y) for x, y in cases]


def test_dot4_ignores_other_instructions():
    dut = Dot4()
    seen = []

    async def bench(ctx):
        # PicoRV32's own multiply (OP opcode, funct7 1), another custom-0 funct3, another funct7.
        for insn in (_insn(opcode=0b0110011, funct7=1), _insn(funct3=1), _insn(funct7=2)):
            ctx.set(dut.valid, 1)
            ctx.set(dut.insn, insn)
            for _ in range(4):
                seen.append((ctx.get(dut.wait), ctx.get(dut.ready), ctx.get(dut.wr)))
                await ctx.tick()
            ctx.set(dut.valid, 0)
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert set(seen) == {(0, 0, 0)}


def test_ram_bytes_holds_the_buffers_and_fits_the_icebreaker_spram_pair():
    c = PRESETS["icebreaker"]
    need = (2 * c.abuf_words * c.act_word_bytes + c.wbuf_words * c.wgt_word_bytes + c.accbuf_words * c.acc_word_bytes
            + c.pbuf_words * c.param_word_bytes)
    assert need < ram_bytes(c) <= 64 << 10
    assert ram_bytes(c) & (ram_bytes(c) - 1) == 0
