"""Replaying a program that already ran: the emulator's fast path for the second image onwards.

The order in which units execute instructions depends only on the instruction
words (tokens, queue bounds), never on data. So once a program has run to the
end, the next run from the same address replays that order without the
scheduler, as long as the words it fetched are unchanged and no STORE of the
program writes over them (then every fetch would see the same word again).

Within a replay, weights are known from memory: WGT words come only from
LOADs, and the same LOADs run in the same order. When every word a CONV reads
was loaded earlier in the run, each CONV meets the same weights as in the
previous replay as long as the bytes the WGT LOADs read are unchanged. The
emulator learns of every change without reading those bytes: external memory
is written only through ``Emulator.write`` and STOREs (``Emulator.dram`` is a
read-only view), and a write over bytes that a trace watches compares them
before and after. A trace whose own STOREs could write its weight bytes does
not watch (its CONVs check their weight tiles as in a first run).

While a watching trace's weight bytes are unchanged since its last full
replay, a replay skips its WGT LOADs altogether and each CONV step uses the
weight matrix (prepacked in an onnxruntime session, bound to the step's
operand buffers) that it built then. The WGT buffer is brought up to date
only when something needs it (:meth:`tessera.sim.emulator.Emulator._materialize`):
a read of ``Emulator.buffers``, any other run, or a write over the bytes those
LOADs read. After a change, the next replay runs every WGT LOAD and rebuilds
the weight matrices (a new epoch), then skips again.
"""

from __future__ import annotations

import bisect

import numpy as np

from tessera.isa import INSTR_BYTES, Buffer, Opcode

__all__ = ["Trace"]


