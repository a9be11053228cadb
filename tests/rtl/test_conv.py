"""cocotb bench of the COMPUTE unit (CONV address generator and MAC array; tests/rtl/bench_conv.py)."""

import pytest

from .components import TIMED, UNITS, run_units


@pytest.mark.parametrize("config,backpressure", [(UNITS, False), (UNITS, True), (TIMED, True)],
                         ids=["steady", "backpressure", "timed-backpressure"])
def test_conv_bench(tmp_path, config, backpressure):
    run_units("bench_conv", tmp_path, config, backpressure=backpressure)
