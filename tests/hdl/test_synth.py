"""`tessera synth`: report parsers on captured logs, the Arria 10 project, an iCE40 build end to end."""

import json
import os
import re
import subprocess
import sys

import pytest

from tessera.arch import PRESETS
from tessera.hdl.boards import BOARDS
from tessera.hdl.boards.reports import (
    ReportError,
    design_part,
    parse_critical_path,
    parse_fmax,
    parse_utilisation,
    parse_yosys_cells,
    late_endpoints,
    register_group,
)
from tessera.hdl.synth import TIMING_JSON, TOP_NAME, estimate_resources, summary_markdown, synthesize

# Captured from nextpnr-ecp5 0.11 (YoWASP) on a ULX3S-85F build; tabs and spacing as printed.
NEXTPNR_ECP5_LOG = """\
Info: Device utilisation:
Info: \t          TRELLIS_IO:       2/    365     0%
Info: \t                DCCA:       1/     56     1%
Info: \t              DP16KD:       0/    208     0%
Info: \t          MULT18X18D:       4/    156     2%
Info: \t             EHXPLLL:       1/      4    25%
Info: \t          TRELLIS_FF:     384/  83640     0%
Info: \t        TRELLIS_COMB:    1492/  83640     1%

Info: Placed 6 cells based on constraints.
Info: Max frequency for clock '$glbnet$clk': 93.84 MHz (FAIL at 100.00 MHz)

Info: Routing globals...
Info: Routing complete.
Info: Critical path report for clock '$glbnet$clk' (posedge -> posedge):
Info: Max frequency for clock '$glbnet$clk': 111.46 MHz (PASS at 100.00 MHz)

Info: Program finished normally.
"""

# Captured from nextpnr-ecp5 0.11 after routing a design that fails its clock (the POST unit alone,
# bench_synth --units post); net names shortened and the path cut to its first and last steps.
NEXTPNR_ECP5_FAIL_LOG = """\
Info: Max frequency for clock '$glbnet$clk': 23.57 MHz (FAIL at 100.00 MHz)

Info: Routing complete.
Info: Router1 time 426.61s
Info: Checksum: 0x59caad1b

Info: Critical path report for clock '$glbnet$clk' (posedge -> posedge):
Info:       type curr  total name
Info:   clk-to-q  0.52  0.52 Source core.unit.pool.instr_TRELLIS_FF_Q_119.Q
Info:    routing  1.37  1.89 Net core.unit.pool.instr[39] (10,41) -> (11,43)
Info:                          Sink core.unit.running_CCU2C_S1$CCU2_COMB1.A
Info:                          Defined in:
Info:                               /work/main/hdl/post.py:40
Info:      logic  0.45  2.34 Source core.unit.running_CCU2C_S1$CCU2_COMB1.FCO
Info:    routing  0.00  2.34 Net core.unit.running_CCU2C_COUT (10,41) -> (10,41)
Info:                          Sink core.unit.running_MULT18X18D.A2
Info:      logic  3.93 12.56 Source core.unit.running_MULT18X18D.P21
Info:    routing  0.32 37.51 Net core.unit.pool.wc_TRELLIS_FF_Q_LSR (10,61) -> (10,61)
Info:                          Sink core.unit.pool.wc_TRELLIS_FF_Q_1.LSR
Info:      setup  0.42  37.93 Source core.unit.pool.wc_TRELLIS_FF_Q_1.LSR
Info: 14.50 ns logic, 23.43 ns routing

Info: Critical path report for cross-domain path 'posedge $glbnet$clk' -> '<async>':
Info:       type curr  total name
Info:   clk-to-q  0.52  0.52 Source core.led_TRELLIS_FF_Q.Q
Info:    routing  0.99  1.51 Net core.led (2,36) -> (0,35)
Info:                          Sink led$13.buf.buf0.I
Info: 0.52 ns logic, 0.99 ns routing

Warning: Max frequency for clock '$glbnet$clk': 26.36 MHz (FAIL at 100.00 MHz)

Info: Max delay posedge $glbnet$clk -> <async>: 1.51 ns
"""

