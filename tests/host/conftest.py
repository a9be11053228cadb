"""Fixtures of the host tests: the tiny classifier program and encoded test images."""

import io

import numpy as np
import pytest
from PIL import Image

from tessera.host.tinyclassifier import tiny_classifier


def encode(rgb: np.ndarray, fmt: str = "PNG", **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(buf, fmt, **save)
    return buf.getvalue()


def photo(seed: int, size=(48, 40), fmt: str = "PNG") -> bytes:
    """A smooth random colour field (like a photo at low resolution), encoded; distinct per seed."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8))
    return encode(np.asarray(base.resize(size, Image.Resampling.BICUBIC)), fmt)


@pytest.fixture(scope="session")
def program():
    return tiny_classifier("sim", seed=0)


@pytest.fixture(scope="session")
def program_path(program, tmp_path_factory):
    path = tmp_path_factory.mktemp("host") / "tiny.tsp"
    program.save(path)
    return path
