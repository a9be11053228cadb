"""Race detection for the emulator: accesses that dependency tokens do not order.

The emulator runs the four units in one deterministic interleaving, so a
program that forgot a token can still produce the right answer there and a
wrong one on hardware, where units really overlap. This checker gives every
executed instruction a vector clock (advanced by program order within a unit
and by tokens between units) and reports any two accesses to the same word,
at least one a write, by different units whose clocks do not order them.
"""

from __future__ import annotations

import numpy as np

from tessera.errors import UserError
from tessera.isa import Unit

__all__ = ["HazardError", "HazardTracker", "VectorClocks"]

_NUNITS = len(Unit)


class HazardError(UserError, RuntimeError):
    """Two units access the same memory word without a token ordering them."""


class VectorClocks:
    """Vector clocks of the units, carried along token queues."""

    def __init__(self):
        self.unit = np.zeros((_NUNITS, _NUNITS), dtype=np.int64)
        self.count = np.zeros(_NUNITS, dtype=np.int64)
        self.queues = {(s, d): [] for s in range(_NUNITS) for d in range(_NUNITS) if s != d}

    def start(self, unit: int, waits) -> np.ndarray:
        vc = self.unit[unit].copy()
        for src in waits:
            vc = np.maximum(vc, self.queues[(src, unit)].pop(0))
        self.count[unit] += 1
        vc[unit] = self.count[unit]
        self.unit[unit] = vc
        return vc

    def signal(self, unit: int, dsts, vc: np.ndarray):
        for dst in dsts:
            self.queues[(unit, dst)].append(vc.copy())


class HazardTracker:
    """Last writer and last readers of every word of one memory, allocated in chunks."""

    CHUNK = 1 << 16

    def __init__(self, name: str, words: int):
        self.name = name
        self.words = words
        self.chunks: dict[int, np.ndarray] = {}

    def _state(self, idx: np.ndarray):
        # One structured view per chunk: [writer unit, writer index, reader index per unit].
        out = np.empty((idx.size, 2 + _NUNITS), dtype=np.int64)
        chunk_ids = idx // self.CHUNK
        for c in np.unique(chunk_ids):
            st = self.chunks.get(int(c))
            if st is None:
                st = np.zeros((self.CHUNK, 2 + _NUNITS), dtype=np.int64)
                st[:, 0] = -1
                self.chunks[int(c)] = st
            sel = chunk_ids == c
            out[sel] = st[idx[sel] % self.CHUNK]
        return out, chunk_ids

    def _store(self, idx, chunk_ids, state):
        for c in np.unique(chunk_ids):
            sel = chunk_ids == c
            self.chunks[int(c)][idx[sel] % self.CHUNK] = state[sel]

    def access(self, unit: int, vc: np.ndarray, idx, write: bool, where: str):
        idx = np.unique(np.asarray(idx, dtype=np.int64).reshape(-1))
        if idx.size == 0:
            return
        st, chunk_ids = self._state(idx)
        wu, wi = st[:, 0], st[:, 1]
        other = (wu >= 0) & (wu != unit)
        bad = other & (vc[np.where(other, wu, 0)] < wi)
        kinds = "read after write" if not write else "write after write"
        if write and not bad.any():
            for u in range(_NUNITS):
                if u != unit:
                    war = st[:, 2 + u] > vc[u]
                    if war.any():
                        bad, kinds = war, f"write after read by {Unit(u).name}"
                        wu = np.full_like(wu, u)
                        wi = st[:, 2 + u]
                        break
        if bad.any():
            k = int(np.argmax(bad))
            raise HazardError(
                f"{where}: {kinds} race on {self.name} word {int(idx[k])}: unit {Unit(int(wu[k])).name} "
                f"instruction #{int(wi[k])} is not ordered before this one by a dependency token")
        if write:
            st[:, 0] = unit
            st[:, 1] = vc[unit]
        else:
            st[:, 2 + unit] = vc[unit]
        self._store(idx, chunk_ids, st)
