"""Dependency tokens from memory accesses: the scheduler every emitted instruction goes through.

Each instruction is emitted in program order with the buffer and external
memory ranges it reads and writes. The :class:`Scheduler` finds the last
conflicting access of every other unit (read-after-write, write-after-read,
write-after-write) and orders the two with one token: the earlier instruction
signals the later one's unit, which waits for it. A vector clock per unit
(as in :mod:`tessera.sim.hazards`) skips dependencies that earlier tokens
already imply, so each instruction waits at most once per unit.

Program order is always a valid sequential execution (every token is
signalled before it is consumed), and :meth:`Scheduler.check_token_depth`
verifies that no token queue ever needs more than ``token_depth`` entries in
that order; together these make the program deadlock-free with bounded
instruction and token queues.
"""

from __future__ import annotations

import numpy as np

from tessera.isa import Buffer, Instruction, Unit

from .ir import CompileError

__all__ = ["DRAM", "Scheduler"]

DRAM = "DRAM"
_NU = len(Unit)


class _Track:
    """Last access per unit of every word of one memory (unit-local sequence numbers, -1 = none)."""

    def __init__(self, words: int):
        self.write = np.full((_NU, words), -1, dtype=np.int32)
        self.read = np.full((_NU, words), -1, dtype=np.int32)


