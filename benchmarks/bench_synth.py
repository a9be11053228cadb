"""How many int8 MACs fit the ULX3S-85F (ECP5 LFE5U-85F) at 100 MHz: real place-and-route builds.

Builds the board's stand-in MAC array (hdl/boards/macarray.py: rows x lanes int8 MACs, pipelined
adder trees, 32-bit accumulators) at several sizes with the open toolchain, the first 156 products
on MULT18X18D hard multipliers and the rest on LUT (shift-and-add, carry-chain) multipliers, and
prints one markdown section. ``--sizes`` get a full yosys + nextpnr-ecp5 place and route (tens of
minutes each for the large ones on a busy 2-core machine: Fmax and exact use); ``--pack-sizes``
stop nextpnr after packing (exact cell use against the device, no Fmax; minutes each).

    python benchmarks/bench_synth.py [--sizes 32x16] [--pack-sizes 48x16,64x16] [--board ulx3s-85f]
                                     [--mhz 100] [--out DIR] [--reuse] [--npu CONFIG,...]

``--units`` builds single NPU units (conv, post, load, store, fetch, dispatch) of the board's default
config between registers (hdl/boards/harness.py): minutes each instead of an hour for the whole NPU,
with each unit's own post-route Fmax and critical path (third table).

``--npu`` also builds the real NPU board top (``tessera synth --board B --config CONFIG``: on the
ULX3S the NPU with the SDRAM controller and the UART link) for each preset or config .json listed,
and prints a second table (a build that does not fit stops after yosys with its estimate).

TESSERA_SYNTH_SIZES / TESSERA_SYNTH_PACK_SIZES override the default lists. ``--reuse`` (or
TESSERA_SYNTH_REUSE=1, e.g. under ``make bench ONLY=synth``) takes an existing ``report.json`` of the
same size and stage from ``--out`` instead of building again.
"""

import argparse
import json
import os
import pathlib
import sys
import time

