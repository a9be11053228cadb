"""Whole NPU under cocotb/Verilator against the emulator, bit for bit (one simulation serves every test)."""

import numpy as np
import pytest
from tessera.sim.emulator import NpuError
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

#: Small but shape-complete: rows = 2×lanes, ACT words narrower than the bus, PARAM words of 6 beats.
CONFIG = NpuConfig(name="rtl-test", lanes=4, rows=8, abuf_words=2048, wbuf_words=512, accbuf_words=512,
                   pbuf_words=32, bus_bytes=16, dram_bytes=4 << 20, mem_latency=8, queue_depth=4, token_depth=4)
BACKPRESSURE = [0.0, 0.5]


@pytest.fixture(scope="module")
def sim():
    from tessera.sim.rtl import RtlSim
    with RtlSim(CONFIG) as s:
        yield s


def run_both(sim, prog, segs, outs, *, backpressure=0.0, **opts):
    """Run on the emulator and the RTL from the same image; returns (emulator error or None, RTL CSRs)."""
    return runs_match(CONFIG, sim, prog, segs, outs, timeout_cycles=2_000_000, backpressure=backpressure, **opts)


LAYERS = {
    "conv3x3": {},
    "conv1x1": {"k_h": 1, "k_w": 1, "pad": (0, 0)},
    "conv_multiblock": {"in_cb": 3, "ob": 2, "in_h": 4, "in_w": 5},
    "conv_stride2": {"stride": (2, 2), "in_h": 7, "in_w": 6},
    "conv_stride_w": {"stride": (1, 3), "in_h": 4, "in_w": 9, "k_h": 2, "k_w": 3, "pad": (0, 2)},
    "conv_dilated": {"dil": (2, 3), "in_h": 7, "in_w": 8, "pad": (2, 3)},
    "conv_no_pad_rect": {"k_h": 3, "k_w": 1, "pad": (0, 0), "in_h": 6, "in_w": 3, "pad_value": -7},
    "conv_accumulate": {"accumulate": True, "in_cb": 2},
    "epilogue_relu": {"relu": True, "ob": 2},
    "epilogue_residual": {"residual": True, "ob": 2, "k_h": 1, "k_w": 1, "pad": (0, 0)},
}


@pytest.mark.parametrize("backpressure", BACKPRESSURE)
@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_npu_conv_layer_matches_emulator(sim, layer, backpressure):
    prog, segs, outs = conv_layer(CONFIG, np.random.default_rng(hash(layer) & 0xFFFF), **LAYERS[layer])
    err, _ = run_both(sim, prog, segs, outs, backpressure=backpressure)
    assert err is None


POOLS = {
    "max2x2": {},
    "max3x3_pad": {"k": (3, 3), "stride": (2, 2), "pad": (1, 1), "in_h": 7, "in_w": 7},
    "avg2x2": {"mode": "avg"},
    "avg_global": {"mode": "avg", "k": (5, 4), "stride": (1, 1), "in_h": 5, "in_w": 4, "cb": 3},
    "avg3x3_pad": {"mode": "avg", "k": (3, 3), "stride": (1, 1), "pad": (1, 1), "in_h": 4, "in_w": 4},
}


@pytest.mark.parametrize("backpressure", BACKPRESSURE)
@pytest.mark.parametrize("pool", sorted(POOLS))
def test_npu_pool_matches_emulator(sim, pool, backpressure):
    prog, segs, outs = pool_layer(CONFIG, np.random.default_rng(len(pool)), **POOLS[pool])
    err, _ = run_both(sim, prog, segs, outs, backpressure=backpressure)
    assert err is None


DMAS = {
    "act_strided": {},
    "act_unaligned_rows": {"offset": 1, "rows": 4, "cols": 3},
    "act_single_row": {"rows": 1, "cols": 40, "buf_stride": 0},
    "wgt": {"buf": "wgt", "rows": 2, "cols": 3},
    "param": {"buf": "param", "rows": 2, "cols": 2},
}


@pytest.mark.parametrize("backpressure", BACKPRESSURE)
@pytest.mark.parametrize("dma", sorted(DMAS))
def test_npu_dma_matches_emulator(sim, dma, backpressure):
    prog, segs, outs = dma_pattern(CONFIG, np.random.default_rng(7), **DMAS[dma])
    err, _ = run_both(sim, prog, segs, outs, backpressure=backpressure)
    assert err is None


@pytest.mark.parametrize("backpressure", BACKPRESSURE)
def test_npu_handwritten_program_matches_emulator(sim, backpressure):
    prog, _ = conv_relu_pool(CONFIG, seed=3)
    _, r_rtl = handwritten_runs_match(prog, sim, backpressure=backpressure, seed=5)
    assert r_rtl.backend == "rtl"
    assert r_rtl.utilization == pytest.approx(r_rtl.macs / (r_rtl.cycles * CONFIG.macs_per_cycle))


