"""cocotb bench of dispatch (queues and token counters; tests/rtl/bench_dispatch.py), steady and under
backpressure (random fetch gaps and unit latencies)."""

import pytest
from tessera.hdl.dispatch import Dispatch

from tessera.arch import NpuConfig

from .components import run_bench

#: Two-deep queues and token counters: bounds are reached all the time.
CONFIG = NpuConfig(name="dispatch-bench", lanes=4, rows=4, abuf_words=16, wbuf_words=16, accbuf_words=16,
                   pbuf_words=16, bus_bytes=16, dram_bytes=4 << 10, queue_depth=2, token_depth=2)


@pytest.mark.parametrize("backpressure", [False, True], ids=["steady", "backpressure"])
def test_dispatch_bench(tmp_path, backpressure):
    run_bench("bench_dispatch", "dispatch", Dispatch, CONFIG, tmp_path, backpressure=backpressure)
