"""`tessera compile` end to end: CLI, report, calibration, and clear errors (exit 2, one line, no traceback)."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper as h
from tessera.compiler.calibrate import quantize_float_model
from tessera.compiler.driver import compile_model
from tessera.compiler.passes import FoldBatchNorm

from tessera.arch import PRESETS
from tessera.cli import main

from .netgen import (
    NetBuilder,
    assert_network,
    check_against_ort,
    ort_run,
    quantize,
    resnet,
)

SIM = PRESETS["sim"]


@pytest.fixture(scope="module")
def qmodel_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("drv")
    q = quantize(resnet(in_shape=(1, 3, 10, 9), widths=(16, 24), blocks=1))
    p = d / "net.onnx"
    onnx.save(q, p)
    return p


def test_cli_compile_report_and_run(qmodel_path, tmp_path, capsys):
    out = tmp_path / "net.tsp"
    assert main(["compile", str(qmodel_path), "-o", str(out), "--config", "sim", "--report"]) == 0
    text = capsys.readouterr().out
    assert "| layer | op |" in text and "MACs" in text and "instructions" in text
    assert text.count("\n| ") >= 8          # one row per NPU layer
    x = np.random.default_rng(3).normal(size=(1, 3, 10, 9)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    assert main(["run", str(out), "--input", str(tmp_path / "in.npz"), "--output", str(tmp_path / "o.npz")]) == 0
    q = onnx.load(qmodel_path)
    name = q.graph.output[0].name
    got = np.load(tmp_path / "o.npz")[name]
    ref = ort_run(q, x)[name]
    from tessera.program import Program
    scale = Program.load(out).outputs[0].scale
    assert np.abs(got - ref).max() / scale <= 2.001


def test_cli_compile_json(qmodel_path, tmp_path, capsys):
    out = tmp_path / "net.tsp"
    assert main(["compile", str(qmodel_path), "-o", str(out), "--report", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["instructions"] > 10 and d["layers"][0]["macs"] > 0 and "buffers" in d["layers"][0]


def _run_cli(*args):
    return subprocess.run([sys.executable, "-m", "tessera.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_unsupported_op_exits_2_with_one_line(tmp_path):
    q = quantize(resnet(in_shape=(1, 3, 8, 8), widths=(8,), blocks=1))
    # Swap the final Gemm's consumer for an op the NPU does not have.
    last = q.graph.output[0].name
    q.graph.node.append(h.make_node("Sin", [last], ["weird"], name="my_sin_node"))
    q.graph.output[0].name = "weird"
    p = tmp_path / "bad.onnx"
    onnx.save(q, p)
    r = _run_cli("compile", str(p), "-o", str(tmp_path / "x.tsp"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert "my_sin_node" in lines[0] and "(Sin)" in lines[0] and "supported:" in lines[0]


def test_cli_float_model_without_calibration_exits_2(tmp_path):
    b = NetBuilder((1, 3, 6, 6))
    p = tmp_path / "f.onnx"
    onnx.save(b.model([b.conv("x", 4)]), p)
    r = _run_cli("compile", str(p), "-o", str(tmp_path / "x.tsp"))
    assert r.returncode == 2 and "--calibrate" in r.stderr and "Traceback" not in r.stderr


def test_cli_missing_and_broken_inputs_exit_2(tmp_path, qmodel_path):
    assert _run_cli("compile", str(tmp_path / "none.onnx"), "-o", "x.tsp").returncode == 2
    r = _run_cli("compile", str(qmodel_path), "-o", str(tmp_path / "no" / "such" / "dir.tsp"))
    assert r.returncode == 2 and "dir.tsp" in r.stderr
    k = tmp_path / "m.keras"
    k.write_bytes(b"zip")
    r = _run_cli("compile", str(k), "-o", str(tmp_path / "x.tsp"))
    assert r.returncode == 2 and "m.keras" in r.stderr and "Traceback" not in r.stderr
    r = _run_cli("compile", str(tmp_path), "-o", str(tmp_path / "x.tsp"))
    assert r.returncode == 2 and "saved_model.pb" in r.stderr


def test_keras_model_with_nhwc_input(tmp_path):
    tf = pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    tf.keras.utils.set_random_seed(0)
    inp = tf.keras.Input((9, 7, 3), batch_size=1, name="img")
    y = tf.keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    y = tf.keras.layers.MaxPooling2D()(y)
    y = tf.keras.layers.GlobalAveragePooling2D()(y)
    y = tf.keras.layers.Dense(5, activation="softmax", name="probs")(y)
    m = tf.keras.Model(inp, y)
    path = tmp_path / "tiny.keras"
    m.save(path)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "cal.npz", img=rng.uniform(0, 1, (4, 1, 9, 7, 3)).astype(np.float32))
    out = tmp_path / "k.tsp"
    assert main(["compile", str(path), "-o", str(out), "--calibrate", str(tmp_path / "cal.npz")]) == 0
    from tessera.host.runtime import Runtime
    rt = Runtime(str(out), check_hazards=True)
    assert rt.program.inputs[0].layout == "NHWC" and rt.program.inputs[0].shape == [1, 9, 7, 3]
    x = rng.uniform(0, 1, (1, 9, 7, 3)).astype(np.float32)
    got = rt.run({"img": x})
    ref = m(x).numpy()
    name = rt.output_names[-1]
    # Against the float Keras model: int8 quantization error only.
    assert np.abs(got[name] - ref).max() < 0.05


def test_calibrate_npz_matches_onnxruntime_quantization(tmp_path):
    m = resnet(in_shape=(1, 3, 9, 8), widths=(12,), blocks=1)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "cal.npz", x=rng.normal(size=(6, 1, 3, 9, 8)).astype(np.float32))
    prog, _ = compile_model(m, SIM, calibrate=str(tmp_path / "cal.npz"))
    # The same calibration through onnxruntime gives the model the program must agree with.
    q = quantize_float_model(FoldBatchNorm()(onnx.ModelProto.FromString(m.SerializeToString())),
                             str(tmp_path / "cal.npz"))
    assert_network(check_against_ort(q, SIM, n_inputs=2, program=prog))


def test_calibrate_image_folder(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (12, 14, 3), dtype=np.uint8)).save(tmp_path / f"img{i}.png")
    (tmp_path / "preprocess.json").write_text(json.dumps({"style": "torch"}))
    b = NetBuilder((1, 3, 8, 8))
    m = b.model([b.conv("x", 4, relu=True)])
    fpath = tmp_path / "f.onnx"
    onnx.save(m, fpath)
    assert main(["compile", str(fpath), "-o", str(tmp_path / "c.tsp"), "--calibrate", str(tmp_path)]) == 0


def test_calibrate_bad_npz_is_user_error(tmp_path):
    b = NetBuilder((1, 3, 6, 6))
    np.savez(tmp_path / "cal.npz", other=np.zeros((2, 1, 3, 6, 6), np.float32))
    from tessera.compiler.ir import CompileError
    with pytest.raises(CompileError, match="no array for input"):
        compile_model(b.model([b.conv("x", 4)]), SIM, calibrate=str(tmp_path / "cal.npz"))
