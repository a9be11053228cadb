"""ECP5 netlist fix-ups between yosys and nextpnr (hdl/boards/netlist.py)."""

import json
import re
import subprocess

from tessera.hdl.boards import BOARDS
from tessera.hdl.boards.netlist import trim_carry_outs, trim_carry_outs_file
from tessera.hdl.synth import _tool_env


def _ccu2c(cin, cout):
    return {"type": "CCU2C", "port_directions": {"CIN": "input", "COUT": "output", "S0": "output"},
            "connections": {"CIN": [cin], "COUT": [cout], "S0": [cout + 100 if isinstance(cout, int) else "x"]}}


def test_trim_carry_outs_disconnects_only_carries_nothing_reads():
    netlist = {"modules": {"top": {
        "ports": {"lt": {"direction": "output", "bits": [7]}},
        "cells": {
            "a0": _ccu2c("0", 2), "a1": _ccu2c(2, 3),                 # an adder: a1's carry is read by nobody
            "c0": _ccu2c("1", 5), "c1": _ccu2c(5, 6),                 # a compare: its carry feeds a LUT
            "lut": {"type": "LUT4", "port_directions": {"A": "input", "Z": "output"},
                    "connections": {"A": [6], "Z": [8]}},
            "p0": _ccu2c("0", 7),                                     # a carry that is a module output
            "x0": _ccu2c("0", "x"),                                   # already unconnected
        }}}}
    assert trim_carry_outs(netlist) == 1
    cells = netlist["modules"]["top"]["cells"]
    assert cells["a1"]["connections"]["COUT"] == ["x"]
    assert [cells[n]["connections"]["COUT"] for n in ("a0", "c0", "c1", "p0", "x0")] == [[2], [5], [6], [7], ["x"]]
    assert trim_carry_outs(netlist) == 0                              # nothing left to do


def _comb(log):
    return int(re.search(r"TRELLIS_COMB:\s+(\d+)/", log).group(1))


def test_trim_carry_outs_spares_nextpnr_a_feed_out_per_adder(tmp_path):
    # Two adders and a compare through the yosys and nextpnr tessera synth runs: each adder's last carry
    # dangles (a feed-out of two TRELLIS_COMB in nextpnr); the compare's carry is its result and stays.
    tools = _tool_env(BOARDS["ulx3s-85f"])                # the tools tessera synth runs
    (tmp_path / "t.v").write_text(
        "module top(input clk, input [9:0] a, b, input [11:0] c, d, output reg [10:0] s, output reg [12:0] t,\n"
        "           output reg lt);\n"
        "always @(posedge clk) begin s <= a + b; t <= c + d; lt <= a < b; end\nendmodule\n")
    subprocess.run([tools["YOSYS"], "-q", "-p", "read_verilog t.v; synth_ecp5 -top top; write_json t.json"],
                   cwd=tmp_path, check=True, capture_output=True)
    before = json.loads((tmp_path / "t.json").read_text())
    (tmp_path / "trimmed.json").write_text(json.dumps(before))
    trimmed = trim_carry_outs_file(tmp_path / "trimmed.json")
    assert trimmed == 2
    comb = {}
    for name in ("t", "trimmed"):
        subprocess.run([tools["NEXTPNR_ECP5"], "--pack-only", "--85k", "--package", "CABGA381", "--json", f"{name}.json",
                        "--log", f"{name}.log"], cwd=tmp_path, capture_output=True)
        comb[name] = _comb((tmp_path / f"{name}.log").read_text())
    assert comb["trimmed"] == comb["t"] - 2 * trimmed, comb
