"""cocotb bench of the MAC array, the instruction decoder and the rounding shift (tests/rtl/components_bench.py)."""

import pytest

from .components import run_units


@pytest.mark.parametrize("backpressure", [False, True], ids=["steady", "backpressure"])
def test_components_mac_decoder_rounding(tmp_path, backpressure):
    run_units("components_bench", tmp_path, backpressure=backpressure)
