"""The decoder, built from tessera.isa's table, classifies instructions exactly as the emulator does."""

import numpy as np
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator
from tessera.hdl.fetch import decode_checks

from tessera.isa import (
    FORMATS,
    INSTR_BITS,
    INSTR_BYTES,
    Instruction,
    IsaError,
    Opcode,
    Unit,
    decode,
    encode,
)


class _Decoder(wiring.Component):
    raw: In(INSTR_BITS)
    legal: Out(1)
    bad: Out(1)
    unit: Out(Unit)

    def elaborate(self, platform):
        m = Module()
        legal, bad, unit, _ = decode_checks(m, self.raw)
        m.d.comb += [self.legal.eq(legal), self.bad.eq(bad), self.unit.eq(unit)]
        return m


def _expected(raw: bytes):
    """(legal opcode, bad field, unit) the emulator's fetch reports."""
    try:
        ins = decode(raw)
    except IsaError as e:
        return (not e.illegal_opcode, True, None)
    u = ins.unit
    if u is not None and (ins.wait | ins.signal) >> u.value & 1:
        return (True, True, u)
    return (True, False, u)


def _samples(rng, n):
    out = []
    for _ in range(n):
        op = Opcode(int(rng.integers(1, 8)))
        vals = {}
        for f in FORMATS[op].fields:
            if isinstance(f.kind, type):
                vals[f.name] = list(f.kind)[int(rng.integers(len(f.kind)))]
            else:
                vals[f.name] = int(rng.integers(f.min, f.max + 1))
        vals["wait"], vals["signal"] = int(rng.integers(16)), int(rng.integers(16))
        word = int.from_bytes(encode(Instruction(op, **vals), check=False), "little")
        kind = rng.integers(6)
        if kind == 1:      # a zero count
            nz = [f for f in FORMATS[op].fields if f.nonzero]
            if nz:
                pos = 12
                for f in FORMATS[op].fields:
                    if f is nz[int(rng.integers(len(nz)))]:
                        word &= ~(((1 << f.width) - 1) << pos)
                        break
                    pos += f.width
        elif kind == 2:    # a reserved bit
            word |= 1 << (INSTR_BITS - 1 - int(rng.integers(40)))
        elif kind == 3:    # an illegal opcode
            word = (word & ~0xF) | int(rng.choice([0, 8, 9, 15]))
        out.append(word.to_bytes(INSTR_BYTES, "little"))
    return out


def test_decoder_classifies_like_the_emulator():
    rng = np.random.default_rng(1)
    raws = _samples(rng, 400)
    dut = _Decoder()
    got = []

    async def bench(ctx):
        for r in raws:
            ctx.set(dut.raw, int.from_bytes(r, "little"))
            got.append((bool(ctx.get(dut.legal)), bool(ctx.get(dut.bad)), ctx.get(dut.unit)))

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    kinds = set()
    for r, (legal, bad, unit) in zip(raws, got):
        e_legal, e_bad, e_unit = _expected(r)
        assert (legal, legal and bad) == (e_legal, e_legal and e_bad), Instruction.__name__ + r.hex()
        if e_legal and not e_bad and e_unit is not None:
            assert unit == e_unit
        kinds.add((e_legal, e_bad))
    assert kinds == {(False, True), (True, True), (True, False)}
