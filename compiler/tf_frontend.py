"""TensorFlow/Keras front end: a ``.keras``/``.h5`` file or a SavedModel folder → float ONNX.

Conversion goes through tf2onnx at batch size 1. The ONNX graph keeps the
Keras model's input names and its output layer names, so clients ask for the
same tensors as before; the float model is then calibrated and quantized like
any float ONNX model (``tessera compile ... --calibrate``).
"""

from __future__ import annotations

import os
import pathlib

from tessera.errors import UserError

__all__ = ["is_tf_model", "tf_to_onnx", "TfFrontendError"]

OPSET = 17


class TfFrontendError(UserError):
    """A TensorFlow/Keras model cannot be loaded or converted."""


def is_tf_model(path) -> bool:
    p = pathlib.Path(path)
    return p.suffix in (".keras", ".h5") or (p.is_dir() and (p / "saved_model.pb").exists())


def _quiet_tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import tensorflow as tf
        import tf2onnx
    except ImportError as e:
        raise TfFrontendError(f"converting a TensorFlow/Keras model needs tensorflow and tf2onnx ({e.name} "
                              f"is not installed)") from None
    return tf, tf2onnx


def tf_to_onnx(path):
    """Convert a Keras file or a SavedModel folder to an ``onnx.ModelProto`` (float, batch 1)."""
    p = pathlib.Path(path)
    if not p.exists():
        raise TfFrontendError(f"{path}: no such file or folder")
    tf, tf2onnx = _quiet_tf()
    if p.suffix in (".keras", ".h5"):
        import keras
        try:
            model = keras.models.load_model(p, compile=False)
        except Exception as e:  # noqa: BLE001 - Keras raises many types for a bad file
            raise TfFrontendError(f"{path}: cannot load the Keras model: {str(e).splitlines()[0]}") from None
        spec = []
        for t in model.inputs:
            dims = tuple(t.shape[1:])
            if any(d is None for d in dims):
                raise TfFrontendError(f"{path}: input {t.name!r} has an unknown size {tuple(t.shape)}; "
                                      f"give the model a fixed input shape")
            spec.append(tf.TensorSpec((1, *dims), tf.float32, name=t.name.split(":")[0]))
        try:
            proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET)
        except Exception as e:  # noqa: BLE001
            raise TfFrontendError(f"{path}: tf2onnx cannot convert the model: {str(e).splitlines()[0]}") from None
        return proto
    if (p / "saved_model.pb").exists():
        try:
            loaded = tf.saved_model.load(str(p))
            fn = loaded.signatures["serving_default"]
        except Exception as e:  # noqa: BLE001
            raise TfFrontendError(f"{path}: cannot load the SavedModel's serving_default signature: "
                                  f"{str(e).splitlines()[0]}") from None
        spec = []
        for name, t in fn.structured_input_signature[1].items():
            dims = list(t.shape)
            if dims and dims[0] is None:
                dims[0] = 1
            if any(d is None for d in dims):
                raise TfFrontendError(f"{path}: input {name!r} has an unknown size {t.shape}")
            spec.append(tf.TensorSpec(dims, t.dtype, name=name))
        try:
            # tf2onnx wants a tf.function; the signature's output keys become the ONNX output names.
            proto, _ = tf2onnx.convert.from_function(tf.function(fn), input_signature=spec, opset=OPSET)
        except Exception as e:  # noqa: BLE001
            raise TfFrontendError(f"{path}: tf2onnx cannot convert the SavedModel: {str(e).splitlines()[0]}") from None
        return proto
    raise TfFrontendError(f"{path}: not a TensorFlow model (expected .keras, .h5 or a SavedModel folder)")
