"""A coarse timing model of a program, for the compile report and tests (not the cycle model).

Every unit runs its instructions in order; an instruction starts when its unit
is free and its wait tokens have been signalled (FIFO per unit pair, queues
unbounded). Costs: LOAD/STORE one cycle per bus beat, CONV one cycle per
(pixel, tap, input block, output block) MAC-array pass, EPILOGUE one cycle per
pixel and output block, POOL one cycle per output pixel, tap and channel block.
Memory latency, instruction fetch and stalls are ignored, so this is a lower
bound on cycles that shows whether DMA hides behind compute.
"""

from __future__ import annotations

from dataclasses import dataclass

from tessera.isa import Opcode, Unit, mask_units

__all__ = ["Estimate", "estimate"]


@dataclass
class Estimate:
    cycles: float          # finish time of the last unit
    serial: float          # sum of all instruction costs (no overlap)
    compute: float         # cycles the MAC array is busy (CONV)

    @property
    def compute_busy(self) -> float:
        return self.compute / self.cycles if self.cycles else 0.0


def _cost(ins, c) -> float:
    if ins.op in (Opcode.LOAD, Opcode.STORE):
        return ins.rows * ins.cols * c.word_bytes(ins.buf) / c.bus_bytes
    if ins.op == Opcode.CONV:
        return ins.out_h * ins.out_w * ins.k_h * ins.k_w * ins.in_cb * ins.ob_count
    if ins.op == Opcode.EPILOGUE:
        return ins.pixels * ins.ob_count
    if ins.op == Opcode.POOL:
        return ins.out_h * ins.out_w * ins.k_h * ins.k_w * ins.cb
    return 1.0


def estimate(program) -> Estimate:
    c = program.config
    free = {u: 0.0 for u in Unit}
    fifo: dict = {}
    serial = compute = 0.0
    for ins in program.instructions:
        if ins.op == Opcode.END:
            continue
        u = ins.unit
        cost = _cost(ins, c)
        start = free[u]
        for src in mask_units(ins.wait):
            start = max(start, fifo[(src, u)].pop(0))
        free[u] = start + cost
        serial += cost
        if ins.op == Opcode.CONV:
            compute += cost
        for dst in mask_units(ins.signal):
            fifo.setdefault((u, dst), []).append(free[u])
    return Estimate(max(free.values()), serial, compute)
