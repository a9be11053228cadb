"""ECP5 netlist fix-ups between yosys and nextpnr (hdl/boards/netlist.py)."""

import json
import re
import subprocess

import numpy as np

from tessera.hdl.boards import BOARDS
from tessera.hdl.boards.netlist import start_carry_chains, trim_carry_outs, fix_carry_chains_file
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


def test_start_carry_chains_disconnects_cin_only_where_the_first_half_already_starts_the_carry():
    def chain(init0, s0_read):
        cell = _ccu2c("0", 2)
        cell["parameters"] = {"INIT0": init0, "INIT1": "1001011010101010", "INJECT1_0": "NO", "INJECT1_1": "NO"}
        cell["connections"].update({f"{p}0": ["1"] for p in "ABCD"})
        cell["connections"].update(S0=[5], S1=[6], COUT=[7])
        cell["port_directions"].update(S1="output", **{f"{p}0": "input" for p in "ABCD"})
        lut = {"type": "LUT4", "port_directions": {"A": "input", "B": "input", "Z": "output"},
               "connections": {"A": [6], "B": [5] if s0_read else [6], "Z": [8]}}
        return {"modules": {"top": {"ports": {}, "cells": {"c": cell, "lut": lut}}}}

    cases = [("0000000000001000", False, ["x"]),      # LUT4(1,1,1,1) = 0: the carry is its LUT2, CIN unused
             ("1000000000000000", False, ["0"]),      # LUT4 = 1: the half propagates CIN
             ("0000000000000000", True, ["0"])]       # S0 = CIN is read
    for init0, s0_read, cin in cases:
        netlist = chain(init0, s0_read)
        start_carry_chains(netlist)
        assert netlist["modules"]["top"]["cells"]["c"]["connections"]["CIN"] == cin, (init0, s0_read)


def _lut(init, *ins):
    return int(init[15 - sum(v << k for k, v in enumerate(ins))])     # INIT as yosys writes it: bit 15 first


def _evaluate(module, inputs, x):
    """Values of a combinational ECP5 netlist's output ports, as yosys' cell models compute them; ``x`` is
    the value of every unconnected input (a result that depends on it is a netlist error)."""
    bits = {"0": 0, "1": 1, "x": x}
    for name, port in module["ports"].items():
        if port["direction"] == "input":
            bits.update({b: inputs[name] >> i & 1 for i, b in enumerate(port["bits"])})
    pending = [c for c in module["cells"].values() if c["type"] != "$scopeinfo"]
    while pending:
        later = []
        for c in pending:
            ins = {p: [bits.get(b) for b in v] for p, v in c["connections"].items() if c["port_directions"][p] == "input"}
            if any(v is None for vs in ins.values() for v in vs):
                later.append(c)
                continue
            i = {p: v[0] for p, v in ins.items()}
            i.update({p: x for p in c["port_directions"] if p not in i})
            out, par = {}, c["parameters"]
            if c["type"] == "LUT4":
                out["Z"] = _lut(par["INIT"], i["A"], i["B"], i["C"], i["D"])
            elif c["type"] == "PFUMX":
                out["Z"] = i["ALUT"] if i["C0"] else i["BLUT"]
            elif c["type"] == "L6MUX21":
                out["Z"] = i["D1"] if i["SD"] else i["D0"]
            else:
                assert c["type"] == "CCU2C", c["type"]
                carry = i["CIN"]
                for h in (0, 1):
                    f = _lut(par[f"INIT{h}"], i[f"A{h}"], i[f"B{h}"], i[f"C{h}"], i[f"D{h}"])
                    g = _lut(par[f"INIT{h}"][12:].rjust(16, "0"), i[f"A{h}"], i[f"B{h}"], 0, 0)
                    inject = par[f"INJECT1_{h}"] == "YES"
                    out[f"S{h}"] = f ^ (0 if inject else carry)
                    carry = (~f & (0 if inject else g) | f & carry) & 1
                out["COUT"] = carry
            for p, v in out.items():
                b = c["connections"].get(p, ["x"])[0]
                if isinstance(b, int):
                    bits[b] = v
        assert len(later) < len(pending), "combinational loop or undriven net"
        pending = later
    return {name: sum(bits[b] << k for k, b in enumerate(port["bits"]))
            for name, port in module["ports"].items() if port["direction"] == "output"}


ADDERS = """\
module top(input [9:0] a, b, input [11:0] c, d, input [6:0] e, output [10:0] s, output [12:0] t,
           output [10:0] u, output lt, output [13:0] v, output [8:0] w, output [7:0] z, output [8:0] y,
           output [4:0] q);
assign s = a + b; assign t = c + d; assign u = a - b; assign lt = a < b; assign v = c + d + e;
assign w = a + b; assign z = e - 7'd3; assign y = a[8:0] - b[8:0]; assign q = e[4:0] - b[4:0];
endmodule
"""


