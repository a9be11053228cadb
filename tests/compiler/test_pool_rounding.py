"""Average pooling against onnxruntime on exact ties: which way a window mean of k + .5 rounds.

With one scale in and out, a 2×2 window whose sum is 2 mod 4 has a mean exactly halfway between two
codes. onnxruntime rounds it to the even *stored* code; POOL rounds ``mean - zp_out`` to even, so
the compiler shifts both zero points by one when ``zp_out`` is odd (codegen, ``_pool_tiles``).
"""

import numpy as np
import pytest
from onnx import TensorProto as TP
from onnx import helper as h
from tessera.compiler.driver import compile_model
from tessera.host.runtime import Runtime

from tessera.arch import PRESETS

from .netgen import ort_run


def _pool_model(scale, zp):
    """x → Q → DQ → AveragePool 2×2/2 → Q → DQ, one scale and zero point throughout."""
    inits = [h.make_tensor("s", TP.FLOAT, [], [scale]), h.make_tensor("z", TP.INT8, [], [zp])]
    nodes = [h.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             h.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             h.make_node("AveragePool", ["xd"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
             h.make_node("QuantizeLinear", ["p", "s", "z"], ["pq"]),
             h.make_node("DequantizeLinear", ["pq", "s", "z"], ["y"])]
    g = h.make_graph(nodes, "pool", [h.make_tensor_value_info("x", TP.FLOAT, [1, 32, 24, 24])],
                     [h.make_tensor_value_info("y", TP.FLOAT, [1, 32, 12, 12])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def _steps_from_onnxruntime(m, shape, scale, zp, seed):
    """The quantized input relative to its zero point, and |NPU - onnxruntime| in steps, on a random input."""
    prog, _ = compile_model(m, PRESETS["sim"])
    x = np.random.default_rng(seed).uniform(-4, 4, shape).astype(np.float32)
    got = Runtime(prog).run({"x": x})["y"]
    want = ort_run(m, x)["y"]
    q = np.clip(np.rint(x / np.float32(scale)) + zp, -128, 127) - zp
    return q, np.abs(got - want) / scale


@pytest.mark.parametrize("zp", [-1, -2, 5])
def test_avg_pool_ties_round_like_onnxruntime(zp):
    scale = 0.0371
    q, steps = _steps_from_onnxruntime(_pool_model(scale, zp), (1, 32, 24, 24), scale, zp, seed=0)
    s = q.reshape(1, 32, 12, 2, 12, 2).sum(axis=(3, 5))
    ties = s % 4 == 2
    assert ties.sum() > 500 and steps.max() <= 1.001
    # Every tie rounds as onnxruntime does (its float mean and quotient are exact here).
    assert (steps[ties] < 0.5).mean() >= 0.99, f"{(steps[ties] < 0.5).mean():.1%} of ties agree"
    assert (steps[~ties] < 0.5).all()


def _global_pool_model(scale, zp):
    """x → Q → DQ → GlobalAveragePool (a 2×2 input) → Q → DQ: onnxruntime's whole-window kernel."""
    m = _pool_model(scale, zp)
    g = m.graph
    g.node[2].CopyFrom(h.make_node("GlobalAveragePool", ["xd"], ["p"], name="gap"))
    g.input[0].CopyFrom(h.make_tensor_value_info("x", TP.FLOAT, [1, 512, 2, 2]))
    g.output[0].CopyFrom(h.make_tensor_value_info("y", TP.FLOAT, [1, 512, 1, 1]))
    return m


@pytest.mark.parametrize("zp", [-1, -2])
def test_global_avg_pool_ties_round_relative_to_the_zero_point(zp):
    # QLinearGlobalAveragePool rounds mean - zp to even: the zero points stay as they are.
    scale = 0.0371
    q, steps = _steps_from_onnxruntime(_global_pool_model(scale, zp), (1, 512, 2, 2), scale, zp, seed=1)
    ties = q.sum(axis=(2, 3), keepdims=True) % 4 == 2
    assert ties.sum() > 80
    assert (steps[ties] < 0.5).mean() >= 0.99 and (steps[~ties] < 0.5).all()
