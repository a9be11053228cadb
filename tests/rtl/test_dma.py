"""cocotb bench of the LOAD/STORE DMA (tests/rtl/bench_dma.py), per bus width, steady and under backpressure."""

import pytest

from .components import BUS_CONFIGS, TIMED, run_units


@pytest.mark.parametrize("backpressure", [False, True], ids=["steady", "backpressure"])
@pytest.mark.parametrize("bus_bytes", sorted(BUS_CONFIGS))
def test_dma_bench(tmp_path, bus_bytes, backpressure):
    run_units("bench_dma", tmp_path, BUS_CONFIGS[bus_bytes], backpressure=backpressure)


@pytest.mark.parametrize("backpressure", [False, True], ids=["steady", "backpressure"])
def test_dma_bench_timed(tmp_path, backpressure):
    # The registered range checks: every fault of the bench, and transfers right after a check.
    run_units("bench_dma", tmp_path, TIMED, backpressure=backpressure)
