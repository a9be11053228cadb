"""Utilization benchmark: ResNet-50 at batch 1 on the cycle model (``sim``, ``arria10``) and the RTL (``sim``).

Prints a markdown section with the command that produced it, and writes the
full `tessera bench` reports (report.md + PNG plots) to ``docs/bench/<config>/``::

    python benchmarks/bench_utilization.py [--configs sim,arria10] [--rtl-configs sim,arria10] [--no-rtl] [--out FILE]

The model is the ResNet-50 of benchmarks/bench_compiler.py (keras.applications
ResNet50(weights=None) → tf2onnx → onnxruntime QDQ), cached in ``build/bench/``.
With ``--rtl`` (default) the programs of ``--rtl-configs`` (default ``sim,arria10``) also run
on the RTL (minutes for ``sim``; ``arria10``'s 64×64 array takes about 18 min to build once, then a minute),
each checked layer by layer against the model, and on ``sim`` single layers of
ResNet-50's shapes are compared model vs RTL (seconds each).
Targets (issue 9): ≥ 85 % MAC utilization at batch 1; cycle model within 3 % of the RTL.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

#: Single layers with ResNet-50's shapes (C, H, W, out channels, kernel, stride): model vs RTL per layer.
LAYERS = [("res2 1×1 64→64", (64, 56, 56), 64, 1, 1), ("res2 3×3 64", (64, 56, 56), 64, 3, 1),
          ("res2 1×1 64→256", (64, 56, 56), 256, 1, 1), ("res2 1×1 256→64", (256, 56, 56), 64, 1, 1),
          ("res3 3×3/2 128", (128, 56, 56), 128, 3, 2), ("res4 1×1 1024→256", (1024, 14, 14), 256, 1, 1),
          ("res5 3×3 512", (512, 7, 7), 512, 3, 1)]


def resnet50() -> Path:
    from bench_compiler import BUILD, keras_float, qdq
    return qdq(keras_float(BUILD / "resnet50_float.onnx"), BUILD / "resnet50_qdq_c8.onnx", 8)


def single_layer(shape, cout, k, stride):
    from tests.compiler.netgen import NetBuilder, quantize
    b = NetBuilder((1, *shape), seed=1)
    return quantize(b.model([b.conv("x", cout, k, stride, relu=True)]), calib=2)


def layers_by_cuts(prog, sim, k: int) -> list[str]:
    """Per-layer model vs RTL without an instruction trace: run the program cut after layer i-1 and after
    layer i (+END) on both; the difference of the two cycle counts is layer i's cycles."""
    from tessera.sim.cyclemodel import predict
    from tessera.sim.rtl import RtlBackend

    from tessera.isa import Instruction
    from tessera.program import Program
    layers = prog.meta["layers"]
    # Evenly spread over the network (the stem's successor first).
    picks = sorted({1} | {len(layers) * j // k for j in range(1, k)})

    def cut(i):
        last = max(b for _, b in layers[i]["instructions"])
        p = Program(prog.config, prog.instructions[:last + 1] + [Instruction("end")], prog.constants,
                    prog.prog_addr, prog.const_addr, prog.scratch_addr, prog.scratch_size)
        return RtlBackend(p, sim=sim, watchdog=0).execute().cycles, predict(p).cycles

    lines = ["", (f"Whole-network layers, model vs RTL (the program cut after layer i−1 and after layer i, "
                 f"{len(picks)} layers):"), "",
             "| # | layer | RTL cycles | model cycles | difference |", "|---:|---|---:|---:|---:|"]
    for i in picks:
        (r0, m0), (r1, m1) = cut(i - 1), cut(i)
        r, m = r1 - r0, m1 - m0
        lines.append(f"| {i} | {layers[i]['name']} | {r:,} | {m:,} | {(m - r) / max(1, r):+.2%} |")
    return lines


def _load() -> str:
    try:
        return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return ""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="sim,arria10")
    ap.add_argument("--rtl", action=argparse.BooleanOptionalAction, default=True,
                    help="also run ResNet-50 on the RTL of --rtl-configs and single layers on `sim` (default)")
    ap.add_argument("--rtl-configs", default="sim,arria10",
                    help="configs (of --configs) whose ResNet-50 also runs on the RTL (default sim,arria10; "
                         "arria10's first build takes about 18 min)")
    ap.add_argument("--rtl-layers", type=int, default=4,
                    help="ResNet-50 layers checked model vs RTL one by one (two cut runs each; default 4)")
    ap.add_argument("--docs", default=str(ROOT / "docs" / "bench"), help="where the reports go")
    ap.add_argument("--out", help="also append the section to this file")
    args = ap.parse_args(argv)

    import numpy as np
    from tessera.compiler.driver import compile_model
    from tessera.host.runtime import Runtime
    from tessera.sim.bench import TARGET, bench_program
    from tessera.sim.bench_report import board_clocks, effective_bandwidth, write_report
    from tessera.sim.cyclemodel import predict

    from tessera.arch import get_config

    t_start = time.perf_counter()
    model = resnet50()
    rel = model.relative_to(ROOT)
    lines = ["## Batch-1 utilization: ResNet-50 (224×224)", "",
             (f"Command: `python benchmarks/bench_utilization.py --configs {args.configs}"
             f"{' --rtl-configs ' + args.rtl_configs if args.rtl else ' --no-rtl'}` ({_load()} at start). "
             f"Model: `{rel}` "
             f"(benchmarks/bench_compiler.py). Utilization = the model's MACs (3.86 G; pooling windows "
             f"excluded) / (cycles × rows × lanes); per-layer cycles as defined in docs/utilization.md. "
             f"Full reports with plots: docs/bench/<config>/report.md."), "",
             ("| config | backend | MACs/cycle | cycles | utilization | array busy | layers < 85 % (their share of "
             "cycles) | latency at target clock | target ≥ 85 % |"),
             "|---|---|---:|---:|---:|---:|---|---:|---|"]
    results = {}
    for name in args.configs.split(","):
        cfg = get_config(name)
        prog, _ = compile_model(str(model), cfg)
        res = bench_program(prog, "model", source=str(rel))
        results[name] = (prog, res)
        out = Path(args.docs) / name
        write_report(res, out, root=ROOT,
                     command=f"tessera bench {rel} --config {name} --backend model --out docs/bench/{name}")
        below = [L for L in res.layers if L.cycles and L.utilization(cfg) < TARGET]
        share = sum(L.cycles for L in below) / max(1, res.cycles)
        ms = res.cycles / (cfg.clock_mhz * 1e3)
        lines.append(f"| `{name}` | model | {cfg.macs_per_cycle} | {res.cycles:,} | **{res.utilization:.1%}** | "
                     f"{res.issued_macs / (res.cycles * cfg.macs_per_cycle):.1%} | {len(below)} of "
                     f"{len(res.layers)} ({share:.0%}) | {ms:.2f} ms at {cfg.clock_mhz:g} MHz | "
                     f"{'met' if res.utilization >= TARGET else 'not met'} |")
    rtl_lines = []
    for name in (args.rtl_configs.split(",") if args.rtl else []):
        if name not in results:
            continue
        from tessera.sim.rtl import RtlBackend, RtlSim
        cfg = get_config(name)
        prog, res_model = results[name]
        t0 = time.perf_counter()
        with RtlSim(cfg) as sim:
            build = time.perf_counter() - t0
            # The same run checks the outputs: a random input image in the RTL's memory, the outputs
            # compared byte for byte with the emulator's on that image.
            rng = np.random.default_rng(0)
            images = {t.name: t.quantize(rng.normal(size=t.shape).astype(np.float32)) for t in prog.inputs}
            for t in prog.inputs:
                sim.write(t.addr, images[t.name].tobytes())
            t0 = time.perf_counter()
            res = bench_program(prog, "rtl", source=str(rel), sim=sim)
            wall = time.perf_counter() - t0
            err = (res_model.cycles - res.cycles) / res.cycles
            exact = None
            if len(prog.starts) == 1:
                with Runtime(prog) as emu:
                    want = emu.run_quantized(images)
                exact = all(sim.read(t.addr, t.nbytes) == want[t.name].tobytes() for t in prog.outputs)
            lines.append(f"| `{name}` | rtl | {cfg.macs_per_cycle} | {res.cycles:,} | **{res.utilization:.1%}** | "
                         f"{res.issued_macs / (res.cycles * cfg.macs_per_cycle):.1%} | "
                         f"{'per-layer from the RTL trace' if res.layers else 'totals only (no RTL trace yet)'} | "
                         f"{res.cycles / (cfg.clock_mhz * 1e3):.2f} ms at {cfg.clock_mhz:g} MHz | "
                         f"{'met' if res.utilization >= TARGET else 'not met'} |")
            if res.layers:
                write_report(res, Path(args.docs) / f"{name}-rtl", root=ROOT,
                             command=f"tessera bench {rel} --config {name} --backend rtl --out docs/bench/{name}-rtl")
            check = ("" if exact is None else
                     f" Outputs on a random input image vs the emulator: **{'bit-exact' if exact else 'DIFFERENT'}**.")
            rtl_lines += ["", (f"Cycle model vs RTL, whole ResNet-50 on `{name}`: model {res_model.cycles:,}, RTL "
                              f"{res.cycles:,} cycles: **{err:+.2%}** (RTL build or cache {build:.0f} s, "
                              f"run {wall:.0f} s).{check}"), ""]
            if res.layers:
                errs = sorted((((Lm.cycles - Lr.cycles) / max(1, Lr.cycles), i, Lr, Lm)
                               for i, (Lm, Lr) in enumerate(zip(res_model.layers, res.layers))),
                              key=lambda e: -abs(e[0]))
                ok = sum(abs(e[0]) <= 0.03 for e in errs)
                rtl_lines += [(f"Per layer on `{name}` (RTL instruction trace vs model, layer cycles as in "
                              f"docs/utilization.md): **{ok} of {len(errs)} layers within 3 %**, largest differences:"),
                              "", "| # | layer | RTL cycles | model cycles | difference |", "|---:|---|---:|---:|---:|"]
                rtl_lines += [f"| {i} | {Lr.name} | {Lr.cycles:,} | {Lm.cycles:,} | {e:+.2%} |"
                              for e, i, Lr, Lm in errs[:6]]
                rtl_lines.append("")
            if name != "sim":
                continue
            rtl_lines += [("Single layers with ResNet-50's shapes (compiled alone for `sim`), model vs RTL cycle "
                          "counter:"), "", "| layer | RTL cycles | model cycles | difference |", "|---|---:|---:|---:|"]
            for label, shape, cout, k, stride in LAYERS:
                p, _ = compile_model(single_layer(shape, cout, k, stride), cfg)
                r = RtlBackend(p, sim=sim, watchdog=0).execute().cycles
                m = predict(p).cycles
                rtl_lines.append(f"| {label} | {r:,} | {m:,} | {(m - r) / r:+.2%} |")
            if args.rtl_layers and not res.layers:
                rtl_lines += layers_by_cuts(prog, sim, args.rtl_layers)
    lines += rtl_lines
    lines += ["", "Where the cycles go (cycle model, share of each config's cycles):", "",
              ("| config | useful MACs | padding | pipeline | dma | dependency | fetch | tail | LOAD rate "
              "(B/cycle of the port's) |"), "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, (prog, res) in results.items():
        cfg = res.config
        tot = {k: sum(L.losses.get(k, 0) for L in res.layers) for k in
               ("padding", "pipeline", "dma", "dependency", "fetch", "tail")}
        cyc = max(1, sum(L.cycles for L in res.layers))
        lines.append(f"| `{name}` | {res.macs / cfg.macs_per_cycle / cyc:.1%} | "
                     + " | ".join(f"{v / cyc:.1%}" for v in tot.values())
                     + f" | {effective_bandwidth(cfg):.1f} of {cfg.bus_bytes} |")
    clocks = board_clocks(ROOT)
    lines += ["", "Clocks for the projections: " + "; ".join(f"{b['board']} {b['mhz']:g} MHz ({b['source']})"
                                                        for b in clocks) + ".",
              f"Machine {_load()} at the end; {time.perf_counter() - t_start:.0f} s in all."]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
