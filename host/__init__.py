"""Host side of Tessera: runtime, preprocessing, scoring, the gRPC server and client.

``Runtime`` and the preprocessing import fast; ``PredictionClient`` and
``ModelServer`` load the TensorFlow protobuf modules on first use.
"""

from importlib import import_module

__all__ = [
    "ImageModel",
    "ModelServer",
    "PredictionClient",
    "Preprocess",
    "RunResult",
    "Runtime",
    "imagenet1k",
    "topk",
]

_WHERE = {"Runtime": "runtime", "RunResult": "runtime", "Preprocess": "preprocess", "ImageModel": "model",
          "PredictionClient": "client", "ModelServer": "server", "topk": "labels", "imagenet1k": "labels"}


def __getattr__(name):
    if name in _WHERE:
        return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
