"""``tessera synth``: build a board's bitstream (or Quartus project) and write ``DIR/report.json``.

The open flow (ULX3S-85F, iCEBreaker) runs Amaranth's generated build script with the YoWASP
yosys/nextpnr/pack tools installed from PyPI, never programs a board, and reads nextpnr's and yosys'
logs into the report. The Arria 10 flow writes a complete Quartus project through Amaranth's
Altera (Intel) platform; Quartus is not run, so its Fmax is ``null``.

report.json (the CLI contract in DESIGN.md, plus a few informative keys)::

    {"board", "config", "target_mhz", "fmax_mhz", "macs_per_cycle",
     "resources": {KIND: {"used", "available", "primitive"}}, "bitstream",
     "device", "clock_mhz", "timing_met", "core", "dsp_products", "soft_products", "seconds", ...}

After a routed build ``critical_path`` names the slowest path and ``late_endpoints`` which
registers get their data too late for the requested clock, part by part and register group by
group (:func:`tessera.hdl.boards.reports.late_endpoints`, from nextpnr's JSON timing report
``build/top.timing.json``); summary.md shows both.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

from tessera.errors import UserError

from .boards import BOARDS, PRIMITIVES, Board, get_board, resolve_config
from .boards.macarray import MacArrayDemo
from .boards.netlist import fix_carry_chains_file
from .boards.reports import (
    ReportError,
    parse_critical_path,
    parse_fmax,
    parse_utilisation,
    parse_yosys_cells,
    late_endpoints,
)
from .boards.top import BoardTop
from .npu import collision_free_buffers

__all__ = ["synth_command", "synthesize", "make_core", "estimate_resources", "SynthError", "summary_markdown",
           "TOP_NAME", "CORES", "npu_mac_dsp_products"]

#: Name of the top module and of every file Amaranth's build plan writes (top.v, top.qsf, ...).
TOP_NAME = "top"


class SynthError(Exception):
    """A synthesis tool failed; the message ends with the tail of its log."""


#: Cores a board top can carry; TESSERA_SYNTH_CORE picks one (default "npu").
CORES = ("npu", "macarray")


def make_core(board: Board, config, *, kind=None, dsp_products=None):
    """The compute core for ``board`` at ``config``'s size.

    ``kind`` (default: the TESSERA_SYNTH_CORE environment variable, else "npu"):

    - "npu": on ECP5 (ULX3S) :class:`Ulx3sCore`, the NPU with the SDRAM controller and the UART
      host link; on iCE40 with a sequential config :class:`IcebreakerCore`, the NPU with on-chip
      external memory and the UART link; elsewhere :class:`NpuBoardCore`, the NPU with an on-chip
      memory window and a restart loop;
    - "macarray": :class:`MacArrayDemo`, the NPU's MAC array alone, for sizing. Hard multipliers
      take the first ``dsp_products`` products (default: as many as the device has, one int8
      product each), LUT multipliers the rest.

    Returns
    -------
    (core, description, dsp_products) -- dsp_products is None when the tools choose.
    """
    kind = kind or os.environ.get("TESSERA_SYNTH_CORE") or "npu"
    if kind == "npu" and board.family == "ecp5":
        # The ULX3S board top: NPU, SDRAM controller on the board's SDRAM, UART host link.
        from .boards.ulx3s import Ulx3sCore
        core = Ulx3sCore(config)
        if dsp_products is None:
            dsp_products = npu_mac_dsp_products(board, config)
        return core, core.description(), dsp_products
    if kind == "npu" and board.family == "ice40" and config.core == "sequential":
        # The iCEBreaker board top: the sequential NPU, on-chip external memory, UART host link.
        from .boards.ice40 import IcebreakerCore
        core = IcebreakerCore(config)
        return core, core.description(), None
    if kind == "npu":
        from .boards.npu_top import NpuBoardCore
        core = NpuBoardCore(config, mem_beats=board.mem_beats)
        return core, f"Npu {config.rows}x{config.lanes} + {board.mem_beats}-beat on-chip memory window", None
    if kind != "macarray":
        raise UserError(f"TESSERA_SYNTH_CORE={kind!r}: expected one of {', '.join(CORES)}")
    macs = config.rows * config.lanes
    if dsp_products is None:
        dsp_products = min(macs, board.dsp_capacity)
    core = MacArrayDemo(config.rows, config.lanes, dsp=board.dsp_kind, dsp_products=dsp_products,
                        soft=board.soft_kind, product_regs=board.product_regs)
    return core, f"MacArrayDemo {config.rows}x{config.lanes} (the NPU's MAC array alone)", dsp_products


#: MULT18X18D that yosys puts on the NPU's multipliers outside the MAC array, besides 8 per EPILOGUE
#: lane (32×32 and two 10×32 products) and 2 per POOL lane (17×32), both ``post_lanes``: address
#: arithmetic (measured with yosys 0.70 on the ulx3s-85f config with timing_stages: 65 in all with 4
#: post lanes). Products with an operand of 4 bits or less are shifted adds (``hdl.common.narrow_mul``)
#: and take none: session 14 gave 19 MULT18X18D back to the MAC array that way.
NPU_ADDRESS_DSP = 21   # 32 before narrow_mul (session 14), 34 before EPILOGUE's running-sum addresses (session 9)
#: MULT18X18D that ``timing_stages`` adds to those: the range checks' multiplies, registered step by step,
#: are no longer merged with the address arithmetic (measured: 160 of 156 with 74 left to the array).
NPU_TIMING_DSP = 4


def npu_mac_dsp_products(board: Board, config) -> int:
    """MAC-array products of the NPU on hard multipliers: what the device has left after yosys has
    mapped the NPU's other multipliers (TESSERA_SYNTH_MAC_DSP overrides); the rest are soft."""
    env = os.environ.get("TESSERA_SYNTH_MAC_DSP")
    if env:
        return int(env)
    others = 10 * config.post_lanes_eff + NPU_ADDRESS_DSP + (NPU_TIMING_DSP if config.timing_stages else 0)
    return max(0, min(config.macs_per_cycle, board.dsp_capacity - others))


