"""Board glue: multiplier mapping, the stand-in MAC array, PLL settings, board registry."""

import numpy as np
import pytest
from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.sim import Simulator

from tessera.arch import PRESETS, ConfigError, NpuConfig
from tessera.errors import UserError
from tessera.hdl.boards import BOARDS, ICEBREAKER_CONFIG, get_board, resolve_config
from tessera.hdl.boards.clocks import ecp5_pll_setting, ice40_pll_setting
from tessera.hdl.boards.macarray import MacArrayDemo
from tessera.hdl.boards.multipliers import (
    AND_ADD_INIT,
    DSP_A_SHIFT,
    LATENCY,
    and_add_halves,
    ecp5_and_add,
    mult18x18d_a_pins,
    product,
)
from tessera.hdl.boards.npu_top import NpuBoardCore
from tessera.isa import Instruction, encode_program


def _run_product(pairs, **kwargs):
    """Drive one product() with (a, wu) pairs, one per cycle; return its output after every tick."""
    m = Module()
    a, wu = Signal(signed(8)), Signal(unsigned(8))
    p = product(m, a, wu, name="mul", **kwargs)
    sim = Simulator(m)
    sim.add_clock(1e-6)
    got = []

    async def bench(ctx):
        for i in range(len(pairs) + LATENCY):
            if i < len(pairs):
                ctx.set(a, int(pairs[i][0]))
                ctx.set(wu, int(pairs[i][1]))
            await ctx.tick()
            got.append(ctx.get(p))

    sim.add_testbench(bench)
    sim.run()
    return got


@pytest.mark.parametrize("kwargs", [dict(soft="generic"), dict(dsp="infer")])
def test_product_equals_int8_times_offset_weight_after_latency(kwargs):
    rng = np.random.default_rng(7)
    corners = [(-128, 0), (-128, 255), (127, 255), (127, 0), (0, 255), (-1, 1), (-128, 128)]
    pairs = corners + [tuple(v) for v in zip(rng.integers(-128, 128, 40), rng.integers(0, 256, 40))]
    got = _run_product(pairs, **kwargs)
    # After tick k the output holds the product of the pair applied before tick k - (LATENCY - 1).
    assert got[LATENCY - 1:LATENCY - 1 + len(pairs)] == [x * y for x, y in pairs]


def _ccu2c_chain(halves, carry):
    """Bit-level model of chained ECP5 CCU2C halves ((INIT, (A, B, C, D)) each), as in yosys'
    cells_sim_ecp5.v (INJECT1 = "NO"), from the carry in ``carry``: returns the halves' sum bits."""
    out = []
    for init, (a, b, c, d) in halves:
        prop = init >> (a | b << 1 | c << 2 | d << 3) & 1
        gen = init >> (a | b << 1) & 1          # the LUT2 is INIT[3:0] over A, B
        out.append(prop ^ carry)
        carry = (~prop & gen | prop & carry) & 1
    return out


def test_ecp5_and_add_halves_give_the_partial_product_sum_exhaustively():
    # Whatever carry enters the chain (its CIN is unconnected), the halves and the AND for bit 0 add up.
    halves = and_add_halves()
    assert len(halves) == 10 and halves[0][2] is None and [h[2] for h in halves[1:]] == list(range(1, 10))
    for g0 in (0, 1):
        for g1 in (0, 1):
            for a in range(-128, 128):
                val = {f"a{i}": a >> i & 1 for i in range(8)}
                val.update(g0=g0, g1=g1, **{"None": 0, "1": 1})
                for cin in (0, 1):
                    sums = _ccu2c_chain([(init, (val[xa], val[xb], val[str(ya)], val[str(yb)]))
                                         for init, ((xa, xb), (ya, yb)), _ in halves], cin)
                    s = (a & g0 & 1) | sum(sums[i] << j for i, (_, _, j) in enumerate(halves) if j is not None)
                    assert s - (s >> 9 << 10) == g0 * a + 2 * g1 * a, (a, g0, g1, cin)


def test_ecp5_and_add_instances_follow_the_modelled_halves():
    m = Module()
    a, g0, g1 = Signal(signed(8)), Signal(), Signal()
    ecp5_and_add(m, a, g0, g1, "aa")
    m._MustUse__silence = True  # inspected, not built
    names = {f"a{i}": repr(a[i]) for i in range(8)} | {"g0": repr(g0), "g1": repr(g1)}
    halves = and_add_halves()
    for c in range(5):
        inst = m.submodules[f"aa_ccu{c}"]
        ports = {name: value for name, (value, _) in inst.ports.items()}
        assert ("CIN" in ports) == (c > 0) and ("COUT" in ports) == (c < 4), c   # no carry in or out of the chain
        for half in range(2):
            init, ((xa, xb), (ya, yb)), j = halves[2 * c + half]
            assert inst.parameters[f"INIT{half}"].value == init
            for pin, src in zip("ABCD", (xa, xb, ya, yb)):
                got = ports[f"{pin}{half}"]
                if src in names:
                    assert repr(got) == names[src], (c, half, pin)
                else:
                    assert got.value == (src == "1"), (c, half, pin)
            assert (f"S{half}" in ports) == (j is not None)


