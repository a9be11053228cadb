"""Front end: QDQ and QOperator models lower to the integer graph; bad models give clear errors."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as h
from tessera.compiler.frontend import load_onnx, lower
from tessera.compiler.ir import CompileError

from tessera.arch import PRESETS

from .netgen import NetBuilder, assert_layer_exact, check_against_ort, quantize


def _single_conv(act="uint8", fmt="QDQ", **kw):
    b = NetBuilder((1, 5, 7, 9), seed=3)
    y = b.conv("x", 6, **kw)
    return quantize(b.model([y]), act=act, fmt=fmt)


@pytest.mark.parametrize("fmt", ["QDQ", "QOperator"])
@pytest.mark.parametrize("act", ["uint8", "int8"])
def test_lower_conv_params(fmt, act):
    q = _single_conv(act, fmt)
    g = lower(load_onnx(q))
    assert [op.kind for op in g.ops] == ["conv"]
    op = g.ops[0]
    x, y = g.tensors[op.inputs[0]], g.tensors[op.output]
    assert op.attrs["w"].shape == (6, 5, 3, 3) and op.attrs["w_scale"].shape == (6,)
    assert -128 <= x.zero_point <= 127 and -128 <= y.zero_point <= 127
    assert x.src_dtype == act
    # uint8 zero points are shifted into the int8 domain.
    zps = {i.name: onnx.numpy_helper.to_array(i) for i in q.graph.initializer if "zero_point" in i.name}
    if act == "uint8":
        assert any(int(v) - 128 == x.zero_point for v in zps.values() if v.dtype == np.uint8)
    assert g.inputs[0][0] == "x" and g.outputs[0][0] == q.graph.output[0].name


def test_lower_qdq_batchnorm_after_conv_folds():
    q = _single_conv("int8")
    conv = next(n for n in q.graph.node if n.op_type == "Conv")
    out = conv.output[0]
    conv.output[0] = "pre_bn"
    rng = np.random.default_rng(0)
    names = []
    for k, v in enumerate([rng.uniform(-1.5, 1.5, 6), rng.normal(0, .1, 6), rng.normal(0, .1, 6),
                           rng.uniform(.5, 1.5, 6)]):
        names.append(f"bn{k}")
        q.graph.initializer.append(onnx.numpy_helper.from_array(v.astype(np.float32), f"bn{k}"))
    q.graph.node.insert(list(q.graph.node).index(conv) + 1,
                        h.make_node("BatchNormalization", ["pre_bn"] + names, [out], name="bn"))
    g = lower(load_onnx(q))
    assert [op.kind for op in g.ops] == ["conv"]
    assert_layer_exact(check_against_ort(q, PRESETS["sim"], n_inputs=2))


def _graph(nodes, inits, x_shape=(1, 3, 4, 4), y_shape=None, y="y"):
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TP.FLOAT, list(x_shape))],
                     [h.make_tensor_value_info(y, TP.FLOAT, y_shape)], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def _qdq_prefix():
    inits = [onnx.numpy_helper.from_array(np.float32(0.05), "s"), onnx.numpy_helper.from_array(np.uint8(128), "z")]
    nodes = [h.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
             h.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq")]
    return nodes, inits


def test_lower_unsupported_op_names_node_and_supported():
    nodes, inits = _qdq_prefix()
    nodes.append(h.make_node("Sin", ["xd"], ["y"], name="weird_sin"))
    with pytest.raises(CompileError, match=r"weird_sin.*\(Sin\).*not supported; supported: .*Conv"):
        lower(load_onnx(_graph(nodes, inits)))


def test_lower_group_conv_rejected():
    q = _single_conv()
    for n in q.graph.node:
        if n.op_type == "Conv":
            n.attribute.append(h.make_attribute("group", 1))
    lower(load_onnx(q))          # group=1 is fine
    b = NetBuilder((1, 4, 6, 6))
    y = b.conv("x", 4, k=3)
    m = b.model([y])
    for n in m.graph.node:
        if n.op_type == "Conv":
            n.attribute.append(h.make_attribute("group", 2))
            w = next(i for i in m.graph.initializer if i.name == n.input[1])
            arr = onnx.numpy_helper.to_array(w)[:, :2]
            w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
    q = quantize(m)
    with pytest.raises(CompileError, match=r"\(Conv\): group=2 is not supported; supported: group=1"):
        lower(load_onnx(q))


def test_lower_float_model_needs_calibration():
    b = NetBuilder((1, 3, 5, 5))
    m = b.model([b.conv("x", 4)])
    with pytest.raises(CompileError, match="float input.*--calibrate"):
        lower(load_onnx(m))


def test_load_onnx_garbage_file(tmp_path):
    p = tmp_path / "bad.onnx"
    p.write_bytes(b"\x00\x01not a model at all" * 10)
    with pytest.raises(CompileError, match="bad.onnx"):
        load_onnx(str(p))


def test_lower_auto_pad_same_upper():
    b = NetBuilder((1, 3, 7, 6), seed=4)
    y = b.conv("x", 5, k=3, stride=2, pad=(0, 0))
    m = b.model([y])
    for n in m.graph.node:
        if n.op_type == "Conv":
            del n.attribute[:]
            n.attribute.extend([h.make_attribute("kernel_shape", [3, 3]), h.make_attribute("strides", [2, 2]),
                                h.make_attribute("auto_pad", "SAME_UPPER")])
    m.graph.output[0].type.tensor_type.shape.dim[2].dim_value = 4
    m.graph.output[0].type.tensor_type.shape.dim[3].dim_value = 3
    g = lower(load_onnx(quantize(m)))
    assert g.ops[0].attrs["pads"] == [1, 0, 1, 1] or sum(g.ops[0].attrs["pads"]) == 3


@pytest.mark.parametrize("kind", ["bn", "mul", "add"])
def test_lower_affine_op_after_pool_becomes_diagonal_conv(kind):
    # Pre-activation BatchNormalization and per-channel Mul/Add on a pooled tensor (DenseNet-style):
    # no convolution to fold into, so it becomes a diagonal 1×1 convolution.
    from .test_passes import QDQ
    q = QDQ((1, 6, 6, 6))
    p = q.op("MaxPool", [q.x], "p", kernel_shape=[2, 2], strides=[2, 2])
    rng = np.random.default_rng(1)
    if kind == "bn":
        bn = [q.init(v.astype(np.float32)) for v in (rng.uniform(-1.5, 1.5, 6), rng.normal(0, .2, 6),
                                                      rng.normal(0, .2, 6), rng.uniform(.5, 1.5, 6))]
        y = q.op("BatchNormalization", [p] + bn, "bn", 0.05, 120)
    elif kind == "mul":
        y = q.op("Mul", [p, q.init(rng.uniform(-2, 2, (6, 1, 1)).astype(np.float32))], "mul", 0.06, 128)
    else:
        y = q.op("Add", [p, q.init(rng.uniform(-1, 1, (1, 6, 1, 1)).astype(np.float32))], "add", 0.07, 110)
    m = q.model(y)
    g = lower(load_onnx(m))
    assert [op.kind for op in g.ops] == ["pool", "conv"]
    assert_layer_exact(check_against_ort(m, PRESETS["sim"], n_inputs=2))


@pytest.mark.parametrize("kind", ["mul", "add"])
def test_lower_affine_after_conv_folds_into_it(kind):
    # Conv → Mul/Add by a per-channel constant → QuantizeLinear: one convolution with new scales/bias.
    from .test_passes import QDQ
    q = QDQ((1, 4, 6, 5))
    c = q.conv(q.x, 6, 4, "c", quant=False)
    k = np.random.default_rng(2).uniform(-2, 2, (1, 6, 1, 1)).astype(np.float32)
    y = q.op("Mul" if kind == "mul" else "Add", [c, q.init(k)], "aff", 0.08, 128)
    m = q.model(y)
    g = lower(load_onnx(m))
    assert [op.kind for op in g.ops] == ["conv"]
    assert_layer_exact(check_against_ort(m, PRESETS["sim"], n_inputs=2))


def test_lower_mul_by_broadcast_row_is_rejected():
    from .test_passes import QDQ
    q = QDQ((1, 6, 4, 4))
    y = q.op("Mul", [q.x, q.init(np.ones(4, np.float32))], "mul", 0.06, 128)
    with pytest.raises(CompileError, match=r"'mul' \(Mul\): a constant of shape \[4\].*per-channel"):
        lower(load_onnx(q.model(y)))


def _mutated(fmt, mutate):
    import copy
    b = NetBuilder((1, 3, 6, 6), seed=1)
    q = copy.deepcopy(quantize(b.model([b.conv("x", 4)]), fmt=fmt))
    mutate(q)
    return q


def _truncate_bias(q):
    init = next(i for i in q.graph.initializer if i.data_type == onnx.TensorProto.INT32)
    arr = onnx.numpy_helper.to_array(init)
    init.CopyFrom(onnx.numpy_helper.from_array(arr[:2].copy(), init.name))


def _zero_stride(q):
    conv = next(n for n in q.graph.node if "Conv" in n.op_type)
    conv.attribute.append(h.make_attribute("strides", [0, 1]))


def _drop_input(q):
    conv = next(n for n in q.graph.node if "Conv" in n.op_type)
    conv.input[1] = "nowhere"


@pytest.mark.parametrize("fmt", ["QDQ", "QOperator"])
@pytest.mark.parametrize("mutate", [_truncate_bias, _zero_stride, _drop_input])
def test_malformed_models_are_compile_errors(fmt, mutate):
    from tessera.compiler.driver import compile_model
    with pytest.raises(CompileError):
        compile_model(_mutated(fmt, mutate), PRESETS["sim"])


def _l2norm_net(seed=0):
    """conv → SSD-style L2 normalization (as tf2onnx writes tf.math.l2_normalize · gamma) → conv."""
    b = NetBuilder((1, 3, 8, 7), seed=seed)
    x = b.conv("x", 20, 3, relu=True)
    sq = b._name("sq")
    b.nodes.append(h.make_node("Mul", [x, x], [sq], name="norm/Square"))
    s = b._name("sum")
    b.nodes.append(h.make_node("ReduceSum", [sq, b.const(np.array([1]), "axes")], [s], name="norm/Sum", keepdims=1))
    b.inits[-1] = onnx.numpy_helper.from_array(np.array([1], np.int64), b.inits[-1].name)
    m = b._name("max")
    b.nodes.append(h.make_node("Max", [s, b.const(np.array(1e-12))], [m], name="norm/Maximum"))
    r, rr = b._name("sqrt"), b._name("rsqrt")
    b.nodes.append(h.make_node("Sqrt", [m], [r], name="norm/Rsqrt"))
    b.nodes.append(h.make_node("Reciprocal", [r], [rr], name="norm/Rsqrt_rec"))
    g = b._name("g")
    b.nodes.append(h.make_node("Mul", [rr, b.const(b.rng.uniform(10, 30, (20, 1, 1)))], [g], name="norm/gamma"))
    y = b._name("y")
    b.nodes.append(h.make_node("Mul", [x, g], [y], name="norm/mul"))
    b.shape[y] = b.shape[x]
    out = b.conv(y, 12, 3, name="head")
    return b.model([out], opset=13)


@pytest.mark.parametrize("act", ["int8", "uint8"])
def test_l2_normalization_runs_on_the_host_between_two_segments(tmp_path, act):
    from tessera.compiler.driver import compile_model, format_report
    from tessera.program import Program
    q = quantize(_l2norm_net(), act=act)
    prog, reports = compile_model(q, PRESETS["sim"])
    assert [h["op"] for h in prog.host_ops] == ["L2Normalization"] and len(prog.starts) == 2
    op = prog.host_ops[0]
    assert op["after_segment"] == 0 and {s["op"] for s in op["attrs"]["steps"]} >= {"ReduceSum", "Sqrt", "FakeQuant"}
    # The NPU tensors the host op reads and writes are not the model's inputs or outputs.
    assert [t.name for t in prog.inputs] == ["x"] and len(prog.outputs) == 1
    assert "host op L2Normalization (norm" in format_report(reports, prog)
    prog.save(tmp_path / "p.tsp")
    back = Program.load(tmp_path / "p.tsp")
    assert back.starts == prog.starts and (tmp_path / "p.tsp").read_bytes()[8] == 2
    # The host op matches onnxruntime's float evaluation between DequantizeLinear and QuantizeLinear.
    assert_layer_exact(check_against_ort(q, PRESETS["sim"], n_inputs=2, program=back))


def test_program_with_segments_rejects_start_not_after_end(tmp_path):
    from tessera.compiler.driver import compile_model
    from tessera.program import Program, ProgramError
    prog, _ = compile_model(quantize(_l2norm_net(), act="int8"), PRESETS["sim"])
    prog.starts = [0, prog.starts[1] - 1]
    with pytest.raises(ProgramError, match="do not each follow an END"):
        Program.from_bytes(prog.to_bytes())


def _nhwc_flatten_net(seed=0, extra_reader=False):
    """conv → Transpose(0,2,3,1) → Reshape(1, -1) → Gemm → Relu → Gemm: Keras' Flatten as tf2onnx writes it."""
    b = NetBuilder((1, 3, 6, 5), seed=seed)
    x = b.conv("x", 8, 3, relu=True)
    t = b.unary("Transpose", x, perm=[0, 2, 3, 1])
    b.shape[t] = [1, 6, 5, 8]
    f = b._name("flat")
    b.nodes.append(h.make_node("Reshape", [t, b.const(np.array([-1, 240]))], [f], name="flatten/Reshape"))
    b.inits[-1] = onnx.numpy_helper.from_array(np.array([-1, 240], np.int64), b.inits[-1].name)
    b.shape[f] = [1, 240]
    y = b._name("fc")
    # Keras' Dense: x @ kernel (K×N), rows in NHWC flatten order.
    b.nodes.append(h.make_node("Gemm", [f, b.const(b.rng.normal(0, 1 / np.sqrt(240), (240, 16))),
                                        b.const(b.rng.normal(0, 0.1, 16))], [y], name="fc1"))
    b.shape[y] = [1, 16]
    y = b.gemm(b.relu(y), 10)
    outs = [y] + ([t] if extra_reader else [])
    return b.model(outs)


@pytest.mark.parametrize("fmt", ["QDQ", "QOperator"])
@pytest.mark.parametrize("act", ["int8", "uint8"])
def test_lower_nhwc_flatten_folds_into_fc_weights(act, fmt):
    from tessera.compiler.driver import compile_model
    q = quantize(_nhwc_flatten_net(), act=act, fmt=fmt)
    assert {"Transpose", "Reshape"} <= {n.op_type for n in q.graph.node}
    prog, reports = compile_model(q, PRESETS["sim"])
    # One segment, nothing on the host: the flatten's NHWC order went into fc1's weight rows.
    assert prog.host_ops == [] and prog.starts == [0]
    assert len(reports) == 3 and any(r.name.startswith("fc1") for r in reports)
    assert_layer_exact(check_against_ort(q, PRESETS["sim"], n_inputs=3, program=prog))


def test_lower_nhwc_flatten_with_another_reader_stays_on_the_host():
    from tessera.compiler.driver import compile_model
    # The transposed map is also a graph output: no FC weights can absorb the order for that reader.
    prog, _ = compile_model(quantize(_nhwc_flatten_net(extra_reader=True), act="int8"), PRESETS["sim"])
    assert [hop["op"] for hop in prog.host_ops] == ["Reshape"]
