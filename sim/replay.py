"""Replaying a program that already ran: the emulator's fast path for the second image onwards.

The order in which units execute instructions depends only on the instruction
words (tokens, queue bounds), never on data. So once a program has run to the
end, the next run from the same address replays that order without the
scheduler, as long as the words it fetched are unchanged and no STORE of the
program writes over them (then every fetch would see the same word again).

Two more things are known about a replay, and :class:`Trace` uses both:

- WGT words come only from LOADs, and the same LOADs run in the same order.
  When every word a CONV reads was loaded earlier in the run and no STORE
  writes where those LOADs read, each CONV meets the same weights as in the
  previous replay as long as those external-memory bytes are unchanged: one
  comparison of them per replay (whoever wrote memory, however) replaces the
  check of every weight tile against the emulator's cache.
- Every instruction's buffer words are known from its fields. A replay can
  therefore run on two threads without changing a bit: a worker executes the
  GEMM half of each CONV and every EPILOGUE, in program order, while the
  calling thread executes LOAD, STORE, POOL and the operand half of CONV, in
  program order; before each of its steps the calling thread waits for the
  worker steps whose buffer words it reads or writes (read after write,
  write after read, write after write). onnxruntime's GEMM and the numba
  kernels release the GIL, so the two halves overlap.
"""

from __future__ import annotations

import threading
from queue import SimpleQueue

import numpy as np

from tessera.isa import INSTR_BYTES, Buffer, Opcode

__all__ = ["Trace"]

#: GEMM operand buffers in flight between the two threads (per shape).
SLOTS = 4

_MAIN, _OPERANDS, _WORKER = 0, 1, 2


class Trace:
    """The unit interleaving of one complete run from ``prog_addr``, ready to replay.

    Use :meth:`record`, which returns None for a run that cannot be replayed.
    """

    def __init__(self, emu, prog_addr: int, end: int, order: list):
        self.end = end
        self.words = emu.dram[prog_addr:end].copy()
        self.steps = [(e[4], e[0], e[8]) for e in order]
        by_opcode: dict[str, int] = {}
        for e in order:
            by_opcode[e[0].op.name] = by_opcode.get(e[0].op.name, 0) + 1
        by_opcode["END"] = 1
        self.by_opcode = by_opcode
        self.wsrc = _weight_sources(emu.config, order)
        self.wsnap = None
        self.wcells = None
        self.split = None            # the two-thread schedule, made at the first threaded replay

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

    def replay(self, emu, threads: int) -> None:
        """Execute the steps on ``emu`` (with ``threads`` 1 or 2), leaving the same state as a full run."""
        emu._clocks = None
        if self.wsrc is not None:
            snap = self.wsnap
            if snap is None or not all(np.array_equal(emu.dram[lo:hi], b) for (lo, hi), b in zip(self.wsrc, snap)):
                self.wsnap = [emu.dram[lo:hi].copy() for lo, hi in self.wsrc]
                self.wcells = [None] * len(self.steps)
            emu._wcells = self.wcells
        try:
            if threads > 1:
                self._replay_split(emu)
            else:
                for emu._istep, (fn, ins, plan) in enumerate(self.steps):
                    fn(ins, plan)
        finally:
            emu._wcells = None

    # ---- two threads -------------------------------------------------------------------------------

    def _replay_split(self, emu) -> None:
        if self.split is None:
            self.split = _split(emu.config, self.steps)
        q: SimpleQueue = SimpleQueue()
        cond = threading.Condition()
        state = {"done": -1, "error": None}

        def worker():
            i = 0
            while True:
                job = q.get()
                if job is None:
                    return
                try:
                    job[0](*job[1:])
                except BaseException as e:          # handed to the calling thread, which re-raises it
                    with cond:
                        state["error"] = e
                        cond.notify()
                    return
                with cond:
                    state["done"] = i
                    cond.notify()
                i += 1

        def wait(n: int) -> None:
            if state["done"] < n:
                with cond:
                    while state["done"] < n and state["error"] is None:
                        cond.wait()
            if state["error"] is not None:
                raise state["error"]

        t = threading.Thread(target=worker, name="tessera-emulator-worker", daemon=True)
        t.start()
        try:
            for i, (kind, need, slot) in enumerate(self.split):
                fn, ins, plan = self.steps[i]
                if need >= 0:
                    wait(need)
                if kind == _MAIN:
                    fn(ins, plan)
                elif kind == _OPERANDS:
                    emu._istep = i
                    q.put((emu._conv_accumulate, plan, *emu._conv_operands(plan, True, slot)))
                else:
                    q.put((fn, ins, plan))
            q.put(None)
            t.join()
        finally:
            if t.is_alive():
                q.put(None)
                t.join()
        if state["error"] is not None:
            raise state["error"]


def _words(idx) -> np.ndarray | slice:
    return idx if isinstance(idx, slice) else np.asarray(idx).reshape(-1)


def _split(config, steps) -> list[tuple[int, int, int]]:
    """Per step: (kind, the worker job to wait for first or -1, GEMM operand slot)."""
    sizes = {b: config.buffer_words(b) for b in Buffer}
    last_w = {b: np.full(n, -1, np.int64) for b, n in sizes.items()}     # worker job that last wrote a word
    last_r = {b: np.full(n, -1, np.int64) for b, n in sizes.items()}     # ... that last read it
    slot_job = [-1] * SLOTS          # worker job that consumes each operand slot last
    jobs = 0
    out = []
    for fn, ins, p in steps:
        op = ins.op
        if op in (Opcode.CONV, Opcode.EPILOGUE):
            if op == Opcode.CONV:
                # The operand half reads ACT and WGT here; the worker's half touches only the accumulators.
                reads = [(Buffer.ACT, p.in_idx), (Buffer.WGT, p.w_idx)]
                slot = jobs % SLOTS
                need = max(_need(last_w, last_r, reads, []), slot_job[slot])
                slot_job[slot] = jobs
                out.append((_OPERANDS, need, slot))
                wr, wreads = [(Buffer.ACC, p.acc_idx)], [(Buffer.ACC, p.acc_idx)]
            else:
                out.append((_WORKER, -1, 0))
                wr = [(Buffer.ACT, p.out_idx)]
                wreads = [(Buffer.ACC, p.acc_idx), (Buffer.PARAM, p.p_idx)]
                if p.r_idx is not None:
                    wreads.append((Buffer.ACT, p.r_idx))
            for b, idx in wreads:
                last_r[b][_words(idx)] = jobs
            for b, idx in wr:
                last_w[b][_words(idx)] = jobs
            jobs += 1
            continue
        reads, writes = [], []
        if op == Opcode.LOAD:
            writes.append((ins.buf, p.bidx))
        elif op == Opcode.STORE:
            reads.append((Buffer.ACT, p.bidx))
        elif op == Opcode.POOL:
            reads.append((Buffer.ACT, p.in_idx))
            writes.append((Buffer.ACT, p.out_idx))
        elif op not in (Opcode.SYNC,):
            # An instruction this schedule does not know: wait for everything before it.
            out.append((_MAIN, jobs - 1, 0))
            continue
        out.append((_MAIN, _need(last_w, last_r, reads, writes), 0))
    return out


def _need(last_w, last_r, reads, writes) -> int:
    n = -1
    for b, idx in reads:
        w = _words(idx)
        if last_w[b][w].size:
            n = max(n, int(last_w[b][w].max()))
    for b, idx in writes:
        w = _words(idx)
        if last_w[b][w].size:
            n = max(n, int(last_w[b][w].max()), int(last_r[b][w].max()))
    return n


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