def _tool_env(board: Board) -> dict:
    env = dict(os.environ)
    bindir = pathlib.Path(sys.executable).parent
    for var, tool in board.tools.items():
        if var in env and var != "OPENFPGALOADER":
            continue  # the user's choice wins (e.g. a native yosys)
        path = bindir / tool
        env[var] = str(path) if path.exists() else (shutil.which(tool) or tool)
    return env


#: nextpnr's JSON timing report in the build folder (read by :func:`tessera.hdl.boards.reports.late_endpoints`).
TIMING_JSON = f"{TOP_NAME}.timing.json"

#: nextpnr placers ``synthesize(placer=...)`` and TESSERA_SYNTH_PLACER accept.
PLACERS = ("heap", "static", "sa")


def default_placer(board: Board, whole_npu: bool) -> str | None:
    """nextpnr's placer for a build (None: nextpnr's default, HeAP).

    The whole NPU on the ECP5 gets the electrostatic placer: after HeAP, router2 stalled at about
    32,000 overused wires; after ``static`` it got to 1,120 (seed 2; 3,090 with seed 1) before it
    stalled too (docs/synthesis.md, session 10). The MAC-array stand-in and the units alone were
    measured with HeAP and keep it. TESSERA_SYNTH_PLACER overrides either.
    """
    env = os.environ.get("TESSERA_SYNTH_PLACER")
    if env:
        return _known_placer(env, "TESSERA_SYNTH_PLACER=")
    return "static" if board.family == "ecp5" and whole_npu else None


def _known_placer(placer: str, what: str) -> str:
    if placer not in PLACERS:
        raise UserError(f"{what}{placer!r}: expected one of {', '.join(PLACERS)}")
    return placer


def collision_script(buffers: dict[str, int]) -> str:
    """yosys commands, run after reading the design, that leave same-cycle read/write collisions of
    these memories (``{MEMID: write ports}``, :func:`tessera.hdl.npu.collision_free_buffers`) undefined,
    so their block RAMs need no old-word bypass."""
    return "".join(f"setparam -set COLLISION_X_MASK {n}'{'1' * n} t:$memrd_v2 r:MEMID=\\{name} %i\n"
                   for name, n in sorted(buffers.items()))


