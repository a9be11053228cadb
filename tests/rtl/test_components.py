"""Per-component cocotb benches under Verilator: the MAC array, the decoder and the rounding shift."""

import pytest

from tessera.arch import NpuConfig

from .components import Components, run_bench

CONFIG = NpuConfig(name="components", lanes=4, rows=8, dram_bytes=1 << 20)


@pytest.mark.parametrize("backpressure", [False, True], ids=["steady", "backpressure"])
def test_components_mac_decoder_rounding(tmp_path, backpressure):
    run_bench("components_bench", "components", Components, CONFIG, tmp_path, backpressure=backpressure)
