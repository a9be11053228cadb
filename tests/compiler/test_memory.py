"""External-memory allocation with liveness-based reuse."""

from tessera.compiler.memory import allocate


def _overlap(a0, s0, a1, s1):
    return a0 < a1 + s1 and a1 < a0 + s0


def test_allocate_reuses_dead_tensors():
    sizes = {"a": 1000, "b": 1000, "c": 1000, "d": 1000}
    live = {"a": (-1, 0), "b": (0, 1), "c": (1, 2), "d": (2, 3)}
    addr, top = allocate(sizes, live, 4096, 256)
    assert top <= 2 * 1024                 # a chain needs only two buffers at a time
    assert addr["c"] == addr["a"]          # a is dead once c is written
    assert all(v % 256 == 0 and v >= 4096 for v in addr.values())


def test_allocate_never_overlaps_live_tensors():
    sizes = {f"t{i}": 300 + 37 * i for i in range(12)}
    live = {f"t{i}": (i - 1, min(11, i + (i % 4))) for i in range(12)}
    addr, top = allocate(sizes, live, 0, 64)
    names = list(sizes)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            la, lb = live[a], live[b]
            if la[0] <= lb[1] and lb[0] <= la[1]:
                assert not _overlap(addr[a], sizes[a], addr[b], sizes[b]), (a, b)
    assert top < sum(-(-v // 64) * 64 for v in sizes.values())
