"""Fix-ups of yosys' ECP5 netlist (its JSON) before nextpnr reads it.

nextpnr-ecp5 ends every carry chain whose last ``COUT`` is connected to a net with a "feed-out":
one more ``CCU2C`` (two ``TRELLIS_COMB``) that brings the carry into the fabric. yosys' adders
leave the last carry of each chain on a net nothing reads, so every adder paid for a feed-out it
does not use: 3,882 of them (7,764 ``TRELLIS_COMB``, 9 % of the LFE5U-85F) in the 512-MAC NPU
(docs/synthesis.md, session 14). :func:`trim_carry_outs` disconnects those carries.
"""

from __future__ import annotations

import json
import pathlib

__all__ = ["trim_carry_outs", "trim_carry_outs_file"]


def _read_bits(module: dict) -> set:
    """Net bits something reads: a cell input (or inout) or a port of the module."""
    read = set()
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
        read = _read_bits(module)
        for cell in module["cells"].values():
            if cell["type"] != "CCU2C":
                continue
            cout = cell["connections"].get("COUT", [])
            if len(cout) == 1 and isinstance(cout[0], int) and cout[0] not in read:
                cell["connections"]["COUT"] = ["x"]
                trimmed += 1
    return trimmed


def trim_carry_outs_file(path) -> int:
    """:func:`trim_carry_outs` on a yosys JSON file, rewritten in place (only when it changes)."""
    path = pathlib.Path(path)
    netlist = json.loads(path.read_text())
    trimmed = trim_carry_outs(netlist)
    if trimmed:
        path.write_text(json.dumps(netlist))
    return trimmed
