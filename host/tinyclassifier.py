"""A hand-assembled image classifier: the host's test and demo model until compiled networks exist.

:func:`tiny_classifier` builds a complete program in the shape of a real
ImageNet classifier, scaled down::

    image 1×3×S×S (NCHW, preprocessed as ``meta["preprocess"]`` says)
      → conv 3×3 / stride 2, pad 1, 3→16 channels, bias, ReLU  (S/2 × S/2)
      → global average pool                                     (1×1×16)
      → 1×1 conv as fully connected, 16 → ``classes`` logits    ("logits")
      → host Softmax                                            ("probabilities")

with random quantized weights, and records its preprocessing and labels in
``Program.meta`` exactly as the compiler does (see docs/host.md), so the
scorer, the server and the benchmarks exercise the same code paths as on
ResNet-50.
"""

from __future__ import annotations

import numpy as np

from tessera.arch import NpuConfig, get_config
from tessera.isa import Instruction
from tessera.numerics import pack_weights, quantize_multiplier
from tessera.program import Program, TensorInfo

from .preprocess import STYLES

__all__ = ["INPUT", "LOGITS", "PROBS", "tiny_classifier", "tiny_classifier_with_params"]

INPUT = "images:0"
LOGITS = "logits:0"
PROBS = "probabilities/Softmax:0"

PROG_ADDR = 0x0
CONST_ADDR = 0x10000
SCRATCH_ADDR = 0x100000

# The int8 domain of each style's normalized input: (scale, zero point) spanning its range.
_INPUT_QUANT = {"caffe": (1.1, -14), "torch": (0.02, -10), "tf": (2 / 255, 0), "none": (1.0, -128)}


def tiny_classifier(config: NpuConfig | str = "sim", **options) -> Program:
    """Build the classifier program (options as :func:`tiny_classifier_with_params`)."""
    return tiny_classifier_with_params(config, **options)[0]


