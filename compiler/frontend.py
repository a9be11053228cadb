"""ONNX front end: load, infer shapes, lower QDQ / QOperator nodes into the integer graph.

:func:`load_onnx` reads and checks a model; :func:`lower` walks its nodes in
topological order and builds a :class:`~tessera.compiler.ir.Graph` whose tensors
are the quantized activations. Float tensors that are exact dequantizations of
int tensors (DequantizeLinear outputs) map back onto them; float results of
ops (Conv, Gemm, Add, AveragePool, …) wait for the QuantizeLinear that gives
them their scale and zero point.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import numpy_helper

from .ir import CompileError, Graph, Op, QTensor, unsupported
from .islands import HOST_ONLY_OPS, HostIslands

__all__ = ["SUPPORTED_OPS", "load_onnx", "lower"]

SUPPORTED_OPS = ("QuantizeLinear, DequantizeLinear, Conv, Gemm, MatMul, Add, Relu, Clip, MaxPool, "
                 "AveragePool, GlobalAveragePool, Flatten, Reshape, Squeeze, Unsqueeze, Transpose, Pad, "
                 "Concat, Identity, Softmax, BatchNormalization, Mul/Add by a per-channel constant, QLinearConv, QLinearMatMul, QGemm, "
                 "QLinearAdd, QLinearAveragePool, QLinearGlobalAveragePool, QLinearConcat, QLinearSoftmax; on the host: "
                 + ", ".join(HOST_ONLY_OPS) + ", products of two activations, data-moving Transpose/Reshape/Concat")

_SHAPE_OPS = ("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Identity")


def load_onnx(path_or_model) -> onnx.ModelProto:
    """Load (if a path), check the opset and run shape inference."""
    if isinstance(path_or_model, onnx.ModelProto):
        model = path_or_model
        src = "model"
    else:
        src = str(path_or_model)
        if not os.path.exists(src):
            raise CompileError(f"{src}: no such file")
        try:
            model = onnx.load(src)
        except Exception as e:
            raise CompileError(f"{src}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 10:
        raise CompileError(f"{src}: opset {opset} is not supported; supported: opset 10 or newer (13+ tested)")
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as e:
        raise CompileError(f"{src}: shape inference failed: {e}") from None
    return model


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _shapes(model) -> dict:
    out = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
            out[vi.name] = dims
    return out


def _check_geometry(n, kernel, strides, pads, dilations):
    if len(strides) != 2 or len(dilations) != 2 or len(pads) != 4 or len(kernel) != 2:
        raise unsupported(n.name, n.op_type, f"strides={strides}, pads={pads}, dilations={dilations}",
                          "2-D strides and dilations, 4 pads")
    if min(strides) < 1 or min(dilations) < 1 or min(pads) < 0 or min(kernel) < 1:
        raise unsupported(n.name, n.op_type, f"kernel={kernel}, strides={strides}, pads={pads}, "
                          f"dilations={dilations}", "positive kernels, strides and dilations, pads ≥ 0")


def _out_shape(kind, x, a):
    """Output shape of a QOperator op that shape inference does not know (com.microsoft ops)."""
    x = list(x)
    if kind == "add":
        return x
    if kind == "gemm":
        return [1, int(a["w"].shape[0])]
    if kind == "concat":
        raise CompileError("internal: concat shapes come from shape inference or _concat_shape")
    k, s, p = a["kernel"], a["strides"], a["pads"]
    d = a.get("dilations", [1, 1])
    c = int(a["w"].shape[0]) if kind == "conv" else x[1]
    return [1, c] + [(x[2 + i] + p[i] + p[2 + i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(2)]


class _Lowering(HostIslands):
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.g = Graph()
        self.consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        self.shapes = _shapes(model)
        self.qconst = {}     # float name -> (int array, scale, zero point, axis) of a constant
        self.fmap = {}       # float name -> int tensor it exactly dequantizes
        self.pending = {}    # float name -> op whose output still needs quantization parameters
        self.hostf = {}      # float name (host domain) -> name the runtime produces it under
        self.imap = {}       # int tensor name (from ONNX) -> int tensor name in the graph
        self.nhwc = {}       # float NCHW view of an NHWC graph input -> the input's name
        self.views = {}      # NHWC-permuted view of an NCHW tensor (before its flatten) -> (int tensor, map)
        self.nhwc_flat = {}  # NC tensor that flattens an NCHW tensor in NHWC order -> (C, H, W)
        self.nhwc_fc = set() # FC ops whose weight columns were permuted to read such a tensor
        self.onnx_consumers = {}
        for node in model.graph.node:
            for i in node.input:
                self.onnx_consumers.setdefault(i, []).append(node)
        self.graph_outputs = {o.name for o in model.graph.output}
        self._init_islands()

    # ---- helpers ---------------------------------------------------------------------

    def shape(self, name, node=None):
        s = self.shapes.get(name)
        if s is None or any(d is None for d in s):
            if name in self.consts:
                return list(self.consts[name].shape)
            raise CompileError(f"node {getattr(node, 'name', '?')!r} ({getattr(node, 'op_type', '?')}): "
                               f"tensor {name!r} has no static shape after shape inference; "
                               f"supported: static shapes with batch 1")
        return list(s)

    def const(self, name, node, what):
        if name in self.consts:
            return self.consts[name]
        raise unsupported(node.name, node.op_type, f"a non-constant {what} ({name!r})", f"constant {what}")

    def zp_int8(self, zp_arr, node):
        zp = np.asarray(zp_arr)
        if zp.dtype == np.uint8:
            return zp.astype(np.int64) - 128, "uint8"
        if zp.dtype == np.int8:
            return zp.astype(np.int64), "int8"
        raise unsupported(node.name, node.op_type, f"zero point dtype {zp.dtype}", "uint8 and int8 activations")

    def scalar_q(self, node, s_name, zp_name):
        s = np.asarray(self.const(s_name, node, "scale"), np.float64)
        zp_arr = self.const(zp_name, node, "zero point") if zp_name else np.zeros((), np.uint8)
        zp, dt = self.zp_int8(zp_arr, node)
        if s.size != 1 or zp.size != 1:
            raise unsupported(node.name, node.op_type, "per-channel activation quantization",
                              "per-tensor scale and zero point for activations")
        return float(s.reshape(-1)[0]), int(zp.reshape(-1)[0]), dt

    def new_tensor(self, name, shape, scale=None, zp=None, dt="int8"):
        t = QTensor(name, tuple(int(d) for d in shape), scale, zp, dt)
        self.g.tensors[name] = t
        return t

    def int_in(self, fname, node):
        """Int tensor that the float tensor ``fname`` dequantizes (an op input)."""
        if fname in self.fmap:
            return self.fmap[fname]
        if fname in self.pending:
            raise unsupported(node.name, node.op_type, f"input {fname!r} that is never quantized",
                              "inputs quantized by QuantizeLinear (a QDQ model) or int8/uint8 tensors")
        raise unsupported(node.name, node.op_type, f"float input {fname!r}",
                          "quantized models (QDQ or QOperator); compile float models with --calibrate")

    def q_in(self, name, node, i_scale=None):
        """Int tensor for an ONNX int8/uint8 tensor name (QOperator inputs).

        With ``i_scale``, the node's own (scale, zero point) inputs at ``i_scale``, ``i_scale + 1``
        must be the tensor's: the node dequantizes it with them.
        """
        if name in self.imap:
            t = self.g.tensors[self.imap[name]]
            if i_scale is not None:
                s, zp, _ = self.scalar_q(node, node.input[i_scale],
                                         node.input[i_scale + 1] if len(node.input) > i_scale + 1 else "")
                if abs(s - t.scale) > 1e-6 * t.scale or zp != t.zero_point:
                    raise unsupported(node.name, node.op_type, f"reading {name!r} with scale {s:g} / zero point "
                                      f"{zp} while it was quantized with {t.scale:g} / {t.zero_point}",
                                      "inputs read with the parameters they were quantized with")
            return t.name
        raise unsupported(node.name, node.op_type, f"input {name!r} that is not a quantized activation",
                          "quantized activations produced by QuantizeLinear or QLinear* ops")

    def add_op(self, kind, node, inputs, attrs, out_float=None, out_int=None, params=None):
        op = Op(kind, node.name or f"{node.op_type}_{len(self.g.ops)}", node.op_type, list(inputs), "", attrs)
        self.g.ops.append(op)
        if out_int is not None:
            s, zp, dt = params
            known = self.shapes.get(out_int)
            shape = known if known and None not in known else _out_shape(kind, self.g.tensors[inputs[0]].shape, attrs)
            self.new_tensor(out_int, shape, s, zp, dt)
            op.output = out_int
        else:
            op.attrs["_shape"] = self.shape(out_float, node)
            self.pending[out_float] = op
        return op

    def weights(self, node, name, transpose=False):
        """(int weights with zero point removed, per-output-channel scales) of a quantized constant."""
        if name not in self.qconst:
            if name in self.consts:
                raise unsupported(node.name, node.op_type, f"float weights ({name!r})",
                                  "int8 weights (QDQ or QOperator); compile float models with --calibrate")
            raise unsupported(node.name, node.op_type, f"non-constant weights ({name!r})", "constant weights")
        w, s, zp, axis = self.qconst[name]
        return self._wq(node, w, s, zp, axis, transpose)

    def _wq(self, node, w, s, zp, axis, transpose):
        w = np.asarray(w).astype(np.int64)
        if transpose:          # MatMul / Gemm(transB=0) weights are K×N
            w = w.T
            axis = 1 - axis if w.ndim == 2 else axis
        o = w.shape[0]
        s = np.asarray(s, np.float64).reshape(-1)
        zp = np.asarray(zp).astype(np.int64).reshape(-1)
        if s.size not in (1, o) or (s.size > 1 and axis != 0):
            raise unsupported(node.name, node.op_type, f"weight quantization along axis {axis}",
                              "per-tensor or per-output-channel weight scales")
        s = np.broadcast_to(s, (o,)).copy()
        zp = np.broadcast_to(zp, (o,)).reshape((o,) + (1,) * (w.ndim - 1))
        return w - zp, s

    def bias(self, node, name, sx, sw):
        b = self._bias(node, name, sx, sw)
        if b.shape != (len(sw),):
            raise unsupported(node.name, node.op_type, f"a bias of shape {list(b.shape)} for {len(sw)} outputs",
                              "one bias per output channel")
        return b

    def _check_in_channels(self, node, x, w):
        c = self.g.tensors[x].channels
        if w.ndim == 4 and w.shape[1] != c:
            raise unsupported(node.name, node.op_type, f"weights for {w.shape[1]} input channels on a "
                              f"{c}-channel input", "weights matching the input's channels")

    def _bias(self, node, name, sx, sw):
        if not name:
            return np.zeros(len(sw), np.int64)
        if name in self.qconst:
            b, bs, bzp, _ = self.qconst[name]
            real = (np.asarray(b, np.float64) - np.asarray(bzp, np.float64)) * np.asarray(bs, np.float64)
        elif name in self.consts and self.consts[name].dtype == np.int32:
            return self.consts[name].astype(np.int64)
        elif name in self.consts:
            real = self.consts[name].astype(np.float64)
        else:
            raise unsupported(node.name, node.op_type, f"non-constant bias ({name!r})", "constant bias")
        return np.rint(real / (sx * sw)).astype(np.int64)

    # ---- the walk ------------------------------------------------------------------------

    def run(self) -> Graph:
        for n in self.model.graph.node:
            if n.op_type == "Constant":
                a = _attrs(n)
                if "value" not in a:
                    raise unsupported(n.name, "Constant", "a non-tensor constant", "tensor constants")
                self.consts[n.output[0]] = numpy_helper.to_array(a["value"])
                continue
            if n.domain not in ("", "ai.onnx", "com.microsoft"):
                raise unsupported(n.name, n.op_type, f"domain {n.domain!r}", "ai.onnx and com.microsoft ops")
            host = n.op_type not in ("QuantizeLinear", "DequantizeLinear") and self.is_host_node(n)
            fn = self.host_node if host else getattr(self, f"op_{n.op_type}", None)
            if fn is None:
                raise unsupported(n.name, n.op_type, "this op", SUPPORTED_OPS)
            try:
                fn(n, _attrs(n))
            except (ValueError, IndexError, KeyError, TypeError, ZeroDivisionError) as e:
                if isinstance(e, CompileError):
                    raise
                # Inconsistent inputs (shapes, arities) that the ONNX checker lets through.
                raise CompileError(f"node {n.name!r} ({n.op_type}): malformed inputs or attributes "
                                   f"({type(e).__name__}: {e})") from None
        for vo in self.model.graph.output:
            name = vo.name
            if name in self.hostv:
                self.islands[self._root(self.hostv[name])]["outputs"].append(name)
                continue
            if name in self.hostf:
                for h in self.g.host_ops:
                    if h["outputs"][0] == self.hostf[name]:
                        h["outputs"] = [name]
                continue
            t = self.fmap.get(name) or self.imap.get(name)
            if t is None:
                raise CompileError(f"graph output {name!r} is not a quantized tensor the NPU produces "
                                   f"(supported: outputs of DequantizeLinear or quantized ops)")
            self.g.outputs.append((name, t))
        self.finish_islands()
        self.check_nhwc_flattens()
        if not self.g.inputs:
            raise CompileError("the model has no quantized input (expected a QuantizeLinear on a graph input)")
        return self.g

    # ---- quantization nodes ----------------------------------------------------------------

    def op_QuantizeLinear(self, n, a):
        x = n.input[0]
        if x in self.consts:   # a quantized constant (weights written as Q of a float initializer)
            s = np.asarray(self.consts[n.input[1]], np.float64)
            zp = self.consts[n.input[2]] if len(n.input) > 2 and n.input[2] else np.zeros((), np.uint8)
            axis = a.get("axis", 1)
            shp = [1] * self.consts[x].ndim
            if s.size > 1:
                shp[axis] = -1
            q = np.rint(self.consts[x] / s.reshape(shp)) + np.asarray(zp, np.float64).reshape(shp if s.size > 1 else ())
            info = np.iinfo(np.asarray(zp).dtype)
            self.consts[n.output[0]] = np.clip(q, info.min, info.max).astype(np.asarray(zp).dtype)
            return
        s, zp, dt = self.scalar_q(n, n.input[1], n.input[2] if len(n.input) > 2 else "")
        out = n.output[0]
        if x in self.hostv:
            self.host_quantize(n, s, zp, dt)
        elif x in self.hostf:
            self.hostf[out] = self.hostf[x]
        elif x in self.pending:
            op = self.pending.pop(x)
            self.new_tensor(out, op.attrs.pop("_shape"), s, zp, dt)
            op.output = out
            self.imap[out] = out
        elif x in self.fmap:
            t = self.g.tensors[self.fmap[x]]
            if abs(t.scale - s) <= 1e-9 * s and t.zero_point == zp:
                self.imap[out] = t.name
            else:
                self.new_tensor(out, t.shape, s, zp, dt)
                self.g.ops.append(Op("requant", n.name or out, n.op_type, [t.name], out, {}))
                self.imap[out] = out
        elif x in self.views:
            self._view_qdq(n, x, out, s, zp)
        elif any(i.name == x for i in self.model.graph.input) or x in self.nhwc:
            src = self.nhwc.get(x, x)
            shape = self.shape(x, n)
            if shape[0] != 1 or len(shape) not in (2, 4):
                raise unsupported(n.name, n.op_type, f"input {src!r} of shape {shape}",
                                  "batch-1 NCHW, NHWC or NC inputs")
            self.new_tensor(out, shape, s, zp, dt)
            self.g.inputs.append((src, out))
            if x in self.nhwc:
                self.g.input_layouts[out] = ("NHWC", self.shape(src, n))
            self.imap[out] = out
        else:
            raise unsupported(n.name, n.op_type, f"quantizing {x!r}", "quantizing graph inputs and op outputs")

    def op_DequantizeLinear(self, n, a):
        x, out = n.input[0], n.output[0]
        if x in self.consts:
            zp = self.consts[n.input[2]] if len(n.input) > 2 and n.input[2] else np.zeros((), self.consts[x].dtype)
            self.qconst[out] = (self.consts[x], self.consts[n.input[1]], zp, a.get("axis", 1))
        elif x in self.hostf:
            self.hostf[out] = self.hostf[x]
        elif x in self.imap:
            t = self.g.tensors[self.imap[x]]
            s, zp, _ = self.scalar_q(n, n.input[1], n.input[2] if len(n.input) > 2 else "")
            if abs(t.scale - s) > 1e-6 * s or t.zero_point != zp:
                raise unsupported(n.name, n.op_type, "dequantizing with other parameters than the tensor's",
                                  "DequantizeLinear with the matching QuantizeLinear's scale and zero point")
            self.fmap[out] = t.name
            if x in self.hostv:
                self.host_dequantize(n)
        elif x in self.views:
            s, zp, _ = self.scalar_q(n, n.input[1], n.input[2] if len(n.input) > 2 else "")
            self._view_qdq(n, x, out, s, zp)
        elif any(i.name == x for i in self.model.graph.input):
            raise unsupported(n.name, n.op_type, f"an int8/uint8 graph input ({x!r})",
                              "float graph inputs followed by QuantizeLinear")
        else:
            raise unsupported(n.name, n.op_type, f"dequantizing {x!r}", "dequantizing quantized tensors")

    # ---- float-domain compute ops (QDQ) ------------------------------------------------------

    def _conv_attrs(self, n, a, w):
        k = list(w.shape[2:])
        if len(k) != 2:
            raise unsupported(n.name, n.op_type, f"{len(k)}-D convolution", "2-D convolution (NCHW)")
        if a.get("group", 1) != 1:
            raise unsupported(n.name, n.op_type, f"group={a['group']}", "group=1 (no grouped/depthwise conv)")
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        strides = list(a.get("strides", [1, 1]))
        dil = list(a.get("dilations", [1, 1]))
        if auto in ("NOTSET", "VALID"):
            pads = list(a.get("pads", [0, 0, 0, 0])) if auto == "NOTSET" else [0, 0, 0, 0]
        elif auto in ("SAME_UPPER", "SAME_LOWER"):
            pads = [0, 0, 0, 0]
            x_shape = self.shape(n.input[0], n)
            for i in range(2):
                inp = x_shape[2 + i]
                outp = -(-inp // strides[i])
                total = max(0, (outp - 1) * strides[i] + (k[i] - 1) * dil[i] + 1 - inp)
                lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
                pads[i], pads[2 + i] = lo, total - lo
        else:
            raise unsupported(n.name, n.op_type, f"auto_pad={auto}", "NOTSET, VALID, SAME_UPPER, SAME_LOWER")
        return {"kernel": k, "strides": strides, "pads": pads, "dilations": dil}

    def op_Conv(self, n, a):
        x = self.int_in(n.input[0], n)
        w, sw = self.weights(n, n.input[1])
        sx = self.g.tensors[x].scale
        b = self.bias(n, n.input[2] if len(n.input) > 2 else "", sx, sw)
        geometry = self._conv_attrs(n, a, w)
        self._check_in_channels(n, x, w)
        attrs = dict(geometry, w=w, w_scale=sw, bias=b)
        self.add_op("conv", n, [x], attrs, out_float=n.output[0])

    def _gemm(self, n, x, w, sw, b, a=None):
        a = a or {}
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            raise unsupported(n.name, n.op_type, "transA=1 or alpha/beta other than 1",
                              "Gemm with transA=0, alpha=1, beta=1")
        return {"w": w, "w_scale": sw, "bias": b}

    def op_Gemm(self, n, a):
        x = self.int_in(n.input[0], n)
        w, sw = self.weights(n, n.input[1], transpose=not a.get("transB", 0))
        w = self._nhwc_columns(n, x, w)
        b = self.bias(n, n.input[2] if len(n.input) > 2 else "", self.g.tensors[x].scale, sw)
        self.add_op("gemm", n, [x], self._gemm(n, x, w, sw, b, a), out_float=n.output[0])

    def op_MatMul(self, n, a):
        x = self.int_in(n.input[0], n)
        w, sw = self.weights(n, n.input[1], transpose=True)
        w = self._nhwc_columns(n, x, w)
        b = np.zeros(w.shape[0], np.int64)
        self.add_op("gemm", n, [x], {"w": w, "w_scale": sw, "bias": b}, out_float=n.output[0])

    def op_Add(self, n, a):
        ins = list(n.input)
        if any(i in self.consts or i in self.qconst for i in ins):
            cst = [i for i in ins if i in self.consts or i in self.qconst]
            other = [i for i in ins if i not in cst]
            if len(other) != 1:
                raise unsupported(n.name, n.op_type, "adding two constants", "Add with at least one activation")
            b = self._per_channel(n, other[0], self._const_value(cst[0]))
            # A bias after MatMul (tf2onnx's Dense) or a per-channel shift: into the int32 bias.
            self._affine(n, other[0], np.ones_like(b), b)
            return
        xa, xb = (self.int_in(i, n) for i in ins)
        if self.shape(n.output[0], n) != list(self.g.tensors[xa].shape) or \
                list(self.g.tensors[xa].shape) != list(self.g.tensors[xb].shape):
            raise unsupported(n.name, n.op_type, "broadcasting", "Add of two tensors of the same shape")
        self.add_op("add", n, [xa, xb], {}, out_float=n.output[0])

    def _clamp_bounds(self, n, a):
        if n.op_type == "Relu":
            return 0.0, float("inf")
        lo, hi = a.get("min", -float("inf")), a.get("max", float("inf"))
        if len(n.input) > 1 and n.input[1]:
            lo = float(np.asarray(self.const(n.input[1], n, "min")).reshape(-1)[0])
        if len(n.input) > 2 and n.input[2]:
            hi = float(np.asarray(self.const(n.input[2], n, "max")).reshape(-1)[0])
        return float(lo), float(hi)

    def op_Relu(self, n, a):
        lo, hi = self._clamp_bounds(n, a)
        x = n.input[0]
        if x in self.pending:
            op = self.pending.pop(x)
            c = op.attrs.get("clamp", (-float("inf"), float("inf")))
            op.attrs["clamp"] = (max(c[0], lo), min(c[1], hi))
            self.pending[n.output[0]] = op
            return
        if n.input[0] in self.imap:          # QOperator: Relu on an int tensor
            t = self.g.tensors[self.imap[x]]
            self.new_tensor(n.output[0], t.shape, t.scale, t.zero_point, t.src_dtype)
            self.g.ops.append(Op("clamp", n.name or n.output[0], n.op_type, [t.name], n.output[0],
                                 {"clamp": (lo, hi)}))
            self.imap[n.output[0]] = n.output[0]
            return
        xi = self.int_in(x, n)
        self.add_op("clamp", n, [xi], {"clamp": (lo, hi)}, out_float=n.output[0])

    op_Clip = op_Relu

    def _pool_attrs(self, n, a, shape):
        if n.op_type.startswith("Global") or n.op_type == "QLinearGlobalAveragePool":
            return {"mode": "avg", "kernel": list(shape[2:]), "strides": [1, 1], "pads": [0, 0, 0, 0]}
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto not in ("NOTSET", "VALID"):
            raise unsupported(n.name, n.op_type, f"auto_pad={auto}", "auto_pad NOTSET or VALID with explicit pads")
        k = list(a["kernel_shape"])
        if len(k) != 2:
            raise unsupported(n.name, n.op_type, f"{len(k)}-D pooling", "2-D pooling")
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            raise unsupported(n.name, n.op_type, "dilated pooling", "dilations=1")
        pads = list(a.get("pads", [0, 0, 0, 0])) if auto == "NOTSET" else [0, 0, 0, 0]
        strides = list(a.get("strides", [1, 1]))
        _check_geometry(n, k, strides, pads, [1, 1])
        mode = "max" if "Max" in n.op_type else "avg"
        if mode == "avg":
            out = self.shapes.get(n.output[0])
            if not out or None in out:
                out = _out_shape("pool", shape, {"kernel": k, "strides": strides, "pads": pads})
            partial = any((out[2 + i] - 1) * strides[i] + k[i] > shape[2 + i] + pads[i] + pads[2 + i] for i in range(2))
            if partial:
                raise unsupported(n.name, n.op_type, "ceil_mode windows that run past the padding",
                                  "average pooling whose windows lie inside the padded input")
            if any(pads) and not a.get("count_include_pad", 0):
                raise unsupported(n.name, n.op_type, "padding with count_include_pad=0",
                                  "average pooling without padding, or with count_include_pad=1")
        if len(n.output) > 1 and n.output[1]:
            raise unsupported(n.name, n.op_type, "the Indices output", "MaxPool with one output")
        return {"mode": mode, "kernel": k, "strides": strides, "pads": pads}

    def op_MaxPool(self, n, a):
        x = n.input[0]
        if x in self.imap:        # QOperator: int8 MaxPool
            t = self.g.tensors[self.imap[x]]
            self.new_tensor(n.output[0], self.shape(n.output[0], n), t.scale, t.zero_point, t.src_dtype)
            self.g.ops.append(Op("pool", n.name or n.output[0], n.op_type, [t.name], n.output[0],
                                 self._pool_attrs(n, a, t.shape)))
            self.imap[n.output[0]] = n.output[0]
            return
        xi = self.int_in(x, n)
        t = self.g.tensors[xi]
        # Max pooling commutes with dequantization: the output is exact in the input's parameters.
        out = n.output[0]
        self.new_tensor(out, self.shape(out, n), t.scale, t.zero_point, t.src_dtype)
        self.g.ops.append(Op("pool", n.name or out, n.op_type, [xi], out, self._pool_attrs(n, a, t.shape)))
        self.fmap[out] = out

    def op_AveragePool(self, n, a):
        xi = self.int_in(n.input[0], n)
        self.add_op("pool", n, [xi], self._pool_attrs(n, a, self.g.tensors[xi].shape), out_float=n.output[0])

    op_GlobalAveragePool = op_AveragePool

    def _shape_op(self, n, src, out_name, to_map):
        t = self.g.tensors[src]
        if n.op_type == "Transpose":
            perm = _attrs(n).get("perm")
            nontrivial = [d for d in perm if t.shape[d] != 1]
            if nontrivial != sorted(nontrivial):
                raise unsupported(n.name, n.op_type, f"perm={perm} on shape {list(t.shape)} (it moves data)",
                                  "transposes that only move dimensions of size 1")
        known = self.shapes.get(out_name)
        if known and None not in known:
            shape = list(known)
        elif n.op_type == "Flatten" and _attrs(n).get("axis", 1) == 1:
            shape = [1, int(np.prod(t.shape[1:]))]
        elif n.op_type == "Reshape" and n.input[1] in self.consts:
            tgt = [int(v) for v in self.consts[n.input[1]]]
            tgt = [t.shape[i] if v == 0 else v for i, v in enumerate(tgt)]
            if -1 in tgt:
                tgt[tgt.index(-1)] = int(np.prod(t.shape)) // -int(np.prod(tgt))
            shape = tgt
        else:
            shape = self.shape(out_name, n)
        if len(shape) not in (2, 4) or shape[0] != 1:
            raise unsupported(n.name, n.op_type, f"output shape {shape}", "NCHW or NC tensors with batch 1")
        self.new_tensor(out_name, shape, t.scale, t.zero_point, t.src_dtype)
        self.g.ops.append(Op("alias", n.name or out_name, n.op_type, [src], out_name, {}))
        to_map[out_name] = out_name

    # ---- NHWC flatten in front of a fully connected layer -------------------------------------

    def _through_qdq(self, name):
        """The ONNX nodes that read ``name``, looking through QuantizeLinear → DequantizeLinear pairs;
        None if the value, or one of the pairs, is a graph output."""
        if name in self.graph_outputs:
            return None
        users = []
        for c in self.onnx_consumers.get(name, []):
            if c.op_type in ("QuantizeLinear", "DequantizeLinear"):
                more = self._through_qdq(c.output[0])
                if more is None:
                    return None
                users += more
            else:
                users.append(c)
        return users

    def flattens_into_fc(self, name) -> bool:
        """Whether the NHWC-permuted tensor ``name`` is only flattened to 2-D and read by FC layers.

        tf2onnx flattens a Keras (NHWC) feature map as Transpose(0,2,3,1) → Reshape(-1, H·W·C); the
        flatten's order is then a permutation of the FC weights' rows, folded into them here.
        """
        users = self._through_qdq(name)
        if not users:
            return False
        for u in users:
            shape = self.shapes.get(u.output[0])
            axis = next((at.i for at in u.attribute if at.name == "axis"), 1)
            if u.op_type not in ("Reshape", "Flatten") or (u.op_type == "Flatten" and axis != 1):
                return False
            if not shape or len(shape) != 2 or shape[0] != 1:
                return False
            fcs = self._through_qdq(u.output[0])
            if not fcs or any(f.op_type not in ("Gemm", "MatMul", "QGemm", "QLinearMatMul") for f in fcs):
                return False
        return True

    def _view_qdq(self, n, x, out, s, zp):
        """QuantizeLinear/DequantizeLinear of an NHWC view: the same int tensor, if with its parameters."""
        t = self.g.tensors[self.views[x][0]]
        if abs(t.scale - s) > 1e-6 * s or t.zero_point != zp:
            raise unsupported(n.name, n.op_type, "requantizing a transposed feature map before its flatten",
                              "Transpose → Reshape → Gemm with one scale and zero point throughout")
        self.views[out] = self.views[x]

    def _nhwc_columns(self, n, x, w):
        """FC weights ``w`` (O×K) reading ``x``: columns put into NCHW order if ``x`` is an NHWC flatten."""
        if x not in self.nhwc_flat:
            return w
        c, hh, ww = self.nhwc_flat[x]
        self.nhwc_fc.add(n.name or n.output[0])
        if w.ndim != 2 or w.shape[1] != c * hh * ww:
            raise unsupported(n.name, n.op_type, f"weights of shape {list(w.shape)} for an input of "
                              f"{c * hh * ww} features", "Gemm/MatMul over all features of its input")
        return w.reshape(w.shape[0], hh, ww, c).transpose(0, 3, 1, 2).reshape(w.shape[0], -1)

    def _nhwc_flatten(self, n, x):
        src, domain = self.views[x]
        t = self.g.tensors[src]
        out = n.output[0]
        c, hh, ww = t.shape[1:]
        self.new_tensor(out, [1, c * hh * ww], t.scale, t.zero_point, t.src_dtype)
        self.g.ops.append(Op("alias", n.name or out, n.op_type, [src], out, {}))
        self.nhwc_flat[out] = (c, hh, ww)
        (self.imap if domain == "int" else self.fmap)[out] = out

    def check_nhwc_flattens(self):
        for name in self.nhwc_flat:
            users = self.g.consumers(name)
            bad = [u for u in users if u.name not in self.nhwc_fc]
            if bad or not users or self.g.is_output(name):
                what = f"{bad[0].onnx_op} {bad[0].name!r}" if bad else "a graph output"
                raise unsupported(name, "Reshape", f"an NHWC flatten read by {what}",
                                  "NHWC flattens read only by Gemm/MatMul (their weights absorb the order)")

    def _shape_dispatch(self, n, a):
        x = n.input[0]
        if x in self.hostf:
            raise unsupported(n.name, n.op_type, "reshaping a host-side result", "Softmax as the last op")
        perm = list(a.get("perm", [])) if n.op_type == "Transpose" else None
        if x in self.views:
            if n.op_type not in ("Reshape", "Flatten"):
                raise unsupported(n.name, n.op_type, "reshaping a transposed feature map", "Reshape/Flatten")
            self._nhwc_flatten(n, x)
            return
        if perm == [0, 2, 3, 1] and (x in self.imap or x in self.fmap):
            t = self.g.tensors[self.imap.get(x) or self.fmap.get(x)]
            if len(t.shape) == 4 and t.channels > 1 and t.height * t.width > 1 \
                    and self.flattens_into_fc(n.output[0]):
                self.views[n.output[0]] = (t.name, "int" if x in self.imap else "float")
                return
        if perm == [0, 3, 1, 2] and any(i.name == x for i in self.model.graph.input):
            # NHWC graph input (Keras): the NPU's pixel-major layout already is NHWC; the host packs it.
            self.nhwc[n.output[0]] = x
            return
        if perm == [0, 3, 1, 2] and (x in self.imap or x in self.fmap):
            t = self.g.tensors[self.imap.get(x) or self.fmap.get(x)]
            if any(t.name == ti for _, ti in self.g.inputs) and not self.g.consumers(t.name) \
                    and t.name not in self.g.input_layouts:
                self.g.input_layouts[t.name] = ("NHWC", list(t.shape))
                t.shape = (t.shape[0], t.shape[3], t.shape[1], t.shape[2])
                (self.imap if x in self.imap else self.fmap)[n.output[0]] = t.name
                return
        if x in self.imap:
            self._shape_op(n, self.imap[x], n.output[0], self.imap)
        elif x in self.pending:
            op = self.pending.pop(x)
            # Reshape of a pending result: it keeps waiting for its QuantizeLinear under the new name.
            new, old = self.shape(n.output[0], n), op.attrs["_shape"]
            if int(np.prod(new[2:])) != 1 or int(np.prod(old[2:])) != 1 or new[1] != old[1]:
                raise unsupported(n.name, n.op_type, f"reshaping an unquantized {old} result to {new}",
                                  "reshapes of 1x1-pixel results, or reshapes of quantized tensors")
            op.attrs["_shape"] = new
            self.pending[n.output[0]] = op
        else:
            self._shape_op(n, self.int_in(x, n), n.output[0], self.fmap)

    op_Flatten = op_Reshape = op_Squeeze = op_Unsqueeze = op_Transpose = op_Identity = _shape_dispatch

    def op_Pad(self, n, a):
        mode = a.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode != "constant":
            raise unsupported(n.name, n.op_type, f"mode={mode}", "constant padding")
        pads = list(a["pads"]) if "pads" in a else [int(v) for v in self.const(n.input[1], n, "pads")]
        value = 0.0
        if len(n.input) > 2 and n.input[2]:
            value = float(np.asarray(self.const(n.input[2], n, "constant_value")).reshape(-1)[0])
        x = n.input[0]
        src = self.imap.get(x) or self.int_in(x, n)
        t = self.g.tensors[src]
        if len(pads) != 8 or pads[0] or pads[1] or pads[4] or pads[5]:
            raise unsupported(n.name, n.op_type, f"pads={pads}", "padding of H and W only")
        # Int-domain Pad pads with the zero point code; QDQ Pad pads with the real value.
        code = value if x in self.imap else t.quantize_real(value)
        out = n.output[0]
        self.new_tensor(out, self.shape(out, n), t.scale, t.zero_point, t.src_dtype)
        self.g.ops.append(Op("pad", n.name or out, n.op_type, [src], out,
                             {"pads": [pads[2], pads[3], pads[6], pads[7]], "value": int(code)}))
        (self.imap if x in self.imap else self.fmap)[out] = out

    def op_Concat(self, n, a):
        ins = [self.int_in(i, n) for i in n.input]
        if a.get("axis") not in (1, -3 if len(self.g.tensors[ins[0]].shape) == 4 else -1):
            raise unsupported(n.name, n.op_type, f"axis={a.get('axis')}", "concatenation along channels (axis 1)")
        self.add_op("concat", n, ins, {}, out_float=n.output[0])

    def op_Softmax(self, n, a):
        x = n.input[0]
        axis = a.get("axis", -1)
        if x in self.fmap or x in self.imap:
            t = self.fmap.get(x) or self.imap.get(x)
            src = x
            self.g.outputs.append((src, t))
        elif x in self.hostf:
            src = self.hostf[x]
        else:
            raise unsupported(n.name, n.op_type, f"input {x!r} that is not quantized", "Softmax of a quantized tensor")
        shape = self.shape(x, n)
        if axis not in (-1, len(shape) - 1) or len(shape) != 2:
            raise unsupported(n.name, n.op_type, f"axis={axis} on shape {shape}", "Softmax over the last axis of an NC tensor")
        out = n.output[0]
        self.g.host_ops.append({"op": "Softmax", "name": n.name or out, "inputs": [src], "outputs": [out],
                                "attrs": {"axis": -1}})
        self.hostf[out] = out

    def op_BatchNormalization(self, n, a):
        if not all(i in self.consts for i in n.input[1:5]):
            raise unsupported(n.name, n.op_type, "non-constant statistics", "BatchNormalization with constant parameters")
        gamma, beta, mean, var = (self.consts[i].astype(np.float64) for i in n.input[1:5])
        k = gamma / np.sqrt(var + a.get("epsilon", 1e-5))
        self._affine(n, n.input[0], k, beta - mean * k)

    def _const_value(self, name):
        if name in self.qconst:
            v, s, zp, _ = self.qconst[name]
            return (np.asarray(v, np.float64) - np.asarray(zp, np.float64)) * np.asarray(s, np.float64)
        return self.consts[name].astype(np.float64)

    def _per_channel(self, n, x, value):
        """A constant that broadcasts over an activation's channels (ONNX broadcasting) as a [C] vector."""
        shape = self._shape_of_act(x, n)
        c = shape[1]
        v = np.asarray(value, np.float64)
        if v.size == 1:
            return np.full(c, float(v.reshape(-1)[0]))
        dims = list(v.shape)
        aligned = [1] * (len(shape) - len(dims)) + dims
        if len(aligned) == len(shape) and aligned[1] == c and all(d == 1 for i, d in enumerate(aligned) if i != 1):
            return v.reshape(-1)
        raise unsupported(n.name, n.op_type, f"a constant of shape {dims} on an activation of shape {shape}",
                          "scalar or per-channel constants (shape [C,1,1] or [1,C,1,1]; [C] for NC tensors)")

    def _shape_of_act(self, x, n):
        if x in self.pending:
            return self.pending[x].attrs["_shape"]
        return list(self.g.tensors[self.int_in(x, n)].shape)

    def _affine(self, n, x, k, b):
        """``y = k[c]*x + b[c]`` per channel: folded into a pending convolution, else a diagonal 1×1 conv."""
        op = self.pending.get(x)
        if op is not None and op.kind in ("conv", "gemm") and "clamp" not in op.attrs:
            sx = self.g.tensors[op.inputs[0]].scale
            sw = op.attrs["w_scale"]
            b_real = op.attrs["bias"] * sx * sw
            sign = np.where(k < 0, -1, 1)
            op.attrs["w"] = op.attrs["w"] * sign.reshape((-1,) + (1,) * (op.attrs["w"].ndim - 1))
            op.attrs["w_scale"] = sw * np.where(k == 0, 1.0, np.abs(k))
            if np.any(k == 0):
                op.attrs["w"] = op.attrs["w"] * (k != 0).reshape((-1,) + (1,) * (op.attrs["w"].ndim - 1))
            op.attrs["bias"] = np.rint((b_real * k + b) / (sx * op.attrs["w_scale"])).astype(np.int64)
            op.attrs["_shape"] = self.shape(n.output[0], n) if n.output[0] in self.shapes else op.attrs["_shape"]
            self.pending[n.output[0]] = self.pending.pop(x)
            return
        xi = self.int_in(x, n)
        t = self.g.tensors[xi]
        if len(t.shape) != 4:
            raise unsupported(n.name, n.op_type, f"a per-channel affine op on shape {list(t.shape)}",
                              "per-channel scale/shift of NCHW tensors")
        c = t.channels
        sign = np.where(k < 0, -1, np.where(k == 0, 0, 1))
        sw = np.where(k == 0, 1.0, np.abs(k))
        attrs = {"w": np.diag(sign).astype(np.int64).reshape(c, c, 1, 1), "w_scale": sw,
                     "bias": np.rint(b / (t.scale * sw)).astype(np.int64), "kernel": [1, 1], "strides": [1, 1],
                     "pads": [0, 0, 0, 0], "dilations": [1, 1]}
        self.add_op("conv", n, [xi], attrs, out_float=n.output[0])

    def op_Mul(self, n, a):
        cst = [i for i in n.input if i in self.consts or i in self.qconst]
        if len(cst) != 1:
            raise unsupported(n.name, n.op_type, "a product of two activations", "multiplication by a constant")
        x = next(i for i in n.input if i not in cst)
        k = self._per_channel(n, x, self._const_value(cst[0]))
        self._affine(n, x, k, np.zeros_like(k))

    # ---- QOperator ops -------------------------------------------------------------------

    def _qparams(self, n, i_s, i_zp):
        return self.scalar_q(n, n.input[i_s], n.input[i_zp] if len(n.input) > i_zp else "")

    def op_QLinearConv(self, n, a):
        x = self.q_in(n.input[0], n, 1)
        wq = self.const(n.input[3], n, "weights")
        w, sw = self._wq(n, wq, self.consts[n.input[4]], self.const(n.input[5], n, "weight zero point"), 0, False)
        sx = self.g.tensors[x].scale
        b = self.bias(n, n.input[8] if len(n.input) > 8 else "", sx, sw)
        geometry = self._conv_attrs(n, a, w)
        self._check_in_channels(n, x, w)
        attrs = dict(geometry, w=w, w_scale=sw, bias=b)
        self.add_op("conv", n, [x], attrs, out_int=n.output[0], params=self._qparams(n, 6, 7))
        self.imap[n.output[0]] = n.output[0]

    def op_QLinearMatMul(self, n, a):
        x = self.q_in(n.input[0], n, 1)
        w, sw = self._wq(n, self.const(n.input[3], n, "weights"), self.consts[n.input[4]],
                         self.const(n.input[5], n, "weight zero point"), 1, True)
        w = self._nhwc_columns(n, x, w)
        attrs = {"w": w, "w_scale": sw, "bias": np.zeros(w.shape[0], np.int64)}
        self.add_op("gemm", n, [x], attrs, out_int=n.output[0], params=self._qparams(n, 6, 7))
        self.imap[n.output[0]] = n.output[0]

    def op_QGemm(self, n, a):
        x = self.q_in(n.input[0], n, 1)
        trans_b = a.get("transB", 0)
        w, sw = self._wq(n, self.const(n.input[3], n, "weights"), self.consts[n.input[4]],
                         self.const(n.input[5], n, "weight zero point"), 0 if trans_b else 1, not trans_b)
        w = self._nhwc_columns(n, x, w)
        b = self.bias(n, n.input[6] if len(n.input) > 6 else "", self.g.tensors[x].scale, sw)
        if len(n.input) < 8 or not n.input[7]:
            raise unsupported(n.name, n.op_type, "a float output", "QGemm with y_scale")
        attrs = self._gemm(n, x, w, sw, b, a)
        self.add_op("gemm", n, [x], attrs, out_int=n.output[0], params=self._qparams(n, 7, 8))
        self.imap[n.output[0]] = n.output[0]

    def op_QLinearAdd(self, n, a):
        xa, xb = self.q_in(n.input[0], n, 1), self.q_in(n.input[3], n, 4)
        if list(self.g.tensors[xa].shape) != list(self.g.tensors[xb].shape):
            raise unsupported(n.name, n.op_type, "broadcasting", "Add of two tensors of the same shape")
        self.add_op("add", n, [xa, xb], {}, out_int=n.output[0], params=self._qparams(n, 6, 7))
        self.imap[n.output[0]] = n.output[0]

    def op_QLinearAveragePool(self, n, a):
        x = self.q_in(n.input[0], n, 1)
        if a.get("channels_last", 0):
            raise unsupported(n.name, n.op_type, "channels_last=1", "NCHW (channels_last=0)")
        self.add_op("pool", n, [x], self._pool_attrs(n, a, self.g.tensors[x].shape), out_int=n.output[0],
                    params=self._qparams(n, 3, 4))
        self.imap[n.output[0]] = n.output[0]

    # The same operands and quantization parameters; _pool_attrs reads the window from the op type.
    op_QLinearGlobalAveragePool = op_QLinearAveragePool

    def op_QLinearConcat(self, n, a):
        ins = [self.q_in(n.input[i], n, i + 1) for i in range(2, len(n.input), 3)]
        shapes = [self.g.tensors[i].shape for i in ins]
        if a.get("axis") not in (1, -3 if len(shapes[0]) == 4 else -1):
            raise unsupported(n.name, n.op_type, f"axis={a.get('axis')}", "concatenation along channels (axis 1)")
        if n.output[0] not in self.shapes or None in self.shapes[n.output[0]]:
            self.shapes[n.output[0]] = [1, sum(s[1] for s in shapes)] + list(shapes[0][2:])
        self.add_op("concat", n, ins, {}, out_int=n.output[0], params=self._qparams(n, 0, 1))
        self.imap[n.output[0]] = n.output[0]

    def op_QLinearSoftmax(self, n, a):
        x = self.q_in(n.input[0], n, 1)
        shape = list(self.g.tensors[x].shape)
        if len(shape) != 2 or a.get("axis", -1) not in (-1, 1):
            raise unsupported(n.name, n.op_type, f"axis={a.get('axis')} on shape {shape}",
                              "Softmax over the last axis of an NC tensor")
        self.g.outputs.append((n.input[0], x))
        out = n.output[0]
        self.g.host_ops.append({"op": "Softmax", "name": n.name or out, "inputs": [n.input[0]], "outputs": [out],
                                "attrs": {"axis": -1}})
        self.hostf[out] = out


def lower(model: onnx.ModelProto) -> Graph:
    """Lower a quantized ONNX model into the integer graph (see the module docstring)."""
    g = _Lowering(model).run()
    for op in g.ops:
        if not op.output:
            raise unsupported(op.name, op.onnx_op, "a result that is never quantized",
                              "ops followed by QuantizeLinear (QDQ) or QLinear* ops")
        op.attrs.pop("_shape", None)
    return g
