"""Integer arithmetic shared bit-for-bit by the compiler, the emulator and the RTL.

``docs/numerics.md`` is the prose version of this module; the rounding rule is
:func:`round_shift` and nothing else.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "FL32_MAX_N",
    "MAX_SHIFT",
    "SIG_BITS",
    "pack_weights",
    "pool_avg_fl32",
    "quantize_multiplier",
    "requantize",
    "round_shift",
    "round_sig",
    "scale_product",
    "unpack_weights",
    "weight_range",
    "wrap32",
]

#: Shift amounts are 6-bit fields; values above this behave as this.
MAX_SHIFT = 62


def round_shift(x, s):
    """``x / 2**s`` rounded to the nearest integer, ties to even (int64, vectorized).

    ``x`` must satisfy ``|x| < 2**62``; ``s`` is taken modulo 64 and then
    limited to :data:`MAX_SHIFT`; ``s == 0`` returns ``x`` unchanged.
    """
    x = np.asarray(x, dtype=np.int64)
    s = np.minimum(np.asarray(s, dtype=np.int64) & 63, MAX_SHIFT)
    # Equal to docs/numerics.md's q/rem form: adding half - 1 + (q & 1) before the shift carries into q
    # exactly when rem > half, or rem == half and q is odd (|x| < 2**62 keeps the sum inside int64).
    half = (np.int64(1) << s) >> 1
    return (x + np.where(s > 0, half - 1 + ((x >> s) & 1), 0)) >> s


#: Significant bits of a float32 (its 24-bit mantissa); :func:`round_sig` keeps this many.
SIG_BITS = 24


def round_sig(x):
    """``x`` rounded to :data:`SIG_BITS` significant bits, ties to even (int64, vectorized).

    Integers below ``2**24`` in magnitude come back unchanged; larger ones lose their low
    ``bit_length(|x|) - 24`` bits by :func:`round_shift` and get them back as zeros. This is the
    rounding of a float32 conversion (IEEE round to nearest even), written in integers; the
    sign is kept, since rounding half to even is symmetric. ``|x| < 2**62``.
    """
    x = np.asarray(x, dtype=np.int64)
    s = np.maximum(_bit_length(np.abs(x)) - SIG_BITS, 0)
    return round_shift(x, s) << s


def _bit_length(a):
    """``bit_length`` of non-negative int64 values below ``2**62`` (vectorized).

    frexp's exponent of an integer ``2**k <= a < 2**(k+1)`` is ``k+1``; float64 rounding of ``a``
    can only reach ``2**(k+1)``, never cross it downwards, so the one case where rounding carried
    into the next power is fixed.
    """
    a = np.asarray(a, np.int64)
    e = np.frexp(a.astype(np.float64))[1].astype(np.int64)
    return np.where((a > 0) & ((np.int64(1) << np.maximum(e - 1, 0)) > a), e - 1, e)


def scale_product(x, mult):
    """``round_sig(round_sig(x) * mult)``: the product a float32 scale multiply produces.

    onnxruntime requantizes with ``float32(x) * float32(scale)`` (MLAS); with ``mult`` a float32
    mantissa (:func:`quantize_multiplier` of a float32 scale), this is that product exactly,
    scaled by ``2**shift``. ``|x| < 2**31``, ``0 <= mult < 2**31``.
    """
    return round_sig(round_sig(x) * np.asarray(mult, np.int64))


#: POOL ``fl32`` takes ``shift`` (log2 of the tap count) up to this; larger values act as this.
FL32_MAX_N = 16


def pool_avg_fl32(k, m, n, zp_float=None):
    """POOL's float32 average: onnxruntime's average of one quantized window, in integers.

    ``k`` holds each window's taps ``x - zp_in`` in row-major window order along axis 0
    (``|k| < 2**9``, at most 256 taps), ``m`` is the 24-bit significand of the float32 scale
    ``s`` that is both the input and the output scale (``s = m * 2**e``, ``2**23 <= m < 2**24``),
    and ``n`` is log2 of the tap count (taken ``& 63``, at most :data:`FL32_MAX_N`).
    onnxruntime dequantizes each tap to ``float32(k * s)``, sums them in float32 from the first
    tap and divides by ``taps`` and by ``s``: ``v``. Unfused (DQ → AveragePool → Q, ``zp_float``
    None) it returns ``rint(v)``; fused (QLinearAveragePool) ``rint(float32(v + zp_float)) -
    zp_float``, with ``zp_float`` the output zero point as onnxruntime holds it (int8 or uint8).
    The caller adds ``zp_out``.

    Scaled by ``2**-e``, every tap is ``round_sig(k * m)`` and every partial sum
    ``round_sig(S + tap)``, and ``float32(S / m)`` lies within ``|E| / m`` of the exact sum
    ``K = sum(k)``, ``E = S - K*m``. That is far below ``2**-n``, so the result is the
    fixed-point one except on an exact tie of ``K / 2**n``, which moves towards ``E`` when the
    offset survives the quotient's rounding to 24 significant bits (and, fused, the rounding of
    ``v + zp_float``): docs/numerics.md derives the comparisons.
    """
    k = np.asarray(k, dtype=np.int64)
    m = np.int64(m)
    n = np.minimum(np.int64(n) & 63, FL32_MAX_N)
    s = round_sig(k[0] * m)
    for t in k[1:]:
        s = round_sig(s + round_sig(t * m))
    big_k = k.sum(axis=0)
    e = s - big_k * m
    mag_e = np.abs(e)
    half = (np.int64(1) << n) >> 1
    tie = (half != 0) & ((big_k & ((np.int64(1) << n) - 1)) == half)
    mag_k = np.abs(big_k)
    b_k = _bit_length(mag_k)
    # The quotient's spacing halves just below a power of two: one more bit when it lands there.
    in1 = ((mag_k & (mag_k - 1)) == 0) & ((e < 0) != (big_k < 0))
    # It keeps E when |E| / m exceeds half its spacing; |E| of 2**24 or more always does.
    keep1 = (np.minimum(mag_e, np.int64(1) << 24) << (25 - b_k + in1)) > m
    moved = (big_k >> n) + (e > 0)
    if zp_float is None:
        return np.where(tie & keep1 & (e != 0), moved, round_shift(big_k, n))
    z = np.int64(zp_float)
    bq = big_k + (z << n)                       # (v + zp_float) * 2**n on the tie
    mag_b = np.abs(bq)
    b_b = _bit_length(mag_b)
    in2 = (mag_b == half) & ((e < 0) != (bq < 0))
    # The sum keeps the quotient's offset j (in its spacing) when j > T = 2**t: t < 0 means any j.
    t = b_b - b_k - 1 - in2 + in1
    lhs = np.minimum(mag_e, np.int64(1) << 32) << (25 - b_b + in2)
    d = lhs - m
    scaled = np.minimum(np.maximum(d, 0), np.int64(1) << 31) << np.maximum(t + 1, 0)
    keep2 = (d > 0) & ((scaled > m) | ((scaled == m) & (t == 0)))
    keep = np.where(t < 0, keep1, keep2)
    return np.where(tie & keep & (e != 0), moved, round_shift(bq, n) - z)


def wrap32(x):
    """Two's-complement wrap to int32 (as int64)."""
    x = np.asarray(x, dtype=np.int64)
    return ((x + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def requantize(acc, bias, mult, shift, zp_out, lo=-128, hi=127):
    """``clamp(round_shift(scale_product(wrap32(acc + bias), mult), shift) + zp_out, lo, hi)`` as int64."""
    v = wrap32(np.asarray(acc, np.int64) + np.asarray(bias, np.int64))
    q = round_shift(scale_product(v, mult), shift)
    return np.minimum(np.maximum(q + zp_out, lo), hi)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """Fixed-point ``(mult, shift)`` with ``mult * 2**-shift ≈ real``.

    ``mult`` is normalized into ``[2**30, 2**31)`` (31 significant bits) where
    the shift range allows; ``shift`` is in ``0..MAX_SHIFT``.
    """
    if not math.isfinite(real) or real < 0:
        raise ValueError(f"requantization scale {real!r} must be finite and non-negative")
    if real == 0:
        return 0, 0
    m, e = math.frexp(real)          # real = m * 2**e, m in [0.5, 1)
    shift = 31 - e
    if shift > MAX_SHIFT:
        mult = round(real * 2.0 ** MAX_SHIFT)
        return int(mult), MAX_SHIFT
    if shift < 0:
        raise ValueError(f"requantization scale {real!r} is too large (at most 2**31)")
    mult = round(m * (1 << 31))
    if mult == 1 << 31:
        mult >>= 1
        shift -= 1
    return int(mult), int(shift)


def weight_range(bits: int) -> tuple[int, int]:
    """Signed range of a ``bits``-wide weight."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def pack_weights(w: np.ndarray, bits: int) -> bytes:
    """Pack signed weights (any shape, C order) densely, ``bits`` each, little-endian.

    Element ``i`` occupies bits ``i*bits .. i*bits+bits-1`` of the byte string.
    """
    w = np.asarray(w).reshape(-1).astype(np.int64)
    lo, hi = weight_range(bits)
    if w.size and (w.min() < lo or w.max() > hi):
        raise ValueError(f"weights outside the {bits}-bit range {lo}..{hi}")
    if bits == 8:
        return w.astype(np.int8).tobytes()
    per = 8 // bits
    if w.size % per:
        raise ValueError(f"{w.size} weights do not fill whole bytes at {bits} bits")
    u = (w & ((1 << bits) - 1)).astype(np.uint8).reshape(-1, per)
    shifts = (np.arange(per, dtype=np.uint8) * bits)
    return np.bitwise_or.reduce(u << shifts, axis=1).astype(np.uint8).tobytes()


def unpack_weights(raw, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_weights`: a flat int8 array of sign-extended weights."""
    b = np.frombuffer(raw, dtype=np.uint8) if isinstance(raw, (bytes, bytearray, memoryview)) else np.asarray(raw, np.uint8)
    if bits == 8:
        return b.view(np.int8).copy()
    per = 8 // bits
    shifts = (np.arange(per, dtype=np.uint8) * bits)
    u = (b[:, None] >> shifts) & ((1 << bits) - 1)
    s = u.astype(np.int8).reshape(-1)
    return np.where(s >= 1 << (bits - 1), s - (1 << bits), s).astype(np.int8)
