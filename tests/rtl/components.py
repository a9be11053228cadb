"""Verilog of single NPU components for the per-component cocotb benches, and the pytest side of a bench.

:class:`Harness` puts one or more components side by side with their ports
renamed ``<prefix>_<port>``; :func:`sources` converts any component to
Verilog and wraps it in ``tb_<name>`` with the clock generated inside the
model. :func:`run_bench` builds that with Verilator once per (harness, config,
source) hash and runs a cocotb bench module (tests/rtl/bench_*.py) against it;
:class:`Units` holds every component, so each config needs one build only.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
from pathlib import Path

from amaranth.back import verilog
from amaranth.hdl import Const, Module, Signal, Value, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from tessera.hdl.common import round_shift
from tessera.hdl.conv import ConvUnit
from tessera.hdl.csr import CsrBlock
from tessera.hdl.dispatch import Dispatch
from tessera.hdl.dma import LoadDma, StoreDma
from tessera.hdl.fetch import Fetch, decode_checks
from tessera.hdl.mac import MacArray
from tessera.hdl.post import PostUnit

from tessera.arch import NpuConfig
from tessera.isa import INSTR_BITS

HERE = Path(__file__).resolve().parent


def _leaves(obj):
    """(path, flow, value) of every port of a component that is a signal (constants are not ports)."""
    out = []
    for path, member, v in obj.signature.flatten(obj):
        v = Value.cast(v)
        if not isinstance(v, Const):
            out.append((path, member.flow, v))
    return out


class Harness(wiring.Component):
    """Components side by side; each port of part ``p`` is named ``p_<port>`` (just ``<port>`` for ``p == ""``)."""

    def __init__(self, parts: dict, extra: dict | None = None):
        self.parts = parts
        members = {}
        for p, sub in parts.items():
            members.update({(f"{p}_{k}" if p else k): v for k, v in sub.signature.members.items()})
        members.update(extra or {})
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        outer = {path: (flow, v) for path, flow, v in _leaves(self)}
        for p, sub in self.parts.items():
            m.submodules[p or "dut"] = sub
            for path, _, inner in _leaves(sub):
                flow, v = outer[((f"{p}_{path[0]}" if p else path[0]),) + path[1:]]
                m.d.comb += v.eq(inner) if flow == Out else inner.eq(v)
        return m


class Units(Harness):
    """Every NPU component side by side, so that one Verilator build per config serves every bench.

    A build's fixed cost (Verilator's runtime and cocotb's main compiled anew) is
    most of a small component's build, so the components share one. Ports:
    ``ld_`` LoadDma, ``st_`` StoreDma, ``post_`` PostUnit, ``conv_`` ConvUnit,
    ``fetch_`` Fetch, ``disp_`` Dispatch, ``csr_`` CsrBlock, ``mac_`` MacArray,
    and ``dec_``/``rnd_`` for the instruction decoder and the rounding shift.
    """

    def __init__(self, config):
        self.config = c = config
        super().__init__({"ld": LoadDma(c), "st": StoreDma(c), "post": PostUnit(c), "conv": ConvUnit(c),
                          "fetch": Fetch(c), "disp": Dispatch(c), "csr": CsrBlock(c), "mac": MacArray(c)}, {
            "dec_raw": In(INSTR_BITS), "dec_legal": Out(1), "dec_bad": Out(1), "dec_unit": Out(2),
            "rnd_x": In(signed(63)), "rnd_s": In(unsigned(32)), "rnd_y": Out(signed(63))})

    def elaborate(self, platform):
        m = super().elaborate(platform)
        legal, bad, unit, _ = decode_checks(m, self.dec_raw)
        m.d.comb += [self.dec_legal.eq(legal), self.dec_bad.eq(bad), self.dec_unit.eq(unit.as_value()),
                     self.rnd_y.eq(round_shift(self.rnd_x, self.rnd_s, 63))]
        return m


#: The benches' config: rows = 2×lanes (an EPILOGUE block spans two ACT words), ACT words narrower than
#: the 16-byte bus, WGT/ACC words of two beats, PARAM words of six; two-deep queues and token counters.
UNITS = NpuConfig(name="units", lanes=4, rows=8, abuf_words=128, wbuf_words=64, accbuf_words=64, pbuf_words=8,
                  bus_bytes=16, dram_bytes=8 << 10, mem_latency=3, mem_outstanding=4, queue_depth=2, token_depth=2)
#: Other bus widths for DMA and fetch: 4 bytes (every word and instruction in several beats, an ACT word
#: per beat) and 64 bytes (two instructions and sixteen ACT words per beat; rows=16 so all words divide it).
BUS_CONFIGS = {4: UNITS.replace(name="units-bus4", bus_bytes=4),
               16: UNITS,
               64: UNITS.replace(name="units-bus64", rows=16, bus_bytes=64)}
#: Registered range checks and split roundings (``timing_stages``), with POOL's window bank (post_lanes).
TIMED = UNITS.replace(name="units-timed", timing_stages=True, post_lanes=2)


def run_units(bench: str, test_dir: Path, config: NpuConfig = UNITS, **kw):
    """Run a bench module against the :class:`Units` build of ``config``."""
    run_bench(bench, "units", Units, config, test_dir, **kw)


def sources(top: wiring.Component, name: str) -> dict:
    """``{name}.v`` (the component) and ``tb_{name}.v`` (clock inside the model, every other port passed out)."""
    ports = _leaves(top)
    text = verilog.convert(top, name=name, ports=[v for _, _, v in ports], emit_src=False)
    decls, conns = [], [".clk(clk)", ".rst(rst)"]
    for path, flow, v in ports:
        pname = "__".join(str(x) for x in path)
        assert isinstance(v, Signal) and re.fullmatch(r"\w+", pname), pname
        decls.append(f"  {'input' if flow == In else 'output'} [{len(v) - 1}:0] {pname}")
        conns.append(f".{pname}({pname})")
    wrapper = (f"`timescale 1ns/1ps\nmodule tb_{name}(\n  input rst,\n" + ",\n".join(decls)
               + f");\n  reg clk = 1'b0;\n  always #5 clk = ~clk;\n  {name} dut(" + ", ".join(conns)
               + ");\nendmodule\n")
    return {f"{name}.v": text, f"tb_{name}.v": wrapper}


def waves_wanted() -> bool:
    """VCDs only when asked, with the RTL backend's variable (``TESSERA_WAVES=1``)."""
    return os.environ.get("TESSERA_WAVES", "") not in ("", "0")


