"""cocotb bench of hdl/post.py (PostUnit: EPILOGUE and POOL) against the emulator.

The ACT, ACC and PARAM buffers are Python models filled with random data
(mirrored in the emulator). Each ACT word an instruction writes is matched by
address against the emulator's result of the same instruction. The unit has no
handshakes (fixed-latency pipelines), so under ``TB_BACKPRESSURE`` only the
instruction starts come at random gaps.
"""


import cocotb
import numpy as np
from tb import BufferBench, Ports, Unit, golden, words_of

from tessera.isa import Buffer, ErrorCode, Instruction, PoolMode


class PostBench(BufferBench):
    def __init__(self, dut):
        super().__init__(dut)
        # Inputs and residuals live in the upper half of ACT, outputs in the lower half: no instruction
        # reads what it writes, so the order of its writes cannot matter.
        self.half = self.c.abuf_words // 2
        self.fill(Buffer.ACT, -128, 128)
        self.fill(Buffer.ACC, -(1 << 22), 1 << 22)
        self.fill_params()
        dut = Ports(dut, "post_")
        self.model(Buffer.ACT, reads=[(dut.act_rd__addr, dut.act_rd__data)],
                   writes=[(dut.act_wr__addr, dut.act_wr__data, dut.act_wr__en)])
        self.model(Buffer.ACC, reads=[(dut.acc_rd__addr, dut.acc_rd__data)])
        self.model(Buffer.PARAM, reads=[(dut.prm_rd__addr, dut.prm_rd__data)])
        self.unit = self.tb.add(Unit(self.tb, "post_ctl"))

    def fill_params(self):
        """Per channel: any int32 bias, a multiplier in the compiler's range, shifts mostly in a useful range."""
        p = self.emu.buffers[Buffer.PARAM]
        r = self.np_rng
        p[..., 0] = r.integers(-(1 << 31), 1 << 31, p.shape[:-1]) >> r.integers(0, 16, p.shape[:-1])
        p[..., 1] = r.integers(1 << 29, 1 << 31, p.shape[:-1])
        # Shifts are taken modulo 64, and above 62 act as 62.
        p[..., 2] = r.choice([0, 1, 31, 62, 63, 64 + 33] + list(range(28, 40)) * 4, p.shape[:-1])

    def set(self, buf: Buffer, values) -> None:
        """Overwrite a buffer (emulator and RTL model alike)."""
        self.emu.buffers[buf][...] = values
        self.models[buf].words[:] = words_of(self.c, buf, self.emu.buffers[buf])

    async def run(self, ins: Instruction, outs):
        want = golden(self.emu, ins, self.prog)
        self.writes.name = f"ACT writes of {ins}"
        if want is None:
            self.expect(Buffer.ACT, outs)
        got = await self.unit.execute(ins)
        assert got == (0 if want is None else want.value), f"{ins}: RTL {ErrorCode(got).name}, emulator {want}"
        self.check_buffers(str(ins))
        return want

    def random_epilogue(self):
        c, rng = self.c, self.tb.rng
        k = c.words_per_block
        ob = rng.randint(1, 2)
        P = rng.randint(1, 6)
        stride = ob * k + rng.choice([0, 0, 1, 3])
        res_stride = ob * k + rng.choice([0, 0, 2])
        zp_out = rng.randint(-128, 127)
        lo = rng.choice([-128, zp_out, rng.randint(-128, 127)])
        hi = rng.choice([127, rng.randint(lo, 127), rng.randint(-128, 127)])       # sometimes lo > hi
        ins = Instruction("epilogue", acc_addr=rng.randint(0, c.accbuf_words - ob * P),
                          pixels=P, ob_count=ob, param_addr=rng.randint(0, c.pbuf_words - ob),
                          out_addr=rng.randint(0, self.half - (P - 1) * stride - ob * k), out_stride=stride,
                          zp_out=zp_out, out_min=lo, out_max=hi, residual=rng.randint(0, 1),
                          res_addr=self.half + rng.randint(0, self.half - (P - 1) * res_stride - ob * k),
                          res_stride=res_stride, zp_mid=rng.randint(-128, 127), zp_res=rng.randint(-128, 127),
                          res_mult_a=rng.randint(1 << 28, (1 << 31) - 1), res_mult_b=rng.randint(0, (1 << 31) - 1),
                          res_shift=rng.choice([0, 1, 47, 48] + list(range(28, 34)) * 3))
        outs = [ins.out_addr + p * stride + b * k + j for b in range(ob) for p in range(P) for j in range(k)]
        return ins, outs

    def random_pool(self):
        rng = self.tb.rng
        cb = rng.randint(1, 2)
        kh, kw = rng.randint(1, 3), rng.randint(1, 3)
        sh, sw = rng.randint(1, 3), rng.randint(1, 2)
        pt, pl = rng.randint(0, kh - 1), rng.randint(0, kw - 1)
        while True:
            ih, iw = rng.randint(1, 6), rng.randint(1, 5)
            oh = max(1, (ih + 2 * pt - kh) // sh + 1 + rng.choice([0, 0, 1]))       # a window may hang out
            ow = max(1, (iw + 2 * pl - kw) // sw + 1)
            if ih * iw * cb <= self.half and oh * ow * cb <= self.half:
                break
        ins = Instruction("pool", mode=rng.choice(list(PoolMode)),
                          in_addr=self.half + rng.randint(0, self.half - ih * iw * cb), in_h=ih, in_w=iw, cb=cb,
                          out_addr=rng.randint(0, self.half - oh * ow * cb), out_h=oh, out_w=ow, k_h=kh, k_w=kw,
                          stride_h=sh, stride_w=sw, pad_t=pt, pad_l=pl, zp_in=rng.randint(-128, 127),
                          zp_out=rng.randint(-128, 127), mult=rng.randint(1 << 29, (1 << 31) - 1),
                          shift=rng.randint(29, 35))
        return ins, [ins.out_addr + i for i in range(oh * ow * cb)]


@cocotb.test()
async def epilogue_matches_emulator(dut):
    b = PostBench(dut)
    await b.tb.reset()
    kinds = set()
    for i in range(30):
        if i % 10 == 9:
            b.fill(Buffer.ACC, -(1 << 31), 1 << 31)        # acc + bias wraps
        ins, outs = b.random_epilogue()
        kinds.add((ins.residual, ins.ob_count, ins.out_stride == ins.ob_count * b.c.words_per_block))
        await b.run(ins, outs)
    assert len(kinds) >= 6, kinds
    b.tb.finish()


@cocotb.test()
async def pool_matches_emulator(dut):
    b = PostBench(dut)
    await b.tb.reset()
    modes = set()
    for _ in range(24):
        ins, outs = b.random_pool()
        modes.add(ins.mode)
        await b.run(ins, outs)
    assert modes == set(PoolMode)
    b.tb.finish()


@cocotb.test()
async def post_range_faults_write_nothing(dut):
    b = PostBench(dut)
    c = b.c
    await b.tb.reset()
    epi, _ = b.random_epilogue()
    pool, _ = b.random_pool()
    faulty = [epi.replace(acc_addr=c.accbuf_words - epi.pixels * epi.ob_count + 1),
              epi.replace(param_addr=c.pbuf_words - epi.ob_count + 1),
              epi.replace(out_addr=c.abuf_words - 1),
              epi.replace(residual=1, res_addr=c.abuf_words - 1),
              pool.replace(in_addr=c.abuf_words - 1),
              pool.replace(out_addr=c.abuf_words - 1)]
    for ins in faulty:
        assert await b.run(ins, []) == ErrorCode.BUFFER_RANGE, ins
        ok, outs = b.random_pool()
        await b.run(ok, outs)                           # and the unit works again
    b.tb.finish()


@cocotb.test()
async def post_shifts_wider_than_the_sum_round_like_numerics(dut):
    """round_shift(x, s) of a negative x with s beyond x's width is 0 (or -1 only below -2**(s-1)).

    The residual sum is 48 bits wide and the AVG sum times mult 56: shifts up to 62 are legal.
    """
    b = PostBench(dut)
    await b.tb.reset()
    for i in range(12):
        ins, outs = b.random_epilogue()
        # a - zp_mid < 0 and r - zp_res < 0: a negative residual sum.
        ins = ins.replace(residual=1, zp_mid=127, zp_res=127, res_shift=49 + i, out_min=-128, out_max=127)
        await b.run(ins, outs)
    for i in range(6):
        ins, outs = b.random_pool()
        ins = ins.replace(mode="avg", zp_in=127, shift=57 + i)
        await b.run(ins, outs)
    b.tb.finish()


def _exact_rule(v, mult, shift):
    """The requantization without significant-bit rounding (the rule before round_sig)."""
    from tessera.numerics import round_shift
    return round_shift(np.asarray(v, np.int64) * mult, shift)


@cocotb.test()
async def requantization_rounds_like_float32_near_ties(dut):
    """Near-ties where round_sig decides: the product (small accumulators, a multiplier one above a power of
    two) and the accumulator itself (above 2**24, a few units off an exact tie). The exact product would
    round most of these away from the tie; float32 arithmetic and docs/numerics.md land on it."""
    from tessera.numerics import requantize
    b = PostBench(dut)
    await b.tb.reset()
    r = b.np_rng
    acc_shape = b.emu.buffers[Buffer.ACC].shape
    cases = [((1 << 30) + 1, 31, r.integers(-250, 251, acc_shape)),
             (1 << 30, 54, (2 * r.integers(-120, 120, acc_shape) + 1) * (1 << 23) + r.integers(-63, 64, acc_shape))]
    for mult, shift, acc in cases:
        prm = b.emu.buffers[Buffer.PARAM].copy()
        prm[..., 0], prm[..., 1], prm[..., 2] = 0, mult, shift
        b.set(Buffer.PARAM, prm)
        b.set(Buffer.ACC, acc)
        # The bench can fail: the two rules disagree on a good part of these accumulators.
        differ = requantize(acc, 0, mult, shift, 0, -(1 << 40), 1 << 40) != _exact_rule(acc, mult, shift)
        assert differ.mean() > 0.2, differ.mean()
        for _ in range(8):
            ins, outs = b.random_epilogue()
            await b.run(ins, outs)
    for _ in range(8):
        ins, outs = b.random_pool()
        # Odd window sums: sum * (2**29 + 1) / 2**30 is just above a tie, whose float32 product is the tie.
        await b.run(ins.replace(mode="avg", mult=(1 << 29) + 1, shift=30), outs)
    b.tb.finish()


def _fl32_mults(rng):
    """Significands of float32 scales (a power of two among them: its products are exact), and wider values."""
    return [rng.randint(1 << 23, (1 << 24) - 1) for _ in range(6)] + [1 << 23, (1 << 24) - 1,
                                                                       rng.randint(1 << 24, (1 << 31) - 1)]


@cocotb.test()
async def pool_fl32_matches_emulator(dut):
    """POOL's fl32 average, unfused and fused: on configs built with it, the float32 tie decisions; elsewhere a
    BAD_FIELD fault."""
    from tessera.numerics import pool_avg_fl32, round_shift
    b = PostBench(dut)
    await b.tb.reset()
    rng = b.tb.rng
    if not b.c.pool_fl32:
        for _ in range(3):
            ins, _ = b.random_pool()
            assert await b.run(ins.replace(mode="avg", fl32=1), []) == ErrorCode.BAD_FIELD, ins
            ok, outs = b.random_pool()
            await b.run(ok, outs)
        b.tb.finish()
        return
    # The bench can fail: on random 2x2 windows these scales move a good part of the ties off the
    # fixed-point answer.
    k = b.np_rng.integers(-255, 256, (4, 4096))
    for mult in _fl32_mults(rng)[:6]:
        moved = pool_avg_fl32(k, mult, 2) != round_shift(k.sum(axis=0), 2)
        assert moved.mean() > 0.02, (mult, moved.mean())
        zp = rng.randint(-20, 20)           # larger zero points hide more of the offset in float32(v + zp)
        moved = pool_avg_fl32(k, mult, 2, zp) != round_shift(k.sum(axis=0) + (zp << 2), 2) - zp
        assert moved.mean() > 0.02, (mult, zp, moved.mean())
    for i, mult in enumerate(_fl32_mults(rng) * 4):
        ins, outs = b.random_pool()
        shift = rng.choice([0, 1, 2, 2, 2, 3, (ins.k_h * ins.k_w).bit_length() - 1, 16, 17, 63])
        # Unfused and fused (the zero point onnxruntime adds in float: int8, uint8, or any field value).
        fused = dict(fl32_zp=1, zp_ort=rng.choice([ins.zp_out, ins.zp_out + 128, rng.randint(-256, 255)])) \
            if i % 2 else {}
        await b.run(ins.replace(mode="avg", fl32=1, mult=mult, shift=shift, **fused), outs)
        # MAX ignores the flag.
        ins, outs = b.random_pool()
        await b.run(ins.replace(mode="max", fl32=1, mult=mult), outs)
    b.tb.finish()
