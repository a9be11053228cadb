"""The cycle model's ordering rules: overlap where tokens allow it, serialization where they demand it."""

import pytest

from tessera.isa import Instruction
from tessera.sim.cyclemodel import CycleModel, Timing

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


def test_loads_and_stores_share_the_memory_port():
    m = CycleModel(SMALL, Timing())
    store = Instruction("store", buf="act", dram_addr=0x8000, rows=1, cols=64)
    r = m.run([_load(0x1000), store, Instruction("end")])
    load, st = r.instructions
    beats = 64 * SMALL.act_word_bytes // SMALL.bus_bytes
    # Independent units, but one port: both transfers' beats follow each other.
    assert min(load.start, st.start) + Timing().dma_setup + 2 * beats <= max(load.end, st.end)


def test_deadlocking_program_is_reported():
    m = CycleModel(SMALL, Timing())
    with pytest.raises(RuntimeError, match="deadlock"):
        m.run([Instruction("sync", unit="compute", wait=["load"]), Instruction("end")])


def test_work_counts_mac_issues_per_conv():
    m = CycleModel(SMALL, Timing())
    occupied, beats, macs = m.work(_conv(ob_count=2))
    assert beats == 0 and macs == 2 * 64 * 9 * SMALL.macs_per_cycle
    assert occupied >= 2 * 64 * 9
