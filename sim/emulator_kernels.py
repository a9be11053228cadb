"""Exact integer kernels behind the emulator: the int8 GEMM of CONV and EPILOGUE's requantization.

Both are bit-exact to the integer definitions in docs/numerics.md; they are
only faster ways to compute them than plain int64 numpy.

- :class:`Int8Gemm` multiplies int8 matrices into int32 (wrapping modulo
  2**32, as the hardware's accumulators do) with onnxruntime's
  ``MatMulInteger`` (MLAS integer kernels) and falls back to the exact
  chunked float32 GEMM when onnxruntime is missing or a shape fails the
  self-test. The self-test exists because some MLAS kernels (x86 without
  VNNI) form pairs of u8×s8 products in saturating int16: every new shape is
  checked once on all-extreme operands, where such saturation cannot hide.
- :func:`requantize_into` evaluates ``clamp(rnd(scale_product(wrap32(acc + bias),
  mult), shift) + zp, lo, hi)``, :func:`residual_into` the residual form and
  :func:`store_accumulators` CONV's (wrapping) accumulator write, each as one
  numba-compiled loop in the int64 arithmetic of the definition itself.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from tessera.numerics import MAX_SHIFT, wrap32

__all__ = [
    "ChannelParams",
    "Int8Gemm",
    "PreparedGemm",
    "ResidualParams",
    "acc_store",
    "gemm_float32",
    "requantize_into",
    "residual_into",
    "store_accumulators",
]

def gemm_float32(a_u8: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact ``(a_u8 - 128) @ b`` modulo 2**32 as int32, with float32 BLAS.

    float32 sums are exact while every partial sum stays below 2**24, so the
    reduction is split into chunks that keep it so and the (exact, integer)
    chunk results are added in float64.
    """
    a = a_u8.astype(np.float32)
    a -= 128
    wf = b.astype(np.float32)
    k = a.shape[1]
    per = int(np.abs(a).max(initial=0)) * int(np.abs(wf).max(initial=0))
    chunk = max(1, ((1 << 24) - 1) // per) if per else k
    if chunk >= k:
        prod = a @ wf
    else:
        prod = np.zeros((a.shape[0], wf.shape[1]), dtype=np.float64)
        for k0 in range(0, k, chunk):
            prod += a[:, k0:k0 + chunk] @ wf[k0:k0 + chunk]
    return wrap32(np.rint(prod).astype(np.int64)).astype(np.int32)


class Int8Gemm:
    """``(a_u8 - 128) @ b`` for uint8 ``a`` (int8 values offset by 128) and int8 ``b``, int32 result.

    Parameters
    ----------
    backend : {"auto", "onnxruntime", "float32"}
        ``auto`` uses onnxruntime when it imports and passes the self-test,
        float32 otherwise; ``onnxruntime`` insists on it (raises ImportError);
        ``float32`` never uses it.
    """

    def __init__(self, backend: str = "auto"):
        if backend not in ("auto", "onnxruntime", "float32"):
            raise ValueError(f"gemm backend {backend!r}: one of auto, onnxruntime, float32")
        self.backend = backend
        self._run = None
        self._shapes: dict[tuple[int, int, int], bool] = {}   # (m, k, n) -> onnxruntime exact there
        self._prepacked: dict[tuple[int, int, int], bool] = {}  # the same, with B a constant
        if backend != "float32":
            try:
                self._run, self._shapes, self._prepacked = _shared_session()
            except ImportError:
                if backend == "onnxruntime":
                    raise

    def __call__(self, a_u8: np.ndarray, b: np.ndarray) -> np.ndarray:
        if self._run is None:
            return gemm_float32(a_u8, b)
        shape = (a_u8.shape[0], a_u8.shape[1], b.shape[1])
        ok = self._shapes.get(shape)
        if ok is None:
            ok = self._shapes[shape] = self._self_test(*shape)
        if not ok:
            return gemm_float32(a_u8, b)
        return self._run({"A": a_u8, "B": b})

    def prepare(self, b: np.ndarray):
        """A :class:`PreparedGemm` for this fixed ``b``, or None without onnxruntime."""
        return PreparedGemm(self, b) if self._run is not None else None

    def prepacked_ok(self, m: int, k: int, n: int) -> bool:
        """Whether the constant-B form is exact for shape (m, k, n) (self-tested once per shape)."""
        ok = self._prepacked.get((m, k, n))
        if ok is None:
            ok = self._prepacked[(m, k, n)] = self._self_test_prepacked(m, k, n)
        return ok

    def _self_test_prepacked(self, m: int, k: int, n: int) -> bool:
        return _exact_for_shape(lambda a, b: _gemm_session(b).run(["Y"], {"A": a}, None)[0], m, k, n, seed=1)

    def uses_onnxruntime(self, m: int, k: int, n: int) -> bool:
        """Whether shape (m, k, n) goes through onnxruntime (runs the self-test if not done yet)."""
        if self._run is None:
            return False
        if (m, k, n) not in self._shapes:
            self._shapes[(m, k, n)] = self._self_test(m, k, n)
        return self._shapes[(m, k, n)]

    def _self_test(self, m: int, k: int, n: int) -> bool:
        return _exact_for_shape(lambda a, b: self._run({"A": a, "B": b}), m, k, n, seed=0)


def _exact_for_shape(product, m: int, k: int, n: int, seed: int) -> bool:
    """Whether ``product(a_u8, b)`` equals ``(a_u8 - 128) @ b`` as int32 for shape (m, k, n).

    Constant operands at the int8 extremes make every pair of products extreme, so a kernel that
    saturates anywhere is caught; a random pair checks the index arithmetic of this shape.
    """
    for av, bv in ((-128, -128), (127, -128), (-128, 127), (127, 127)):
        got = product(np.full((m, k), av + 128, np.uint8), np.full((k, n), bv, np.int8))
        if not (got == int(wrap32(k * av * bv))).all():
            return False
    rng = np.random.default_rng(k * 7919 + m * 31 + n + seed)
    a = rng.integers(0, 256, (m, k), dtype=np.uint8)
    b = rng.integers(-128, 128, (k, n), dtype=np.int8)
    # |sums| < k * 2**14 < 2**53: float64 BLAS is exact here.
    want = (a.astype(np.float64) - 128) @ b.astype(np.float64)
    got = product(a, b)
    return got.dtype == np.int32 and np.array_equal(got, wrap32(want.astype(np.int64)))


class PreparedGemm:
    """``(a_u8 - 128) @ b`` for one fixed ``b``, from a session that holds ``b`` as a constant.

    onnxruntime packs a constant B once per session instead of once per call (10–25 % of a small GEMM).
    Each (m, k, n) is self-tested for this form too (:meth:`Int8Gemm.prepacked_ok`), falling back to the
    general GEMM.
    """

    def __init__(self, gemm: Int8Gemm, b: np.ndarray):
        self.gemm, self.b = gemm, b
        self.session = _matmul_integer_session(b)
        self._run = getattr(self.session, "_sess", None) or self.session

    def __call__(self, a_u8: np.ndarray) -> np.ndarray:
        if self.gemm.prepacked_ok(a_u8.shape[0], *self.b.shape):
            return self._run.run(["Y"], {"A": a_u8}, None)[0]
        return self.gemm(a_u8, self.b)

    def bind(self, a_u8: np.ndarray, out: np.ndarray):
        """A call without arguments that computes from ``a_u8``'s buffer into ``out`` (int32 ``m×n``) and
        returns ``out``: both buffers are bound once (no per-call feeds or allocation). Needs C-contiguous
        buffers that stay alive and in place."""
        m, n = a_u8.shape[0], self.b.shape[1]
        inner = getattr(self.session, "_sess", None)
        if (inner is None or not self.gemm.prepacked_ok(m, *self.b.shape) or not a_u8.flags.c_contiguous
                or not out.flags.c_contiguous or out.shape != (m, n) or out.dtype != np.int32):
            return lambda: self(a_u8)
        import onnxruntime as ort
        io = self.session.io_binding()
        io.bind_input("A", "cpu", 0, np.uint8, list(a_u8.shape), a_u8.ctypes.data)
        io.bind_output("Y", "cpu", 0, np.int32, [m, n], out.ctypes.data)
        binding, opts = io._iobinding, ort.RunOptions()
        keep = (a_u8, out, io)

        def run():
            inner.run_with_iobinding(binding, opts)
            return keep[1]
        return run


#: One session per process (sessions are thread-safe to run), with its per-shape self-test verdicts.
_SHARED: list = []


def _shared_session():
    if not _SHARED:
        sess = _matmul_integer_session()
        # The binding itself: InferenceSession.run's per-call input validation costs as much as a small
        # GEMM, and the inputs are always the graph's two arrays.
        inner = getattr(sess, "_sess", None)
        run = ((lambda feeds: inner.run(["Y"], feeds, None)[0]) if inner is not None
               else (lambda feeds: sess.run(["Y"], feeds)[0]))
        _SHARED[:] = [run, {}, {}]
    return _SHARED[0], _SHARED[1], _SHARED[2]


def _gemm_session(b: np.ndarray):
    """The session binding (see _shared_session) of a GEMM whose B is the constant ``b``."""
    sess = _matmul_integer_session(b)
    return getattr(sess, "_sess", None) or sess


def _matmul_integer_session(b: np.ndarray | None = None):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    inputs = [helper.make_tensor_value_info("A", TensorProto.UINT8, ["m", "k"])]
    inits = [helper.make_tensor("a_zero_point", TensorProto.UINT8, [], [128])]
    if b is None:
        inputs.append(helper.make_tensor_value_info("B", TensorProto.INT8, ["k", "n"]))
    else:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(b, np.int8), "B"))
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B", "a_zero_point"], ["Y"])], "int8_gemm", inputs,
        [helper.make_tensor_value_info("Y", TensorProto.INT32, ["m", "n"])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    so = ort.SessionOptions()
    # The emulator calls thousands of small GEMMs from one thread; a thread pool only adds synchronization.
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


# ---- requantization -------------------------------------------------------------------------------------
#
# One compiled pass per EPILOGUE in the integer arithmetic of docs/numerics.md itself (int64, wrapping as
# numpy's does), or, where every multiplier is a float32 scale, in float32 arithmetic that equals it
# (ChannelParams.float32). numba compiles each kernel once per process (cached on disk next to this file);
# numpy would take six passes over the accumulators.

_NJIT = {"cache": True, "nogil": True, "fastmath": False, "error_model": "numpy", "boundscheck": False}


@njit(**_NJIT)
def _round_shift1(x, s):
    """round_shift of one int64 ``x`` by an effective shift ``s`` in 0..MAX_SHIFT (tessera.numerics)."""
    if s == 0:
        return x
    half = np.int64(1) << (s - 1)
    return (x + half - 1 + ((x >> s) & 1)) >> s


@njit(**_NJIT)
def _round_sig1(x):
    """tessera.numerics.round_sig of one int64: LLVM's int64 → float32 conversion rounds to nearest even."""
    return np.int64(np.float32(x))


@njit(**_NJIT)
def _wrap32(x):
    return ((x + 2147483648) & 0xFFFFFFFF) - 2147483648


@njit(**_NJIT)
def _rescale1(v, mult, shift):
    """rnd(scale_product(v, mult), shift) of one int64 (docs/numerics.md)."""
    return _round_shift1(_round_sig1(_round_sig1(v) * mult), shift)


@njit(**_NJIT)
def _rescale_f32(v, scale, lo, hi):
    """The same in float32 (``scale`` = mult * 2**-shift exactly), clamped to [lo, hi] before rounding."""
    return np.rint(min(max(np.float32(v) * scale, lo), hi))


@njit(**_NJIT)
def _requantize_kernel(out, acc, bias, mult, shift, zp, lo, hi):
    ob, P, M = acc.shape
    for b in range(ob):
        for p in range(P):
            for c in range(M):
                v = _wrap32(np.int64(acc[b, p, c]) + bias[b, c])
                y = _rescale1(v, mult[b, c], shift[b, c]) + zp
                out[b, p, c] = min(max(y, lo), hi)


@njit(**_NJIT)
def _requantize_f32_kernel(out, acc, bias, scale, zp, lo, hi):
    # numerics.md's scale product in float32 itself (see ChannelParams.float32): vectorizes, unlike the
    # int64 <-> float32 conversions of round_sig. Clamping before rint equals clamping after (integer bounds).
    ob, P, M = acc.shape
    flo, fhi = np.float32(lo - zp), np.float32(hi - zp)
    for b in range(ob):
        for p in range(P):
            for c in range(M):
                v = np.int32(np.int64(acc[b, p, c]) + bias[b, c])
                out[b, p, c] = np.int32(_rescale_f32(v, scale[b, c], flo, fhi)) + zp


@njit(**_NJIT)
def _residual_f32_kernel(out, acc, bias, scale, r, zp_mid, zp_res, mult_a, mult_b, res_shift, zp_out, lo, hi):
    ob, P, M = acc.shape
    alo, ahi = np.float32(-128 - zp_mid), np.float32(127 - zp_mid)
    for b in range(ob):
        for p in range(P):
            for c in range(M):
                v = np.int32(np.int64(acc[b, p, c]) + bias[b, c])
                a = np.int64(_rescale_f32(v, scale[b, c], alo, ahi))
                s = a * mult_a + (np.int64(r[b, p, c]) - zp_res) * mult_b
                out[b, p, c] = min(max(_round_shift1(s, res_shift) + zp_out, lo), hi)


@njit(**_NJIT)
def _residual_kernel(out, acc, bias, mult, shift, r, zp_mid, zp_res, mult_a, mult_b, res_shift, zp_out, lo, hi):
    ob, P, M = acc.shape
    for b in range(ob):
        for p in range(P):
            for c in range(M):
                v = _wrap32(np.int64(acc[b, p, c]) + bias[b, c])
                a = min(max(_rescale1(v, mult[b, c], shift[b, c]) + zp_mid, -128), 127)
                s = (a - zp_mid) * mult_a + (np.int64(r[b, p, c]) - zp_res) * mult_b
                out[b, p, c] = min(max(_round_shift1(s, res_shift) + zp_out, lo), hi)


@njit(**_NJIT)
def _acc_store_kernel(acc, y, accumulate):
    ob, P, M = acc.shape
    for b in range(ob):
        for p in range(P):
            for c in range(M):
                v = y[p, b * M + c]
                if accumulate:
                    v = _wrap32(np.int64(acc[b, p, c]) + v)
                acc[b, p, c] = v


def store_accumulators(acc: np.ndarray, y: np.ndarray, accumulate: bool) -> None:
    """CONV's write of GEMM rows ``y`` (int32 ``[pixel][block * M + channel]``) into ``acc``
    (``[block][pixel][channel]``): replacing, or adding with int32 wrap-around as the hardware's adders do."""
    _acc_store_kernel(acc, y, bool(accumulate))


#: store_accumulators without the wrapper, for callers that pass a bool ``accumulate`` (the emulator's replays).
acc_store = _acc_store_kernel


def _shifts(shift) -> np.ndarray:
    """Effective shift amounts as round_shift applies them (modulo 64, at most MAX_SHIFT)."""
    return np.minimum(np.asarray(shift, np.int64) & 63, MAX_SHIFT)


class ChannelParams:
    """EPILOGUE's per-channel operands, as int64 ``[block][channel]`` arrays with effective shifts.

    Parameters
    ----------
    params : ndarray
        int32 ``[block][channel][bias, mult, shift]``.
    pixels : int
        Pixels per block of the accumulator tiles they will be applied to (kept for the callers' cache key).
    """

    def __init__(self, params: np.ndarray, pixels: int):
        self.pixels = pixels
        self.bias, self.mult = (np.ascontiguousarray(params[..., i], np.int64) for i in range(2))
        self.shift = np.ascontiguousarray(_shifts(params[..., 2]))
        # Where every mult * 2**-shift is a float32 (the compiler's scales are), rnd(scale_product(v, mult),
        # shift) is rint(float32(v) * scale) exactly: round_sig(v) is the float32 conversion, round_sig of the
        # product the float32 multiply's rounding (2**-shift >= 2**-62 keeps it clear of subnormals).
        exact = np.ldexp(self.mult.astype(np.float64), -self.shift)
        self.scale = np.ascontiguousarray(exact.astype(np.float32))
        self.float32 = bool((self.scale.astype(np.float64) == exact).all())


def requantize_into(out: np.ndarray, acc: np.ndarray, ch: ChannelParams, zp: int, lo: int, hi: int) -> None:
    """``out[...] = clamp(rnd(scale_product(wrap32(acc + bias), mult), shift) + zp, lo, hi)``.

    ``acc`` (int32) and ``out`` (int8, any strides) are ``[block][pixel][channel]``.
    """
    if ch.float32:
        _requantize_f32_kernel(out, acc, ch.bias, ch.scale, int(zp), int(lo), int(hi))
    else:
        _requantize_kernel(out, acc, ch.bias, ch.mult, ch.shift, int(zp), int(lo), int(hi))


class ResidualParams:
    """The residual add's constants (EPILOGUE fields), with the effective residual shift."""

    def __init__(self, zp_mid: int, zp_res: int, mult_a: int, mult_b: int, res_shift: int):
        self.zp_mid, self.zp_res, self.mult_a, self.mult_b = int(zp_mid), int(zp_res), int(mult_a), int(mult_b)
        self.res_shift = int(_shifts(res_shift))


def residual_into(out: np.ndarray, acc: np.ndarray, ch: ChannelParams, r: np.ndarray, res: ResidualParams,
                  zp_out: int, lo: int, hi: int) -> None:
    """EPILOGUE with a residual ``r`` (int8 ``[block][pixel][channel]``), as docs/numerics.md defines it:
    ``clamp(rnd((a - zp_mid) * mult_a + (r - zp_res) * mult_b, res_shift) + zp_out, lo, hi)`` where ``a`` is
    the requantization to ``zp_mid`` clamped to int8."""
    if ch.float32:
        _residual_f32_kernel(out, acc, ch.bias, ch.scale, r, res.zp_mid, res.zp_res, res.mult_a, res.mult_b,
                             res.res_shift, int(zp_out), int(lo), int(hi))
    else:
        _residual_kernel(out, acc, ch.bias, ch.mult, ch.shift, r, res.zp_mid, res.zp_res, res.mult_a, res.mult_b,
                         res.res_shift, int(zp_out), int(lo), int(hi))
