"""The RTL instruction trace (``trace=True``): every executed instruction once, in a plausible order."""

from collections import defaultdict
from itertools import pairwise

import numpy as np
import pytest
from tessera.host.runtime import EmulatorBackend
from tessera.sim.handwritten import conv_relu_pool

from tessera.isa import INSTR_BYTES, Opcode, mask_units

from .test_npu import CONFIG


@pytest.fixture(scope="module")
def sim():
    from tessera.sim.rtl import RtlSim
    with RtlSim(CONFIG) as s:
        yield s


def executed(prog):
    """The instructions a run executes: everything before the first END."""
    out = []
    for ins in prog.instructions:
        if ins.op == Opcode.END:
            break
        out.append(ins)
    return out


def token_pairs(instrs):
    """(producer, consumer) indices: the k-th wait of unit d on unit s takes the k-th token s signalled to d."""
    signals, waits = defaultdict(list), defaultdict(list)
    for i, ins in enumerate(instrs):
        for d in mask_units(ins.signal):
            signals[(ins.unit, d)].append(i)
        for s in mask_units(ins.wait):
            waits[(s, ins.unit)].append(i)
    return [(p, c) for key, cs in waits.items() for p, c in zip(signals[key], cs)]


def run_traced(sim, prog, *, backpressure=0.0, trace=True, seed=5):
    """One run on the RTL (checked against the emulator); returns the backend and its RunResult."""
    from tessera.sim.rtl import RtlBackend
    t = prog.inputs[0]
    img = np.random.default_rng(seed).integers(-128, 128, size=t.nbytes, dtype=np.int8).tobytes()
    emu = EmulatorBackend(prog)
    rtl = RtlBackend(prog, sim=sim, backpressure=backpressure, trace=trace)
    for be in (emu, rtl):
        be.write(t.addr, img)
    emu.execute()
    result = rtl.execute()
    o = prog.outputs[0]
    assert rtl.read(o.addr, o.nbytes) == emu.read(o.addr, o.nbytes)
    return rtl, result


@pytest.mark.parametrize("backpressure", [0.0, 0.5])
def test_trace_lists_every_instruction_once(sim, backpressure):
    prog, _ = conv_relu_pool(CONFIG, seed=3)
    instrs = executed(prog)
    rtl, result = run_traced(sim, prog, backpressure=backpressure)
    trace = rtl.trace
    assert sorted(e.index for e in trace) == list(range(len(instrs)))
    by_index = {e.index: e for e in trace}
    for i, ins in enumerate(instrs):
        e = by_index[i]
        assert e.unit == ins.unit and e.pc == prog.prog_addr + INSTR_BYTES * i
        assert 0 <= e.start < e.end <= result.cycles
    # A unit runs its queue in program order, one instruction at a time.
    for u in {ins.unit for ins in instrs}:
        mine = [by_index[i] for i, ins in enumerate(instrs) if ins.unit == u]
        for a, b in pairwise(mine):
            assert a.end <= b.start, (a, b)
    # A waiting instruction starts no earlier than the end of the one whose token it takes.
    pairs = token_pairs(instrs)
    assert pairs, "the program should use tokens"
    for p, c in pairs:
        assert by_index[p].end <= by_index[c].start, (by_index[p], by_index[c])


def test_trace_does_not_change_the_run(sim):
    prog, _ = conv_relu_pool(CONFIG, seed=4)
    traced, r1 = run_traced(sim, prog)
    plain, r2 = run_traced(sim, prog, trace=False)
    assert plain.trace is None and r2.cycles == r1.cycles
    # A second traced run on the same simulation reports only its own instructions, with the same cycles.
    again, _ = run_traced(sim, prog)
    assert [(e.index, e.start, e.end) for e in again.trace] == [(e.index, e.start, e.end) for e in traced.trace]
