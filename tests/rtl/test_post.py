"""cocotb bench of the POST unit (EPILOGUE and POOL; tests/rtl/bench_post.py), steady and with random start gaps."""

import pytest
from tessera.hdl.post import PostUnit

from tessera.arch import NpuConfig

from .components import run_bench

#: rows = 2×lanes, so an EPILOGUE block spans two ACT words.
CONFIG = NpuConfig(name="post-bench", lanes=4, rows=8, abuf_words=128, wbuf_words=4, accbuf_words=32, pbuf_words=4,
                   bus_bytes=16, dram_bytes=4 << 10)


@pytest.mark.parametrize("backpressure", [False, True], ids=["steady", "backpressure"])
def test_post_bench(tmp_path, backpressure):
    run_bench("bench_post", "post", PostUnit, CONFIG, tmp_path, backpressure=backpressure)


@pytest.mark.xfail(strict=True, reason="RTL bug: hdl/common.py round_shift takes the remainder of a negative x "
                   "from its unsigned bit pattern without sign extension, so a shift wider than x (residual "
                   "res_shift > 48, AVG shift > 56) gives -1 instead of 0")
def test_post_wide_shifts_round_like_numerics(tmp_path):
    run_bench("bench_post", "post", PostUnit, CONFIG, tmp_path, env={"TB_KNOWN_BUGS": "1"},
              testcase=["post_shifts_wider_than_the_sum_round_like_numerics"])
