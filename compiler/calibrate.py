"""``--calibrate``: quantize a float ONNX model with onnxruntime.quantization.

Calibration data is an ``.npz`` (one array per model input, the first axis
indexing samples, or a single sample of the input's exact shape) or a folder
of images (JPEG/PNG/…, decoded, resized and normalized as
``DIR/preprocess.json`` describes, in the schema of
:mod:`tessera.host.preprocess`; raw 0..255 RGB without it) and/or ``.npy``
tensors. The result is a QDQ model with per-channel int8 weights and
per-tensor int8 activations, which the rest of the compiler lowers like any
other QDQ model.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx

from .ir import CompileError

__all__ = ["calibration_samples", "quantize_float_model"]

_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def _input_specs(model):
    inits = {i.name for i in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim]
        specs.append((vi.name, dims))
    return specs


def calibration_samples(model, source) -> list[dict]:
    """Feed dicts (input name → float32 array of the input's shape) from an npz file or a folder."""
    specs = _input_specs(model)
    src = str(source)
    if not os.path.exists(src):
        raise CompileError(f"--calibrate {src}: no such file or folder")
    samples = []
    if os.path.isdir(src):
        if len(specs) != 1:
            raise CompileError(f"--calibrate {src}: a folder calibrates single-input models only; "
                               f"this model has inputs {[n for n, _ in specs]} (use an .npz)")
        name, shape = specs[0]
        files = sorted(Path(src).iterdir())
        pre = None
        spec_path = Path(src) / "preprocess.json"
        for f in files:
            ext = f.suffix.lower()
            if ext == ".npy":
                arr = np.load(f).astype(np.float32)
                samples.append({name: arr.reshape(shape)})
            elif ext in _IMAGE_EXT:
                if pre is None:
                    from tessera.host.preprocess import Preprocess

                    from tessera.program import TensorInfo
                    layout = "NCHW" if shape[1] == 3 else "NHWC"
                    hh, ww = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
                    t = TensorInfo(name, shape, layout, 0, hh, ww, 3, 3, 1.0, 0)
                    spec = json.loads(spec_path.read_text()) if spec_path.exists() else {}
                    pre = Preprocess.from_spec(t, spec)
                samples.append({name: pre(f.read_bytes()).astype(np.float32)})
        if not samples:
            raise CompileError(f"--calibrate {src}: the folder has no images ({', '.join(_IMAGE_EXT)}) or .npy files")
    else:
        try:
            with np.load(src) as f:
                data = {k: f[k] for k in f.files}
        except Exception as e:
            raise CompileError(f"--calibrate {src}: not a readable .npz file ({e})") from None
        missing = [n for n, _ in specs if n not in data]
        if missing:
            raise CompileError(f"--calibrate {src}: no array for input(s) {missing}; it has {sorted(data)}")
        counts = set()
        for n, shape in specs:
            a = data[n]
            if list(a.shape) == shape:
                data[n] = a[None]
            elif shape[0] == 1 and list(a.shape[1:]) == shape[1:]:
                # A batch of N samples for a batch-1 model, as Keras users keep data sets.
                data[n] = a[:, None]
            elif list(a.shape[1:]) != shape:
                raise CompileError(f"--calibrate {src}: array {n!r} has shape {list(a.shape)}; expected {shape}, "
                                   f"[samples] + {shape} or [samples] + {shape[1:]}")
            counts.add(data[n].shape[0])
        if len(counts) != 1:
            raise CompileError(f"--calibrate {src}: inputs have different sample counts {sorted(counts)}")
        for i in range(counts.pop()):
            samples.append({n: data[n][i].astype(np.float32) for n, _ in specs})
    return samples


def quantize_float_model(model: onnx.ModelProto, source) -> onnx.ModelProto:
    """Calibrate ``model`` on ``source`` and return the QDQ-quantized model."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    samples = calibration_samples(model, source)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(samples)

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "float.onnx", Path(d) / "qdq.onnx"
        onnx.save(model, src)
        try:
            quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
        except Exception as e:
            raise CompileError(f"calibration failed in onnxruntime.quantization: {type(e).__name__}: {e}") from None
        return onnx.load(dst)
