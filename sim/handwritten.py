"""Hand-assembled programs: the NPU's smoke tests before (and beside) the compiler.

:func:`conv_relu_pool` builds a complete program for one 3×3 convolution with
bias, per-channel requantization and ReLU, followed by 2×2 max pooling, from
random quantized weights. It exercises all four units and their tokens, and is
what ``make demo`` runs while the compiler does not exist yet.
"""

from __future__ import annotations

import numpy as np

from tessera.arch import NpuConfig
from tessera.isa import Instruction
from tessera.numerics import pack_weights, quantize_multiplier
from tessera.program import Program, TensorInfo

__all__ = ["conv_relu_pool"]

PROG_ADDR = 0x0
CONST_ADDR = 0x10000
SCRATCH_ADDR = 0x100000


def conv_relu_pool(config: NpuConfig, *, height: int = 8, width: int = 8, in_ch: int = 3,
                   out_ch: int | None = None, seed: int = 0) -> tuple[Program, dict]:
    """Program: conv 3×3 (pad 1) → +bias → requantize → ReLU → maxpool 2×2/2.

    Returns the program and a dict of the float parameters used to build it
    (``w``: int weights O×I×3×3, ``bias``: int32, ``scales``, zero points), so a
    test can recompute the result independently.
    """
    c = config
    N, M = c.lanes, c.rows
    out_ch = out_ch or M
    # The usual layout, or, in an external memory too small for it (the iCEBreaker's 64 KiB), its quarters.
    const_addr, scratch_addr = ((CONST_ADDR, SCRATCH_ADDR) if c.dram_bytes >= 2 * SCRATCH_ADDR
                                else (c.dram_bytes // 4, c.dram_bytes // 2))
    if in_ch > N or out_ch > M or height % 2 or width % 2:
        raise ValueError("conv_relu_pool wants in_ch <= lanes, out_ch <= rows and even sizes")
    rng = np.random.default_rng(seed)
    lo_w, hi_w = -(1 << (c.weight_bits - 1)), (1 << (c.weight_bits - 1)) - 1
    w = rng.integers(lo_w, hi_w + 1, size=(out_ch, in_ch, 3, 3))
    bias = rng.integers(-2000, 2000, size=out_ch)
    s_x, zp_x = 0.05, int(rng.integers(-20, 20))
    s_w = rng.uniform(0.002, 0.02, size=out_ch)
    s_y, zp_y = 0.08, int(rng.integers(-30, 0))

    # Weight words: [ob][ky][kx][cb] blocks of rows×lanes; zero outside the real channels.
    wblk = np.zeros((1, 3, 3, 1, M, N), dtype=np.int64)
    wblk[0, :, :, 0, :out_ch, :in_ch] = w.transpose(2, 3, 0, 1)
    # Padding reads the input zero point, so the zero-point correction folds into the bias.
    bias_folded = bias - zp_x * w.sum(axis=(1, 2, 3))
    params = np.zeros((M, 3), dtype=np.int32)
    for m in range(out_ch):
        params[m, 1], params[m, 2] = quantize_multiplier(s_x * s_w[m] / s_y)
    params[:out_ch, 0] = bias_folded
    wbytes = pack_weights(wblk, c.weight_bits)
    const = bytearray(wbytes)
    while len(const) % 256:
        const.append(0)
    param_off = len(const)
    const += params.astype("<i4").tobytes()

    P = height * width
    in_addr, out_addr = scratch_addr, scratch_addr + P * N
    k = c.words_per_block
    abuf_in, abuf_conv, abuf_pool = 0, P, P + P * k
    ph, pw = height // 2, width // 2
    prog = [
        Instruction("load", buf="act", dram_addr=in_addr, dram_stride=0, buf_addr=abuf_in, buf_stride=0,
                    rows=1, cols=P),
        Instruction("load", buf="wgt", dram_addr=const_addr, buf_addr=0, rows=1, cols=9, signal=["compute"]),
        Instruction("load", buf="param", dram_addr=const_addr + param_off, buf_addr=0, rows=1, cols=1,
                    signal=["post"]),
        Instruction("conv", wait=["load"], signal=["post"], in_addr=abuf_in, in_h=height, in_w=width, in_cb=1,
                    out_h=height, out_w=width, k_h=3, k_w=3, stride_h=1, stride_w=1, dil_h=1, dil_w=1,
                    pad_t=1, pad_l=1, pad_value=zp_x, w_addr=0, acc_addr=0, ob_count=1),
        Instruction("epilogue", wait=["load", "compute"], acc_addr=0, pixels=P, ob_count=1, param_addr=0,
                    out_addr=abuf_conv, out_stride=k, zp_out=zp_y, out_min=max(zp_y, -128), out_max=127),
        Instruction("pool", signal=["store"], mode="max", in_addr=abuf_conv, in_h=height, in_w=width, cb=k,
                    out_addr=abuf_pool, out_h=ph, out_w=pw, k_h=2, k_w=2, stride_h=2, stride_w=2),
        Instruction("store", wait=["post"], buf="act", dram_addr=out_addr, buf_addr=abuf_pool, rows=1,
                    cols=ph * pw * k),
        Instruction("end"),
    ]
    program = Program(
        config=c, instructions=prog, constants=bytes(const), prog_addr=PROG_ADDR, const_addr=const_addr,
        scratch_addr=scratch_addr, scratch_size=2 * P * N * k,
        inputs=[TensorInfo("input", [1, in_ch, height, width], "NCHW", in_addr, height, width, in_ch, N, s_x, zp_x)],
        outputs=[TensorInfo("output", [1, out_ch, ph, pw], "NCHW", out_addr, ph, pw, out_ch, M, s_y, zp_y)],
        meta={"source": "handwritten conv_relu_pool", "description": "conv3x3 → ReLU → maxpool2x2"},
    )
    info = dict(w=w, bias=bias, s_x=s_x, zp_x=zp_x, s_w=s_w, s_y=s_y, zp_y=zp_y, params=params)
    return program, info
