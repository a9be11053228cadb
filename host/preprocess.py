"""Encoded image bytes → the model's input tensor, as ``Program.meta["preprocess"]`` prescribes.

The schema (written by the compiler, documented in docs/host.md)::

    meta["preprocess"] = {
        "input": "images:0",          # which model input takes images (default: the first input)
        "size": [224, 224],           # network input height, width (default: from the input tensor)
        "resize": 256 | [h, w] | None,# shorter side to 256 keeping the aspect ratio / exactly h×w /
                                      #   straight to "size" (Keras load_img(target_size=...))
        "crop": "center" | "none",    # after resizing, cut the central "size" window
        "interpolation": "bilinear",  # nearest | bilinear | bicubic | lanczos | box | hamming
        "style": "caffe",             # caffe | torch | tf | none: defaults for the four fields below
        "channel_order": "BGR",       # channel order of the model input
        "scale": 1.0,                 # x = (pixel * scale - mean[c]) / std[c], pixel in 0..255
        "mean": [103.939, 116.779, 123.68],
        "std": [1.0, 1.0, 1.0],
    }

Explicit fields override the style's defaults. The result is float32 in the
input tensor's own shape and layout (NCHW or NHWC, batch 1).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from tessera.errors import UserError
from tessera.program import Program, TensorInfo

__all__ = ["FORMATS", "MAX_BYTES", "MAX_PIXELS", "STYLES", "ImageError", "Preprocess", "decode_image"]

#: Normalization presets, as keras.applications.imagenet_utils.preprocess_input's modes.
STYLES = {
    # ResNet-50/152, VGG: RGB→BGR, subtract the ImageNet mean per channel, no scaling.
    "caffe": {"channel_order": "BGR", "scale": 1.0, "mean": [103.939, 116.779, 123.68], "std": [1.0, 1.0, 1.0]},
    # DenseNet and torchvision models: to [0, 1], then standardize per channel.
    "torch": {"channel_order": "RGB", "scale": 1 / 255, "mean": [0.485, 0.456, 0.406],
              "std": [0.229, 0.224, 0.225]},
    # Inception, MobileNet: to [-1, 1].
    "tf": {"channel_order": "RGB", "scale": 1 / 127.5, "mean": [1.0, 1.0, 1.0], "std": [1.0, 1.0, 1.0]},
    # Raw 0..255 pixels.
    "none": {"channel_order": "RGB", "scale": 1.0, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
}

#: Decoded-size limit: larger images are refused before their pixels are decoded.
MAX_PIXELS = 40_000_000
#: Encoded-size limit.
MAX_BYTES = 32 << 20
#: Formats Pillow may try (it probes only these, which also keeps exotic decoders out of reach).
FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP")

_INTERP = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
           "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
           "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING}


class ImageError(UserError, ValueError):
    """Bytes that are not a decodable image of an accepted format and size."""


def decode_image(data: bytes, *, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES) -> Image.Image:
    """Decode JPEG/PNG (and BMP, GIF, WebP) bytes into an RGB :class:`PIL.Image.Image`.

    Raises :class:`ImageError` for empty, oversized, non-image, truncated or corrupt data.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageError(f"expected encoded image bytes, got {type(data).__name__}")
    n = len(data)
    if n == 0:
        raise ImageError("empty image data (0 bytes)")
    if n > max_bytes:
        raise ImageError(f"encoded image of {n} bytes exceeds the limit of {max_bytes} bytes")
    try:
        with warnings.catch_warnings():
            # The pixel limit below is ours; Pillow's own warning would only repeat it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(bytes(data)), formats=FORMATS)
    except Image.DecompressionBombError as e:
        raise ImageError(f"image exceeds the limit of {max_pixels} pixels ({e})") from None
    except UnidentifiedImageError:
        raise ImageError(f"not an image: {n} bytes that are none of {', '.join(FORMATS)} "
                         f"(starting {bytes(data[:8])!r})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"corrupt image header: {e}") from None
    # The header gives the size before any pixel is decoded: refuse decompression bombs here.
    w, h = img.size
    if w * h > max_pixels:
        raise ImageError(f"{img.format} image of {w}x{h} pixels exceeds the limit of {max_pixels} pixels")
    if w == 0 or h == 0:
        raise ImageError(f"{img.format} image has no pixels ({w}x{h})")
    try:
        img.load()
        return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"corrupt or truncated {img.format} image ({w}x{h}): {e}") from None


def _per_channel(v, what, channels=3):
    """``channels`` floats from a scalar, a list of that many, or (grey inputs) three equal values."""
    v = [float(x) for x in (v if isinstance(v, (list, tuple)) else [v] * channels)]
    if channels == 1 and len(v) == 3 and len(set(v)) == 1:
        v = v[:1]
    if len(v) != channels:
        raise UserError(f"preprocess {what!r} must have {channels} value(s), has {len(v)}")
    return tuple(v)


