"""MacArray: products, adder trees and wrapping int32 accumulation against numpy, with idle gaps."""

import numpy as np
import pytest
from amaranth.sim import Simulator
from tessera.hdl.mac import MacArray

from tessera.arch import NpuConfig
from tessera.numerics import pack_weights, wrap32


def _run(c, terms, gaps, rng, multipliers=None, old=None, add=True):
    """Feeds ``terms`` ([(tag, [(act, wgt), ...])]); ``old`` ({tag: row totals}) is served as a
    one-cycle read port at ``acc_addr``, with ``acc_add`` set if ``add``. Returns [(tag, sums, cycle)]."""
    dut = MacArray(c, multipliers=multipliers)
    M = c.rows
    got = []

    async def acc_port(ctx):
        # A synchronous read port: the word at this cycle's address shows in the next cycle.
        async for _clk, _rst, addr in ctx.tick().sample(dut.acc_addr):
            word = old.get(addr, [0] * M)
            ctx.set(dut.acc_old, sum((int(v) & 0xFFFF_FFFF) << (32 * r) for r, v in enumerate(word)))

    async def bench(ctx):
        if old is not None and add:
            ctx.set(dut.acc_add, 1)
        pixels = list(terms)
        sent = 0
        # The weight word enters wgt_lag cycles after its activation word (MacArray's interface).
        wgts = [0] * dut.wgt_lag
        for cycle in range(10_000):
            wgts.append(0)
            if ctx.get(dut.o_valid):
                got.append((ctx.get(dut.o_tag), [ctx.get(dut.o_sum[32 * r:32 * r + 32]) for r in range(M)], cycle))
            if sent < sum(len(t) for _, t in pixels) and not (gaps and rng.random() < 0.3):
                # Flatten (pixel, term) in order.
                idx = sent
                for tag, ts in pixels:
                    if idx < len(ts):
                        a, w = ts[idx]
                        ctx.set(dut.valid, 1)
                        ctx.set(dut.first, idx == 0)
                        ctx.set(dut.last, idx == len(ts) - 1)
                        ctx.set(dut.tag, tag)
                        ctx.set(dut.act, int.from_bytes(a.astype(np.int8).tobytes(), "little"))
                        wgts[-1] = int.from_bytes(pack_weights(w, c.weight_bits), "little")
                        break
                    idx -= len(ts)
                sent += 1
            else:
                ctx.set(dut.valid, 0)
            ctx.set(dut.wgt, wgts[-1 - dut.wgt_lag])
            await ctx.tick()
            if len(got) == len(pixels):
                break

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    if old is not None:
        sim.add_process(acc_port)
    sim.run()
    return got


def test_mac_array_sums_each_pixel_with_wrapping():
    rng = np.random.default_rng(2)
    for c in (NpuConfig(lanes=4, rows=8, dram_bytes=1 << 20), NpuConfig(lanes=8, rows=8, weight_bits=4,
                                                                          dram_bytes=1 << 20)):
        N, M = c.lanes, c.rows
        lo, hi = -(1 << (c.weight_bits - 1)), 1 << (c.weight_bits - 1)
        pixels = []
        for tag in range(6):
            k = int(rng.integers(1, 5))
            pixels.append((tag, [(rng.integers(-128, 128, N), rng.integers(lo, hi, (M, N))) for _ in range(k)]))
        for gaps in (False, True):
            got = _run(c, pixels, gaps, rng)
            assert [t for t, *_ in got] == [t for t, _ in pixels]
            for (_, sums, _), (_, ts) in zip(got, pixels):
                want = wrap32(sum(w.astype(np.int64) @ a.astype(np.int64) for a, w in ts))
                np.testing.assert_array_equal(wrap32(np.array(sums, np.int64)), want)


@pytest.mark.parametrize("timed, multipliers", [(False, None), (True, None), (True, ("infer", 13, "generic"))])
def test_mac_array_acc_add_starts_each_pixel_from_its_old_total(timed, multipliers):
    # CONV's accumulate: the old ACC word, read at acc_addr a cycle before the first term arrives, is
    # the pixel's starting total (wrapping), every pixel its own; results leave in the same cycles.
    rng = np.random.default_rng(7)
    c = NpuConfig(lanes=4, rows=8, dram_bytes=1 << 20, timing_stages=timed)
    N, M = c.lanes, c.rows
    pixels, old = [], {}
    for tag in range(8):
        k = int(rng.integers(1, 4))
        pixels.append((10 + tag, [(rng.integers(-128, 128, N), rng.integers(-128, 128, (M, N))) for _ in range(k)]))
        old[10 + tag] = rng.integers(-(1 << 31), 1 << 31, M)
    old[17][0] = (1 << 31) - 1                          # wraps when the pixel's sum is positive
    for gaps in (False, True):
        got = _run(c, pixels, gaps, np.random.default_rng(3), multipliers, old=old)
        # Without acc_add the same old words are on the port and must not count.
        plain = _run(c, pixels, gaps, np.random.default_rng(3), multipliers, old=old, add=False)
        assert [(t, cyc) for t, _, cyc in got] == [(t, cyc) for t, _, cyc in plain]
        for (tag, sums, _), (_, psums, _), (_, ts) in zip(got, plain, pixels):
            dot = sum(w.astype(np.int64) @ a.astype(np.int64) for a, w in ts)
            np.testing.assert_array_equal(wrap32(np.array(sums, np.int64)), wrap32(old[tag].astype(np.int64) + dot))
            np.testing.assert_array_equal(wrap32(np.array(psums, np.int64)), wrap32(dot))


@pytest.mark.parametrize("lanes, timed", [(4, False), (4, True), (8, True)])
def test_mac_array_board_products_keep_results_and_latency(lanes, timed):
    # Offset-binary weights on board multipliers (the pure-Amaranth kinds stand in for MULT18X18D and
    # the CCU2C soft multiplier, checked bit by bit in tests/hdl/test_boards.py): every sum and the
    # cycle of every result equal the plain array's, extreme operands included; with timing_stages
    # both arrays take mac_stages more cycles.
    rng = np.random.default_rng(5)
    c = NpuConfig(lanes=lanes, rows=8, dram_bytes=1 << 20, timing_stages=timed)
    N, M = c.lanes, c.rows
    pixels = []
    for tag in range(8):
        k = int(rng.integers(1, 4))
        pixels.append((tag, [(rng.integers(-128, 128, N), rng.integers(-128, 128, (M, N))) for _ in range(k)]))
    pixels.append((8, [(np.full(N, -128), np.full((M, N), -128)), (np.full(N, 127), np.full((M, N), -128))]))
    for gaps in (False, True):
        plain = _run(c, pixels, gaps, np.random.default_rng(1))
        board = _run(c, pixels, gaps, np.random.default_rng(1), multipliers=("infer", 13, "generic"))
        assert [t for t, *_ in board] == [t for t, _ in pixels]
        assert board == plain
        if timed:
            untimed = _run(c.replace(timing_stages=False), pixels, gaps, np.random.default_rng(1))
            extra = sum(c.mac_stages.values())
            assert extra > 0 and [(t, v, cyc + extra) for t, v, cyc in untimed] == plain
        for (_, sums, _), (_, ts) in zip(board, pixels):
            want = wrap32(sum(w.astype(np.int64) @ a.astype(np.int64) for a, w in ts))
            np.testing.assert_array_equal(wrap32(np.array(sums, np.int64)), want)
