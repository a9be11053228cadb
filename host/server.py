"""A TensorFlow-Serving-compatible gRPC server in front of one NPU.

``tessera serve PROGRAM [--port 8500] [--backend B] [--model-name NAME] [--tls-cert F --tls-key F]``

It implements ``tensorflow.serving.PredictionService`` with the official
``tensorflow-serving-api`` messages: ``Predict`` and ``GetModelMetadata``
(``Classify``, ``Regress`` and ``MultiInference`` answer UNIMPLEMENTED), plus
the standard ``grpc.health.v1.Health`` service. See docs/host.md for the
request format, status codes and queueing.
"""

from __future__ import annotations

import json
import queue
import signal
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import any_pb2, wrappers_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tessera.errors import UserError
from tessera.program import Program

from ._protos import (
    get_model_metadata_pb2,
    meta_graph_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
    tensor_shape_pb2,
)
from .model import ImageModel, scores_tensor
from .runtime import Runtime
from .tensors import (
    DT_FLOAT,
    DT_STRING,
    TensorError,
    dtype_name,
    string_values,
    to_ndarray,
    to_tensor_proto,
)

__all__ = ["IMAGE_INPUT", "SERVICE", "SIGNATURES", "ModelServer", "serve_command"]

SERVICE = "tensorflow.serving.PredictionService"
#: Name under which encoded images are always accepted (the seed's clients send "images").
IMAGE_INPUT = "images"
#: Signatures in GetModelMetadata: tensors by the model's input names, or encoded images.
SIGNATURES = ("serving_default", "images")
MODEL_VERSION = 1


