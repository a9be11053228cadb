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

__all__ = ["TfFrontendError", "dense_head", "is_tf_model", "keras_to_onnx", "strip_input_layout", "tf_to_onnx"]

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


def _is_keras_model(obj) -> bool:
    return hasattr(obj, "inputs") and hasattr(obj, "outputs") and hasattr(obj, "save")


#: Dense parameters at the end of a model above which its classifier head is converted without tf2onnx:
#: tf2onnx keeps many copies of every constant and needs more than 19 GB for VGG-16's 120 M-parameter head.
LARGE_HEAD_PARAMS = 20_000_000

#: Layers a classifier head may consist of (a plain chain after the last convolution or pooling).
_HEAD_LAYERS = {"Flatten", "Dense", "Dropout", "Activation", "ReLU", "Softmax"}
_HEAD_ACTIVATIONS = {"linear": None, "relu": "Relu", "softmax": "Softmax"}


def dense_head(model) -> list:
    """The chain of Flatten/Dense/activation layers that ends ``model`` (empty if it has none).

    Each layer of the chain has one input, the output of the layer before it, and one output.
    """
    if len(model.outputs) != 1:
        return []
    head = []
    for layer in reversed(model.layers):
        kind = type(layer).__name__
        if kind not in _HEAD_LAYERS or (kind == "Dense" and layer.activation.__name__ not in _HEAD_ACTIVATIONS):
            break
        if kind == "Activation" and layer.activation.__name__ not in _HEAD_ACTIVATIONS:
            break
        if head and head[-1].input is not layer.output:
            break
        head.append(layer)
    head.reverse()
    if head and head[-1].output is not model.outputs[0]:
        return []
    return head


def _head_params(head) -> int:
    return sum(int(w.numpy().size) for layer in head for w in layer.weights)


