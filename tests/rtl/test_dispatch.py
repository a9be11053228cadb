"""cocotb bench of dispatch (queues and token counters; tests/rtl/bench_dispatch.py), steady and under
backpressure (random fetch gaps and unit latencies), also with registered queue heads (``timing_stages``)."""

import pytest

from .components import TIMED, UNITS, run_units


@pytest.mark.parametrize("config,backpressure", [(UNITS, False), (UNITS, True), (TIMED, True)],
                         ids=["steady", "backpressure", "timed-backpressure"])
def test_dispatch_bench(tmp_path, config, backpressure):
    run_units("bench_dispatch", tmp_path, config, backpressure=backpressure)
