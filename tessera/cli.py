"""``tessera``: the one command-line entry point (DESIGN.md's CLI contract).

Exit status: 0 success; 2 bad usage or bad input (one line on stderr naming the
problem, no traceback); 1 internal error.

Each subcommand's work lives in the part that owns it; this module only parses
arguments and maps errors to exit codes. A subcommand whose part is not built
yet says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback

from tessera.errors import UserError

__all__ = ["main", "build_parser"]

# subcommand -> (module, function, issue that builds it)
HANDLERS = {
    "compile": ("tessera.compiler.driver", "compile_command", "issue 4 (compiler)"),
    "disasm": ("tessera.cli", "disasm_command", None),
    "run": ("tessera.cli", "run_command", None),
    "score": ("tessera.host.score", "score_command", "issue 6 (host)"),
    "serve": ("tessera.host.server", "serve_command", "issue 6 (host)"),
    "synth": ("tessera.hdl.synth", "synth_command", "issue 7 (synthesis)"),
    "bench": ("tessera.sim.bench", "bench_command", "issue 9 (benchmarks)"),
    "zoo": ("tessera.compiler.zoo", "zoo_command", "issue 8 (model zoo)"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def _seed(text: str) -> int:
    """A nextpnr seed: a non-negative integer that fits its 32-bit option."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seed {text!r} is not an integer") from None
    if not 0 <= n < 2**31:
        raise argparse.ArgumentTypeError(f"seed {n} is outside 0..{2**31 - 1}")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tessera", description="Open FPGA inference stack: compile, run, score, serve, synthesize.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    c = sub.add_parser("compile", help="compile a model into a .tsp program")
    c.add_argument("model", metavar="MODEL", help=".onnx (quantized, or float with --calibrate), .keras, or a SavedModel folder")
    c.add_argument("-o", "--output", required=True, metavar="OUT.tsp")
    c.add_argument("--config", default="sim", metavar="NAME", help="NPU config preset or .json (default: sim)")
    c.add_argument("--calibrate", metavar="DIR|NPZ", help="calibration images (folder) or tensors (.npz)")
    c.add_argument("--report", action="store_true", help="print the per-layer compile report")
    c.add_argument("--json", action="store_true", help="machine-readable report")

    d = sub.add_parser("disasm", help="print a program's instructions and tables")
    d.add_argument("program", metavar="PROGRAM")
    d.add_argument("--json", action="store_true")

    r = sub.add_parser("run", help="run a program on input tensors")
    r.add_argument("program", metavar="PROGRAM")
    r.add_argument("--backend", default="emulator", choices=["emulator", "rtl", "board"])
    r.add_argument("--input", required=True, metavar="IN.npz", help="keys: the model's input names")
    r.add_argument("--output", required=True, metavar="OUT.npz")
    r.add_argument("--json", action="store_true", help="print run statistics as JSON")

    s = sub.add_parser("score", help="classify images, print top-k")
    s.add_argument("program", metavar="PROGRAM")
    s.add_argument("images", nargs="+", metavar="IMAGE")
    s.add_argument("--backend", default="emulator", choices=["emulator", "rtl", "board"])
    s.add_argument("--top", type=int, default=5)
    s.add_argument("--json", action="store_true")

    v = sub.add_parser("serve", help="serve a program over gRPC (TF-Serving PredictionService)")
    v.add_argument("program", metavar="PROGRAM")
    v.add_argument("--port", type=int, default=8500)
    v.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    v.add_argument("--backend", default="emulator", choices=["emulator", "rtl", "board"])
    v.add_argument("--model-name", default=None, metavar="NAME")
    v.add_argument("--tls-cert", metavar="F")
    v.add_argument("--tls-key", metavar="F")

    y = sub.add_parser("synth", help="synthesize the NPU for a board")
    y.add_argument("--board", required=True, choices=["ulx3s-85f", "icebreaker", "arria10"])
    y.add_argument("--config", default=None, metavar="NAME")
    y.add_argument("--seed", type=_seed, default=1, metavar="N",
                   help="nextpnr placement seed (default 1); another may route what one does not")
    y.add_argument("--out", required=True, metavar="DIR")

    b = sub.add_parser("bench", help="cycles, MACs and utilization per layer")
    b.add_argument("model", metavar="MODEL|PROGRAM")
    b.add_argument("--config", default="sim", metavar="NAME")
    b.add_argument("--backend", default="model", choices=["model", "rtl"])
    b.add_argument("--calibrate", metavar="DIR|NPZ", help="calibration data for a float MODEL (as for compile)")
    b.add_argument("--json", action="store_true")
    b.add_argument("--out", metavar="DIR")

    z = sub.add_parser("zoo", help="build the model zoo's networks")
    z.add_argument("args", nargs=argparse.REMAINDER)
    return p


