"""Back end: single layers agree with onnxruntime within one step on every element, for every tiling path."""

import numpy as np
import pytest
from tessera.compiler.codegen import TileForBuffers
from tessera.compiler.frontend import load_onnx, lower
from tessera.compiler.passes import run_passes

from tessera.arch import PRESETS, NpuConfig
from tessera.isa import Opcode

from ..conftest import SMALL
from .netgen import (
    NetBuilder,
    assert_layer_exact,
    assert_network,
    check_against_ort,
    quantize,
    resnet,
)

SIM = PRESETS["sim"].replace(dram_bytes=4 << 20)
#: Buffers so small that tiles split rows, columns, output blocks and input channel blocks,
#: weights and parameters are reloaded per group, and two tokens per queue must suffice.
TINY = NpuConfig(name="tiny", lanes=8, rows=16, abuf_words=512, wbuf_words=128, accbuf_words=96, pbuf_words=4,
                 bus_bytes=8, dram_bytes=1 << 22, queue_depth=4, token_depth=2)
CONFIGS = {"sim": SIM, "small": SMALL, "tiny": TINY}


def _conv_model(in_shape, cout, seed=0, **kw):
    b = NetBuilder(in_shape, seed=seed)
    return b.model([b.conv("x", cout, **kw)])


CONV_CASES = {
    "3x3": {"in_shape": (1, 3, 9, 7), "cout": 5, "k": 3},
    "1x1-wide-channels": {"in_shape": (1, 37, 5, 6), "cout": 21, "k": 1},
    "3x3-stride2": {"in_shape": (1, 19, 11, 8), "cout": 33, "k": 3, "stride": 2},
    "7x7-stride2-pad3": {"in_shape": (1, 3, 15, 13), "cout": 8, "k": 7, "stride": 2},
    "5x3-asym": {"in_shape": (1, 6, 8, 10), "cout": 7, "k": (5, 3)},
    "dilated": {"in_shape": (1, 4, 10, 9), "cout": 6, "k": 3, "dil": 2},
    "3x3-deep": {"in_shape": (1, 70, 6, 5), "cout": 40, "k": 3},
    "no-pad": {"in_shape": (1, 10, 7, 7), "cout": 9, "k": 3, "pad": (0, 0), "bias": False},
}


@pytest.mark.parametrize("cfg", ["sim", "small", "tiny"])
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv_layer_within_one_step(case, cfg):
    m = _conv_model(seed=hash(case) % 100, **CONV_CASES[case])
    q = quantize(m, act="uint8" if len(case) % 2 else "int8")
    assert_layer_exact(check_against_ort(q, CONFIGS[cfg], n_inputs=2))


def test_conv_wide_rows_tile_columns():
    # One output row of 70 pixels does not fit the tiny config's input slot: tiles split columns.
    q = quantize(_conv_model((1, 3, 5, 70), 6, k=3))
    g = run_passes(lower(load_onnx(q)), TINY)
    plan = TileForBuffers(TINY)(g)[g.ops[0].name]
    assert plan.tw < 70
    assert_layer_exact(check_against_ort(q, TINY, n_inputs=2))


@pytest.mark.parametrize("cfg", ["sim", "tiny"])
@pytest.mark.parametrize("kind", ["max", "avg", "gap"])
def test_pool_layer_within_one_step(kind, cfg):
    b = NetBuilder((1, 3, 13, 11), seed=1)
    y = b.conv("x", 20, relu=True, stride=2 if kind == "gap" else 1)
    y = {"max": lambda v: b.maxpool(v, 3, 2, 1), "avg": lambda v: b.avgpool(v, 2, 2), "gap": b.gap}[kind](y)
    q = quantize(b.model([y]))
    assert_layer_exact(check_against_ort(q, CONFIGS[cfg], n_inputs=2))


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool_wide_rows_tile_columns(kind):
    # Three rows of 70 pixels do not fit the tiny config's input slot (ResNet-50's pool1 on a
    # 1,024-word ACT buffer is the same case): tiles split columns, the left padding only in the first.
    b = NetBuilder((1, 3, 7, 70), seed=4)
    y = b.conv("x", 8, relu=True)
    y = b.maxpool(y, 3, 2, 1) if kind == "max" else b.avgpool(y, 3, 2)
    q = quantize(b.model([y]))
    g = run_passes(lower(load_onnx(q)), TINY)
    pool = next(op for op in g.ops if op.kind == "pool")
    plan = TileForBuffers(TINY).pool(g, pool)
    assert plan.tw < g.tensors[pool.output].width
    tiled, whole = check_against_ort(q, TINY, n_inputs=2), check_against_ort(q, SIM, n_inputs=2)
    assert_layer_exact(tiled)
    # integer arithmetic: the strips give exactly what whole rows give
    for a, b_ in zip(tiled, whole, strict=True):
        np.testing.assert_array_equal(a["got"], b_["got"])


