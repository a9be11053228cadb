"""A behavioural model of a 16-bit SDR SDRAM for simulation (Verilog), strict about its protocol.

The model stores data, honours the mode register (burst length 1/2/4/8, CAS latency 2 or 3:
read data is driven exactly CL cycles after the READ, one word per cycle, and garbage
otherwise) and checks the controller: the power-up wait, the initialization order (PRECHARGE
ALL, at least two AUTO REFRESH, MODE REGISTER SET before the first ACTIVE), ACTIVE only on an
idle bank after tRP (or tWR + tRP after an auto-precharged write), READ/WRITE only on the open
row's bank after tRCD, REFRESH only with every bank idle, no command within tRFC of a refresh or
tMRD of a mode write, refreshes no further apart than ``MAX_REFRESH_GAP`` cycles, data driven
by the controller through every write burst and never while the model drives. The first
violation sets ``error`` and ``error_code`` (:data:`ERRORS`) and each one is printed.

The pins are the device's: active-low commands, ``dqm`` high masks a byte. The data bus is split
into the two directions (``dq_i``/``dq_i_en`` from the controller, ``dq_o``/``dq_o_en`` from the
model); the simulation top merges them.
"""

from __future__ import annotations

from .sdram import SdramGeometry, SdramTiming

__all__ = ["ERRORS", "MODEL_NAME", "sdram_model_verilog"]

MODEL_NAME = "tessera_sdram_model"

#: error_code values of the model.
ERRORS = {
    1: "command during the power-up wait",
    2: "ACTIVE, READ or WRITE before initialization finished",
    3: "MODE REGISTER SET before PRECHARGE ALL and two AUTO REFRESH, or with a bank open",
    4: "ACTIVE on a bank that is open",
    5: "ACTIVE before tRP (or tWR + tRP after a write) elapsed",
    6: "READ or WRITE on a closed bank",
    7: "READ or WRITE before tRCD elapsed",
    8: "AUTO REFRESH with a bank open or still precharging",
    9: "command within tRFC of a refresh or tMRD of a mode register write",
    10: "refreshes further apart than MAX_REFRESH_GAP cycles",
    11: "controller and SDRAM drive the data bus at once",
    12: "controller did not drive data during a write burst",
    13: "unsupported mode register value (burst length 1/2/4/8, CAS latency 2/3)",
    14: "unsupported command (BURST TERMINATE)",
}


