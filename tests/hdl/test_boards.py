"""Board glue: multiplier mapping, the stand-in MAC array, PLL settings, board registry."""

import numpy as np
import pytest
from amaranth.hdl import Module, Signal, signed
from amaranth.sim import Simulator

from tessera.arch import ConfigError
from tessera.errors import UserError
from tessera.hdl.boards import BOARDS, ICEBREAKER_CONFIG, get_board, resolve_config
from tessera.hdl.boards.clocks import ecp5_pll_setting, ice40_pll_setting
from tessera.hdl.boards.macarray import MacArrayDemo, product


def _run_product(dsp, pairs):
    """Drive one product() with the pairs, one per cycle; return what comes out three cycles later."""
    m = Module()
    a, b = Signal(signed(8)), Signal(signed(8))
    p = product(m, a, b, dsp=dsp, name="mul")
    sim = Simulator(m)
    sim.add_clock(1e-6)
    got = []

    async def bench(ctx):
        for i in range(len(pairs) + 3):
            if i < len(pairs):
                ctx.set(a, int(pairs[i][0]))
                ctx.set(b, int(pairs[i][1]))
            await ctx.tick()
            got.append(ctx.get(p))

    sim.add_testbench(bench)
    sim.run()
    return got


@pytest.mark.parametrize("dsp", [None, "infer"])
def test_product_soft_and_inferred_equal_int8_products_after_three_cycles(dsp):
    rng = np.random.default_rng(7)
    corners = [(-128, -128), (-128, 127), (127, -128), (127, 127), (0, -128), (-1, -1), (-128, 1)]
    pairs = corners + [tuple(v) for v in rng.integers(-128, 128, size=(40, 2))]
    got = _run_product(dsp, pairs)
    # After tick k the output holds the product of the pair applied before tick k-2.
    assert got[2:2 + len(pairs)] == [x * y for x, y in pairs]


def test_product_rejects_unknown_dsp_kind():
    with pytest.raises(ValueError, match="dsp="):
        product(Module(), Signal(signed(8)), Signal(signed(8)), dsp="mult9x9", name="m")


@pytest.mark.parametrize("kwargs, match", [
    (dict(rows=2, lanes=3), "power of two"),
    (dict(rows=0, lanes=4), "rows"),
    (dict(rows=2, lanes=2, dsp_products=5), "dsp_products"),
    (dict(rows=2, lanes=2, dsp_products=1), "needs dsp"),
])
@pytest.mark.filterwarnings("ignore:.*created but never used")
def test_macarray_rejects_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MacArrayDemo(**kwargs)


def test_macarray_output_depends_on_the_computation():
    # A core whose LED never changes would let synthesis delete the whole array.
    core = MacArrayDemo(2, 4)
    sim = Simulator(core)
    sim.add_clock(1e-6)
    seen = []

    async def bench(ctx):
        for _ in range(120):
            await ctx.tick()
            seen.append(ctx.get(core.led))

    sim.add_testbench(bench)
    sim.run()
    assert 0 in seen[20:] and 1 in seen[20:]
    assert core.macs_per_cycle == 8


def test_ecp5_pll_hits_100mhz_from_25mhz_within_vco_limits():
    s = ecp5_pll_setting(25e6, 100e6)
    assert s.fout_hz == pytest.approx(100e6)
    p = s.params
    assert 400e6 <= 25e6 / p["CLKI_DIV"] * p["CLKFB_DIV"] * p["CLKOP_DIV"] <= 800e6
    assert p["CLKOP_CPHASE"] == p["CLKOP_DIV"] - 1


def test_ice40_pll_setting_is_close_and_within_limits():
    s = ice40_pll_setting(12e6, 30e6)
    p = s.params
    vco = 12e6 / (p["DIVR"] + 1) * (p["DIVF"] + 1)
    assert 533e6 <= vco <= 1066e6
    assert s.fout_hz == pytest.approx(vco / 2 ** p["DIVQ"])
    assert abs(s.fout_hz - 30e6) < 0.5e6


@pytest.mark.parametrize("fn, fout", [(ecp5_pll_setting, 500e6), (ice40_pll_setting, 5e6)])
def test_pll_rejects_unreachable_frequency(fn, fout):
    with pytest.raises(ValueError, match="outside"):
        fn(12e6, fout)


def test_boards_registry_and_configs():
    assert set(BOARDS) == {"ulx3s-85f", "icebreaker", "arria10"}
    assert resolve_config(get_board("icebreaker"), None) is ICEBREAKER_CONFIG
    assert resolve_config(get_board("ulx3s-85f"), None).name == "ulx3s-85f"
    assert resolve_config(get_board("ulx3s-85f"), "sim").name == "sim"
    with pytest.raises(UserError, match="unknown board"):
        get_board("zedboard")
    with pytest.raises(ConfigError, match="unknown config"):
        resolve_config(get_board("arria10"), "nope")
