"""Each graph pass on a tiny hand-written onnx.helper graph."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh
from tessera.compiler.driver import compile_model
from tessera.compiler.frontend import load_onnx, lower
from tessera.compiler.ir import CompileError
from tessera.compiler.passes import (
    EliminateReshape,
    FoldBatchNorm,
    FoldPad,
    FuseActivation,
    FuseAdd,
    GemmToConv,
    LowerLeftovers,
    PadChannels,
    PatchStem,
    PlanConcat,
    SpaceToDepthStem,
    run_passes,
)
from tessera.host.runtime import Runtime

from tessera.arch import PRESETS, NpuConfig

from .netgen import NetBuilder, assert_layer_exact, check_against_ort, ort_run

SIM = PRESETS["sim"]


class QDQ:
    """Hand-written QDQ graphs: every activation quantized with a chosen uint8 scale and zero point."""

    def __init__(self, shape=(1, 3, 6, 5), seed=0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.k = [], [], 0
        self.shape = list(shape)
        self.x = self.q("x", 0.04, 128)

    def init(self, arr, name=None):
        self.k += 1
        name = name or f"i{self.k}"
        self.inits.append(nh.from_array(arr, name))
        return name

    def q(self, f, scale, zp):
        """Quantize-dequantize float tensor f; returns the dequantized name."""
        s, z = self.init(np.float32(scale)), self.init(np.uint8(zp))
        self.nodes += [h.make_node("QuantizeLinear", [f, s, z], [f + "_q"], name=f + "_Q"),
                       h.make_node("DequantizeLinear", [f + "_q", s, z], [f + "_dq"], name=f + "_DQ")]
        return f + "_dq"

    def conv(self, x, cout, cin, out, scale=0.05, zp=100, k=3, pads=(1, 1, 1, 1), quant=True, **attrs):
        w = self.rng.integers(-127, 128, (cout, cin, k, k)).astype(np.int8)
        ws = self.rng.uniform(0.001, 0.004, cout).astype(np.float32)
        wq = self.init(w)
        wd = f"{out}_w"
        self.nodes.append(h.make_node("DequantizeLinear", [wq, self.init(ws), self.init(np.zeros(cout, np.int8))],
                                      [wd], axis=0))
        self.nodes.append(h.make_node("Conv", [x, wd], [out], name=out, kernel_shape=[k, k], pads=list(pads),
                                      **attrs))
        return self.q(out, scale, zp) if quant else out

    def op(self, op_type, ins, out, scale=None, zp=None, **attrs):
        self.nodes.append(h.make_node(op_type, ins, [out], name=out, **attrs))
        return self.q(out, scale, zp) if scale else out

    def model(self, out, out_shape=None):
        g = h.make_graph(self.nodes, "g", [h.make_tensor_value_info("x", TP.FLOAT, self.shape)],
                         [h.make_tensor_value_info(out, TP.FLOAT, out_shape)], self.inits)
        m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
        m.ir_version = 8
        return m


def _pipeline_until(g, stop, config=SIM):
    for p in run_passes.__globals__["PIPELINE"](config):
        if isinstance(p, stop):
            return g, p
        g = p(g)
    raise AssertionError(stop)


#: `sim` with one read in flight: a LOAD moves a beat per memory round trip, so a stem's im2col image
#: (PatchStem) costs more port time than the space-to-depth image saves MAC issues.
SLOW_PORT = SIM.replace(name="slow-port", mem_outstanding=1)


def test_fold_batchnorm_keeps_float_results():
    b = NetBuilder((1, 3, 6, 7), seed=1)
    y = b.conv("x", 5, bn=True)
    m = b.model([y])
    x = np.random.default_rng(0).normal(size=(1, 3, 6, 7)).astype(np.float32)
    ref = ort_run(m, x)[y]
    folded = FoldBatchNorm()(onnx.ModelProto.FromString(m.SerializeToString()))
    assert not any(n.op_type == "BatchNormalization" for n in folded.graph.node)
    np.testing.assert_allclose(ort_run(folded, x)[y], ref, rtol=1e-4, atol=1e-4)


def test_fold_pad_into_conv():
    q = QDQ()
    pads = q.init(np.array([0, 0, 1, 2, 0, 0, 0, 1], np.int64))
    p = q.op("Pad", [q.x, pads], "p", 0.04, 128)
    y = q.conv(p, 4, 3, "y", pads=(0, 0, 0, 0))
    m = q.model(y)
    g = lower(load_onnx(m))
    assert [op.kind for op in g.ops] == ["pad", "conv"]
    g = FoldPad()(g)
    assert [op.kind for op in g.ops] == ["conv"] and g.ops[0].attrs["pads"] == [1, 2, 0, 1]
    assert_layer_exact(check_against_ort(m, SIM, n_inputs=2))


def test_fold_pad_rejects_nonzero_value():
    q = QDQ()
    pads = q.init(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))
    p = q.op("Pad", [q.x, pads, q.init(np.float32(1.0))], "p", 0.04, 128)
    y = q.conv(p, 4, 3, "y", pads=(0, 0, 0, 0))
    with pytest.raises(CompileError, match=r"'p' \(Pad\).*not supported"):
        FoldPad()(lower(load_onnx(q.model(y))))


def test_fuse_activation_into_conv_epilogue():
    q = QDQ()
    y = q.conv(q.x, 4, 3, "c", scale=0.05, zp=120)
    r = q.op("Clip", [y, q.init(np.float32(0.0)), q.init(np.float32(2.0))], "r", 0.03, 20)
    m = q.model(r)
    g = lower(load_onnx(m))
    assert [op.kind for op in g.ops] == ["conv", "clamp"]
    g = FuseActivation()(g)
    assert [op.kind for op in g.ops] == ["conv"] and g.ops[0].attrs["clamp"] == (0.0, 2.0)
    assert g.ops[0].output == g.outputs[0][1]
    assert_layer_exact(check_against_ort(m, SIM, n_inputs=2))


def test_fuse_add_into_conv_residual():
    q = QDQ((1, 16, 5, 4))
    a = q.conv(q.x, 16, 16, "a", scale=0.05, zp=110)
    y = q.op("Add", [a, q.x], "s", 0.06, 90)
    m = q.model(y)
    g = FuseAdd()(FuseActivation()(lower(load_onnx(m))))
    assert [op.kind for op in g.ops] == ["conv"]
    res = g.ops[0].attrs["residual"]
    assert res["tensor"] == g.inputs[0][1] and res["mid_zp"] == 110 - 128
    assert_layer_exact(check_against_ort(m, SIM, n_inputs=2))


def test_unfused_add_becomes_identity_conv():
    # Add of the input and a max pool: no convolution to fuse into.
    q = QDQ((1, 5, 6, 6))
    p = q.op("MaxPool", [q.x], "p", 0.04, 128, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    y = q.op("Add", [p, q.x], "s", 0.07, 60)
    m = q.model(y)
    g = FuseAdd()(lower(load_onnx(m)))
    assert [op.kind for op in g.ops] == ["pool", "add"]
    g = LowerLeftovers()(g)
    assert g.ops[1].kind == "conv" and "residual" in g.ops[1].attrs
    assert_layer_exact(check_against_ort(m, SIM, n_inputs=2))


def test_eliminate_reshape_and_gemm_to_conv():
    q = QDQ((1, 3, 4, 3))
    c = q.conv(q.x, 6, 3, "c", scale=0.05, zp=128)
    f = q.op("Flatten", [c], "f", 0.05, 128, axis=1)
    w = q.rng.integers(-127, 128, (72, 5)).astype(np.int8)
    wd = "fc_w"
    q.nodes.append(h.make_node("DequantizeLinear", [q.init(w), q.init(np.float32(0.003)), q.init(np.int8(0))], [wd]))
    y = q.op("MatMul", [f, wd], "y", 0.1, 128)
    m = q.model(y)
    g = lower(load_onnx(m))
    assert [op.kind for op in g.ops] == ["conv", "alias", "gemm"]
    g = EliminateReshape()(g)
    assert [op.kind for op in g.ops] == ["conv", "gemm"] and g.ops[1].attrs["spatial_input"]
    g = GemmToConv()(g)
    assert g.ops[1].kind == "conv" and g.ops[1].attrs["kernel"] == [4, 3]
    assert g.ops[1].attrs["w"].shape == (5, 6, 4, 3)
    assert_layer_exact(check_against_ort(m, SIM, n_inputs=2))


def test_data_moving_transpose_of_an_output_runs_on_the_host():
    q = QDQ((1, 3, 4, 3))
    c = q.conv(q.x, 6, 3, "c")
    t = q.op("Transpose", [c], "t", 0.05, 100, perm=[0, 2, 3, 1])
    g = EliminateReshape()(lower(load_onnx(q.model(t))))
    # NCHW -> NHWC moves data in the model's terms, so the host does it (SSD's head outputs).
    assert [op.kind for op in g.ops] == ["conv"] and [h["op"] for h in g.host_ops] == ["Reshape"]
    assert_layer_exact(check_against_ort(q.model(t), SIM, n_inputs=1))


def test_pad_channels_to_lanes_and_rows():
    q = QDQ((1, 3, 4, 4))
    c = q.conv(q.x, 21, 3, "c")
    p = q.op("MaxPool", [c], "p", kernel_shape=[2, 2], strides=[2, 2])
    m = q.model(q.q(p, 0.05, 100))
    g = run_passes(lower(load_onnx(m)), SIM)
    pc = PadChannels(SIM.replace(lanes=8, rows=32))(g)
    cpads = {op.kind: pc.tensors[op.output].cpad for op in pc.ops}
    assert pc.tensors[pc.inputs[0][1]].cpad == 8
    assert cpads == {"conv": 32, "pool": 32}


def test_plan_concat_writes_slices_and_copies_the_rest():
    # Concat(conv output, graph input): the conv writes its slice directly, the input is copied in.
    q = QDQ((1, 5, 4, 4))
    c = q.conv(q.x, 21, 5, "c", scale=0.04, zp=128)
    y = q.op("Concat", [c, q.x], "cat", 0.04, 128, axis=1)
    m = q.model(y)
    g = lower(load_onnx(m))
    for p in (FoldPad(), FuseActivation(), FuseAdd(), EliminateReshape(), GemmToConv(), LowerLeftovers()):
        g = p(g)
    with pytest.raises(CompileError, match="graph output.*slice or padded concatenation"):
        PadChannels(SIM)(PlanConcat()(g))
    g = lower(load_onnx(m))
    g = PlanConcat()(g)
    assert [op.kind for op in g.ops] == ["conv", "conv", "concat"]
    assert g.ops[1].name.endswith("copy1")


@pytest.mark.parametrize("shape, cin, k, stride, pads", [
    ((1, 3, 15, 13), 3, 7, 2, (3, 3, 3, 3)),      # ResNet's stem, odd non-square image
    ((1, 2, 11, 14), 2, 5, 3, (2, 1, 0, 2)),      # stride 3, asymmetric padding
])
def test_space_to_depth_stem_rewrites_strided_stem(shape, cin, k, stride, pads):
    q = QDQ(shape, seed=4)
    m = q.model(q.conv(q.x, 20, cin, "c", k=k, pads=pads, strides=[stride, stride]))
    g, p = _pipeline_until(lower(load_onnx(m)), SpaceToDepthStem, SLOW_PORT)
    op = g.ops[0]
    w, (oh, ow) = op.attrs["w"].copy(), g.tensors[op.output].shape[2:]
    g = p(g)
    K = -(-k // stride)
    x = g.tensors[op.inputs[0]]
    tr = g.input_transforms[x.name]
    assert op.attrs["kernel"] == [K, K] and op.attrs["strides"] == [1, 1] and op.attrs["pads"] == [0, 0, 0, 0]
    assert tr["block"] == stride and tr["shape"] == list(shape) and tr["pad"][:2] == [pads[0], pads[1]]
    assert x.channels == stride * stride * cin
    # the stored image holds every row and column the outputs read
    assert x.height >= oh - 1 + K and x.width >= ow - 1 + K
    assert (shape[2] + sum(tr["pad"][0::2])) == stride * x.height
    w2 = op.attrs["w"]
    for o, c, ky, kx in [(0, 0, 0, 0), (3, cin - 1, k - 1, k - 2), (19, 1, k // 2, 1)]:
        ch = ((ky % stride) * stride + kx % stride) * cin + c
        assert w2[o, ch, ky // stride, kx // stride] == w[o, c, ky, kx]
    assert np.count_nonzero(w2) == np.count_nonzero(w)
    # the golden model after the whole pipeline, the host packing the input as the I/O table says
    prog = compile_model(m, SLOW_PORT)[0]
    assert prog.inputs[0].block == stride and prog.inputs[0].patch is None
    assert_layer_exact(check_against_ort(m, SLOW_PORT, n_inputs=2, program=prog))


def test_space_to_depth_stem_leaves_unit_stride_and_wide_inputs():
    for shape, cin, stride in (((1, 3, 9, 9), 3, 1), ((1, 16, 9, 9), 16, 2)):
        q = QDQ(shape)
        m = q.model(q.conv(q.x, 8, cin, "c", k=3, strides=[stride, stride]))
        g, p = _pipeline_until(lower(load_onnx(m)), SpaceToDepthStem, SLOW_PORT)
        kernel = list(g.ops[0].attrs["kernel"])
        g = p(g)
        assert g.ops[0].attrs["kernel"] == kernel and not g.input_transforms


#: 64 lanes (the stem's 12 packed channels would leave most of them empty) and small buffers, so
#: the phased stem splits into several tiles and output groups that straddle phases.
WIDE = NpuConfig(name="wide", lanes=64, rows=64, abuf_words=1024, wbuf_words=64, accbuf_words=160, pbuf_words=16,
                 bus_bytes=64, dram_bytes=8 << 20, mem_outstanding=2)   # a slow port: no PatchStem


@pytest.mark.parametrize("cout", [20, 70])
def test_space_to_depth_stem_phases_on_wide_lanes(cout):
    q = QDQ((1, 3, 25, 21), seed=5)
    m = q.model(q.conv(q.x, cout, 3, "c", k=7, pads=(3, 3, 3, 3), strides=[2, 2]))
    g = run_passes(lower(load_onnx(m)), WIDE)
    op = g.ops[0]
    P = op.attrs["phases"]
    assert P == 3 and op.attrs["kernel"] == [2, 2] and g.input_transforms[op.inputs[0]]["block"] == 6
    assert op.attrs["w"].shape[0] == P * P * g.tensors[op.output].cpad
    prog, rep = compile_model(m, WIDE)
    assert rep[0].macs == cout * 3 * 49 * 13 * 11           # model MACs, not the phased product
    assert_layer_exact(check_against_ort(m, WIDE, n_inputs=2, program=prog))


@pytest.mark.parametrize("shape, cin, k, stride, pads", [
    ((1, 3, 15, 13), 3, 7, 2, (3, 3, 3, 3)),      # ResNet's stem, odd non-square image: last row unread
    ((1, 2, 11, 14), 2, 5, 3, (2, 1, 0, 2)),      # stride 3, asymmetric padding
])
def test_patch_stem_runs_the_stem_as_1x1_on_im2col(shape, cin, k, stride, pads):
    q = QDQ(shape, seed=4)
    m = q.model(q.conv(q.x, 20, cin, "c", k=k, pads=pads, strides=[stride, stride]))
    g, p = _pipeline_until(lower(load_onnx(m)), PatchStem)
    op = g.ops[0]
    w, (oh, ow) = op.attrs["w"].copy(), g.tensors[op.output].shape[2:]
    costs = p.costs(g, op)
    assert costs["patches"] < min(costs["none"], costs.get("space_to_depth", np.inf))
    g = p(g)
    x = g.tensors[op.inputs[0]]
    tr = g.input_transforms[x.name]
    assert op.attrs["kernel"] == [1, 1] and op.attrs["strides"] == [1, 1] and op.attrs["pads"] == [0, 0, 0, 0]
    assert tr["block"] == stride and tr["patch"] == [k, k] and tr["pad"][:2] == [pads[0], pads[1]]
    assert x.shape == (1, k * k * cin, oh, ow)
    for o, c, ky, kx in [(0, 0, 0, 0), (3, cin - 1, k - 1, k - 2), (19, 1, k // 2, 1)]:
        assert op.attrs["w"][o, (ky * k + kx) * cin + c, 0, 0] == w[o, c, ky, kx]
    # SpaceToDepthStem leaves a transformed input alone
    assert SpaceToDepthStem(SIM)(g).ops[0].attrs["kernel"] == [1, 1]
    prog = compile_model(m, SIM)[0]
    assert prog.inputs[0].patch == [k, k]
    assert_layer_exact(check_against_ort(m, SIM, n_inputs=2, program=prog))
    # the same integer sums as the convolution on a plain (or space-to-depth) image, bit for bit
    plain = compile_model(m, SLOW_PORT)[0]
    assert plain.inputs[0].patch is None
    xin = np.random.default_rng(7).normal(size=shape).astype(np.float32)
    a, b = Runtime(prog).run({"x": xin}), Runtime(plain).run({"x": xin})
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_patch_stem_only_where_it_pays():
    # a slow memory port: the im2col image's traffic outweighs its fewer MAC issues
    q = QDQ((1, 3, 15, 13), seed=4)
    m = q.model(q.conv(q.x, 20, 3, "c", k=7, pads=(3, 3, 3, 3), strides=[2, 2]))
    g, p = _pipeline_until(lower(load_onnx(m)), PatchStem, SLOW_PORT)
    costs = p.costs(g, g.ops[0])
    assert costs["patches"] > costs["space_to_depth"]
    assert not p(g).input_transforms
    # a wide input already fills the lanes: a 3×3/2 over 16 channels issues the same either way;
    # stride 1 is left alone (the image would grow by the kernel's area)
    for cin, stride in ((16, 2), (3, 1)):
        q = QDQ((1, cin, 9, 9))
        m = q.model(q.conv(q.x, 8, cin, "c", k=3, strides=[stride, stride]))
        g, p = _pipeline_until(lower(load_onnx(m)), PatchStem)
        assert not p(g).input_transforms and g.ops[0].attrs["kernel"] == [3, 3]
