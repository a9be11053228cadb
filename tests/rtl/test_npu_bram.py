"""The NPU with block-RAM shaped buffers and shared requantization lanes (the ulx3s-85f options) on Verilator.

Whole programs keep LOAD, CONV, POST and STORE busy at once, so the shared ACT write port (POST
first, LOAD's words queued) and the shared read copy (POST first, then STORE) see real contention;
results must equal the emulator's bit for bit.
"""

import pytest
from tessera.sim.handwritten import conv_relu_pool

from tessera.arch import NpuConfig

from .programs import compiled_runs_match, handwritten_runs_match

#: ACT words as wide as the 8-byte bus (a bram_buffers condition), EPILOGUE/POOL 4 of 8 channels per
#: cycle, PARAM entries of 4 records (48 bytes = 6 beats).
CONFIG = NpuConfig(name="rtl-test-bram", lanes=8, rows=16, abuf_words=2048, wbuf_words=512, accbuf_words=512,
                   pbuf_words=32, bus_bytes=8, dram_bytes=4 << 20, mem_latency=8, queue_depth=4, token_depth=4,
                   post_lanes=4, bram_buffers=True)
BACKPRESSURE = [0.0, 0.5]


@pytest.fixture(scope="module")
def sim():
    from tessera.sim.rtl import RtlSim
    with RtlSim(CONFIG) as s:
        yield s


@pytest.mark.parametrize("backpressure", BACKPRESSURE)
def test_npu_bram_compiled_resnet_matches_emulator(sim, backpressure):
    from tessera.compiler.driver import compile_model

    from tests.compiler.netgen import quantize, resnet
    prog = compile_model(quantize(resnet(in_shape=(1, 3, 12, 10), widths=(8, 24), blocks=1)), CONFIG)[0]
    emu, rtl = compiled_runs_match(prog, sim, backpressure, seed=int(backpressure * 10) + 1)
    assert rtl.macs == emu.macs


@pytest.mark.parametrize("backpressure", BACKPRESSURE)
def test_npu_bram_handwritten_program_matches_emulator(sim, backpressure):
    prog, _ = conv_relu_pool(CONFIG, seed=4)
    handwritten_runs_match(prog, sim, backpressure=backpressure, seed=6)
