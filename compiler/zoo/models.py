"""The seed service's architectures as Keras models, full size or reduced for CI.

``full(name)`` returns the ``keras.applications`` model itself (weights=None
unless a weights file is given; nothing is downloaded). ``reduced(name)``
builds the same topology — the same block structure, layer kinds and
connectivity — with a width multiplier and a small input, so CI compiles and
runs every architecture in seconds. SSD300 with a VGG-16 backbone is not in
``keras.applications``; :func:`ssd300` builds it (the L2 normalization of
conv4_3, prior boxes, box decoding and non-maximum suppression run on the host,
see :mod:`tessera.host.detection`).
"""

from __future__ import annotations

import os

__all__ = ["ARCHITECTURES", "full", "reduced", "resnet", "densenet", "vgg16", "ssd300", "SSD_FEATURE_MAPS",
           "l2_normalization_layer", "custom_objects"]

ARCHITECTURES = ("resnet50", "resnet152", "densenet121", "vgg16", "ssd300")

_RESNET_DEPTHS = {"resnet50": (3, 4, 6, 3), "resnet152": (3, 8, 36, 3)}
_DENSENET_BLOCKS = {"densenet121": (6, 12, 24, 16)}

#: (feature map, anchors per cell) of SSD300's six detection heads.
SSD_FEATURE_MAPS = (("conv4_3", 4), ("fc7", 6), ("conv8_2", 6), ("conv9_2", 6), ("conv10_2", 4), ("conv11_2", 4))


def _keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    return keras


def _conv_bn(x, filters, kernel, strides=1, name="", padding="same", relu=True):
    L = _keras().layers
    x = L.Conv2D(filters, kernel, strides=strides, padding=padding, name=f"{name}_conv")(x)
    x = L.BatchNormalization(epsilon=1.001e-5, name=f"{name}_bn")(x)
    return L.Activation("relu", name=f"{name}_relu")(x) if relu else x


def resnet(depths=(3, 4, 6, 3), width: int = 64, input_size: int = 224, classes: int = 1000, name="resnet"):
    """ResNet v1 with bottleneck blocks, as ``keras.applications.ResNet50`` (width 64) builds it."""
    keras = _keras()
    L = keras.layers
    inp = keras.Input((input_size, input_size, 3), name="input_1")
    x = L.ZeroPadding2D(3, name="conv1_pad")(inp)
    x = _conv_bn(x, width, 7, 2, "conv1", padding="valid")
    x = L.ZeroPadding2D(1, name="pool1_pad")(x)
    x = L.MaxPooling2D(3, 2, name="pool1_pool")(x)
    for stage, blocks in enumerate(depths):
        filters = width * 2 ** stage
        for b in range(blocks):
            pre = f"conv{stage + 2}_block{b + 1}"
            stride = 2 if b == 0 and stage > 0 else 1
            if b == 0:
                shortcut = _conv_bn(x, 4 * filters, 1, stride, f"{pre}_0", relu=False)
            else:
                shortcut = x
            y = _conv_bn(x, filters, 1, stride, f"{pre}_1")
            y = _conv_bn(y, filters, 3, 1, f"{pre}_2")
            y = _conv_bn(y, 4 * filters, 1, 1, f"{pre}_3", relu=False)
            x = L.Activation("relu", name=f"{pre}_out")(L.Add(name=f"{pre}_add")([shortcut, y]))
    x = L.GlobalAveragePooling2D(name="avg_pool")(x)
    out = L.Dense(classes, activation="softmax", name="predictions")(x)
    return keras.Model(inp, out, name=name)


