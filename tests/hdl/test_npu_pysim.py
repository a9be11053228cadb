"""The whole NPU in Amaranth's Python simulator (no Verilator): quick checks of every unit vs the emulator."""

import numpy as np
import pytest
from tessera.sim.emulator import Emulator

from tessera.isa import encode_program
from tests.rtl.programs import conv_layer, dma_pattern, pool_layer
from tests.rtl.test_npu import CONFIG

from .pysim import run_npu

#: 4-bit weights, and ACT words as wide as the bus.
W4 = CONFIG.replace(name="rtl-test-w4", weight_bits=4, lanes=8, rows=8, bus_bytes=8)
#: Block-RAM shaped buffers (one ACT write port, PARAM in entries of 4 records) and an EPILOGUE of
#: 4 channels per cycle (two cycles per ACT word, four PARAM entries per word).
BRAM = CONFIG.replace(name="rtl-test-bram", lanes=8, rows=16, bus_bytes=8, post_lanes=4, bram_buffers=True)
#: The serial EPILOGUE alone, with PARAM words as wide as the default buffers keep them.
SERIAL = CONFIG.replace(name="rtl-test-serial", post_lanes=2)

CASES = {
    "conv_w4": lambda rng: (W4, conv_layer(W4, rng, in_cb=2, ob=2)),
    "conv_residual": lambda rng: (CONFIG, conv_layer(CONFIG, rng, ob=2, in_cb=2, residual=True, k_h=1, k_w=1, pad=(0, 0))),
    "conv_strided_dilated": lambda rng: (CONFIG, conv_layer(CONFIG, rng, stride=(2, 1), dil=(1, 2), in_h=6, in_w=7,
                                                           pad=(1, 2))),
    "pool_avg": lambda rng: (CONFIG, pool_layer(CONFIG, rng, mode="avg", k=(3, 3), stride=(1, 1), pad=(1, 1),
                                                in_h=4, in_w=4)),
    "dma_act": lambda rng: (CONFIG, dma_pattern(CONFIG, rng, offset=1)),
    "bram_conv_residual": lambda rng: (BRAM, conv_layer(BRAM, rng, ob=2, in_cb=2, residual=True, k_h=1, k_w=1,
                                                        pad=(0, 0))),
    "bram_conv3x3": lambda rng: (BRAM, conv_layer(BRAM, rng, ob=2, in_cb=2)),
    "bram_pool_max": lambda rng: (BRAM, pool_layer(BRAM, rng, mode="max", k=(2, 2), stride=(2, 2), pad=(0, 0),
                                                   in_h=4, in_w=4)),
    "bram_pool_avg": lambda rng: (BRAM, pool_layer(BRAM, rng, mode="avg", k=(3, 3), stride=(1, 1), pad=(1, 1),
                                                   in_h=4, in_w=4)),
    "bram_pool_avg_1x1": lambda rng: (BRAM, pool_layer(BRAM, rng, mode="avg", k=(1, 1), stride=(1, 1), in_h=3,
                                                       in_w=3)),
    "serial_pool_max": lambda rng: (SERIAL, pool_layer(SERIAL, rng, mode="max", k=(3, 3), stride=(2, 2), pad=(1, 1),
                                                       in_h=5, in_w=5)),
    "bram_dma_act": lambda rng: (BRAM, dma_pattern(BRAM, rng, offset=1)),
    "serial_conv_residual": lambda rng: (SERIAL, conv_layer(SERIAL, rng, ob=2, in_cb=2, residual=True, k_h=1,
                                                            k_w=1, pad=(0, 0))),
}


@pytest.mark.parametrize("backpressure", [0.4])
@pytest.mark.parametrize("case", sorted(CASES))
def test_npu_pysim_matches_emulator(case, backpressure):
    config, (prog, segs, outs) = CASES[case](np.random.default_rng(3))
    dram = np.zeros(config.dram_bytes, np.uint8)
    for a, b in [(0, encode_program(prog))] + segs:
        dram[a:a + len(b)] = np.frombuffer(b, np.uint8)
    emu = Emulator(config)
    emu.write(0, dram)
    emu.run(0)
    regs = run_npu(config, dram, 0, backpressure=backpressure, latency=3, max_cycles=20_000)
    assert regs["STATUS"] == 2 and regs["ERROR"] == 0
    for a, n in outs:
        np.testing.assert_array_equal(dram[a:a + n], emu.dram[a:a + n])
