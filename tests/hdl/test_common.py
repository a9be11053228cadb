"""hdl.common.round_shift against tessera.numerics.round_shift (the one rounding rule)."""

import numpy as np
from amaranth.hdl import Module, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator
from tessera.hdl.common import clamp, round_shift

from tessera.numerics import round_shift as golden


class _Rnd(wiring.Component):
    x: In(signed(63))
    s: In(unsigned(32))
    y: Out(signed(64))
    lo: In(signed(8))
    hi: In(signed(8))
    c: Out(signed(64))

    def elaborate(self, platform):
        m = Module()
        m.d.comb += [self.y.eq(round_shift(self.x, self.s, 64)), self.c.eq(clamp(self.x, self.lo, self.hi))]
        return m


def test_round_shift_matches_numerics_including_ties():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 1 << 32, size=400, dtype=np.uint64)
    s[:200] = rng.integers(0, 70, size=200)
    x = rng.integers(-(1 << 61), 1 << 61, size=400, dtype=np.int64)
    # Exact ties and near-ties at small shifts.
    small = (s[:100] % 8).astype(np.int64)
    half = np.where(small > 0, np.left_shift(1, np.maximum(small, 1) - 1), 0)
    x[:100] = np.left_shift(rng.integers(-1000, 1000, size=100), small) + half
    dut = _Rnd()
    got = []

    async def bench(ctx):
        for xi, si in zip(x, s):
            ctx.set(dut.x, int(xi))
            ctx.set(dut.s, int(si))
            got.append(ctx.get(dut.y))

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    want = golden(x, (s & 63).astype(np.int64))
    np.testing.assert_array_equal(np.array(got, dtype=np.int64), want)


def test_clamp_follows_numpy_when_bounds_cross():
    dut = _Rnd()
    out = []

    async def bench(ctx):
        for x, lo, hi in [(5, -3, 3), (-9, -3, 3), (0, 10, -10), (100, 10, -10), (-100, 10, -10)]:
            ctx.set(dut.x, x)
            ctx.set(dut.lo, lo)
            ctx.set(dut.hi, hi)
            out.append((ctx.get(dut.c), min(max(x, lo), hi)))

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    assert all(a == b for a, b in out)