def test_start_carry_chains_keeps_every_sum_and_drops_feed_ins(tmp_path):
    # Adders of odd and even widths, subtracts (carry in 1) and a compare through yosys' ECP5 mapping; the
    # rewritten netlist must compute the same outputs whatever an unconnected carry in is, and nextpnr must
    # pack it into two TRELLIS_COMB fewer per started chain (no feed-in) and per trimmed carry (no feed-out).
    (tmp_path / "t.v").write_text(ADDERS)
    _synth_ecp5(tmp_path, "read_verilog t.v")
    (tmp_path / "new.json").write_text((tmp_path / "t.json").read_text())
    trimmed, started = fix_carry_chains_file(tmp_path / "new.json")
    old, new = (json.loads((tmp_path / f"{n}.json").read_text())["modules"]["top"] for n in ("t", "new"))
    # Chains that started at carry 0 (adds) and at carry 1 (subtracts) both got their own start.
    starts = [old["cells"][n]["connections"]["CIN"][0] for n, c in new["cells"].items()
              if c["type"] == "CCU2C" and c["connections"]["CIN"] == ["x"] and old["cells"][n]["connections"]["CIN"] != ["x"]]
    assert len(starts) == started and set(starts) == {"0", "1"} and trimmed >= 5, (trimmed, starts)
    rng = np.random.default_rng(7)
    widths = {name: len(p["bits"]) for name, p in old["ports"].items() if p["direction"] == "input"}
    for _ in range(300):
        inputs = {name: int(rng.integers(0, 1 << w)) for name, w in widths.items()}
        want = _evaluate(old, inputs, 0)
        assert want["s"] == inputs["a"] + inputs["b"] and want["z"] == (inputs["e"] - 3) % 256, (want, inputs)
        for x in (0, 1):
            assert _evaluate(new, inputs, x) == want, (inputs, x)
    comb = _packed(tmp_path, "t", "new")
    assert comb["new"] == comb["t"] - 2 * (trimmed + started), (comb, trimmed, started)


def _synth_ecp5(tmp_path, read):
    """yosys' ECP5 netlist of the design ``read`` reads, as tessera synth's yosys makes it: ``t.json``."""
    subprocess.run([_tool_env(BOARDS["ulx3s-85f"])["YOSYS"], "-q", "-p", f"{read}; synth_ecp5 -top top; write_json t.json"],
                   cwd=tmp_path, check=True, capture_output=True)


def _packed(tmp_path, *names):
    """nextpnr's TRELLIS_COMB count after packing each ``NAME.json``: {name: count}."""
    comb = {}
    for name in names:
        subprocess.run([_tool_env(BOARDS["ulx3s-85f"])["NEXTPNR_ECP5"], "--pack-only", "--85k", "--package", "CABGA381",
                        "--json", f"{name}.json", "--log", f"{name}.log"], cwd=tmp_path, capture_output=True)
        log = (tmp_path / f"{name}.log").read_text()
        comb[name] = int(re.search(r"TRELLIS_COMB:\s+(\d+)/", log).group(1))
    return comb


def test_trim_carry_outs_spares_nextpnr_a_feed_out_per_adder(tmp_path):
    # Two adders and a compare through the yosys and nextpnr tessera synth runs: each adder's last carry
    # dangles (a feed-out of two TRELLIS_COMB in nextpnr); the compare's carry is its result and stays.
    (tmp_path / "t.v").write_text(
        "module top(input clk, input [9:0] a, b, input [11:0] c, d, output reg [10:0] s, output reg [12:0] t,\n"
        "           output reg lt);\n"
        "always @(posedge clk) begin s <= a + b; t <= c + d; lt <= a < b; end\nendmodule\n")
    _synth_ecp5(tmp_path, "read_verilog t.v")
    before = json.loads((tmp_path / "t.json").read_text())
    (tmp_path / "trimmed.json").write_text(json.dumps(before))
    netlist = json.loads((tmp_path / "trimmed.json").read_text())
    trimmed = trim_carry_outs(netlist)
    (tmp_path / "trimmed.json").write_text(json.dumps(netlist))
    assert trimmed == 2
    comb = _packed(tmp_path, "t", "trimmed")
    assert comb["trimmed"] == comb["t"] - 2 * trimmed, comb


def test_ecp5_and_add_chain_needs_no_feed_in_or_out_after_the_fix_ups(tmp_path):
    # The soft multiplier's partial-product chain through yosys and the fix-ups: the same sums whatever
    # enters its (disconnected) carry in, and nextpnr packs its five CCU2C and bit 0's LUT, nothing else.
    from amaranth.back import rtlil
    from amaranth.hdl import Module, Signal, signed
    from tessera.hdl.boards.multipliers import ecp5_and_add
    m = Module()
    a, g0, g1, s = Signal(signed(8), name="a"), Signal(name="g0"), Signal(name="g1"), Signal(signed(10), name="s")
    m.d.comb += s.eq(ecp5_and_add(m, a, g0, g1, "aa"))
    (tmp_path / "t.il").write_text(rtlil.convert(m, ports=[a, g0, g1, s], name="top"))
    _synth_ecp5(tmp_path, "read_rtlil t.il")
    (tmp_path / "plain.json").write_text((tmp_path / "t.json").read_text())
    assert fix_carry_chains_file(tmp_path / "t.json") == (1, 1)    # yosys gives the open COUT a net
    net = json.loads((tmp_path / "t.json").read_text())["modules"]["top"]
    for x in (0, 1):
        for av in range(256):
            for gv in range(4):
                got = _evaluate(net, {"a": av, "g0": gv & 1, "g1": gv >> 1}, x)["s"]
                want = ((gv & 1) + 2 * (gv >> 1)) * (av - 256 * (av >> 7))
                assert got == want % 1024, (av, gv, x)
    comb = _packed(tmp_path, "plain", "t")
    # Five CCU2C and bit 0's LUT, beside nextpnr's constant drivers; a feed-in and a feed-out fewer.
    assert comb["t"] == comb["plain"] - 4 and 11 <= comb["t"] <= 13, comb
