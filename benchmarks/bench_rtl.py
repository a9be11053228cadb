"""RTL benchmark: Verilator build time of a config, simulation speed, and (optionally) one ResNet-50 image.

Prints a markdown section with the command that produced it::

    python benchmarks/bench_rtl.py [--config sim] [--no-fresh] [--no-resnet] [--out FILE]

By default (``--fresh``) it drops this design's cached build first, so the
figure includes Verilog generation, Verilator and the C++ compile; and
(``--resnet``) it compiles
``build/bench/resnet50_qdq_c8.onnx`` (made by benchmarks/bench_compiler.py) for
the config and runs one random image through the RTL backend, checking it
against the emulator. Targets (issue 5): build of `sim` < 2 min; ResNet-50 on
`sim` < 2 min.
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


def conv_speed(sim, config, rng):
    from tessera.sim.emulator import Emulator

    from tessera.isa import encode_program
    from tests.rtl.programs import conv_layer
    prog, segs, outs = conv_layer(config, rng, in_h=14, in_w=14, in_cb=8, ob=4)
    emu = Emulator(config)
    for a, b in [(0, encode_program(prog))] + segs:
        sim.write(a, b)
        emu.write(a, b)
    emu.run(0)
    regs = sim.run(0)
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
    return {"compile": t_compile, "result": rtl.last, "exact": exact}


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
    if args.fresh:
        # Drop this design's cached build so the figure is a cold one; the new build stays cached.
        shutil.rmtree(build_root() / f"{config.hash()}-{_hdl_source_key(None, None, False, '-O2')}", ignore_errors=True)
    rng = np.random.default_rng(0)
    lines = [f"## RTL simulation (`{config.name}`: {config.rows}×{config.lanes} MACs, {config.bus_bytes}-byte bus)", "",
             (f"Command: `python benchmarks/bench_rtl.py {' '.join(argv if argv is not None else sys.argv[1:])}`"
              f" ({_load()} at start)"), ""]
    try:
        t0 = time.perf_counter()
        sim = RtlSim(config)
        t_start = time.perf_counter() - t0
        lines.append(f"- Build ({'cold: Verilog generation + Verilator + C++' if args.fresh else 'cached'}): "
                     f"{sim.build_seconds:.1f} s; simulation start {t_start - sim.build_seconds:.1f} s")
        regs, exact = conv_speed(sim, config, rng)
        util = regs["macs"] / (regs["cycles"] * config.macs_per_cycle)
        lines.append(f"- CONV 3×3, 14×14×{8 * config.lanes} → {4 * config.rows} channels: {regs['cycles']} cycles, "
                     f"MAC utilization {util:.1%}, {regs['seconds']:.2f} s → "
                     f"**{regs['cycles'] / regs['seconds']:,.0f} cycles/s**; bit-exact vs emulator: {exact}")
        if args.resnet:
            r = resnet(sim, config, rng)
            if r is None:
                lines.append("- ResNet-50: skipped (run benchmarks/bench_compiler.py first to build the model)")
            else:
                res = r["result"]
                lines.append(f"- ResNet-50, one image: {res.cycles:,} cycles, {res.macs:,} MACs, utilization "
                             f"{res.utilization:.1%}, {res.seconds:.1f} s wall "
                             f"({res.cycles / res.seconds:,.0f} cycles/s); compile {r['compile']:.1f} s; "
                             f"bit-exact vs emulator: {r['exact']}")
        sim.close()
    finally:
        pass
    lines.append(f"- Machine {_load()} at the end (other jobs share the 2 cores).")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