def _overrides(board: Board, seed: int, explicit_dsp: bool, pack_only: bool, placer: str | None = None,
               buffers: dict[str, int] | None = None) -> dict:
    nextpnr = f"--timing-allow-fail --seed {seed}" + (" --pack-only" if pack_only else
                                                      f" --report {TIMING_JSON} --detailed-timing-report")
    after_read = collision_script(buffers) if buffers else ""
    if placer and board.family != "arria10":
        nextpnr += f" --placer {placer}"
    if board.family == "ecp5":
        # router2: nextpnr's default router1 left the last 155 arcs of a 156-DSP MAC array unrouted after
        # ten minutes; router2 finished it in four (docs/synthesis.md).
        nextpnr += " --router router2"
        # -nodsp when the core instantiates exactly the hard multipliers it wants: otherwise yosys
        # puts every multiplier on a MULT18X18D and overflows the 156 of them.
        return dict(synth_opts="-nodsp" if explicit_dsp else "", nextpnr_opts=nextpnr, script_after_read=after_read)
    if board.family == "ice40":
        # -dsp: yosys puts multipliers on SB_MAC16 only when asked (the sequential core's PicoRV32 multiplier:
        # 1,000 LUT4 without).
        return dict(synth_opts="" if explicit_dsp else "-dsp", nextpnr_opts=nextpnr, script_after_read=after_read)
    # Arria 10 (Quartus): name the family too, and let TimeQuest add jitter/uncertainty.
    return dict(add_settings='set_global_assignment -name FAMILY "Arria 10"\n'
                             'set_global_assignment -name PROJECT_OUTPUT_DIRECTORY output_files\n',
                add_constraints="derive_pll_clocks\nderive_clock_uncertainty\n")


def _resources(board: Board, util: dict, cells: dict) -> dict:
    res = {}
    prim = PRIMITIVES[board.family]
    for kind, (cell, source) in board.resource_cells.items():
        if source == "nextpnr":
            used, available = util.get(cell, (0, None))
        else:
            used = sum(n for c, n in cells.items() if c.startswith(cell))
            available = util.get("ICESTORM_LC", (0, None))[1]  # one flip-flop per logic cell
        if available is None:
            raise ReportError(f"nextpnr utilisation has no {cell} line for {kind}")
        res[kind] = {"used": used, "available": available, "primitive": prim[kind]}
    return res