class Abort(Exception):
    """Ends an RPC with a gRPC status code and message."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class Device:
    """The single NPU: one worker thread runs jobs from a bounded queue, in arrival order.

    A job is one request: a list of ``Runtime.run`` input dicts (its batch).
    """

    def __init__(self, runtime: Runtime, queue_size: int):
        self.runtime = runtime
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.thread = threading.Thread(target=self._loop, name="tessera-device", daemon=True)
        self.runs = 0
        self.thread.start()

    def submit(self, batch: list[dict], wait: float) -> futures.Future:
        fut: futures.Future = futures.Future()
        try:
            self.queue.put((fut, batch), timeout=wait)
        except queue.Full:
            raise Abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"the device queue is full ({self.queue.maxsize} requests waiting); retry later") from None
        return fut

    def _loop(self):
        while True:
            job = self.queue.get()
            if job is None:
                return
            fut, batch = job
            if not fut.set_running_or_notify_cancel():
                continue                   # the client gave up while the job waited
            try:
                outs = []
                for inputs in batch:
                    outs.append(self.runtime.run(inputs))
                    self.runs += 1
                fut.set_result(outs)
            except BaseException as e:  # noqa: BLE001 - reported to the waiting RPC, the loop goes on
                fut.set_exception(e)

    def close(self):
        """Finish every queued job, then stop the worker."""
        self.queue.put(None)
        self.thread.join()


def _shape_proto(dims) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(d)) for d in dims])


class ModelServer:
    """Serve one program over gRPC.

    Parameters
    ----------
    program : Program or path
    backend : str
        Runtime backend (``emulator``, ``rtl``, ``board``).
    model_name : str, optional
        Name clients put in ``model_spec.name``; default ``meta["name"]`` or the file's stem.
    host, port : str, int
        Address to bind; port 0 picks a free port (see :attr:`port` after :meth:`start`).
    tls_cert, tls_key : path, optional
        PEM certificate chain and private key: serve TLS instead of plaintext.
    queue_size : int
        Requests that may wait for the device; beyond that RESOURCE_EXHAUSTED.
    max_batch : int
        Images or tensors one request may carry.
    runtime : Runtime, optional
        Use this runtime instead of building one (tests inject a slow one).
    **limits
        ``max_pixels`` / ``max_bytes`` for decoding images.
    """

    def __init__(self, program, *, backend: str = "emulator", model_name: str | None = None,
                 host: str = "127.0.0.1", port: int = 8500, tls_cert=None, tls_key=None, queue_size: int = 16,
                 max_batch: int = 64, queue_wait: float = 1.0, runtime: Runtime | None = None, **limits):
        path = None if isinstance(program, Program) else Path(program)
        self.program = program if path is None else Program.load(path)
        self.model_name = model_name or self.program.meta.get("name") or (path.stem if path else "model")
        if bool(tls_cert) != bool(tls_key):
            raise UserError("TLS needs both --tls-cert and --tls-key")
        self.tls = None
        if tls_cert:
            try:
                self.tls = (Path(tls_key).read_bytes(), Path(tls_cert).read_bytes())
            except OSError as e:
                raise UserError(f"{e.filename}: cannot read: {e.strerror}") from None
        if queue_size < 1 or max_batch < 1:
            raise UserError("queue size and max batch must be at least 1")
        self.host, self.port = host, port
        self.backend_name = backend
        self.queue_size, self.max_batch, self.queue_wait = queue_size, max_batch, queue_wait
        # A program takes images if it says how to preprocess them or its input looks like an image;
        # then a bad preprocessing or label spec is an error, not a silent loss of the image input.
        first = self.program.inputs[0] if self.program.inputs else None
        takes_images = "preprocess" in self.program.meta or (
            first is not None and first.channels == 3 and first.layout in ("NCHW", "NHWC"))
        self.image_model = ImageModel(self.program, **limits) if takes_images else None
        self.detector = self.image_model.detector if self.image_model else None
        self.scores_name, self.probabilities = (
            scores_tensor(self.program) if self.program.outputs and not self.detector else (None, False))
        self.inputs = {t.name: t for t in self.program.inputs}
        if self.detector:
            # A detector answers what TF Object Detection API models answer, not its raw head tensors.
            self.output_names = list(self.detector.shapes())
        else:
            self.output_names = [t.name for t in self.program.outputs] + [op["outputs"][0] for op in self.program.host_ops]
        self._own_runtime = runtime is None
        self.runtime = runtime or Runtime(self.program, backend=backend)
        self.device: Device | None = None
        self.grpc: grpc.Server | None = None
        self.health: health.HealthServicer | None = None
        self._stopped = threading.Event()

    # ---- lifecycle ------------------------------------------------------------

    def start(self) -> int:
        """Bind, start serving, return the bound port."""
        workers = self.queue_size + 2          # decode images while the device is busy
        self.device = Device(self.runtime, self.queue_size)
        max_msg = 64 << 20
        self.grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tessera-rpc"),
            maximum_concurrent_rpcs=2 * workers,
            options=[("grpc.max_receive_message_length", max_msg), ("grpc.max_send_message_length", max_msg),
                     ("grpc.so_reuseport", 0)])
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_Servicer(self), self.grpc)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        address = f"{host}:{self.port}"      # IPv6 literals need brackets
        try:
            if self.tls:
                port = self.grpc.add_secure_port(address, grpc.ssl_server_credentials([self.tls]))
            else:
                port = self.grpc.add_insecure_port(address)
        except RuntimeError as e:
            port, err = 0, e
        else:
            err = None
        if not port:
            self.device.close()
            if self._own_runtime:
                self.runtime.close()
            raise UserError(f"cannot listen on {address}: {err or 'address in use or not available'}")
        self.port = port
        self.grpc.start()
        for service in ("", SERVICE, self.model_name):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        return port

    def stop(self, grace: float = 10.0) -> None:
        """Stop accepting requests, let in-flight ones finish (up to ``grace`` s), release the device."""
        if self._stopped.is_set() or self.grpc is None:
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        self.grpc.stop(grace).wait()
        self.device.close()
        if self._own_runtime:
            self.runtime.close()

    def wait(self) -> None:
        self.grpc.wait_for_termination()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    # ---- requests -------------------------------------------------------------

    def check_spec(self, spec) -> None:
        if spec.name != self.model_name:
            raise Abort(grpc.StatusCode.NOT_FOUND,
                        f"model {spec.name!r} is not served here; this server serves {self.model_name!r}")
        if spec.HasField("version") and spec.version.value != MODEL_VERSION:
            raise Abort(grpc.StatusCode.NOT_FOUND,
                        f"model {spec.name!r} has no version {spec.version.value}; it has version {MODEL_VERSION}")
        if spec.version_label:
            raise Abort(grpc.StatusCode.NOT_FOUND, f"model {spec.name!r} has no version label {spec.version_label!r}")
        if spec.signature_name not in ("", *SIGNATURES):
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT,
                        f"signature {spec.signature_name!r} is unknown; signatures: {', '.join(SIGNATURES)}")

    def _image_batch(self, name: str, proto) -> list[np.ndarray]:
        if self.image_model is None:
            raise TensorError(f"input {name!r}: this model takes no images; send "
                              f"{', '.join(f'{t.name} {t.shape}' for t in self.program.inputs)} as numeric tensors")
        images, shape = string_values(proto)
        if len(shape) > 1:
            raise TensorError(f"input {name!r}: DT_STRING tensor of shape {shape}; send a scalar or a vector "
                              f"of encoded images")
        if not images:
            raise TensorError(f"input {name!r}: no images in the tensor")
        if len(images) > self.max_batch:
            raise TensorError(f"input {name!r}: {len(images)} images exceed the batch limit of {self.max_batch}")
        out = []
        for i, data in enumerate(images):
            try:
                out.append(self.image_model.preprocess(data))
            except UserError as e:
                where = f"image {i}" if len(images) > 1 else "image"
                raise TensorError(f"input {name!r}: {where}: {e}") from None
        return out

    def _tensor_batch(self, name: str, proto) -> list[np.ndarray]:
        t = self.inputs[name]
        arr = to_ndarray(proto)
        shape = list(arr.shape)
        if shape == t.shape:
            return [arr]
        if t.shape and t.shape[0] == 1 and len(shape) == len(t.shape) and shape[1:] == t.shape[1:] and shape[0] >= 1:
            if shape[0] > self.max_batch:
                raise TensorError(f"input {name!r}: batch of {shape[0]} exceeds the limit of {self.max_batch}")
            return [arr[i:i + 1] for i in range(shape[0])]
        raise TensorError(f"input {name!r} has shape {shape}; the model expects {t.shape} "
                          f"(or a batch [N, {', '.join(map(str, t.shape[1:]))}])")

    def decode_inputs(self, request) -> list[dict]:
        """The request's tensors → one ``Runtime.run`` input dict per batch item."""
        if not request.inputs:
            raise TensorError(f"the request has no inputs; the model takes {list(self.inputs)} "
                              f"or {IMAGE_INPUT!r} (encoded images)")
        columns = {}
        image_input = self.image_model.input_name if self.image_model else None
        for name, proto in request.inputs.items():
            if name in self.inputs and proto.dtype != DT_STRING:
                columns[name] = self._tensor_batch(name, proto)
                continue
            if name not in self.inputs and name != IMAGE_INPUT:
                raise TensorError(f"unknown input {name!r}; the model's inputs are {list(self.inputs)}"
                                  + (f", or {IMAGE_INPUT!r} for encoded images" if image_input else ""))
            if proto.dtype != DT_STRING:
                raise TensorError(f"input {name!r} takes encoded images (DT_STRING), not {dtype_name(proto.dtype)}")
            if name in self.inputs and name != image_input:
                raise TensorError(f"input {name!r} takes a numeric tensor {self.inputs[name].shape}, not images")
            target = image_input or name
            if target in columns:
                raise TensorError(f"input {target!r} is given twice (as {IMAGE_INPUT!r} and by name)")
            columns[target] = self._image_batch(name, proto)
        missing = [n for n in self.inputs if n not in columns]
        if missing:
            raise TensorError(f"missing input(s) {missing}")
        sizes = {n: len(v) for n, v in columns.items()}
        if len(set(sizes.values())) != 1:
            raise TensorError(f"inputs have different batch sizes: {sizes}")
        n = next(iter(sizes.values()))
        return [{name: col[i] for name, col in columns.items()} for i in range(n)]

    def predict(self, request, context) -> predict_pb2.PredictResponse:
        self.check_spec(request.model_spec)
        wanted = list(request.output_filter) or self.output_names
        unknown = [n for n in wanted if n not in self.output_names]
        if unknown:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT,
                        f"unknown output(s) {unknown} in output_filter; the model's outputs are {self.output_names}")
        batch = self.decode_inputs(request)
        fut = self.device.submit(batch, self.queue_wait)
        remaining = None
        if context is not None:
            # A cancelled RPC's job is dropped if it has not started (at once if the RPC already ended).
            if not context.add_callback(fut.cancel):
                fut.cancel()
            remaining = context.time_remaining()
            if remaining > 1e6:               # no deadline: gRPC reports one at the end of time
                remaining = None
        try:
            outs = fut.result(timeout=remaining)
        except futures.TimeoutError:
            fut.cancel()
            raise Abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline expired while waiting for the device") from None
        except UserError as e:
            raise Abort(grpc.StatusCode.INTERNAL, f"the device failed: {e}") from None
        if self.detector:
            try:
                outs = [self.detector(o) for o in outs]
            except UserError as e:
                raise Abort(grpc.StatusCode.INTERNAL, str(e)) from None
        resp = predict_pb2.PredictResponse()
        resp.model_spec.name = self.model_name
        resp.model_spec.version.value = MODEL_VERSION
        resp.model_spec.signature_name = request.model_spec.signature_name or SIGNATURES[0]
        for name in wanted:
            parts = [np.asarray(o[name], dtype=np.float32) for o in outs]
            value = parts[0] if len(parts) == 1 else (
                np.concatenate(parts) if parts[0].ndim and parts[0].shape[0] == 1 else np.stack(parts))
            resp.outputs[name].CopyFrom(to_tensor_proto(value))
        return resp

    # ---- metadata -------------------------------------------------------------

    def signature_defs(self) -> get_model_metadata_pb2.SignatureDefMap:
        TI = meta_graph_pb2.TensorInfo
        outputs = {}
        for name, shape in (self.detector.shapes() if self.detector else {}).items():
            outputs[name] = TI(name=name, dtype=DT_FLOAT, tensor_shape=_shape_proto(shape))
        for t in () if self.detector else self.program.outputs:
            outputs[t.name] = TI(name=t.name, dtype=DT_FLOAT, tensor_shape=_shape_proto(t.shape))
        for op in () if self.detector else self.program.host_ops:
            src = outputs.get(op["inputs"][0])
            outputs[op["outputs"][0]] = TI(name=op["outputs"][0], dtype=DT_FLOAT,
                                           tensor_shape=src.tensor_shape if src else None)
        sigs = get_model_metadata_pb2.SignatureDefMap()
        d = sigs.signature_def["serving_default"]
        d.method_name = "tensorflow/serving/predict"
        for t in self.program.inputs:
            d.inputs[t.name].CopyFrom(TI(name=t.name, dtype=DT_FLOAT, tensor_shape=_shape_proto(t.shape)))
        for name, info in outputs.items():
            d.outputs[name].CopyFrom(info)
        if self.image_model is not None:
            d = sigs.signature_def["images"]
            d.method_name = "tensorflow/serving/predict"
            d.inputs[IMAGE_INPUT].CopyFrom(TI(name=IMAGE_INPUT, dtype=DT_STRING, tensor_shape=_shape_proto([-1])))
            for name, info in outputs.items():
                d.outputs[name].CopyFrom(info)
        return sigs

    def tessera_metadata(self) -> dict:
        im = self.image_model
        return {"model": self.model_name, "version": MODEL_VERSION, "backend": self.backend_name,
                "config": self.program.config.name, "config_hash": self.program.config.hash(),
                "inputs": [{"name": t.name, "shape": t.shape, "layout": t.layout} for t in self.program.inputs],
                "outputs": self.output_names, "image_input": IMAGE_INPUT if im else None,
                "preprocess": im.preprocess.to_dict() if im else None,
                "task": "detection" if self.detector else "classification",
                "scores": self.scores_name, "probabilities": self.probabilities,
                "labels": im.labels if im else None}

    def metadata(self, request) -> get_model_metadata_pb2.GetModelMetadataResponse:
        self.check_spec(request.model_spec)
        if not request.metadata_field:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT,
                        "GetModelMetadataRequest must name at least one metadata_field ('signature_def')")
        resp = get_model_metadata_pb2.GetModelMetadataResponse()
        resp.model_spec.name = self.model_name
        resp.model_spec.version.value = MODEL_VERSION
        for field in request.metadata_field:
            packed = any_pb2.Any()
            if field == "signature_def":
                packed.Pack(self.signature_defs())
            elif field == "tessera":
                packed.Pack(wrappers_pb2.StringValue(value=json.dumps(self.tessera_metadata())))
            else:
                raise Abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"metadata field {field!r} is not supported; fields: 'signature_def', 'tessera'")
            resp.metadata[field].CopyFrom(packed)
        return resp


