"""The sequential NPU (PicoRV32 + firmware, hdl/seq) under cocotb/Verilator against the emulator, bit for bit.

The same programs as tests/rtl/test_npu.py, through the same simulation top and host code: only the core
inside ``Npu`` differs. One simulation serves every test.
"""

import numpy as np
import pytest
from tessera.sim.handwritten import conv_relu_pool

from tessera.arch import NpuConfig
from tessera.isa import ErrorCode, encode_program

from .programs import (
    compiled_runs_match,
    conv_layer,
    dma_pattern,
    fault_programs,
    handwritten_runs_match,
    pool_layer,
    runs_match,
)

#: rows = 2×lanes; a 4-byte bus (one CPU word a beat); DRAM large enough for programs.py's addresses.
CONFIG = NpuConfig(name="seq-rtl-test", lanes=4, rows=8, abuf_words=2048, wbuf_words=512, accbuf_words=512,
                   pbuf_words=32, bus_bytes=4, dram_bytes=4 << 20, mem_latency=3, queue_depth=4, token_depth=4,
                   pool_fl32=False, core="sequential")
BACKPRESSURE = [0.0, 0.5]
TIMEOUT = 20_000_000


@pytest.fixture(scope="module")
def sim():
    from tessera.sim.rtl import RtlSim
    with RtlSim(CONFIG) as s:
        yield s


def run_both(sim, prog, segs, outs, *, backpressure=0.0, **opts):
    """Run on the emulator and the RTL from the same image; returns (emulator error or None, RTL CSRs)."""
    return runs_match(CONFIG, sim, prog, segs, outs, timeout_cycles=TIMEOUT, backpressure=backpressure, **opts)


LAYERS = {
    "conv3x3": {},
    "conv_stride_dilated": {"stride": (2, 1), "dil": (1, 2), "in_h": 7, "in_w": 6, "pad": (2, 1)},
    "conv_accumulate_multiblock": {"accumulate": True, "in_cb": 2, "ob": 2, "relu": True},
    "epilogue_residual": {"residual": True, "ob": 2, "k_h": 1, "k_w": 1, "pad": (0, 0)},
}


@pytest.mark.parametrize("backpressure", BACKPRESSURE)
@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_seq_conv_layer_matches_emulator(sim, layer, backpressure):
    prog, segs, outs = conv_layer(CONFIG, np.random.default_rng(len(layer)), **LAYERS[layer])
    err, regs = run_both(sim, prog, segs, outs, backpressure=backpressure)
    assert err is None and regs["cycles"] > 0


@pytest.mark.parametrize("backpressure", BACKPRESSURE)
@pytest.mark.parametrize("mode", ["max", "avg"])
def test_seq_pool_matches_emulator(sim, mode, backpressure):
    prog, segs, outs = pool_layer(CONFIG, np.random.default_rng(2), mode=mode, k=(3, 3), stride=(2, 2),
                                  pad=(1, 1), in_h=7, in_w=7)
    err, _ = run_both(sim, prog, segs, outs, backpressure=backpressure)
    assert err is None


@pytest.mark.parametrize("backpressure", BACKPRESSURE)
@pytest.mark.parametrize("dma", [{}, {"offset": 1, "rows": 4, "cols": 3}, {"buf": "wgt", "rows": 2, "cols": 3}])
def test_seq_dma_matches_emulator(sim, dma, backpressure):
    prog, segs, outs = dma_pattern(CONFIG, np.random.default_rng(7), **dma)
    err, _ = run_both(sim, prog, segs, outs, backpressure=backpressure)
    assert err is None


FAULTS = fault_programs(CONFIG)


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_seq_fault_sets_error_code_and_pc(sim, fault):
    err, regs = run_both(sim, FAULTS[fault](), [], [])
    assert err is not None, "the emulator accepted the faulty program"
    assert (ErrorCode(regs["ERROR"]), regs["ERROR_PC"]) == (err.code, err.pc)
    assert regs["STATUS"] == 6  # DONE | ERROR, not busy


def test_seq_watchdog_ends_a_stalled_run_and_the_next_run_is_correct(sim):
    prog, segs, outs = pool_layer(CONFIG, np.random.default_rng(1))
    for a, b in [(0, encode_program(prog))] + segs:
        sim.write(a, b)
    regs = sim.run(0, mem_stall=True, watchdog=500, timeout_cycles=100_000)
    assert not regs["timeout"] and ErrorCode(regs["ERROR"]) == ErrorCode.WATCHDOG
    err, _ = run_both(sim, prog, segs, outs)
    assert err is None


def test_seq_reset_mid_run_then_rerun_is_correct(sim):
    prog, segs, outs = conv_layer(CONFIG, np.random.default_rng(11), in_cb=2, ob=2)
    for a, b in [(0, encode_program(prog))] + segs + [(a, bytes(n)) for a, n in outs]:
        sim.write(a, b)
    regs = sim.run(0, reset_after=5000)
    assert regs["reset"] and regs["STATUS"] == 0
    err, _ = run_both(sim, prog, segs, outs, backpressure=0.3)
    assert err is None


def test_seq_handwritten_program_through_the_runtime_matches_emulator(sim):
    prog, _ = conv_relu_pool(CONFIG, seed=3)
    handwritten_runs_match(prog, sim, backpressure=0.3, seed=5)


def test_seq_compiled_classifier_matches_emulator(sim):
    from tessera.host.tinyclassifier import tiny_classifier
    emu_stats, rtl_stats = compiled_runs_match(tiny_classifier(CONFIG, classes=10), sim, 0.0, seed=4)
    assert rtl_stats.macs == emu_stats.macs


def test_seq_config_hash_csr(sim):
    regs = sim._call("csr")[0]
    assert regs["CONFIG_HASH"] == int(CONFIG.hash(), 16) & 0xFFFFFFFF