def synthesize(board: Board | str, config, out_dir, *, core=None, core_desc=None, dsp_products=None,
               seed=1, pack_only=False, placer=None, log=None) -> dict:
    """Build ``board`` with ``config`` into ``out_dir``; write and return the report.

    Parameters
    ----------
    board : Board or str
    config : NpuConfig
    out_dir : path
        Gets ``report.json``, ``summary.md`` and ``build/`` (every generated and tool file).
    core : Elaboratable, optional
        Core to build instead of :func:`make_core`'s (must have a ``led`` output).
    seed : int
        nextpnr placement seed (recorded in the report). Whether a large design routes, and how
        fast, depends on it: try another when router2 stalls.
    placer : {"heap", "static", "sa"}, optional
        nextpnr's placer (default: :func:`default_placer`; recorded in the report).
    pack_only : bool
        Stop nextpnr after packing: exact cell use against the device in a fraction of the time,
        no placement, Fmax or bitstream (``fmax_mhz`` null, ``stage`` "pack").
    log : callable, optional
        Progress messages (default: stderr).
    """
    board = get_board(board) if isinstance(board, str) else board
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    out = pathlib.Path(out_dir)
    build_dir = out / "build"
    default_core = core is None
    if core is None:
        core, core_desc, dsp_products = make_core(board, config, dsp_products=dsp_products)
    explicit_dsp = isinstance(core, MacArrayDemo)
    placer = (_known_placer(placer, "placer ") if placer is not None
              else default_placer(board, whole_npu=default_core and not explicit_dsp))
    macs = getattr(core, "macs_per_cycle", config.macs_per_cycle)
    target_hz = config.clock_mhz * 1e6
    top = BoardTop(board.family, core, target_hz)
    platform = board.platform(clock_hz=top.clock_hz)
    npu_on_ecp5 = board.family == "ecp5" and not explicit_dsp and dsp_products is not None
    if npu_on_ecp5:
        # The NPU's MAC array: dsp_products on MULT18X18D, the rest fused soft multipliers (see
        # tessera.hdl.mac.MacArray); yosys maps the NPU's other multipliers onto the remaining DSPs.
        platform.tessera_mac_multipliers = (board.dsp_kind, dsp_products, board.soft_kind)
    if board.family == "arria10":
        # Quartus opens a project by its .qpf; the revision is the .qsf of the same name.
        platform.add_file(f"{TOP_NAME}.qpf", f'PROJECT_REVISION = "{TOP_NAME}"\n')
    t0 = time.perf_counter()
    log(f"synth: elaborating {core_desc or type(core).__name__} for {board.name} ({board.device})")
    # The NPU's buffers (a core given by the caller has its own memories, and keeps their rule).
    buffers = collision_free_buffers(config) if default_core and not explicit_dsp else None
    plan = platform.build(top, name=TOP_NAME, do_build=False, **_overrides(board, seed, explicit_dsp, pack_only, placer, buffers))
    if build_dir.exists():
        shutil.rmtree(build_dir)
    for stale in ("report.json", "summary.md"):
        (out / stale).unlink(missing_ok=True)  # a failed run must not leave an old report behind
    plan.extract(build_dir)
    report = {
        "board": board.name, "config": config.name, "config_hash": config.hash(),
        "target_mhz": config.clock_mhz, "fmax_mhz": None, "macs_per_cycle": macs,
        "resources": {}, "bitstream": None,
        "device": board.device, "clock_mhz": round(top.clock_hz / 1e6, 4), "timing_met": None,
        "core": core_desc or type(core).__name__, "dsp_products": dsp_products,
        "soft_products": None if dsp_products is None else macs - dsp_products,
        "stage": "project" if board.family == "arria10" else "pack" if pack_only else "bitstream",
    }
    if board.family != "arria10":
        report["placer"], report["seed"] = placer or "heap", seed
    if board.family == "arria10":
        report["resources"] = {k: {"used": None, "available": a, "primitive": p}
                               for k, (p, a) in board.capacity.items()}
        report["project"] = {"qpf": f"build/{TOP_NAME}.qpf", "qsf": f"build/{TOP_NAME}.qsf",
                             "sdc": f"build/{TOP_NAME}.sdc",
                             "script": f"build/build_{TOP_NAME}.sh", "verilog": f"build/{TOP_NAME}.v"}
        report["note"] = ("Quartus project only: run build/build_top.sh where Quartus Prime "
                          "(Standard, quartus_map flow) with Arria 10 support is installed.")
    else:
        env = _tool_env(board)
        log(f"synth: running yosys in {build_dir} (minutes for a large design)")
        _run(["sh", "-c", f'"$YOSYS" -q -l {TOP_NAME}.rpt {TOP_NAME}.ys'], build_dir, env, board, "yosys")
        cells = parse_yosys_cells((build_dir / f"{TOP_NAME}.rpt").read_text(errors="replace"), f"{TOP_NAME}.rpt")
        estimate = estimate_resources(board, cells)
        over = [f"{k} {r['used']:,}/{r['available']:,}" for k, r in estimate.items() if r["used"] > r["available"]]
        if over:
            # Place and route cannot succeed; report what synthesis needs instead.
            report.update(resources=estimate, fits=False, yosys_cells=cells,
                          note="does not fit the device after synthesis (yosys cell counts): " + ", ".join(over))
            _write(out, report, t0)
            raise SynthError(f"{board.name}: {config.name} does not fit the {board.device}: "
                             f"{', '.join(over)} (yosys cell counts; see {out / 'summary.md'})")
        if board.family == "ecp5":
            # nextpnr would give every adder's unread last carry a feed-out CCU2C and every constant carry in
            # a feed-in (hdl/boards/netlist.py: 9 % of the device for the feed-outs alone at 512 MACs).
            report["carry_outs_trimmed"], report["carry_chains_started"] = fix_carry_chains_file(
                build_dir / f"{TOP_NAME}.json")
        log("synth: running nextpnr " + ("(packing only)" if pack_only else "and the bitstream packer"))
        # The build script again, with yosys already done (and no bitstream packer when only packing).
        env = dict(env, YOSYS="true", **({"ECPPACK": "true", "ICEPACK": "true"} if pack_only else {}))
        # With --pack-only nextpnr still tries to write the (unplaced) config and fails after
        # printing the utilisation we want; parse_utilisation notices if it got no further.
        _run(["sh", f"build_{TOP_NAME}.sh"], build_dir, env, board, "nextpnr", check=not pack_only)
        tim = (build_dir / f"{TOP_NAME}.tim").read_text(errors="replace")
        util = parse_utilisation(tim, f"{TOP_NAME}.tim")
        if pack_only:
            report["note"] = "nextpnr stopped after packing: cell use is exact, Fmax not measured"
            report.update(resources=_resources(board, util, cells), yosys_cells=cells,
                          fits=all(r["used"] <= r["available"] for r in _resources(board, util, cells).values()))
            _write(out, report, t0)
            return report
        fmax = parse_fmax(tim, f"{TOP_NAME}.tim")
        slowest = min(fmax.values(), key=lambda v: v[0])
        report.update(
            fmax_mhz=slowest[0], timing_met=all(v[2] for v in fmax.values()),
            clocks={name: {"fmax_mhz": f, "constraint_mhz": c, "met": ok} for name, (f, c, ok) in fmax.items()},
            resources=_resources(board, util, cells), fits=True,
            bitstream=f"build/{TOP_NAME}.{board.bitstream}", yosys_cells=cells,
            critical_path=parse_critical_path(tim, f"{TOP_NAME}.tim"))
        timing = build_dir / TIMING_JSON
        if not timing.is_file():
            raise ReportError(f"{timing}: nextpnr wrote no timing report")
        try:
            report["late_endpoints"] = late_endpoints(json.loads(timing.read_text()), 1e3 / report["clock_mhz"])
        except json.JSONDecodeError as e:
            raise ReportError(f"{timing}: not JSON ({e})") from None
        bit = build_dir / f"{TOP_NAME}.{board.bitstream}"
        if not bit.is_file() or bit.stat().st_size == 0:
            raise SynthError(f"{board.name}: no bitstream {bit} after a successful build script")
    _write(out, report, t0)
    return report


