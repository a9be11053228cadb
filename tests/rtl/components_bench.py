"""cocotb benches of single components (see components.py), against the emulator's numerics and decoder."""

import os
import random

import cocotb
import numpy as np
from cocotb.triggers import RisingEdge, Timer

from tessera.isa import INSTR_BYTES, IsaError, decode
from tessera.numerics import pack_weights, round_shift, wrap32

LANES, ROWS = int(os.environ["TB_LANES"]), int(os.environ["TB_ROWS"])


class TB:
    """Shared bench: reset, the in-model clock, and a scoreboard that must end empty."""

    def __init__(self, dut):
        self.dut = dut
        self.expected = []

    async def reset(self):
        self.dut.rst.value = 1
        await RisingEdge(self.dut.clk)
        await RisingEdge(self.dut.clk)
        self.dut.rst.value = 0

    def expect(self, item):
        self.expected.append(item)

    def check(self, item):
        assert self.expected, f"unexpected output {item}"
        want = self.expected.pop(0)
        assert item == want, f"got {item}, expected {want}"

    def done(self):
        assert not self.expected, f"{len(self.expected)} expected outputs never came"


async def mac_run(dut, gaps):
    tb = TB(dut)
    dut.mac_en.value = 1
    await tb.reset()
    rng = np.random.default_rng(4)
    pixels = []
    for tag in range(8):
        k = int(rng.integers(1, 5))
        pixels.append((tag, [(rng.integers(-128, 128, LANES), rng.integers(-128, 128, (ROWS, LANES))) for _ in range(k)]))
        total = sum(w.astype(np.int64) @ a.astype(np.int64) for a, w in pixels[-1][1])
        tb.expect((tag, [int(x) for x in wrap32(total)]))
    terms = [(tag, i, len(ts), a, w) for tag, ts in pixels for i, (a, w) in enumerate(ts)]
    for cycle in range(2000):
        if terms and not (gaps and random.random() < 0.4):
            tag, i, n, a, w = terms.pop(0)
            dut.mac_valid.value, dut.mac_first.value, dut.mac_last.value = 1, int(i == 0), int(i == n - 1)
            dut.mac_tag.value = tag
            dut.mac_act.value = int.from_bytes(a.astype(np.int8).tobytes(), "little")
            dut.mac_wgt.value = int.from_bytes(pack_weights(w, 8), "little")
        else:
            dut.mac_valid.value = 0
        await RisingEdge(dut.clk)
        await Timer(1, "ns")
        if int(dut.mac_o_valid.value):
            s = int(dut.mac_o_sum.value)
            sums = [int(wrap32((s >> (32 * r)) & 0xFFFFFFFF)) for r in range(ROWS)]
            tb.check((int(dut.mac_o_tag.value), sums))
        if not terms and not tb.expected:
            break
    tb.done()


@cocotb.test()
async def mac_array_sums(dut):
    await mac_run(dut, gaps=False)


@cocotb.test()
async def mac_array_sums_with_gaps(dut):
    await mac_run(dut, gaps=True)


@cocotb.test()
async def decoder_matches_isa_decode(dut):
    rng = random.Random(5)
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
