"""cocotb bench of the POST unit (EPILOGUE and POOL; tests/rtl/bench_post.py), steady and with random start gaps."""

import pytest

from .components import TIMED, UNITS, run_units

#: Shared multipliers (POOL's window bank, with the fl32 sums in it), a POST built without fl32, and one with
#: registered range checks and split roundings.
_CONFIGS = {"units": UNITS, "post2": UNITS.replace(name="units-post2", post_lanes=2),
            "nofl32": UNITS.replace(name="units-nofl32", pool_fl32=False), "timed": TIMED}


@pytest.mark.parametrize("config,backpressure", [("units", False), ("units", True), ("post2", False),
                                                 ("post2", True), ("nofl32", False),
                                                 ("timed", False), ("timed", True)])
def test_post_bench(tmp_path, config, backpressure):
    run_units("bench_post", tmp_path, _CONFIGS[config], backpressure=backpressure)