def _run(cmd, cwd, env, board, what, check=True):
    with open(cwd / "build.log", "a") as f:
        r = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode and check:
        tail = "\n".join((cwd / "build.log").read_text(errors="replace").splitlines()[-12:])
        raise SynthError(f"{board.name}: {what} failed (exit {r.returncode}); see {cwd / 'build.log'}:\n{tail}")


def _write(out, report, t0):
    report["seconds"] = round(time.perf_counter() - t0, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "summary.md").write_text(summary_markdown(report))


def estimate_resources(board: Board, cells: dict) -> dict:
    """Resource use from yosys' cell counts (before packing), against the device's capacity.

    LUT4 counts each carry-chain cell's two LUTs (ECP5 CCU2C) and distributed-RAM LUTs; the figure
    after place and route (nextpnr's) replaces it when the design fits.
    """
    def count(*prefixes):
        return sum(n for c, n in cells.items() if c.startswith(prefixes))

    if board.family == "ecp5":
        used = {"LUT4": count("LUT4") + 2 * count("CCU2C") + 2 * count("DPR16X4"),
                "FF": count("TRELLIS_FF"), "DSP": count("MULT18X18D") + 2 * count("ALU54B"),
                "BRAM": count("DP16KD")}
    else:
        used = {"LUT4": count("SB_LUT4"), "FF": count("SB_DFF"), "DSP": count("SB_MAC16"),
                "BRAM": count("SB_RAM40_4K"), "SPRAM": count("SB_SPRAM256KA")}
    prim = PRIMITIVES[board.family]
    return {k: {"used": used[k], "available": board.capacity[k][1], "primitive": prim[k]} for k in used}