def tiny_classifier_with_params(config: NpuConfig | str = "sim", *, size: int = 16, classes: int = 1000,
                                style: str = "caffe", labels="imagenet1k", seed: int = 0) -> tuple[Program, dict]:
    """Build the classifier program and return it with its integer parameters.

    Parameters
    ----------
    config : NpuConfig or str
        Hardware to build for; ``lanes`` must be at least 3 and the pooled map
        (``size/2``) at most 15 pixels wide (the POOL window field's limit).
    size : int
        Input height and width (even).
    classes : int
        Number of output classes.
    style : str
        Preprocessing style recorded in the metadata (``caffe``, ``torch``, ``tf``, ``none``).
    labels : str or list
        ``meta["labels"]``.
    seed : int
        Seed of the random weights.

    Returns
    -------
    (Program, dict)
        The dict holds what a test needs to recompute the network independently:
        ``w1`` (F×3×3×3), ``b1``, ``m1``, ``s1`` per channel, ``zp_x``, ``zp_1``,
        ``pool`` (mult, shift), ``w3`` (classes×F), ``b3``, ``m3``, ``s3``, ``zp_out``
        (biases before the zero-point fold).
    """
    c = get_config(config) if isinstance(config, str) else config
    N, M = c.lanes, c.rows
    k = c.words_per_block
    feat = M                                   # conv output channels: one row block
    half = size // 2
    if size % 2 or not 1 <= half <= 15 or N < 3:
        raise ValueError("tiny_classifier wants an even size up to 30 and at least 3 lanes")
    rng = np.random.default_rng(seed)
    lo_w, hi_w = -(1 << (c.weight_bits - 1)), (1 << (c.weight_bits - 1)) - 1
    s_x, zp_x = _INPUT_QUANT[style]

    # Layer 1: 3×3/2 conv, zero-point correction folded into the bias (padding reads zp_x).
    w1 = rng.integers(lo_w, hi_w + 1, size=(feat, 3, 3, 3))
    b1 = rng.integers(-4000, 4000, size=feat)
    zp_1 = -128                                # ReLU output is non-negative: use the whole int8 range
    r1 = rng.uniform(1 / 500, 1 / 250, size=feat) * (127 / hi_w)
    # Layer 2: global average pool, same scale in and out.
    mult_p, shift_p = quantize_multiplier(1.0 / (half * half))
    # Layer 3: fully connected as a 1×1 conv over ob_count blocks of M classes.
    ob = -(-classes // M)
    w3 = rng.integers(lo_w, hi_w + 1, size=(classes, feat))
    b3 = rng.integers(-500, 500, size=classes)
    r3 = 1 / 300 * (127 / hi_w)
    s_out, zp_out = 0.06, 0                    # logits of a few units; fixes the implied weight scale

    wblk1 = np.zeros((1, 3, 3, 1, M, N), dtype=np.int64)
    wblk1[0, :, :, 0, :feat, :3] = w1.transpose(2, 3, 0, 1)
    # FC weight words [ob][1][1][cb]: block b, channel block c holds w3[b*M + m, c*N + n].
    w3p = np.zeros((ob * M, k * N), dtype=np.int64)
    w3p[:classes, :feat] = w3
    wblk3 = w3p.reshape(ob, M, k, N).transpose(0, 2, 1, 3)
    params = np.zeros((1 + ob, M, 3), dtype=np.int64)
    params[0, :feat, 0] = b1 - zp_x * w1.sum(axis=(1, 2, 3))
    for m in range(feat):
        params[0, m, 1], params[0, m, 2] = quantize_multiplier(r1[m])
    p3 = np.zeros((ob * M, 3), dtype=np.int64)
    p3[:classes, 0] = b3 - zp_1 * w3.sum(axis=1)
    p3[:, 1], p3[:, 2] = quantize_multiplier(r3)
    params[1:] = p3.reshape(ob, M, 3)
    const = bytearray(pack_weights(np.concatenate([wblk1.reshape(-1), wblk3.reshape(-1)]), c.weight_bits))
    while len(const) % 256:
        const.append(0)
    param_off = len(const)
    const += params.astype("<i4").tobytes()

    # ACT buffer: input (size² words), conv map (half² · k), pooled pixel (k), logits (ob · k).
    P = size * size
    a_in, a_conv = 0, P
    a_pool = a_conv + half * half * k
    a_logit = a_pool + k
    acc_conv, acc_fc = 0, half * half
    # One LOAD each, whole layers resident: say which buffer is too small rather than build a program that faults.
    for buf, need, have in (("ACT", a_logit + ob * k, c.abuf_words), ("WGT", 9 + ob * k, c.wbuf_words),
                            ("ACC", acc_fc + ob, c.accbuf_words), ("PARAM", 1 + ob, c.pbuf_words)):
        if need > have:
            raise ValueError(f"tiny_classifier: {classes} classes at size {size} need {need} {buf} words; config "
                             f"{c.name!r} has {have}")
    in_addr = SCRATCH_ADDR
    out_addr = SCRATCH_ADDR + P * N
    prog = [
        Instruction("load", buf="act", dram_addr=in_addr, buf_addr=a_in, rows=1, cols=P),
        Instruction("load", buf="wgt", dram_addr=CONST_ADDR, buf_addr=0, rows=1, cols=9 + ob * k, signal=["compute"]),
        Instruction("load", buf="param", dram_addr=CONST_ADDR + param_off, buf_addr=0, rows=1, cols=1 + ob,
                    signal=["post"]),
        Instruction("conv", wait=["load"], signal=["post"], in_addr=a_in, in_h=size, in_w=size, in_cb=1,
                    out_h=half, out_w=half, k_h=3, k_w=3, stride_h=2, stride_w=2, dil_h=1, dil_w=1,
                    pad_t=1, pad_l=1, pad_value=zp_x, w_addr=0, acc_addr=acc_conv, ob_count=1),
        Instruction("epilogue", wait=["load", "compute"], acc_addr=acc_conv, pixels=half * half, ob_count=1,
                    param_addr=0, out_addr=a_conv, out_stride=k, zp_out=zp_1, out_min=zp_1, out_max=127),
        Instruction("pool", signal=["compute"], mode="avg", in_addr=a_conv, in_h=half, in_w=half, cb=k,
                    out_addr=a_pool, out_h=1, out_w=1, k_h=half, k_w=half, stride_h=1, stride_w=1,
                    zp_in=zp_1, zp_out=zp_1, mult=mult_p, shift=shift_p),
        Instruction("conv", wait=["post"], signal=["post"], in_addr=a_pool, in_h=1, in_w=1, in_cb=k,
                    out_h=1, out_w=1, k_h=1, k_w=1, stride_h=1, stride_w=1, dil_h=1, dil_w=1,
                    pad_value=zp_1, w_addr=9, acc_addr=acc_fc, ob_count=ob),
        Instruction("epilogue", wait=["compute"], signal=["store"], acc_addr=acc_fc, pixels=1, ob_count=ob,
                    param_addr=1, out_addr=a_logit, out_stride=ob * k, zp_out=zp_out, out_min=-128, out_max=127),
        Instruction("store", wait=["post"], buf="act", dram_addr=out_addr, buf_addr=a_logit, rows=1, cols=ob * k),
        Instruction("end"),
    ]
    preprocess = {"size": [size, size], "resize": None, "crop": "none", "interpolation": "bilinear",
                  "style": style, **STYLES[style]}
    program = Program(
        config=c, instructions=prog, constants=bytes(const), prog_addr=PROG_ADDR, const_addr=CONST_ADDR,
        scratch_addr=SCRATCH_ADDR, scratch_size=P * N + ob * M,
        inputs=[TensorInfo(INPUT, [1, 3, size, size], "NCHW", in_addr, size, size, 3, N, s_x, zp_x)],
        outputs=[TensorInfo(LOGITS, [1, classes], "NC", out_addr, 1, 1, classes, ob * M, s_out, zp_out)],
        host_ops=[{"op": "Softmax", "name": "probabilities/Softmax", "inputs": [LOGITS], "outputs": [PROBS],
                   "attrs": {"axis": -1}}],
        meta={"name": "tiny", "source": "handwritten tessera.host.tinyclassifier",
              "description": f"conv3x3/2 → ReLU → global avg pool → FC {classes} → Softmax",
              "preprocess": preprocess, "labels": labels, "scores": PROBS},
    )
    info = dict(w1=w1, b1=b1, m1=params[0, :feat, 1], s1=params[0, :feat, 2], zp_x=zp_x, zp_1=zp_1,
                pool=(mult_p, shift_p), w3=w3, b3=b3, m3=p3[:classes, 1], s3=p3[:classes, 2], zp_out=zp_out)
    return program, info
