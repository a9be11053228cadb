"""Replaying a program that already ran: the emulator's fast path for the second image onwards.

The order in which units execute instructions depends only on the instruction
words (tokens, queue bounds), never on data. So once a program has run to the
end, the next run from the same address replays that order without the
scheduler, as long as the words it fetched are unchanged and no STORE of the
program writes over them (then every fetch would see the same word again).

Within a replay, weights are known from memory: WGT words come only from
LOADs, and the same LOADs run in the same order. When every word a CONV reads
was loaded earlier in the run and no STORE writes where those LOADs read, each
CONV meets the same weights as in the previous replay as long as those
external-memory bytes are unchanged. One comparison of them per replay
(whoever wrote memory, however) then replaces the check of every weight tile
against the emulator's cache, and each CONV step keeps its weight matrix and
that matrix's prepacked GEMM.
"""

from __future__ import annotations

import numpy as np

from tessera.isa import INSTR_BYTES, Buffer, Opcode

__all__ = ["Trace"]


class Trace:
    """The unit interleaving of one complete run from ``prog_addr``, ready to replay.

    Use :meth:`record`, which returns None for a run that cannot be replayed.
    """

    def __init__(self, emu, prog_addr: int, end: int, order: list):
        self.end = end
        self.words = emu.dram[prog_addr:end].copy()
        self.steps = [(e[4], e[0], e[8]) for e in order]
        # LOADs and STOREs that are one strided copy (and LOADs not into WGT, whose words the emulator
        # stamps) replay as that copy alone; their byte counts are added once per run.
        self.calls = []
        self.read_bytes = self.write_bytes = 0
        for fn, ins, p in self.steps:
            if ins.op in (Opcode.LOAD, Opcode.STORE) and p.dst is not None and getattr(p, "wgt", None) is None:
                self.calls.append((np.copyto, p.dst, p.src))
                if ins.op == Opcode.LOAD:
                    self.read_bytes += p.total
                else:
                    self.write_bytes += p.total
            else:
                self.calls.append((fn, ins, p))
        by_opcode: dict[str, int] = {}
        for e in order:
            by_opcode[e[0].op.name] = by_opcode.get(e[0].op.name, 0) + 1
        by_opcode["END"] = 1
        self.by_opcode = by_opcode
        self.wsrc = _weight_sources(emu.config, order)
        self.wsnap = None
        self.wcells = None

    @classmethod
    def record(cls, emu, prog_addr: int, end_pc: int, order: list):
        end = end_pc + INSTR_BYTES
        for e in order:
            if e[0].op == Opcode.STORE:
                ins, p = e[0], e[8]
                if ins.dram_addr < end and prog_addr < ins.dram_addr + (ins.rows - 1) * ins.dram_stride + p.nbytes:
                    return None
        return cls(emu, prog_addr, end, order)

    def matches(self, emu, prog_addr: int) -> bool:
        """Whether the instruction words are still the ones this trace fetched."""
        return np.array_equal(emu.dram[prog_addr:self.end], self.words)

    def replay(self, emu) -> None:
        """Execute the steps on ``emu``, leaving the same state as a full run."""
        emu._clocks = None
        if self.wsrc is not None:
            snap = self.wsnap
            if snap is None or not all(_same_bytes(emu.dram[lo:hi], b) for (lo, hi), b in zip(self.wsrc, snap)):
                self.wsnap = [emu.dram[lo:hi].copy() for lo, hi in self.wsrc]
                self.wcells = [None] * len(self.steps)
            emu._wcells = self.wcells
        try:
            for emu._istep, (fn, a, b) in enumerate(self.calls):
                fn(a, b)
        finally:
            emu._wcells = None
        emu.stats.dram_read_bytes += self.read_bytes
        emu.stats.dram_write_bytes += self.write_bytes


def _same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """Equality of two uint8 arrays of one length, compared 8 bytes at a time."""
    n = a.size - a.size % 8
    return np.array_equal(a[:n].view(np.uint64), b[:n].view(np.uint64)) and np.array_equal(a[n:], b[n:])


def _weight_sources(config, order: list):
    """Merged external-memory ranges [lo, hi) that WGT LOADs of ``order`` read, or None where the weights
    of a replay cannot be known from them (a CONV reads words no earlier LOAD wrote, or a STORE writes
    where a WGT LOAD reads)."""
    ranges, stores = [], []
    loaded = np.zeros(config.wbuf_words, bool)
    for e in order:
        ins, p = e[0], e[8]
        if ins.op == Opcode.LOAD and ins.buf == Buffer.WGT:
            ranges.append((int(p.row_starts.min()), int(p.row_starts.max()) + p.nbytes))
            loaded[p.bidx] = True
        elif ins.op == Opcode.STORE:
            stores.append((int(p.row_starts.min()), int(p.row_starts.max()) + p.nbytes))
        elif ins.op == Opcode.CONV and not loaded[p.w_idx].all():
            return None
    merged: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    if any(lo < mh and ml < hi for lo, hi in stores for ml, mh in merged):
        return None
    return [(lo, hi) for lo, hi in merged]
