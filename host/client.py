"""``PredictionClient``: score images against a TF-Serving ``PredictionService`` (Tessera's or any other).

::

    from tessera.host import PredictionClient
    client = PredictionClient("localhost", 8500, use_ssl=False, service_name="resnet50")
    top5 = client.score_file("cat.jpg", input_name="images", outputs=["probabilities/Softmax:0"])
    # [(label, probability), ...]
"""

from __future__ import annotations

import json

import grpc
import numpy as np
from google.protobuf import wrappers_pb2

from ._protos import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc
from .labels import labels_for, topk
from .tensors import to_ndarray, to_tensor_proto

__all__ = ["PredictionClient"]


class PredictionClient:
    """A client of one served model.

    Parameters
    ----------
    address : str
        Server host name or address.
    port : int
    use_ssl : bool
        Connect with TLS.
    service_name : str
        The model name (``model_spec.name``) to ask for.
    root_certificates : bytes, optional
        PEM roots to trust with ``use_ssl`` (default: the system's), e.g. a self-signed server certificate.
    timeout : float
        Seconds per call.
    """

    def __init__(self, address: str, port: int, use_ssl: bool = False, service_name: str = "model", *,
                 root_certificates: bytes | None = None, timeout: float = 60.0):
        target = f"{address}:{port}"
        options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
        if use_ssl:
            creds = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self.channel = grpc.secure_channel(target, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.service_name = service_name
        self.timeout = timeout
        self._info: dict | None = None

    # ---- raw calls --------------------------------------------------------------

    def predict(self, inputs: dict, outputs=None) -> dict:
        """Send tensors (numpy arrays, or ``bytes`` / lists of ``bytes`` for encoded images); get arrays back."""
        req = predict_pb2.PredictRequest()
        req.model_spec.name = self.service_name
        for name, value in inputs.items():
            req.inputs[name].CopyFrom(to_tensor_proto(value))
        req.output_filter.extend(outputs or [])
        resp = self.stub.Predict(req, timeout=self.timeout)
        return {name: to_ndarray(t) for name, t in resp.outputs.items()}

    def metadata(self) -> dict:
        """The server's model description; Tessera servers add labels, preprocessing and the scores tensor."""
        if self._info is None:
            req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def", "tessera"])
            req.model_spec.name = self.service_name
            try:
                resp = self.stub.GetModelMetadata(req, timeout=self.timeout)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.INVALID_ARGUMENT:
                    raise
                self._info = {}                # another TF-Serving: no 'tessera' field
            else:
                value = wrappers_pb2.StringValue()
                resp.metadata["tessera"].Unpack(value)
                self._info = json.loads(value.value)
        return self._info

    # ---- scoring ------------------------------------------------------------------

    def score_image(self, data: bytes, input_name: str = "images", outputs=None, *, top: int = 5,
                    labels=None) -> list[tuple[str, float]]:
        """Top-``top`` ``(label, probability)`` for one encoded image (JPEG, PNG, ...).

        ``outputs`` names the scores tensor to rank (its first entry); by default
        the server's. ``labels`` overrides the server's class labels.
        """
        info = self.metadata()
        name = outputs[0] if outputs else info.get("scores")
        result = self.predict({input_name: [bytes(data)]}, [name] if name else None)
        if name is None:
            if len(result) != 1:
                raise ValueError(f"the model has outputs {sorted(result)}: name the scores tensor in outputs=[...]")
            name = next(iter(result))
        scores = np.asarray(result[name], dtype=np.float64).reshape(-1)
        if name == info.get("scores"):
            probabilities = bool(info.get("probabilities"))
        else:   # not Tessera's scores tensor: trust it as probabilities only if it looks like them
            probabilities = bool(scores.min() >= 0 and abs(scores.sum() - 1) < 1e-3)
        if labels is None:
            labels = info.get("labels") if name == info.get("scores") else None
            labels = labels_for(labels, scores.size)
        return topk(scores, labels, top, probabilities=probabilities)

    def score_file(self, path, input_name: str = "images", outputs=None, **kw) -> list[tuple[str, float]]:
        """:meth:`score_image` on the contents of the file ``path``."""
        with open(path, "rb") as f:
            return self.score_image(f.read(), input_name, outputs, **kw)

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
