"""Keras/SavedModel → ONNX keeps names and numerics (float, before quantization)."""

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")
ort = pytest.importorskip("onnxruntime")

from tessera.compiler.tf_frontend import TfFrontendError, is_tf_model, tf_to_onnx  # noqa: E402


@pytest.fixture(scope="module")
def tiny_keras(tmp_path_factory):
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 5, 3), name="pixels")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(3, activation="softmax", name="scores")(x)
    model = keras.Model(inp, out)
    d = tmp_path_factory.mktemp("keras")
    model.save(d / "m.keras")
    model.export(str(d / "saved"), verbose=False)
    return d, model


def _run(proto, x):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_tf_to_onnx_keeps_keras_names_and_values(tiny_keras):
    d, model = tiny_keras
    proto = tf_to_onnx(d / "m.keras")
    assert [i.name for i in proto.graph.input] == ["pixels"]
    assert [o.name for o in proto.graph.output] == ["scores"]
    x = np.random.default_rng(0).random((1, 6, 5, 3), dtype=np.float32)
    np.testing.assert_allclose(_run(proto, x), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_tf_to_onnx_converts_saved_model_folder(tiny_keras):
    d, model = tiny_keras
    assert is_tf_model(d / "saved") and is_tf_model(d / "m.keras")
    proto = tf_to_onnx(d / "saved")
    # A SavedModel is served by its signature: input and output keys are the names clients use.
    assert [i.name for i in proto.graph.input] == ["pixels"]
    assert [o.name for o in proto.graph.output] == ["output_0"]
    x = np.random.default_rng(1).random((1, 6, 5, 3), dtype=np.float32)
    np.testing.assert_allclose(_run(proto, x), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_tf_to_onnx_rejects_corrupt_file(tmp_path):
    bad = tmp_path / "broken.keras"
    bad.write_bytes(b"this is not a zip archive")
    with pytest.raises(TfFrontendError, match="broken.keras: cannot load the Keras model"):
        tf_to_onnx(bad)
    with pytest.raises(TfFrontendError, match="no such file"):
        tf_to_onnx(tmp_path / "missing.keras")


@pytest.mark.parametrize("channels", [1, 3])
def test_strip_input_layout_removes_nhwc_conversion(tmp_path, channels):
    from tessera.compiler.tf_frontend import strip_input_layout
    keras.utils.set_random_seed(1)
    inp = keras.Input((5, 7, channels), name="img")
    out = keras.layers.Conv2D(2, 3, name="c")(inp)
    keras.Model(inp, out).save(tmp_path / "m.keras")
    proto = tf_to_onnx(tmp_path / "m.keras")
    x = np.random.default_rng(2).random((1, 5, 7, channels), dtype=np.float32)
    want = _run(proto, x)
    stripped, changed = strip_input_layout(proto)
    # tf2onnx uses a Transpose for 3 channels and a Reshape for one; both must go.
    assert changed == {"img": [1, 5, 7, channels]}
    assert [d.dim_value for d in stripped.graph.input[0].type.tensor_type.shape.dim] == [1, channels, 5, 7]
    assert not any(n.op_type in ("Transpose", "Reshape") and "img" in n.input for n in stripped.graph.node)
    np.testing.assert_allclose(_run(stripped, x.transpose(0, 3, 1, 2)), want, rtol=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_compile_keras_file_keeps_nhwc_input_for_clients(tmp_path, channels):
    from tessera.cli import main
    from tessera.host.runtime import Runtime
    keras.utils.set_random_seed(3)
    inp = keras.Input((8, 6, channels), name="img")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(4, activation="softmax", name="probs")(x)
    model = keras.Model(inp, out)
    model.save(tmp_path / "m.keras")
    rng = np.random.default_rng(4)
    # Calibration as a Keras user keeps it: N samples of the NHWC input, no batch axis per sample.
    np.savez(tmp_path / "calib.npz", img=rng.random((16, 8, 6, channels), dtype=np.float32))
    assert main(["compile", str(tmp_path / "m.keras"), "-o", str(tmp_path / "m.tsp"), "--config", "sim",
                 "--calibrate", str(tmp_path / "calib.npz")]) == 0
    with Runtime(str(tmp_path / "m.tsp")) as rt:
        t = rt.program.inputs[0]
        assert (t.name, t.layout, t.shape) == ("img", "NHWC", [1, 8, 6, channels])
        x = rng.random((1, 8, 6, channels), dtype=np.float32)
        got = rt.run({"img": x})["probs"]
    want = model.predict(x, verbose=0)
    assert got.shape == want.shape
    assert np.abs(got - want).max() < 0.05  # int8 through the NPU vs the float Keras model


def test_keras_to_onnx_large_dense_head_equals_tf2onnx_conversion():
    # VGG-16's 120 M-parameter head is converted without tf2onnx (which needs > 19 GB for it); forcing
    # that path on a small VGG must give the graph tf2onnx gives: same names, same values.
    import onnxruntime as ort

    from tessera.compiler.tf_frontend import dense_head, keras_to_onnx
    from tessera.compiler.zoo import models

    m = models.vgg16(width=4, input_size=32, fc=24, classes=5)
    assert [layer.name for layer in dense_head(m)] == ["flatten", "fc1", "fc2", "predictions"]
    whole, split = keras_to_onnx(m), keras_to_onnx(m, large_head_params=0)
    assert any(n.op_type == "Gemm" and n.name == "fc1/Gemm" for n in split.graph.node)
    assert [n.op_type for n in split.graph.node if n.name.startswith("flatten")] == ["Reshape"]
    assert [o.name for o in split.graph.output] == [o.name for o in whole.graph.output] == ["predictions"]
    assert [i.name for i in split.graph.input] == [i.name for i in whole.graph.input]
    x = np.random.default_rng(1).standard_normal((1, 32, 32, 3)).astype(np.float32)
    run = lambda p: ort.InferenceSession(p.SerializeToString()).run(None, {p.graph.input[0].name: x})[0]  # noqa: E731
    np.testing.assert_allclose(run(split), run(whole), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run(split), m(x).numpy(), rtol=1e-4, atol=1e-6)


def test_dense_head_stops_at_a_branch():
    import keras

    from tessera.compiler.tf_frontend import dense_head

    inp = keras.Input((8,))
    a = keras.layers.Dense(4, name="a")(inp)
    b = keras.layers.Dense(4, name="b")(inp)
    out = keras.layers.Dense(3, activation="softmax", name="out")(keras.layers.Add(name="add")([a, b]))
    assert [layer.name for layer in dense_head(keras.Model(inp, out))] == ["out"]
