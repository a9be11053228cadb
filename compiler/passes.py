"""Graph passes: small named verbs, each a callable run once over the graph.

ONNX-level (float models, before calibration): :class:`FoldBatchNorm`.
Integer-graph level, in pipeline order: :class:`FoldPad`, :class:`FuseActivation`,
:class:`FuseAdd`, :class:`EliminateReshape`, :class:`GemmToConv`,
:class:`LowerLargePool`, :class:`LowerLeftovers` (unfused Add/Clip/requantization as identity
convolutions), :class:`PlanConcat`, :class:`PatchStem`, :class:`SpaceToDepthStem`, :class:`PadChannels`.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .ir import CompileError, Graph, Op, unsupported

__all__ = [
    "PIPELINE",
    "EliminateReshape",
    "FoldBatchNorm",
    "FoldPad",
    "FuseActivation",
    "FuseAdd",
    "GemmToConv",
    "LowerLargePool",
    "LowerLeftovers",
    "PadChannels",
    "PatchStem",
    "PlanConcat",
    "SpaceToDepthStem",
    "run_passes",
]


class FoldBatchNorm:
    """Fold ``Conv → BatchNormalization`` (constant parameters) into the convolution (float ONNX)."""

    def __call__(self, model: onnx.ModelProto) -> onnx.ModelProto:
        g = model.graph
        inits = {i.name: i for i in g.initializer}
        users = {}
        for n in g.node:
            for i in n.input:
                users.setdefault(i, []).append(n)
        remove = []
        for bn in list(g.node):
            if bn.op_type != "BatchNormalization":
                continue
            conv = next((n for n in g.node if bn.input[0] in n.output), None)
            if conv is None or conv.op_type != "Conv" or len(users.get(conv.output[0], [])) != 1:
                continue
            if any(i not in inits for i in bn.input[1:5]) or conv.input[1] not in inits:
                continue
            eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
            gamma, beta, mean, var = (numpy_helper.to_array(inits[i]).astype(np.float64) for i in bn.input[1:5])
            w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
            b = (numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
                 if len(conv.input) > 2 and conv.input[2] else np.zeros(w.shape[0]))
            a = gamma / np.sqrt(var + eps)
            w2 = (w * a.reshape(-1, 1, 1, 1)).astype(np.float32)
            b2 = ((b - mean) * a + beta).astype(np.float32)
            wname, bname = conv.input[1] + "_bnfolded", (conv.output[0] + "_bias_bnfolded")
            g.initializer.append(numpy_helper.from_array(w2, wname))
            g.initializer.append(numpy_helper.from_array(b2, bname))
            x = conv.input[0]
            del conv.input[:]
            conv.input.extend([x, wname, bname])
            conv.output[0] = bn.output[0]
            remove.append(bn)
        for n in remove:
            g.node.remove(n)
        used = {i for n in g.node for i in n.input}
        for init in list(g.initializer):
            if init.name not in used:
                g.initializer.remove(init)
        return model


class FoldPad:
    """Fold a Pad (constant = the zero point) into the padding of the Conv/MaxPool that reads it."""

    def __call__(self, g: Graph) -> Graph:
        for op in list(g.ops):
            if op.kind != "pad":
                continue
            users = g.consumers(op.output)
            x = g.tensors[op.inputs[0]]
            t, l, b, r = op.attrs["pads"]
            ok = users and not g.is_output(op.output) and all(
                (u.kind == "conv" and op.attrs["value"] == x.zero_point) or
                (u.kind == "pool" and u.attrs["mode"] == "max" and op.attrs["value"] == -128) for u in users)
            if not ok or min(t, l, b, r) < 0:
                raise unsupported(op.name, op.onnx_op, "padding that does not feed a convolution with the "
                                  "input zero point (or a max pool with the minimum)",
                                  "Pad folded into the following Conv/MaxPool")
            for u in users:
                p = u.attrs["pads"]
                u.attrs["pads"] = [p[0] + t, p[1] + l, p[2] + b, p[3] + r]
            g.rename(op.output, op.inputs[0])
            g.ops.remove(op)
        g.remove_unused()
        return g


def _single_use(g: Graph, tensor: str) -> bool:
    return len(g.consumers(tensor)) == 1 and not g.is_output(tensor)


class FuseActivation:
    """Fold Relu/Clip (``clamp`` ops) into the epilogue clamp of the op that produced their input."""

    def __call__(self, g: Graph) -> Graph:
        for op in list(g.ops):
            if op.kind != "clamp":
                continue
            src = g.producer(op.inputs[0])
            if src is None or src.kind not in ("conv", "gemm", "add") or not _single_use(g, op.inputs[0]):
                continue
            lo, hi = op.attrs["clamp"]
            c = src.attrs.get("clamp", (-float("inf"), float("inf")))
            src.attrs["clamp"] = (max(c[0], lo), min(c[1], hi))
            old = src.output
            src.output = op.output
            g.ops.remove(op)
            del g.tensors[old]
        return g


class FuseAdd:
    """Fuse ``Add(conv_out, r)`` into the convolution's epilogue as a residual add.

    The convolution's own output parameters become the epilogue's middle
    (``zp_mid``, scale) and the Add's become the output, as onnxruntime's
    QLinearConv followed by QLinearAdd computes it.
    """

    def __call__(self, g: Graph) -> Graph:
        for op in list(g.ops):
            if op.kind != "add":
                continue
            for i in (0, 1):
                conv = g.producer(op.inputs[i])
                other = op.inputs[1 - i]
                if conv is None or conv.kind != "conv" or "residual" in conv.attrs or not _single_use(g, op.inputs[i]):
                    continue
                mid = g.tensors[conv.output]
                lo = conv.attrs.get("clamp", (-float("inf"), float("inf")))
                if (lo[0] > -float("inf") and mid.quantize_real(lo[0]) > -128) or \
                        (lo[1] < float("inf") and mid.quantize_real(lo[1]) < 127):
                    continue      # a clamp on the middle value has no place in the epilogue
                conv.attrs["residual"] = {"tensor": other, "mid_scale": mid.scale, "mid_zp": mid.zero_point}
                conv.attrs["clamp"] = op.attrs.get("clamp", (-float("inf"), float("inf")))
                conv.inputs.append(other)
                conv.output = op.output
                conv.name = f"{conv.name}+{op.name}"
                # The fused op runs where the Add ran: after both of its inputs exist.
                g.ops.remove(conv)
                g.ops[g.ops.index(op)] = conv
                del g.tensors[mid.name]
                break
        return g


def _root(g: Graph, name: str) -> str:
    p = g.producer(name)
    while p is not None and p.kind == "alias":
        name = p.inputs[0]
        p = g.producer(name)
    return name


class EliminateReshape:
    """Remove Flatten/Reshape/Transpose/Squeeze that move no data in the NPU's HWC layout.

    A reshape of a 1×1-pixel tensor, or one keeping C, H and W, is free; a
    Flatten of an H×W×C tensor is free only in front of a fully connected layer
    (which then becomes an H×W convolution, see :class:`GemmToConv`).
    """

    def __call__(self, g: Graph) -> Graph:
        for op in list(g.ops):
            if op.kind != "alias":
                continue
            src, dst = g.tensors[op.inputs[0]], g.tensors[op.output]
            same = src.channels == dst.channels and src.height == dst.height and src.width == dst.width
            if not same and src.height * src.width == 1 and dst.height * dst.width == 1:
                same = src.channels == dst.channels
            flat = (not same and len(dst.shape) == 2 and dst.channels == src.channels * src.height * src.width)
            users = g.consumers(op.output)
            if flat and not g.is_output(op.output) and all(u.kind == "gemm" for u in users):
                for u in users:
                    u.attrs["spatial_input"] = True
            elif not same:
                raise unsupported(op.name, op.onnx_op, f"reshaping {list(src.shape)} to {list(dst.shape)}",
                                  "reshapes that keep the channel, height and width layout, and Flatten "
                                  "in front of Gemm/MatMul")
            if g.is_output(op.output):
                for k, (n, t) in enumerate(g.outputs):
                    if t == op.output:
                        g.outputs[k] = (n, op.inputs[0])
                        g.output_views[n] = dst.shape
            g.rename(op.output, op.inputs[0])
            g.ops.remove(op)
        g.remove_unused()
        return g


class GemmToConv:
    """A fully connected layer (Gemm/MatMul) is a convolution over its whole input.

    Over a 1×1-pixel input it is a 1×1 convolution; after a Flatten of an
    H×W×C tensor it is an H×W convolution with the weights reshaped to
    (O, C, H, W), which is exactly ONNX's C-major flattening order.
    """

    def __call__(self, g: Graph) -> Graph:
        for op in g.ops:
            if op.kind != "gemm":
                continue
            x = g.tensors[op.inputs[0]]
            w = op.attrs["w"]
            k = x.channels * x.height * x.width
            if w.shape[1] != k:
                raise unsupported(op.name, op.onnx_op, f"weights of shape {list(w.shape)} for an input of "
                                  f"{k} features", "Gemm/MatMul over all features of its input")
            op.kind = "conv"
            op.attrs.update(w=w.reshape(w.shape[0], x.channels, x.height, x.width), kernel=[x.height, x.width],
                            strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1])
            op.attrs.pop("spatial_input", None)
        return g


class LowerLargePool:
    """Average pooling with a window beyond the POOL fields (15×15) becomes a diagonal convolution.

    The convolution sums each channel over the window (weights 1 on the diagonal,
    the kernel split into pieces the back end accumulates) and requantizes with
    ``s_x / (s_y · window)``: the same integer result as the pooling would give.
    """

    def __init__(self, limit: int = 15):
        self.limit = limit

    def __call__(self, g: Graph) -> Graph:
        for op in g.ops:
            if op.kind != "pool" or op.attrs["mode"] != "avg":
                continue
            kh, kw = op.attrs["kernel"]
            if kh <= self.limit and kw <= self.limit:
                continue
            if any(op.attrs["pads"]):
                raise unsupported(op.name, op.onnx_op, f"a padded {kh}×{kw} average pool",
                                  f"windows up to {self.limit}×{self.limit}, or larger ones without padding")
            c = g.tensors[op.inputs[0]].channels
            w = np.zeros((c, c, kh, kw), np.int64)
            w[np.arange(c), np.arange(c)] = 1
            op.kind = "conv"
            op.attrs = {"w": w, "w_scale": np.full(c, 1.0 / (kh * kw)), "bias": np.zeros(c, np.int64), "kernel": [kh, kw],
                            "strides": list(op.attrs["strides"]), "pads": [0, 0, 0, 0], "dilations": [1, 1]}
        return g


class LowerLeftovers:
    """Ops with no fusion partner become identity 1×1 convolutions.

    An unfused Add becomes an identity convolution of one input with the other
    as residual; a lone Clip/Relu or a change of quantization parameters
    becomes an identity convolution that requantizes and clamps.
    """

    def __call__(self, g: Graph) -> Graph:
        for op in g.ops:
            if op.kind not in ("add", "clamp", "requant"):
                continue
            x = g.tensors[op.inputs[0]]
            c = x.channels
            attrs = {"w": np.eye(c, dtype=np.int64).reshape(c, c, 1, 1), "w_scale": np.ones(c),
                         "bias": np.zeros(c, np.int64), "kernel": [1, 1], "strides": [1, 1], "pads": [0, 0, 0, 0],
                         "dilations": [1, 1], "clamp": op.attrs.get("clamp", (-float("inf"), float("inf")))}
            if op.kind == "add":
                # The identity convolution reproduces input 0 exactly in its own parameters.
                attrs["residual"] = {"tensor": op.inputs[1], "mid_scale": x.scale, "mid_zp": x.zero_point}
            op.kind = "conv"
            op.attrs = attrs
        return g


def _identity_attrs(c, clamp=(-float("inf"), float("inf"))):
    return {"w": np.eye(c, dtype=np.int64).reshape(c, c, 1, 1), "w_scale": np.ones(c), "bias": np.zeros(c, np.int64),
                "kernel": [1, 1], "strides": [1, 1], "pads": [0, 0, 0, 0], "dilations": [1, 1], "clamp": clamp}


class PlanConcat:
    """Channel concatenation without copies where possible.

    Each part of a Concat becomes a channel slice of the concatenated tensor
    (starting at a multiple of ``rows``): a convolution that produces a part
    only for this Concat, in the Concat's quantization, writes its slice
    directly. Any other part (a graph input, a pooled tensor, a tensor used
    elsewhere or quantized differently) is copied in by an identity
    convolution that also requantizes it. The Concat op stays as a marker
    that emits nothing.
    """

    def __call__(self, g: Graph) -> Graph:
        graph_inputs = {t for _, t in g.inputs}
        for op in list(g.ops):
            if op.kind != "concat":
                continue
            cat = g.tensors[op.output]
            parts = []
            for i, name in enumerate(op.inputs):
                t = g.tensors[name]
                prod = g.producer(name)
                direct = (prod is not None and prod.kind == "conv" and _single_use(g, name)
                          and op.inputs.count(name) == 1 and name not in graph_inputs
                          and abs(t.scale - cat.scale) <= 1e-9 * cat.scale and t.zero_point == cat.zero_point)
                if not direct:
                    new = f"{op.output}/part{i}"
                    g.tensors[new] = type(t)(new, t.shape, cat.scale, cat.zero_point, cat.src_dtype)
                    g.ops.insert(g.ops.index(op), Op("conv", f"{op.name}/copy{i}", op.onnx_op, [name], new,
                                                     _identity_attrs(t.channels)))
                    name = new
                parts.append(name)
            op.inputs = parts
        return g


class PatchStem:
    """A convolution over a few-channel graph input runs as a 1×1 convolution on its im2col image.

    The host stores every output pixel's ``kh×kw`` receptive field as one
    pixel with channels ordered (dy, dx, c) (:class:`tessera.program.TensorInfo`
    ``patch``, windows every ``stride`` pixels of the zero-point padded image):
    ResNet's 7×7/2 stem over 3 channels becomes a 1×1 convolution over 147
    channels, 3 of 64 lanes' blocks instead of :class:`SpaceToDepthStem`'s 8
    issues per output pixel. The image is ``kh·kw/stride²`` times the source,
    all of it moved by LOADs, so the pass compares both transforms (and none)
    by :meth:`cost`, MAC-array issues against the bytes the memory port moves
    per output pixel, and rewrites only where patches are cheapest. Like
    :class:`SpaceToDepthStem` it takes strided convolutions only: at stride 1
    the image grows by the whole kernel area (VGG's first layer, 9×).
    """

    def __init__(self, config):
        self.config = config

    def rate(self) -> float:
        """Bytes per cycle a LOAD stream sustains: ``mem_outstanding`` beats per round trip, at most one a cycle."""
        c = self.config
        return c.bus_bytes * min(1.0, c.mem_outstanding / (c.mem_latency + 1))

    def cost(self, issues: float, in_bytes: float, out_bytes: float) -> float:
        """Cycles per output pixel: the MAC array's issues or the memory port's traffic, whichever is slower."""
        return max(issues, (in_bytes + out_bytes) / self.rate())

    def costs(self, g: Graph, op: Op) -> dict:
        """Cycles per output pixel of the convolution as it is, on space-to-depth blocks, and on patches."""
        c = self.config
        n = c.lanes

        def up(v, k):
            return -(-v // k) * k

        a, x, y = op.attrs, g.tensors[op.inputs[0]], g.tensors[op.output]
        s, (kh, kw), C = a["strides"][0], a["kernel"], x.channels
        blocks = -(-y.channels // c.rows)
        out = up(y.channels, c.rows)
        res = out if "residual" in a else 0         # the residual is read per output pixel too
        costs = {"none": self.cost(kh * kw * -(-C // n) * blocks, up(C, n) / (s * s), out + res),
                 "patches": self.cost(-(-kh * kw * C // n) * blocks, up(kh * kw * C, n), out + res)}
        s2d = SpaceToDepthStem(c)
        P = s2d.phases(g, op) if s >= 2 else 0
        if P:
            b = s * P
            taps = -(-(s * (P - 1) + kh) // b) * -(-(s * (P - 1) + kw) // b)
            # each of the P² phases issues its own output blocks for one of P² output pixels
            issues = s2d.cost(taps, b * b * C, n) * blocks
            costs["space_to_depth"] = self.cost(issues, up(b * b * C, n) / (P * P), out + res)
        return costs

    def __call__(self, g: Graph) -> Graph:
        for op in g.ops:
            if not SpaceToDepthStem.candidate(g, op):
                continue
            costs = self.costs(g, op)
            if costs["patches"] >= min(v for k, v in costs.items() if k != "patches"):
                continue
            a = op.attrs
            x, y = g.tensors[op.inputs[0]], g.tensors[op.output]
            s, (kh, kw), C = a["strides"][0], a["kernel"], x.channels
            pt, pl, pb, pr = a["pads"]
            # Rows/columns the last window reaches (a conv may ignore trailing source rows: then no bottom pad).
            pb = max(0, s * (y.height - 1) + kh - x.height - pt)
            pr = max(0, s * (y.width - 1) + kw - x.width - pl)
            w = np.asarray(a["w"])
            # [o][c][dy][dx] → [o][dy][dx][c]: channels (dy, dx, c) as the host packs them
            w2 = w.transpose(0, 2, 3, 1).reshape(w.shape[0], kh * kw * C, 1, 1)
            g.input_transforms[x.name] = {"shape": list(x.shape), "pad": [pt, pl, pb, pr], "block": s,
                                          "patch": [kh, kw]}
            x.shape = (1, kh * kw * C, y.height, y.width)
            a.update(w=w2, kernel=[1, 1], strides=[1, 1], pads=[0, 0, 0, 0])
            a["space_to_depth"] = {"block": s, "patch": [kh, kw], "source_kernel": [C, kh, kw]}  # model MACs
        return g


class SpaceToDepthStem:
    """A strided convolution over a few-channel graph input runs on a space-to-depth image.

    The host pads the input with the zero point and packs each ``b×b`` block
    into one pixel with channels ordered (dy, dx, c) (:class:`tessera.program.TensorInfo`
    ``pad``/``block``). With ``b`` equal to the stride ``s``, a ``k×k``/``s``
    convolution over ``C`` channels is a ``⌈k/s⌉×⌈k/s⌉``/1 convolution without
    padding over ``s²·C`` channels, its weights rearranged with zeros for the
    taps beyond ``k``: ResNet's 7×7/2 stem over 3 channels becomes a 4×4/1
    convolution over 12 of 16 lanes instead of 49 taps over 3.

    Wide lanes (64) are still mostly empty with 12 channels; then ``b = P·s``
    and each packed pixel yields ``P×P`` output pixels (phases), computed as
    ``P²`` groups of output channels whose kernels are shifted by ``s·phase``;
    the back end scatters each phase to its pixels when storing (attribute
    ``phases``). The block is the one that issues the fewest MAC-array cycles
    per output pixel; the pass leaves the convolution alone if none beats it.
    """

    max_phases = 4

    def __init__(self, config):
        self.config = config

    @staticmethod
    def cost(taps: int, channels: int, lanes: int) -> int:
        """MAC-array issues per output pixel and output block."""
        return taps * -(-channels // lanes)

    def phases(self, g: Graph, op: Op) -> int:
        """The phase count ``P`` (block ``P·stride``) that issues the fewest MAC-array cycles, 0 for none."""
        n, a = self.config.lanes, op.attrs
        s, (kh, kw), C = a["strides"][0], a["kernel"], g.tensors[op.inputs[0]].channels
        best, P = self.cost(kh * kw, C, n), 0
        # Phases need a plain output (no residual, not a slice of a concatenation).
        max_p = 1 if "residual" in a or any(u.kind == "concat" for u in g.consumers(op.output)) \
            else self.max_phases
        for p in range(1, max_p + 1):
            b = s * p
            c = self.cost(-(-(s * (p - 1) + kh) // b) * -(-(s * (p - 1) + kw) // b), b * b * C, n)
            if c < best:
                best, P = c, p
        return P

    @staticmethod
    def candidate(g: Graph, op: Op, min_stride: int = 2) -> bool:
        """A convolution over a few-channel graph input that only it reads, with square stride ≥ ``min_stride``."""
        graph_inputs = {t for _, t in g.inputs}
        if op.kind != "conv" or op.inputs[0] not in graph_inputs or not _single_use(g, op.inputs[0]) \
                or op.inputs[0] in g.input_transforms or op.inputs[0] in op.inputs[1:]:
            return False
        a, x = op.attrs, g.tensors[op.inputs[0]]
        s = a["strides"][0]
        return s >= min_stride and a["strides"][1] == s and list(a["dilations"]) == [1, 1] \
            and len(x.shape) == 4 and x.chan_map is None

    def __call__(self, g: Graph) -> Graph:
        m = self.config.rows
        for op in g.ops:
            if not self.candidate(g, op):
                continue
            a = op.attrs
            x = g.tensors[op.inputs[0]]
            s = a["strides"][0]
            kh, kw = a["kernel"]
            C = x.channels
            P = self.phases(g, op)
            if not P:
                continue
            b = s * P
            KH, KW = -(-(s * (P - 1) + kh) // b), -(-(s * (P - 1) + kw) // b)
            y = g.tensors[op.output]
            OHb, OWb = -(-y.height // P), -(-y.width // P)
            pt, pl, _, _ = a["pads"]
            # Stored image: every row/column the outputs read (and the whole source image), a multiple of b.
            Hp = max(b * (OHb - 1 + KH), -(-(x.height + pt) // b) * b)
            Wp = max(b * (OWb - 1 + KW), -(-(x.width + pl) // b) * b)
            w = np.asarray(a["w"])
            O = w.shape[0]
            Ov = O if P == 1 else -(-O // m) * m        # each phase starts a new output block
            w2 = np.zeros((P * P * Ov, b * b * C, KH, KW), w.dtype)
            bias = np.zeros(P * P * Ov, np.asarray(a["bias"]).dtype)
            w_scale = np.ones(P * P * Ov)
            for py in range(P):
                for px in range(P):
                    # phase (py, px): output pixel (P·j+py, P·i+px) reads packed pixels from (j, i) on,
                    # at source offsets s·py + ky, s·px + kx
                    wp = np.zeros((O, C, KH * b, KW * b), w.dtype)
                    wp[:, :, s * py:s * py + kh, s * px:s * px + kw] = w
                    o0 = (py * P + px) * Ov
                    # [o][c][ky'][dy][kx'][dx] → [o][dy][dx][c][ky'][kx']: channels (dy, dx, c) as the host packs
                    w2[o0:o0 + O] = wp.reshape(O, C, KH, b, KW, b).transpose(0, 3, 5, 1, 2, 4) \
                        .reshape(O, b * b * C, KH, KW)
                    bias[o0:o0 + O] = a["bias"]
                    w_scale[o0:o0 + O] = a["w_scale"]
            g.input_transforms[x.name] = {"shape": list(x.shape), "pad": [pt, pl, Hp - x.height - pt, Wp - x.width - pl],
                                          "block": b}
            x.shape = (1, b * b * C, Hp // b, Wp // b)
            a.update(w=w2, bias=bias, w_scale=w_scale, kernel=[KH, KW], strides=[1, 1], pads=[0, 0, 0, 0])
            if P > 1:
                a["phases"] = P
            a["space_to_depth"] = {"block": b, "source_kernel": [C, kh, kw]}     # model MACs for the report
        return g


class PadChannels:
    """Give every tensor its physical channel count ``cpad``.

    Tensors written by the epilogue hold whole output blocks (a multiple of
    ``rows``); graph inputs a multiple of ``lanes``; pooled tensors keep their
    input's layout.
    """

    def __init__(self, config):
        self.config = config

    def __call__(self, g: Graph) -> Graph:
        c = self.config

        def up(v, m):
            return -(-v // m) * m

        for _, t in g.inputs:
            g.tensors[t].cpad = up(g.tensors[t].channels, c.lanes)
        for op in g.ops:
            out = g.tensors[op.output]
            if op.kind == "conv":
                out.cpad = up(out.channels, c.rows)
            elif op.kind == "pool":
                src = g.tensors[op.inputs[0]]
                out.cpad, out.chan_map = src.cpad, src.chan_map
            elif op.kind == "concat":
                off, cmap = 0, []
                for name in op.inputs:
                    part = g.tensors[name]
                    part.view = (out, off)
                    cmap.append(off + (np.arange(part.channels) if part.chan_map is None else part.chan_map))
                    off += part.cpad
                out.cpad = off
                cmap = np.concatenate(cmap)
                out.chan_map = None if np.array_equal(cmap, np.arange(out.channels)) else cmap
            else:
                raise CompileError(f"internal: op {op.name!r} of kind {op.kind!r} reached PadChannels")
        for op in g.ops:
            res = op.attrs.get("residual")
            if res is not None:
                r, out = g.tensors[res["tensor"]], g.tensors[op.output]
                if r.cpad < out.cpad or (r.height, r.width, r.channels) != (out.height, out.width, out.channels) \
                        or r.chan_map is not None:
                    raise unsupported(op.name, op.onnx_op, f"adding {list(r.shape)} (stored with {r.cpad} channels) "
                                      f"to {list(out.shape)}", "residual adds of equal shapes produced on the NPU")
        for name, t in g.outputs:
            if g.tensors[t].chan_map is not None or g.tensors[t].view is not None:
                op = g.producer(t)
                raise unsupported(op.name if op else name, op.onnx_op if op else "?",
                                  f"graph output {name!r} as a slice or padded concatenation",
                                  "graph outputs that are whole tensors with contiguous channels")
        return g


def PIPELINE(config):
    """The integer-graph passes in order."""
    return [FoldPad(), FuseActivation(), FuseAdd(), EliminateReshape(), GemmToConv(), LowerLargePool(), LowerLeftovers(),
            PlanConcat(), PatchStem(config), SpaceToDepthStem(config), PadChannels(config)]


def run_passes(g: Graph, config) -> Graph:
    for p in PIPELINE(config):
        g = p(g)
    return g