# Captured from nextpnr-ice40 0.11 on an iCEBreaker build (two clocks, one failing).
NEXTPNR_ICE40_LOG = """\
Info: Device utilisation:
Info: \t         ICESTORM_LC:     958/   5280    18%
Info: \t        ICESTORM_RAM:       0/     30     0%
Info: \t        ICESTORM_DSP:       4/      8    50%
Info: \t      ICESTORM_SPRAM:       0/      4     0%

Info: Routing complete.
Info: Max frequency for clock 'clk': 65.27 MHz (PASS at 30.00 MHz)
Info: Max frequency for clock 'uart_clk': 21.50 MHz (FAIL at 24.00 MHz)
"""

# Captured from yosys 0.70 `synth_ecp5` (the end of top.rpt).
YOSYS_RPT = """\
2.49. Printing statistics.

=== top ===

        +----------Local Count, excluding submodules.
        |
     1959 wires
     3084 wire bits
        2 ports
       15 cells
        8   $scopeinfo
        1   EHXPLLL
        4   MULT18X18D
     2329 submodules
      118   CCU2C
     1206   LUT4
      384   TRELLIS_FF

=== design hierarchy ===

        +----------Count including submodules.
        |
       15 top

        +----------Count including submodules.
        |
     1959 wires
       15 cells
        8   $scopeinfo
        1   EHXPLLL
        4   MULT18X18D
     2329 submodules
      118   CCU2C
     1206   LUT4
      384   TRELLIS_FF

2.50. Executing CHECK pass (checking for obvious problems).
"""


def test_parse_utilisation_reads_used_and_available():
    util = parse_utilisation(NEXTPNR_ECP5_LOG)
    assert util["TRELLIS_COMB"] == (1492, 83640)
    assert util["MULT18X18D"] == (4, 156)
    assert util["DP16KD"] == (0, 208)
    assert parse_utilisation(NEXTPNR_ICE40_LOG)["ICESTORM_DSP"] == (4, 8)


def test_parse_fmax_takes_the_post_route_figure_per_clock():
    assert parse_fmax(NEXTPNR_ECP5_LOG) == {"$glbnet$clk": (111.46, 100.0, True)}
    f = parse_fmax(NEXTPNR_ICE40_LOG)
    assert f["uart_clk"] == (21.5, 24.0, False) and f["clk"][2]


def test_parse_fmax_reads_a_failing_clock_printed_as_a_warning():
    assert parse_fmax(NEXTPNR_ECP5_FAIL_LOG) == {"$glbnet$clk": (26.36, 100.0, False)}


def test_parse_critical_path_names_both_ends_and_splits_the_delay():
    cp = parse_critical_path(NEXTPNR_ECP5_FAIL_LOG)
    assert cp == {"clock": "$glbnet$clk", "from": "core.unit.pool.instr_TRELLIS_FF_Q_119.Q",
                  "to": "core.unit.pool.wc_TRELLIS_FF_Q_1.LSR", "ns": 37.93, "logic_ns": 14.5,
                  "routing_ns": 23.43, "steps": 2}
    assert parse_critical_path(NEXTPNR_ECP5_FAIL_LOG.split("Info: Routing complete.")[0]) is None


def test_parse_yosys_cells_uses_hierarchy_totals_without_internal_cells():
    cells = parse_yosys_cells(YOSYS_RPT)
    assert cells == {"EHXPLLL": 1, "MULT18X18D": 4, "CCU2C": 118, "LUT4": 1206, "TRELLIS_FF": 384}


def test_estimate_resources_counts_carry_luts_against_capacity():
    est = estimate_resources(BOARDS["ulx3s-85f"], parse_yosys_cells(YOSYS_RPT))
    assert est["LUT4"] == {"used": 1206 + 2 * 118, "available": 83640, "primitive": "TRELLIS_COMB (LUT4 + carry halves)"}
    assert est["DSP"]["used"] == 4 and est["DSP"]["available"] == 156
    assert est["FF"]["used"] == 384 and est["BRAM"]["used"] == 0
    ice = estimate_resources(BOARDS["icebreaker"], {"SB_LUT4": 6000, "SB_DFFSR": 10, "SB_DFFE": 5, "SB_MAC16": 9})
    assert ice["LUT4"]["used"] > ice["LUT4"]["available"] and ice["FF"]["used"] == 15 and ice["DSP"]["used"] == 9