def summary_markdown(report: dict) -> str:
    """A readable summary of a report: clocks and each resource against the device."""
    lines = [f"# Synthesis: {report['board']} ({report['device']}), config {report['config']}", "",
             f"Core: {report['core']}; {report['macs_per_cycle']} int8 MACs per cycle"]
    if report.get("dsp_products") is not None:
        lines[-1] += f" ({report['dsp_products']} on hard multipliers, {report['soft_products']} in LUTs)"
    lines[-1] += "."
    lines.append("")
    if report["fmax_mhz"] is None:
        lines.append(f"Requested clock {report['target_mhz']:g} MHz; achieved Fmax: not measured "
                     f"({report.get('note', 'no timing report')}).")
    else:
        verdict = "met" if report["timing_met"] else "NOT met"
        lines.append(f"Requested clock {report['target_mhz']:g} MHz (PLL output {report['clock_mhz']:g} MHz); "
                     f"achieved Fmax after routing {report['fmax_mhz']:.1f} MHz: timing {verdict}.")
        gmacs = report["macs_per_cycle"] * min(report["fmax_mhz"], report["clock_mhz"]) / 1e3
        lines.append(f"Peak throughput at min(Fmax, clock): {gmacs:.1f} GMAC/s.")
    lines += ["", "| resource | primitive | used | available | use |", "|---|---|---|---|---|"]
    for kind, r in report["resources"].items():
        used = "—" if r["used"] is None else f"{r['used']:,}"
        pct = "—" if r["used"] is None else f"{100 * r['used'] / r['available']:.1f} %"
        lines.append(f"| {kind} | {r['primitive']} | {used} | {r['available']:,} | {pct} |")
    cp = report.get("critical_path")
    if cp:
        lines += ["", f"Critical path: {cp['ns']:g} ns ({cp['logic_ns']:g} logic, {cp['routing_ns']:g} routing, "
                      f"{cp['steps']} logic cells) from `{cp['from']}` to `{cp['to']}`."]
    le = report.get("late_endpoints")
    if le:
        parts = ", ".join(f"{part} {n:,}" for part, n in list(le["by_part"].items())[:8])
        lines += ["", f"Late endpoints: {le['late']:,} register, block RAM or multiplier inputs get their data "
                      f"{le['period_ns']:g} ns (a clock period) or more after the edge, {le['near']:,} at 3/4 of it"
                      + (f"; late by part: {parts}." if parts else ".")]
        if le["groups"]:
            lines += ["", "| late registers | endpoints | worst arrival (ns) |", "|---|---:|---:|"]
            lines += [f"| `{g['group'][:70]}` | {g['late']:,} | {g['worst_ns']:g} |" for g in le["groups"]]
    if report.get("bitstream"):
        lines += ["", f"Bitstream: `{report['bitstream']}`."]
    if report.get("project"):
        p = report["project"]
        lines += ["", f"Quartus project: `{p['qsf']}`, `{p['sdc']}`, `{p['verilog']}`; build script `{p['script']}`."]
    if report.get("placer"):
        lines += ["", f"nextpnr: {report['placer']} placer, seed {report['seed']}."]
    lines += ["", f"Took {report['seconds']:g} s."]
    return "\n".join(lines) + "\n"


def synth_command(args) -> int:
    """CLI handler: ``tessera synth --board B [--config NAME] [--seed N] --out DIR``."""
    board = get_board(args.board)
    config = resolve_config(board, args.config)
    try:
        report = synthesize(board, config, args.out, seed=args.seed)
    except BaseException as e:
        # A design refused while elaborating leaves its parts unelaborated: Amaranth's warnings about them
        # would bury the one line that names the problem.
        import warnings

        from amaranth.hdl import UnusedElaboratable
        warnings.filterwarnings("ignore", category=UnusedElaboratable)
        if isinstance(e, (SynthError, ReportError)):
            print(f"tessera synth: {e}", file=sys.stderr)
            return 1
        raise
    sys.stdout.write(summary_markdown(report))
    return 0


if __name__ == "__main__":  # pragma: no cover
    print(", ".join(BOARDS))