@pytest.mark.parametrize("cfg", ["sim", "tiny"])
def test_gemm_after_flatten_is_spatial_conv(cfg):
    # Flatten of a 3×2×5 tensor in front of Gemm: one 3×2 convolution with C-major weights.
    b = NetBuilder((1, 4, 6, 4), seed=6)
    y = b.conv("x", 5, stride=2, relu=True)
    y = b.gemm(b.flatten(y), 7)
    q = quantize(b.model([y]))
    assert_layer_exact(check_against_ort(q, CONFIGS[cfg], n_inputs=3))


def test_tiny_plans_split_channels_and_blocks():
    q = quantize(_conv_model(**CONV_CASES["3x3-deep"]))
    g = run_passes(lower(load_onnx(q)), TINY)
    p = TileForBuffers(TINY)(g)[g.ops[0].name]
    assert p.n_cg > 1 and p.n_og > 1 and not p.weights_resident and not p.params_resident


def test_plans_fit_the_buffers():
    b = NetBuilder((1, 3, 17, 15), seed=2)
    y = b.conv("x", 40, k=5, stride=1, relu=True)
    y = b.conv(y, 70, k=3, stride=2)
    y = b.maxpool(y, 3, 2, 1)
    g = run_passes(lower(load_onnx(quantize(b.model([y])))), TINY)
    t = TileForBuffers(TINY)
    for op in g.ops:
        p = t(g)[op.name]
        if op.kind == "conv":
            kh, kw = op.attrs["kernel"]
            assert p.g * kh * kw * p.cg <= TINY.wbuf_words // 2
            assert p.th * p.tw * p.g <= TINY.accbuf_words // 2
        else:
            assert p.th * p.tw * p.cg <= TINY.abuf_words // 8


def test_program_overlaps_load_with_compute():
    # Double buffering: DMA of the next tile runs while the current tile computes, so the program
    # finishes well before the sum of its instruction times.
    from tessera.compiler.driver import compile_model
    q = quantize(_conv_model((1, 16, 40, 24), 32, k=3))
    from tessera.sim.cyclemodel import predict
    prog, _ = compile_model(q, TINY)
    est = predict(prog)
    assert sum(i.op == Opcode.CONV for i in prog.instructions) > 4
    assert est.cycles < 0.75 * est.serial
    assert_layer_exact(check_against_ort(q, TINY, n_inputs=1, program=prog))


def test_weights_resident_loaded_once():
    from tessera.compiler.driver import compile_model
    q = quantize(_conv_model((1, 8, 40, 30), 16, k=3))
    prog, rep = compile_model(q, SIM)
    wgt_loads = [i for i in prog.instructions if i.op == Opcode.LOAD and i.buf.name == "WGT"]
    assert rep[0].tiles > 1 and len(wgt_loads) == 1
    assert np.isfinite(rep[0].macs) and rep[0].macs == 16 * 8 * 9 * 40 * 30


@pytest.mark.parametrize("cfg", ["sim", "tiny", "small"])
def test_diagonal_conv_reads_only_its_blocks(cfg):
    # A per-channel scale on a pooled 70-channel tensor is a diagonal 1×1 convolution: each ob group
    # loads and multiplies only the input words of its own channels.
    from tessera.compiler.driver import compile_model

    from .test_passes import QDQ
    q = QDQ((1, 70, 6, 5))
    p = q.op("MaxPool", [q.x], "p", kernel_shape=[2, 2], strides=[1, 1])
    k = np.random.default_rng(3).uniform(-2, 2, (70, 1, 1)).astype(np.float32)
    m = q.model(q.op("Mul", [p, q.init(k)], "mul", 0.06, 128))
    config = CONFIGS[cfg]
    g = run_passes(lower(load_onnx(m)), config)
    plan = TileForBuffers(config)(g)[g.ops[1].name]
    assert plan.og_ranges is not None and plan.cg < g.tensors[g.ops[1].inputs[0]].cpad // config.lanes
    prog, rep = compile_model(m, config)
    dense = 70 * 70 * 5 * 4
    assert prog.meta["macs"] - rep[0].macs < dense      # far less than a dense 70×70 convolution
    assert_layer_exact(check_against_ort(m, config, n_inputs=2, program=prog))


