"""cocotb bench of hdl/conv.py (ConvUnit: the implicit-im2col address generator around the MAC array).

ACT, WGT and ACC are Python buffer models filled with random data (mirrored in
the emulator). Every ACC word a CONV writes is matched by address against the
emulator's result of the same instruction, and the number of MAC-array cycles
(``mac``) against the emulator's MAC count. The unit has no handshakes, so
under ``TB_BACKPRESSURE`` only the instruction starts come at random gaps.
"""

import cocotb
from tb import BufferBench, Ports, Unit, golden

from tessera.isa import Buffer, ErrorCode, Instruction


class MacCounter:
    """Counts cycles with the unit's ``mac`` output high."""

    def __init__(self, sig):
        self.sig, self.count = sig, 0

    def drive(self):
        pass

    def sample(self):
        self.count += int(self.sig.value)


class ConvBench(BufferBench):
    def __init__(self, dut):
        super().__init__(dut)
        self.fill(Buffer.ACT, -128, 128)
        self.fill(Buffer.WGT, -128, 128)
        self.fill(Buffer.ACC, -(1 << 31), 1 << 31)
        dut = Ports(dut, "conv_")
        self.model(Buffer.ACT, reads=[(dut.act_rd__addr, dut.act_rd__data)])
        self.model(Buffer.WGT, reads=[(dut.wgt_rd__addr, dut.wgt_rd__data)])
        self.model(Buffer.ACC, reads=[(dut.acc_rd__addr, dut.acc_rd__data)],
                   writes=[(dut.acc_wr__addr, dut.acc_wr__data, dut.acc_wr__en)])
        self.macs = self.tb.add(MacCounter(dut.mac))
        self.unit = self.tb.add(Unit(self.tb, "conv_ctl"))

    async def run(self, ins: Instruction):
        c = self.c
        cycles0 = self.macs.count
        want = golden(self.emu, ins, self.prog)
        self.writes.name = f"ACC writes of {ins}"
        P = ins.out_h * ins.out_w
        if want is None:
            self.expect(Buffer.ACC, range(ins.acc_addr, ins.acc_addr + ins.ob_count * P))
        got = await self.unit.execute(ins)
        assert got == (0 if want is None else want.value), f"{ins}: RTL {ErrorCode(got).name}, emulator {want}"
        self.check_buffers(str(ins))
        if want is None:
            # The emulator's statistics cover this one run.
            assert (self.macs.count - cycles0) * c.macs_per_cycle == self.emu.stats.macs, \
                f"{ins}: {self.macs.count - cycles0} MAC cycles, emulator {self.emu.stats.macs} MACs"
        else:
            assert self.macs.count == cycles0, f"{ins}: a faulting CONV used the MAC array"
        return want

    def random_conv(self):
        c, rng = self.c, self.tb.rng
        while True:
            in_cb, ob = rng.randint(1, 2), rng.randint(1, 2)
            kh, kw = rng.randint(1, 3), rng.randint(1, 3)
            dh, dw = rng.choice([1, 1, 2]), rng.choice([1, 1, 3])
            sh, sw = rng.choice([1, 1, 2]), rng.choice([1, 2, 3])
            ph, pw = rng.randint(0, 2), rng.randint(0, 2)
            ih, iw = rng.randint(1, 6), rng.randint(1, 6)
            oh = (ih + 2 * ph - dh * (kh - 1) - 1) // sh + 1
            ow = (iw + 2 * pw - dw * (kw - 1) - 1) // sw + 1
            if oh < 1 or ow < 1:
                continue
            oh += rng.choice([0, 0, 1])          # a last row of windows that reads only padding below
            nin, nw, nacc = ih * iw * in_cb, ob * kh * kw * in_cb, ob * oh * ow
            if nin <= c.abuf_words and nw <= c.wbuf_words and nacc <= c.accbuf_words:
                break
        return Instruction("conv", in_addr=rng.randint(0, c.abuf_words - nin), in_h=ih, in_w=iw, in_cb=in_cb,
                           out_h=oh, out_w=ow, k_h=kh, k_w=kw, stride_h=sh, stride_w=sw, dil_h=dh, dil_w=dw,
                           pad_t=ph, pad_l=pw, pad_value=rng.randint(-128, 127),
                           w_addr=rng.randint(0, c.wbuf_words - nw), acc_addr=rng.randint(0, c.accbuf_words - nacc),
                           ob_count=ob, accumulate=rng.randint(0, 1))


@cocotb.test()
async def conv_matches_emulator(dut):
    b = ConvBench(dut)
    await b.tb.reset()
    kinds = set()
    for _ in range(30):
        ins = b.random_conv()
        kinds.add((ins.accumulate, ins.k_h * ins.k_w > 1, ins.pad_t + ins.pad_l > 0, ins.in_cb, ins.ob_count))
        await b.run(ins)
    assert len(kinds) >= 8, kinds
    b.tb.finish()


@cocotb.test()
async def conv_accumulates_back_to_back(dut):
    """The same CONV accumulating onto its own result: each pass reads what the previous one wrote."""
    b = ConvBench(dut)
    await b.tb.reset()
    ins = b.random_conv().replace(accumulate=1)
    for _ in range(4):
        await b.run(ins)
    b.tb.finish()


@cocotb.test()
async def conv_range_faults_write_nothing(dut):
    b = ConvBench(dut)
    c = b.c
    await b.tb.reset()
    ins = b.random_conv()
    for bad in (ins.replace(in_addr=c.abuf_words - 1, in_h=2),
                ins.replace(w_addr=c.wbuf_words - 1, k_h=2),
                ins.replace(acc_addr=c.accbuf_words - 1, out_h=2)):
        assert await b.run(bad) == ErrorCode.BUFFER_RANGE, bad
        await b.run(b.random_conv())             # and the unit works again
    b.tb.finish()
