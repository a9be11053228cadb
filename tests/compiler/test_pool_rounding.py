"""Average pooling against onnxruntime on exact ties: which way a window mean of k + .5 rounds.

With one scale in and out, a 2×2 window whose sum is 2 mod 4 has a mean exactly halfway between two
codes. onnxruntime averages in float32, so the float rounding of the individual taps decides it,
and it adds the output zero point before the rounding when it fuses the pool (QLinearAveragePool)
and after it when it does not. The compiler asks onnxruntime which (compiler/ort_paths.py) and
POOL's fl32 arithmetic reproduces both paths bit for bit.
"""

import numpy as np
import pytest
from onnx import TensorProto as TP
from onnx import helper as h
from tessera.compiler.driver import compile_model
from tessera.host.runtime import Runtime

from tessera.arch import PRESETS

from .netgen import ort_run


def _pool_model(scale, zp, dtype=TP.INT8):
    """x → Q → DQ → AveragePool 2×2/2 → Q → DQ, one scale and zero point throughout (onnxruntime fuses it)."""
    inits = [h.make_tensor("s", TP.FLOAT, [], [scale]), h.make_tensor("z", dtype, [], [zp])]
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


@pytest.mark.parametrize("zp,dtype", [(-1, TP.INT8), (-2, TP.INT8), (5, TP.INT8), (127, TP.UINT8), (200, TP.UINT8)])
def test_fused_avg_pool_matches_onnxruntime_bit_for_bit(zp, dtype):
    from tessera.compiler.ort_paths import average_pool_paths
    scale = 0.0371
    m = _pool_model(scale, zp, dtype)
    # onnxruntime holds the output zero point as it is here (or moved to uint8 by its x86 int8 pass).
    assert average_pool_paths(m)["pool"] in (zp, zp + 128)
    zp8 = zp - 128 if dtype == TP.UINT8 else zp
    q, steps = _steps_from_onnxruntime(m, (1, 32, 24, 24), scale, zp8, seed=0)
    ties = q.reshape(1, 32, 12, 2, 12, 2).sum(axis=(3, 5)) % 4 == 2
    assert ties.sum() > 500
    assert steps.max() == 0, f"{(steps > 0).mean():.2%} of the outputs differ"


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



def _shared_pool_model(scale, zp, shape):
    """x → Q → DQ → AveragePool 2×2/2 → Q → (DQ → y, DQ → MaxPool → Q → DQ → y2): a pooled tensor with two users.

    onnxruntime's x86 int8 kernels move a Q → DQ pair with one user to uint8; this pool's output Q
    has two, so it stays int8 while its input becomes uint8, and DQ → AveragePool → Q of mixed types
    is not fused: onnxruntime averages in float32, as inside the reduced DenseNet (whose pooled
    tensors feed a concatenation and the next BatchNorm).
    """
    inits = [h.make_tensor("s", TP.FLOAT, [], [scale]), h.make_tensor("z", TP.INT8, [], [zp])]
    nodes = [h.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             h.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             h.make_node("AveragePool", ["xd"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
             h.make_node("QuantizeLinear", ["p", "s", "z"], ["pq"]),
             h.make_node("DequantizeLinear", ["pq", "s", "z"], ["y"]),
             h.make_node("DequantizeLinear", ["pq", "s", "z"], ["pd"]),
             h.make_node("MaxPool", ["pd"], ["m"], kernel_shape=[2, 2], strides=[2, 2], name="max"),
             h.make_node("QuantizeLinear", ["m", "s", "z"], ["mq"]),
             h.make_node("DequantizeLinear", ["mq", "s", "z"], ["y2"])]
    out = [shape[0], shape[1], shape[2] // 2, shape[3] // 2]
    g = h.make_graph(nodes, "pool", [h.make_tensor_value_info("x", TP.FLOAT, shape)],
                     [h.make_tensor_value_info("y", TP.FLOAT, out),
                      h.make_tensor_value_info("y2", TP.FLOAT, [out[0], out[1], out[2] // 2, out[3] // 2])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize("scale,zp", [(0.0371, -1), (0.013, 12), (0.25, 0)])
def test_unfused_avg_pool_matches_onnxruntime_bit_for_bit(scale, zp):
    from tessera.compiler.ort_paths import average_pool_paths
    shape = (1, 32, 24, 24)
    m = _shared_pool_model(scale, zp, shape)
    assert average_pool_paths(m) == {"pool": "unfused"}
    q, steps = _steps_from_onnxruntime(m, shape, scale, zp, seed=2)
    ties = q.reshape(1, 32, 12, 2, 12, 2).sum(axis=(3, 5)) % 4 == 2
    assert ties.sum() > 500
    assert steps.max() == 0, f"{(steps > 0).mean():.2%} of the outputs differ"
    # The fixed-point rule (a POOL built without fl32) rounds some float32 ties the other way; with a
    # power-of-two scale every product is exact and the two agree.
    prog, _ = compile_model(m, PRESETS["sim"].replace(pool_fl32=False))
    x = np.random.default_rng(2).uniform(-4, 4, shape).astype(np.float32)
    fixed = np.abs(Runtime(prog).run({"x": x})["y"] - ort_run(m, x)["y"]) / scale
    assert (fixed.max() > 0.5) == (scale != 0.25)

