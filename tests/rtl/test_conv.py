"""cocotb bench of the COMPUTE unit (CONV address generator and MAC array; tests/rtl/bench_conv.py)."""

import pytest

from .components import run_units


@pytest.mark.parametrize("backpressure", [False, True], ids=["steady", "backpressure"])
def test_conv_bench(tmp_path, backpressure):
    run_units("bench_conv", tmp_path, backpressure=backpressure)
