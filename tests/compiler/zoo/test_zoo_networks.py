"""Every zoo architecture, reduced: Keras → tf2onnx → onnxruntime QDQ → Tessera → emulator vs onnxruntime.

Each test is the whole user path at CI size (random weights, random calibration data): every
convolution, pooling and fully connected layer must run on the NPU, the only host ops are the
ones the ISA cannot express (Softmax, SSD's L2 normalization and the gathering of its head
outputs), and the emulator agrees with onnxruntime on the same QDQ model as DESIGN.md requires.
"""

import hashlib
import importlib.metadata
import json
import os
import pathlib

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")
ort = pytest.importorskip("onnxruntime")

from tessera.compiler.driver import compile_model, format_report  # noqa: E402
from tessera.compiler.zoo import calibration_data, compile_keras, models  # noqa: E402
from tessera.host import detection  # noqa: E402
from tessera.host.runtime import Runtime  # noqa: E402

from ..netgen import assert_network  # noqa: E402

#: ONNX ops that are network layers: each must become NPU instructions
LAYER_OPS = {"Conv", "Gemm", "MatMul", "MaxPool", "AveragePool", "GlobalAveragePool"}
#: host op kinds the ISA cannot express, and what each may contain
HOST_OPS = {"Softmax", "L2Normalization", "Concat"}
DATA_MOVES = {"Transpose", "Reshape", "Concat", "FakeQuant", "Identity", "Const"}


ROOT = pathlib.Path(__file__).resolve().parents[3]
#: tf2onnx dominates these tests (up to a minute for ResNet-152 on a loaded 2-core machine), so the
#: QDQ model is kept in build/ under a key of everything that shapes it; a fresh clone converts.
CACHE = ROOT / "build" / "zoo-ci"
_KEY_SOURCES = ("compiler/zoo/models.py", "compiler/zoo/__init__.py", "compiler/tf_frontend.py",
                "compiler/calibrate.py", "compiler/passes.py")


def _key(name):
    h = hashlib.sha256(name.encode())
    for f in _KEY_SOURCES:
        h.update((ROOT / f).read_bytes())
    for pkg in ("keras", "tensorflow", "tf2onnx", "onnxruntime", "onnx"):
        h.update(importlib.metadata.version(pkg).encode())
    return h.hexdigest()[:16]


def _compile(name, tmp_path):
    import onnx
    keras.utils.set_random_seed(0)
    path = CACHE / f"{name}-{_key(name)}.onnx"
    side = path.with_suffix(".json")
    if path.exists() and side.exists():
        qdq, info = onnx.load(path), json.loads(side.read_text())
        prog, reports = compile_model(qdq, "sim", name=name)
        for t in prog.inputs:
            t.shape, t.layout = info["shape"], "NHWC"
        return info["shape"], prog, reports, qdq
    model = models.reduced(name)
    cal = tmp_path / "calibration.npz"
    np.savez(cal, **calibration_data(model, samples=4))
    prog, reports, qdq = compile_keras(model, "sim", cal, name=name)
    CACHE.mkdir(parents=True, exist_ok=True)
    onnx.save(qdq, path)
    side.write_text(json.dumps({"shape": prog.inputs[0].shape}))
    return prog.inputs[0].shape, prog, reports, qdq


def _ort(qdq, x_nchw):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(qdq.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: x_nchw})))


def _out_scale(prog, name):
    """Quantization step of an output: the NPU tensor's, or the last fake quantization of its host op."""
    for t in prog.outputs:
        if t.name == name:
            return t.scale
    op = next(h for h in prog.host_ops if name in h["outputs"])
    if op["op"] == "Softmax":
        return None
    return [s for s in op["attrs"]["steps"] if s["op"] == "FakeQuant"][-1]["attrs"]["scale"]


def _check_layers_on_npu(prog, reports, qdq):
    layers = {n.name for n in qdq.graph.node if n.op_type in LAYER_OPS}
    # A convolution fused with its residual Add reports as "conv+add".
    on_npu = {part for r in reports for part in r.name.split("+")}
    assert layers and layers <= on_npu, sorted(layers - on_npu)[:5]
    assert {h["op"] for h in prog.host_ops} <= HOST_OPS
    for h in prog.host_ops:
        if h["op"] == "Concat":
            assert {s["op"] for s in h["attrs"]["steps"]} <= DATA_MOVES, h["name"]
    text = format_report(reports, prog)
    for h in prog.host_ops:
        assert f"host op {h['op']} ({h['name']})" in text


def _compare(prog, qdq, x_nhwc, check_hazards=False):
    ref = _ort(qdq, np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))
    with Runtime(prog, backend="emulator", check_hazards=check_hazards) as rt:
        got = rt.run({prog.inputs[0].name: x_nhwc})
    results = []
    for name, want in ref.items():
        scale = _out_scale(prog, name)
        if scale is None:
            # Softmax on the host: compare the logits it reads (the NPU output) instead.
            continue
        steps = np.abs(got[name].astype(np.float64) - want) / scale
        results.append({"name": name, "steps": steps, "got": got[name], "ref": want})
    return results, got, ref