class Trace:
    """The unit interleaving of one complete run from ``prog_addr``, ready to replay.

    Use :meth:`record`, which returns None for a run that cannot be replayed.
    """

    def __init__(self, emu, prog_addr: int, end: int, order: list):
        self.prog_addr = prog_addr
        self.end = end
        self.words = emu.dram[prog_addr:end].copy()
        self.steps = [(e[4], e[0], e[8]) for e in order]
        self.wgt_loads = [(ins, p) for _, ins, p in self.steps if ins.op == Opcode.LOAD and ins.buf == Buffer.WGT]
        # Byte ranges of external memory the WGT LOADs read, merged and sorted: [starts], [ends].
        self.starts, self.ends = _merge(r for ins, p in self.wgt_loads for r in _rows(ins, p.nbytes))
        self.known = (bool(self.wgt_loads) and _weights_known(emu.config, order)
                      and not any(self.watches(p.lo, p.hi) for _, ins, p in self.steps if ins.op == Opcode.STORE))
        self.wcells = [None] * len(self.steps) if self.known else None
        self.uses_wgt = bool(self.wgt_loads) or any(ins.op == Opcode.CONV for _, ins, _ in self.steps)
        self.epoch = 0
        self.clean = False               # weight bytes unchanged since the last full replay (cells valid)
        self.read_bytes = self.write_bytes = 0
        self.wgt_bytes = sum(p.total for _, p in self.wgt_loads)
        self._version = None
        self.calls = self.skipping = None
        self.fast = None                 # self.skipping with CONV steps as one call each (see _speed_up)
        self.fast_macs, self.fast_epoch = 0, None
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

    def watches(self, lo: int, hi: int) -> bool:
        """Whether external memory bytes [lo, hi) include some that the WGT LOADs read."""
        i = bisect.bisect_left(self.starts, hi)
        return i > 0 and self.ends[i - 1] > lo

    def changes(self, changed: np.ndarray) -> bool:
        """Whether new values at addresses ``changed`` (sorted) change bytes the WGT LOADs read."""
        if not self.starts:
            return False
        i = np.searchsorted(self.starts, changed, side="right") - 1
        return bool(((i >= 0) & (changed < np.asarray(self.ends)[np.maximum(i, 0)])).any())

    def replay(self, emu) -> None:
        """Execute the steps on ``emu``, leaving the same state as a full run."""
        emu._clocks = None
        if self._version != emu._watch_version:
            self._build_calls(emu)
        skip = self.known and self.clean
        if not skip and self.uses_wgt:
            emu._materialize()
            if self.known:
                self.epoch += 1          # every CONV step rebuilds its weight matrix from the loaded words
        emu._wcells, emu._wepoch = self.wcells, self.epoch
        try:
            if skip:
                # The WGT buffer lacks this replay's LOADs until something needs them (see the module doc).
                if self in emu._pending:
                    emu._pending.remove(self)
                emu._pending.append(self)
                fast = self.fast_epoch == self.epoch
                for emu._istep, fn, a, b in (self.fast if fast else self.skipping):
                    fn(a, b)
                emu.stats.dram_read_bytes += self.wgt_bytes
                if fast:
                    emu.stats.macs += self.fast_macs
                else:
                    self._speed_up(emu)
            else:
                for emu._istep, (fn, a, b) in enumerate(self.calls):
                    fn(a, b)
                self.clean = self.known
        finally:
            emu._wcells = None
        emu.stats.dram_read_bytes += self.read_bytes
        emu.stats.dram_write_bytes += self.write_bytes

    def _build_calls(self, emu) -> None:
        """The call per step: LOADs and STOREs that are one strided copy (and LOADs not into WGT, whose words
        the emulator stamps) replay as that copy alone, their byte counts added once per run; a STORE over
        bytes some trace watches goes through exec_store, which tells that trace."""
        self.calls, self.read_bytes, self.write_bytes = [], 0, 0
        for fn, ins, p in self.steps:
            copy = ins.op in (Opcode.LOAD, Opcode.STORE) and p.dst is not None and getattr(p, "wgt", None) is None
            if copy and ins.op == Opcode.STORE and any(t.watches(p.lo, p.hi) for t in emu._watchers):
                copy = False
            if copy:
                self.calls.append((np.copyto, p.dst, p.src))
                if ins.op == Opcode.LOAD:
                    self.read_bytes += p.total
                else:
                    self.write_bytes += p.total
            else:
                self.calls.append((fn, ins, p))
        self.skipping = [(i, *call) for i, (call, (_, ins, _)) in enumerate(zip(self.calls, self.steps))
                         if not (ins.op == Opcode.LOAD and ins.buf == Buffer.WGT)]
        self._version = emu._watch_version
        self.fast_epoch = None

    def _speed_up(self, emu) -> None:
        """After a replay that skipped its weight loads: the same steps with each CONV whose GEMM is bound as
        one call (Emulator._conv_runner), for the replays of this epoch."""
        self.fast, self.fast_macs = [], 0
        for i, fn, a, b in self.skipping:
            ins, p = self.steps[i][1], self.steps[i][2]
            run = emu._conv_runner(p, self.wcells[i], self.epoch) if ins.op == Opcode.CONV else None
            if run is not None:
                self.fast.append((i, run, None, None))
                self.fast_macs += p.macs
            else:
                self.fast.append((i, fn, a, b))
        self.fast_epoch = self.epoch


def _rows(ins, nbytes: int):
    """The byte ranges [start, end) of external memory that DMA ``ins`` moves."""
    if ins.rows == 1 or ins.dram_stride == nbytes:
        return [(ins.dram_addr, ins.dram_addr + ins.rows * nbytes)]
    return [(ins.dram_addr + r * ins.dram_stride, ins.dram_addr + r * ins.dram_stride + nbytes)
            for r in range(ins.rows)]


def _merge(ranges) -> tuple[list, list]:
    starts, ends = [], []
    for lo, hi in sorted(ranges):
        if starts and lo <= ends[-1]:
            ends[-1] = max(ends[-1], hi)
        else:
            starts.append(lo)
            ends.append(hi)
    return starts, ends


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
