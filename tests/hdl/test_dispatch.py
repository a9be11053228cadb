"""Dispatch: when a unit's fault reaches it (err_stages), and what it does meanwhile."""

import pytest
from amaranth.sim import Simulator
from tessera.hdl.dispatch import Dispatch

from tessera.arch import NpuConfig
from tessera.isa import ErrorCode, Instruction, Unit, encode


@pytest.mark.parametrize("timed", [False, True])
def test_dispatch_sees_a_fault_err_stages_cycles_later(timed):
    # A fault stops every start (the core's hold) from the cycle dispatch reports it; with err_stages
    # that is a cycle after the unit raised it, and in between the faulting unit, idle again, is
    # not started (it is still active in dispatch).
    c = NpuConfig(lanes=4, rows=4, dram_bytes=1 << 20, timing_stages=timed)
    dut = Dispatch(c)
    conv = int.from_bytes(encode(Instruction("conv", in_h=1, in_w=1, in_cb=1, out_h=1, out_w=1, k_h=1, k_w=1),
                                 check=False), "little")   # dispatch reads only the opcode and tokens
    log = []
    FAULT = 6

    async def bench(ctx):
        for cycle in range(14):
            # Two CONVs (pc 5, 6) queued for COMPUTE in cycles 0 and 1; the unit faults in cycle 6.
            ctx.set(dut.i_valid, cycle < 2)
            ctx.set(dut.i_unit, Unit.COMPUTE)
            ctx.set(dut.i_instr, conv)
            ctx.set(dut.i_pc, 5 + cycle)
            fault = cycle == FAULT
            ctx.set(dut.u_compute.err, fault)
            ctx.set(dut.u_compute.err_code, ErrorCode.BUFFER_RANGE if fault else 0)
            log.append((cycle, ctx.get(dut.u_compute.start), ctx.get(dut.err), ctx.get(dut.err_code),
                        ctx.get(dut.err_pc), ctx.get(dut.trace_end) >> Unit.COMPUTE.value & 1))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    starts = [cyc for cyc, s, *_ in log if s]
    errs = [(cyc, code, pc, end) for cyc, _, e, code, pc, end in log if e]
    seen = FAULT + c.err_stages
    assert c.err_stages == (1 if timed else 0)
    assert starts[0] < FAULT, starts
    assert errs == [(seen, ErrorCode.BUFFER_RANGE, 5, 1)]
    # The second CONV may start only after dispatch has seen the first one's end.
    assert starts[1:] and starts[1] > seen, starts


@pytest.mark.parametrize("write_stage", [False, True])
def test_head_queue_keeps_order_capacity_and_a_register_head_under_random_traffic(write_stage):
    # Against a plain list: every entry comes out once, in order; the queue holds ``depth`` entries;
    # an entry reaches an empty head two cycles after its write (three with the write stage), and
    # after a read the head is empty for a cycle (dispatch never reads a queue in two cycles in a
    # row, so that costs no start).
    import random

    from tessera.hdl.dispatch import HeadQueue
    depth = 4
    dut = HeadQueue(16, depth, write_stage=write_stage)
    lag = 3 if write_stage else 2
    seen_at = []
    rng = random.Random(7)
    sent, got, model = [], [], []

    async def bench(ctx):
        written_at, last_read = {}, -2
        nxt = 0
        for cycle in range(400):
            w = rng.random() < 0.5
            r = ctx.get(dut.r_rdy) and rng.random() < 0.6
            assert ctx.get(dut.r_level) == len(model)
            assert ctx.get(dut.w_rdy) == (len(model) < depth)
            if ctx.get(dut.r_rdy):
                assert cycle - last_read >= 2, "a head full in the cycle after a read"
                assert cycle - written_at[model[0]] >= lag
                seen_at.append(cycle - written_at[model[0]])
                assert ctx.get(dut.r_data) == model[0]
            ctx.set(dut.w_en, w)
            ctx.set(dut.w_data, nxt)
            if not w and rng.random() < 0.5:
                # Data offered without a write (another queue's entry, in dispatch): a stray load would
                # show in the order.
                ctx.set(dut.w_data, 0xFFFF)
            ctx.set(dut.r_en, r)
            if r:
                got.append(model.pop(0))
                last_read = cycle
            if w and len(model) < depth + (1 if r else 0) and ctx.get(dut.w_rdy):
                model.append(nxt)
                sent.append(nxt)
                written_at[nxt] = cycle
                nxt += 1
            await ctx.tick()
        for _ in range(3 * depth):
            ctx.set(dut.w_en, 0)
            ctx.set(dut.r_en, ctx.get(dut.r_rdy))
            if ctx.get(dut.r_rdy):
                assert ctx.get(dut.r_data) == model[0]
                got.append(model.pop(0))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got == sent and not model and len(sent) > 100
    # The lag is reached, not only bounded: an entry written to an empty queue is at the head then.
    assert min(seen_at) == lag
