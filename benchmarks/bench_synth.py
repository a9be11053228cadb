"""How many int8 MACs fit the ULX3S-85F (ECP5 LFE5U-85F) at 100 MHz: real place-and-route builds.

Builds the board's stand-in MAC array (hdl/boards/macarray.py: rows x lanes int8 MACs, pipelined
adder trees, 32-bit accumulators) at several sizes with the open toolchain, the first 156 products
on MULT18X18D hard multipliers and the rest on LUT (shift-and-add, carry-chain) multipliers, and
prints one markdown section. Each size is a full yosys + nextpnr-ecp5 run (minutes each).

    python benchmarks/bench_synth.py [--sizes 32x16,48x16] [--board ulx3s-85f] [--mhz 100] [--out DIR]

TESSERA_SYNTH_SIZES overrides the default size list (same syntax as --sizes).
"""

import argparse
import os
import pathlib
import sys
import time

from tessera.arch import PRESETS
from tessera.hdl.boards import get_board
from tessera.hdl.boards.macarray import MacArrayDemo
from tessera.hdl.synth import SynthError, synthesize

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_SIZES = "16x16,32x16,40x16,48x16"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=os.environ.get("TESSERA_SYNTH_SIZES", DEFAULT_SIZES),
                    help="comma-separated ROWSxLANES list")
    ap.add_argument("--board", default="ulx3s-85f")
    ap.add_argument("--mhz", type=float, default=100.0)
    ap.add_argument("--out", default=str(ROOT / "build" / "bench_synth"))
    args = ap.parse_args()
    board = get_board(args.board)
    config = PRESETS.get(board.default_config, PRESETS["sim"]).replace(clock_mhz=args.mhz)
    rows_out = []
    for size in args.sizes.split(","):
        rows, lanes = (int(v) for v in size.lower().split("x"))
        macs = rows * lanes
        dsp = min(macs, board.dsp_capacity)
        core = MacArrayDemo(rows, lanes, dsp=board.dsp_kind, dsp_products=dsp, soft=board.soft_kind)
        t0 = time.perf_counter()
        try:
            rep = synthesize(board, config.replace(name=f"macarray-{rows}x{lanes}"),
                             pathlib.Path(args.out) / f"{board.name}-{rows}x{lanes}", core=core,
                             core_desc=f"MacArrayDemo {rows}x{lanes}", dsp_products=dsp,
                             log=lambda msg: print(msg, file=sys.stderr, flush=True))
        except SynthError as e:
            last = str(e).splitlines()[-1] if str(e) else "build failed"
            rows_out.append(f"| {rows}x{lanes} | {macs} | {dsp} | {macs - dsp} | — | — | — | — | "
                            f"failed: {last[:80]} | {time.perf_counter() - t0:.0f} |")
            continue
        res = rep["resources"]
        pct = {k: 100 * res[k]["used"] / res[k]["available"] for k in res}
        met = "yes" if rep["timing_met"] else "no"
        gmacs = macs * min(rep["fmax_mhz"], rep["clock_mhz"]) / 1e3 if rep["timing_met"] else \
            macs * rep["fmax_mhz"] / 1e3
        rows_out.append(
            f"| {rows}x{lanes} | {macs} | {dsp} | {macs - dsp} | {res['LUT4']['used']:,} ({pct['LUT4']:.0f} %) | "
            f"{res['FF']['used']:,} ({pct['FF']:.0f} %) | {rep['fmax_mhz']:.1f} | {met} | {gmacs:.1f} | "
            f"{rep['seconds']:.0f} |")
    print(f"## Synthesis: int8 MACs on the {board.name} ({board.device}) at {args.mhz:g} MHz\n")
    print(f"Command: `python benchmarks/bench_synth.py --sizes {args.sizes} --board {board.name} "
          f"--mhz {args.mhz:g}` (YoWASP yosys 0.70 + nextpnr-ecp5 0.11, seed 1, post-route Fmax).\n")
    print("Stand-in core: rows x lanes int8 MACs (LFSR-fed, pipelined adder tree, 32-bit accumulators, "
          "all results XOR-reduced to a LED). The first products use the device's hard multipliers "
          "(one int8 product per MULT18X18D), the rest LUT shift-and-add multipliers.\n")
    print("| rows x lanes | MACs/cycle | on DSP | in LUTs | LUT4 (TRELLIS_COMB) | FF | Fmax MHz | "
          f"≥ {args.mhz:g} MHz | GMAC/s | build s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for line in rows_out:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