class Scheduler:
    """Collects instructions and assigns their wait/signal masks.

    Parameters
    ----------
    config : NpuConfig
    dram_base, dram_size : int
        The external-memory range the NPU writes (activations); tracked in
        units of ``min(act word, bus)`` bytes. Reads elsewhere (constants,
        inputs written by the host) need no ordering.
    """

    def __init__(self, config, dram_base: int, dram_size: int):
        self.config = c = config
        self.gran = min(c.act_word_bytes, c.bus_bytes)
        self.dram_base = dram_base
        self.tracks = {b: _Track(c.buffer_words(b)) for b in Buffer}
        self.tracks[DRAM] = _Track(max(1, -(-dram_size // self.gran)))
        self.instrs: list[dict] = []        # {"op", "fields", "unit", "wait", "signal"}
        self.unit_seq = {u: [] for u in Unit}  # unit -> global indices
        self.vc = {u: np.full(_NU, -1, dtype=np.int64) for u in Unit}
        self.ins_vc: list[np.ndarray] = []
        self.cover: dict = {}
        #: tag stored with every emitted instruction (the back end sets the current layer); SYNCs get None
        self.tag = None

    def _span(self, mem, start, end):
        if mem == DRAM:
            s = (start - self.dram_base) // self.gran
            e = -(-(end - self.dram_base) // self.gran)
            n = self.tracks[DRAM].write.shape[1]
            return max(s, 0), min(e, n)
        return start, end

    def emit(self, op: str, reads=(), writes=(), **fields) -> int:
        """Append one instruction; ``reads``/``writes`` are ``(memory, start, end)`` ranges
        (buffer words, or external-memory bytes with memory ``DRAM``)."""
        ins = Instruction(op, **fields)
        unit = ins.unit
        if op == "load":
            # The DMA reads whole bus beats: a LOAD conflicts with a STORE to any byte of them.
            B = self.config.bus_bytes
            reads = [(m, s // B * B, -(-e // B) * B) if m == DRAM else (m, s, e) for m, s, e in reads]
        need = np.full(_NU, -1, dtype=np.int64)
        for mem, s, e in reads:
            s, e = self._span(mem, s, e)
            if e > s:
                np.maximum(need, self.tracks[mem].write[:, s:e].max(axis=1), out=need)
        for mem, s, e in writes:
            s, e = self._span(mem, s, e)
            if e > s:
                tr = self.tracks[mem]
                np.maximum(need, tr.write[:, s:e].max(axis=1), out=need)
                np.maximum(need, tr.read[:, s:e].max(axis=1), out=need)
        vc = self.vc[unit].copy()
        wait = 0
        for u in Unit:
            if u == unit or need[u.value] < 0 or vc[u.value] >= need[u.value]:
                continue
            src = self._signaller(u, unit, self.unit_seq[u][need[u.value]])
            self.instrs[src]["signal"] |= 1 << unit.value
            self._cover(u, unit)[src:len(self.instrs)] += 1
            wait |= 1 << u.value
            np.maximum(vc, self.ins_vc[src], out=vc)
        seq = len(self.unit_seq[unit])
        vc[unit.value] = seq
        self.vc[unit] = vc
        idx = len(self.instrs)
        self.instrs.append({"op": op, "fields": fields, "unit": unit, "wait": wait, "signal": 0, "tag": self.tag})
        self.ins_vc.append(vc)
        self.unit_seq[unit].append(idx)
        for mem, s, e in reads:
            s, e = self._span(mem, s, e)
            self.tracks[mem].read[unit.value, s:e] = seq
        for mem, s, e in writes:
            s, e = self._span(mem, s, e)
            self.tracks[mem].write[unit.value, s:e] = seq
        return idx

    def _cover(self, src: Unit, dst: Unit) -> np.ndarray:
        """Tokens in flight from ``src`` to ``dst`` after each instruction, in program order."""
        n = len(self.instrs) + 1
        cov = self.cover.get((src, dst))
        if cov is None or cov.size < n:
            new = np.zeros(max(64, 2 * n), dtype=np.int32)
            if cov is not None:
                new[:cov.size] = cov
            cov = self.cover[(src, dst)] = new
        return cov

    def _signaller(self, src: Unit, dst: Unit, first: int) -> int:
        """Instruction of unit ``src`` at or after ``first`` that can signal ``dst`` within token_depth."""
        cov = self._cover(src, dst)
        n = len(self.instrs)
        depth = self.config.token_depth
        if cov[first:n].max(initial=0) < depth:
            return first
        last = self.unit_seq[src][-1]
        if cov[last:n].max(initial=0) < depth:
            return last
        # Every queue position since is taken: a SYNC on ``src`` right here signals after all of it.
        idx = len(self.instrs)
        vc = self.vc[src].copy()
        vc[src.value] = len(self.unit_seq[src])
        self.vc[src] = vc
        self.instrs.append({"op": "sync", "fields": {"unit": src}, "unit": src, "wait": 0, "signal": 0, "tag": None})
        self.ins_vc.append(vc)
        self.unit_seq[src].append(idx)
        return idx

    def end_segment(self) -> int:
        """END here; returns the index where the next segment starts.

        The host starts each segment after the previous one drained (it runs host ops in
        between), so nothing after the END needs a token from anything before it.
        """
        self.instrs.append({"op": "end", "fields": {}, "unit": None, "wait": 0, "signal": 0, "tag": None})
        self.ins_vc.append(np.full(_NU, -1, dtype=np.int64))
        for tr in self.tracks.values():
            tr.write.fill(-1)
            tr.read.fill(-1)
        return len(self.instrs)

    def instructions(self) -> list[Instruction]:
        """The program: every instruction with its masks, then END."""
        self.check_token_depth()
        out = [Instruction(d["op"], wait=d["wait"], signal=d["signal"], **d["fields"]) for d in self.instrs]
        out.append(Instruction("end"))
        return out

    def tag_ranges(self) -> dict:
        """tag → inclusive ``[first, last]`` index runs of its instructions (SYNCs, tagged None, omitted)."""
        runs: dict = {}
        for i, d in enumerate(self.instrs):
            t = d["tag"]
            if t is None:
                continue
            r = runs.setdefault(t, [])
            if r and r[-1][1] == i - 1:
                r[-1][1] = i
            else:
                r.append([i, i])
        return runs

    def check_token_depth(self) -> int:
        """Largest number of tokens any queue holds in sequential program order (≤ token_depth)."""
        pending = {}
        worst = 0
        for d in self.instrs:
            for u in Unit:
                if d["wait"] >> u.value & 1:
                    pending[(u, d["unit"])] -= 1
            for u in Unit:
                if d["signal"] >> u.value & 1:
                    k = (d["unit"], u)
                    pending[k] = pending.get(k, 0) + 1
                    worst = max(worst, pending[k])
        if worst > self.config.token_depth:
            raise CompileError(f"internal: the schedule needs {worst} tokens in flight between two units, "
                               f"the NPU holds {self.config.token_depth}")
        return worst
