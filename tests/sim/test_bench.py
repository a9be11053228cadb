"""`tessera bench`: the JSON contract, per-layer attribution, the report and its plots, bad input."""

import itertools
import json

import numpy as np
import pytest
from tessera.sim.bench import bench_program, layer_cycles
from tessera.sim.cyclemodel import predict
from tessera.sim.handwritten import conv_relu_pool

from tessera.cli import main
from tessera.isa import INSTR_BYTES, Instruction, Opcode, Unit
from tessera.program import Program

from ..conftest import SMALL

CONTRACT = {"cycles", "macs", "utilization", "layers"}
LAYER_KEYS = {"name", "cycles", "macs", "utilization"}


def _with_layers(prog: Program) -> Program:
    """The handwritten conv→ReLU→pool program with a hand-made meta['layers'] (conv part, pool part)."""
    ins = prog.instructions
    pool_at = next(i for i, x in enumerate(ins) if x.op == Opcode.POOL)
    end_at = next(i for i, x in enumerate(ins) if x.op == Opcode.END)
    issued = sum(predict(prog).instructions[i].macs for i in range(pool_at))
    prog.meta["layers"] = [
        {"name": "conv", "op": "Conv", "macs": issued // 2, "issued_macs": issued, "instructions": [[0, pool_at - 1]],
         "in_shape": [1, 3, 8, 8], "out_shape": [1, 8, 8, 8]},
        {"name": "pool", "op": "MaxPool", "macs": 4 * 8 * 4 * 4, "issued_macs": 0,
         "instructions": [[pool_at, end_at - 1]], "in_shape": [1, 8, 8, 8], "out_shape": [1, 8, 4, 4]}]
    return prog


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    prog = _with_layers(conv_relu_pool(SMALL, seed=1)[0])
    path = tmp_path_factory.mktemp("bench") / "p.tsp"
    prog.save(path)
    return prog, path


