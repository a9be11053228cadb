"""The model zoo: the seed service's architectures and a small model trained on real data.

``tessera zoo list`` shows them; ``tessera zoo build NAME -o OUT.tsp`` goes from a
Keras model to a compiled program in one step (then ``tessera serve OUT.tsp``);
``tessera zoo train digits --out DIR`` trains the digits ResNet.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import tempfile

import numpy as np

from tessera.errors import UserError

__all__ = ["zoo_command", "build_program", "compile_keras", "keras_model", "calibration_data", "program_meta"]

_DESCRIPTIONS = {
    "resnet50": "ResNet-50 ImageNet classifier (keras.applications)",
    "resnet152": "ResNet-152 ImageNet classifier (keras.applications)",
    "densenet121": "DenseNet-121 ImageNet classifier (keras.applications)",
    "vgg16": "VGG-16 ImageNet classifier (keras.applications)",
    "ssd300": "SSD300 object detector with a VGG-16 backbone (VOC, 21 classes)",
    "digits": "small ResNet trained on scikit-learn's handwritten digits (real data, 16x16 grey)",
}


#: Host preprocessing of the Keras applications (keras.applications.<family>.preprocess_input's mode).
_META = {"resnet50": {"preprocess": {"style": "caffe"}}, "resnet152": {"preprocess": {"style": "caffe"}},
         "vgg16": {"preprocess": {"style": "caffe"}}, "densenet121": {"preprocess": {"style": "torch"}},
         "ssd300": {"preprocess": {"style": "caffe"}}}


def keras_model(name: str, *, reduced: bool = False, weights: str | None = None, input_size: int | None = None):
    """The Keras model of a zoo entry (``digits`` needs ``weights`` from ``tessera zoo train``)."""
    from . import digits, models
    if name == "digits":
        if not weights:
            raise UserError("digits has no pretrained weights: run `tessera zoo train digits --out DIR` and pass "
                            "--weights DIR/digits.weights.h5")
        model = digits.build_model()
    elif name not in models.ARCHITECTURES:
        raise UserError(f"unknown zoo model {name!r}; models: {', '.join(_DESCRIPTIONS)}")
    else:
        model = models.reduced(name, input_size) if reduced else models.full(name)
    if weights:
        if not os.path.exists(weights):
            raise UserError(f"{weights}: no such weights file")
        model.load_weights(weights)
    return model


def calibration_data(model, samples: int = 8, seed: int = 0) -> dict:
    """Synthetic calibration tensors in the range the preprocessed images take (Caffe-style BGR, mean removed).

    Good enough to set activation ranges for random-weight models; pass real images with --calibrate
    for trained weights.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for t in model.inputs:
        shape = (samples, 1, *t.shape[1:])
        out[t.name.split(":")[0]] = rng.uniform(-120, 150, size=shape).astype(np.float32)
    return out


def compile_keras(model, config, calibrate, *, name: str | None = None):
    """An in-memory Keras model → ONNX (tf2onnx) → QDQ (onnxruntime, on ``calibrate``) → program.

    ``calibrate``: an ``.npz`` of NHWC samples (as Keras takes them) or a folder of images.
    Returns ``(program, reports, qdq)``: ``qdq`` is the quantized ONNX model the program was compiled
    from (NCHW input: the NHWC conversion is stripped), which onnxruntime runs as the reference.
    """
    from ..calibrate import quantize_float_model
    from ..driver import compile_model
    from ..passes import FoldBatchNorm
    from ..tf_frontend import keras_to_onnx, strip_input_layout

    proto, nhwc = strip_input_layout(keras_to_onnx(model, source=name or model.name))
    with tempfile.TemporaryDirectory() as tmp:
        if nhwc and str(calibrate).endswith(".npz"):
            with np.load(calibrate) as f:
                arrays = {k: (np.moveaxis(f[k], -1, -3) if k in nhwc else f[k]) for k in f.files}
            calibrate = os.path.join(tmp, "calibration_nchw.npz")
            np.savez(calibrate, **arrays)
        qdq = quantize_float_model(FoldBatchNorm()(proto), calibrate)
    prog, reports = compile_model(qdq, config, name=name or model.name)
    for t in prog.inputs:
        if t.name in nhwc:
            t.shape, t.layout = nhwc[t.name], "NHWC"
    return prog, reports, qdq


def program_meta(name: str) -> dict:
    """What :func:`build_program` adds to the compiler's ``Program.meta`` for zoo model ``name``."""
    if name == "digits":
        from . import digits
        meta = dict(digits.META)
    else:
        meta = {**_META.get(name, {}), "name": name}
    if name == "ssd300":
        # Served and scored as a detector: boxes, classes and scores from the host's SSD decoding.
        from tessera.host.detection import detector_meta
        meta.update(detector_meta())
    meta["zoo"] = name
    return meta


def build_program(name: str, output, *, config: str = "sim", reduced: bool = False, weights: str | None = None,
                  calibrate: str | None = None, input_size: int | None = None):
    """Keras model → ONNX (tf2onnx) → quantize with calibration data → compile → ``output``."""
    model = keras_model(name, reduced=reduced, weights=weights, input_size=input_size)
    with tempfile.TemporaryDirectory() as tmp:
        if calibrate is None:
            calibrate = str(pathlib.Path(tmp) / "calibration.npz")
            if name == "digits":
                from . import digits
                np.savez(calibrate, **digits.calibration())
            else:
                np.savez(calibrate, **calibration_data(model))
        prog, reports, _ = compile_keras(model, config, calibrate, name=name)
    prog.meta.update(program_meta(name))
    prog.save(output)
    return prog, reports


def _parser():
    p = argparse.ArgumentParser(prog="tessera zoo", description=__doc__.strip().splitlines()[0])
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="list the zoo's models")
    b = sub.add_parser("build", help="build a zoo model into a .tsp program")
    b.add_argument("name", choices=list(_DESCRIPTIONS))
    b.add_argument("-o", "--output", required=True)
    b.add_argument("--config", default="sim")
    b.add_argument("--weights", help="Keras weights file (default: random weights; nothing is downloaded)")
    b.add_argument("--calibrate", metavar="DIR|NPZ", help="calibration data (default: synthetic)")
    b.add_argument("--reduced", action="store_true", help="the CI-size version (narrow, small input)")
    t = sub.add_parser("train", help="train the digits model on scikit-learn's digits")
    t.add_argument("name", choices=["digits"])
    t.add_argument("--out", required=True, metavar="DIR")
    t.add_argument("--epochs", type=int, default=12)
    return p


def zoo_command(args) -> int:
    try:
        z = _parser().parse_args(args.args)
    except SystemExit as e:
        return int(e.code or 0)
    if z.action == "list":
        for n, d in _DESCRIPTIONS.items():
            print(f"{n:12s} {d}")
        return 0
    if z.action == "train":
        from . import digits
        r = digits.train(z.out, epochs=z.epochs)
        print(json.dumps(r))
        return 0
    prog, reports = build_program(z.name, z.output, config=z.config, reduced=z.reduced, weights=z.weights,
                                  calibrate=z.calibrate)
    print(f"built {z.name}{' (reduced)' if z.reduced else ''} for {z.config}: {len(reports)} layers, "
          f"{len(prog.instructions)} instructions -> {z.output}")
    return 0
