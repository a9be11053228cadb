"""Plain-numpy reference layers, written independently of the emulator.

Tests compare the emulator against these: convolution as an explicit loop over
kernel taps on a zero-padded float64 copy, rounding with exact Python integers
(:class:`fractions.Fraction`), pooling window by window. Slow and obvious on
purpose.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

__all__ = ["conv2d", "round_half_even_shift", "requantize", "maxpool", "avgpool_sum"]


def conv2d(x, w, stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1)):
    """int64 convolution. x: C×H×W (already zero-point-corrected), w: O×C×KH×KW; pad (t, l, b, r)."""
    x = np.asarray(x, dtype=np.int64)
    w = np.asarray(w, dtype=np.int64)
    C, H, W = x.shape
    O, _, KH, KW = w.shape
    t, l, b, r = pad
    xp = np.zeros((C, H + t + b, W + l + r), dtype=np.int64)
    xp[:, t:t + H, l:l + W] = x
    sh, sw = stride
    dh, dw = dilation
    OH = (H + t + b - dh * (KH - 1) - 1) // sh + 1
    OW = (W + l + r - dw * (KW - 1) - 1) // sw + 1
    out = np.zeros((O, OH, OW), dtype=np.int64)
    for ky in range(KH):
        for kx in range(KW):
            patch = xp[:, ky * dh:ky * dh + sh * (OH - 1) + 1:sh, kx * dw:kx * dw + sw * (OW - 1) + 1:sw]
            out += np.einsum("oc,chw->ohw", w[:, :, ky, kx], patch)
    return out


def round_half_even_shift(v: int, shift: int) -> int:
    """v / 2**shift, rounded to nearest, ties to even, with exact rationals."""
    return round(Fraction(int(v), 1 << int(shift)))  # Python's round() on Fraction ties to even


def round_significant(v: int, bits: int = 24) -> int:
    """v rounded to ``bits`` significant bits, ties to even (what a float32 conversion does)."""
    drop = max(abs(int(v)).bit_length() - bits, 0)
    return round_half_even_shift(v, drop) << drop


def requantize(acc, bias, mult, shift, zp, lo=-128, hi=127):
    """Elementwise reference of docs/numerics.md (acc: any int array; bias/mult/shift broadcast)."""
    acc = np.asarray(acc, dtype=np.int64)
    bias, mult, shift = (np.broadcast_to(np.asarray(a, dtype=np.int64), acc.shape) for a in (bias, mult, shift))
    out = np.empty(acc.shape, dtype=np.int64)
    for i in np.ndindex(acc.shape):
        v = int(acc[i]) + int(bias[i])
        v = (v + 2**31) % 2**32 - 2**31
        q = round_half_even_shift(round_significant(round_significant(v) * int(mult[i])), min(int(shift[i]) & 63, 62))
        out[i] = min(max(q + zp, lo), hi)
    return out


def _pool(x, k, stride, pad, reduce):
    """Apply ``reduce`` to every window's valid taps (C×H×W input; padding contributes nothing)."""
    C, H, W = x.shape
    (kh, kw), (sh, sw), (pt, pl) = k, stride, pad
    OH = (H + 2 * pt - kh) // sh + 1
    OW = (W + 2 * pl - kw) // sw + 1
    out = np.zeros((C, OH, OW), dtype=np.int64)
    for oy in range(OH):
        for ox in range(OW):
            ys = slice(max(0, oy * sh - pt), min(H, oy * sh - pt + kh))
            xs = slice(max(0, ox * sw - pl), min(W, ox * sw - pl + kw))
            out[:, oy, ox] = reduce(x[:, ys, xs].reshape(C, -1), axis=1)
    return out


def maxpool(x, k, stride, pad=(0, 0)):
    """C×H×W int max pooling; padding is ignored (never the maximum)."""
    return _pool(x, k, stride, pad, np.max)


def avgpool_sum(x, k, stride, pad=(0, 0)):
    """C×H×W window sums over the valid taps (padding contributes zero)."""
    return _pool(x, k, stride, pad, np.sum)