@dataclass(frozen=True)
class Preprocess:
    """One model input's image preprocessing (see the module docstring for the fields)."""

    tensor: TensorInfo
    size: tuple[int, int]
    resize: int | tuple[int, int] | None = None
    crop: str = "none"
    interpolation: str = "bilinear"
    channel_order: str = "RGB"
    scale: float = 1.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    style: str = "none"
    max_pixels: int = MAX_PIXELS
    max_bytes: int = MAX_BYTES

    @classmethod
    def from_program(cls, program: Program, **limits) -> Preprocess:
        """The preprocessing ``program.meta["preprocess"]`` describes (style ``none`` if absent)."""
        spec = dict(program.meta.get("preprocess") or {})
        if not program.inputs:
            raise UserError("the program has no inputs")
        name = spec.pop("input", None)
        if name is None:
            tensor = program.inputs[0]
        else:
            matches = [t for t in program.inputs if t.name == name]
            if not matches:
                raise UserError(f"preprocess names input {name!r}, but the model's inputs are "
                                f"{[t.name for t in program.inputs]}")
            tensor = matches[0]
        return cls.from_spec(tensor, spec, **limits)

    @classmethod
    def from_spec(cls, tensor: TensorInfo, spec: dict, **limits) -> Preprocess:
        spec = dict(spec)
        style = spec.pop("style", "none")
        if style not in STYLES:
            raise UserError(f"preprocess style {style!r} is unknown; styles: {', '.join(STYLES)}")
        fields = {**STYLES[style], **{k: v for k, v in spec.items() if k in STYLES["none"]}}
        unknown = set(spec) - set(STYLES["none"]) - {"size", "resize", "crop", "interpolation"}
        if unknown:
            raise UserError(f"preprocess has unknown field(s) {sorted(unknown)}")
        if tensor.channels not in (1, 3) or tensor.layout not in ("NCHW", "NHWC") or tensor.shape[0] != 1:
            raise UserError(f"input {tensor.name!r} ({tensor.layout} {tensor.shape}) is not a batch-1, "
                            f"3-channel (colour) or 1-channel (grey) image tensor")
        size = tuple(int(v) for v in spec.get("size", [tensor.height, tensor.width]))
        if size != (tensor.height, tensor.width):
            raise UserError(f"preprocess size {list(size)} does not match input {tensor.name!r} "
                            f"({tensor.height}x{tensor.width})")
        resize = spec.get("resize")
        if isinstance(resize, (list, tuple)):
            resize = (int(resize[0]), int(resize[1]))
        elif resize is not None:
            resize = int(resize)
        crop = spec.get("crop", "center" if resize is not None else "none")
        if crop not in ("center", "none"):
            raise UserError(f"preprocess crop {crop!r} must be 'center' or 'none'")
        interp = spec.get("interpolation", "bilinear")
        if interp not in _INTERP:
            raise UserError(f"preprocess interpolation {interp!r} is unknown; one of {', '.join(_INTERP)}")
        order = fields["channel_order"]
        if order not in ("RGB", "BGR"):
            raise UserError(f"preprocess channel_order {order!r} must be 'RGB' or 'BGR'")
        std = _per_channel(fields["std"], "std", tensor.channels)
        if any(s == 0 for s in std):
            raise UserError("preprocess std must not contain 0")
        return cls(tensor=tensor, size=size, resize=resize, crop=crop, interpolation=interp, channel_order=order,
                   scale=float(fields["scale"]), mean=_per_channel(fields["mean"], "mean", tensor.channels), std=std, style=style,
                   **limits)

    def to_dict(self) -> dict:
        return {"input": self.tensor.name, "size": list(self.size),
                "resize": list(self.resize) if isinstance(self.resize, tuple) else self.resize,
                "crop": self.crop, "interpolation": self.interpolation, "style": self.style,
                "channel_order": self.channel_order, "scale": self.scale, "mean": list(self.mean),
                "std": list(self.std)}

    # ---- the pipeline -------------------------------------------------------

    def geometry(self, img: Image.Image) -> Image.Image:
        """Resize and crop a decoded RGB image to the network input size."""
        h, w = self.size
        rs = _INTERP[self.interpolation]
        if self.resize is None:
            img = img.resize((w, h), rs)
        else:
            if isinstance(self.resize, tuple):
                th, tw = self.resize
            else:
                s = self.resize
                iw, ih = img.size
                th, tw = (s, max(1, round(iw * s / ih))) if ih <= iw else (max(1, round(ih * s / iw)), s)
            img = img.resize((tw, th), rs)
        iw, ih = img.size
        if self.crop == "center" and (iw, ih) != (w, h):
            if iw < w or ih < h:
                raise ImageError(f"image resized to {iw}x{ih} is smaller than the {w}x{h} crop")
            left, top = (iw - w) // 2, (ih - h) // 2
            img = img.crop((left, top, left + w, top + h))
        elif (iw, ih) != (w, h):
            img = img.resize((w, h), rs)
        return img

    def normalize(self, rgb: np.ndarray) -> np.ndarray:
        """``H×W×3`` RGB pixels (0..255) → the model's float32 input tensor (grey: ITU-R 601 luma)."""
        x = np.asarray(rgb, dtype=np.float32)
        if self.tensor.channels == 1:
            x = np.asarray(Image.fromarray(np.asarray(rgb, np.uint8)).convert("L"), dtype=np.float32)[..., None]
        elif self.channel_order == "BGR":
            x = x[..., ::-1]
        x = (x * np.float32(self.scale) - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.tensor.layout == "NCHW":
            x = x.transpose(2, 0, 1)
        return np.ascontiguousarray(x.reshape(self.tensor.shape), dtype=np.float32)

    def __call__(self, data: bytes) -> np.ndarray:
        """Encoded image bytes → the model's float32 input tensor."""
        img = decode_image(data, max_pixels=self.max_pixels, max_bytes=self.max_bytes)
        return self.normalize(np.asarray(self.geometry(img)))

    def image(self, img: Image.Image) -> np.ndarray:
        """An already decoded :class:`PIL.Image.Image` → the model's input tensor."""
        return self.normalize(np.asarray(self.geometry(img.convert("RGB"))))
