"""cocotb benches of single components (see components.py), against the emulator's numerics and decoder."""


import cocotb
import numpy as np
from cocotb.triggers import Timer
from tb import TB, config

from tessera.isa import INSTR_BYTES, IsaError, decode
from tessera.numerics import pack_weights, round_shift, wrap32


class MacDriver:
    """Feeds (tag, term index, count, act, wgt) terms; the array cannot stall, so backpressure means gaps."""

    def __init__(self, tb, terms):
        self.tb, self.terms, self.dut = tb, terms, tb.dut

    def drive(self):
        d = self.dut
        if self.terms and not self.tb.stall():
            tag, i, n, a, w = self.terms.pop(0)
            d.mac_valid.value, d.mac_first.value, d.mac_last.value = 1, int(i == 0), int(i == n - 1)
            d.mac_tag.value = tag
            d.mac_act.value = int.from_bytes(a.astype(np.int8).tobytes(), "little")
            d.mac_wgt.value = int.from_bytes(pack_weights(w, 8), "little")
        else:
            d.mac_valid.value = 0

    def sample(self):
        pass


class MacMonitor:
    def __init__(self, tb, sb, rows):
        self.dut, self.sb, self.rows = tb.dut, sb, rows

    def sample(self):
        if int(self.dut.mac_o_valid.value):
            s = int(self.dut.mac_o_sum.value)
            self.sb.got((int(self.dut.mac_o_tag.value), [int(wrap32((s >> (32 * r)) & 0xFFFFFFFF))
                                                           for r in range(self.rows)]))

    def drive(self):
        pass


@cocotb.test()
async def mac_array_sums(dut):
    c = config()
    tb = TB(dut)
    sb = tb.scoreboard("mac sums")
    rng = np.random.default_rng(4)
    terms = []
    for tag in range(12):
        k = int(rng.integers(1, 5))
        ts = [(rng.integers(-128, 128, c.lanes), rng.integers(-128, 128, (c.rows, c.lanes))) for _ in range(k)]
        terms += [(tag, i, k, a, w) for i, (a, w) in enumerate(ts)]
        sb.expect((tag, [int(x) for x in wrap32(sum(w.astype(np.int64) @ a.astype(np.int64) for a, w in ts))]))
    dut.mac_en.value = 1
    tb.add(MacDriver(tb, terms))
    tb.add(MacMonitor(tb, sb, c.rows))
    await tb.reset()
    await tb.until(lambda: not sb.pending, 2000, "every pixel's sums")
    for _ in range(8):          # nothing more may come out
        await tb.step()
    tb.finish()


@cocotb.test()
async def decoder_matches_isa_decode(dut):
    rng = TB(dut).rng
    kinds = set()
    for _ in range(300):
        raw = bytearray(rng.getrandbits(8) for _ in range(INSTR_BYTES))
        raw[0] = (raw[0] & 0xF0) | rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 7, 6, 9])
        if rng.random() < 0.7:
            raw[18:] = bytes(INSTR_BYTES - 18)          # mostly legal reserved bits
        raw = bytes(raw)
        dut.dec_raw.value = int.from_bytes(raw, "little")
        await Timer(1, "ns")
        try:
            ins = decode(raw)
            u = ins.unit
            want = (1, int(u is not None and bool((ins.wait | ins.signal) >> u.value & 1)))
        except IsaError as e:
            want = (0, 1) if e.illegal_opcode else (1, 1)
        got = (int(dut.dec_legal.value), int(dut.dec_bad.value) if int(dut.dec_legal.value) else 1)
        assert got == want, raw.hex()
        kinds.add(want)
    assert kinds == {(0, 1), (1, 1), (1, 0)}


@cocotb.test()
async def rounding_shift_matches_numerics(dut):
    rng = np.random.default_rng(6)
    for _ in range(300):
        s = int(rng.integers(0, 70))
        x = int(rng.integers(-(1 << 61), 1 << 61)) if rng.random() < 0.5 else \
            (int(rng.integers(-999, 999)) << (s % 8)) + ((1 << (s % 8 - 1)) if s % 8 else 0)
        dut.rnd_x.value, dut.rnd_s.value = x, s
        await Timer(1, "ns")
        want = int(round_shift(x, s))
        assert dut.rnd_y.value.to_signed() == want, (x, s)
