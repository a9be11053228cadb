"""Keras (``.keras``) and TensorFlow SavedModel inputs: converted to ONNX with tf2onnx.

Needs the ``bench`` extra's tensorflow-cpu and tf2onnx (imported only here, and
only when such a model is compiled). Inputs stay as the source model has them
(NHWC images for Keras); the front end maps the NHWC→NCHW transpose tf2onnx
inserts onto the NPU's pixel-major layout, so it costs nothing. The result is
a float model: compile it with ``--calibrate``.
"""

from __future__ import annotations

import os

from .ir import CompileError

__all__ = ["tf_to_onnx", "is_tf_model"]


def is_tf_model(path: str) -> bool:
    return path.endswith(".keras") or (os.path.isdir(path) and os.path.exists(os.path.join(path, "saved_model.pb")))


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import tensorflow as tf
        import tf2onnx
    except ImportError:
        raise CompileError("compiling Keras/SavedModel models needs tensorflow and tf2onnx: "
                           "pip install -e '.[bench]' (or convert the model to ONNX with tf2onnx first)") from None
    return tf, tf2onnx


def tf_to_onnx(path: str, opset: int = 17):
    """Convert a ``.keras`` file or a SavedModel folder (batch 1) to an ONNX ModelProto."""
    tf, tf2onnx = _tf()
    try:
        if path.endswith(".keras"):
            model = tf.keras.models.load_model(path, compile=False)
            spec = tuple(tf.TensorSpec((1,) + tuple(i.shape[1:]), i.dtype, name=i.name.split(":")[0])
                         for i in model.inputs)
            proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
        else:
            loaded = tf.saved_model.load(path)
            fn = loaded.signatures["serving_default"]
            _, kwargs = fn.structured_input_signature
            spec = tuple(tf.TensorSpec((1,) + tuple(s.shape[1:]), s.dtype, name=k) for k, s in kwargs.items())
            proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=opset)
    except CompileError:
        raise
    except Exception as e:  # noqa: BLE001 - TensorFlow raises many types for bad files
        raise CompileError(f"{path}: cannot convert with tf2onnx: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    return proto
