"""cocotb bench of dispatch (queues and token counters; tests/rtl/bench_dispatch.py), steady and under
backpressure (random fetch gaps and unit latencies)."""

import pytest

from .components import run_units


@pytest.mark.parametrize("backpressure", [False, True], ids=["steady", "backpressure"])
def test_dispatch_bench(tmp_path, backpressure):
    run_units("bench_dispatch", tmp_path, backpressure=backpressure)
