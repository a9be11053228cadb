"""Back end: tiling to the on-chip buffers, scheduling, and emission of a :class:`Program`.

Buffer plan (every region double-buffered, so the load of tile i+1 and the
store of tile i-1 overlap the compute of tile i):

- ACT: two input-tile slots (a quarter of the buffer each), two output slots
  and two residual slots (an eighth each);
- WGT, ACC, PARAM: two halves each.

A convolution keeps as many output blocks (``ob`` groups) and input channel
blocks (``cb`` groups, accumulated with ``accumulate=1``) as a weight slot
holds; if the whole layer's weights fit one slot they are loaded once and stay
for every spatial tile. Spatial tiles are bands of output rows (and columns
when one row is too wide) sized to the input, accumulator and output slots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tessera.isa import FORMATS, Buffer, Opcode
from tessera.numerics import pack_weights, quantize_multiplier, weight_range
from tessera.program import Program, TensorInfo

from .ir import CompileError, Graph, unsupported
from .memory import allocate
from .schedule import DRAM, Scheduler

__all__ = ["ConvPlan", "EmitInstructions", "LayerReport", "PoolPlan", "TileForBuffers"]

CONST_ALIGN = 256
TENSOR_ALIGN = 256


def _f32_ratio(a: float, b: float, c: float) -> float:
    """``a*b/c`` rounded as onnxruntime computes requantization scales (float32, in that order).

    A 31-bit multiplier holds a float32 exactly, so the fixed-point product then equals
    onnxruntime's float product before its rounding, which keeps disagreements to near-ties.
    """
    return float(np.float32(np.float32(a) * np.float32(b)) / np.float32(c))


def _avg_pool_ratio(s_x: float, s_y: float, taps: int) -> float:
    """``s_x / (s_y * taps)`` in float32, in onnxruntime's order (MLAS QLinearGlobalAveragePool).

    Its whole-window average pool rounds ``sum * ratio`` half to even; with the ratio held
    exactly in the multiplier, POOL's sum and rounding agree with it up to near-ties.
    """
    return float(np.float32(s_x) / (np.float32(s_y) * np.float32(taps)))


def _pool_fl32(config, op, x, y):
    """POOL ``fl32`` fields that reproduce onnxruntime's average of this pool, or None.

    onnxruntime averages a windowed quantized pool in float32, fused (QLinearAveragePool: the
    output zero point as it holds it enters in float before the rounding) or unfused (DQ →
    AveragePool → Q: after). The driver records which (:mod:`~tessera.compiler.ort_paths`); a
    QLinearAveragePool of the source model is fused by definition. POOL's ``fl32`` arithmetic is
    either path for one float32 scale in and out, no padding and a 2×2, 1×2 or 2×1 window (the tap
    order measured against onnxruntime, docs/numerics.md). A window over the whole input is
    onnxruntime's integer global-average kernel, which the fixed-point rule matches.
    """
    a = op.attrs
    if op.onnx_op == "QLinearAveragePool":
        path = y.zero_point + (128 if y.src_dtype == "uint8" else 0)
    else:
        path = a.get("onnxruntime_path")
    ok = (config.pool_fl32 and path is not None and tuple(a["kernel"]) in ((2, 2), (1, 2), (2, 1))
          and tuple(a["kernel"]) != (x.height, x.width) and not any(a["pads"]) and x.scale == y.scale
          and float(np.float32(x.scale)) == x.scale and x.scale > 0)
    if not ok:
        return None
    kh, kw = a["kernel"]
    f = {"mode": "avg", "zp_in": x.zero_point, "zp_out": y.zero_point, "fl32": 1,
         "mult": int(np.frexp(np.float32(x.scale))[0] * (1 << 24)), "shift": (kh * kw).bit_length() - 1}
    if path != "unfused":
        f.update(fl32_zp=1, zp_ort=int(path))
    return f


def _out_grid(op, y):
    """(phases P, output channels per pixel of the computed grid, grid height, grid width).

    A phased convolution (:class:`~tessera.compiler.passes.SpaceToDepthStem`) computes ``P²``
    groups of ``y.cpad`` channels per grid pixel, each group the output pixel of one phase.
    """
    P = op.attrs.get("phases", 1)
    return P, P * P * y.cpad, -(-y.height // P), -(-y.width // P)


def _padded_weights(x, ocpad, w, N, M):
    """Weights scattered to physical channels: (OB*M, CB*N, kh, kw)."""
    O, I, kh, kw = w.shape
    wp = np.zeros((ocpad // M * M, x.cpad // N * N, kh, kw), np.int64)
    if x.chan_map is None:
        wp[:O, :I] = w
    else:
        wp[:O, x.chan_map] = w
    return wp


def _block_ranges(wp, N, M):
    """Per output block, the input word range [lo, hi) holding its nonzero weights."""
    OB, CB = wp.shape[0] // M, wp.shape[1] // N
    nz = (wp != 0).reshape(OB, M, CB, N, -1).any(axis=(1, 3, 4))      # [ob][cb]
    out = []
    for b in range(OB):
        idx = np.nonzero(nz[b])[0]
        out.append((int(idx[0]), int(idx[-1]) + 1) if idx.size else (0, 1))
    return out


def _fmax(op, name):
    for f in FORMATS[op].fields:
        if f.name == name:
            return f.max
    raise KeyError(name)


@dataclass
class ConvPlan:
    cg: int            # input channel blocks per cb group
    n_cg: int
    g: int             # output blocks per ob group
    n_og: int
    th: int
    tw: int
    weights_resident: bool
    params_resident: bool
    #: block-sparse layers (identity copies, per-channel affine ops): the input channel words
    #: [lo, hi) each ob group reads; only those are loaded and multiplied
    og_ranges: list | None = None
    #: kernel pieces (ky0, ky1, kx0, kx1) accumulated one after another: kernels larger than the
    #: CONV fields (15×15) or than a weight slot
    tap_groups: list | None = None
    #: a strided 1×1 convolution whose tiles load only the pixels it reads (then CONV runs with stride 1)
    subsample: bool = False


@dataclass
class PoolPlan:
    cg: int
    th: int
    #: output columns per tile: the whole width unless the window's rows of it do not fit a slot
    tw: int


@dataclass
class LayerReport:
    name: str
    op: str
    in_shape: list
    out_shape: list
    macs: int
    instructions: int = 0
    tiles: int = 0
    buffers: dict = field(default_factory=dict)

    def to_dict(self):
        return dict(self.__dict__)


class _Slots:
    """Two alternating slots of one region of a buffer."""

    def __init__(self, base, size):
        self.base, self.size, self.k = base, size, 0

    def next(self):
        a = self.base + (self.k % 2) * self.size
        self.k += 1
        return a


class TileForBuffers:
    """Choose tile sizes for every conv and pool so each tile fits its buffer slots."""

    def __init__(self, config):
        c = self.config = config
        self.in_slot = c.abuf_words // 4
        self.out_slot = c.abuf_words // 8
        self.res_slot = c.abuf_words // 8
        self.w_slot = c.wbuf_words // 2
        self.acc_slot = c.accbuf_words // 2
        self.p_slot = c.pbuf_words // 2

    def __call__(self, g: Graph) -> dict:
        return {op.name: (self.conv(g, op) if op.kind == "conv" else self.pool(g, op)) for op in g.ops
                if op.kind != "concat"}

    def conv(self, g, op) -> ConvPlan:
        c = self.config
        x, y = g.tensors[op.inputs[0]], g.tensors[op.output]
        a = op.attrs
        kh, kw = a["kernel"]
        taps = kh * kw
        wpb = c.words_per_block
        for v, f, what in ((a["strides"][0], "stride_h", "stride"), (a["strides"][1], "stride_w", "stride"),
                           (a["dilations"][0], "dil_h", "dilation"), (a["dilations"][1], "dil_w", "dilation"),
                           (a["pads"][0], "pad_t", "top padding"), (a["pads"][1], "pad_l", "left padding")):
            if v > _fmax(Opcode.CONV, f):
                raise unsupported(op.name, op.onnx_op, f"{what} {v}", f"{what} up to {_fmax(Opcode.CONV, f)}")
        gh, gw = min(kh, _fmax(Opcode.CONV, "k_h")), min(kw, _fmax(Opcode.CONV, "k_w"))
        while gh * gw > self.w_slot:
            if gh >= gw:
                gh = -(-gh // 2)
            else:
                gw = -(-gw // 2)
        tap_groups = [(ky, min(kh, ky + gh), kx, min(kw, kx + gw)) for ky in range(0, kh, gh) for kx in range(0, kw, gw)]
        if len(tap_groups) > 1 and (a["pads"][0] or a["pads"][1] or a["pads"][2] or a["pads"][3]):
            raise unsupported(op.name, op.onnx_op, f"a padded {kh}×{kw} kernel",
                              f"padded kernels up to {gh}×{gw}; larger kernels without padding")
        kh, kw = gh, gw               # the extent one CONV instruction covers
        taps = kh * kw
        cb_in = x.cpad // c.lanes
        _, ocpad, OH, OW = _out_grid(op, y)
        OB = ocpad // c.rows
        og_ranges = None
        blocks = _block_ranges(_padded_weights(x, ocpad, a["w"], c.lanes, c.rows), c.lanes, c.rows)
        if OB > 1 and max(hi - lo for lo, hi in blocks) * 4 <= cb_in:
            # Block-sparse (diagonal) weights: small ob groups, each reading only its own input words.
            params_resident = OB <= self.p_slot
            gg = min(4, OB, self.acc_slot, OB if params_resident else self.p_slot)
            while gg > 1:
                rng = [(min(lo for lo, _ in blocks[o:o + gg]), max(hi for _, hi in blocks[o:o + gg]))
                       for o in range(0, OB, gg)]
                if max(hi - lo for lo, hi in rng) * taps * gg <= self.w_slot:
                    break
                gg -= 1
            og_ranges = [(min(lo for lo, _ in blocks[o:o + gg]), max(hi for _, hi in blocks[o:o + gg]))
                         for o in range(0, OB, gg)]
            cg = max(hi - lo for lo, hi in og_ranges)
            n_cg, n_og = 1, len(og_ranges)
            if cg * taps * gg > self.w_slot:
                og_ranges = None
        has_res = "residual" in a
        sh, sw = a["strides"]
        dh, dw = a["dilations"]
        H, W = x.height, x.width
        if min(OH, OW, H, W) < 1:
            raise unsupported(op.name, op.onnx_op, f"an empty tensor ({list(x.shape)} → {list(y.shape)})",
                              "tensors with at least one pixel")
        # A strided 1×1 convolution reads every s-th pixel: its tiles load only those.
        subsample = (og_ranges is None and taps == 1 and len(tap_groups) == 1 and (sh > 1 or sw > 1)
                     and not any(a["pads"]))

        def in_box(th, tw):
            if subsample:
                return th, tw
            return (min(H, (th - 1) * sh + (kh - 1) * dh + 1), min(W, (tw - 1) * sw + (kw - 1) * dw + 1))

        def tile(cg, gg):
            def fits(th, tw):
                ir, ic = in_box(th, tw)
                P = th * tw
                return (ir * ic * cg <= self.in_slot and P * gg <= self.acc_slot and P * gg * wpb <= self.out_slot
                        and (not has_res or P * gg * wpb <= self.res_slot) and ir <= 1023 and ic <= 1023
                        and th <= 1023 and tw <= 1023)

            tw = OW
            while tw >= 1:
                th = 0
                while th < OH and fits(th + 1, tw):
                    th += 1
                if th:
                    nth, ntw = -(-OH // th), -(-OW // tw)
                    return -(-OH // nth), -(-OW // ntw)
                tw = -(-tw // 2) if tw > 1 else 0
            return None

        if og_ranges is not None:
            cands = [(cg, n_cg, gg, n_og, params_resident)]
        else:
            # Every split of the input channel blocks that fits a weight slot: more, smaller cb
            # groups allow bigger spatial tiles and so fewer weight reloads.
            cands, cg_max = [], min(cb_in, self.w_slot // taps)
            for cg in sorted({-(-cb_in // k) for k in range(-(-cb_in // max(cg_max, 1)), cb_in + 1)}, reverse=True):
                if not 0 < cg <= cg_max:
                    continue
                n_cg = -(-cb_in // cg)
                gmax = min(OB, self.w_slot // (taps * cg), self.acc_slot, _fmax(Opcode.CONV, "ob_count"))
                n_og = -(-OB // gmax)
                gg = -(-OB // n_og)
                params_resident = OB <= self.p_slot
                if not params_resident:
                    gg = min(gg, self.p_slot)
                    n_og = -(-OB // gg)
                cands.append((cg, n_cg, gg, n_og, params_resident))
                # Smaller ob groups ("streamed", flagged by a sixth item): the MAC array starts after
                # the first group's weights and the rest stream in behind it (large weights over few
                # pixels: ResNet's res5 on 64 lanes), unless loading the weights outlasts the MACs.
                while n_og < OB and n_og < 8 and OH * OW * OB * taps * cb_in \
                        >= self._load_cycles(OB * taps * cb_in, c.wgt_word_bytes):
                    n_og *= 2
                    gg = -(-OB // n_og)
                    n_og = -(-OB // gg)
                    cands.append((cg, n_cg, gg, n_og, params_resident, True))
        best = None
        for cand in cands:
            streamed = len(cand) > 5
            cand = cand[:5]
            t0 = tile(cand[0], cand[2])
            if t0 is None:
                continue
            # Also twice as many tiles when there are few and large: nothing overlaps the last tile's
            # epilogue and store (the next layer waits for them), so halving it pays for the extra
            # steps (measured with the cycle model on ResNet-50: res4's single 14×14 tiles on arria10)
            # unless the tail is only a few memory round trips.
            nt = -(-OH // t0[0])
            halve = nt * -(-OW // t0[1]) <= 4 and OH > nt and t0[0] * t0[1] * cand[2] * wpb >= 8 * (c.mem_latency + 1)
            for t in [t0] + ([(-(-OH // min(OH, 2 * nt)), t0[1])] if halve else []):
                cost = self._estimate(cand, t, in_box(*t), OB, cb_in, OH, OW, taps, len(tap_groups), has_res) \
                    + 2 * t[0] * t[1] * cand[2] * wpb
                # Another split only when clearly faster: the estimate is rough, and more steps mean
                # more instructions to fetch and to compile; streamed weights must gain 10 % (measured
                # with the cycle model on ResNet-50: smaller margins pick splits that lose on res4).
                if best is None or cost < (0.9 if streamed else 0.97) * best[0]:
                    best = (cost, cand, t)
        if best is None:
            raise unsupported(op.name, op.onnx_op, f"a layer whose smallest tile ({cands[-1][0]} channel blocks "
                              f"of a {kh}×{kw} window) exceeds the activation buffer",
                              f"tiles within {self.in_slot} ACT words")
        _, (cg, n_cg, gg, n_og, params_resident), (th, tw) = best
        resident = n_og == 1 and n_cg == 1 and len(tap_groups) == 1
        if og_ranges is not None:
            resident = sum((min(OB, o + gg) - o) * (ky1 - ky0) * (kx1 - kx0) * (hi - lo)
                           for o, (lo, hi) in zip(range(0, OB, gg), og_ranges)
                           for ky0, ky1, kx0, kx1 in tap_groups) <= self.w_slot
        return ConvPlan(cg, n_cg, gg, n_og, th, tw, resident, params_resident, og_ranges,
                        tap_groups if len(tap_groups) > 1 else None, subsample)

    def _load_cycles(self, words: int, word_bytes: int) -> float:
        """LOAD time of ``words``: one request per bus beat (at least one per word), at most
        ``mem_outstanding`` of them per memory round trip."""
        c = self.config
        beats = words * max(1, word_bytes // c.bus_bytes)
        return beats * max(1.0, (c.mem_latency + 1) / c.mem_outstanding)

    def _estimate(self, cand, tile, box, OB, cb_in, OH, OW, taps, n_tg, has_res) -> float:
        """Rough cycles of a conv plan: the MAC array and the memory port overlap (double
        buffering) except for the first step's loads."""
        c = self.config
        cg, n_cg, gg, n_og, _ = cand
        th, tw = tile
        ntiles = -(-OH // th) * -(-OW // tw)
        in_words = ntiles * box[0] * box[1] * cb_in
        w_words = OB * taps * n_tg * cb_in
        if n_og == 1 and n_cg == 1 and n_tg == 1:
            wl, il = w_words, in_words
        elif n_cg > 1 or n_tg > 1:
            wl, il = ntiles * w_words, n_og * in_words
        else:
            wl, il = min((ntiles * w_words, in_words), (w_words, n_og * in_words),
                         key=lambda v: v[0] * c.wgt_word_bytes + v[1] * c.act_word_bytes)
        out_words = OH * OW * OB * c.words_per_block
        steps = ntiles * n_og * n_cg * n_tg
        compute = OH * OW * OB * taps * n_tg * cb_in + steps * 48      # CONV overheads, fetch
        dma = (self._load_cycles(wl, c.wgt_word_bytes) + self._load_cycles(il + out_words * has_res, c.act_word_bytes)
               + out_words * max(1, c.act_word_bytes // c.bus_bytes))
        first = self._load_cycles(gg * taps * cg, c.wgt_word_bytes) + self._load_cycles(box[0] * box[1] * cg,
                                                                                          c.act_word_bytes)
        return max(compute, dma) + first

    def pool(self, g, op, in_slot: int | None = None, out_slot: int | None = None) -> PoolPlan:
        c = self.config
        in_slot, out_slot = in_slot or self.in_slot, out_slot or self.out_slot
        x, y = g.tensors[op.inputs[0]], g.tensors[op.output]
        a = op.attrs
        kh, kw = a["kernel"]
        for v, f, what in ((kh, "k_h", "window height"), (kw, "k_w", "window width"),
                           (a["strides"][0], "stride_h", "stride"), (a["strides"][1], "stride_w", "stride"),
                           (a["pads"][0], "pad_t", "top padding"), (a["pads"][1], "pad_l", "left padding")):
            if v > _fmax(Opcode.POOL, f):
                raise unsupported(op.name, op.onnx_op, f"{what} {v}", f"{what} up to {_fmax(Opcode.POOL, f)}")
        cbw = x.cpad // c.lanes
        H, W, OH, OW = x.height, x.width, y.height, y.width
        if min(OH, OW, H, W) < 1:
            raise unsupported(op.name, op.onnx_op, f"an empty tensor ({list(x.shape)} → {list(y.shape)})",
                              "tensors with at least one pixel")
        sh, sw = a["strides"]

        def rows(cg, tw):
            # The most output rows per tile at tw output columns and cg channel words, 0 if none fits.
            iw = min(W, (tw - 1) * sw + kw)
            th = 0
            while th < OH and min(H, th * sh + kh) * iw * cg <= in_slot and (th + 1) * tw * cg <= out_slot:
                th += 1
            return th

        # Whole rows first (one LOAD and STORE per tile); a tensor too wide for that is cut into
        # column strips, each loading the columns its windows read.
        for cg in range(cbw, 0, -1):
            if th := rows(cg, OW):
                n_cg = -(-cbw // cg)
                cg = -(-cbw // n_cg)
                nth = -(-OH // th)
                return PoolPlan(cg, -(-OH // nth), OW)
        for cg in range(cbw, 0, -1):
            tw = OW
            while tw > 0 and not rows(cg, tw):
                tw -= 1
            if tw:
                n_cg, ntw = -(-cbw // cg), -(-OW // tw)
                cg, tw = -(-cbw // n_cg), -(-OW // ntw)
                nth = -(-OH // rows(cg, tw))
                return PoolPlan(cg, -(-OH // nth), tw)
        raise unsupported(op.name, op.onnx_op, f"a {kh}×{kw} window over {W}-pixel rows",
                          f"pooling tiles within {in_slot} ACT words")


def _segments(g: Graph):
    """Segment of every op's output, and of every host op with NPU I/O (``io``).

    A host op that writes a tensor back into NPU memory runs between segments: the ops that
    (transitively) read its result go to a later END-terminated segment than the ops it reads.
    """
    src, out = dict(g.inputs), dict(g.outputs)
    writer = {src[n]: k for k, h in enumerate(g.host_ops) for n in h.get("io", ()) if n in src}
    level, host = {}, {}

    def host_level(k):
        if k not in host:
            h = g.host_ops[k]
            host[k] = max([tensor_level(out[n]) for n in h["inputs"] if n in out and n in h["io"]], default=0)
        return host[k]

    def tensor_level(t):
        return host_level(writer[t]) + 1 if t in writer else level.get(t, 0)

    for op in g.ops:
        level[op.output] = max([tensor_level(t) for t in op.inputs], default=0)
    for k, h in enumerate(g.host_ops):
        if "io" in h:
            host_level(k)
    return level, host


class EmitInstructions:
    """Allocate external memory, pack constants, emit the scheduled instruction stream."""

    def __init__(self, config, plans: dict):
        self.config = config
        self.plans = plans
        t = TileForBuffers(config)
        self.in_slots = _Slots(0, t.in_slot)
        self.out_slots = _Slots(2 * t.in_slot, t.out_slot)
        self.res_slots = _Slots(2 * t.in_slot + 2 * t.out_slot, t.res_slot)
        self.w_slots = _Slots(0, t.w_slot)
        self.acc_slots = _Slots(0, t.acc_slot)
        self.p_slots = _Slots(0, t.p_slot)

    # ---- constants ------------------------------------------------------------------------

    def _const(self, blob: bytes) -> int:
        off = len(self.const)
        self.const += blob
        self.const += bytes(-len(self.const) % CONST_ALIGN)
        return off

    def _pack_conv(self, g, op, plan):
        c = self.config
        N, M = c.lanes, c.rows
        a = op.attrs
        x, y = g.tensors[op.inputs[0]], g.tensors[op.output]
        w = a["w"]
        O, _, kh, kw = w.shape
        lo, hi = weight_range(c.weight_bits)
        if w.min(initial=0) < lo or w.max(initial=0) > hi:
            raise unsupported(op.name, op.onnx_op, f"weights outside {lo}..{hi} (after removing the zero point)",
                              f"{c.weight_bits}-bit signed weights")
        _, ocpad, _, _ = _out_grid(op, y)
        OB, CB = ocpad // M, x.cpad // N
        wp = _padded_weights(x, ocpad, w, N, M)
        blocks = wp.reshape(OB, M, CB, N, kh, kw).transpose(0, 4, 5, 2, 1, 3)   # [ob][ky][kx][cb][M][N]
        groups = {}
        tgs = plan.tap_groups or [(0, kh, 0, kw)]
        if plan.og_ranges is not None:
            # One chunk, ob groups back to back, so resident weights load with one instruction.
            parts, words0 = [], 0
            wb = c.wgt_word_bytes
            for og, (c0, c1) in enumerate(plan.og_ranges):
                o0, o1 = og * plan.g, min(OB, (og + 1) * plan.g)
                for tg, (ky0, ky1, kx0, kx1) in enumerate(tgs):
                    parts.append(blocks[o0:o1, ky0:ky1, kx0:kx1, c0:c1].reshape(-1))
                    words = (o1 - o0) * (ky1 - ky0) * (kx1 - kx0) * (c1 - c0)
                    groups[og, 0, tg] = (words0, words)
                    words0 += words
            base = self._const(pack_weights(np.concatenate(parts), c.weight_bits))
            groups = {k: (base + off * wb, words, off) for k, (off, words) in groups.items()}
            groups["all"] = (base, words0)
        for og in range(plan.n_og if plan.og_ranges is None else 0):
            o0, o1 = og * plan.g, min(OB, (og + 1) * plan.g)
            for cgi in range(plan.n_cg):
                c0, c1 = cgi * plan.cg, min(CB, (cgi + 1) * plan.cg)
                for tg, (ky0, ky1, kx0, kx1) in enumerate(tgs):
                    words = (o1 - o0) * (ky1 - ky0) * (kx1 - kx0) * (c1 - c0)
                    groups[og, cgi, tg] = (self._const(pack_weights(blocks[o0:o1, ky0:ky1, kx0:kx1, c0:c1],
                                                                    c.weight_bits)), words)
        # Per-channel (bias, mult, shift): the input zero point read by padding folds into the bias.
        sx, sy = x.scale, y.scale
        mid_scale = a["residual"]["mid_scale"] if "residual" in a else sy
        prm = np.zeros((OB * M, 3), np.int64)
        bias = a["bias"] - x.zero_point * w.reshape(O, -1).sum(axis=1)
        if np.abs(bias).max(initial=0) >= 1 << 31:
            raise unsupported(op.name, op.onnx_op, "a bias beyond the int32 range", "int32 biases")
        prm[:O, 0] = bias
        for o in range(O):
            try:
                prm[o, 1], prm[o, 2] = quantize_multiplier(_f32_ratio(sx, float(a["w_scale"][o]), mid_scale))
            except ValueError as e:
                raise unsupported(op.name, op.onnx_op, f"requantization scale of channel {o} ({e})",
                                  "scales s_x*s_w/s_y below 2**31") from None
        params = self._const(prm.astype("<i4").tobytes())
        return groups, params

    # ---- DMA -----------------------------------------------------------------------------------

    def _box(self, op, t, y0, y1, x0, x1, w0, w1, buf_addr, buf=Buffer.ACT, reads=(), writes_buf=True):
        """LOAD (or STORE) the pixel box [y0,y1)×[x0,x1), channel words [w0,w1) of tensor ``t``."""
        c = self.config
        N = c.lanes
        pitch = t.pitch
        cbw = pitch // N
        nw, ny, nx = w1 - w0, y1 - y0, x1 - x0
        base = self.addr[t.name] + (y0 * t.width + x0) * pitch + w0 * N
        maxc, maxr = _fmax(Opcode.LOAD, "cols"), _fmax(Opcode.LOAD, "rows")
        if nw == cbw and nx == t.width and ny * nx * nw <= maxc:
            dmas = [(base, 1, ny * nx * nw, 0, 0)]
        elif nw == cbw and nx * nw <= maxc:
            dmas = [(base, ny, nx * nw, t.width * pitch, nx * nw)]
        elif nx == t.width and ny * nx <= maxr:
            dmas = [(base, ny * nx, nw, pitch, nw)]
        else:
            # One transfer per image row (rows = pixels, cols = channel words): always within the fields.
            dmas = [(base + r * t.width * pitch, nx, nw, pitch, nw) for r in range(ny)]
        for k, (addr, rows, cols, dstride, bstride) in enumerate(dmas):
            ba = buf_addr + k * nx * nw
            span = (ba, ba + rows * cols if bstride == 0 else ba + (rows - 1) * bstride + cols)
            dspan = (DRAM, addr, addr + (rows - 1) * dstride + cols * N)
            f = {"buf": buf, "dram_addr": addr, "dram_stride": dstride, "buf_addr": ba, "buf_stride": bstride,
                     "rows": rows, "cols": cols}
            if op == "load":
                self.s.emit("load", reads=[dspan], writes=[(Buffer.ACT, *span)], **f)
            else:
                self.s.emit("store", reads=[(Buffer.ACT, *span)], writes=[dspan], **f)

    def _subsampled_load(self, t, oy0, oy1, ox0, ox1, sh, sw, w0, w1, buf_addr):
        """LOAD pixels (sh·oy, sw·ox) for the output box, channel words [w0, w1), densely: one
        transfer per output row with a pixel stride of ``sw``."""
        N, pitch = self.config.lanes, t.pitch
        nw, nx = w1 - w0, ox1 - ox0
        for r, oy in enumerate(range(oy0, oy1)):
            addr = self.addr[t.name] + (sh * oy * t.width + sw * ox0) * pitch + w0 * N
            ba = buf_addr + r * nx * nw
            self.s.emit("load", reads=[(DRAM, addr, addr + (nx - 1) * sw * pitch + nw * N)],
                        writes=[(Buffer.ACT, ba, ba + nx * nw)], buf=Buffer.ACT, dram_addr=addr,
                        dram_stride=sw * pitch, buf_addr=ba, buf_stride=nw, rows=nx, cols=nw)

    def _load_const(self, buf, off, words):
        c = self.config
        wb = c.word_bytes(buf)
        slots = self.w_slots if buf == Buffer.WGT else self.p_slots
        a = slots.next()
        self.s.emit("load", writes=[(buf, a, a + words)], buf=buf, dram_addr=self.const_addr + off,
                    dram_stride=0, buf_addr=a, buf_stride=0, rows=1, cols=words)
        del wb
        return a

    # ---- layers ---------------------------------------------------------------------------------

    def conv(self, g, op, plan: ConvPlan):
        steps = self._conv_steps(g, op, plan)
        while True:
            try:
                next(steps)
            except StopIteration as e:
                return e.value

    def _conv_steps(self, g, op, plan: ConvPlan):
        """Emit a convolution; a generator that yields, after each step, how many output rows
        (from the top) are stored, and returns the number of tiles."""
        c = self.config
        N, M, wpb = c.lanes, c.rows, c.words_per_block
        a = op.attrs
        x, y = g.tensors[op.inputs[0]], g.tensors[op.output]
        groups, poff = self._pack_conv(g, op, plan)
        kh, kw = a["kernel"]
        sh, sw = a["strides"]
        dh, dw = a["dilations"]
        pt, pl = a["pads"][0], a["pads"][1]
        phases, ocpad, OH, OW = _out_grid(op, y)
        CB, OB = x.cpad // N, ocpad // M
        lo, hi = a.get("clamp", (-math.inf, math.inf))
        out_min = max(-128, y.quantize_real(lo)) if lo > -math.inf else -128
        out_max = min(127, y.quantize_real(hi)) if hi < math.inf else 127
        res = a.get("residual")
        epi = {"zp_out": y.zero_point, "out_min": out_min, "out_max": out_max}
        if res is not None:
            r = g.tensors[res["tensor"]]
            ra, rb = _f32_ratio(res["mid_scale"], 1.0, y.scale), _f32_ratio(r.scale, 1.0, y.scale)
            _, s = quantize_multiplier(max(ra, rb))
            s = min(s, _fmax(Opcode.EPILOGUE, "res_shift"))
            ma, mb = round(ra * 2.0 ** s), round(rb * 2.0 ** s)
            if max(ma, mb) > _fmax(Opcode.EPILOGUE, "res_mult_a"):
                raise unsupported(op.name, op.onnx_op, "an Add whose input/output scale ratio exceeds 2**31",
                                  "residual adds with moderate scale ratios")
            epi.update(residual=1, zp_mid=res["mid_zp"], zp_res=r.zero_point, res_mult_a=ma, res_mult_b=mb,
                       res_shift=s)
        w_addr = p_base = None
        sparse = plan.og_ranges is not None
        tgs = plan.tap_groups or [(0, kh, 0, kw)]
        own_loads = plan.n_cg > 1 or sparse or len(tgs) > 1
        if plan.weights_resident:
            off, words = groups["all"] if sparse else groups[0, 0, 0]
            w_addr = self._load_const(Buffer.WGT, off, words)
        if plan.params_resident:
            p_base = self._load_const(Buffer.PARAM, poff, OB)

        def window(o0, o1, s_, p_, k0, k1, d, size):
            """Input range a kernel piece reads for outputs [o0, o1), and the padding before it."""
            r0 = o0 * s_ - p_ + k0 * d
            return max(0, r0), min(size, (o1 - 1) * s_ - p_ + (k1 - 1) * d + 1), max(0, r0) - r0

        tile_list = []
        for oy0 in range(0, OH, plan.th):
            oy1 = min(OH, oy0 + plan.th)
            for ox0 in range(0, OW, plan.tw):
                ox1 = min(OW, ox0 + plan.tw)
                wins = [window(oy0, oy1, sh, pt, ky0, ky1, dh, x.height) + window(ox0, ox1, sw, pl, kx0, kx1, dw, x.width)
                        for ky0, ky1, kx0, kx1 in tgs]
                if plan.subsample:          # the tile holds only the pixels read: one per output pixel
                    wins = [(oy0, oy1, 0, ox0, ox1, 0)]
                if any(iy1 <= iy0 or ix1 <= ix0 for iy0, iy1, _, ix0, ix1, _ in wins):
                    raise unsupported(op.name, op.onnx_op, "output pixels whose window lies entirely in the padding",
                                      "padding smaller than the kernel")
                tile_list.append((oy0, oy1, ox0, ox1, wins))
        # Loop order: with tiles outermost every tile reloads the weights of every ob group; with ob
        # groups outermost the weights load once and every tile's input reloads per group. Take the
        # order that moves fewer bytes.
        og_outer = False
        if not plan.weights_resident and not own_loads and plan.n_og > 1 and len(tile_list) > 1:
            in_bytes = sum((w[0][1] - w[0][0]) * (w[0][4] - w[0][3]) for *_, w in tile_list) * x.cpad
            w_bytes = sum(groups[og, 0, 0][1] for og in range(plan.n_og)) * c.wgt_word_bytes
            og_outer = w_bytes + plan.n_og * in_bytes < in_bytes + len(tile_list) * w_bytes
        steps = ([(t, og) for og in range(plan.n_og) for t in range(len(tile_list))] if og_outer
                 else [(t, og) for t in range(len(tile_list)) for og in range(plan.n_og)])
        last_in = last_w = last_wa = in_addr = None
        csh, csw = (1, 1) if plan.subsample else (sh, sw)

        def load_in(win, cb0, cb1, addr):
            iy0, iy1, _, ix0, ix1, _ = win
            if plan.subsample:
                self._subsampled_load(x, iy0, iy1, ix0, ix1, sh, sw, cb0, cb1, addr)
            else:
                self._box("load", x, iy0, iy1, ix0, ix1, cb0, cb1, addr)

        def weights(og, cgi, tg):
            """WGT address of the weights of (og, cgi, tg), loading them if they are not there."""
            nonlocal last_w, last_wa
            if sparse and plan.weights_resident:
                return w_addr + groups[og, 0, tg][2]
            if plan.weights_resident:
                return w_addr
            key = (og, 0 if sparse else cgi, tg)
            if key != last_w:
                off, words = groups[key][:2]
                last_w, last_wa = key, self._load_const(Buffer.WGT, off, words)
            return last_wa

        # Fetch is in program order into bounded queues: a tile's STOREs (and their wait for its
        # EPILOGUE) go after the next tile's CONVs, so they never hold back the compute queue.
        deferred = []
        stored = [0] * len(tile_list)

        def flush():
            for t_, f in deferred:
                f()
                stored[t_] += 1
            deferred.clear()
            todo = [tile_list[k][0] for k, n in enumerate(stored) if n < plan.n_og]
            return min(y.height, phases * min(todo)) if todo else y.height

        for t, og in steps:
            oy0, oy1, ox0, ox1, wins = tile_list[t]
            th, tw = oy1 - oy0, ox1 - ox0
            P = th * tw
            if not own_loads and last_in != t:
                # Weights first: a layer's first weights (into the slot the previous layer left
                # free) then load while the previous layer still computes.
                weights(og, 0, 0)
                in_addr = self.in_slots.next()
                load_in(wins[0], 0, CB, in_addr)
                last_in = t
            ob0, ob1 = og * plan.g, min(OB, (og + 1) * plan.g)
            gcount = ob1 - ob0
            acc = self.acc_slots.next()
            first = True
            for cgi in range(plan.n_cg):
                cb0, cb1 = cgi * plan.cg, min(CB, (cgi + 1) * plan.cg)
                if sparse:
                    cb0, cb1 = plan.og_ranges[og]
                ncb = cb1 - cb0
                for tg, (ky0, ky1, kx0, kx1) in enumerate(tgs):
                    iy0, iy1, pad_t, ix0, ix1, pad_l = wins[tg]
                    wa = weights(og, cgi, tg)
                    if own_loads:
                        in_addr = self.in_slots.next()
                        load_in(wins[tg], cb0, cb1, in_addr)
                    k_h, k_w = ky1 - ky0, kx1 - kx0
                    n_in = (iy1 - iy0) * (ix1 - ix0) * ncb
                    reads = [(Buffer.ACT, in_addr, in_addr + n_in),
                             (Buffer.WGT, wa, wa + gcount * k_h * k_w * ncb)]
                    if not first:
                        reads.append((Buffer.ACC, acc, acc + gcount * P))
                    self.s.emit("conv", reads=reads, writes=[(Buffer.ACC, acc, acc + gcount * P)],
                                in_addr=in_addr, in_h=iy1 - iy0, in_w=ix1 - ix0, in_cb=ncb, out_h=th,
                                out_w=tw, k_h=k_h, k_w=k_w, stride_h=csh, stride_w=csw, dil_h=dh, dil_w=dw,
                                pad_t=pad_t, pad_l=pad_l, pad_value=x.zero_point, w_addr=wa,
                                acc_addr=acc, ob_count=gcount, accumulate=int(not first))
                    first = False
                    self.macs += P * k_h * k_w * ncb * gcount * M * N
            yield flush()
            pa = p_base + ob0 if plan.params_resident else self._load_const(
                Buffer.PARAM, poff + ob0 * c.param_word_bytes, gcount)
            nwords = P * gcount * wpb
            reads = [(Buffer.ACC, acc, acc + gcount * P), (Buffer.PARAM, pa, pa + gcount)]
            extra = {}
            if res is not None:
                ra_ = self.res_slots.next()
                self._box("load", r, oy0, oy1, ox0, ox1, ob0 * wpb, ob1 * wpb, ra_)
                reads.append((Buffer.ACT, ra_, ra_ + nwords))
                extra = {"res_addr": ra_, "res_stride": gcount * wpb}
            oa = self.out_slots.next()
            self.s.emit("epilogue", reads=reads, writes=[(Buffer.ACT, oa, oa + nwords)], acc_addr=acc,
                        pixels=P, ob_count=gcount, param_addr=pa, out_addr=oa, out_stride=gcount * wpb,
                        **epi, **extra)
            if phases == 1:
                deferred.append((t, lambda a=(y, oy0, oy1, ox0, ox1, ob0 * wpb, ob1 * wpb, oa): self._box("store", *a)))
            else:
                deferred.append((t, lambda a=(y, phases, oy0, oy1, ox0, ox1, ob0, ob1, oa): self._store_phases(*a)))
        yield flush()
        return len(tile_list)

    def _store_phases(self, y, P, oy0, oy1, ox0, ox1, ob0, ob1, oa):
        """STORE a phased tile: grid pixel (j, i), phase (py, px) goes to output pixel (P·j+py, P·i+px).

        One transfer per grid row and phase: pixels ``P`` apart in memory, the phase's words of
        every grid pixel ``ob_count·wpb`` apart in ACT.
        """
        c = self.config
        N, wpb = c.lanes, c.words_per_block
        OBo = y.cpad // c.rows
        tw, stride = ox1 - ox0, (ob1 - ob0) * wpb
        pitch = y.pitch
        for j in range(oy0, oy1):
            for ph in range(ob0 // OBo, -(-ob1 // OBo)):
                py, px = divmod(ph, P)
                b0, b1 = max(ob0, ph * OBo), min(ob1, (ph + 1) * OBo)
                oy = P * j + py
                i1 = min(ox1, -(-(y.width - px) // P))      # grid columns whose pixel exists
                if oy >= y.height or i1 <= ox0:
                    continue
                n = i1 - ox0
                addr = self.addr[y.name] + (oy * y.width + P * ox0 + px) * pitch + (b0 - ph * OBo) * wpb * N
                ba = oa + (j - oy0) * tw * stride + (b0 - ob0) * wpb
                cols = (b1 - b0) * wpb
                self.s.emit("store", reads=[(Buffer.ACT, ba, ba + (n - 1) * stride + cols)],
                            writes=[(DRAM, addr, addr + (n - 1) * P * pitch + cols * N)], buf=Buffer.ACT,
                            dram_addr=addr, dram_stride=P * pitch, buf_addr=ba, buf_stride=stride, rows=n,
                            cols=cols)

    def pool(self, g, op, plan: PoolPlan):
        tiles = self._pool_tiles(g, op, plan, self.in_slots, self.out_slots)
        for _, emit in tiles:
            emit()
        return len(tiles)

    def _pool_tiles(self, g, op, plan: PoolPlan, in_slots, out_slots):
        """The pooling's tiles in order: (input rows it needs from the top, function emitting it)."""
        c = self.config
        N = c.lanes
        a = op.attrs
        x, y = g.tensors[op.inputs[0]], g.tensors[op.output]
        kh, kw = a["kernel"]
        sh, sw = a["strides"]
        pt, pl = a["pads"][0], a["pads"][1]
        cbw = x.cpad // N
        OH, OW = y.height, y.width
        f = {"k_h": kh, "k_w": kw, "stride_h": sh, "stride_w": sw}
        fl32 = _pool_fl32(c, op, x, y) if a["mode"] == "avg" else None
        if fl32:
            f.update(fl32)
        elif a["mode"] == "avg":
            mult, shift = quantize_multiplier(_avg_pool_ratio(x.scale, y.scale, kh * kw))
            zp_in, zp_out = x.zero_point, y.zero_point
            taps = kh * kw
            windowed = (kh, kw) != (x.height, x.width)
            if windowed and zp_out % 2 and x.scale == y.scale and not any(a["pads"]) and taps & (taps - 1) == 0 \
                    and max(zp_in, zp_out) < 127:
                # onnxruntime's windowed pools round a .5 tie of the window mean to an even *stored* value
                # (its whole-window pools round mean - zp_out; tests/compiler/test_pool_rounding.py); POOL
                # rounds mean - zp_out to even, so with an odd zp_out both zero points move by one: the sum
                # drops by exactly `taps`, the mean by exactly 1.
                zp_in, zp_out = zp_in + 1, zp_out + 1
            f.update(mode="avg", zp_in=zp_in, zp_out=zp_out, mult=mult, shift=shift)
        else:
            f.update(mode="max")
        def tile(oy0, oy1, r0, iy0, iy1, ox0, ox1, c0, ix0, ix1, w0, w1):
            ia = in_slots.next()
            self._box("load", x, iy0, iy1, ix0, ix1, w0, w1, ia)
            oa = out_slots.next()
            n_in = (iy1 - iy0) * (ix1 - ix0) * (w1 - w0)
            n_out = (oy1 - oy0) * (ox1 - ox0) * (w1 - w0)
            self.s.emit("pool", reads=[(Buffer.ACT, ia, ia + n_in)], writes=[(Buffer.ACT, oa, oa + n_out)],
                        in_addr=ia, in_h=iy1 - iy0, in_w=ix1 - ix0, cb=w1 - w0, out_addr=oa, out_h=oy1 - oy0,
                        out_w=ox1 - ox0, pad_t=iy0 - r0, **f, pad_l=ix0 - c0)
            self._box("store", y, oy0, oy1, ox0, ox1, w0, w1, oa)

        tw = plan.tw
        tiles = []
        for oy0 in range(0, OH, plan.th):
            oy1 = min(OH, oy0 + plan.th)
            r0 = oy0 * sh - pt
            iy0, iy1 = max(0, r0), min(x.height, (oy1 - 1) * sh - pt + kh)
            for ox0 in range(0, OW, tw):
                ox1 = min(OW, ox0 + tw)
                # A strip's windows start at column c0 (left of the tensor: its padding, pad_l).
                c0 = ox0 * sw - pl
                ix0, ix1 = max(0, c0), min(x.width, (ox1 - 1) * sw - pl + kw)
                for w0 in range(0, cbw, plan.cg):
                    w1 = min(cbw, w0 + plan.cg)
                    tiles.append((iy1, lambda a=(oy0, oy1, r0, iy0, iy1, ox0, ox1, c0, ix0, ix1, w0, w1): tile(*a)))
        return tiles

    def _fused_pool(self, g, op, nxt):
        """The plan of pooling ``nxt`` run interleaved with convolution ``op``, or None: it must read
        only op's output, and its tiles (whole rows) must fit the residual region of ACT, which op
        leaves free."""
        if not (nxt is not None and op.kind == "conv" and nxt.kind == "pool" and nxt.inputs[0] == op.output
                and "residual" not in op.attrs and len(g.consumers(op.output)) == 1 and not g.is_output(op.output)):
            return None
        t = TileForBuffers(self.config)
        size = 2 * t.res_slot
        try:
            plan = t.pool(g, nxt, size * 3 // 8, size // 8)
        except CompileError:
            return None
        # Column strips would interleave as many small tiles, each with its own LOAD and STORE.
        return plan if plan.tw == g.tensors[nxt.output].width else None

    def _conv_with_pool(self, g, op, plan, pop, pplan, k):
        """Emit convolution ``op`` (layer tag k) with pooling ``pop`` (tag k+1) interleaved: each
        pooling tile right after the convolution has stored the rows it reads, so the POST unit
        pools while the MAC array convolves. The pooling uses the (free) residual region of ACT."""
        base, size = self.res_slots.base, 2 * self.res_slots.size
        pin, pout = size * 3 // 8, size // 8
        ptiles = self._pool_tiles(g, pop, pplan, _Slots(base, pin), _Slots(base + 2 * pin, pout))
        ntiles = len(ptiles)
        steps = self._conv_steps(g, op, plan)
        # A pooling tile goes one convolution step after the one that stores its last row: the POST
        # unit runs in program order, so an earlier pooling would hold the next epilogue while its
        # LOAD waits for that STORE.
        done = 0
        while True:
            self.s.tag = k
            try:
                rows = next(steps)
            except StopIteration as e:
                ctiles = e.value
                break
            self.s.tag = k + 1
            while ptiles and ptiles[0][0] <= done:
                ptiles.pop(0)[1]()
            done = rows
        self.s.tag = k + 1
        for _, emit in ptiles:
            emit()
        return ctiles, ntiles

    # ---- the whole graph -------------------------------------------------------------------------

    def __call__(self, g: Graph, meta: dict | None = None):
        c = self.config
        self.const = bytearray()
        self.macs = 0
        level, host_after = _segments(g)
        g.ops.sort(key=lambda op: level[op.output])
        # Liveness: op index of definition and last use; inputs from -1, outputs to the end.
        live = {}
        for _, t in g.inputs:
            live[t] = [-1, -1]
        for i, op in enumerate(g.ops):
            live.setdefault(op.output, [i, i])
            for t in op.inputs:
                live[t][1] = max(live[t][1], i)
        for _, t in g.outputs:
            live[t][1] = len(g.ops)
        # A concatenation's slices live in the concatenated tensor: it lives from its first slice on.
        for t in list(live):
            v = g.tensors[t].view
            if v is not None:
                base = live.setdefault(v[0].name, list(live[t]))
                base[0], base[1] = min(base[0], live[t][0]), max(base[1], live[t][1])
                del live[t]
        sizes = {t: g.tensors[t].height * g.tensors[t].width * g.tensors[t].cpad for t in live}
        # Activations first (their footprint is known before any instruction exists), then the
        # constants, whose base is therefore known while layers are emitted, then the program.
        self.scratch_addr = 0
        self.addr, self.scratch_size = allocate(sizes, {k: tuple(v) for k, v in live.items()}, 0, TENSOR_ALIGN)
        for t in g.tensors.values():
            if t.view is not None:
                self.addr[t.name] = self.addr[t.view[0].name] + t.view[1]
        self.const_addr = -(-max(self.scratch_size, 1) // 4096) * 4096
        self.s = Scheduler(c, 0, max(self.scratch_size, 1))
        reports, issued = [], []
        starts = [0]
        fused = None
        for i, op in enumerate(g.ops):
            while level[op.output] >= len(starts):
                starts.append(self.s.end_segment())
            if op.kind == "concat":
                continue
            n0, m0 = len(self.s.instrs), self.macs
            self.s.tag = len(reports)
            plan = self.plans[op.name]
            nxt = g.ops[i + 1] if i + 1 < len(g.ops) and level[g.ops[i + 1].output] == level[op.output] else None
            if fused is not None:           # emitted with the convolution before it
                plan, tiles = fused
                fused = None
            elif (pplan := self._fused_pool(g, op, nxt)) is not None:
                tiles, ptiles = self._conv_with_pool(g, op, plan, nxt, pplan, len(reports))
                fused = pplan, ptiles
            else:
                tiles = self.conv(g, op, plan) if op.kind == "conv" else self.pool(g, op, plan)
            reports.append(self._report(g, op, plan, len(self.s.instrs) - n0, tiles))
            issued.append(self.macs - m0)
        self.s.tag = None
        instrs = self.s.instructions()
        ranges = self.s.tag_ranges()
        for k, r in enumerate(reports):
            r.instructions = sum(b - a + 1 for a, b in ranges.get(k, []))
        layers = [{"name": r.name, "op": r.op, "macs": r.macs, "issued_macs": int(m),
                   "instructions": ranges.get(k, []), "in_shape": r.in_shape, "out_shape": r.out_shape}
                  for k, (r, m) in enumerate(zip(reports, issued))]
        prog_addr = -(-(self.const_addr + len(self.const)) // 4096) * 4096
        end = prog_addr + 32 * len(instrs)
        if end > c.dram_bytes:
            raise CompileError(f"the program needs {end} bytes of external memory; config {c.name!r} has "
                               f"{c.dram_bytes}")

        def info(name, t, shape=None, layout=None):
            tr = g.input_transforms.get(t.name)
            src = type(t)(t.name, tuple(tr["shape"])) if tr else t
            shape = list(shape if shape is not None else src.shape)
            return TensorInfo(name=name, shape=shape, layout=layout or ("NCHW" if len(shape) == 4 else "NC"),
                              addr=self.addr[t.name], height=src.height, width=src.width, channels=src.channels,
                              cpad=t.cpad, scale=float(t.scale), zero_point=int(t.zero_point),
                              **({"pad": list(tr["pad"]), "block": tr["block"], "patch": tr.get("patch")}
                                 if tr else {}))

        views = g.output_views
        # NPU tensors that host ops between segments read or write are theirs, not the model's I/O.
        io = {n for h in g.host_ops for n in h.get("io", ())}
        io_info = {n: info(n, g.tensors[t]).to_dict() for n, t in g.inputs + g.outputs if n in io}
        host_ops = [dict(h, io={n: io_info[n] for n in h["io"]}, after_segment=host_after[k]) if "io" in h else h
                    for k, h in enumerate(g.host_ops)]
        prog = Program(starts=starts, config=c, instructions=instrs, constants=bytes(self.const), prog_addr=prog_addr,
                       const_addr=self.const_addr, scratch_addr=self.scratch_addr, scratch_size=self.scratch_size,
                       inputs=[info(n, g.tensors[t], *reversed(g.input_layouts.get(t, (None, None))))
                               for n, t in g.inputs if n not in io],
                       outputs=[info(n, g.tensors[t], views.get(n)) for n, t in g.outputs if n not in io],
                       host_ops=host_ops, meta=dict(meta or {}, macs=self.macs, layers=layers))
        return prog, reports

    def _report(self, g, op, plan, n_instr, tiles):
        c = self.config
        x, y = g.tensors[op.inputs[0]], g.tensors[op.output]
        if op.kind == "conv":
            O, I, kh, kw = op.attrs["w"].shape
            if "space_to_depth" in op.attrs:
                O, (I_, kh_, kw_) = y.channels, op.attrs["space_to_depth"]["source_kernel"]
            else:
                I_, kh_, kw_ = I, kh, kw
            macs = O * I_ * kh_ * kw_ * y.height * y.width
            if plan.tap_groups:
                kh = max(g1 - g0 for g0, g1, _, _ in plan.tap_groups)
                kw = max(g1 - g0 for _, _, g0, g1 in plan.tap_groups)
            th, tw = plan.th, plan.tw
            sh, sw = (1, 1) if plan.subsample else op.attrs["strides"]
            ir = min(x.height, (th - 1) * sh + (kh - 1) * op.attrs["dilations"][0] + 1)
            ic = min(x.width, (tw - 1) * sw + (kw - 1) * op.attrs["dilations"][1] + 1)
            buffers = {"act_in": ir * ic * plan.cg, "act_out": th * tw * plan.g * c.words_per_block,
                           "wgt": plan.g * kh * kw * plan.cg, "acc": th * tw * plan.g,
                           "param": (y.cpad // c.rows) if plan.params_resident else plan.g}
        else:
            kh, kw = op.attrs["kernel"]
            macs = y.channels * y.height * y.width * kh * kw
            tw = plan.tw
            ir = min(x.height, (plan.th - 1) * op.attrs["strides"][0] + kh)
            ic = min(x.width, (tw - 1) * op.attrs["strides"][1] + kw)
            buffers = {"act_in": ir * ic * plan.cg, "act_out": plan.th * tw * plan.cg}
        return LayerReport(op.name, op.onnx_op if op.kind != "conv" or op.onnx_op in ("Conv", "QLinearConv")
                           else f"{op.onnx_op}→conv", [int(d) for d in x.shape], [int(d) for d in y.shape],
                           int(macs), n_instr, tiles, buffers)