def test_mult18x18d_shifted_activation_gives_the_product_exhaustively():
    # The DSP multiplies its 18-bit A (signed) by its 18-bit B (unsigned); the activation enters A shifted
    # left with constant-0 low pins, so the product must appear, exact, at P[DSP_A_SHIFT:+16].
    np_a = np.arange(-128, 128)
    a18 = sum(((np_a >> int(src[1:])) & 1) << j for j in range(18) if (src := mult18x18d_a_pins(j)))
    a18 = np.where(a18 >= 1 << 17, a18 - (1 << 18), a18)               # the port is signed
    for wu in range(256):
        p36 = (a18 * wu) & ((1 << 36) - 1)
        p16 = (p36 >> DSP_A_SHIFT) & 0xFFFF
        assert np.array_equal(np.where(p16 >= 1 << 15, p16 - (1 << 16), p16), np_a * wu), wu


def test_mult18x18d_instance_follows_the_modelled_wiring():
    m = Module()
    a, wu = Signal(signed(8)), Signal(8)
    product(m, a, wu, dsp="ecp5", name="mul")
    ports = {name: value for name, (value, _) in m.submodules["mul"].ports.items()}
    m._MustUse__silence = True  # inspected, not built
    for j in range(18):
        src = mult18x18d_a_pins(j)
        if src is None:
            assert ports[f"A{j}"].value == 0, j
        else:
            assert repr(ports[f"A{j}"]) == repr(a[int(src[1:])]), j


def test_product_rejects_unknown_kinds():
    m = Module()
    with pytest.raises(ValueError, match="dsp="):
        product(m, Signal(signed(8)), Signal(8), dsp="mult9x9", name="m")
    with pytest.raises(ValueError, match="soft="):
        product(m, Signal(signed(8)), Signal(8), soft="booth", name="m")
    m._MustUse__silence = True  # built only to be rejected


@pytest.mark.parametrize("kwargs, match", [
    (dict(rows=2, lanes=3), "power of two"),
    (dict(rows=0, lanes=4), "rows"),
    (dict(rows=2, lanes=2, dsp_products=5), "dsp_products"),
    (dict(rows=2, lanes=2, dsp_products=1), "needs dsp"),
    (dict(rows=2, lanes=2, soft="booth"), "soft="),
    (dict(rows=2, lanes=2, product_regs=-1), "product_regs"),
])
def test_macarray_rejects_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MacArrayDemo(**kwargs)


@pytest.mark.parametrize("kwargs", [dict(), dict(dsp="infer", dsp_products=5),
                                    dict(dsp="infer", dsp_products=5, product_regs=2)])
def test_macarray_accumulates_true_int8_dot_products(kwargs):
    # Offset-binary weights with the shared correction must give sum(a * (wu - 128)) per row,
    # with hard and soft products mixed in one row; the LED must keep changing.
    core = MacArrayDemo(3, 4, rows_per_group=2, **kwargs)
    sim = Simulator(core)
    sim.add_clock(1e-6)
    trace = []

    async def bench(ctx):
        for _ in range(80):
            acts = [[ctx.get(a) for a in core.acts_of_row(r)] for r in range(core.rows)]
            wts = [[ctx.get(w) - 128 for w in row] for row in core.weights]
            trace.append((acts, wts, [ctx.get(acc) for acc in core.accs], ctx.get(core.led)))
            await ctx.tick()

    sim.add_testbench(bench)
    sim.run()
    dots = [[int(np.dot(a, w)) for a, w in zip(acts, wts)] for acts, wts, _, _ in trace]
    deltas = [[(cur - prev) for cur, prev in zip(trace[t][2], trace[t - 1][2])] for t in range(1, len(trace))]
    # Some fixed pipeline depth L maps the operands at cycle t onto the accumulator step at t + L.
    fits = [lat for lat in range(1, 15)
            if all(deltas[t + lat - 1] == dots[t] for t in range(10, len(trace) - 15))]
    assert fits, "no pipeline latency makes the accumulators equal the int8 dot products"
    assert any(any(d) for d in dots[10:]), "the stimulus is all zero"
    leds = [led for *_, led in trace[30:]]
    assert 0 in leds and 1 in leds
    assert core.macs_per_cycle == 12
    assert core.acts_of_row(0) is core.acts_of_row(1) and core.acts_of_row(2) is not core.acts_of_row(0)


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