# ---- the subcommands this module owns ----------------------------------------------

def disasm_command(args) -> int:
    from tessera.isa import disassemble
    from tessera.program import Program
    prog = Program.load(args.program)
    if args.json:
        print(json.dumps({
            "config": prog.config.to_dict(), "config_hash": prog.config.hash(),
            "instructions": disassemble(prog.instructions, addresses=False).splitlines(),
            "inputs": [t.to_dict() for t in prog.inputs], "outputs": [t.to_dict() for t in prog.outputs],
            "host_ops": prog.host_ops, "meta": prog.meta}, indent=1))
        return 0
    c = prog.config
    print(f"# program {args.program}")
    print(f"# config {c.name} (hash {c.hash()}): {c.rows}x{c.lanes} MACs, {c.weight_bits}-bit weights")
    print(f"# {len(prog.instructions)} instructions at 0x{prog.prog_addr:x}, "
          f"{len(prog.constants)} constant bytes at 0x{prog.const_addr:x}, "
          f"scratch 0x{prog.scratch_addr:x}+{prog.scratch_size}")
    for kind, ts in (("input", prog.inputs), ("output", prog.outputs)):
        for t in ts:
            print(f"# {kind} {t.name}: {t.layout} {t.shape} @0x{t.addr:x} as {t.height}x{t.width}x{t.cpad} int8, "
                  f"scale {t.scale:g} zero point {t.zero_point}")
    for op in prog.host_ops:
        print(f"# host op {op['op']}: {', '.join(op['inputs'])} -> {', '.join(op['outputs'])}")
    print(disassemble(prog.instructions, addresses=True), end="")
    return 0


def run_command(args) -> int:
    import numpy as np

    from tessera.host.runtime import Runtime
    try:
        with np.load(args.input) as f:
            inputs = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise UserError(f"{args.input}: cannot read input tensors: {e}") from None
    with Runtime(args.program, backend=args.backend) as rt:
        try:
            outputs = rt.run(inputs)
        except (KeyError, ValueError) as e:
            raise UserError(f"{args.input}: {e.args[0] if e.args else e}") from None
        np.savez(args.output, **outputs)
        stats = rt.last.to_dict()
    if args.json:
        print(json.dumps(stats))
    else:
        util = "" if stats["utilization"] is None else f", utilization {stats['utilization']:.1%}"
        cyc = "" if stats["cycles"] is None else f", {stats['cycles']} cycles"
        print(f"{args.backend}: {stats['macs']} MACs{cyc}{util} in {stats['seconds']:.3f} s -> {args.output}")
    return 0


# ---- dispatch ----------------------------------------------------------------------

def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    module, func, issue = HANDLERS[args.command]
    try:
        try:
            handler = getattr(importlib.import_module(module), func)
        except (ImportError, AttributeError) as e:
            if issue is None or (isinstance(e, ImportError) and e.name not in (module, None)
                                 and not module.startswith(e.name or "")):
                raise
            raise UserError(f"`tessera {args.command}` is not built yet ({issue})") from None
        return int(handler(args) or 0)
    except UserError as e:
        print(f"tessera {args.command}: error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"tessera {args.command}: error: {e.filename}: no such file", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tessera {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the contract: anything else is an internal error
        if os.environ.get("TESSERA_DEBUG"):
            traceback.print_exc()
        print(f"tessera {args.command}: internal error: {type(e).__name__}: {e} "
              f"(set TESSERA_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