class _Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Maps a request to :class:`ModelServer` and every failure to a status code; never lets one escape."""

    def __init__(self, server: ModelServer):
        self.server = server

    def _call(self, fn, request, context):
        try:
            return fn(request, context)
        except Abort as e:
            context.abort(e.code, e.message)
        except UserError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except Exception as e:  # noqa: BLE001 - an internal error fails this request only
            context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}")

    def Predict(self, request, context):
        return self._call(self.server.predict, request, context)

    def GetModelMetadata(self, request, context):
        return self._call(lambda r, c: self.server.metadata(r), request, context)


# ---- the CLI -------------------------------------------------------------------------

def serve_command(args) -> int:
    server = ModelServer(args.program, backend=args.backend, model_name=args.model_name, host=args.host,
                         port=args.port, tls_cert=args.tls_cert, tls_key=args.tls_key)
    port = server.start()
    done = threading.Event()

    def _signal(signum, frame):
        done.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _signal)
    scheme = "TLS" if server.tls else "plaintext"
    print(f"tessera serve: model {server.model_name!r} on {args.host}:{port} ({scheme}, {args.backend} backend); "
          f"Ctrl-C stops", file=sys.stderr, flush=True)
    while not done.wait(0.5):
        pass
    print("tessera serve: stopping (finishing in-flight requests)", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    server.stop()
    print(f"tessera serve: stopped after {time.perf_counter() - t0:.1f} s, {server.device.runs} runs served",
          file=sys.stderr, flush=True)
    return 0
