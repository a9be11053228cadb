"""cocotb bench of the POST unit (EPILOGUE and POOL; tests/rtl/bench_post.py), steady and with random start gaps."""

import pytest

from .components import run_units


@pytest.mark.parametrize("backpressure", [False, True], ids=["steady", "backpressure"])
def test_post_bench(tmp_path, backpressure):
    run_units("bench_post", tmp_path, backpressure=backpressure)


@pytest.mark.xfail(strict=True, reason="RTL bug: hdl/common.py round_shift takes the remainder of a negative x "
                   "from its unsigned bit pattern without sign extension, so a shift wider than x (residual "
                   "res_shift > 48, AVG shift > 56) gives -1 instead of 0")
def test_post_wide_shifts_round_like_numerics(tmp_path):
    run_units("bench_post", tmp_path, env={"TB_KNOWN_BUGS": "1"},
              testcase=["post_shifts_wider_than_the_sum_round_like_numerics"])
