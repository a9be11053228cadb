from fractions import Fraction

import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st

from tessera.numerics import (MAX_SHIFT, pack_weights, pool_avg_fl32, quantize_multiplier, requantize, round_shift,
                              round_sig, scale_product, unpack_weights, wrap32)


@given(st.integers(-(2**61), 2**61), st.integers(0, 63))
def test_round_shift_matches_exact_half_even(x, s):
    assert int(round_shift(x, s)) == round(Fraction(x, 1 << min(s, MAX_SHIFT)))


def test_round_shift_ties_go_to_even_both_signs():
    xs = np.array([1, 3, 5, -1, -3, -5, 2, -2])
    assert round_shift(xs, 1).tolist() == [0, 2, 2, 0, -2, -2, 1, -1]


@given(st.integers(-(2**61), 2**61))
def test_round_sig_keeps_24_significant_bits_half_even(x):
    drop = max(abs(x).bit_length() - 24, 0)
    assert int(round_sig(x)) == round(Fraction(x, 1 << drop)) * (1 << drop)


def test_round_sig_is_float32_conversion_at_every_width():
    # Ties at every bit position and both signs: the carry into the next power of two included.
    xs = [s * ((1 << k) + d) for k in range(62) for d in (-1, 0, 1, (1 << max(k - 24, 0)) // 2) for s in (1, -1)]
    xs = np.array(xs, np.int64)
    np.testing.assert_array_equal(round_sig(xs), xs.astype(np.float32).astype(np.int64))


@given(st.integers(-(2**31), 2**31 - 1), st.floats(2.0**-23, 8.0, width=32))
# Near-ties the exact product rounds the other way (found by search), and an accumulator float32 cannot hold.
@example(-267168, 0.007989355362951756)
@example(898979, 0.0013387409271672368)
@example(2**24 + 1, 1.0)
def test_scale_product_rounds_as_onnxruntime_float32_multiply(v, scale):
    # MLAS requantization: float32(acc) * float32 scale, then round half to even.
    mult, shift = quantize_multiplier(scale)
    want = np.rint(np.float32(v) * np.float32(scale))
    if abs(want) < 2**40:
        assert int(round_shift(scale_product(v, mult), shift)) == int(want)


def test_wrap32_wraps_twos_complement():
    assert wrap32([2**31, -(2**31) - 1, 5]).tolist() == [-(2**31), 2**31 - 1, 5]


@given(st.floats(1e-9, 1e3, allow_nan=False))
def test_quantize_multiplier_is_31_bit_and_accurate(real):
    m, s = quantize_multiplier(real)
    assert 0 <= s <= MAX_SHIFT
    assert m < 2**31
    if s < MAX_SHIFT:
        assert m >= 2**30
    assert abs(m / 2**s - real) <= real * 2**-30 + 2**-s


def test_requantize_saturates_and_clamps():
    y = requantize([10**9, -(10**9), 0], 0, 2**30, 30, zp_out=3, lo=3, hi=127)
    assert y.tolist() == [127, 3, 3]


@given(st.sampled_from([8, 4, 2]), st.integers(1, 64), st.integers(0, 2**32 - 1))
def test_pack_unpack_weights_round_trip(bits, n, seed):
    per = 8 // bits
    rng = np.random.default_rng(seed)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    w = rng.integers(lo, hi + 1, size=n * per)
    raw = pack_weights(w, bits)
    assert len(raw) == n * per * bits // 8
    assert unpack_weights(raw, bits).tolist() == w.tolist()


def _onnxruntime_float_average(k, scale, taps, zp_float=None):
    """onnxruntime's quantized average: float32 taps summed from the first, / taps, / scale, then rint.

    Unfused (DQ → AveragePool → Q) the zero point is added after the rounding; fused
    (QLinearAveragePool) in float32 before it. Returned relative to the zero point.
    """
    d = k.astype(np.float32) * np.float32(scale)
    total = d[0]
    for t in d[1:]:
        total = (total + t).astype(np.float32)
    v = ((total / np.float32(taps)).astype(np.float32) / np.float32(scale)).astype(np.float32)
    if zp_float is None:
        return np.rint(v).astype(np.int64)
    return np.rint((v + np.float32(zp_float)).astype(np.float32)).astype(np.int64) - zp_float


@given(st.integers(1, 4), st.integers(2**23, 2**24 - 1), st.integers(-30, 10), st.integers(0, 2**32 - 1),
       st.one_of(st.none(), st.integers(-128, 255)))
@example(2, 2**23, 0, 1, None)         # a power-of-two scale: exact products, the fixed-point answer
@example(2, 2**24 - 1, -7, 2, None)    # the largest significand
@example(1, 11_182_169, 0, 3, 129)     # sums of -1: the quotient's spacing halves below 1 (a bug once)
@example(2, 12_345_679, -3, 4, 255)    # a uint8 zero point: float32(v + zp) drops most offsets
def test_pool_avg_fl32_is_onnxruntime_float_average(n, m, e, seed, zp):
    # Windows of 2**n taps, a quarter or more of them exact ties of the mean; every one equal.
    rng = np.random.default_rng(seed)
    k = np.concatenate([rng.integers(-255, 256, (1 << n, 2048)), rng.integers(-3, 4, (1 << n, 2048))], axis=1)
    scale = np.float32(m * 2.0 ** (e - 23))
    np.testing.assert_array_equal(pool_avg_fl32(k, m, n, zp), _onnxruntime_float_average(k, scale, 1 << n, zp))


def test_pool_avg_fl32_moves_ties_where_float32_does():
    # The rule can fail: with a non-power-of-two scale it leaves the fixed-point answer on many ties,
    # including sums of +-2 (a power of two, where float32 spacing halves below it).
    k = np.random.default_rng(5).integers(-40, 41, (4, 200_000))
    for m in (2**24 - 1, 12_345_679, 2**23 + 1):
        scale = np.float32(m * 2.0**-23)
        got = pool_avg_fl32(k, m, 2)
        assert (got != round_shift(k.sum(axis=0), 2)).mean() > 0.03
        np.testing.assert_array_equal(got, _onnxruntime_float_average(k, scale, 4))
        for zp in (-3, 0, 7):
            got = pool_avg_fl32(k, m, 2, zp)
            assert (got != round_shift(k.sum(axis=0) + (zp << 2), 2) - zp).mean() > 0.02
            np.testing.assert_array_equal(got, _onnxruntime_float_average(k, scale, 4, zp))


def test_pool_avg_fl32_is_defined_for_any_field_values():
    # The emulator and the RTL must agree on every instruction, meaningful or not: no shift or zero
    # point may raise or wrap. A shift of 0 has no ties; shifts above 16 act as 16.
    k = np.random.default_rng(1).integers(-255, 256, (9, 64))
    for n in (0, 5, 16, 17, 62, 63, 64 + 2):
        for zp in (None, -256, 255):
            got = pool_avg_fl32(k, 2**31 - 1, n, zp)
            assert got.shape == (64,)
            if n in (0, 17, 62, 63):
                np.testing.assert_array_equal(got, round_shift(k.sum(axis=0), min(n, 16)))
