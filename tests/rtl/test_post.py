"""cocotb bench of the POST unit (EPILOGUE and POOL; tests/rtl/bench_post.py), steady and with random start gaps."""

import pytest

from .components import run_units


@pytest.mark.parametrize("backpressure", [False, True], ids=["steady", "backpressure"])
def test_post_bench(tmp_path, backpressure):
    run_units("bench_post", tmp_path, backpressure=backpressure)

