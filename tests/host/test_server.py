"""The gRPC server over 127.0.0.1, driven by TensorFlow Serving's official stub and messages."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from google.protobuf import wrappers_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tessera.host import tinyclassifier as tc
from tessera.host._protos import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc
from tessera.host.model import ImageModel
from tessera.host.runtime import Runtime
from tessera.host.server import SERVICE, ModelServer

from .conftest import photo
from .test_preprocess import huge_png

tf = pytest.importorskip("tensorflow")
from tensorflow_serving.apis import classification_pb2  # noqa: E402

LOOPBACK = "127.0.0.1"


@pytest.fixture(scope="module")
def server(program):
    srv = ModelServer(program, host=LOOPBACK, port=0)
    srv.start()
    yield srv
    srv.stop(grace=5)


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(f"{LOOPBACK}:{server.port}") as ch:
        yield prediction_service_pb2_grpc.PredictionServiceStub(ch)


@pytest.fixture(scope="module")
def local(program):
    """The emulator's answer for an image, computed without the server."""
    model = ImageModel(program)
    rt = Runtime(program)
    yield lambda data: rt.run(model.inputs(data))
    rt.close()


def request(inputs, name="tiny", outputs=(), **spec):
    req = predict_pb2.PredictRequest()
    req.model_spec.name = name
    for k, v in spec.items():
        if k == "version":
            req.model_spec.version.value = v
        else:
            setattr(req.model_spec, k, v)
    for k, v in inputs.items():
        req.inputs[k].CopyFrom(v)
    req.output_filter.extend(outputs)
    return req


def images_tensor(*datas):
    # What the seed's clients send: a DT_STRING vector of encoded images.
    return tf.make_tensor_proto(list(datas), shape=[len(datas)])


def test_predict_encoded_image_equals_emulator(stub, local):
    data = photo(7, fmt="JPEG")
    resp = stub.Predict(request({"images": images_tensor(data)}), timeout=30)
    want = local(data)
    assert set(resp.outputs) == {tc.LOGITS, tc.PROBS}
    for name in want:
        np.testing.assert_array_equal(tf.make_ndarray(resp.outputs[name]), want[name])
    assert resp.model_spec.name == "tiny" and resp.model_spec.version.value == 1


def test_predict_without_deadline(stub, local):
    data = photo(8)
    call = stub.Predict.future(request({"images": images_tensor(data)}, outputs=[tc.PROBS]))  # no RPC deadline
    np.testing.assert_array_equal(tf.make_ndarray(call.result(timeout=30).outputs[tc.PROBS]), local(data)[tc.PROBS])


def test_predict_numeric_tensor_by_model_input_name(stub, program):
    x = np.random.default_rng(0).normal(0, 40, size=(1, 3, 16, 16)).astype(np.float32)
    resp = stub.Predict(request({tc.INPUT: tf.make_tensor_proto(x)}, outputs=[tc.PROBS]), timeout=30)
    with Runtime(program) as rt:
        want = rt.run({tc.INPUT: x})[tc.PROBS]
    assert list(resp.outputs) == [tc.PROBS]
    np.testing.assert_array_equal(tf.make_ndarray(resp.outputs[tc.PROBS]), want)


def test_predict_batch_of_images(stub, local):
    datas = [photo(i) for i in (11, 12, 13)]
    resp = stub.Predict(request({"images": images_tensor(*datas)}, outputs=[tc.LOGITS]), timeout=30)
    got = tf.make_ndarray(resp.outputs[tc.LOGITS])
    assert got.shape == (3, 1000)
    for row, data in zip(got, datas):
        np.testing.assert_array_equal(row, local(data)[tc.LOGITS][0])


