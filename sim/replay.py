"""Replaying a program that already ran: the emulator's fast path for the second image onwards.

The order in which units execute instructions depends only on the instruction
words (tokens, queue bounds), never on data. So once a program has run to the
end, the next run from the same address replays that order without the
scheduler, as long as the words it fetched are unchanged and no STORE of the
program writes over them (then every fetch would see the same word again).

Within a replay, weights are known from memory: WGT words come only from
LOADs, and the same LOADs run in the same order. When every word a CONV reads
was loaded earlier in the run, each CONV meets the same weights as in the
previous replay as long as every WGT LOAD before it read the same bytes as
then. So each WGT LOAD compares what it copies with what it read last time
(whoever wrote memory, however, and whenever: a STORE of the same run too);
while nothing differs, each CONV step keeps its weight matrix and that
matrix's prepacked GEMM instead of checking its weight tile against the
emulator's cache. A difference starts a new epoch, in which CONV steps
rebuild theirs.
"""

from __future__ import annotations

import functools

import numpy as np

from tessera.isa import INSTR_BYTES, Buffer, Opcode

from .emulator_kernels import copy_and_compare

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
        known = _weights_known(emu.config, order)
        self.wsnaps: list = []           # per WGT LOAD: the bytes it read last time
        self.wcells = [None] * len(self.steps) if known else None
        self.epoch = 0
        self.calls = []
        self.read_bytes = self.write_bytes = 0
        for fn, ins, p in self.steps:
            if known and ins.op == Opcode.LOAD and ins.buf == Buffer.WGT:
                self.calls.append((functools.partial(self._load_weights, emu, len(self.wsnaps)), ins, p))
                self.wsnaps.append(None)
            elif ins.op in (Opcode.LOAD, Opcode.STORE) and p.dst is not None and getattr(p, "wgt", None) is None:
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
        emu._wcells, emu._wepoch = self.wcells, self.epoch
        try:
            for emu._istep, (fn, a, b) in enumerate(self.calls):
                fn(a, b)
        finally:
            emu._wcells = None
        emu.stats.dram_read_bytes += self.read_bytes
        emu.stats.dram_write_bytes += self.write_bytes


    def _load_weights(self, emu, k: int, ins, p) -> None:
        """WGT LOAD number ``k`` of the trace: the LOAD itself, and whether its bytes are the ones it read in
        the previous replay (else CONV steps start over with their weight matrices)."""
        snap = self.wsnaps[k]
        if p.dst is not None and snap is not None:
            same = copy_and_compare(*snap[1]) if snap[1] is not None else copy_and_compare(p.dst, p.src, snap[0])
            emu._wgt_clock += 1
            emu._wgt_stamp[p.wgt] = emu._wgt_clock
            emu.stats.dram_read_bytes += p.total
        else:
            emu.exec_load(ins, p)
            same = snap is not None and np.array_equal(p.src, snap[0])
        if not same:
            if snap is not None:        # (the first replay takes its snapshots as its CONV steps start)
                self.epoch += 1
                emu._wepoch = self.epoch
            copy = np.array(p.src)
            self.wsnaps[k] = (copy, _words64(p.dst, p.src, copy) if p.dst is not None else None)


def _words64(*arrays):
    """The arrays as 1-D uint64 views when all are contiguous with a length in whole words, else None (the
    copy-and-compare loop then runs over 8-byte words that the compiler can vectorize)."""
    views = []
    for a in arrays:
        flat = a.reshape(-1) if a.flags.c_contiguous else None
        if flat is None or flat.size % 8:
            return None
        views.append(flat.view(np.uint64).reshape(1, -1))
    return tuple(views)


def _weights_known(config, order: list) -> bool:
    """Whether every word a CONV of ``order`` reads from WGT was loaded earlier in the run (then the
    weights of a replay are known from the bytes its WGT LOADs read)."""
    loaded = np.zeros(config.wbuf_words, bool)
    for e in order:
        ins, p = e[0], e[8]
        if ins.op == Opcode.LOAD and ins.buf == Buffer.WGT:
            loaded[p.bidx] = True
        elif ins.op == Opcode.CONV and not loaded[p.w_idx].all():
            return False
    return True
