"""cocotb bench of the CSR block (tests/rtl/bench_csr.py), steady and with slow read draining / rare progress."""

import pytest

from .components import TIMED, UNITS, run_units


@pytest.mark.parametrize("config", [UNITS, TIMED], ids=["plain", "timed"])
@pytest.mark.parametrize("backpressure", [False, True], ids=["steady", "backpressure"])
def test_csr_bench(tmp_path, backpressure, config):
    run_units("bench_csr", tmp_path, config, backpressure=backpressure)
