"""Replays (tessera.sim.replay): every run leaves the external memory a full run leaves."""

import numpy as np
import pytest
from tessera.compiler.driver import compile_model
from tessera.host.runtime import Runtime
from tessera.sim.emulator_kernels import Int8Gemm

from tessera.arch import get_config
from tessera.isa import Buffer
from tests.compiler import netgen


@pytest.fixture(scope="module")
def programs():
    cfg = get_config("sim")
    nets = [netgen.resnet(in_shape=(1, 3, 20, 18), widths=(16, 40), blocks=2, bottleneck=True, seed=3),
            netgen.densenet(in_shape=(1, 3, 16, 14), seed=4)]
    return [compile_model(netgen.quantize(m), cfg)[0] for m in nets]


def test_replay_matches_a_fresh_emulator_on_every_image(programs):
    rng = np.random.default_rng(9)
    for prog in programs:
        rt = Runtime(prog, backend="emulator")
        shape = prog.inputs[0].shape
        for i in range(4):
            x = {prog.inputs[0].name: rng.normal(0, 1, shape).astype(np.float32)}
            got = rt.run(x)
            # From the third image on, the replays skip their weight LOADs (the weights never change).
            assert (rt.backend.emu._pending != []) == (i >= 2), i
            fresh = Runtime(prog, backend="emulator")
            want = fresh.run(x)
            for name in want:
                np.testing.assert_array_equal(got[name], want[name], err_msg=f"image {i}")
            assert np.array_equal(rt.backend.emu.dram, fresh.backend.emu.dram), f"image {i}: external memory"
            for buf in Buffer:              # (replays that skip their weight LOADs included)
                np.testing.assert_array_equal(rt.backend.emu.buffers[buf], fresh.backend.emu.buffers[buf],
                                              err_msg=f"image {i}: {buf.name} buffer")
            for stat in ("macs", "dram_read_bytes", "dram_write_bytes", "instructions", "by_opcode"):
                assert getattr(rt.backend.emu.stats, stat) == getattr(fresh.backend.emu.stats, stat), stat
        assert rt.backend.emu._traces, "the later images were replays"


def test_int8_gemm_prepared_equals_the_definition():
    gemm = Int8Gemm("onnxruntime")
    rng = np.random.default_rng(12)
    for m, k, n in [(1, 1, 1), (49, 4608, 16), (98, 2304, 48), (3, 5, 7)]:
        for b in (np.full((k, n), -128, np.int8), np.full((k, n), 127, np.int8),
                  rng.integers(-128, 128, (k, n), dtype=np.int8)):
            run = gemm.prepare(b)
            for a in (np.zeros((m, k), np.uint8), np.full((m, k), 255, np.uint8),
                      rng.integers(0, 256, (m, k), dtype=np.uint8)):
                want = (a.astype(np.int64) - 128) @ b.astype(np.int64)
                got = run(a)
                assert got.dtype == np.int32
                np.testing.assert_array_equal(got, want)
    assert Int8Gemm("float32").prepare(np.zeros((2, 2), np.int8)) is None



def test_prepared_gemm_bound_to_buffers_sees_new_operand_bytes():
    gemm = Int8Gemm("onnxruntime")
    rng = np.random.default_rng(13)
    m, k, n = 28, 256, 64
    b = rng.integers(-128, 128, (k, n), dtype=np.int8)
    a = np.empty((m, k), np.uint8)
    out = np.empty((m, n), np.int32)
    run = gemm.prepare(b).bind(a, out)
    for _ in range(3):
        a[...] = rng.integers(0, 256, (m, k), dtype=np.uint8)      # new bytes, same buffer
        got = run()
        assert got is out
        np.testing.assert_array_equal(got, (a.astype(np.int64) - 128) @ b.astype(np.int64))
    # A buffer it cannot bind (not contiguous) still gives the product.
    wide = np.zeros((m, 2 * k), np.uint8)
    view = wide[:, ::2]
    view[...] = a
    np.testing.assert_array_equal(gemm.prepare(b).bind(view, out)(), (a.astype(np.int64) - 128) @ b.astype(np.int64))
