"""Sequential NPU benchmark (the iCEBreaker's core): a real model on the Verilated PicoRV32 + firmware.

Prints a markdown section with the command that produced it::

    python benchmarks/bench_seq.py [--images 3] [--out FILE]

It trains the zoo's digits ResNet on scikit-learn's handwritten digits (once, into build/bench/digits), compiles
it for the ``icebreaker`` preset, and runs held-out test images through the RTL backend (the Verilated
sequential core), each checked byte for byte against the emulator. From the cycle counts it projects the time
an image takes on the board at the preset's clock and, when ``make synth`` has left a report
(build/synth/icebreaker/report.json), at its post-route Fmax. A 3×3 CONV layer gives cycles per MAC alone.
"""

from __future__ import annotations

import argparse
import json
import os
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    from tessera.compiler.zoo import build_program, digits
    from tessera.host.runtime import Runtime
    from tessera.sim.emulator import Emulator
    from tessera.sim.rtl import RtlSim

    from tessera.arch import PRESETS
    from tessera.isa import encode_program
    from tests.rtl.programs import conv_layer

    config = PRESETS["icebreaker"]
    lines = [f"## Sequential NPU (`{config.name}`: PicoRV32 + firmware, Verilated)", "",
             f"Command: `{' '.join(['python benchmarks/bench_seq.py', *(argv if argv is not None else sys.argv[1:])])}`"
             f" ({_load()} at start)", ""]
    work = ROOT / "build" / "bench" / "digits"
    weights = work / "digits.weights.h5"
    if not weights.exists():
        digits.train(work)
    prog_path = ROOT / "build" / "bench" / "digits_icebreaker.tsp"
    prog, _ = build_program("digits", str(prog_path), config=config.name, weights=str(weights))
    test = np.load(work / "test.npz")
    x, y = test["x"], test["y"]

    with RtlSim(config) as sim:
        rng = np.random.default_rng(0)
        # The layer of programs.py, moved into the 64 KiB memory (its data sits at 64 KiB and up).
        layer, segs, outs = conv_layer(config, rng, in_h=6, in_w=6, in_cb=4, ob=2)
        layer = [i.replace(dram_addr=i.dram_addr >> 3) if i.op.name in ("LOAD", "STORE") else i for i in layer]
        segs = [(a >> 3, b) for a, b in segs]
        outs = [(a >> 3, n) for a, n in outs]
        emu = Emulator(config)
        for a, b in [(0, encode_program(layer))] + segs + [(a, bytes(n)) for a, n in outs]:
            sim.write(a, b)
            emu.write(a, b)
        emu.run(0)
        regs = sim.run(0)
        exact = all(sim.read(a, n) == emu.read(a, n) for a, n in outs) and regs["ERROR"] == 0
        # CONV alone: the layer up to its CONV, then END.
        conv_only = layer[:5] + [layer[-1]]
        conv_only[4] = conv_only[4].replace(signal=0)
        sim.write(0, encode_program(conv_only))
        c_regs = sim.run(0)
        sim.write(0, encode_program(layer[:4] + [layer[-1]]))
        l_regs = sim.run(0)
        conv_cycles = c_regs["cycles"] - l_regs["cycles"]
        lines.append(f"- CONV 3×3, 6×6×{4 * config.lanes} → {2 * config.rows} channels ({regs['macs']:,} MACs): "
                     f"{conv_cycles:,} cycles, **{conv_cycles / regs['macs']:.1f} cycles per MAC**; the whole layer "
                     f"(LOADs, CONV, EPILOGUE, STORE) {regs['cycles']:,} cycles; bit-exact vs emulator: {exact}")

        results = []
        with Runtime(prog, backend="emulator") as emu_rt, Runtime(prog, backend="rtl", sim=sim) as rt:
            for i in range(args.images):
                want = emu_rt.run({"image": x[i:i + 1]})["probabilities"]
                t0 = time.perf_counter()
                got = rt.run({"image": x[i:i + 1]})["probabilities"]
                results.append((rt.last, time.perf_counter() - t0, np.array_equal(got, want),
                                int(got.argmax()) == int(y[i])))
    cycles = [r[0].cycles for r in results]
    macs = results[0][0].macs
    mean = sum(cycles) / len(cycles)
    lines.append(f"- Digits ResNet ({len(prog.instructions)} instructions, {macs:,} MACs an image), {len(results)} "
                 f"held-out images: {min(cycles):,}–{max(cycles):,} cycles, {mean / macs:.1f} cycles per MAC in all; "
                 f"bit-exact vs emulator: {all(r[2] for r in results)}; classified right: "
                 f"{sum(r[3] for r in results)}/{len(results)}; simulation "
                 f"{sum(r[0].cycles for r in results) / sum(r[1] for r in results):,.0f} cycles/s")
    proj = [f"at the preset's {config.clock_mhz:g} MHz **{mean / (config.clock_mhz * 1e6) * 1e3:,.0f} ms an image**"]
    report = ROOT / "build" / "synth" / "icebreaker" / "report.json"
    if report.exists():
        r = json.loads(report.read_text())
        if r.get("fmax_mhz") and r.get("config_hash") == config.hash():
            proj.append(f"at the last `make synth` build's post-route {r['fmax_mhz']:.2f} MHz "
                        f"{mean / (r['fmax_mhz'] * 1e6) * 1e3:,.0f} ms")
    lines.append("- On the iCEBreaker: " + "; ".join(proj) + ".")
    lines.append(f"- Machine {_load()} at the end (other jobs share the 2 cores).")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
