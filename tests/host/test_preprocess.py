"""Image decoding, geometry and normalization styles; bad images fail with clear errors."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tessera.errors import UserError
from tessera.host.preprocess import ImageError, Preprocess, decode_image
from tessera.program import TensorInfo

from .conftest import encode, photo


def tensor(layout="NCHW", h=4, w=6):
    shape = [1, 3, h, w] if layout == "NCHW" else [1, h, w, 3]
    return TensorInfo("x", shape, layout, 0, h, w, 3, 16, 1.0, 0)


def solid(rgb, size=(6, 4)):
    return encode(np.broadcast_to(np.array(rgb, np.uint8), (size[1], size[0], 3)))


def test_preprocess_caffe_is_bgr_minus_imagenet_mean():
    pre = Preprocess.from_spec(tensor(), {"style": "caffe"})
    x = pre(solid((200, 100, 50)))
    assert x.shape == (1, 3, 4, 6) and x.dtype == np.float32
    # keras.applications.imagenet_utils.preprocess_input(mode="caffe"): BGR, minus [103.939, 116.779, 123.68]
    np.testing.assert_allclose(x[0, :, 0, 0], [50 - 103.939, 100 - 116.779, 200 - 123.68], rtol=1e-6)


def test_preprocess_torch_and_tf_styles():
    px = solid((255, 0, 51))
    torch = Preprocess.from_spec(tensor(), {"style": "torch"})(px)[0, :, 1, 1]
    np.testing.assert_allclose(torch, [(1 - .485) / .229, (0 - .456) / .224, (.2 - .406) / .225], rtol=1e-5)
    tf = Preprocess.from_spec(tensor(), {"style": "tf"})(px)[0, :, 1, 1]
    np.testing.assert_allclose(tf, [1.0, -1.0, 51 / 127.5 - 1], rtol=1e-5)


def test_preprocess_explicit_fields_override_the_style():
    pre = Preprocess.from_spec(tensor(), {"style": "caffe", "mean": [0, 0, 0], "scale": 2.0})
    np.testing.assert_allclose(pre(solid((3, 2, 1)))[0, :, 0, 0], [2, 4, 6])


def test_preprocess_nhwc_layout():
    x = Preprocess.from_spec(tensor("NHWC"), {"style": "none"})(solid((7, 8, 9)))
    assert x.shape == (1, 4, 6, 3)
    np.testing.assert_array_equal(x[0, 2, 3], [7, 8, 9])


def test_preprocess_shorter_side_resize_then_center_crop():
    # 40×20 image: left half red, right half blue, a green 4-pixel column in the centre.
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20, 0] = 255
    a[:, 20:, 2] = 255
    a[:, 18:22] = (0, 255, 0)
    pre = Preprocess.from_spec(tensor(h=4, w=4), {"resize": 8, "crop": "center", "interpolation": "nearest"})
    assert pre.resize == 8 and pre.crop == "center"
    img = pre.geometry(Image.fromarray(a))
    # Shorter side 20 → 8 keeps the 2:1 aspect (16×8); the central 4×4 is green in the middle, red|blue at the edges.
    got = np.asarray(img)
    assert got.shape == (4, 4, 3)
    assert tuple(got[0, 0]) == (255, 0, 0) and tuple(got[0, 3]) == (0, 0, 255)
    assert tuple(got[2, 1]) == (0, 255, 0) and tuple(got[2, 2]) == (0, 255, 0)


def test_preprocess_direct_resize_uses_whole_image():
    a = np.zeros((10, 30, 3), np.uint8)
    a[:, :10, 0] = 255              # the left third is red: a crop would lose it, a plain resize keeps it
    img = np.asarray(Preprocess.from_spec(tensor(h=3, w=3), {"interpolation": "nearest"}).geometry(Image.fromarray(a)))
    assert tuple(img[1, 0]) == (255, 0, 0) and tuple(img[1, 2]) == (0, 0, 0)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_decode_converts_any_mode_to_rgb(mode):
    img = Image.new("RGB", (5, 3), (10, 20, 30)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    out = decode_image(buf.getvalue())
    assert out.mode == "RGB" and out.size == (5, 3)


def test_decode_reads_jpeg():
    out = decode_image(photo(1, fmt="JPEG"))
    assert out.size == (48, 40)


def huge_png(w, h) -> bytes:
    """A valid PNG header announcing w×h pixels (a decompression bomb's first bytes)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("data, message", [
    (b"", "empty image"),
    (b"GIF89a is not enough", "not an image"),
    (b"%PDF-1.4 not an image", "not an image"),
    ("text", "expected encoded image bytes"),
    (huge_png(10000, 10000), "exceeds the limit of"),
    (huge_png(20000, 20000), "exceeds the limit of"),
], ids=["empty", "gif-magic-only", "pdf", "str", "100-Mpixel-png", "400-Mpixel-png"])
def test_decode_rejects_bad_data(data, message):
    with pytest.raises(ImageError, match=message):
        decode_image(data)


