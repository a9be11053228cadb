"""Run the whole NPU under Amaranth's Python simulator with a Python memory model (debugging, small tests)."""

from collections import deque

import numpy as np
from amaranth.sim import Simulator
from tessera.hdl.csr import CTRL_RESET, CTRL_START
from tessera.hdl.npu import Npu

from tessera.isa import Csr, Status


def run_npu(config, dram: np.ndarray, prog_addr: int, *, max_cycles=200_000, latency=None, backpressure=0.0,
            watchdog=0, seed=0, vcd=None, trace=None, stall_after=None, reset_at=()):
    """Run programs; ``dram`` (uint8, dram_bytes) is updated in place. Returns the CSRs by name.

    From cycle ``stall_after`` on the memory accepts no request (a hung memory, for the watchdog).
    ``reset_at``: cycles, counted from each start, at which the run is stopped by a soft reset (CTRL)
    and started again once the memory has answered the reads in flight; the last run goes to its end.
    """
    c = config
    B = c.bus_bytes
    lat = c.mem_latency if latency is None else latency
    dut = Npu(c)
    rng = np.random.default_rng(seed)
    out = {}

    async def bench(ctx):
        pipe = deque()
        cyc = 0

        async def csr_write(reg, v):
            ctx.set(dut.csr.addr, reg)
            ctx.set(dut.csr.wdata, v)
            ctx.set(dut.csr.we, 1)
            await step()
            ctx.set(dut.csr.we, 0)

        async def step():
            nonlocal cyc
            # Memory model: respond, offer ready, sample handshakes, then clock.
            if pipe and pipe[0][0] <= cyc:
                _, data, rid = pipe.popleft()
                ctx.set(dut.mem.rd_resp.valid, 1)
                ctx.set(dut.mem.rd_resp.payload, {"data": data, "id": rid})
            else:
                ctx.set(dut.mem.rd_resp.valid, 0)
            hung = stall_after is not None and cyc >= stall_after
            rdy = 1 if rng.random() >= backpressure and not hung else 0
            ctx.set(dut.mem.rd_req.ready, rdy)
            ctx.set(dut.mem.wr_req.ready, 1 if rng.random() >= backpressure and not hung else 0)
            if ctx.get(dut.mem.rd_req.valid) and rdy:
                p = ctx.get(dut.mem.rd_req.payload)
                a = int(p.addr) * B
                data = int.from_bytes(dram[a:a + B].tobytes(), "little")
                pipe.append((cyc + lat, data, int(p.id)))
            if ctx.get(dut.mem.wr_req.valid) and ctx.get(dut.mem.wr_req.ready):
                p = ctx.get(dut.mem.wr_req.payload)
                a = int(p.addr) * B
                d = int(p.data).to_bytes(B, "little")
                for i in range(B):
                    if int(p.strb) >> i & 1:
                        dram[a + i] = d[i]
            if trace:
                trace(ctx, dut, cyc)
            await ctx.tick()
            cyc += 1

        await csr_write(Csr.PROG_ADDR.value, prog_addr)
        await csr_write(Csr.WATCHDOG.value, watchdog)
        for stop in [*reset_at, None]:
            await csr_write(Csr.CTRL.value, CTRL_START)
            for i in range(max_cycles):
                if i == stop:
                    await csr_write(Csr.CTRL.value, CTRL_RESET)
                    ctx.set(dut.csr.addr, Csr.STATUS.value)
                    for _ in range(max_cycles):
                        if not ctx.get(dut.csr.rdata) & Status.BUSY.value:
                            break
                        await step()
                    break
                await step()
                if ctx.get(dut.done):
                    break
        for r in Csr:
            ctx.set(dut.csr.addr, r.value)
            out[r.name] = ctx.get(dut.csr.rdata)
        out["sim_cycles"] = cyc

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()
    return out
