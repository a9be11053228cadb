"""External-memory allocation for activations, with liveness-based reuse.

A tensor lives from the op that writes it (graph inputs: from the start) to
the last op that reads it (graph outputs: to the end). Tensors whose
lifetimes do not overlap share addresses; a first-fit free list keeps the
footprint near the peak of simultaneously live bytes.
"""

from __future__ import annotations

__all__ = ["allocate"]


def allocate(sizes: dict, live: dict, base: int, align: int) -> tuple[dict, int]:
    """Addresses for tensors.

    Parameters
    ----------
    sizes : dict
        name → bytes.
    live : dict
        name → (first op index, last op index), inclusive.
    base, align : int
        Start of the region and the address alignment.

    Returns
    -------
    (addresses, region size)
    """
    events = sorted(sizes, key=lambda n: (live[n][0], -sizes[n]))
    free = [(0, 1 << 62)]            # (offset, size), sorted by offset
    active = []                      # (last use, name)
    addr, top = {}, 0

    def release(until):
        nonlocal free
        for end, name in list(active):
            if end < until:
                active.remove((end, name))
                off, size = addr[name] - base, -(-sizes[name] // align) * align
                free.append((off, size))
        free.sort()
        merged = []
        for off, size in free:
            if merged and merged[-1][0] + merged[-1][1] == off:
                merged[-1] = (merged[-1][0], merged[-1][1] + size)
            else:
                merged.append((off, size))
        free = merged

    for name in events:
        start = live[name][0]
        release(start)
        need = -(-sizes[name] // align) * align
        for k, (off, size) in enumerate(free):
            if size >= need:
                addr[name] = base + off
                free[k] = (off + need, size - need)
                top = max(top, off + need)
                break
        active.append((live[name][1], name))
    return addr, top
