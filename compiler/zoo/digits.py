"""A small ResNet trained on real data that ships inside a package: scikit-learn's handwritten digits.

The data set (1,797 8×8 grey images of the digits 0–9, from UCI) is part of
scikit-learn, so nothing is downloaded. :func:`train` builds a Keras ResNet
(stem, two residual stages with a stride-2 projection shortcut, global average
pooling, dense classifier), trains it on a fixed split, and saves the model,
calibration tensors and the held-out test split. Everything is deterministic
for a given seed.
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass

import numpy as np

__all__ = ["DigitsData", "load_digits_split", "build_model", "train", "calibration", "SIZE", "INPUT_NAME",
           "OUTPUT_NAME", "META"]

SIZE = 16            # images are upsampled 8×8 → 16×16 so the network has room for a stride-2 stage
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"

#: What the host needs to score a digit image file: grey 0..255 → [0, 1], 16×16, labels "0".."9".
META = {
    "name": "digits",
    "preprocess": {"size": [SIZE, SIZE], "style": "none", "scale": 1 / 255, "mean": [0.0], "std": [1.0],
                   "interpolation": "nearest"},
    "labels": [str(d) for d in range(10)],
    "scores": OUTPUT_NAME,
}


@dataclass
class DigitsData:
    x_train: np.ndarray   # N×SIZE×SIZE×1 float32 in [0, 1]
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits_split(seed: int = 0, test_fraction: float = 0.25) -> DigitsData:
    """The digits, scaled to [0, 1], upsampled to SIZE×SIZE (nearest), split by a seeded shuffle."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)
    x = x.repeat(SIZE // 8, axis=1).repeat(SIZE // 8, axis=2)[..., None]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train_ = order[:n_test], order[n_test:]
    return DigitsData(x[train_], y[train_], x[test], y[test])


def build_model(width: int = 16, seed: int = 0):
    """Keras functional ResNet for SIZE×SIZE×1 inputs; output: softmax over 10 classes."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)

    def block(x, filters, stride):
        shortcut = x
        y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
        y = layers.BatchNormalization(momentum=0.9)(y)
        y = layers.ReLU()(y)
        y = layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
        y = layers.BatchNormalization(momentum=0.9)(y)
        if stride != 1 or shortcut.shape[-1] != filters:
            shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False)(shortcut)
            shortcut = layers.BatchNormalization(momentum=0.9)(shortcut)
        return layers.ReLU()(layers.Add()([y, shortcut]))

    inp = keras.Input((SIZE, SIZE, 1), name=INPUT_NAME)
    x = layers.Conv2D(width, 3, padding="same", use_bias=False)(inp)
    x = layers.BatchNormalization(momentum=0.9)(x)
    x = layers.ReLU()(x)
    x = block(x, width, 1)
    x = block(x, 2 * width, 2)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(10)(x)
    out = layers.Softmax(name=OUTPUT_NAME)(x)
    return keras.Model(inp, out, name="digits_resnet")


def calibration(seed: int = 0, samples: int = 64) -> dict:
    """Calibration tensors for quantization: the first training images, one batch-1 tensor each."""
    x = load_digits_split(seed).x_train[:samples]
    return {INPUT_NAME: x[:, None]}


def train(out_dir, *, epochs: int = 12, seed: int = 0, width: int = 16) -> dict:
    """Train and save ``digits.keras``, ``digits.weights.h5``, ``calibration.npz`` and ``test.npz``.

    Returns float accuracy on the held-out split and the paths written.
    """
    import keras

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = load_digits_split(seed)
    model = build_model(width, seed)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(data.x_train, data.y_train, epochs=epochs, batch_size=32, verbose=0, shuffle=True)
    probs = model.predict(data.x_test, verbose=0, batch_size=256)
    acc = float((probs.argmax(axis=1) == data.y_test).mean())
    model.save(out / "digits.keras")
    model.save_weights(out / "digits.weights.h5")
    np.savez(out / "calibration.npz", **calibration(seed))
    np.savez(out / "test.npz", x=data.x_test, y=data.y_test)
    return {"float_accuracy": acc, "model": str(out / "digits.keras"), "weights": str(out / "digits.weights.h5"),
            "calibration": str(out / "calibration.npz"), "test": str(out / "test.npz")}