@pytest.mark.parametrize("cell, part", [
    ("core.system.npu.core.post.pool.sm$131_TRELLIS_FF_Q", "npu.post.pool"),
    ("core.system.npu.core.load.r$11_TRELLIS_FF_Q", "npu.load"),
    ("core.system.npu.core.wgt_buf.0.29", "npu.wgt_buf"),
    ("core.system.npu.core.$signal$190_TRELLIS_FF_Q_1", "npu"),
    ("core.system.npu.csr.wd_TRELLIS_FF_Q_9", "npu.csr"),
    ("core.system.link.count_TRELLIS_FF_Q", "board.link"),
    ("core.uart_rx$44.buf.buf0", "board.uart_rx$44.buf"),
    ("core.system.linked.link.crc_TRELLIS_FF_Q", "board.linked.link"),
    ("core.system.linked.npu.core.wgt_rd__addr_TRELLIS_FF_Q_7", "npu"),
    ("pll_lock_TRELLIS_FF", "board"),
])
def test_design_part_names_the_unit_a_cell_lies_in(cell, part):
    assert design_part(cell) == part


def _net(name, driver, *sinks):
    return {"net": name, "driver": driver, "port": "Q", "event": "posedge clk", "sources": [],
            "endpoints": [{"cell": c, "port": "DI", "event": "posedge clk", "delay": [d * 0.9, d]} for c, d in sinks]}


# The shape of nextpnr-ecp5 0.11's --report file with --detailed-timing-report (delays: [min, max] ns).
TIMING = {"fmax": {"clk": {"achieved": 60.0, "constraint": 100}}, "critical_paths": [], "detailed_net_timings": [
    _net("a", "core.system.npu.core.dispatch.q_post.full_LUT4",
         ("core.system.npu.core.post.ctl__instr_FF_1", 9.0), ("core.system.npu.core.post.ctl__instr_FF_2", 7.4),
         ("core.system.npu.core.dispatch.x_FF", 1.0)),
    _net("b", "core.system.npu.core.load.r$11_MULT18X18D", ("core.system.npu.core.load.r$11_FF", 16.7)),
    _net("c", "core.system.link.crc_FF", ("core.system.link.crc_FF_2", 7.5)),
    _net("d", "core.system.npu.csr.wd_FF"),
]}


def test_late_endpoints_counts_arrivals_past_the_period_by_part_and_register_group():
    le = late_endpoints(TIMING, 10.0, groups=2)
    assert le["period_ns"] == 10.0 and le["late"] == 1 and le["near"] == 3
    assert le["by_part"] == {"npu.load": 1}
    assert le["groups"] == [{"group": "npu.load.r$11_FF", "late": 1, "worst_ns": 16.7}]
    # A faster clock has less room: at 125 MHz the 9.0 ns arrivals are late too, the 7.5 ns one near.
    le = late_endpoints(TIMING, 8.0)
    assert le["late"] == 2 and le["near"] == 4
    assert le["by_part"] == {"npu.load": 1, "npu.post": 1}
    assert [g["group"] for g in le["groups"]] == ["npu.load.r$11_FF", "npu.post.ctl__instr_FF_#"]


@pytest.mark.parametrize("cell, group", [
    ("core.system.linked.npu.core.post.epi.res_shift2_TRELLIS_FF_Q_17", "npu.post.epi.res_shift#"),
    ("core.system.linked.npu.core.post.epi.res_shift3_TRELLIS_FF_Q_4", "npu.post.epi.res_shift#"),
    ("core.system.linked.npu.core.post.epi.$signal$194_TRELLIS_FF_Q_36", "npu.post.epi.$signal$194"),
    ("core.system.linked.npu.core.conv.array.mul12_5_aa0_ccu4$CCU2_COMB1", "npu.conv.array.mul#_#_aa#_ccu#"),
    ("core.system.linked.npu.core.wgt_buf_1.0.29", "npu.wgt_buf_#"),
    ("core.system.linked.npu.core.post.epi.hard_product8", "npu.post.epi.hard_product#"),
])
def test_register_group_is_the_same_for_every_bit_lane_and_copy(cell, group):
    assert register_group(cell) == group


def test_late_endpoints_names_a_report_without_net_timings():
    with pytest.raises(ReportError, match="detailed-timing-report"):
        late_endpoints({"fmax": {}}, 10.0)
    bad = {"detailed_net_timings": [{"net": "n", "endpoints": [{"cell": "x"}]}]}
    with pytest.raises(ReportError, match="'n'"):
        late_endpoints(bad, 10.0)


