"""cocotb bench of the COMPUTE unit (CONV address generator and MAC array; tests/rtl/bench_conv.py)."""

import pytest
from tessera.hdl.conv import ConvUnit

from tessera.arch import NpuConfig

from .components import run_bench

CONFIG = NpuConfig(name="conv-bench", lanes=4, rows=8, abuf_words=64, wbuf_words=64, accbuf_words=64, pbuf_words=4,
                   bus_bytes=16, dram_bytes=4 << 10)


@pytest.mark.parametrize("backpressure", [False, True], ids=["steady", "backpressure"])
def test_conv_bench(tmp_path, backpressure):
    run_bench("bench_conv", "conv", ConvUnit, CONFIG, tmp_path, backpressure=backpressure)
