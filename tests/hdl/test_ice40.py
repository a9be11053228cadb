"""The iCEBreaker's on-chip external memory (hdl/boards/ice40.py) under Amaranth's Python simulator."""

import numpy as np
from amaranth.sim import Simulator

from tessera.arch import PRESETS
from tessera.hdl.boards.ice40 import OnChipMemory

CONFIG = PRESETS["icebreaker"].replace(name="ice-mem", dram_bytes=1024)


def test_on_chip_memory_serves_random_reads_and_writes_in_order():
    # Reads and writes offered at random, often in the same cycle: every read returns, in request order and
    # with its id, the word as the writes accepted before it left it; nothing is left unanswered.
    dut = OnChipMemory(CONFIG)
    rng = np.random.default_rng(1)
    words = CONFIG.dram_bytes // 4
    model = np.zeros(words, np.uint64)
    expected, got = [], []

    async def master(ctx):
        bus = dut.bus
        for _ in range(600):
            rd, wr = rng.random() < 0.6, rng.random() < 0.6
            ra, wa = int(rng.integers(0, words)), int(rng.integers(0, words))
            wd, strb, rid = int(rng.integers(0, 1 << 32)), int(rng.integers(0, 16)), int(rng.integers(0, 2))
            ctx.set(bus.rd_req.valid, rd)
            ctx.set(bus.rd_req.payload.addr, ra)
            ctx.set(bus.rd_req.payload.id, rid)
            ctx.set(bus.wr_req.valid, wr)
            ctx.set(bus.wr_req.payload.addr, wa)
            ctx.set(bus.wr_req.payload.data, wd)
            ctx.set(bus.wr_req.payload.strb, strb)
            rd_ok = rd and ctx.get(bus.rd_req.ready)
            wr_ok = wr and ctx.get(bus.wr_req.ready)
            assert not (rd_ok and wr_ok), "one access a cycle: the RAM has one port"
            if rd_ok:
                expected.append((int(model[ra]), rid))
            if wr_ok:
                old = int(model[wa])
                mask = sum(0xFF << (8 * i) for i in range(4) if strb >> i & 1)
                model[wa] = (old & ~mask) | (wd & mask)
            await ctx.tick()
        ctx.set(bus.rd_req.valid, 0)
        ctx.set(bus.wr_req.valid, 0)
        await ctx.tick().repeat(4)

    async def monitor(ctx):
        while True:
            await ctx.tick()
            if ctx.get(dut.bus.rd_resp.valid):
                got.append((ctx.get(dut.bus.rd_resp.payload.data), ctx.get(dut.bus.rd_resp.payload.id)))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(master)
    sim.add_testbench(monitor, background=True)
    sim.run()
    assert len(expected) > 100 and got == expected
