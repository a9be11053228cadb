"""cocotb bench of instruction fetch and decode (tests/rtl/bench_fetch.py), per bus width, steady and under
backpressure."""

import pytest

from .components import BUS_CONFIGS, run_units


@pytest.mark.parametrize("backpressure", [False, True], ids=["steady", "backpressure"])
@pytest.mark.parametrize("bus_bytes", sorted(BUS_CONFIGS))
def test_fetch_bench(tmp_path, bus_bytes, backpressure):
    run_units("bench_fetch", tmp_path, BUS_CONFIGS[bus_bytes], backpressure=backpressure)