def densenet(blocks=(6, 12, 24, 16), growth: int = 32, input_size: int = 224, classes: int = 1000,
             name="densenet"):
    """DenseNet-BC as ``keras.applications.DenseNet121`` builds it (growth 32): pre-activation BN-ReLU."""
    keras = _keras()
    L = keras.layers

    def bn_relu(x, n):
        x = L.BatchNormalization(epsilon=1.001e-5, name=f"{n}_bn")(x)
        return L.Activation("relu", name=f"{n}_relu")(x)

    inp = keras.Input((input_size, input_size, 3), name="input_1")
    x = L.ZeroPadding2D(3)(inp)
    x = L.Conv2D(2 * growth, 7, strides=2, use_bias=False, name="conv1_conv")(x)
    x = bn_relu(x, "conv1")
    x = L.ZeroPadding2D(1)(x)
    x = L.MaxPooling2D(3, strides=2, name="pool1")(x)
    for i, n in enumerate(blocks):
        for b in range(n):
            pre = f"conv{i + 2}_block{b + 1}"
            y = bn_relu(x, f"{pre}_0")
            y = L.Conv2D(4 * growth, 1, use_bias=False, name=f"{pre}_1_conv")(y)
            y = bn_relu(y, f"{pre}_1")
            y = L.Conv2D(growth, 3, padding="same", use_bias=False, name=f"{pre}_2_conv")(y)
            x = L.Concatenate(name=f"{pre}_concat")([x, y])
        if i < len(blocks) - 1:
            x = bn_relu(x, f"pool{i + 2}")
            x = L.Conv2D(x.shape[-1] // 2, 1, use_bias=False, name=f"pool{i + 2}_conv")(x)
            x = L.AveragePooling2D(2, strides=2, name=f"pool{i + 2}_pool")(x)
    x = bn_relu(x, "final")
    x = L.GlobalAveragePooling2D(name="avg_pool")(x)
    out = L.Dense(classes, activation="softmax", name="predictions")(x)
    return keras.Model(inp, out, name=name)


def vgg16(width: int = 64, input_size: int = 224, fc: int = 4096, classes: int = 1000, name="vgg16"):
    """VGG-16 as ``keras.applications.VGG16`` builds it (width 64, fc 4096)."""
    keras = _keras()
    L = keras.layers
    inp = keras.Input((input_size, input_size, 3), name="input_1")
    x = inp
    for b, (n, mult) in enumerate(((2, 1), (2, 2), (3, 4), (3, 8), (3, 8))):
        for c in range(n):
            x = L.Conv2D(width * mult, 3, padding="same", activation="relu", name=f"block{b + 1}_conv{c + 1}")(x)
        x = L.MaxPooling2D(2, strides=2, name=f"block{b + 1}_pool")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(fc, activation="relu", name="fc1")(x)
    x = L.Dense(fc, activation="relu", name="fc2")(x)
    out = L.Dense(classes, activation="softmax", name="predictions")(x)
    return keras.Model(inp, out, name=name)


def ssd300(width: int = 64, input_size: int = 300, classes: int = 21, name="ssd300"):
    """SSD300 (Liu et al. 2016) with a VGG-16 backbone: pool5 3×3/1, dilated fc6 (rate 6), fc7 1×1, extras.

    Outputs ``mbox_loc`` (1×A×4 box offsets) and ``mbox_conf`` (1×A×classes logits), A anchors in the
    order of :data:`SSD_FEATURE_MAPS`; the conv4_3 feature map is L2-normalized (with a learned
    per-channel scale, initialised to 20) before its heads, as in the paper.
    """
    keras = _keras()
    L = keras.layers
    L2Normalization = l2_normalization_layer()

    def conv(x, f, k, n, stride=1, dilation=1, padding="same"):
        return L.Conv2D(f, k, strides=stride, dilation_rate=dilation, padding=padding, activation="relu",
                        name=n)(x)

    inp = keras.Input((input_size, input_size, 3), name="input_1")
    x = inp
    feats = {}
    for b, (n, mult) in enumerate(((2, 1), (2, 2), (3, 4), (3, 8), (3, 8))):
        for c in range(n):
            x = conv(x, width * mult, 3, f"conv{b + 1}_{c + 1}")
        if b == 3:
            feats["conv4_3"] = L2Normalization(name="conv4_3_norm")(x)
        if b < 4:
            # SSD pads odd sizes up (ceil mode): 75 → 38.
            x = L.MaxPooling2D(2, strides=2, padding="same", name=f"pool{b + 1}")(x)
        else:
            x = L.MaxPooling2D(3, strides=1, padding="same", name="pool5")(x)
    x = conv(x, width * 16, 3, "fc6", dilation=6)
    x = feats["fc7"] = conv(x, width * 16, 1, "fc7")
    for i, (mid, out, stride, pad) in enumerate(((4, 8, 2, "same"), (2, 4, 2, "same"), (2, 4, 1, "valid"),
                                                 (2, 4, 1, "valid"))):
        n = f"conv{8 + i}"
        x = conv(x, width * mid, 1, f"{n}_1")
        if stride == 2:
            x = L.ZeroPadding2D(1)(x)
            x = conv(x, width * out, 3, f"{n}_2", stride=2, padding="valid")
        else:
            x = conv(x, width * out, 3, f"{n}_2", padding=pad)
        feats[f"{n}_2"] = x
    locs, confs = [], []
    for fname, anchors in SSD_FEATURE_MAPS:
        f = feats[fname]
        loc = L.Conv2D(anchors * 4, 3, padding="same", name=f"{fname}_mbox_loc")(f)
        conf = L.Conv2D(anchors * classes, 3, padding="same", name=f"{fname}_mbox_conf")(f)
        locs.append(L.Reshape((-1, 4), name=f"{fname}_mbox_loc_flat")(loc))
        confs.append(L.Reshape((-1, classes), name=f"{fname}_mbox_conf_flat")(conf))
    loc = L.Concatenate(axis=1, name="mbox_loc")(locs)
    conf = L.Concatenate(axis=1, name="mbox_conf")(confs)
    return keras.Model(inp, [loc, conf], name=name)


_L2NORM = []


def l2_normalization_layer():
    """SSD's ``L2Normalization`` Keras layer (registered, so saved SSD models load again).

    ``y = x / sqrt(max(sum_c x², 1e-12)) * gamma_c`` over the channel axis, as
    ``tf.math.l2_normalize`` computes it, with a learned per-channel ``gamma``.
    """
    if not _L2NORM:
        keras = _keras()

        @keras.saving.register_keras_serializable(package="tessera")
        class L2Normalization(keras.layers.Layer):
            def __init__(self, gamma_init: float = 20.0, **kwargs):
                super().__init__(**kwargs)
                self.gamma_init = gamma_init

            def build(self, shape):
                self.gamma = self.add_weight(shape=(shape[-1],), name="gamma",
                                             initializer=keras.initializers.Constant(self.gamma_init))

            def call(self, x):
                import tensorflow as tf
                return tf.math.l2_normalize(x, axis=-1) * self.gamma

            def get_config(self):
                return {**super().get_config(), "gamma_init": self.gamma_init}

        _L2NORM.append(L2Normalization)
    return _L2NORM[0]


def custom_objects() -> dict:
    """Custom layers of the zoo's models, for ``keras.models.load_model``."""
    return {"L2Normalization": l2_normalization_layer()}


def full(name: str, weights: str | None = None):
    """The full-size model. ``weights``: a weights file to load (nothing is downloaded)."""
    keras = _keras()
    ctor = {"resnet50": keras.applications.ResNet50, "resnet152": keras.applications.ResNet152,
            "densenet121": keras.applications.DenseNet121, "vgg16": keras.applications.VGG16}
    if name == "ssd300":
        model = ssd300()
    elif name in ctor:
        model = ctor[name](weights=None)
    else:
        raise ValueError(f"unknown architecture {name!r}; architectures: {', '.join(ARCHITECTURES)}")
    if weights:
        model.load_weights(weights)
    return model


def reduced(name: str, input_size: int | None = None):
    """The same topology at a CI size: width divided by 8 (growth by 4), small input."""
    if name in _RESNET_DEPTHS:
        return resnet(_RESNET_DEPTHS[name], width=8, input_size=input_size or 64, classes=10, name=f"{name}_reduced")
    if name in _DENSENET_BLOCKS:
        return densenet(_DENSENET_BLOCKS[name], growth=8, input_size=input_size or 64, classes=10,
                        name=f"{name}_reduced")
    if name == "vgg16":
        return vgg16(width=8, input_size=input_size or 32, fc=64, classes=10, name="vgg16_reduced")
    if name == "ssd300":
        return ssd300(width=8, input_size=input_size or 300, classes=5, name="ssd300_reduced")
    raise ValueError(f"unknown architecture {name!r}; architectures: {', '.join(ARCHITECTURES)}")
