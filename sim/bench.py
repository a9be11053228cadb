"""``tessera bench``: cycles, MACs and utilization per layer, on the cycle model or the RTL, and a report.

Layer cycles (the same definition for both backends): the layers of
``Program.meta["layers"]`` are taken in graph order; layer *i* is done when
the last of its instructions has finished, ``done_i``; its cycles are
``max(done_0..done_i) - max(done_0..done_{i-1})`` (0 for the first's
predecessor). So a layer owns the span from the previous layer's completion
to its own, work it overlaps with its predecessor (its weights prefetched
while the previous layer computes) costs it nothing, and the layer cycles
add up to the completion of the last layer (the run's total minus the few
cycles END takes). MACs are the source model's MACs (``macs``) of the layers
that run on the MAC array, not the MACs the array issues on padded channels
(``issued_macs``); pooling windows are not MACs. Utilization is
``macs / (cycles × rows × lanes)``.

``--out DIR`` writes ``report.md`` and PNG plots (matplotlib, Agg): per-layer
MACs, cycles and utilization; the loss breakdown of every layer; a roofline
against the config's memory port; projected latency at each board's clock;
and a table against published batch-1 figures.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tessera.arch import NpuConfig, get_config
from tessera.errors import UserError
from tessera.isa import Opcode

__all__ = [
    "PUBLISHED",
    "TARGET",
    "BenchResult",
    "bench_command",
    "bench_program",
    "layer_cycles",
    "load_program",
]

#: Utilization every layer is held to in the report.
TARGET = 0.85

#: Published batch-1 utilization figures (fraction of peak MACs) the report compares against.
#: ``note`` says what exactly the number is and how far it was checked.
PUBLISHED = [
    {"system": "Microsoft Brainwave NPU (Stratix 10)", "utilization": "~44 %",
     "source": 'J. Fowers et al., "A Configurable Cloud-Scale DNN Processor for Real-Time AI", ISCA 2018',
     "url": "https://doi.org/10.1109/ISCA.2018.00012",
     "note": "batch 1, fraction of peak as summarized in issue 9"},
    {"system": "Xilinx Vitis AI DPU (DPUCZDX8G)", "utilization": "~40–55 %",
     "source": "Xilinx/AMD, DPUCZDX8G for Zynq UltraScale+ MPSoCs Product Guide (PG338), performance tables",
     "url": "https://docs.amd.com/r/3.4-English/pg338-dpu",
     "note": "ResNet-50 fps × GOPS per frame over the DPU's peak GOPS, as summarized in issue 9"},
    {"system": "Gemmini (Berkeley, 16×16 systolic array)", "utilization": "~11 %",
     "source": 'H. Genc et al., "Gemmini: Enabling Systematic Deep-Learning Architecture Evaluation via '
               'Full-Stack Integration", DAC 2021',
     "url": "https://doi.org/10.1109/DAC18074.2021.9586216",
     "note": "ResNet-50 end to end in a full SoC, as summarized in issue 9"},
]

#: Boards whose synthesis reports (``build/synth/<board>/report.json``) the projection reads.
BOARDS = ("ulx3s-85f", "icebreaker", "arria10")

LOSSES = ("padding", "pipeline", "dma", "dependency", "fetch", "tail")
LOSS_HELP = {
    "padding": "MACs issued on channels padded to a multiple of lanes/rows",
    "pipeline": "CONV setup and drain (address generator, MAC pipeline, ACC write-back)",
    "dma": "MAC array waiting for a LOAD (weights or activations not there yet)",
    "dependency": "MAC array waiting for POST/STORE (accumulator tile not yet drained) or a full token queue",
    "fetch": "MAC array waiting for instruction fetch/dispatch",
    "tail": "no CONV in the span: epilogue, pooling and stores after the last MAC",
}


@dataclass
class LayerResult:
    name: str
    op: str
    cycles: int
    macs: int
    issued_macs: int = 0
    done: int = 0
    bytes_moved: int = 0
    in_shape: list = field(default_factory=list)
    out_shape: list = field(default_factory=list)
    losses: dict = field(default_factory=dict)    # cycles lost per LOSSES category (model backend)

    def utilization(self, config: NpuConfig) -> float:
        return self.macs / (self.cycles * config.macs_per_cycle) if self.cycles else 0.0


@dataclass
class BenchResult:
    config: NpuConfig
    backend: str
    cycles: int
    macs: int
    issued_macs: int
    layers: list[LayerResult]
    source: str = ""
    notes: list[str] = field(default_factory=list)
    model_cycles: int | None = None          # the cycle model's total, for comparison with an RTL run
    seconds: float | None = None

    @property
    def utilization(self) -> float:
        return self.macs / (self.cycles * self.config.macs_per_cycle) if self.cycles else 0.0

    def to_json(self) -> dict:
        """The CLI contract of DESIGN.md, exactly."""
        c = self.config
        return {"cycles": self.cycles, "macs": self.macs, "utilization": round(self.utilization, 6),
                "layers": [{"name": L.name, "cycles": L.cycles, "macs": L.macs,
                            "utilization": round(L.utilization(c), 6)} for L in self.layers]}


# ---- inputs --------------------------------------------------------------------------------------

def load_program(path: str, config: NpuConfig, calibrate=None):
    """A :class:`~tessera.program.Program` from a .tsp file, or compiled from a model for ``config``."""
    from tessera.program import Program
    p = Path(path)
    if not p.exists():
        raise UserError(f"{path}: no such file or folder")
    if p.suffix == ".tsp":
        prog = Program.load(path)
        prog.check_config(config)
        return prog
    from tessera.compiler.driver import compile_model, compile_tf_model
    from tessera.compiler.ir import CompileError
    from tessera.compiler.tf_frontend import is_tf_model
    try:
        if is_tf_model(path):
            prog, _ = compile_tf_model(path, config, calibrate=calibrate, name=path)
        elif p.is_dir():
            raise UserError(f"{path} is a folder without saved_model.pb; bench takes a .tsp program, "
                            f".onnx, .keras or a SavedModel folder")
        elif p.suffix == ".onnx":
            prog, _ = compile_model(path, config, calibrate=calibrate, name=path)
        else:
            raise UserError(f"{path}: unknown kind of file {p.suffix!r}; bench takes a .tsp program, "
                            f".onnx, .keras or a SavedModel folder")
    except CompileError as e:
        raise UserError(f"{path}: {e}") from None
    return prog


def _layer_meta(prog, issued: int) -> tuple[list[dict], list[str]]:
    layers = prog.meta.get("layers")
    if layers:
        return layers, []
    n = len(prog.instructions)
    macs = prog.meta.get("macs") or issued
    return ([{"name": "program", "op": "all", "macs": macs, "issued_macs": macs,
              "instructions": [[0, n - 1]], "in_shape": [], "out_shape": []}],
            [("the program has no per-layer table (meta['layers']; recompile with a current compiler): "
             "one row for the whole program, MACs as issued")])


# ---- per-layer attribution --------------------------------------------------------------------

def layer_cycles(layers: list[dict], ends: dict[int, int]) -> list[tuple[int, int]]:
    """(done, cycles) of every layer from instruction end times (index → end cycle); see the module doc."""
    out, prev = [], 0
    for d in layers:
        done = max((ends[i] for a, b in d["instructions"] for i in range(a, b + 1) if i in ends), default=prev)
        done = max(done, prev)
        out.append((done, done - prev))
        prev = done
    return out


def _dma_bytes(config: NpuConfig, ins) -> int:
    return ins.rows * ins.cols * config.word_bytes(ins.buf)


def _losses(config, d, span, timings, issued_macs, macs) -> dict:
    """Where the layer's cycles went that did not issue useful MACs (see LOSS_HELP), from the model's timings."""
    t0, t1 = span
    peak = config.macs_per_cycle
    out = dict.fromkeys(LOSSES, 0.0)
    convs = [timings[i] for a, b in d["instructions"] for i in range(a, b + 1)
             if i in timings and timings[i].op == "CONV"]
    issue = 0
    for t in convs:
        issue += t.busy
        out["pipeline"] += (t.end - t.start) - t.busy
        gap = max(0, t.start - max(t0, t.start - t.idle))
        if gap:
            out[{"LOAD": "dma", "POST": "dependency", "STORE": "dependency", "QUEUE": "dependency",
                 "FETCH": "fetch"}.get(t.waited_on, "dependency")] += gap
    out["padding"] = (issued_macs - macs) / peak if issued_macs > macs else 0.0
    useful = macs / peak
    out["tail"] = max(0.0, (t1 - t0) - useful - out["padding"] - out["pipeline"]
                      - out["dma"] - out["dependency"] - out["fetch"])
    return {k: round(v) for k, v in out.items()}


def _attribute(prog, layers, ends, timings=None) -> list[LayerResult]:
    c = prog.config
    res = []
    prev = 0
    for d, (done, cyc) in zip(layers, layer_cycles(layers, ends)):
        idx = [i for a, b in d["instructions"] for i in range(a, b + 1)]
        moved = sum(_dma_bytes(c, prog.instructions[i]) for i in idx
                    if prog.instructions[i].op in (Opcode.LOAD, Opcode.STORE))
        issued = int(d.get("issued_macs") if d.get("issued_macs") is not None else d.get("macs") or 0)
        # Pooling windows count as MACs in the compiler's table, but no MAC-array cycle does them.
        macs = int(d.get("macs") or 0) if issued else 0
        L = LayerResult(d["name"], d.get("op", "?"), cyc, macs, issued, done, moved,
                        list(d.get("in_shape") or []), list(d.get("out_shape") or []))
        if timings is not None:
            L.losses = _losses(c, d, (prev, done), timings, issued, macs)
        res.append(L)
        prev = done
    return res


# ---- backends ---------------------------------------------------------------------------------------

def bench_program(prog, backend: str = "model", *, source: str = "", sim=None) -> BenchResult:
    """Cycles per layer of ``prog`` on ``backend`` ("model" or "rtl")."""
    from tessera.sim.cyclemodel import predict
    c = prog.config
    sequential = c.core == "sequential"
    if sequential and backend == "model":
        raise UserError(f"config {c.name!r} has the sequential core, which the cycle model does not model "
                        f"(it models the parallel NPU): use --backend rtl")
    model = predict(prog)
    layers, notes = _layer_meta(prog, model.macs)
    notes += _host_op_note(prog)
    timings = {r.index: r for r in model.instructions}
    issued = int(prog.meta.get("macs") or model.macs)
    macs = sum(int(d.get("macs") or 0) for d in layers if d.get("issued_macs", 1)) or issued
    if backend == "model":
        ends = {i: t.end for i, t in timings.items()}
        L = _attribute(prog, layers, ends, timings)
        return BenchResult(c, "model", model.cycles, macs, issued, L, source, notes, model.cycles)
    if backend != "rtl":
        raise UserError(f"unknown backend {backend!r}; choose model or rtl")
    cycles, rtl_macs, trace, secs = _run_rtl(prog, sim)
    if sequential:
        # The parallel NPU's timings would say nothing about this core: totals only, no model comparison.
        notes.append("the sequential core: totals only (no per-layer rows, no cycle-model comparison)")
        return BenchResult(c, "rtl", cycles, macs, rtl_macs, [], source, notes, None, secs)
    if trace is None:
        notes.append("the RTL run gives totals only (RtlSim.run has no instruction trace yet): "
                     "no per-layer rows")
        L = []
    else:
        # Spans are the RTL's; the reasons inside them come from the model's timings.
        L = _attribute(prog, layers, trace, timings)
        notes.append("per-layer cycles from the RTL instruction trace; the loss breakdown is the cycle model's")
    return BenchResult(c, "rtl", cycles, macs, rtl_macs, L, source, notes, model.cycles, secs)


def _run_rtl(prog, sim=None):
    """(cycles, issued MACs, {instruction index: end cycle} or None, seconds) of one traced RTL run."""
    from tessera.host.runtime import make_backend
    from tessera.sim.emulator import NpuError
    opts = {"sim": sim} if sim is not None else {}
    try:
        try:
            be = make_backend("rtl", prog, trace=True, **opts)
        except TypeError:           # an RtlBackend without instruction traces
            be = make_backend("rtl", prog, **opts)
    except (OSError, RuntimeError) as e:
        raise UserError(f"the rtl backend could not start: {e}") from None
    try:
        # Every segment in turn, as the runtime runs them; the host ops between them are left out (the NPU's
        # timing does not depend on the data), and each segment's trace is offset by the cycles before it.
        cycles = macs = 0
        seconds, ends = 0.0, {}
        for k in range(len(prog.starts)):
            try:
                r = be.execute(prog.segment_addr(k))
            except NpuError as e:
                where = f" in segment {k + 1} of {len(prog.starts)}" if len(prog.starts) > 1 else ""
                raise UserError(f"the NPU stopped{where}: {e}") from None
            seg = _trace_ends(getattr(be, "trace", None))
            if ends is not None:
                ends = None if seg is None else {**ends, **{i: cycles + e for i, e in seg.items()}}
            cycles, macs, seconds = cycles + r.cycles, macs + r.macs, seconds + (r.seconds or 0.0)
        return cycles, macs, ends, seconds
    finally:
        be.close()


def _host_op_note(prog) -> list[str]:
    """Says that a multi-segment program's cycles are summed and which host ops they leave out."""
    if len(prog.starts) == 1:
        return []
    last = len(prog.starts) - 1
    ops = ", ".join(f"{h['op']} ({h['outputs'][0]}) after segment {h.get('after_segment', last) + 1}"
                    for h in prog.host_ops)
    note = f"{len(prog.starts)} NPU segments, cycles summed over them; host ops (not in the NPU cycles): "
    return [note + (ops or "none")]