def sdram_model_verilog(geometry: SdramGeometry, timing: SdramTiming, *, max_refresh_gap: int) -> str:
    """Verilog text of the model module for ``geometry`` with ``timing``'s limits."""
    g, t = geometry, timing
    return f"""// Tessera SDR SDRAM model: {g.banks} banks x {1 << g.row_bits} rows x {1 << g.col_bits} columns x 16 bit.
module {MODEL_NAME} (
  input clk, input cke, input cs_n, input ras_n, input cas_n, input we_n,
  input [{g.bank_bits - 1}:0] ba, input [{g.addr_bits - 1}:0] a, input [1:0] dqm,
  input [15:0] dq_i, input dq_i_en,
  output reg [15:0] dq_o, output reg dq_o_en,
  output reg error, output reg [7:0] error_code, output reg [31:0] refreshes
);
  localparam BB = {g.bank_bits}, RB = {g.row_bits}, CB = {g.col_bits}, NB = {g.banks};
  localparam T_RCD = {t.t_rcd}, T_RP = {t.t_rp}, T_RFC = {t.t_rfc}, T_MRD = {t.t_mrd}, T_WR = {t.t_wr};
  localparam INIT_WAIT = {t.init_wait}, MAX_REFRESH_GAP = {max_refresh_gap}, Q = 16;

  reg [15:0] mem [0:(1 << (BB + RB + CB)) - 1];
  reg [63:0] cycle = 0;
  reg [63:0] busy_until = 0, last_refresh = 0;
  reg open [0:NB-1];
  reg [RB-1:0] row [0:NB-1];
  reg [63:0] act_at [0:NB-1], ready_at [0:NB-1];
  reg pre_all = 0, mode_set = 0;
  reg [3:0] init_refs = 0;
  reg [3:0] bl = 1;
  reg [2:0] cl = 2;
  // Read schedule: entry k is due k edges from now.
  reg sv [0:Q-1];
  reg [BB+RB+CB-1:0] sa [0:Q-1];
  // Write burst in progress.
  reg [3:0] wleft = 0, wi = 0;
  reg [BB+RB+CB-1:0] wbase = 0;
  reg [3:0] wbl = 1;
  integer i;
  reg [BB-1:0] b;
  reg [CB-1:0] c;
  reg [BB+RB+CB-1:0] waddr;

  initial begin
    error = 0; error_code = 0; refreshes = 0; dq_o = 16'hdead; dq_o_en = 0;
    for (i = 0; i < NB; i = i + 1) begin open[i] = 0; row[i] = 0; act_at[i] = 0; ready_at[i] = 0; end
    for (i = 0; i < Q; i = i + 1) begin sv[i] = 0; sa[i] = 0; end
  end

  task fail(input [7:0] code);
    begin
      $display("sdram model: error %0d at cycle %0d", code, cycle);
      if (!error) begin error = 1; error_code = code; end
    end
  endtask

  function [BB+RB+CB-1:0] burst_addr(input [BB-1:0] bk, input [RB-1:0] r, input [CB-1:0] col0,
                                     input [3:0] n, input [3:0] k);
    // Sequential bursts wrap within their n-aligned block of columns.
    reg [CB-1:0] cc;
    begin
      cc = (col0 & ~(n - 1)) | ((col0 + k) & (n - 1));
      burst_addr = {{bk, r, cc}};
    end
  endfunction

  always @(posedge clk) begin
    cycle = cycle + 1;
    if (dq_i_en && dq_o_en) fail(11);
    // Write burst words after the first.
    if (wleft != 0) begin
      if (!dq_i_en) fail(12);
      waddr = wbase + 0;
      waddr[CB-1:0] = (wbase[CB-1:0] & ~(wbl - 1)) | ((wbase[CB-1:0] + wi) & (wbl - 1));
      if (!dqm[0]) mem[waddr][7:0] = dq_i[7:0];
      if (!dqm[1]) mem[waddr][15:8] = dq_i[15:8];
      wleft = wleft - 1;
      wi = wi + 1;
    end
    for (i = 0; i < Q - 1; i = i + 1) begin sv[i] = sv[i + 1]; sa[i] = sa[i + 1]; end
    sv[Q-1] = 0;
    if (mode_set && cycle - last_refresh > MAX_REFRESH_GAP) begin
      fail(10);
      last_refresh = cycle;  // report each overdue interval once
    end
    if (cke && !cs_n && !(ras_n && cas_n && we_n)) begin
      b = ba;
      if (cycle <= INIT_WAIT) fail(1);
      if (cycle < busy_until) fail(9);
      case ({{ras_n, cas_n, we_n}})
        3'b011: begin // ACTIVE
          if (!mode_set) fail(2);
          if (open[b]) fail(4);
          if (cycle < ready_at[b]) fail(5);
          open[b] = 1; row[b] = a[RB-1:0]; act_at[b] = cycle;
        end
        3'b101, 3'b100: begin // READ, WRITE
          if (!mode_set) fail(2);
          if (!open[b]) fail(6);
          if (cycle - act_at[b] < T_RCD) fail(7);
          c = a[CB-1:0];
          wleft = 0;
          for (i = 0; i < Q; i = i + 1) sv[i] = 0;  // a new column command ends a running burst
          if (we_n) begin
            for (i = 0; i < bl; i = i + 1) begin
              sv[cl - 1 + i] = 1;
              sa[cl - 1 + i] = burst_addr(b, row[b], c, bl, i);
            end
            if (a[10]) begin open[b] = 0; ready_at[b] = cycle + bl + T_RP; end
          end else begin
            if (!dq_i_en) fail(12);
            waddr = burst_addr(b, row[b], c, bl, 0);
            if (!dqm[0]) mem[waddr][7:0] = dq_i[7:0];
            if (!dqm[1]) mem[waddr][15:8] = dq_i[15:8];
            wbase = {{b, row[b], c}}; wbl = bl; wi = 1; wleft = bl - 1;
            if (a[10]) begin open[b] = 0; ready_at[b] = cycle + bl - 1 + T_WR + T_RP; end
          end
        end
        3'b010: begin // PRECHARGE (A10: all banks)
          for (i = 0; i < NB; i = i + 1)
            if (a[10] || i == b) begin
              open[i] = 0;
              if (ready_at[i] < cycle + T_RP) ready_at[i] = cycle + T_RP;
            end
          if (a[10]) pre_all = 1;
        end
        3'b001: begin // AUTO REFRESH
          for (i = 0; i < NB; i = i + 1) if (open[i] || cycle < ready_at[i]) fail(8);
          busy_until = cycle + T_RFC;
          last_refresh = cycle;
          refreshes = refreshes + 1;
          if (init_refs != 15) init_refs = init_refs + 1;
        end
        3'b000: begin // MODE REGISTER SET
          for (i = 0; i < NB; i = i + 1) if (open[i]) fail(3);
          if (!pre_all || init_refs < 2) fail(3);
          if (!(a[2:0] <= 3 && a[3] == 0 && (a[6:4] == 2 || a[6:4] == 3))) fail(13);
          bl = 1 << a[2:0]; cl = a[6:4];
          busy_until = cycle + T_MRD;
          mode_set = 1;
          last_refresh = cycle;
        end
        default: fail(14);
      endcase
    end
    if (sv[0]) begin dq_o <= mem[sa[0]]; dq_o_en <= 1; end
    else begin dq_o <= 16'hdead; dq_o_en <= 0; end
  end
endmodule
"""