def test_summary_shows_the_critical_path_and_the_late_endpoints():
    report = {"board": "ulx3s-85f", "device": "LFE5U-85F", "config": "c", "core": "Npu", "macs_per_cycle": 128,
              "target_mhz": 100.0, "clock_mhz": 100.0, "fmax_mhz": 60.0, "timing_met": False, "resources": {},
              "seconds": 1.0, "bitstream": "build/top.bit",
              "critical_path": {"clock": "clk", "from": "x.Q", "to": "y.DI", "ns": 16.7, "logic_ns": 0.5,
                                "routing_ns": 16.2, "steps": 0},
              "late_endpoints": late_endpoints(TIMING, 8.0)}
    text = summary_markdown(report)
    assert "Critical path: 16.7 ns (0.5 logic, 16.2 routing, 0 logic cells) from `x.Q` to `y.DI`" in text
    assert "Late endpoints: 2 register, block RAM or multiplier inputs get their data 8 ns" in text
    assert "4 at 3/4 of it; late by part: npu.load 1, npu.post 1." in text
    assert "| `npu.load.r$11_FF` | 1 | 16.7 |" in text


@pytest.mark.parametrize("fn, text, match", [
    (parse_utilisation, "Info: Placed 6 cells\n", "Device utilisation"),
    (parse_fmax, NEXTPNR_ECP5_LOG.split("Info: Routing globals")[0], "routing did not complete"),
    (parse_fmax, "Info: Routing complete.\n", "Max frequency"),
    (parse_yosys_cells, "ERROR: syntax error\n", "Printing statistics"),
])
def test_parsers_name_what_is_missing(fn, text, match):
    with pytest.raises(ReportError, match=match):
        fn(text, "top.tim")


CONTRACT = {"board", "config", "target_mhz", "fmax_mhz", "macs_per_cycle", "resources", "bitstream"}


