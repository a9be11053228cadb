"""Float host ops: the parts of a quantized model the NPU's ISA cannot express.

The compiler leaves a connected group of ONNX float nodes that no NPU
instruction computes (SSD's L2 normalization: a square, a channel sum, a
square root, a reciprocal; or the reshapes and concatenations that gather
SSD's head outputs) as one host op whose ``attrs["steps"]`` lists the nodes in
order, with the quantize/dequantize pairs of the QDQ model kept as fake
quantization steps. :func:`run_steps` evaluates them in float32, as
onnxruntime evaluates the same nodes between ``DequantizeLinear`` and
``QuantizeLinear``, so the host op agrees with onnxruntime up to rounding
near-ties.

A step is ``{"op", "inputs": [names], "outputs": [name], "attrs": {...}}``;
``Const`` steps carry ``attrs["value"]`` (nested lists) and ``attrs["dtype"]``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["run_steps", "STEP_OPS"]


def _fake_quant(x, a):
    s = np.float32(a["scale"])
    q = np.clip(np.rint(x.astype(np.float32) / s) + a["zero_point"], a["qmin"], a["qmax"])
    return ((q - a["zero_point"]) * s).astype(np.float32)


def _reduce(fn):
    def run(xs, a):
        axes = a.get("axes")
        if axes is None and len(xs) > 1:
            axes = [int(v) for v in np.asarray(xs[1]).reshape(-1)]
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return xs[0]
            axes = None
        return fn(xs[0], axis=None if axes is None else tuple(axes), keepdims=bool(a.get("keepdims", 1)))
    return run


def _reshape(xs, a):
    x, shape = xs[0], [int(v) for v in np.asarray(xs[1]).reshape(-1)]
    shape = [x.shape[i] if v == 0 else v for i, v in enumerate(shape)]
    return x.reshape(shape)


def _lp_norm(xs, a):
    x, axis = xs[0], a.get("axis", -1)
    if a.get("p", 2) == 1:
        n = np.abs(x).sum(axis=axis, keepdims=True)
    else:
        n = np.sqrt((x * x).sum(axis=axis, keepdims=True))
    return np.where(n == 0, x, x / np.where(n == 0, 1, n))


STEP_OPS = {
    "Const": lambda xs, a: np.asarray(a["value"], dtype=a.get("dtype", "float32")),
    "FakeQuant": lambda xs, a: _fake_quant(xs[0], a),
    "Identity": lambda xs, a: xs[0],
    "Mul": lambda xs, a: xs[0] * xs[1],
    "Div": lambda xs, a: xs[0] / xs[1],
    "Add": lambda xs, a: xs[0] + xs[1],
    "Sub": lambda xs, a: xs[0] - xs[1],
    "Max": lambda xs, a: np.maximum(xs[0], xs[1]),
    "Min": lambda xs, a: np.minimum(xs[0], xs[1]),
    "Sqrt": lambda xs, a: np.sqrt(xs[0]),
    "Reciprocal": lambda xs, a: np.float32(1) / xs[0],
    "Pow": lambda xs, a: np.power(xs[0], xs[1]),
    "ReduceSum": _reduce(np.sum),
    "ReduceL2": _reduce(lambda x, axis, keepdims: np.sqrt(np.sum(x * x, axis=axis, keepdims=keepdims))),
    "LpNormalization": _lp_norm,
    "Transpose": lambda xs, a: np.transpose(xs[0], a.get("perm")),
    "Reshape": _reshape,
    "Flatten": lambda xs, a: xs[0].reshape(int(np.prod(xs[0].shape[:a.get("axis", 1)])), -1),
    "Squeeze": lambda xs, a: np.squeeze(xs[0], axis=tuple(a["axes"]) if a.get("axes") else
                                        (tuple(int(v) for v in np.asarray(xs[1]).reshape(-1)) if len(xs) > 1 else None)),
    "Unsqueeze": lambda xs, a: np.expand_dims(xs[0], tuple(a["axes"]) if a.get("axes") else
                                              tuple(int(v) for v in np.asarray(xs[1]).reshape(-1))),
    "Concat": lambda xs, a: np.concatenate(xs, axis=a["axis"]),
}


def run_steps(steps: list, env: dict) -> dict:
    """Evaluate ``steps`` in order on ``env`` (name → array), adding every step's output to it."""
    for st in steps:
        fn = STEP_OPS.get(st["op"])
        if fn is None:
            raise ValueError(f"host step {st['op']!r} is not supported by this runtime")
        out = fn([env[n] for n in st["inputs"]], st.get("attrs", {}))
        env[st["outputs"][0]] = out.astype(np.float32) if out.dtype.kind == "f" else out
    return env
