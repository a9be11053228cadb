"""cocotb bench of the CSR block (tests/rtl/bench_csr.py), steady and with slow read draining / rare progress."""

import pytest
from tessera.hdl.csr import CsrBlock

from tessera.arch import NpuConfig

from .components import run_bench

CONFIG = NpuConfig(name="csr-bench", lanes=4, rows=8, abuf_words=16, wbuf_words=16, accbuf_words=16, pbuf_words=16,
                   bus_bytes=16, dram_bytes=4 << 10)


@pytest.mark.parametrize("backpressure", [False, True], ids=["steady", "backpressure"])
def test_csr_bench(tmp_path, backpressure):
    run_bench("bench_csr", "csr", CsrBlock, CONFIG, tmp_path, backpressure=backpressure)
