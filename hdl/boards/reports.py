"""Read the open toolchain's logs: nextpnr's ``<name>.tim`` and yosys' ``<name>.rpt``, and
nextpnr's JSON timing report (:func:`late_endpoints`).

The logs are text the tools print for people, so the parsers are strict about the lines they use
and say which file lacks what.
"""

import re
from collections import Counter

__all__ = ["ReportError", "parse_utilisation", "parse_fmax", "parse_yosys_cells", "parse_critical_path",
           "design_part", "late_endpoints", "register_group"]


class ReportError(Exception):
    """A tool log lacks a section the synthesis report needs (usually: the tool failed)."""


_UTIL_HEAD = re.compile(r"^Info:\s+Device utilisation:\s*$")
_UTIL_LINE = re.compile(r"^Info:\s+(\S+):\s+(\d+)/\s*(\d+)\s+\d+%\s*$")
# nextpnr prints the line as a warning when the clock fails after routing.
_FMAX = re.compile(r"^(?:Info|Warning): Max frequency for clock\s+'([^']+)':\s+([0-9.]+) MHz\s+\((PASS|FAIL) at ([0-9.]+) MHz\)")


def parse_utilisation(text: str, source: str = "nextpnr log") -> dict:
    """Cell usage from nextpnr's last "Device utilisation" block: ``{cell_type: (used, available)}``."""
    lines = text.splitlines()
    heads = [i for i, line in enumerate(lines) if _UTIL_HEAD.match(line)]
    if not heads:
        raise ReportError(f"{source}: no 'Device utilisation' section (did nextpnr run to the end?)")
    util = {}
    for line in lines[heads[-1] + 1:]:
        mt = _UTIL_LINE.match(line)
        if not mt:
            if util:
                break
            continue
        util[mt.group(1)] = (int(mt.group(2)), int(mt.group(3)))
    if not util:
        raise ReportError(f"{source}: 'Device utilisation' section has no cell lines")
    return util


def parse_fmax(text: str, source: str = "nextpnr log") -> dict:
    """Post-route Fmax per clock: ``{clock: (fmax_mhz, target_mhz, passed)}``.

    nextpnr prints a timing summary after placement and again after routing; only lines after
    "Routing complete." count, and the last one per clock wins.
    """
    routed = text.rfind("Routing complete.")
    if routed < 0:
        raise ReportError(f"{source}: routing did not complete, so there is no post-route Fmax")
    result = {}
    for line in text[routed:].splitlines():
        mt = _FMAX.match(line)
        if mt:
            result[mt.group(1)] = (float(mt.group(2)), float(mt.group(4)), mt.group(3) == "PASS")
    if not result:
        raise ReportError(f"{source}: no 'Max frequency for clock' line (is any clock constrained?)")
    return result


_CRIT_HEAD = re.compile(r"^Info: Critical path report for clock '([^']+)' \(posedge -> posedge\):")
_CRIT_STEP = re.compile(r"^Info:\s+(clk-to-q|logic|routing|setup)\s+([0-9.]+)\s+([0-9.]+)\s+(?:Source|Net)\s+(\S+)")
_CRIT_SUM = re.compile(r"^Info: ([0-9.]+) ns logic, ([0-9.]+) ns routing")


def parse_critical_path(text: str, source: str = "nextpnr log") -> dict | None:
    """The post-route critical path within the slowest clock: where it starts and ends, and its delay.

    Returns ``{"clock", "from", "to", "ns", "logic_ns", "routing_ns", "steps"}`` (cell and net names as
    nextpnr prints them; ``steps`` counts the logic cells passed), or None when nextpnr printed none.
    """
    routed = text.rfind("Routing complete.")
    lines = text[routed:].splitlines() if routed >= 0 else []
    best = None
    for i, line in enumerate(lines):
        mt = _CRIT_HEAD.match(line)
        if not mt:
            continue
        steps = []
        for follow in lines[i + 1:]:
            st = _CRIT_STEP.match(follow)
            if st:
                steps.append((st.group(1), float(st.group(3)), st.group(4)))
            sm = _CRIT_SUM.match(follow)
            if sm:
                logic, routing = float(sm.group(1)), float(sm.group(2))
                cells = [name for kind, _, name in steps if kind in ("clk-to-q", "logic", "setup")]
                path = {"clock": mt.group(1), "from": cells[0] if cells else None,
                        "to": cells[-1] if cells else None, "ns": round(logic + routing, 2),
                        "logic_ns": logic, "routing_ns": routing,
                        "steps": sum(kind == "logic" for kind, _, _ in steps)}
                if best is None or path["ns"] > best["ns"]:
                    best = path
                break
    return best


_STAT_CELL = re.compile(r"^\s+(\d+)\s+(\S+)\s*$")
_NOT_CELLS = {"wires", "ports", "cells", "submodules", "memories", "processes", "top"}