def _run(capsys, *argv):
    code = main(["bench", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_layer_cycles_span_from_previous_completion():
    layers = [{"instructions": [[0, 1]]}, {"instructions": [[2, 2], [4, 4]]}, {"instructions": [[3, 3]]}]
    # Layer 1 finishes at 90 (its instruction 4); layer 2 finished earlier (overlapped), so it costs 0.
    done = layer_cycles(layers, {0: 10, 1: 40, 2: 60, 3: 70, 4: 90})
    assert done == [(40, 40), (90, 50), (90, 0)]
    assert sum(c for _, c in done) == 90


def test_bench_json_follows_the_contract(program, capsys):
    prog, path = program
    code, out, err = _run(capsys, path, "--config", _cfg_file(prog, path), "--json")
    assert code == 0, err
    d = json.loads(out)
    assert set(d) == CONTRACT
    assert [set(L) for L in d["layers"]] == [LAYER_KEYS] * 2
    assert [L["name"] for L in d["layers"]] == ["conv", "pool"]
    model = predict(prog)
    # Layers add up to the last layer's completion, a few cycles (END) short of the total.
    assert 0 <= model.cycles - sum(L["cycles"] for L in d["layers"]) <= 10
    assert d["cycles"] == model.cycles
    conv, pool = d["layers"]
    assert conv["macs"] == prog.meta["layers"][0]["macs"] and pool["macs"] == 0  # pooling windows are no MACs
    assert d["macs"] == conv["macs"]
    assert d["utilization"] == pytest.approx(d["macs"] / (d["cycles"] * SMALL.macs_per_cycle), rel=1e-5)
    assert conv["utilization"] == pytest.approx(conv["macs"] / (conv["cycles"] * SMALL.macs_per_cycle), rel=1e-5)


def _cfg_file(prog, path):
    cfg = path.parent / "config.json"
    cfg.write_text(prog.config.to_json())
    return cfg


def test_bench_losses_explain_the_layer(program):
    prog, _ = program
    res = bench_program(prog, "model")
    conv = res.layers[0]
    # Half the issued MACs are padding by construction of the hand-made meta.
    assert conv.losses["padding"] == pytest.approx(conv.issued_macs / 2 / SMALL.macs_per_cycle, abs=1)
    assert conv.losses["dma"] > 0          # the conv waits for its weights and activations
    assert sum(conv.losses.values()) + conv.macs / SMALL.macs_per_cycle == pytest.approx(conv.cycles, abs=2)


def test_bench_report_writes_markdown_and_plots(program, tmp_path, capsys):
    prog, path = program
    out = tmp_path / "rep"
    code, _, err = _run(capsys, path, "--config", _cfg_file(prog, path), "--out", out)
    assert code == 0, err
    md = (out / "report.md").read_text()
    for name in ("layers.png", "losses.png", "roofline.png"):
        png = (out / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000, name
        assert f"]({name})" in md
        _assert_not_blank(out / name)
    for text in ("ISCA 2018", "PG338", "DAC 2021", "| conv |", "| pool |", "Projected latency",
                 "below 85 % because"):
        assert text in md
    assert "padding" in md.split("| conv |")[1].splitlines()[0]   # the shortfall names the padding


def _assert_not_blank(path):
    from PIL import Image
    img = np.asarray(Image.open(path).convert("L"))
    assert img.std() > 5, f"{path.name} is blank"


def test_bench_without_layer_table_reports_the_whole_program(capsys, tmp_path):
    prog, _ = conv_relu_pool(SMALL, seed=2)
    prog.meta.pop("layers", None)
    res = bench_program(prog, "model")
    assert [L.name for L in res.layers] == ["program"] and any("no per-layer table" in n for n in res.notes)
    assert res.layers[0].macs == predict(prog).macs


@pytest.mark.parametrize("case", ["missing", "suffix", "wrong_config", "out_is_file", "float_model"])
def test_bench_bad_input_is_a_user_error(case, program, tmp_path, capsys):
    prog, path = program
    args = {"missing": [tmp_path / "nope.tsp", "--config", "sim"],
            "suffix": [_touch(tmp_path / "m.txt"), "--config", "sim"],
            "wrong_config": [path, "--config", "sim"],
            "out_is_file": [path, "--config", _cfg_file(prog, path), "--out", _touch(tmp_path / "f")],
            "float_model": [_float_onnx(tmp_path), "--config", "sim"]}[case]
    want = {"missing": "no such file", "suffix": "unknown kind of file", "wrong_config": "built for config",
            "out_is_file": "not a folder", "float_model": "--calibrate"}[case]
    code, _, err = _run(capsys, *args)
    assert code == 2
    assert want in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def _touch(p):
    p.write_text("x")
    return p


def _float_onnx(tmp_path):
    import onnx
    from onnx import TensorProto as TP
    from onnx import helper as h
    from onnx import numpy_helper as nh
    w = nh.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    g = h.make_graph([h.make_node("Conv", ["x", "w"], ["y"], name="c")], "g",
                     [h.make_tensor_value_info("x", TP.FLOAT, [1, 3, 4, 4])],
                     [h.make_tensor_value_info("y", TP.FLOAT, [1, 4, 4, 4])], [w])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    m.ir_version = 8
    p = tmp_path / "float.onnx"
    onnx.save(m, p)
    return p


def test_bench_unknown_backend_is_a_user_error(program):
    from tessera.errors import UserError
    with pytest.raises(UserError, match="unknown backend"):
        bench_program(program[0], "fpga")


def test_sync_only_layers_are_ignored():
    # SYNC and END belong to no layer; a layer whose instructions are absent from the timings keeps the span.
    prog, _ = conv_relu_pool(SMALL, seed=3)
    n = len(prog.instructions)
    prog.instructions.insert(n - 1, Instruction("sync", unit="load"))
    _with_layers(prog)
    res = bench_program(prog, "model")
    assert all(L.cycles >= 0 for L in res.layers) and res.layers[0].cycles > 0


def _two_segments(config=SMALL):
    """A conv → host L2 normalization → conv program: two END-terminated NPU segments."""
    from tessera.compiler.driver import compile_model

    from ..compiler.netgen import quantize
    from ..compiler.test_frontend import _l2norm_net
    prog, _ = compile_model(quantize(_l2norm_net()), config)
    assert len(prog.starts) == 2 and [h["op"] for h in prog.host_ops] == ["L2Normalization"]
    return prog


def test_model_cycles_are_the_sum_over_segments():
    from tessera.sim.cyclemodel import CycleModel
    prog = _two_segments()
    bounds = [*prog.starts, len(prog.instructions)]
    alone = [CycleModel(prog.config).run(prog.instructions[a:b]) for a, b in itertools.pairwise(bounds)]
    model = predict(prog)
    assert model.segments == [r.cycles for r in alone] and model.cycles == sum(model.segments)
    assert model.macs == sum(r.macs for r in alone) > alone[0].macs > 0
    # Every instruction but the ENDs is timed, the second segment after the first has finished.
    ends = {i for i, x in enumerate(prog.instructions) if x.op == Opcode.END}
    assert sorted(t.index for t in model.instructions) == [i for i in range(len(prog.instructions)) if i not in ends]
    second = [t for t in model.instructions if t.index >= prog.starts[1]]
    assert second and min(t.start for t in second) >= model.segments[0]
    res = bench_program(prog, "model")
    assert res.cycles == model.cycles and 0 <= res.cycles - sum(L.cycles for L in res.layers) <= 20
    assert [L.name for L in res.layers][-1] == "head" and res.layers[-1].cycles > 0
    assert any("2 NPU segments" in n and "L2Normalization" in n for n in res.notes)


def test_bench_rtl_runs_every_segment(monkeypatch):
    # A stand-in RTL backend: what matters here is that bench starts the NPU at each segment and adds up.
    from tessera.host import runtime
    from tessera.host.runtime import RunResult
    from tessera.sim.rtl import TraceEntry
    prog = _two_segments()
    started = []

    class Backend:
        trace = None

        def execute(self, prog_addr=None):
            k = prog.starts.index((prog_addr - prog.prog_addr) // INSTR_BYTES)
            started.append(prog_addr)
            a = prog.starts[k]
            self.trace = [TraceEntry(a, prog_addr, Unit.LOAD, 1, 100 + k)]
            return RunResult("rtl", 100 + k, 10 * (k + 1), None, 0.5)

        def close(self):
            pass

    monkeypatch.setattr(runtime, "make_backend", lambda *a, **kw: Backend())
    res = bench_program(prog, "rtl")
    assert started == [prog.segment_addr(0), prog.segment_addr(1)]
    assert (res.cycles, res.issued_macs, res.seconds) == (100 + 101, 30, 1.0)
    assert res.model_cycles == predict(prog).cycles
    # The second segment's trace is offset by the first's cycles: its first instruction ends at 100 + 101.
    assert max(L.done for L in res.layers) == 201


def test_bench_rtl_two_segments_match_the_model():
    # On the RTL itself: both segments run (their MACs add up to the model's) and the cycles agree.
    from tessera.sim.rtl import RtlSim

    from ..rtl.test_npu import CONFIG
    from .test_cyclemodel import RTL_TOLERANCE
    prog = _two_segments(CONFIG)
    sim = RtlSim(CONFIG, opt="-O0")
    try:
        res = bench_program(prog, "rtl", sim=sim)
    finally:
        sim.close()
    model = predict(prog)
    assert res.issued_macs == model.macs and abs(res.cycles - model.cycles) <= RTL_TOLERANCE * res.cycles
    if res.layers:
        assert [L.name for L in res.layers] == [L.name for L in bench_program(prog, "model").layers]
        assert sum(L.cycles for L in res.layers) <= res.cycles and res.layers[-1].cycles > 0


def test_bench_of_a_sequential_config_refuses_the_cycle_model():
    # The cycle model times the parallel NPU: for the sequential core its figures would be fiction.
    from tessera.arch import PRESETS
    from tessera.errors import UserError
    prog, _ = conv_relu_pool(PRESETS["icebreaker"], seed=1)
    with pytest.raises(UserError, match="sequential core.*use --backend rtl"):
        bench_program(prog, "model")
