"""Test networks: small float ONNX graphs built with onnx.helper, quantized by onnxruntime.

Nothing is downloaded: weights are random (seeded) and calibration data is
random. :func:`check_against_ort` compiles a quantized model, runs it on the
emulator with hazard checking, and measures the disagreement with
onnxruntime in output quantization steps.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh
from tessera.compiler.driver import compile_model
from tessera.host.runtime import Runtime


class NetBuilder:
    """Accumulates nodes and float initializers of an NCHW network."""

    def __init__(self, in_shape, seed=0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []
        self.in_shape = list(in_shape)
        self.shape = {"x": list(in_shape)}
        self.n = 0

    def _name(self, p):
        self.n += 1
        return f"{p}{self.n}"

    def const(self, arr, p="c"):
        name = self._name(p)
        self.inits.append(nh.from_array(np.asarray(arr, np.float32), name))
        return name

    def conv(self, x, cout, k=3, stride=1, pad=None, dil=1, bias=True, relu=False, bn=False, name=None):
        cin = self.shape[x][1]
        kh, kw = (k, k) if isinstance(k, int) else k
        pad = ((kh - 1) * dil // 2, (kw - 1) * dil // 2) if pad is None else pad
        w = self.rng.normal(0, np.sqrt(2.0 / (cin * kh * kw)), (cout, cin, kh, kw))
        ins = [x, self.const(w, "w")]
        if bias:
            ins.append(self.const(self.rng.normal(0, 0.1, cout), "b"))
        y = self._name("conv")
        self.nodes.append(h.make_node("Conv", ins, [y], name=name or y, kernel_shape=[kh, kw],
                                      strides=[stride, stride], pads=[pad[0], pad[1], pad[0], pad[1]],
                                      dilations=[dil, dil]))
        H, W = self.shape[x][2:]
        self.shape[y] = [1, cout, (H + 2 * pad[0] - dil * (kh - 1) - 1) // stride + 1,
                         (W + 2 * pad[1] - dil * (kw - 1) - 1) // stride + 1]
        if bn:
            y = self.bn(y)
        return self.relu(y) if relu else y

    def bn(self, x):
        c = self.shape[x][1]
        y = self._name("bn")
        ins = [x, self.const(self.rng.uniform(0.5, 1.5, c)), self.const(self.rng.normal(0, 0.1, c)),
               self.const(self.rng.normal(0, 0.1, c)), self.const(self.rng.uniform(0.5, 1.5, c))]
        self.nodes.append(h.make_node("BatchNormalization", ins, [y], name=y))
        self.shape[y] = self.shape[x]
        return y

    def unary(self, op, x, **attrs):
        y = self._name(op.lower())
        self.nodes.append(h.make_node(op, [x], [y], name=y, **attrs))
        return y

    def relu(self, x):
        y = self.unary("Relu", x)
        self.shape[y] = self.shape[x]
        return y

    def add(self, a, b):
        y = self._name("add")
        self.nodes.append(h.make_node("Add", [a, b], [y], name=y))
        self.shape[y] = self.shape[a]
        return y

    def maxpool(self, x, k=3, stride=2, pad=1):
        y = self.unary("MaxPool", x, kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)
        c, H, W = self.shape[x][1:]
        self.shape[y] = [1, c, (H + 2 * pad - k) // stride + 1, (W + 2 * pad - k) // stride + 1]
        return y

    def avgpool(self, x, k=2, stride=2):
        y = self.unary("AveragePool", x, kernel_shape=[k, k], strides=[stride, stride])
        c, H, W = self.shape[x][1:]
        self.shape[y] = [1, c, (H - k) // stride + 1, (W - k) // stride + 1]
        return y

    def gap(self, x):
        y = self.unary("GlobalAveragePool", x)
        self.shape[y] = self.shape[x][:2] + [1, 1]
        return y

    def flatten(self, x):
        y = self.unary("Flatten", x, axis=1)
        self.shape[y] = [1, int(np.prod(self.shape[x][1:]))]
        return y

    def gemm(self, x, n):
        k = self.shape[x][1]
        y = self._name("fc")
        self.nodes.append(h.make_node("Gemm", [x, self.const(self.rng.normal(0, 1 / np.sqrt(k), (n, k))),
                                               self.const(self.rng.normal(0, 0.1, n))], [y], name=y, transB=1))
        self.shape[y] = [1, n]
        return y

    def concat(self, *xs):
        y = self._name("cat")
        self.nodes.append(h.make_node("Concat", list(xs), [y], name=y, axis=1))
        self.shape[y] = [1, sum(self.shape[x][1] for x in xs)] + self.shape[xs[0]][2:]
        return y

    def softmax(self, x):
        y = self.unary("Softmax", x, axis=-1)
        self.shape[y] = self.shape[x]
        return y

    def basic_block(self, x, cout, stride=1):
        y = self.conv(x, cout, 3, stride, relu=True)
        y = self.conv(y, cout, 3, 1)
        sc = x if stride == 1 and self.shape[x][1] == cout else self.conv(x, cout, 1, stride)
        return self.relu(self.add(y, sc))

    def bottleneck(self, x, mid, cout, stride=1):
        y = self.conv(x, mid, 1, 1, relu=True)
        y = self.conv(y, mid, 3, stride, relu=True)
        y = self.conv(y, cout, 1, 1)
        sc = x if stride == 1 and self.shape[x][1] == cout else self.conv(x, cout, 1, stride)
        return self.relu(self.add(y, sc))

    def model(self, outputs, opset=13) -> onnx.ModelProto:
        g = h.make_graph(self.nodes, "net", [h.make_tensor_value_info("x", TP.FLOAT, self.in_shape)],
                         [h.make_tensor_value_info(o, TP.FLOAT, self.shape[o]) for o in outputs], self.inits)
        m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
        m.ir_version = 8
        return m


def resnet(in_shape=(1, 3, 12, 10), widths=(8, 12), blocks=1, bottleneck=False, classes=10, stem_pool=True,
           seed=0, softmax=False):
    """A small ResNet: 3×3 stem (+ max pool), stages of basic or bottleneck blocks, GAP, FC."""
    b = NetBuilder(in_shape, seed)
    y = b.conv("x", widths[0], 3, 1, relu=True, bn=True)
    if stem_pool:
        y = b.maxpool(y, 3, 2, 1)
    for si, w in enumerate(widths):
        for bi in range(blocks):
            stride = 2 if si > 0 and bi == 0 else 1
            y = b.bottleneck(y, max(4, w // 3), w, stride) if bottleneck else b.basic_block(y, w, stride)
    y = b.gemm(b.flatten(b.gap(y)), classes)
    if softmax:
        y = b.softmax(y)
    return b.model([y])


def densenet(in_shape=(1, 3, 12, 10), growth=6, layers=3, blocks=2, classes=10, seed=0):
    """A small DenseNet: each layer's 3×3 output is concatenated onto everything before it."""
    b = NetBuilder(in_shape, seed)
    y = b.conv("x", 2 * growth, 3, 1, relu=True)
    for bi in range(blocks):
        for _ in range(layers):
            z = b.conv(y, 2 * growth, 1, 1, relu=True)
            z = b.conv(z, growth, 3, 1, relu=True)
            y = b.concat(y, z)
        if bi < blocks - 1:
            y = b.conv(y, b.shape[y][1] // 2, 1, 1, relu=True)
            y = b.avgpool(y, 2, 2)
    y = b.gemm(b.flatten(b.gap(y)), classes)
    return b.model([y])


def quantize(model: onnx.ModelProto, *, fmt="QDQ", act="uint8", per_channel=True, calib=8, seed=1,
             in_scale=1.0) -> onnx.ModelProto:
    """Quantize a float model with onnxruntime's quantize_static on random calibration data."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from tessera.compiler.passes import FoldBatchNorm
    model = FoldBatchNorm()(onnx.ModelProto.FromString(model.SerializeToString()))
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(seed)
    data = [{"x": (rng.normal(0, in_scale, shape)).astype(np.float32)} for _ in range(calib)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(data)

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "f.onnx", Path(d) / "q.onnx"
        onnx.save(model, src)
        quantize_static(str(src), str(dst), Reader(),
                        quant_format=QuantFormat.QDQ if fmt == "QDQ" else QuantFormat.QOperator,
                        per_channel=per_channel,
                        activation_type=QuantType.QUInt8 if act == "uint8" else QuantType.QInt8,
                        weight_type=QuantType.QInt8)
        return onnx.load(dst)


def ort_run(model: onnx.ModelProto, x):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x})))


def check_against_ort(qmodel, config, n_inputs=3, seed=5, in_scale=1.0, program=None):
    """Compile ``qmodel``, run ``n_inputs`` random inputs on the emulator and onnxruntime.

    Returns a list of per-output dicts with ``steps`` (|difference| in output
    quantization steps) and both arrays, for every input.
    """
    prog = program or compile_model(qmodel, config)[0]
    rt = Runtime(prog, backend="emulator", check_hazards=True)
    rng = np.random.default_rng(seed)
    shape = [d.dim_value for d in qmodel.graph.input[0].type.tensor_type.shape.dim]
    results = []
    for _ in range(n_inputs):
        x = rng.normal(0, in_scale, shape).astype(np.float32)
        ref = ort_run(qmodel, x)
        got = rt.run({"x": x})
        for t in prog.outputs:
            if t.name in ref:
                steps = np.abs(got[t.name].astype(np.float64) - ref[t.name]) / t.scale
                results.append({"name": t.name, "steps": steps, "got": got[t.name], "ref": ref[t.name]})
    return results


def assert_layer_exact(results):
    """Single layers: every element within one quantization step."""
    for r in results:
        assert r["steps"].max() <= 1.0 + 1e-3, f"{r['name']}: max {r['steps'].max():.2f} steps"


def assert_network(results):
    """Networks: ≥ 99.9 % within one step, all within two, same top-1 (up to ties within one step)."""
    for r in results:
        s = r["steps"].reshape(-1)
        assert (s <= 1.0 + 1e-3).mean() >= 0.999, f"{r['name']}: {(s > 1.001).mean():.4%} beyond one step"
        assert s.max() <= 2.0 + 1e-3, f"{r['name']}: max {s.max():.2f} steps"
        g, ref = r["got"].reshape(-1), r["ref"].reshape(-1)
        top = int(np.argmax(g))
        step = abs(r["got"].reshape(-1)[top] - ref[top]) / max(s.max(), 1e-9) if s.max() else 0
        del step
        assert ref[top] >= ref.max() - (np.abs(g - ref).max() + 1e-6) * 2, \
            f"{r['name']}: top-1 {top} differs from onnxruntime's {int(np.argmax(ref))} beyond a tie"