def _run_board_core(init, cycles=300):
    cfg = NpuConfig(name="board-t", lanes=4, rows=8, abuf_words=64, wbuf_words=16, accbuf_words=16, pbuf_words=4,
                    bus_bytes=16, dram_bytes=1 << 20, queue_depth=4, token_depth=4)
    core = NpuBoardCore(cfg, mem_beats=64, init=init)
    sim = Simulator(core)
    sim.add_clock(1e-8)
    seen = []

    async def bench(ctx):
        for _ in range(cycles):
            await ctx.tick()
            seen.append((ctx.get(core.runs), ctx.get(core.led)))

    sim.add_testbench(bench)
    sim.run()
    return seen


def test_npu_board_core_reruns_a_program_from_its_memory_window():
    # END at address 0: every run finishes without error, so the LED follows the run counter.
    seen = _run_board_core(encode_program([Instruction("end")]))
    runs = seen[-1][0]
    assert runs >= 3
    assert all(led == r & 1 for r, led in seen)


def test_npu_board_core_shows_an_error_on_the_led():
    # An all-zero word is not a valid instruction: the run fails and the LED stays lit.
    seen = _run_board_core(b"")
    assert seen[-1][0] >= 1 and seen[-1][1] == 1


def test_npu_board_core_rejects_bad_memory_window():
    cfg = PRESETS["sim"]
    with pytest.raises(ValueError, match="power of two"):
        NpuBoardCore(cfg, mem_beats=100)
    with pytest.raises(ValueError, match="exceeds"):
        NpuBoardCore(cfg, mem_beats=2, init=bytes(33))


def test_ulx3s_core_puts_the_board_system_on_the_sdram_and_uart_pins():
    """The synth plan of the ULX3S top: SDRAM and FTDI pins placed, UART divisor and SDRAM timing from the PLL clock."""
    from amaranth_boards.ulx3s import ULX3S_85F_Platform

    from tessera.hdl.boards.protocol import DEFAULT_BAUD
    from tessera.hdl.boards.top import BoardTop
    from tessera.hdl.boards.ulx3s import Ulx3sCore
    small = NpuConfig(name="ulx3s-tiny", lanes=4, rows=4, abuf_words=256, wbuf_words=64, accbuf_words=64,
                      pbuf_words=8, bus_bytes=16, dram_bytes=32 << 20, queue_depth=2, token_depth=2, clock_mhz=50.0)
    core = Ulx3sCore(small)
    top = BoardTop("ecp5", core, small.clock_mhz * 1e6)
    assert core.clock_hz == top.clock_hz
    assert core.system.divisor == round(top.clock_hz / DEFAULT_BAUD)
    assert core.system.timing.refresh_interval == int(7.8e-6 * top.clock_hz)
    plan = ULX3S_85F_Platform().prepare(top, name="top")
    lpf = plan.files["top.lpf"]
    # SDRAM clock, a row address bit, the top data bit and the FTDI rx/tx lines are all located.
    for site in ("F19", "G19", "J17", "M1", "L4"):
        assert f'SITE "{site}"' in lpf, site
    il = plan.files["top.il"]
    assert "ODDRX1F" in il  # the SDRAM clock leaves through a DDR flop
    # The NPU core's reset (thousands of flip-flops at full size) enters one global network, and the
    # board's synchronized reset (the sync domain's, from the PLL lock) another.
    assert il.count("cell \\DCCA ") == 2
    cells = [c.split("end", 1)[0] for c in il.split("cell \\DCCA ")[1:]]
    core = [c for c in cells if "connect \\CLKI \\core_rst" in c]
    assert len(core) == 1 and "connect \\CLKO \\core_rst" in core[0]
    board = [c for c in cells if c not in core][0]
    # (yosys names the global's net after the sync domain's reset it becomes)
    assert "connect \\CLKI \\por_rst" in board and "connect \\CLKO \\rst\n" in board


def test_unit_harness_feeds_every_input_and_observes_every_output():
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    from tessera.hdl.boards.harness import UnitHarness, port_bits

    class Passthrough(wiring.Component):
        a: In(3)
        nested: Out(wiring.Signature({"b": In(5), "y": Out(5)}))
        x: Out(3)

        def elaborate(self, platform):
            m = Module()
            m.d.comb += [self.x.eq(self.a), self.nested.y.eq(self.nested.b)]
            return m

    unit = Passthrough()
    ins, outs = port_bits(unit)
    # flows as the unit sees them, through nested signatures
    assert sorted(n for n, _ in ins) == ["a", "nested.b"] and sorted(n for n, _ in outs) == ["nested.y", "x"]
    h = UnitHarness(unit)
    sim = Simulator(h)
    sim.add_clock(1e-6)
    seen = {"a": set(), "led": set()}

    async def bench(ctx):
        for _ in range(60):
            seen["a"].add(ctx.get(unit.a))
            seen["led"].add(ctx.get(h.led))
            await ctx.tick()

    sim.add_testbench(bench)
    sim.run()
    assert len(seen["a"]) == 8 and seen["led"] == {0, 1}
