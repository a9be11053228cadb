"""Simulation top for Verilator: in-model clock and an external-memory model with a backdoor.

Not part of the NPU: this Verilog wraps :func:`tessera.hdl.verilog.npu_verilog`
so that a whole program runs inside the Verilated model. The memory answers
reads after a fixed latency, in order, and refuses requests at random (an
LFSR compared with ``bp_level``/256) or always (``mem_stall``). Reads and
writes share the port: when both wait, they take turns. The host loads and
dumps memory through ``$readmemh``/``$writememh`` of ``tessera_load.hex`` /
``tessera_dump.hex`` in the simulation's working folder.

With the ``trace_en`` input high, every instruction that completes (or
faults) appends a line ``unit pc start end`` (decimal) to ``tessera_trace.txt``:
``start`` is the CYCLES count of the cycle dispatch started it, ``end`` the
count after the cycle its unit finished. With ``trace_en`` low the trace costs
one test per clock.
"""

from __future__ import annotations

from tessera.arch import NpuConfig
from tessera.isa import Unit

from .common import beat_bits, log2
from .verilog import npu_verilog

__all__ = ["DUMP_FILE", "LOAD_FILE", "SIM_TOP", "TRACE_FILE", "mem_words", "public_signals", "sim_sources"]

SIM_TOP = "tessera_sim"
LOAD_FILE = "tessera_load.hex"
DUMP_FILE = "tessera_dump.hex"
TRACE_FILE = "tessera_trace.txt"


