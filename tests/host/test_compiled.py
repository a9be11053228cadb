"""A compiled network (ONNX → tessera compile) scored and served like the hand-assembled one."""

import numpy as np
import pytest

from tessera.arch import PRESETS
from tessera.cli import main
from tessera.host import PredictionClient
from tessera.host.model import ImageModel
from tessera.host.runtime import Runtime
from tessera.host.server import ModelServer

from .conftest import photo

compiler = pytest.importorskip("tessera.compiler.driver")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    from ..compiler.netgen import quantize, resnet
    q = quantize(resnet(in_shape=(1, 3, 24, 24), widths=(16,), blocks=1, classes=1000, softmax=True))
    program, _ = compiler.compile_model(q, PRESETS["sim"].replace(dram_bytes=8 << 20), name="net")
    # What the compiler is to record for a Keras ResNet (docs/host.md): the Caffe style.
    program.meta["preprocess"] = {"style": "caffe"}
    path = tmp_path_factory.mktemp("compiled") / "net.tsp"
    program.save(path)
    return program, path


def test_compiled_network_score_and_serve_agree(compiled, tmp_path, capsys):
    program, path = compiled
    model = ImageModel(program)
    assert model.probabilities and len(model.labels) == 1000
    img = tmp_path / "x.jpg"
    img.write_bytes(photo(33, fmt="JPEG"))
    with Runtime(program) as rt:
        want = model.top(rt.run(model.inputs(img.read_bytes())), 3)
    assert main(["score", str(path), str(img), "--top", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(None, 1)[1] for line in out[1:]] == [lab for lab, _ in want]
    with ModelServer(path, host="127.0.0.1", port=0) as srv, \
            PredictionClient("127.0.0.1", srv.port, service_name="net") as client:
        got = client.score_file(str(img), top=3)
    assert [lab for lab, _ in got] == [lab for lab, _ in want]
    np.testing.assert_allclose([p for _, p in got], [p for _, p in want], rtol=1e-6)
