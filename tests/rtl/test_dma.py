"""cocotb bench of the LOAD/STORE DMA (tests/rtl/bench_dma.py), per bus width, steady and under backpressure."""

import pytest
from tessera.hdl.dma import LoadDma, StoreDma

from tessera.arch import NpuConfig

from .components import Harness, run_bench


def dma_pair(c):
    return Harness({"ld": LoadDma(c), "st": StoreDma(c)})


def tiny(bus_bytes):
    # ACT words of 4 bytes, WGT/ACC words of 32, PARAM words of 96: a 4-byte bus splits every word into beats,
    # a 16-byte one packs several ACT words into one beat.
    return NpuConfig(name=f"dma-bus{bus_bytes}", lanes=4, rows=8, abuf_words=64, wbuf_words=16, accbuf_words=16,
                     pbuf_words=8, bus_bytes=bus_bytes, dram_bytes=8 << 10, mem_latency=3, mem_outstanding=4)


@pytest.mark.parametrize("backpressure", [False, True], ids=["steady", "backpressure"])
@pytest.mark.parametrize("bus_bytes", [4, 16])
def test_dma_bench(tmp_path, bus_bytes, backpressure):
    run_bench("bench_dma", "dma", dma_pair, tiny(bus_bytes), tmp_path, backpressure=backpressure)