def _input(shape, seed=7):
    return np.random.default_rng(seed).uniform(-120, 150, shape).astype(np.float32)


def _logits_ref(qdq, prog):
    """Add the Softmax input (the NPU's logits) as a graph output, so onnxruntime reports it."""
    import onnx
    sm = [h for h in prog.host_ops if h["op"] == "Softmax"]
    m = onnx.ModelProto.FromString(qdq.SerializeToString())
    for h in sm:
        m.graph.output.append(onnx.helper.make_tensor_value_info(h["inputs"][0], onnx.TensorProto.FLOAT, None))
    return m


@pytest.mark.parametrize("name", ["resnet50", "resnet152", "vgg16", "densenet121"])
def test_reduced_classifier_runs_on_npu_and_agrees_with_onnxruntime(name, tmp_path):
    shape, prog, reports, qdq = _compile(name, tmp_path)
    _check_layers_on_npu(prog, reports, qdq)
    assert [h["op"] for h in prog.host_ops] == ["Softmax"] and prog.starts == [0]
    x = _input(shape)
    # Hazard checking doubles the emulator's time: the compiler's own network tests do it; here once.
    results, got, ref = _compare(prog, _logits_ref(qdq, prog), x, check_hazards=name == "resnet50")
    assert {r["name"] for r in results} == {prog.host_ops[0]["inputs"][0]}
    logits = results[0]["name"]
    probs = prog.host_ops[0]["outputs"][0]
    assert probs == "predictions" and int(np.argmax(got[probs])) == int(np.argmax(got[logits]))
    assert int(np.argmax(got[logits])) == int(np.argmax(ref[logits]))
    assert_network(results)


def test_reduced_ssd300_splits_at_l2_normalization_and_detects(tmp_path):
    shape, prog, reports, qdq = _compile("ssd300", tmp_path)
    _check_layers_on_npu(prog, reports, qdq)
    l2 = [h for h in prog.host_ops if h["op"] == "L2Normalization"]
    assert len(l2) == 1 and len(prog.starts) == 2
    # The host normalizes conv4_3 between the two segments; the second computes the heads that read it.
    assert l2[0]["after_segment"] == 0 and set(l2[0]["io"]) == set(l2[0]["inputs"] + l2[0]["outputs"])
    assert prog.instructions[prog.starts[1] - 1].op.name == "END"
    assert sorted(h["outputs"][0] for h in prog.host_ops if h["op"] == "Concat") == ["mbox_conf", "mbox_loc"]
    x = _input(shape)
    results, got, ref = _compare(prog, qdq, x, check_hazards=True)
    assert sorted(r["name"] for r in results) == ["mbox_conf", "mbox_loc"]
    assert_network(results)
    # On onnxruntime's own conv4_3, the host op reproduces onnxruntime's normalized tensor exactly (the
    # network-level differences come from conv4_3's one-step differences, which the division amplifies).
    import onnx

    from tessera.host.hostops import run_steps
    # tf2onnx may leave layout Transposes beside the normalization (its result depends on what the process
    # converted before), so the island can read and write more than one tensor: all are compared.
    srcs, dsts = l2[0]["inputs"], l2[0]["outputs"]
    dq = {n.input[0]: n.output[0] for n in qdq.graph.node if n.op_type == "DequantizeLinear"}
    m = onnx.ModelProto.FromString(qdq.SerializeToString())
    for name in [*srcs, *(dq[d] for d in dsts)]:
        m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    inner = _ort(m, np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    env = run_steps(l2[0]["attrs"]["steps"], {src: inner[src] for src in srcs})
    for dst in dsts:
        np.testing.assert_array_equal(env[dst], inner[dq[dst]], err_msg=dst)
    # Boxes, classes and scores on the host; the NPU's boxes decode like onnxruntime's.
    priors = detection.prior_boxes()
    tol = 2 * _out_scale(prog, "mbox_loc") * 0.2 * 1.01  # two steps of an offset, times the largest variance
    mine = detection.decode_boxes(got["mbox_loc"][0], priors)
    theirs = detection.decode_boxes(ref["mbox_loc"][0], priors)
    assert np.abs(mine - theirs).max() <= tol * np.exp(2 * 0.2 * np.abs(ref["mbox_loc"]).max()) + 1e-6
    det = detection.detect(got["mbox_loc"][0], got["mbox_conf"][0], score_threshold=0.2)
    k = len(det["scores"])
    assert det["boxes"].shape == (k, 4) and det["classes"].shape == (k,) and 0 < k <= 200
    assert set(det["classes"].tolist()) <= set(range(1, 5)) and np.all(np.diff(det["scores"]) <= 0)
