"""The TensorFlow / TF-Serving protobuf modules, imported once and quietly.

They live in the ``tensorflow`` and ``tensorflow-serving-api`` packages;
importing them loads the ``tensorflow`` package (a few seconds), so only the
gRPC server, the client and the tensor conversions import this module.
"""

import os

# TensorFlow's C++ start-up chatter (CPU features, missing CUDA) is noise for a server log.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    model_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

__all__ = [
    "get_model_metadata_pb2",
    "meta_graph_pb2",
    "model_pb2",
    "predict_pb2",
    "prediction_service_pb2_grpc",
    "tensor_pb2",
    "tensor_shape_pb2",
    "types_pb2",
]