def _append_head(proto, head, source):
    """Append ``head`` (Keras layers on the converted trunk's NHWC output) to ``proto`` as ONNX nodes.

    Keras flattens NHWC in row-major order and a Dense layer is ``x @ kernel + bias``: a Reshape of
    the same NHWC tensor to ``(-1, features)`` and ``Gemm(x, kernel, bias)`` compute exactly that.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    g = proto.graph
    x = g.output[0].name
    del g.output[:]
    for layer in head:
        kind = type(layer).__name__
        name = layer.name
        steps = []
        if kind == "Flatten":
            # A Reshape to (-1, features), as tf2onnx writes Keras' Flatten.
            shape = f"{name}/shape"
            g.initializer.append(numpy_helper.from_array(
                np.array([-1, int(np.prod(layer.output.shape[1:]))], np.int64), shape))
            steps.append(("Reshape", [x, shape], {}))
        elif kind == "Dense":
            kernel, bias = (w.numpy().astype(np.float32) for w in layer.weights)
            g.initializer.extend([numpy_helper.from_array(kernel, f"{name}/kernel"),
                                  numpy_helper.from_array(bias, f"{name}/bias")])
            steps.append(("Gemm", [x, f"{name}/kernel", f"{name}/bias"], {}))
            act = _HEAD_ACTIVATIONS[layer.activation.__name__]
            if act:
                steps.append((act, None, {"axis": -1} if act == "Softmax" else {}))
        elif kind in ("Activation", "ReLU", "Softmax"):
            act = "Relu" if kind == "ReLU" else "Softmax" if kind == "Softmax" else \
                _HEAD_ACTIVATIONS[layer.activation.__name__]
            if act:
                steps.append((act, None, {"axis": -1} if act == "Softmax" else {}))
        # Dropout is the identity at inference.
        for i, (op, inputs, attrs) in enumerate(steps):
            y = f"{name}/{op}" if i < len(steps) - 1 else name
            g.node.append(helper.make_node(op, inputs or [x], [y], name=f"{name}/{op}", **attrs))
            x = y
    out = head[-1].name
    if x != out:
        g.node.append(helper.make_node("Identity", [x], [out], name=f"{out}/Identity"))
    g.output.append(helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None))
    try:
        return onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    except Exception as e:  # noqa: BLE001 - onnx raises several types
        raise TfFrontendError(f"{source}: the converted classifier head is inconsistent: "
                              f"{str(e).splitlines()[0]}") from None


def keras_to_onnx(model, *, source: str = "model", large_head_params: int = LARGE_HEAD_PARAMS):
    """Convert an in-memory Keras model to an ``onnx.ModelProto`` (float, batch 1).

    A classifier head of more than ``large_head_params`` Dense parameters (VGG-16's) is converted
    directly (Reshape → Gemm → activation), the rest through tf2onnx.
    """
    tf, tf2onnx = _quiet_tf()
    head = dense_head(model)
    if head and _head_params(head) > large_head_params and type(head[0]).__name__ == "Flatten":
        import keras

        trunk = keras.Model(model.inputs, head[0].input, name=f"{model.name}_trunk")
        return _append_head(keras_to_onnx(trunk, source=source, large_head_params=float("inf")), head, source)
    spec = []
    for t in model.inputs:
        dims = tuple(t.shape[1:])
        if any(d is None for d in dims):
            raise TfFrontendError(f"{source}: input {t.name!r} has an unknown size {tuple(t.shape)}; "
                                  f"give the model a fixed input shape")
        spec.append(tf.TensorSpec((1, *dims), tf.float32, name=t.name.split(":")[0]))
    try:
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET)
    except Exception as e:  # noqa: BLE001
        raise TfFrontendError(f"{source}: tf2onnx cannot convert the model: {str(e).splitlines()[0]}") from None
    return proto


def tf_to_onnx(path):
    """Convert a Keras file, a SavedModel folder or an in-memory Keras model to an ``onnx.ModelProto``.

    The result is float, at batch 1.
    """
    if _is_keras_model(path):
        return keras_to_onnx(path, source=getattr(path, "name", "model"))
    p = pathlib.Path(path)
    if not p.exists():
        raise TfFrontendError(f"{path}: no such file or folder")
    tf, tf2onnx = _quiet_tf()
    if p.suffix in (".keras", ".h5"):
        import keras

        from .zoo.models import custom_objects
        try:
            model = keras.models.load_model(p, compile=False, custom_objects=custom_objects())
        except Exception as e:  # noqa: BLE001 - Keras raises many types for a bad file
            raise TfFrontendError(f"{path}: cannot load the Keras model: {str(e).splitlines()[0]}") from None
        return keras_to_onnx(model, source=str(path))
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


def _const_ints(model, name):
    import onnx.numpy_helper as nh
    for init in model.graph.initializer:
        if init.name == name:
            return nh.to_array(init).astype("int64").tolist()
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            return nh.to_array(n.attribute[0].t).astype("int64").tolist()
    return None


def strip_input_layout(model):
    """Remove the NHWC→NCHW conversion tf2onnx puts right after each 4-D image input.

    Keras models take ``N×H×W×C`` images; tf2onnx converts them with a Transpose
    (perm 0,3,1,2) or, for one channel, an equivalent Reshape. The NPU stores
    images pixel-major anyway, so the conversion moves no data: the input is
    redeclared as ``N×C×H×W`` and the host is told the source layout instead.
    Returns ``(model, {input name: original NHWC shape})``; the model is modified in place.
    """
    g = model.graph
    inits = {i.name for i in g.initializer}
    changed = {}
    for inp in g.input:
        if inp.name in inits:
            continue
        dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        if len(dims) != 4 or 0 in dims:
            continue
        users = [n for n in g.node if inp.name in n.input]
        if len(users) != 1:
            continue
        node = users[0]
        n_, h, w, c = dims
        if node.op_type == "Transpose":
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            if perm != [0, 3, 1, 2]:
                continue
        elif node.op_type == "Reshape":
            if c != 1 or _const_ints(model, node.input[1]) not in ([n_, 1, h, w], [-1, 1, h, w]):
                continue
        else:
            continue
        out = node.output[0]
        if any(o.name == out for o in g.output):
            continue
        for other in g.node:
            for i, name in enumerate(other.input):
                if name == out:
                    other.input[i] = inp.name
        g.node.remove(node)
        dead = [i for i in g.initializer if i.name in node.input[1:] and not any(i.name in n.input for n in g.node)]
        for i in dead:
            g.initializer.remove(i)
        for d, v in zip(inp.type.tensor_type.shape.dim, (n_, c, h, w)):
            d.dim_value = v
        changed[inp.name] = [n_, h, w, c]
    return model, changed
