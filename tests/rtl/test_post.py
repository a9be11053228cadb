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
