"""cocotb bench of instruction fetch and decode (tests/rtl/bench_fetch.py), per bus width, steady and under
backpressure."""

import pytest
from tessera.hdl.fetch import Fetch

from tessera.arch import NpuConfig

from .components import run_bench


def tiny(bus_bytes):
    # 8-byte beats: four per instruction; 64-byte beats: two instructions per beat.
    # rows=16: every buffer word divides a 64-byte beat or is a multiple of it.
    return NpuConfig(name=f"fetch-bus{bus_bytes}", lanes=4, rows=16, abuf_words=4, wbuf_words=4, accbuf_words=4,
                     pbuf_words=4, bus_bytes=bus_bytes, dram_bytes=4 << 10, mem_latency=3, mem_outstanding=4)


@pytest.mark.parametrize("backpressure", [False, True], ids=["steady", "backpressure"])
@pytest.mark.parametrize("bus_bytes", [8, 64])
def test_fetch_bench(tmp_path, bus_bytes, backpressure):
    run_bench("bench_fetch", "fetch", Fetch, tiny(bus_bytes), tmp_path, backpressure=backpressure)