def test_get_model_metadata_signatures(stub):
    req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def", "tessera"])
    req.model_spec.name = "tiny"
    resp = stub.GetModelMetadata(req, timeout=30)
    sigs = get_model_metadata_pb2.SignatureDefMap()
    assert resp.metadata["signature_def"].Unpack(sigs)
    default = sigs.signature_def["serving_default"]
    assert [d.size for d in default.inputs[tc.INPUT].tensor_shape.dim] == [1, 3, 16, 16]
    assert default.inputs[tc.INPUT].dtype == tf.float32.as_datatype_enum
    assert set(default.outputs) == {tc.LOGITS, tc.PROBS}
    assert [d.size for d in default.outputs[tc.PROBS].tensor_shape.dim] == [1, 1000]
    assert sigs.signature_def["images"].inputs["images"].dtype == tf.string.as_datatype_enum
    info = wrappers_pb2.StringValue()
    resp.metadata["tessera"].Unpack(info)
    assert '"scores": "probabilities/Softmax:0"' in info.value and '"style": "caffe"' in info.value


def test_health_checking(server):
    with grpc.insecure_channel(f"{LOOPBACK}:{server.port}") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", SERVICE, "tiny"):
            resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as e:
            health.Check(health_pb2.HealthCheckRequest(service="other"), timeout=10)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


