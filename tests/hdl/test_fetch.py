"""The decoder, built from tessera.isa's table, classifies instructions exactly as the emulator does."""

import numpy as np
import pytest
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


class _BeatDecoder(wiring.Component):
    """decode_checks of beat ``i`` for every beat, each reading its own copy of the word."""

    def __init__(self, beat_bits):
        self.beat_bits, self.beats = beat_bits, INSTR_BITS // beat_bits
        super().__init__({**{f"raw{i}": In(INSTR_BITS) for i in range(self.beats)},
                          "bad": Out(self.beats)})

    def elaborate(self, platform):
        m = Module()
        for i in range(self.beats):
            _, bad, _, _ = decode_checks(m, getattr(self, f"raw{i}"), self.beat_bits, i)
            m.d.comb += self.bad[i].eq(bad)
        return m


@pytest.mark.parametrize("beat_bits", [64, 128])
def test_decoder_beat_checks_together_classify_like_the_whole_word(beat_bits):
    # Fetch checks each beat as it arrives (timing_stages): a beat's checks read no bit after it (the
    # bits there are garbage below), and the beats' checks together are the whole word's.
    rng = np.random.default_rng(2)
    raws = _samples(rng, 400)
    dut = _BeatDecoder(beat_bits)
    got = []

    async def bench(ctx):
        for r in raws:
            word = int.from_bytes(r, "little")
            for i in range(dut.beats):
                keep = (1 << beat_bits * (i + 1)) - 1
                garbage = int.from_bytes(rng.bytes(INSTR_BYTES), "little") & ~keep
                ctx.set(getattr(dut, f"raw{i}"), word & keep | garbage)
            got.append(ctx.get(dut.bad))

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    seen = set()
    for r, bad in zip(raws, got):
        e_legal, e_bad, _ = _expected(r)
        if e_legal:
            assert bool(bad) == e_bad, r.hex()
            seen.add((e_bad, bin(bad).count("1")))
    # Faults were found in more than one beat, and clean words in none.
    assert (False, 0) in seen and any(b and n for b, n in seen)