def test_decode_rejects_truncated_jpeg():
    data = encode(np.random.default_rng(3).integers(0, 256, (64, 64, 3)), "JPEG")
    with pytest.raises(ImageError, match="corrupt or truncated JPEG"):
        decode_image(data[:len(data) // 2])


def test_decode_rejects_oversized_bytes():
    with pytest.raises(ImageError, match="exceeds the limit of 100 bytes"):
        decode_image(photo(0), max_bytes=100)


@pytest.mark.parametrize("spec, message", [
    ({"style": "keras"}, "style 'keras' is unknown"),
    ({"size": [5, 5]}, "does not match input"),
    ({"crop": "random"}, "crop 'random'"),
    ({"interpolation": "cubic"}, "interpolation 'cubic'"),
    ({"channel_order": "GBR"}, "channel_order"),
    ({"std": [1, 0, 1]}, "std must not contain 0"),
    ({"mean": [1, 2]}, r"3 value\(s\), has 2"),
    ({"colour": "yes"}, "unknown field"),
])
def test_preprocess_spec_errors(spec, message):
    with pytest.raises(UserError, match=message):
        Preprocess.from_spec(tensor(), spec)


def test_preprocess_refuses_non_image_input():
    t = TensorInfo("v", [1, 10], "NC", 0, 1, 1, 10, 16, 1.0, 0)
    with pytest.raises(UserError, match=r"not a batch-1, 3-channel \(colour\) or 1-channel \(grey\) image"):
        Preprocess.from_spec(t, {})


def test_decode_rejects_truncated_png():
    data = photo(4, size=(64, 64))
    with pytest.raises(ImageError, match="truncated|corrupt"):
        decode_image(data[:len(data) - 200])


@pytest.mark.parametrize("style", ["caffe", "torch", "tf"])
def test_styles_equal_keras_preprocess_input(style):
    imagenet_utils = pytest.importorskip("keras.applications.imagenet_utils")
    rgb = np.random.default_rng(5).integers(0, 256, (4, 6, 3)).astype(np.uint8)
    ours = Preprocess.from_spec(tensor("NHWC"), {"style": style}).normalize(rgb)
    theirs = imagenet_utils.preprocess_input(rgb[None].astype(np.float32), data_format="channels_last", mode=style)
    np.testing.assert_allclose(ours, np.asarray(theirs), rtol=1e-5, atol=1e-5)


def test_grey_input_takes_luma_of_colour_images():
    t = TensorInfo("g", [1, 4, 4, 1], "NHWC", 0, 4, 4, 1, 16, 1.0, 0)
    pre = Preprocess.from_spec(t, {"style": "none", "scale": 1 / 255, "interpolation": "nearest"})
    img = Image.new("RGB", (4, 4), (255, 255, 255))
    img.putpixel((1, 2), (0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    x = pre(buf.getvalue())
    assert x.shape == (1, 4, 4, 1)
    assert x[0, 2, 1, 0] == 0.0 and x[0, 0, 0, 0] == 1.0


def test_grey_input_rejects_three_different_means():
    t = TensorInfo("g", [1, 1, 4, 4], "NCHW", 0, 4, 4, 1, 16, 1.0, 0)
    with pytest.raises(UserError, match="'mean' must have 1 value"):
        Preprocess.from_spec(t, {"style": "caffe"})
