"""The cycle model's ordering rules: overlap where tokens allow it, serialization where they demand it."""

import pytest
from tessera.sim.cyclemodel import CycleModel, Timing

from tessera.isa import Instruction

from ..conftest import SMALL


def _conv(**kw):
    base = dict(in_h=8, in_w=8, in_cb=1, out_h=8, out_w=8, k_h=3, k_w=3, stride_h=1, stride_w=1, dil_h=1, dil_w=1,
                pad_t=1, pad_l=1, ob_count=1)
    return Instruction("conv", **{**base, **kw})


def _load(addr, **kw):
    return Instruction("load", buf="act", dram_addr=addr, rows=1, cols=64, **kw)


def test_double_buffered_load_overlaps_compute():
    m = CycleModel(SMALL, Timing())
    prog = [_load(0x1000, signal=["compute"]), _load(0x2000, buf_addr=64, signal=["compute"]),
            _conv(wait=["load"]), _conv(in_addr=64, wait=["load"]), Instruction("end")]
    r = m.run(prog)
    load2, conv1 = r.instructions[1], r.instructions[2]
    assert load2.start < conv1.end, "the second tile's load must run while the first tile computes"
    conv_cycles = 8 * 8 * 9
    assert r.cycles < 2 * conv_cycles + load2.end  # strictly less than fully serial


def test_token_serializes_consumer_after_producer():
    m = CycleModel(SMALL, Timing())
    r = m.run([_load(0x1000, signal=["compute"]), _conv(wait=["load"]), Instruction("end")])
    load, conv = r.instructions
    assert conv.start >= load.end
    assert r.macs == 8 * 8 * 9 * SMALL.macs_per_cycle
    assert 0 < r.utilization(SMALL) < 1


def test_store_overlapping_a_load_loses_port_cycles():
    # One memory port: a STORE running beside a LOAD gives up cycles to its read requests, and both end later.
    m = CycleModel(SMALL)
    store = Instruction("store", buf="act", dram_addr=0x8000, rows=1, cols=64)
    alone_load = m.run([_load(0x1000), Instruction("end")]).instructions[0]
    alone_store = m.run([store, Instruction("end")]).instructions[0]
    load, st = m.run([_load(0x1000), store, Instruction("end")]).instructions
    assert st.end - st.start > alone_store.end - alone_store.start
    assert load.end - load.start > alone_load.end - alone_load.start


def test_load_rate_is_limited_by_outstanding_reads():
    # hdl/dma.py keeps mem_outstanding reads in flight: beats arrive in groups of that many per round trip.
    c = SMALL.replace(mem_latency=20, mem_outstanding=4)
    m = CycleModel(c)
    words = 400 * c.bus_bytes // c.act_word_bytes
    occupied, beats, _ = m.work(_load(0x1000).replace(cols=words))
    assert beats == words                       # ACT words narrower than the bus: one request each
    assert occupied >= words / 4 * 21


def test_deadlocking_program_is_reported():
    m = CycleModel(SMALL, Timing())
    with pytest.raises(RuntimeError, match="deadlock"):
        m.run([Instruction("sync", unit="compute", wait=["load"]), Instruction("end")])


def test_work_counts_mac_issues_per_conv():
    m = CycleModel(SMALL, Timing())
    occupied, issues, macs = m.work(_conv(ob_count=2))
    assert issues == 2 * 64 * 9 and macs == issues * SMALL.macs_per_cycle
    assert occupied > issues