def parse_yosys_cells(text: str, source: str = "yosys log") -> dict:
    """Cell counts of the whole design from yosys' last "Printing statistics" pass: ``{cell: count}``.

    Uses the last "Count including submodules" table when yosys prints a hierarchy, else the
    single module's table. Internal ``$`` cells (e.g. ``$scopeinfo``) are left out.
    """
    start = text.rfind("Printing statistics.")
    if start < 0:
        raise ReportError(f"{source}: no 'Printing statistics' section (did yosys finish?)")
    section = text[start:]
    for marker in ("Executing CHECK pass", "End of script"):
        pos = section.find(marker)
        if pos >= 0:
            section = section[:pos]
    total = section.rfind("Count including submodules")
    if total >= 0:
        section = section[total:]
    cells = {}
    for line in section.splitlines():
        mt = _STAT_CELL.match(line)
        if not mt:
            continue
        name = mt.group(2)
        if name in _NOT_CELLS or name.startswith("$"):
            continue
        cells[name] = int(mt.group(1))
    if not cells:
        raise ReportError(f"{source}: statistics section lists no cells")
    return cells


#: Endpoints whose data arrives this share of the requested clock period after the edge count as near;
#: at a whole period they are late (they fail at the requested clock, setup aside).
NEAR_SHARE = 0.75


def design_part(cell: str) -> str:
    """The part of the design a nextpnr cell belongs to, from its hierarchical name.

    Inside the NPU's core: ``npu.<unit>`` and the unit's submodule if it has one (``npu.post.pool``,
    ``npu.dispatch.q_post``; the core's buffers are ``npu.wgt_buf`` and alike); the NPU's CSR block
    is ``npu.csr``; anything else by up to two levels below the board top (``board.sdram_ctl``,
    ``board.linked.link``). The cell's own name (the last level) never counts.
    """
    # A memory split over several block RAMs names them <memory>.<i>.<j>: the indices are not parts.
    levels = [lv for lv in cell.split(".")[:-1] if not lv.isdigit()]
    if "npu" in levels:
        i = levels.index("npu")
        rest = levels[i + 1:]
        if rest[:1] == ["core"]:
            rest = rest[1:]
        return ".".join(["npu"] + rest[:2]) if rest else "npu"
    rest = levels[1:] if levels[:1] == ["core"] else levels
    if rest[:1] == ["system"]:
        rest = rest[1:]
    return ".".join(["board"] + rest[:2]) if rest else "board"


def register_group(cell: str) -> str:
    """The group of registers (or block) a nextpnr endpoint cell belongs to, the same for every bit.

    The cell's packing suffixes (``_TRELLIS_FF_Q_3``, ``_LUT4_Z``, ``$CCU2_COMB0``) are dropped and
    every number but an anonymous signal's (``$signal$194``) becomes ``#``, so ``npu.post.epi.res_shift2_TRELLIS_FF_Q_17`` and
    ``...res_shift3_TRELLIS_FF_Q_4`` are both ``npu.post.epi.res_shift#``; the prefix is
    :func:`design_part`'s part.
    """
    levels = cell.split(".")
    if levels[-1].isdigit():
        # A memory's block RAMs (<memory>.<i>.<j>): the memory is the group, whichever block it is.
        return re.sub(r"(?<![$\d])\d+", "#", design_part(cell))
    name = re.sub(r"(_TRELLIS_|_LUT4|_CCU2C|\$CCU2|_PFUMX|_L6MUX|_MULT18X18D|_DP16KD).*$", "", levels[-1])
    # Numbers in a name are bits, lanes and copies, apart from Amaranth's anonymous $signal$<n>, r$<n>.
    name = re.sub(r"(?<![$\d])\d+", "#", name)
    return f"{design_part(cell)}.{name}"


def late_endpoints(timing: dict, period_ns: float, groups: int = 10) -> dict:
    """Which registers get their data late, from nextpnr's ``--report --detailed-timing-report`` JSON.

    That report lists, net by net, when the net's value arrives at each timing endpoint it drives
    (a flip-flop's data, enable or reset pin, a block RAM's or multiplier's input) after the launching
    clock edge: the whole path's delay, logic and routing. An endpoint is *late* when its arrival
    is at least ``period_ns`` (the requested clock's period; setup times aside, it fails there) and
    *near* at :data:`NEAR_SHARE` of it. Returns ``{"period_ns", "late", "near",
    "by_part": {part: late}, "groups": [{"group", "late", "worst_ns"}]}`` with parts as
    :func:`design_part` and groups as :func:`register_group` names them, most late endpoints first:
    the groups say which registers a change must reach, the critical path only the worst of them.
    """
    nets = timing.get("detailed_net_timings")
    if not isinstance(nets, list):
        raise ReportError("nextpnr timing report: no 'detailed_net_timings' list (was it run with "
                          "--detailed-timing-report?)")
    near_ns = NEAR_SHARE * period_ns
    parts, grp, worst, late, near = Counter(), Counter(), {}, 0, 0
    for net in nets:
        for e in net.get("endpoints") or []:
            d = e.get("delay")
            d = max(d) if isinstance(d, list) and d else d
            if not isinstance(d, (int, float)):
                raise ReportError(f"nextpnr timing report: net {net.get('net')!r} has an endpoint without a delay")
            near += d >= near_ns
            if d < period_ns:
                continue
            late += 1
            cell = e.get("cell", "")
            parts[design_part(cell)] += 1
            g = register_group(cell)
            grp[g] += 1
            worst[g] = max(worst.get(g, 0.0), d)
    return {"period_ns": round(period_ns, 3), "late": late, "near": near,
            "by_part": dict(sorted(parts.items(), key=lambda kv: (-kv[1], kv[0]))),
            "groups": [{"group": g, "late": n, "worst_ns": round(worst[g], 2)}
                       for g, n in sorted(grp.items(), key=lambda kv: (-kv[1], -worst[kv[0]], kv[0]))[:groups]]}