def mem_words(config: NpuConfig, mem_bytes: int | None = None) -> int:
    """Beats the memory model stores (a power of two; addresses wrap modulo it)."""
    size = min(mem_bytes or config.dram_bytes, config.dram_bytes)
    words = max(1, size // config.bus_bytes)
    return 1 << (words.bit_length() - 1)


def sim_wrapper(config: NpuConfig, *, words: int, latency: int) -> str:
    B = config.bus_bytes
    AW = beat_bits(config)
    WB = max(1, log2(words))
    LAT = max(2, latency)
    NU = len(Unit)
    return f"""`timescale 1ns/1ps
// Tessera simulation top (config hash {config.hash()}): clock, memory model, host backdoor.
module {SIM_TOP}(
  input rst,
  input [3:0] csr_addr, input [31:0] csr_wdata, input csr_we, output [31:0] csr_rdata,
  output done, output irq,
  input host_load, input host_dump, input [31:0] dump_lo, input [31:0] dump_hi,
  input [7:0] bp_level, input mem_stall, input trace_en
);
  localparam B = {B}, AW = {AW}, WB = {WB}, LAT = {LAT}, NU = {NU};
  reg clk = 1'b0;
  always #5 clk = ~clk;

  // Host inputs reach the NPU through registers: logic fed by a model input is re-evaluated in every
  // time step, logic fed by a register only when the clock ticks (this keeps the whole next-state
  // logic, which sees `rst`, out of Verilator's input-combinational region).
  reg rst_q = 1'b1, csr_we_q = 1'b0, mem_stall_q = 1'b0;
  reg [3:0] csr_addr_q = 4'd0;
  reg [31:0] csr_wdata_q = 32'd0;
  reg [7:0] bp_level_q = 8'd0;
  always @(posedge clk) begin
    rst_q <= rst; csr_we_q <= csr_we; csr_addr_q <= csr_addr; csr_wdata_q <= csr_wdata;
    bp_level_q <= bp_level; mem_stall_q <= mem_stall;
  end

  wire rd_valid, rd_ready, resp_valid, wr_valid, wr_ready;
  wire [NU-1:0] tr_start, tr_end;
  wire [32*NU-1:0] tr_pc;
  wire [63:0] tr_cycle;
  wire [AW:0] rd_payload;
  wire [8*B:0] resp_payload;
  wire [AW+9*B-1:0] wr_payload;
  tessera_npu npu(
    .clk(clk), .rst(rst_q),
    .csr__addr(csr_addr_q), .csr__wdata(csr_wdata_q), .csr__we(csr_we_q), .csr__rdata(csr_rdata),
    .irq(irq), .done(done),
    .mem__rd_req__valid(rd_valid), .mem__rd_req__ready(rd_ready), .mem__rd_req__payload(rd_payload),
    .mem__rd_resp__valid(resp_valid), .mem__rd_resp__payload(resp_payload),
    .mem__wr_req__valid(wr_valid), .mem__wr_req__ready(wr_ready), .mem__wr_req__payload(wr_payload),
    .trace__start(tr_start), .trace__end(tr_end), .trace__pc(tr_pc), .trace__cycle(tr_cycle));

  // Instruction trace (see the module docstring).
  reg trace_en_q = 1'b0;
  reg [63:0] tr_begin [0:NU-1];
  integer tfd, k;
  initial tfd = $fopen("{TRACE_FILE}", "w");
  always @(posedge clk) begin
    trace_en_q <= trace_en;
    if (trace_en_q) begin
      for (k = 0; k < NU; k = k + 1) begin
        if (tr_start[k]) tr_begin[k] <= tr_cycle;
        if (tr_end[k]) $fwrite(tfd, "%0d %0d %0d %0d\\n", k, tr_pc[32*k +: 32], tr_begin[k], tr_cycle + 64'd1);
      end
      if (tr_end != 0) $fflush(tfd);
    end
  end

  reg [8*B-1:0] mem [0:(1<<WB)-1];
  reg [31:0] lfsr;
  reg turn;
  wire rnd_ok = lfsr[7:0] >= bp_level_q;
  assign rd_ready = !mem_stall_q && rnd_ok && !(wr_valid && turn);
  assign wr_ready = !mem_stall_q && rnd_ok && !(rd_valid && !turn);
  wire [WB-1:0] ra = rd_payload[WB-1:0];
  wire [WB-1:0] wa = wr_payload[WB-1:0];
  wire [8*B-1:0] wd = wr_payload[AW +: 8*B];
  wire [B-1:0] ws = wr_payload[AW+8*B +: B];
  reg [LAT-1:0] pv;
  reg [8*B-1:0] pd [0:LAT-1];
  reg pid [0:LAT-1];
  integer i;
  always @(posedge clk) begin
    if (rst_q) begin
      lfsr <= 32'h1; pv <= 0; turn <= 1'b0;
    end else begin
      lfsr <= {{lfsr[30:0], lfsr[31] ^ lfsr[21] ^ lfsr[1] ^ lfsr[0]}};
      if (rd_valid && wr_valid) turn <= ~turn;
      pv <= {{pv[LAT-2:0], rd_valid && rd_ready}};
    end
    pd[0] <= mem[ra];
    pid[0] <= rd_payload[AW];
    for (i = 1; i < LAT; i = i + 1) begin
      pd[i] <= pd[i-1];
      pid[i] <= pid[i-1];
    end
    if (wr_valid && wr_ready)
      for (i = 0; i < B; i = i + 1)
        if (ws[i]) mem[wa][8*i +: 8] <= wd[8*i +: 8];
    if (host_load) $readmemh("{LOAD_FILE}", mem);
    if (host_dump) $writememh("{DUMP_FILE}", mem, dump_lo, dump_hi);
  end
  assign resp_valid = pv[LAT-1];
  assign resp_payload = {{pid[LAT-1], pd[LAT-1]}};
endmodule
"""


#: What the cocotb side (:mod:`tessera.sim.rtl_bench`) touches: the top's ports and the clock.
PUBLIC = ("clk", "rst", "csr_addr", "csr_wdata", "csr_we", "csr_rdata", "done", "irq", "host_load", "host_dump",
          "dump_lo", "dump_hi", "bp_level", "mem_stall", "trace_en")


def public_signals() -> str:
    """Verilator control file making only :data:`PUBLIC` reachable through VPI.

    Everything else stays private, so Verilator may inline, drop and order the
    NPU's logic freely (``--public-flat-rw`` made every signal an input and cost
    a full combinational evaluation per time step).
    """
    lines = ["`verilator_config"]
    lines += [f'public_flat_rw -module "{SIM_TOP}" -var "{name}"' for name in PUBLIC]
    return "\n".join(lines) + "\n"


def sim_sources(config: NpuConfig, *, mem_bytes: int | None = None, latency: int | None = None) -> dict[str, str]:
    """Verilog files (name → text) of the simulation top for ``config``."""
    lat = config.mem_latency if latency is None else latency
    files = {"tessera_npu.v": npu_verilog(config, strip_mem_init=True),
             "tessera_sim.v": sim_wrapper(config, words=mem_words(config, mem_bytes), latency=lat)}
    if config.core == "sequential":
        from .seq.core import picorv32_source
        name, text = picorv32_source()
        files[name] = text
    return files
