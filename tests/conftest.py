"""Shared fixtures: small NPU configs that exercise every shape relation quickly."""

import pytest

from tessera.arch import PRESETS, NpuConfig

#: rows = 2 × lanes, so one output block spans two activation words; bus wider than a word.
SMALL = NpuConfig(name="test-4x8", lanes=4, rows=8, abuf_words=4096, wbuf_words=1024, accbuf_words=1024,
                  pbuf_words=64, bus_bytes=16, dram_bytes=1 << 20, queue_depth=4, token_depth=4)


@pytest.fixture
def small_config():
    return SMALL


@pytest.fixture(scope="session", params=["test-4x8", "sim", "w4", "w2"])
def any_config(request):
    return {"test-4x8": SMALL, "sim": PRESETS["sim"].replace(dram_bytes=4 << 20),
            "w4": SMALL.replace(name="test-w4", weight_bits=4),
            "w2": SMALL.replace(name="test-w2", weight_bits=2, lanes=8, rows=8)}[request.param]