def _trace_ends(trace) -> dict[int, int] | None:
    """Instruction index → end cycle from an RTL trace (:class:`tessera.sim.rtl.TraceEntry` list)."""
    if not trace:
        return None
    ends: dict[int, int] = {}
    for e in trace:
        ends[e.index] = max(e.end, ends.get(e.index, 0))
    return ends


# ---- CLI ---------------------------------------------------------------------------------------------

def bench_command(args) -> int:
    config = get_config(args.config)
    if args.out and os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out}: exists and is not a folder")
    prog = load_program(args.model, config, getattr(args, "calibrate", None))
    if args.backend == "rtl":
        print("tessera bench: running on the RTL (a whole ResNet-50 takes minutes)", file=sys.stderr, flush=True)
    res = bench_program(prog, args.backend, source=args.model)
    if args.out:
        from .bench_report import write_report
        try:
            write_report(res, args.out)
        except OSError as e:
            raise UserError(f"--out {args.out}: cannot write the report: {e.strerror}") from None
    for n in res.notes:
        print(f"tessera bench: {n}", file=sys.stderr)
    if args.json:
        print(json.dumps(res.to_json()))
    else:
        c = res.config
        print(f"{args.model} on {c.name} ({res.backend}): {res.cycles} cycles, {res.macs} MACs, "
              f"utilization {res.utilization:.1%} of {c.macs_per_cycle} MACs/cycle")
        for L in res.layers:
            print(f"  {L.name:40s} {L.op:12s} {L.cycles:10d} cycles {L.macs:12d} MACs {L.utilization(c):6.1%}")
        if args.out:
            print(f"report: {os.path.join(args.out, 'report.md')}")
    return 0
