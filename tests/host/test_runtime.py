"""Runtime: the host packs inputs as the program's I/O table says (here the stem's im2col patches)."""

import numpy as np
import pytest
from tessera.host.runtime import Runtime

from tessera.arch import PRESETS
from tessera.program import FORMAT_VERSION_PATCHES

compiler = pytest.importorskip("tessera.compiler.driver")

SIM = PRESETS["sim"].replace(dram_bytes=8 << 20)


@pytest.fixture(scope="module")
def stem():
    from ..compiler.netgen import NetBuilder, quantize
    b = NetBuilder((1, 3, 21, 18), seed=3)
    y = b.conv("x", 64, k=7, stride=2, pad=(3, 3), relu=True)     # ResNet's stem: patches pay on `sim`
    return quantize(b.model([y]))


def test_runtime_writes_the_stems_im2col_image(stem, tmp_path):
    prog, _ = compiler.compile_model(stem, SIM)
    t = prog.inputs[0]
    assert t.patch == [7, 7] and t.block == 2 and t.cpad == 160
    path = tmp_path / "stem.tsp"
    prog.save(path)
    assert path.read_bytes()[8] == FORMAT_VERSION_PATCHES
    x = np.random.default_rng(0).normal(size=(1, 3, 21, 18)).astype(np.float32)
    with Runtime(path) as rt:
        got = rt.run({"x": x})
        img = np.frombuffer(rt.backend.read(t.addr, t.nbytes), np.int8).reshape(t.stored_height, t.stored_width, 160)
    # independently: quantize, pad with the zero point, one 7×7 receptive field per output pixel
    q = np.clip(np.rint(x[0].transpose(1, 2, 0).astype(np.float64) / t.scale) + t.zero_point, -128, 127)
    q = np.pad(q, ((3, 3), (3, 3), (0, 0)), constant_values=t.zero_point)
    assert (t.stored_height, t.stored_width) == (11, 9)
    for oy in range(11):
        for ox in range(9):
            assert img[oy, ox, :147].tolist() == q[2 * oy:2 * oy + 7, 2 * ox:2 * ox + 7].reshape(-1).tolist()
    assert (img[:, :, 147:] == t.zero_point).all()
    # the same outputs as the program that keeps the image (a slow memory port: space-to-depth)
    plain, _ = compiler.compile_model(stem, SIM.replace(mem_outstanding=1))
    assert plain.inputs[0].patch is None
    with Runtime(plain) as rt:
        want = rt.run({"x": x})
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
