"""RTL benchmark: Verilator build time of a config, simulation speed, and (optionally) one ResNet-50 image.

Prints a markdown section with the command that produced it::

    python benchmarks/bench_rtl.py [--config sim] [--no-fresh] [--no-resnet] [--out FILE]

By default (``--fresh``) it drops this design's cached build and the cached
Verilator run-time objects first, so the figure includes Verilog generation,
Verilator and all the C++ compile (a later design reuses the run-time objects);
and (``--resnet``) it compiles
``build/bench/resnet50_qdq_c8.onnx`` (made by benchmarks/bench_compiler.py) for
the config and runs one random image through the RTL backend, checking it
against the emulator. Targets (issue 5): build of `sim` < 2 min; ResNet-50 on
`sim` < 2 min.

Simulation speed is given twice: by wall time, and by the CPU time of the
simulation process (the load-independent cost; other jobs share the 2 cores).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _load() -> str:
    try:
        return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return ""


def conv_speed(sim, config, rng, trace=False):
    from tessera.sim.emulator import Emulator

    from tessera.isa import encode_program
    from tests.rtl.programs import conv_layer
    prog, segs, outs = conv_layer(config, rng, in_h=14, in_w=14, in_cb=8, ob=4)
    emu = Emulator(config)
    for a, b in [(0, encode_program(prog))] + segs:
        sim.write(a, b)
        emu.write(a, b)
    emu.run(0)
    regs = sim.run(0, trace=trace)
    exact = all(sim.read(a, n) == emu.read(a, n) for a, n in outs) and regs["ERROR"] == 0
    return regs, exact


def resnet(sim, config, rng):
    from tessera.compiler.driver import compile_model
    from tessera.host.runtime import Runtime
    model = ROOT / "build" / "bench" / "resnet50_qdq_c8.onnx"
    if not model.exists():
        return None
    t0 = time.perf_counter()
    prog, _ = compile_model(str(model), config)
    t_compile = time.perf_counter() - t0
    images = {t.name: rng.integers(-128, 128, size=(t.height, t.width, t.cpad), dtype=np.int8) for t in prog.inputs}
    emu = Runtime(prog)
    want = emu.run_quantized(images)
    rtl = Runtime(prog, backend="rtl", sim=sim)
    got = rtl.run_quantized(images)
    exact = all(np.array_equal(got[k], want[k]) for k in want)
    return {"compile": t_compile, "result": rtl.last, "exact": exact, "regs": rtl.backend.last_regs,
            "segments": len(prog.starts)}


def _phases(build: Path, t_begin: float) -> str:
    """Where a fresh build's time went, from its files' times (wall clock)."""
    try:
        gen = (build / "tessera_sim.v").stat().st_mtime
        vl = (build / "Vtop.mk").stat().st_mtime
        end = (build / "tessera_sim").stat().st_mtime
    except OSError:
        return ""
    return f" (Verilog generation {gen - t_begin:.0f} s, Verilator {vl - gen:.0f} s, C++ {end - vl:.0f} s)"


def _speed(cycles, regs) -> str:
    return (f"{regs['seconds']:.2f} s wall → **{cycles / regs['seconds']:,.0f} cycles/s**, "
            f"{regs['cpu_seconds']:.2f} s CPU → {cycles / regs['cpu_seconds']:,.0f} cycles/s of CPU")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="sim")
    ap.add_argument("--fresh", action=argparse.BooleanOptionalAction, default=True,
                    help="measure a cold build (default; --no-fresh reuses the cache)")
    ap.add_argument("--resnet", action=argparse.BooleanOptionalAction, default=True,
                    help="also run one ResNet-50 image (default, when the model has been built)")
    ap.add_argument("--out", help="also append the section to this file")
    args = ap.parse_args(argv)
    from tessera.arch import get_config
    config = get_config(args.config)
    from tessera.sim.rtl import RtlSim, _hdl_source_key, build_root
    build = build_root() / f"{config.hash()}-{_hdl_source_key(None, None, False, '-O2')}"
    if args.fresh:
        # Drop this design's cached build (and the shared run-time objects) so the figure is a cold one;
        # the new build stays cached.
        shutil.rmtree(build, ignore_errors=True)
        shutil.rmtree(build_root() / "_runtime", ignore_errors=True)
    rng = np.random.default_rng(0)
    lines = [f"## RTL simulation (`{config.name}`: {config.rows}×{config.lanes} MACs, {config.bus_bytes}-byte bus)", "",
             (f"Command: `{' '.join(['python benchmarks/bench_rtl.py', *(argv if argv is not None else sys.argv[1:])])}`"
              f" ({_load()} at start)"), ""]
    t0 = time.perf_counter()
    t_begin = time.time()
    cpu0 = os.times()
    sim = RtlSim(config)
    cpu1 = os.times()
    # Verilog generation runs in this process, Verilator and make in finished children.
    build_cpu = sum(cpu1[:4]) - sum(cpu0[:4])
    targets = []
    try:
        t_start = time.perf_counter() - t0
        lines.append(f"- Build ({'cold: Verilog generation + Verilator + C++' if args.fresh else 'cached'}): "
                     f"{sim.build_seconds:.1f} s{_phases(build, t_begin) if args.fresh else ''}, "
                     f"{build_cpu:.0f} s of CPU; "
                     f"simulation start {t_start - sim.build_seconds:.1f} s")
        regs, exact = conv_speed(sim, config, rng)
        util = regs["macs"] / (regs["cycles"] * config.macs_per_cycle)
        lines.append(f"- CONV 3×3, 14×14×{8 * config.lanes} → {4 * config.rows} channels: {regs['cycles']} cycles, "
                     f"MAC utilization {util:.1%}, {_speed(regs['cycles'], regs)}; bit-exact vs emulator: {exact}")
        tregs, texact = conv_speed(sim, config, rng, trace=True)
        lines.append(f"- The same CONV traced (`trace=True`): {len(tregs['trace'])} instructions listed, "
                     f"{tregs['cycles']} cycles, {_speed(tregs['cycles'], tregs)}; bit-exact: {texact}")
        if args.fresh:
            targets.append(f"`{config.name}` build < 2 min — {'met' if sim.build_seconds < 120 else 'not met'} "
                           f"({sim.build_seconds:.0f} s wall, {build_cpu:.0f} s of CPU)")
        if args.resnet:
            r = resnet(sim, config, rng)
            if r is None:
                lines.append("- ResNet-50: skipped (run benchmarks/bench_compiler.py first to build the model)")
            else:
                res = r["result"]
                cpu = "" if r["segments"] != 1 else (
                    f", {r['regs']['cpu_seconds']:.1f} s CPU ({res.cycles / r['regs']['cpu_seconds']:,.0f} "
                    f"cycles/s of CPU)")
                lines.append(f"- ResNet-50, one image: {res.cycles:,} cycles, {res.macs:,} MACs, utilization "
                             f"{res.utilization:.1%}, **{res.seconds:.1f} s wall** "
                             f"({res.cycles / res.seconds:,.0f} cycles/s){cpu}; compile {r['compile']:.1f} s; "
                             f"bit-exact vs emulator: {r['exact']}")
                cpu_t = "" if r["segments"] != 1 else f", {r['regs']['cpu_seconds']:.0f} s of CPU"
                targets.append(f"ResNet-50 on `{config.name}` < 2 min (aim 60 s) — "
                               f"{'met' if res.seconds < 120 else 'not met'} ({res.seconds:.0f} s wall{cpu_t})")
    finally:
        sim.close()
    if targets:
        lines.append("- Targets (issue 5): " + "; ".join(targets) + ".")
    lines.append(f"- Machine {_load()} at the end (other jobs share the 2 cores).")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