FAULTS = fault_programs(CONFIG)


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_npu_fault_sets_error_code_and_stops(sim, fault):
    err, regs = run_both(sim, FAULTS[fault](), [], [])
    assert err is not None, "the emulator accepted the faulty program"
    assert (ErrorCode(regs["ERROR"]), regs["ERROR_PC"]) == (err.code, err.pc)
    assert regs["STATUS"] == 6  # DONE | ERROR, not busy


def test_npu_watchdog_ends_a_stalled_run(sim):
    prog, segs, outs = pool_layer(CONFIG, np.random.default_rng(1))
    for a, b in [(0, encode_program(prog))] + segs:
        sim.write(a, b)
    regs = sim.run(0, mem_stall=True, watchdog=500, timeout_cycles=100_000)
    assert not regs["timeout"]
    assert ErrorCode(regs["ERROR"]) == ErrorCode.WATCHDOG
    assert regs["cycles"] < 1000
    # The next run on the same NPU is unaffected.
    err, _ = run_both(sim, prog, segs, outs)
    assert err is None


def test_npu_reset_mid_run_then_rerun_is_correct(sim):
    prog, segs, outs = conv_layer(CONFIG, np.random.default_rng(11), in_cb=2, ob=2)
    for a, b in [(0, encode_program(prog))] + segs + [(a, bytes(n)) for a, n in outs]:
        sim.write(a, b)
    regs = sim.run(0, reset_after=150)
    assert regs["reset"] and regs["STATUS"] == 0
    err, _ = run_both(sim, prog, segs, outs, backpressure=0.3)
    assert err is None


def test_npu_config_hash_csr(sim):
    regs = sim.run(0, timeout_cycles=10) if False else sim._call("csr")[0]
    assert regs["CONFIG_HASH"] == int(CONFIG.hash(), 16) & 0xFFFFFFFF


@pytest.fixture(scope="module")
def small_resnet():
    from tessera.compiler.driver import compile_model

    from tests.compiler.netgen import quantize, resnet
    return compile_model(quantize(resnet(in_shape=(1, 3, 12, 10), widths=(8, 12), blocks=1)), CONFIG)[0]


@pytest.mark.parametrize("backpressure", BACKPRESSURE)
def test_npu_compiled_resnet_matches_emulator(sim, small_resnet, backpressure):
    emu, rtl = compiled_runs_match(small_resnet, sim, backpressure, seed=int(backpressure * 10))
    assert rtl.macs == emu.macs and 0 < rtl.utilization <= 1


def test_cli_run_backend_rtl_matches_emulator(tmp_path, capsys):
    import json

    from tessera.cli import main
    prog, _ = conv_relu_pool(CONFIG, seed=8)
    path = tmp_path / "p.tsp"
    prog.save(path)
    t = prog.inputs[0]
    np.savez(tmp_path / "in.npz", **{t.name: np.random.default_rng(2).normal(0, 1, t.shape).astype(np.float32)})
    outs = {}
    for backend in ("emulator", "rtl"):
        assert main(["run", str(path), "--backend", backend, "--input", str(tmp_path / "in.npz"),
                     "--output", str(tmp_path / f"{backend}.npz"), "--json"]) == 0
        stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert stats["backend"] == backend
        with np.load(tmp_path / f"{backend}.npz") as f:
            outs[backend] = {k: f[k] for k in f.files}
    assert stats["cycles"] > 0 and 0 < stats["utilization"] <= 1 and stats["macs"] > 0
    for k in outs["emulator"]:
        np.testing.assert_array_equal(outs["rtl"][k], outs["emulator"][k])


def test_rtl_backend_raises_npu_error_like_the_emulator(sim):
    from tessera.host.runtime import EmulatorBackend
    from tessera.sim.rtl import RtlBackend
    prog, _ = conv_relu_pool(CONFIG, seed=1)
    # Point the first LOAD past the end of external memory.
    bad = prog.instructions[0].replace(dram_addr=CONFIG.dram_bytes - CONFIG.act_word_bytes)
    prog.instructions = [bad] + prog.instructions[1:]
    errors = []
    for be in (EmulatorBackend(prog), RtlBackend(prog, sim=sim)):
        with pytest.raises(NpuError) as e:
            be.execute()
        errors.append((e.value.code, e.value.pc))
    assert errors[0] == errors[1] == (ErrorCode.DRAM_RANGE, 0)


def test_rtl_timeout_stops_the_run_and_the_npu_stays_usable(sim):
    prog, segs, outs = conv_layer(CONFIG, np.random.default_rng(12), in_cb=2)
    for a, b in [(0, encode_program(prog))] + segs:
        sim.write(a, b)
    regs = sim.run(0, timeout_cycles=50)
    assert regs["timeout"] and regs["STATUS"] & 1  # still busy when the host gave up
    err, _ = run_both(sim, prog, segs, outs)
    assert err is None
