"""The reduced SSD300 served as a detector: TF Object Detection API outputs over TF Serving's stub.

The program comes from the zoo tests' cached QDQ model (build/zoo-ci), so a warm run compiles in
under a second; the meta is what ``tessera zoo build ssd300`` writes (``program_meta``).
"""

import argparse
import json

import grpc
import numpy as np
import pytest
from google.protobuf import wrappers_pb2
from tessera.compiler.zoo import program_meta
from tessera.host import detection
from tessera.host._protos import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tessera.host.model import ImageModel
from tessera.host.runtime import Runtime
from tessera.host.score import score_command
from tessera.host.server import ModelServer

from tessera.program import Program

from .conftest import photo

tf = pytest.importorskip("tensorflow")
zoo_tests = pytest.importorskip("tests.compiler.zoo.test_zoo_networks")

LOOPBACK = "127.0.0.1"
NAME = "ssd"


@pytest.fixture(scope="module")
def ssd(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ssd")
    _, prog, _, _ = zoo_tests._compile("ssd300", tmp)
    prog.meta.update(program_meta("ssd300"), name=NAME)       # what `tessera zoo build ssd300` writes
    path = tmp / "ssd.tsp"
    prog.save(path)
    return path


@pytest.fixture(scope="module")
def local(ssd):
    """Detections computed without the server: preprocess, run on the emulator, decode on the host."""
    model = ImageModel(Program.load(ssd))
    with Runtime(model.program) as rt:
        yield lambda data: model.detections(rt.run(model.inputs(data)))


@pytest.fixture(scope="module")
def stub(ssd):
    with ModelServer(ssd, host=LOOPBACK, port=0) as srv, grpc.insecure_channel(f"{LOOPBACK}:{srv.port}") as ch:
        yield prediction_service_pb2_grpc.PredictionServiceStub(ch)


def test_serve_detector_predict_equals_local_detections(stub, local):
    data = photo(3, size=(64, 48))
    req = predict_pb2.PredictRequest()
    req.model_spec.name = NAME
    req.inputs["images"].CopyFrom(tf.make_tensor_proto([data], shape=[1]))
    resp = stub.Predict(req, timeout=60)
    assert set(resp.outputs) == set(detection.OUTPUTS)
    want = local(data)
    for name in detection.OUTPUTS:
        np.testing.assert_array_equal(tf.make_ndarray(resp.outputs[name]), want[name])
    n = int(want["num_detections"][0])
    # Random weights still give a full, ordered, padded answer: boxes [ymin, xmin, ymax, xmax], 1-based classes.
    assert 0 < n <= 100 and want["detection_boxes"].shape == (1, 100, 4)
    scores, classes = want["detection_scores"][0], want["detection_classes"][0]
    assert np.all(np.diff(scores[:n]) <= 0) and np.all(scores[n:] == 0)
    assert set(classes[:n].astype(int).tolist()) <= {1, 2, 3, 4}


def test_serve_detector_metadata_names_detection_outputs(stub):
    req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def", "tessera"])
    req.model_spec.name = NAME
    resp = stub.GetModelMetadata(req, timeout=30)
    sigs = get_model_metadata_pb2.SignatureDefMap()
    assert resp.metadata["signature_def"].Unpack(sigs)
    for sig in ("serving_default", "images"):
        outs = sigs.signature_def[sig].outputs
        assert set(outs) == set(detection.OUTPUTS)
        assert [d.size for d in outs["detection_boxes"].tensor_shape.dim] == [1, 100, 4]
        assert [d.size for d in outs["num_detections"].tensor_shape.dim] == [1]
    info = wrappers_pb2.StringValue()
    resp.metadata["tessera"].Unpack(info)
    assert json.loads(info.value)["task"] == "detection"


def test_score_detector_prints_detections(ssd, tmp_path, capsys, local):
    img = tmp_path / "a.png"
    img.write_bytes(photo(3, size=(64, 48)))
    args = argparse.Namespace(program=str(ssd), images=[str(img)], backend="emulator", top=3, json=True)
    assert score_command(args) == 0
    (res,) = json.loads(capsys.readouterr().out)
    want = local(img.read_bytes())
    assert "top" not in res and len(res["detections"]) == 3
    for i, d in enumerate(res["detections"]):
        assert d["class"] == int(want["detection_classes"][0, i]) and d["label"] == f"class_{d['class']}"
        assert d["score"] == pytest.approx(float(want["detection_scores"][0, i]))
        np.testing.assert_allclose(d["box"], want["detection_boxes"][0, i], atol=1e-4)