from tessera.arch import PRESETS, get_config
from tessera.hdl.boards import get_board
from tessera.hdl.boards.harness import UnitHarness
from tessera.hdl.boards.macarray import MacArrayDemo
from tessera.hdl.conv import ConvUnit
from tessera.hdl.dispatch import Dispatch
from tessera.hdl.dma import LoadDma, StoreDma
from tessera.hdl.fetch import Fetch
from tessera.hdl.post import PostUnit
from tessera.hdl.synth import SynthError, npu_mac_dsp_products, synthesize

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_SIZES = "32x16"
DEFAULT_PACK_SIZES = "48x16,56x16,64x16"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=os.environ.get("TESSERA_SYNTH_SIZES", DEFAULT_SIZES),
                    help="comma-separated ROWSxLANES list, full place and route")
    ap.add_argument("--pack-sizes", default=os.environ.get("TESSERA_SYNTH_PACK_SIZES", DEFAULT_PACK_SIZES),
                    help="comma-separated ROWSxLANES list, packing only")
    ap.add_argument("--reuse", action="store_true", default=bool(os.environ.get("TESSERA_SYNTH_REUSE")),
                    help="reuse reports already in --out (also TESSERA_SYNTH_REUSE=1)")
    ap.add_argument("--board", default="ulx3s-85f")
    ap.add_argument("--mhz", type=float, default=100.0)
    ap.add_argument("--out", default=str(ROOT / "build" / "bench_synth"))
    ap.add_argument("--npu", default=os.environ.get("TESSERA_SYNTH_NPU", ""),
                    help="comma-separated NPU configs (presets or .json) to build as the board's NPU top")
    ap.add_argument("--units", default=os.environ.get("TESSERA_SYNTH_UNITS", ""),
                    help=f"comma-separated NPU units ({', '.join(UNITS)}) to place and route alone")
    args = ap.parse_args()
    board = get_board(args.board)
    config = PRESETS.get(board.default_config, PRESETS["sim"]).replace(clock_mhz=args.mhz)
    rows_out = []
    jobs = [(s, False) for s in args.sizes.split(",") if s] + [(s, True) for s in args.pack_sizes.split(",") if s]
    for size, pack_only in jobs:
        rows, lanes = (int(v) for v in size.lower().split("x"))
        macs = rows * lanes
        dsp = min(macs, board.dsp_capacity)
        out = pathlib.Path(args.out) / f"{board.name}-{rows}x{lanes}{'-pack' if pack_only else ''}"
        t0 = time.perf_counter()
        rep = None
        if args.reuse and (out / "report.json").exists():
            rep = json.loads((out / "report.json").read_text())
            print(f"reusing {out / 'report.json'}", file=sys.stderr)
        else:
            core = MacArrayDemo(rows, lanes, dsp=board.dsp_kind, dsp_products=dsp, soft=board.soft_kind,
                                product_regs=board.product_regs)
            try:
                rep = synthesize(board, config.replace(name=f"macarray-{rows}x{lanes}"), out, core=core,
                                 core_desc=f"MacArrayDemo {rows}x{lanes}", dsp_products=dsp, pack_only=pack_only,
                                 log=lambda msg: print(msg, file=sys.stderr, flush=True))
            except SynthError as e:
                last = str(e).splitlines()[-1] if str(e) else "build failed"
                rows_out.append(f"| {rows}x{lanes} | {macs} | {dsp} | {macs - dsp} | — | — | — | — | — | "
                                f"failed: {last[:80]} ({time.perf_counter() - t0:.0f} s) |")
                continue
        res = rep["resources"]
        cells = f"{res['LUT4']['used']:,} ({100 * res['LUT4']['used'] / res['LUT4']['available']:.0f} %)"
        ffs = f"{res['FF']['used']:,} ({100 * res['FF']['used'] / res['FF']['available']:.0f} %)"
        if rep["fmax_mhz"] is None:
            fmax, met, gmacs = "—", "—", "—"
        else:
            fmax, met = f"{rep['fmax_mhz']:.1f}", "yes" if rep["timing_met"] else "no"
            gmacs = f"{macs * min(rep['fmax_mhz'], rep['clock_mhz']) / 1e3:.1f}"
        fits = "yes" if rep.get("fits") else "no"
        if "after synthesis" in rep.get("note", ""):
            stage = "yosys estimate, stopped before nextpnr"
        else:
            stage = "packing only" if rep.get("stage") == "pack" else "place and route"
        rows_out.append(f"| {rows}x{lanes} | {macs} | {dsp} | {macs - dsp} | {cells} | {ffs} | {fits} | {fmax} | "
                        f"{met} | {gmacs} ({stage}, {rep['seconds']:.0f} s) |")
    print(f"## Synthesis: int8 MACs on the {board.name} ({board.device}) at {args.mhz:g} MHz\n")
    print(f"Command: `python benchmarks/bench_synth.py --sizes {args.sizes} --pack-sizes {args.pack_sizes} "
          f"--board {board.name} --mhz {args.mhz:g}` (YoWASP yosys 0.70 + nextpnr-ecp5 0.11, seed 1; Fmax is "
          f"post-route).\n")
    print("Stand-in core (hdl/boards/macarray.py): rows x lanes int8 MACs (LFSR-fed, pipelined adder tree, "
          "32-bit accumulators, all results XOR-reduced to a LED). The first products use the device's hard "
          "multipliers (one int8 product per MULT18X18D), the rest soft multipliers with the AND gates fused "
          "into CCU2C carry chains and offset-binary weights (docs/synthesis.md).\n")
    if args.reuse:
        print(f"Reports reused from {args.out} where present (build times in the table are the original ones).\n")
    print("| rows x lanes | MACs/cycle | on DSP | in LUTs | LUT4 (TRELLIS_COMB, packed) | FF | fits | Fmax MHz | "
          f"≥ {args.mhz:g} MHz | GMAC/s (stage, build time) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for line in rows_out:
        print(line)
    if args.npu:
        _npu_table(args, board)
    if args.units:
        _units_table(args, board)
    return 0


def _pct(r):
    return "—" if r["used"] is None else f"{r['used']:,} ({100 * r['used'] / r['available']:.0f} %)"


def _npu_table(args, board):
    """The real NPU board top per config: resources (packed after nextpnr, else yosys' estimate) and Fmax."""
    lines = []
    for name in [n for n in args.npu.split(",") if n]:
        config = get_config(name)
        out = pathlib.Path(args.out) / f"{board.name}-npu-{config.name}"
        if args.reuse and (out / "report.json").exists():
            rep = json.loads((out / "report.json").read_text())
            print(f"reusing {out / 'report.json'}", file=sys.stderr)
        else:
            try:
                rep = synthesize(board, config, out, log=lambda msg: print(msg, file=sys.stderr, flush=True))
            except SynthError as e:
                if not (out / "report.json").exists():
                    lines.append(f"| {config.name} | {config.macs_per_cycle} | failed: {str(e).splitlines()[-1][:80]} "
                                 "| | | | | | |")
                    continue
                rep = json.loads((out / "report.json").read_text())
        res = rep["resources"]
        stage = "yosys estimate" if rep.get("fits") is False else "packed"
        fmax = "—" if rep["fmax_mhz"] is None else f"{rep['fmax_mhz']:.1f}"
        if rep["fmax_mhz"] is None and rep.get("fmax_estimate_after_placement_mhz"):
            # A build whose routing was stopped: nextpnr's estimate after placement, marked as such.
            fmax = f"{rep['fmax_estimate_after_placement_mhz']:.1f} estimated after placement (not routed)"
        lines.append(f"| {config.name} | {config.macs_per_cycle} ({rep.get('dsp_products')} on DSP) | "
                     f"{_pct(res['LUT4'])} {stage} | {_pct(res['FF'])} | {_pct(res['DSP'])} | {_pct(res['BRAM'])} | "
                     f"{'yes' if rep.get('fits') else 'no'} | {fmax} | {rep['seconds']:.0f} s |")
    print(f"\n### The NPU board top on the {board.name}\n")
    print(f"Command: `python benchmarks/bench_synth.py --npu {args.npu} --board {board.name}` (the same as "
          f"`tessera synth --board {board.name} --config CONFIG --out DIR`).\n")
    print("| config | MACs/cycle | LUT4 | FF | DSP | BRAM | fits | Fmax MHz | build time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for line in lines:
        print(line)


#: Units --units can build alone, by the name it takes.
UNITS = {"conv": ConvUnit, "post": PostUnit, "load": LoadDma, "store": StoreDma, "fetch": Fetch, "dispatch": Dispatch}


def _units_table(args, board):
    """Each NPU unit alone between registers: resources, post-route Fmax and its critical path."""
    config = PRESETS[board.default_config].replace(clock_mhz=args.mhz)
    lines = []
    for name in [n for n in args.units.split(",") if n]:
        if name not in UNITS:
            raise SystemExit(f"--units: unknown unit {name!r}; expected some of {', '.join(UNITS)}")
        out = pathlib.Path(args.out) / f"{board.name}-unit-{name}"
        if args.reuse and (out / "report.json").exists():
            rep = json.loads((out / "report.json").read_text())
            print(f"reusing {out / 'report.json'}", file=sys.stderr)
        else:
            macs = config.macs_per_cycle if name == "conv" else 0
            dsp = npu_mac_dsp_products(board, config) if board.family == "ecp5" else None
            try:
                rep = synthesize(board, config, out, core=UnitHarness(UNITS[name](config), macs),
                                 core_desc=f"{name} unit of {config.name} between registers", dsp_products=dsp,
                                 log=lambda msg: print(msg, file=sys.stderr, flush=True))
            except SynthError as e:
                lines.append(f"| {name} | failed: {str(e).splitlines()[-1][:80]} | | | | | |")
                continue
        res, cp = rep["resources"], rep.get("critical_path") or {}
        path = (f"{cp['ns']:.1f} ns ({cp['logic_ns']:.1f} logic, {cp['routing_ns']:.1f} routing, {cp['steps']} cells): "
                f"`{cp['from']}` → `{cp['to']}`") if cp else "—"
        lines.append(f"| {name} | {_pct(res['LUT4'])} | {_pct(res['FF'])} | {_pct(res['DSP'])} | "
                     f"{rep['fmax_mhz']:.1f} | {path} | {rep['seconds']:.0f} s |")
    print(f"\n### NPU units alone on the {board.name} (config {config.name}, {args.mhz:g} MHz requested)\n")
    print(f"Command: `python benchmarks/bench_synth.py --sizes '' --pack-sizes '' --units {args.units} "
          f"--board {board.name}`. Each unit sits between registers (hdl/boards/harness.py: LFSR-fed inputs, "
          "XOR-reduced outputs), so its paths are its own; Fmax and the critical path are post-route.\n")
    print("| unit | LUT4 | FF | DSP | Fmax MHz | critical path | build time |")
    print("|---|---|---|---|---|---|---|")
    for line in lines:
        print(line)


if __name__ == "__main__":
    sys.exit(main())
