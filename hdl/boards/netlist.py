"""Fix-ups of yosys' ECP5 netlist (its JSON) before nextpnr reads it.

nextpnr-ecp5 ends every carry chain whose last ``COUT`` is connected to a net with a "feed-out":
one more ``CCU2C`` (two ``TRELLIS_COMB``) that brings the carry into the fabric. yosys' adders
leave the last carry of each chain on a net nothing reads, so every adder paid for a feed-out it
does not use: 3,882 of them (7,764 ``TRELLIS_COMB``, 9 % of the LFE5U-85F) in the 512-MAC NPU
(docs/synthesis.md, session 14). :func:`trim_carry_outs` disconnects those carries.

It also starts every chain whose ``CIN`` is tied to a constant with a "feed-in": another ``CCU2C``
that drives the constant into the carry (an ECP5 slice takes its carry only from the slice
below). A half-slice whose LUT is constant does the same, so :func:`start_carry_chains` moves a
chain's halves up by one and makes its first half that start, where the chain's last half was
spare (an adder of an odd width): the chain keeps its length and needs no feed-in.
"""

from __future__ import annotations

import json
import pathlib
from collections import Counter

__all__ = ["CARRY_START_INIT", "fix_carry_chains_file", "start_carry_chains", "trim_carry_outs"]


def _readers(module: dict) -> Counter:
    """How many cell inputs (or inouts) and module ports read each net bit."""
    read = Counter()
    for cell in module["cells"].values():
        dirs = cell.get("port_directions", {})
        for port, bits in cell["connections"].items():
            if dirs.get(port, "input") != "output":
                read.update(b for b in bits if isinstance(b, int))
    for port in module.get("ports", {}).values():
        read.update(b for b in port["bits"] if isinstance(b, int))
    return read


def trim_carry_outs(netlist: dict) -> int:
    """Disconnect every ``CCU2C`` ``COUT`` that no cell and no port reads; return how many.

    Only those carries change (to ``"x"``, unconnected): each was a chain's last carry, so
    nextpnr would have built it a feed-out. A carry some cell reads (the next ``CCU2C`` of the
    chain, or a compare's result) is kept.
    """
    trimmed = 0
    for module in netlist["modules"].values():
        read = _readers(module)
        for cell in module["cells"].values():
            if cell["type"] != "CCU2C":
                continue
            cout = cell["connections"].get("COUT", [])
            if len(cout) == 1 and isinstance(cout[0], int) and not read[cout[0]]:
                cell["connections"]["COUT"] = ["x"]
                trimmed += 1
    return trimmed


#: INIT of a chain's first half that starts the carry at 0 or 1 (its inputs tied high: the LUT4 reads
#: INIT[15] = 0, so it propagates nothing, and its carry is the LUT2 of A, B = INIT[3]).
CARRY_START_INIT = {"0": "0000000000000000", "1": "0000000000001000"}

_HALF_PORTS = ("A", "B", "C", "D", "S")


def _half(cell, h):
    return ({p: cell["connections"].get(f"{p}{h}", ["x"]) for p in _HALF_PORTS},
            cell["parameters"][f"INIT{h}"], cell["parameters"].get(f"INJECT1_{h}", "YES"))


def _set_half(cell, h, half):
    conns, init, inject = half
    for p in _HALF_PORTS:
        cell["connections"][f"{p}{h}"] = conns[p]
    cell["parameters"][f"INIT{h}"], cell["parameters"][f"INJECT1_{h}"] = init, inject


def _is_start(cell, read) -> bool:
    """Whether a CCU2C's first half already starts its carry: constant inputs, a LUT4 of 0 there (so the
    carry is its LUT2, whatever CIN is) and a sum bit nobody reads."""
    conns, init = cell["connections"], cell["parameters"]["INIT0"]
    ins = [conns.get(f"{p}0", ["x"])[0] for p in "ABCD"]
    s0 = conns.get("S0", ["x"])[0]
    return (cell["parameters"].get("INJECT1_0", "YES") == "NO" and all(b in ("0", "1") for b in ins)
            and init[15 - sum(int(b) << k for k, b in enumerate(ins))] == "0"
            and not (isinstance(s0, int) and read[s0]))


def start_carry_chains(netlist: dict) -> int:
    """Give each chain with a constant ``CIN`` and a spare last half its own carry start; return how many.

    The spare half (``S1`` of the chain's last ``CCU2C``, which nothing reads, and no carry out that
    anything reads) is dropped, every other half moves up one place (into the next ``CCU2C`` where it
    was a cell's second half), the first half becomes :data:`CARRY_START_INIT` and ``CIN`` is
    disconnected. A chain that already begins with such a start (its first half's LUT constant 0,
    :func:`tessera.hdl.boards.multipliers.ecp5_and_add`) only has ``CIN`` disconnected (yosys ties an
    unconnected one to 0). Run after :func:`trim_carry_outs`.
    """
    started = 0
    for module in netlist["modules"].values():
        cells, read = module["cells"], _readers(module)
        by_cin = {c["connections"]["CIN"][0]: c for c in cells.values()
                  if c["type"] == "CCU2C" and isinstance(c["connections"]["CIN"][0], int)}
        for first in [c for c in cells.values() if c["type"] == "CCU2C"]:
            cin = first["connections"]["CIN"][0]
            if cin not in CARRY_START_INIT:
                continue
            if _is_start(first, read):
                first["connections"]["CIN"] = ["x"]        # built with its own start (ecp5_and_add)
                started += 1
                continue
            chain = [first]
            while (nxt := by_cin.get(chain[-1]["connections"]["COUT"][0])) is not None:
                chain.append(nxt)
            # Moved halves change which carry each COUT is: every carry inside the chain must go to the next
            # CCU2C only (a compare may read one), and the last half must be spare.
            last = chain[-1]["connections"]
            if (any(read[c["connections"]["COUT"][0]] != 1 for c in chain[:-1])
                    or any(isinstance(b, int) and read[b] for b in last.get("S1", ["x"]) + last["COUT"])):
                continue
            halves = [_half(c, h) for c in chain for h in (0, 1)][:-1]
            start = ({p: ["1"] for p in "ABCD"} | {"S": ["x"]}, CARRY_START_INIT[cin], "NO")
            for i, half in enumerate([start] + halves):
                _set_half(chain[i // 2], i % 2, half)
            first["connections"]["CIN"] = ["x"]
            started += 1
    return started


def fix_carry_chains_file(path) -> tuple[int, int]:
    """:func:`trim_carry_outs` then :func:`start_carry_chains` on a yosys JSON file, rewritten in place;
    returns (carries trimmed, chains started)."""
    path = pathlib.Path(path)
    netlist = json.loads(path.read_text())
    done = trim_carry_outs(netlist), start_carry_chains(netlist)
    if any(done):
        path.write_text(json.dumps(netlist))
    return done