BAD = {
    "corrupt-jpeg": (lambda: request({"images": images_tensor(photo(1, fmt="JPEG")[:300])}),
                     grpc.StatusCode.INVALID_ARGUMENT, "image"),
    "not-an-image": (lambda: request({"images": images_tensor(b"<html>hello</html>")}),
                     grpc.StatusCode.INVALID_ARGUMENT, "not an image"),
    "too-large": (lambda: request({"images": images_tensor(huge_png(30000, 30000))}),
                  grpc.StatusCode.INVALID_ARGUMENT, "exceeds the limit"),
    "too-many-bytes": (lambda: request({"images": images_tensor(b"\xff\xd8\xff" + bytes(33 << 20))}),
                       grpc.StatusCode.INVALID_ARGUMENT, "exceeds the limit of 33554432 bytes"),
    "second-of-batch-bad": (lambda: request({"images": images_tensor(photo(1), b"xx")}),
                            grpc.StatusCode.INVALID_ARGUMENT, "image 1"),
    "wrong-name": (lambda: request({"pixels": images_tensor(photo(1))}),
                   grpc.StatusCode.INVALID_ARGUMENT, "unknown input 'pixels'"),
    "wrong-shape": (lambda: request({tc.INPUT: tf.make_tensor_proto(np.zeros((1, 3, 8, 8), np.float32))}),
                    grpc.StatusCode.INVALID_ARGUMENT, "has shape [1, 3, 8, 8]"),
    "wrong-dtype": (lambda: request({tc.INPUT: tf.make_tensor_proto(np.zeros((1, 3, 16, 16), bool))}),
                    grpc.StatusCode.INVALID_ARGUMENT, "DT_BOOL is not supported"),
    "float-as-images": (lambda: request({"images": tf.make_tensor_proto(np.zeros(3, np.float32))}),
                        grpc.StatusCode.INVALID_ARGUMENT, "takes encoded images (DT_STRING), not DT_FLOAT"),
    "no-inputs": (lambda: request({}), grpc.StatusCode.INVALID_ARGUMENT, "no inputs"),
    "bad-output-filter": (lambda: request({"images": images_tensor(photo(1))}, outputs=["Softmax:0"]),
                          grpc.StatusCode.INVALID_ARGUMENT, "unknown output(s) ['Softmax:0']"),
    "bad-signature": (lambda: request({"images": images_tensor(photo(1))}, signature_name="classify"),
                      grpc.StatusCode.INVALID_ARGUMENT, "signature 'classify'"),
    "unknown-model": (lambda: request({"images": images_tensor(photo(1))}, name="resnet50"),
                      grpc.StatusCode.NOT_FOUND, "model 'resnet50' is not served here"),
    "unknown-version": (lambda: request({"images": images_tensor(photo(1))}, version=3),
                        grpc.StatusCode.NOT_FOUND, "no version 3"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_requests_get_status_and_server_keeps_serving(stub, local, case):
    make, code, message = BAD[case]
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(make(), timeout=30)
    assert e.value.code() == code
    assert message in e.value.details()
    data = photo(99)
    resp = stub.Predict(request({"images": images_tensor(data)}, outputs=[tc.PROBS]), timeout=30)
    np.testing.assert_array_equal(tf.make_ndarray(resp.outputs[tc.PROBS]), local(data)[tc.PROBS])


def test_metadata_errors_and_unimplemented_methods(stub):
    req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    req.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError) as e:
        stub.GetModelMetadata(req, timeout=30)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    req.model_spec.name = "tiny"
    del req.metadata_field[:]
    req.metadata_field.append("graph")
    with pytest.raises(grpc.RpcError) as e:
        stub.GetModelMetadata(req, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'graph'" in e.value.details()
    creq = classification_pb2.ClassificationRequest()
    creq.model_spec.name = "tiny"
    with pytest.raises(grpc.RpcError) as e:
        stub.Classify(creq, timeout=30)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_load_concurrent_clients_each_get_their_own_answer(server, local):
    clients, per_client = 4, 25
    datas = {(c, i): photo(1000 + 100 * c + i, fmt="JPEG" if i % 2 else "PNG")
             for c in range(clients) for i in range(per_client)}
    want = {key: local(data)[tc.PROBS] for key, data in datas.items()}
    runs_before = server.device.runs

    def client(c):
        mismatches = []
        with grpc.insecure_channel(f"{LOOPBACK}:{server.port}") as ch:
            s = prediction_service_pb2_grpc.PredictionServiceStub(ch)
            for i in range(per_client):
                resp = s.Predict(request({"images": images_tensor(datas[c, i])}, outputs=[tc.PROBS]), timeout=60)
                if not np.array_equal(tf.make_ndarray(resp.outputs[tc.PROBS]), want[c, i]):
                    mismatches.append(i)
        return mismatches

    t0 = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(client, range(clients)))
    assert results == [[]] * clients
    assert server.device.runs - runs_before == clients * per_client
    assert time.monotonic() - t0 < 60
    # The answers differ between images, so equality above is not vacuous.
    assert len({w.tobytes() for w in want.values()}) == len(want)


class SlowRuntime(Runtime):
    """A runtime that takes ``delay`` seconds per run, to hold requests in flight."""

    def __init__(self, program, delay):
        super().__init__(program)
        self.delay = delay
        self.started = threading.Event()
        self.runs = 0               # runs begun

    def run(self, inputs):
        self.runs += 1
        self.started.set()
        time.sleep(self.delay)
        return super().run(inputs)


def predict_future(port, data, timeout=30):
    ch = grpc.insecure_channel(f"{LOOPBACK}:{port}")
    s = prediction_service_pb2_grpc.PredictionServiceStub(ch)
    return ch, s.Predict.future(request({"images": images_tensor(data)}, outputs=[tc.PROBS]), timeout=timeout)


def test_graceful_shutdown_finishes_in_flight_requests(program, local):
    rt = SlowRuntime(program, 0.3)
    srv = ModelServer(program, host=LOOPBACK, port=0, runtime=rt)
    port = srv.start()
    datas = [photo(40 + i) for i in range(3)]
    calls = [predict_future(port, d) for d in datas]
    assert rt.started.wait(10)
    # All three in flight before the stop (run or waiting in the device queue): a request the server has
    # not received yet when it stops is a new one, and is refused (seen on a loaded machine).
    def received():
        return rt.runs + srv.device.queue.qsize()

    deadline = time.monotonic() + 10
    while received() < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert received() == 3
    stopper = threading.Thread(target=srv.stop, kwargs={"grace": 10})
    stopper.start()
    try:
        for (ch, fut), data in zip(calls, datas):
            np.testing.assert_array_equal(tf.make_ndarray(fut.result().outputs[tc.PROBS]), local(data)[tc.PROBS])
            ch.close()
        stopper.join(10)
        assert not stopper.is_alive()
        ch, fut = predict_future(port, datas[0], timeout=5)
        with pytest.raises(grpc.RpcError) as e:
            fut.result()
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        ch.close()
    finally:
        srv.stop(grace=0)
        rt.close()


def test_full_queue_is_resource_exhausted_and_deadline_is_kept(program, local):
    rt = SlowRuntime(program, 0.2)
    srv = ModelServer(program, host=LOOPBACK, port=0, runtime=rt, queue_size=1, queue_wait=0.05)
    port = srv.start()
    try:
        calls = [predict_future(port, photo(60 + i)) for i in range(6)]
        codes = []
        for ch, fut in calls:
            try:
                fut.result()
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as e:
                codes.append(e.code())
                assert "queue is full" in e.details()
            ch.close()
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes and grpc.StatusCode.OK in codes
        assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        ch, fut = predict_future(port, photo(70), timeout=0.05)
        with pytest.raises(grpc.RpcError) as e:
            fut.result()
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        ch.close()
        time.sleep(0.3)
        ch, fut = predict_future(port, photo(71))
        np.testing.assert_array_equal(tf.make_ndarray(fut.result().outputs[tc.PROBS]), local(photo(71))[tc.PROBS])
        ch.close()
    finally:
        srv.stop(grace=0)
        rt.close()


def test_cancelled_request_is_dropped_before_it_runs(program):
    rt = SlowRuntime(program, 0.3)
    srv = ModelServer(program, host=LOOPBACK, port=0, runtime=rt)
    port = srv.start()
    try:
        ch1, first = predict_future(port, photo(80))
        assert rt.started.wait(10)
        ch2, second = predict_future(port, photo(81))
        time.sleep(0.1)                  # the second request now waits in the device queue
        second.cancel()
        first.result()
        time.sleep(0.5)
        assert srv.device.runs == 1
        ch1.close()
        ch2.close()
    finally:
        srv.stop(grace=0)
        rt.close()


def test_non_image_model_serves_tensors_only(program):
    from tessera.errors import UserError
    from tessera.program import Program, TensorInfo
    vec = Program.from_bytes(program.to_bytes())
    t = vec.inputs[0]
    # The same memory image seen as 16 feature maps: not an image, so the server takes no DT_STRING for it.
    vec.inputs = [TensorInfo("features", [1, 16, 16, 16], "NCHW", t.addr, 16, 16, 16, t.cpad, t.scale, t.zero_point)]
    vec.meta = {"name": "vec"}
    bad = Program.from_bytes(vec.to_bytes())
    bad.meta = {"preprocess": {"style": "caffe"}}
    with pytest.raises(UserError, match=r"not a batch-1, 3-channel \(colour\) or 1-channel \(grey\) image"):
        ModelServer(bad, port=0)
    with ModelServer(vec, host=LOOPBACK, port=0) as srv, grpc.insecure_channel(f"{LOOPBACK}:{srv.port}") as ch:
        s = prediction_service_pb2_grpc.PredictionServiceStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            s.Predict(request({"images": images_tensor(photo(1))}, name="vec"), timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "takes no images" in e.value.details()
        x = np.zeros((1, 16, 16, 16), np.float32)
        resp = s.Predict(request({"features": tf.make_tensor_proto(x)}, name="vec", outputs=[tc.PROBS]), timeout=30)
        assert tf.make_ndarray(resp.outputs[tc.PROBS]).shape == (1, 1000)


class FailingRuntime(Runtime):
    """A runtime whose device stops with an error on the first run only."""

    def __init__(self, program):
        super().__init__(program)
        self.failed = False

    def run(self, inputs):
        if not self.failed:
            from tessera.isa import ErrorCode
            from tessera.sim.emulator import NpuError
            self.failed = True
            raise NpuError(ErrorCode.WATCHDOG, 0x40, "injected")
        return super().run(inputs)


def test_device_error_is_internal_and_server_keeps_serving(program, local):
    rt = FailingRuntime(program)
    with ModelServer(program, host=LOOPBACK, port=0, runtime=rt) as srv:
        ch, fut = predict_future(srv.port, photo(90))
        with pytest.raises(grpc.RpcError) as e:
            fut.result()
        assert e.value.code() == grpc.StatusCode.INTERNAL and "WATCHDOG" in e.value.details()
        ch.close()
        ch, fut = predict_future(srv.port, photo(91))
        np.testing.assert_array_equal(tf.make_ndarray(fut.result().outputs[tc.PROBS]), local(photo(91))[tc.PROBS])
        ch.close()
    rt.close()
