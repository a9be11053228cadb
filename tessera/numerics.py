"""Integer arithmetic shared bit-for-bit by the compiler, the emulator and the RTL.

``docs/numerics.md`` is the prose version of this module; the rounding rule is
:func:`round_shift` and nothing else.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
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
    mag = np.abs(x)
    # bit_length of |x| from the float64 exponent is exact here: frexp's exponent of an integer
    # 2**k <= |x| < 2**(k+1) is k+1, and float64 rounding of |x| can only reach 2**(k+1), never
    # cross it downwards, so fix the one case where rounding carried into the next power.
    _, e = np.frexp(mag.astype(np.float64))
    e = e.astype(np.int64)
    e = np.where((mag > 0) & ((np.int64(1) << np.maximum(e - 1, 0)) > mag), e - 1, e)
    s = np.maximum(e - SIG_BITS, 0)
    return round_shift(x, s) << s


def scale_product(x, mult):
    """``round_sig(round_sig(x) * mult)``: the product a float32 scale multiply produces.

    onnxruntime requantizes with ``float32(x) * float32(scale)`` (MLAS); with ``mult`` a float32
    mantissa (:func:`quantize_multiplier` of a float32 scale), this is that product exactly,
    scaled by ``2**shift``. ``|x| < 2**31``, ``0 <= mult < 2**31``.
    """
    return round_sig(round_sig(x) * np.asarray(mult, np.int64))


def pool_avg_fl32(k, m, n):
    """POOL's float32 average: ``rint(float32(S / taps) / s)`` of onnxruntime's float path, in integers.

    ``k`` holds each window's taps ``x - zp_in`` in row-major window order along axis 0
    (``|k| < 2**9``, at most 256 taps), ``m`` is the 24-bit significand of the float32 scale
    ``s`` that is both the input and the output scale (``s = m * 2**e``, ``2**23 <= m < 2**24``),
    and ``n`` is log2 of the tap count (1 to 8). onnxruntime dequantizes each tap to
    ``float32(k * s)``, sums them in float32 from the first tap, divides by ``taps`` and by
    ``s`` and rounds half to even (the output zero point is added after). Scaled by ``2**-e``,
    every tap is ``round_sig(k * m)`` and every partial sum ``round_sig(S + tap)``, and
    ``float32(S / m)`` lies within ``|S - K*m| / m`` of the exact sum ``K = sum(k)``. That
    distance is far below ``2**-n``, so the result is ``round_shift(K, n)`` except on an exact tie
    of ``K / 2**n``, where the float quotient lands above or below ``K`` if the difference
    survives its rounding to 24 significant bits: when ``|S - K*m| * 2**(24 - e_K) > m``
    (``e_K = bit_length(|K|) - 1``; one more when ``|K|`` is a power of two and the quotient
    falls below it in magnitude, where float32 spacing halves). Returns int64 ``y - zp_out``.
    """
    k = np.asarray(k, dtype=np.int64)
    m = np.int64(m)
    n = np.minimum(np.int64(n) & 63, MAX_SHIFT)    # as round_shift takes it
    s = round_sig(k[0] * m)
    for t in k[1:]:
        s = round_sig(s + round_sig(t * m))
    big_k = k.sum(axis=0)
    e = s - big_k * m
    base = round_shift(big_k, n)
    mask = (np.int64(1) << n) - 1
    half = (np.int64(1) << n) >> 1
    tie = (half != 0) & ((big_k & mask) == half)
    mag = np.abs(big_k)
    e_k = np.frexp(mag.astype(np.float64))[1].astype(np.int64) - 1   # exact: |K| < 2**17
    inward = ((mag & (mag - 1)) == 0) & ((e < 0) != (big_k < 0))
    # |E| of 2**24 or more always moves the quotient (the shift is never negative): cap it there.
    moved = (np.minimum(np.abs(e), np.int64(1) << 24) << (24 - e_k + inward)) > m
    return np.where(tie & moved & (e != 0), (big_k >> n) + (e > 0), base)


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