def _sources_key() -> str:
    from tessera.sim.rtl import _hdl_source_key
    return hashlib.sha256(_hdl_source_key().encode() + Path(__file__).read_bytes()).hexdigest()


#: Taken when the HDL modules were imported: a build is named after the sources this process generates
#: Verilog from, even if the files change on disk later (a concurrent edit must not name a stale build).
_SOURCES = _sources_key()


def _key(name: str, config: NpuConfig, waves: bool) -> str:
    # The HDL sources, this file and the config decide the Verilog: an unchanged bench skips generating it.
    h = hashlib.sha256(f"{name}\0{config.to_json()}\0{waves}\0{_SOURCES}".encode())
    return h.hexdigest()[:12]


def build(name: str, make_top, config: NpuConfig):
    """Verilated ``tb_<name>`` of ``make_top(config)`` at -O0; returns (runner, build folder, toplevel)."""
    from cocotb_tools.runner import get_runner
    from tessera.sim.rtl import _ensure_path, build_root, verilate
    waves = waves_wanted()
    top = f"tb_{name}"
    folder = build_root() / f"bench-{name}-{config.hash()[:8]}-{_key(name, config, waves)}"
    folder.mkdir(parents=True, exist_ok=True)
    # Parallel workers wanting the same build: the first generates and builds, the others wait for it.
    with open(folder / ".generate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / ".built").exists() and (folder / top).exists():
            _ensure_path()
            return get_runner("verilator"), folder, top
        return verilate(sources(make_top(config), name), top, folder, waves=waves, opt="-O0"), folder, top


def run_bench(bench: str, name: str, make_top, config: NpuConfig, test_dir: Path, *, backpressure: bool = False,
              env: dict | None = None, testcase: list | None = None):
    """Run the cocotb tests of ``tests/rtl/<bench>.py`` (all, or ``testcase``) against ``tb_<name>``; all must pass."""
    from cocotb_tools.runner import get_results
    from tessera.sim.rtl import run_cocotb
    runner, folder, top = build(name, make_top, config)
    waves = waves_wanted()
    extra = {"TB_CONFIG": config.to_json(), "TB_BACKPRESSURE": str(int(backpressure)), **(env or {})}
    log = Path(test_dir) / "sim.log"
    try:
        xml = run_cocotb(runner, bench, top, folder, test_dir, module_dirs=[HERE], extra_env=extra, waves=waves,
                         testcase=testcase)
    except SystemExit:          # the runner exits when a cocotb test failed
        raise AssertionError(f"{bench} failed:\n{_failures(log)}") from None
    if waves:
        out = folder.parent.parent / "waves" / f"{bench}-{config.hash()[:8]}-bp{int(backpressure)}"
        out.mkdir(parents=True, exist_ok=True)
        for f in list(Path(test_dir).glob("*.vcd")) + list(folder.glob("*.vcd")):
            shutil.copy(f, out / f.name)
    tests, fails = get_results(xml)
    # Every @cocotb.test of the module must have run (an import error runs none).
    want = len(testcase) if testcase else (HERE / f"{bench}.py").read_text().count("@cocotb.test(")
    assert tests == want and fails == 0, f"{tests}/{want} tests ran, {fails} failed\n{_failures(log)}"


def _failures(log: Path) -> str:
    """The failing tests' assertion lines from a cocotb log (the whole log is long)."""
    lines = log.read_text().splitlines() if log.exists() else []
    keep = [ln for ln in lines if "Error" in ln or "assert" in ln or "FAIL" in ln or "TESTS=" in ln]
    return "\n".join(keep[-40:]) or "\n".join(lines[-40:])
