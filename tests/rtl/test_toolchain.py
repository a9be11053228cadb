"""Amaranth → Verilog → Verilator → cocotb, with the clock generated inside the model."""

from pathlib import Path

from amaranth import Module
from amaranth.back import verilog
from amaranth.lib import wiring
from amaranth.lib.wiring import Out
from tessera.sim.rtl import build_root, run_cocotb, source_hash, verilate

HERE = Path(__file__).parent
LIMIT = 1000

WRAPPER = f"""`timescale 1ns/1ps
module tb_counter(input rst, output done, output [15:0] count);
  localparam LIMIT = {LIMIT};
  reg clk = 0;
  always #5 clk = ~clk;
  counter dut(.clk(clk), .rst(rst), .done(done), .count(count));
endmodule
"""


class Counter(wiring.Component):
    """Counts clock cycles after reset and raises ``done`` at ``limit``."""
    done: Out(1)
    count: Out(16)

    def __init__(self, limit):
        self.limit = limit
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        with m.If(self.count != self.limit):
            m.d.sync += self.count.eq(self.count + 1)
        m.d.comb += self.done.eq(self.count == self.limit)
        return m


def test_toolchain_counter_runs_in_verilator(tmp_path):
    files = {"counter.v": verilog.convert(Counter(LIMIT), name="counter"), "tb_counter.v": WRAPPER}
    build = build_root() / f"toolchain-{source_hash(files, '-O0')}"
    runner = verilate(files, "tb_counter", build, opt="-O0")
    xml = run_cocotb(runner, "toolchain_bench", "tb_counter", build, tmp_path, module_dirs=[HERE])
    from cocotb_tools.runner import get_results
    tests, fails = get_results(xml)
    assert tests == 1 and fails == 0