@pytest.mark.parametrize("cfg", ["sim", "tiny"])
def test_global_average_pool_beyond_pool_window(cfg):
    # A 20×19 window exceeds POOL's 15×15: it becomes a diagonal convolution whose kernel is split
    # into pieces accumulated in ACC.
    from tessera.compiler.driver import compile_model

    from .test_passes import QDQ
    q = QDQ((1, 5, 20, 19))
    y = q.op("GlobalAveragePool", [q.x], "gap", 0.01, 128)
    m = q.model(y)
    prog, rep = compile_model(m, CONFIGS[cfg])
    assert rep[0].op == "GlobalAveragePool→conv" or rep[0].op.startswith("GlobalAveragePool")
    assert all(i.k_h <= 15 and i.k_w <= 15 for i in prog.instructions if i.op == Opcode.CONV)
    assert sum(i.op == Opcode.CONV for i in prog.instructions) >= 4
    assert_layer_exact(check_against_ort(m, CONFIGS[cfg], n_inputs=2, program=prog))


def test_global_average_pool_rounds_ties_like_onnxruntime():
    # s_x / (s_y * 4) is 3/32 in float32 but not in float64: sums ≡ 16 mod 32 are exact .5 ties that
    # onnxruntime (float32 ratio, half to even) rounds to even, and a float64 multiplier pushes off.
    import onnx
    from onnx import TensorProto as TP
    from onnx import helper as h
    from onnx import numpy_helper as nh

    from tessera.compiler.driver import compile_model
    from tessera.host.runtime import Runtime

    from .netgen import ort_run
    sx, sy, c = np.float32(0.04), np.float32(0.10666666179895401), 64
    assert sx / (sy * np.float32(4)) == np.float32(3 / 32) and float(sx) / (float(sy) * 4) != 3 / 32
    inits = [nh.from_array(v, n) for v, n in [(sx, "sx"), (np.uint8(128), "zx"), (sy, "sy"), (np.uint8(120), "zy")]]
    nodes = [h.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             h.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             h.make_node("GlobalAveragePool", ["xd"], ["gap"], name="gap"),
             h.make_node("QuantizeLinear", ["gap", "sy", "zy"], ["gq"]),
             h.make_node("DequantizeLinear", ["gq", "sy", "zy"], ["y"])]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TP.FLOAT, [1, c, 2, 2])],
                     [h.make_tensor_value_info("y", TP.FLOAT, [1, c, 1, 1])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    onnx.checker.check_model(m)
    prog, _ = compile_model(m, SIM)
    rng = np.random.default_rng(3)
    ties = 0
    with Runtime(prog, backend="emulator") as rt:
        for _ in range(30):
            q = rng.integers(0, 256, (1, c, 2, 2))
            ties += int(((q - 128).sum(axis=(2, 3)) % 32 == 16).sum())
            x = (sx * (q - 128)).astype(np.float32)
            got, ref = rt.run({"x": x})["y"], ort_run(m, x)["y"]
            np.testing.assert_array_equal(np.rint((got - ref) / sy), 0)
    assert ties >= 20


@pytest.mark.parametrize("cfg", ["sim", "tiny"])
def test_fully_connected_over_large_spatial_input(cfg):
    # Flatten of 17×16 pixels in front of Gemm: a 17×16 kernel, split into CONV-sized pieces.
    b = NetBuilder((1, 3, 17, 16), seed=8)
    y = b.conv("x", 6, relu=True)
    q = quantize(b.model([b.gemm(b.flatten(y), 5)]))
    assert_network(check_against_ort(q, CONFIGS[cfg], n_inputs=2))


def test_weight_heavy_layer_keeps_weights_and_reloads_inputs():
    # Many output groups and little input per tile: ob groups go outermost, so each group's weights
    # load once instead of once per tile.
    from tessera.compiler.driver import compile_model
    q = quantize(_conv_model((1, 64, 6, 3), 256, k=1))
    g = run_passes(lower(load_onnx(q)), TINY)
    plan = TileForBuffers(TINY)(g)[g.ops[0].name]
    prog, rep = compile_model(q, TINY)
    assert rep[0].tiles > 1 and plan.n_og > 1 and plan.n_cg == 1
    wgt_loads = sum(i.op == Opcode.LOAD and i.buf.name == "WGT" for i in prog.instructions)
    assert wgt_loads == plan.n_og
    assert_layer_exact(check_against_ort(q, TINY, n_inputs=2, program=prog))


@pytest.mark.parametrize("cfg", ["sim", "tiny"])
def test_meta_layers_cover_every_instruction_once(cfg):
    # The bench attributes cycles to layers through these ranges: every instruction but SYNC/END
    # must belong to exactly one layer, in graph order, and the MAC counts must add up.
    from tessera.compiler.driver import compile_model

    from tessera.program import Program
    q = quantize(resnet(in_shape=(1, 3, 13, 11), widths=(8, 20), bottleneck=True))
    prog, rep = compile_model(q, CONFIGS[cfg])
    layers = Program.from_bytes(prog.to_bytes()).meta["layers"]
    assert [d["name"] for d in layers] == [r.name for r in rep]
    assert {"name", "op", "macs", "issued_macs", "instructions", "in_shape", "out_shape"} <= set(layers[0])
    owner = {}
    for k, d in enumerate(layers):
        assert d["op"] == rep[k].op and d["macs"] == rep[k].macs and d["out_shape"] == rep[k].out_shape
        for first, last in d["instructions"]:
            assert 0 <= first <= last < len(prog.instructions)
            for i in range(first, last + 1):
                assert i not in owner, f"instruction {i} in layers {owner[i]} and {k}"
                owner[i] = k
        # graph order: a layer's first instruction comes after the previous layer's first
        assert k == 0 or d["instructions"][0][0] > layers[k - 1]["instructions"][0][0]
    rest = {i for i, ins in enumerate(prog.instructions) if i not in owner}
    assert all(prog.instructions[i].op in (Opcode.SYNC, Opcode.END) for i in rest)
    assert not any(prog.instructions[i].op in (Opcode.SYNC, Opcode.END) for i in owner)
    assert sum(d["issued_macs"] for d in layers) == prog.meta["macs"]
    conv_macs = {k: 0 for k in range(len(layers))}
    for i, ins in enumerate(prog.instructions):
        if ins.op == Opcode.CONV:
            conv_macs[owner[i]] += ins.ob_count * ins.out_h * ins.out_w * ins.k_h * ins.k_w * ins.in_cb
    for k, d in enumerate(layers):
        assert conv_macs[k] * CONFIGS[cfg].macs_per_cycle == d["issued_macs"]
        # padding only adds work: a layer on the MAC array issues at least its model MACs (pools issue none)
        assert d["issued_macs"] >= d["macs"] or (d["issued_macs"] == 0 and "Pool" in d["op"])


def test_pool_interleaves_with_the_convolution_it_reads():
    # The max pool after a convolution runs on the POST unit while the MAC array still convolves:
    # its first POOL comes before the convolution's last CONV, and the result is unchanged.
    from tessera.compiler.driver import compile_model
    b = NetBuilder((1, 3, 64, 48), seed=6)
    q = quantize(b.model([b.maxpool(b.conv("x", 16, relu=True), 3, 2, 1)]))
    prog, rep = compile_model(q, SIM)
    ops = [i.op for i in prog.instructions]
    last_conv = max(k for k, o in enumerate(ops) if o == Opcode.CONV)
    assert rep[0].tiles > 2 and ops.index(Opcode.POOL) < last_conv
    assert len(prog.meta["layers"][1]["instructions"]) > 1        # interleaved: several runs of instructions
    assert_layer_exact(check_against_ort(q, SIM, n_inputs=2, program=prog))
    # where the pooling's tiles do not fit beside the convolution's, the two run one after the other
    b = NetBuilder((1, 3, 40, 24), seed=6)
    prog, _ = compile_model(quantize(b.model([b.maxpool(b.conv("x", 16, relu=True), 3, 2, 1)])), TINY)
    ops = [i.op for i in prog.instructions]
    assert ops.index(Opcode.POOL) > max(k for k, o in enumerate(ops) if o == Opcode.CONV)


@pytest.mark.parametrize("cfg", ["sim", "tiny"])
def test_strided_1x1_conv_loads_only_the_pixels_it_reads(cfg):
    from tessera.compiler.driver import compile_model
    q = quantize(_conv_model((1, 24, 13, 11), 20, k=1, stride=2, pad=(0, 0)))
    prog, _ = compile_model(q, CONFIGS[cfg])
    config = CONFIGS[cfg]
    act_words = sum(i.rows * i.cols for i in prog.instructions if i.op == Opcode.LOAD and i.buf.name == "ACT")
    # 7×6 output pixels: every input word is loaded once per ob group, never the skipped pixels
    cb, ob_groups = -(-24 // config.lanes), sum(i.op == Opcode.EPILOGUE for i in prog.instructions)
    assert act_words <= 7 * 6 * cb * ob_groups
    assert all(i.stride_h == 1 and i.stride_w == 1 for i in prog.instructions if i.op == Opcode.CONV)
    assert_layer_exact(check_against_ort(q, config, n_inputs=2, program=prog))


def test_weight_heavy_small_image_takes_whole_image_tiles():
    # ResNet's 7×7 stage: with all input channels per step only two rows fit the input slot and
    # every row band would reload 1 MB of weights; the estimate splits the channels instead, so
    # one tile covers the image and each weight group loads once.
    from tessera.compiler.driver import compile_model
    q = quantize(_conv_model((1, 2048, 7, 7), 512, k=1))
    cfg = SIM
    g = run_passes(lower(load_onnx(q)), cfg)
    plan = TileForBuffers(cfg)(g)[g.ops[0].name]
    assert (plan.th, plan.tw) == (7, 7) and plan.n_cg > 1
    prog, _ = compile_model(q, cfg)
    wgt_words = sum(i.cols for i in prog.instructions if i.op == Opcode.LOAD and i.buf.name == "WGT")
    assert wgt_words == 2048 // 16 * 512 // 16
    assert_layer_exact(check_against_ort(q, cfg, n_inputs=1, program=prog))


ARRIA10 = PRESETS["arria10"]


def test_large_weights_over_few_pixels_stream_in_ob_groups():
    # ResNet's res5 1×1 512→2048 on 64×64 MACs: all its weights (1 MB) fit one slot, but loading them
    # before the first MAC costs ~8k cycles of 12.5k; smaller ob groups let the MAC array start
    # after the first group and stream the rest behind it.
    from tessera.compiler.driver import compile_model
    q = quantize(_conv_model((1, 512, 7, 7), 2048, k=1), calib=2)
    g = run_passes(lower(load_onnx(q)), ARRIA10)
    plan = TileForBuffers(ARRIA10)(g)[g.ops[0].name]
    assert plan.n_og > 1 and plan.g * plan.n_og >= 2048 // 64
    prog, _ = compile_model(q, ARRIA10)
    ins = prog.instructions
    first_conv = next(k for k, i in enumerate(ins) if i.op == Opcode.CONV)
    before = sum(i.cols for i in ins[:first_conv] if i.op == Opcode.LOAD and i.buf.name == "WGT")
    assert before * plan.n_og <= 512 // 64 * 2048 // 64
    assert_layer_exact(check_against_ort(q, ARRIA10, n_inputs=1, program=prog))


def test_few_large_tiles_are_halved():
    # res4's 1×1 1024→256 at 14×14 fits one tile on arria10; nothing overlaps its epilogue and store,
    # so two 7-row tiles finish sooner (the first tile's epilogue runs beside the second's MACs).
    q = quantize(_conv_model((1, 1024, 14, 14), 256, k=1), calib=2)
    g = run_passes(lower(load_onnx(q)), ARRIA10)
    plan = TileForBuffers(ARRIA10)(g)[g.ops[0].name]
    assert (plan.th, plan.tw) == (7, 14)
    # tiny tiles stay whole: their tail is a few memory round trips
    q = quantize(_conv_model((1, 16, 4, 4), 16, k=1), calib=2)
    g = run_passes(lower(load_onnx(q)), SIM)
    assert TileForBuffers(SIM)(g)[g.ops[0].name].th == 4
