from fractions import Fraction

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from tessera.numerics import (MAX_SHIFT, pack_weights, quantize_multiplier, requantize, round_shift,
                              unpack_weights, wrap32)


@given(st.integers(-(2**61), 2**61), st.integers(0, 63))
def test_round_shift_matches_exact_half_even(x, s):
    assert int(round_shift(x, s)) == round(Fraction(x, 1 << min(s, MAX_SHIFT)))


def test_round_shift_ties_go_to_even_both_signs():
    xs = np.array([1, 3, 5, -1, -3, -5, 2, -2])
    assert round_shift(xs, 1).tolist() == [0, 2, 2, 0, -2, -2, 1, -1]


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