def _tessera(*args, env=None):
    return subprocess.run([sys.executable, "-m", "tessera.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})))


def test_arria10_writes_a_complete_consistent_quartus_project(tmp_path):
    config = PRESETS["sim"].replace(name="a10-tiny", lanes=4, rows=4, abuf_words=64, wbuf_words=16,
                                    accbuf_words=16, pbuf_words=4, clock_mhz=250.0)
    report = synthesize("arria10", config, tmp_path, log=lambda msg: None)
    build = tmp_path / "build"
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk == report and CONTRACT <= set(report)
    assert report["fmax_mhz"] is None and report["bitstream"] is None
    assert report["core"].startswith("Npu 4x4")
    assert report["macs_per_cycle"] == 16 and report["target_mhz"] == 250.0
    assert all(r["used"] is None and r["available"] > 0 for r in report["resources"].values())

    qsf = (build / f"{TOP_NAME}.qsf").read_text()
    assert re.search(r"^set_global_assignment -name DEVICE 10AX115S2F45I1SG$", qsf, re.M)
    assert 'set_global_assignment -name FAMILY "Arria 10"' in qsf
    assert re.search(rf"^set_global_assignment -name TOP_LEVEL_ENTITY {TOP_NAME}$", qsf, re.M)
    verilog = re.findall(r"^set_global_assignment -name (?:SYSTEM)?VERILOG_FILE \"?([^\"\s]+)\"?$", qsf, re.M)
    assert verilog, "the project names no Verilog file"
    defined = set()
    for name in verilog:
        text = (build / name).read_text()
        defined |= set(re.findall(r"^module\s+\\?([\w$.]+)", text, re.M))
    assert TOP_NAME in defined
    # Every instantiated module is in the project, or a Quartus library megafunction.
    instantiated = set()
    for name in verilog:
        instantiated |= set(re.findall(r"^[ \t]+\\?([A-Za-z_][\w$.]*)[ \t]+(?:#\(|\\?[\w$.]+[ \t]*\()",
                                       (build / name).read_text(), re.M))
    keywords = {"input", "output", "inout", "wire", "reg", "assign", "always", "module", "if", "else",
                "case", "begin", "end", "initial"}
    assert instantiated & defined, "no submodule instantiation recognised: the check below would be empty"
    assert instantiated - keywords - defined <= {"altera_std_synchronizer", "altera_std_synchronizer_bundle"}

    sdc = (build / f"{TOP_NAME}.sdc").read_text()
    clocks = re.findall(r"create_clock -name \S+ -period ([0-9.]+) \[get_ports \"?([^\]\"]+)\"?\]", sdc)
    assert len(clocks) == 1
    period, port = clocks[0]
    assert float(period) == pytest.approx(1000 / 250.0)
    assert re.search(rf'set_location_assignment -to "?{re.escape(port)}"? PIN_\w+', qsf)
    assert re.search(rf"^\s*(input|inout)\s+(wire\s+)?{re.escape(port)}\b", (build / f"{TOP_NAME}.v").read_text(), re.M)

    script = (build / f"build_{TOP_NAME}.sh").read_text()
    steps = re.findall(r'"\$QUARTUS_(MAP|FIT|ASM|STA)" --rev=(\w+) (\w+)', script)
    assert [s[0] for s in steps] == ["MAP", "FIT", "ASM", "STA"]
    assert all(rev == proj == TOP_NAME for _, rev, proj in steps)
    assert (build / f"{TOP_NAME}.qpf").read_text().strip() == f'PROJECT_REVISION = "{TOP_NAME}"'


def test_synth_cli_builds_the_smallest_ice40_design_end_to_end(tmp_path):
    # 2x2 MACs on the iCEBreaker: yosys, nextpnr-ice40 and icepack really run (about 20 s).
    cfg = PRESETS["sim"].replace(name="ice-tiny", lanes=2, rows=2, bus_bytes=2, clock_mhz=24.0)
    (tmp_path / "tiny.json").write_text(cfg.to_json())
    r = _tessera("synth", "--board", "icebreaker", "--config", str(tmp_path / "tiny.json"), "--seed", "3",
                 "--out", str(tmp_path / "out"), env={"TESSERA_SYNTH_CORE": "macarray"})
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert CONTRACT <= set(report)
    assert report["board"] == "icebreaker" and report["config"] == "ice-tiny"
    assert report["macs_per_cycle"] == 4 and report["dsp_products"] == 4
    assert report["target_mhz"] == 24.0 and report["fmax_mhz"] > 0
    assert report["placer"] == "heap" and report["seed"] == 3
    assert "--seed 3" in (tmp_path / "out" / "build" / "build_top.sh").read_text()
    assert isinstance(report["timing_met"], bool)
    res = report["resources"]
    assert {"LUT4", "FF", "DSP", "BRAM", "SPRAM"} <= set(res)
    assert res["DSP"] == {"used": 4, "available": 8, "primitive": "SB_MAC16"}
    assert all(0 <= r["used"] <= r["available"] for r in res.values())
    assert res["LUT4"]["used"] > 0 and res["FF"]["used"] > 0
    bit = tmp_path / "out" / report["bitstream"]
    assert bit.is_file() and bit.stat().st_size > 1000
    assert "achieved Fmax" in r.stdout and "| DSP | SB_MAC16 | 4 | 8 |" in r.stdout
    # nextpnr's JSON timing report is kept and read: arrivals are measured against 24 MHz's period.
    assert (tmp_path / "out" / "build" / TIMING_JSON).is_file()
    le = report["late_endpoints"]
    assert le["period_ns"] == pytest.approx(1e3 / report["clock_mhz"], abs=1e-3)
    assert le["late"] == sum(le["by_part"].values()) <= le["near"]
    assert le["late"] == 0 or le["groups"]
    assert "Late endpoints:" in r.stdout and report["critical_path"]["ns"] > 0


def test_synth_icebreaker_sequential_npu_fits_the_up5k(tmp_path):
    # The whole iCEBreaker board top (sequential NPU, on-chip memory, UART link) through yosys and nextpnr's
    # packer (about 70 s): the UP5K's cells as they will be placed; `make synth` goes on to the bitstream.
    from tessera.hdl.synth import synthesize
    report = synthesize(BOARDS["icebreaker"], PRESETS["icebreaker"], tmp_path, pack_only=True, log=lambda msg: None)
    res = report["resources"]
    assert report["fits"] and report["stage"] == "pack"
    assert "sequential" in report["core"] and "UART" in report["core"]
    assert 3000 < res["LUT4"]["used"] <= res["LUT4"]["available"] == 5280
    assert res["SPRAM"]["used"] == 4 and res["DSP"]["used"] <= 8 and res["BRAM"]["used"] <= 30


@pytest.mark.parametrize("args, match", [
    (["--board", "zedboard"], "invalid choice"),
    (["--board", "ulx3s-85f", "--config", "nope"], "unknown config"),
    (["--board", "ulx3s-85f", "--seed", "two"], "seed 'two' is not an integer"),
    (["--board", "ulx3s-85f", "--seed", "-1"], "seed -1 is outside"),
])
def test_synth_cli_bad_input_is_one_line_exit_2(tmp_path, args, match):
    r = _tessera("synth", *args, "--out", str(tmp_path))
    assert r.returncode == 2
    assert match in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("changes, match", [
    ({"dram_bytes": 1 << 20}, "dram_bytes 1048576 exceeds the 65536-byte on-chip memory"),
    ({"abuf_words": 8192}, "the sequential core's RAM \\(buffers, stack\\): 131072 bytes do not fit"),
])
def test_synth_icebreaker_config_too_large_for_the_up5k_is_one_line_exit_2(tmp_path, changes, match):
    (tmp_path / "big.json").write_text(PRESETS["icebreaker"].replace(name="big", **changes).to_json())
    r = _tessera("synth", "--board", "icebreaker", "--config", str(tmp_path / "big.json"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert re.search(match, r.stderr.splitlines()[-1]), r.stderr


def test_npu_mac_dsp_products_leave_room_for_the_timing_stages_checks():
    # ulx3s-85f with timing_stages overflowed the 156 MULT18X18D by 4 when the array took 74 of them.
    from tessera.hdl.synth import NPU_TIMING_DSP, npu_mac_dsp_products
    board, c = BOARDS["ulx3s-85f"], PRESETS["ulx3s-85f"]
    assert c.timing_stages
    assert npu_mac_dsp_products(board, c) == npu_mac_dsp_products(board, c.replace(timing_stages=False)) - NPU_TIMING_DSP


def test_default_placer_is_static_for_the_whole_npu_on_the_ecp5_only(monkeypatch):
    # router2 stalled at ~32,000 overused wires after HeAP placed the whole ulx3s-85f NPU, ~1,100 after static.
    from tessera.hdl.synth import _overrides, default_placer
    monkeypatch.delenv("TESSERA_SYNTH_PLACER", raising=False)
    ecp5, ice40 = BOARDS["ulx3s-85f"], BOARDS["icebreaker"]
    assert default_placer(ecp5, whole_npu=True) == "static"
    assert default_placer(ecp5, whole_npu=False) is None
    assert default_placer(ice40, whole_npu=True) is None
    assert "--placer static" in _overrides(ecp5, 1, False, False, "static")["nextpnr_opts"]
    assert "--placer" not in _overrides(ecp5, 1, False, False, None)["nextpnr_opts"]
    monkeypatch.setenv("TESSERA_SYNTH_PLACER", "heap")
    assert default_placer(ecp5, whole_npu=True) == "heap"


def test_placer_names_a_bad_choice(monkeypatch, tmp_path):
    from tessera.errors import UserError
    from tessera.hdl.synth import default_placer
    monkeypatch.setenv("TESSERA_SYNTH_PLACER", "annealing")
    with pytest.raises(UserError, match="TESSERA_SYNTH_PLACER='annealing'.*heap, static, sa"):
        default_placer(BOARDS["ulx3s-85f"], whole_npu=True)
    monkeypatch.delenv("TESSERA_SYNTH_PLACER")
    with pytest.raises(UserError, match="placer 'fast'"):
        synthesize("ulx3s-85f", PRESETS["ulx3s-85f"], tmp_path, placer="fast")


def _memories(config):
    """{MEMID: (read ports, write ports)} of the NPU core's RTLIL."""
    from amaranth.back import rtlil
    from tessera.hdl.npu import Npu
    from tessera.hdl.verilog import _ports, _skip_zero_meminit
    top = Npu(config)
    with _skip_zero_meminit():      # the buffers' zero contents are most of the text and of the time
        text = rtlil.convert(top, ports=_ports(top))
    ports = {}
    for kind, memid in re.findall(r'cell \$mem(rd|wr)_v2 .*?\n\s*parameter \\MEMID "\\\\([^"]+)"', text):
        rd, wr = ports.get(memid, (0, 0))
        ports[memid] = (rd + (kind == "rd"), wr + (kind == "wr"))
    return ports


@pytest.mark.parametrize("bram, timed", [(False, False), (True, False), (True, True)])
def test_collision_free_buffers_are_the_npu_buffers_with_their_write_ports(bram, timed):
    from tests.rtl.test_npu import CONFIG
    from tessera.hdl.buffers import wgt_groups
    from tessera.hdl.common import acc_groups
    from tessera.hdl.npu import collision_free_buffers
    config = CONFIG.replace(name="coll", lanes=4, rows=4, bus_bytes=4, abuf_words=64, wbuf_words=16, accbuf_words=16,
                            pbuf_words=4, pool_fl32=False, post_lanes=4 if bram else 0, bram_buffers=bram,
                            timing_stages=timed)
    # With timing_stages the WGT buffer is four memories, each read at its own address copy, and ACC is
    # four for each of its two readers.
    assert wgt_groups(config) == (4 if timed else 1)
    assert acc_groups(config) == (4 if timed else 1)
    mems = _memories(config)
    named = collision_free_buffers(config)
    # Every NPU buffer with one write port (not the FIFOs' storage, whose reads may meet their writes).
    assert set(named) == {name for name in mems if name != "storage" and mems[name][1] == 1}
    assert all(mems[name][0] >= 1 and mems[name][1] == n for name, n in named.items())


def test_collision_script_drops_the_block_rams_old_word_bypass(tmp_path):
    # yosys builds a same-cycle collision's old word around a block RAM (a flip-flop and a LUT per read
    # bit); the script, as tessera synth runs it after reading the design, leaves it undefined instead.
    from amaranth.back import rtlil
    from amaranth.hdl import Module, Signal
    from amaranth.lib import memory
    from tessera.hdl.synth import _tool_env, collision_script
    yosys = _tool_env(BOARDS["ulx3s-85f"])["YOSYS"]     # the yosys tessera synth runs
    m = Module()
    m.submodules.wgt_buf = mem = memory.Memory(shape=72, depth=512, init=[])
    wp, rp = mem.write_port(), mem.read_port()
    wa, wd, we, ra, rd = Signal(9), Signal(72), Signal(), Signal(9), Signal(72)
    m.d.comb += [wp.addr.eq(wa), wp.data.eq(wd), wp.en.eq(we), rp.addr.eq(ra)]
    m.d.sync += rd.eq(rp.data)
    (tmp_path / "t.il").write_text(rtlil.convert(m, ports=[wa, wd, we, ra, rd], name="t"))
    luts = {}
    for name, script in (("plain", ""), ("undefined", collision_script({"wgt_buf": 1}))):
        subprocess.run([yosys, "-q", "-p",
                        f"read_rtlil t.il; {script.replace(chr(10), '; ')} synth_ecp5 -top t; tee -q -o {name}.txt stat"],
                       cwd=tmp_path, check=True, capture_output=True)
        stat = (tmp_path / f"{name}.txt").read_text()
        assert re.search(r"\b2\s+DP16KD", stat), stat
        found = re.search(r"(\d+)\s+LUT4", stat)
        luts[name] = int(found.group(1)) if found else 0
    assert luts["plain"] >= 72 and luts["undefined"] == 0, luts


@pytest.mark.parametrize("name, changed", [("ulx3s-128", {"lanes": 8, "bus_bytes": 8}),
                                           ("ulx3s-512", {"rows": 32, "abuf_words": 1024})])
def test_example_board_configs_are_the_documented_sizes(name, changed):
    # docs/synthesis.md builds these files (`tessera synth --config examples/configs/NAME.json`): each is the
    # ulx3s-85f preset with only the named fields changed.
    import pathlib
    from tessera.arch import get_config
    path = pathlib.Path(__file__).resolve().parents[2] / "examples" / "configs" / f"{name}.json"
    config = get_config(str(path))
    assert config.name == name
    assert config.replace(notes="") == PRESETS["ulx3s-85f"].replace(name=name, notes="", **changed)
