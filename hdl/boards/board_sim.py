"""The board system under Verilator: a byte transport for :class:`tessera.host.board.BoardBackend`.

:func:`board_sim_sources` wraps :class:`.system.BoardSystem` (the ULX3S board top minus clock and
I/O buffers) in a simulation top with the clock inside the model and the SDRAM model of
:mod:`.sdram_model` on its SDRAM pins. :class:`SimBoard` builds it once per design into the RTL
build cache, runs it under cocotb (:mod:`.board_bench`) in a background thread and offers the
transport interface of :mod:`tessera.host.board` (``write``, ``read``, ``reset_input_buffer``,
``close``): bytes written are driven bit by bit onto ``uart_rx``, bytes the board sends on
``uart_tx`` are decoded and returned. The same protocol code as with a real serial port runs on
top. Time passes in the simulation only while the host writes or waits to read; ``read``'s
timeout is simulated time.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
from functools import partial
from pathlib import Path

from amaranth.back import verilog

from tessera.arch import NpuConfig

from .sdram import SdramGeometry, SdramTiming
from .sdram_model import MODEL_NAME, sdram_model_verilog
from .ice40 import OnChipSystem
from .system import BoardSystem

__all__ = ["PERIOD_NS", "SIM_TIMING", "SIM_TOP", "SimBoard", "board_sim_sources", "onchip_sim_sources"]

SIM_TOP = "tessera_board_sim"
#: The simulated board clock: 100 MHz.
PERIOD_NS = 10
#: The SDRAM timing of the board at 100 MHz, with a power-up wait of 10 us instead of 200 us.
SIM_TIMING = SdramTiming(init_wait=1000)


def board_sim_sources(system: BoardSystem, *, max_refresh_gap: int) -> dict[str, str]:
    """Verilog files (name → text): the board system, the SDRAM model and the simulation top."""
    from ..verilog import _strip_initial_zeros
    g = system.geometry
    core = _strip_initial_zeros(verilog.convert(system, name="tessera_board", emit_src=False))
    wrapper = f"""`timescale 1ns/1ps
// Tessera board simulation top (config hash {system.config.hash()}): clock, board system, SDRAM model.
module {SIM_TOP}(
  input rst, input uart_rx, output uart_tx, output led,
  output sdram_error, output [7:0] sdram_error_code, output [31:0] sdram_refreshes
);
  reg clk = 1'b0;
  always #{PERIOD_NS // 2} clk = ~clk;
  wire clk_en, cs, ras, cas, we, dq_oe, m_dq_en;
  wire [{g.bank_bits - 1}:0] ba;
  wire [{g.addr_bits - 1}:0] a;
  wire [1:0] dqm;
  wire [15:0] dq_o, m_dq, dq_i;
  tessera_board core(
    .clk(clk), .rst(rst), .uart_rx(uart_rx), .uart_tx(uart_tx), .led(led),
    .sdram__clk_en(clk_en), .sdram__cs(cs), .sdram__ras(ras), .sdram__cas(cas), .sdram__we(we),
    .sdram__ba(ba), .sdram__a(a), .sdram__dqm(dqm), .sdram__dq_o(dq_o), .sdram__dq_oe(dq_oe),
    .sdram__dq_i(dq_i));
  // The device's pins are active low; the board's I/O buffers invert the controller's levels.
  {MODEL_NAME} sdram(
    .clk(clk), .cke(clk_en), .cs_n(~cs), .ras_n(~ras), .cas_n(~cas), .we_n(~we),
    .ba(ba), .a(a), .dqm(dqm), .dq_i(dq_o), .dq_i_en(dq_oe), .dq_o(m_dq), .dq_o_en(m_dq_en),
    .error(sdram_error), .error_code(sdram_error_code), .refreshes(sdram_refreshes));
  // Nobody drives the bus: the controller reads garbage.
  assign dq_i = m_dq_en ? m_dq : 16'hbeef;
endmodule
"""
    return {"tessera_board.v": core, "tessera_sdram_model.v": sdram_model_verilog(
        g, system.timing, max_refresh_gap=max_refresh_gap), f"{SIM_TOP}.v": wrapper, **_cpu_sources(system.config)}


def onchip_sim_sources(system: OnChipSystem) -> dict[str, str]:
    """Verilog files (name → text) of the iCEBreaker's system (:class:`.ice40.OnChipSystem`) and its simulation
    top, whose SDRAM status outputs are constant (there is no SDRAM)."""
    from ..verilog import _strip_initial_zeros
    core = _strip_initial_zeros(verilog.convert(system, name="tessera_board", emit_src=False))
    wrapper = f"""`timescale 1ns/1ps
// Tessera board simulation top (config hash {system.config.hash()}): clock, board system with on-chip memory.
module {SIM_TOP}(
  input rst, input uart_rx, output uart_tx, output led,
  output sdram_error, output [7:0] sdram_error_code, output [31:0] sdram_refreshes
);
  reg clk = 1'b0;
  always #{PERIOD_NS // 2} clk = ~clk;
  tessera_board core(.clk(clk), .rst(rst), .uart_rx(uart_rx), .uart_tx(uart_tx), .led(led));
  assign sdram_error = 1'b0;
  assign sdram_error_code = 8'd0;
  assign sdram_refreshes = 32'd0;
endmodule
"""
    return {"tessera_board.v": core, f"{SIM_TOP}.v": wrapper, **_cpu_sources(system.config)}


def _cpu_sources(config: NpuConfig) -> dict[str, str]:
    if config.core != "sequential":
        return {}
    from ..seq.core import picorv32_source
    name, text = picorv32_source()
    return {name: text}


def _source_key(*extra) -> str:
    from tessera.sim.rtl import _hdl_source_key
    h = hashlib.sha256(_hdl_source_key().encode())
    # The modules the simulated Verilog comes from (not the board top, the bench or the host side).
    for name in ("board_sim", "ice40", "link", "protocol", "sdram", "sdram_model", "system", "uart"):
        h.update(name.encode() + b"\0" + (Path(__file__).parent / f"{name}.py").read_bytes())
    for e in extra:
        h.update(repr(e).encode() + b"\0")
    return h.hexdigest()[:16]


class SimBoard:
    """One running simulation of the board; a byte transport for the host's board backend.

    Parameters
    ----------
    config : NpuConfig
    divisor : int
        UART cycles per bit (small: the simulation pays per cycle).
    idle_cycles : int, optional
        The link's frame idle timeout (default 4 byte times: the simulated host leaves no gaps).
    geometry, timing : SdramGeometry, SdramTiming
        The simulated SDRAM (the default geometry is sized to ``config.dram_bytes``; the default
        timing is the board's at 100 MHz with the 200 us power-up wait shortened to 10 us).
    max_refresh_gap : int, optional
        The model flags refreshes further apart (default: the refresh interval plus 64 cycles).
    memory : {"sdram", "onchip"}
        The board's external memory: the ULX3S's SDRAM (:class:`.system.BoardSystem`) or the iCEBreaker's
        on-chip RAM (:class:`.ice40.OnChipSystem`; ``geometry`` and ``timing`` do not apply).
    """

    def __init__(self, config: NpuConfig, *, divisor: int = 4, idle_cycles: int | None = None,
                 geometry: SdramGeometry | None = None, timing: SdramTiming = SIM_TIMING,
                 max_refresh_gap: int | None = None, start_timeout: float = 300.0, memory: str = "sdram"):
        from tessera.sim.rtl import _ensure_path, build_root, serve_cocotb, verilate
        if geometry is None:
            geometry = _geometry_for(config.dram_bytes)
        self.config, self.divisor = config, divisor
        self.idle_cycles = idle_cycles or 4 * 10 * divisor
        self.bit_ns = divisor * PERIOD_NS
        gap = max_refresh_gap or timing.refresh_interval + 64
        if memory == "sdram":
            system = BoardSystem(config, divisor=divisor, idle_cycles=self.idle_cycles, geometry=geometry,
                                 timing=timing)
            sources = partial(board_sim_sources, system, max_refresh_gap=gap)
        elif memory == "onchip":
            system = OnChipSystem(config, divisor=divisor, idle_cycles=self.idle_cycles)
            sources = partial(onchip_sim_sources, system)
        else:
            raise ValueError(f"memory={memory!r}: expected 'sdram' or 'onchip'")
        key = _source_key(config.to_json(), divisor, self.idle_cycles, geometry, timing, gap, memory)
        self.build_dir = build_root() / f"board-{config.hash()[:8]}-{key}"
        _ensure_path()
        if (self.build_dir / ".built").exists() and (self.build_dir / SIM_TOP).exists():
            from cocotb_tools.runner import get_runner
            runner = get_runner("verilator")
        else:
            print(f"tessera: building the board simulation of config {config.name!r} into {self.build_dir}",
                  file=sys.stderr, flush=True)
            runner = verilate(sources(), SIM_TOP, self.build_dir, opt="-O0")
        self.run_dir = Path(tempfile.mkdtemp(prefix="tessera-board-"))
        self._thread, self._conn = serve_cocotb(
            runner, "tessera.hdl.boards.board_bench", self.build_dir, self.run_dir, toplevel=SIM_TOP,
            socket_env="TESSERA_BOARD_SOCKET", extra_env={"TESSERA_BOARD_BIT_NS": str(self.bit_ns)},
            start_timeout=start_timeout, what="board simulation")
        self._call()
        self.closed = False

    def _call(self, *cmd):
        if cmd:
            self._conn.send(cmd)
        try:
            reply = self._conn.recv()
        except (EOFError, OSError):
            raise RuntimeError(f"board simulation ended unexpectedly; see {self.run_dir / 'sim.log'}") from None
        if reply[0] != "ok":
            raise RuntimeError(f"board simulation: {reply}")
        return reply[1] if len(reply) > 1 else None

    # ---- the transport interface of tessera.host.board ----

    def write(self, data: bytes) -> None:
        """Drive ``data`` onto the board's UART receive pin (returns when the last stop bit is sent)."""
        self._call("send", bytes(data))

    def read(self, n: int, timeout: float) -> bytes:
        """Up to ``n`` bytes the board sent, waiting at most ``timeout`` seconds of simulated time."""
        return self._call("recv", n, int(timeout * 1e9))

    def reset_input_buffer(self) -> None:
        self._call("flush")

    def idle(self, seconds: float) -> None:
        """Let ``seconds`` of simulated time pass with the line idle."""
        self._call("idle", int(seconds * 1e9))

    @property
    def idle_seconds(self) -> float:
        """Simulated time after which the link has given up on a broken frame (and answered it)."""
        return 2 * self.idle_cycles * PERIOD_NS * 1e-9

    @property
    def seconds_per_byte(self) -> float:
        return 10 * self.bit_ns * 1e-9

    # ---- simulation only ----

    def sdram_status(self) -> dict:
        """The SDRAM model's verdict: ``error``, ``error_code``, ``refreshes``, plus ``uart_framing_errors``."""
        return self._call("status")

    def sim_time_ns(self) -> int:
        return self._call("time")

    def close(self):
        if getattr(self, "closed", True):
            return
        self.closed = True
        try:
            self._conn.send(("stop",))
            self._conn.recv()
        except (EOFError, OSError):
            pass
        finally:
            self._conn.close()
            self._thread.join(timeout=30)
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _geometry_for(nbytes: int) -> SdramGeometry:
    """4 banks of 512 16-bit columns, as many rows as ``nbytes`` needs."""
    rows = max(1, (max(nbytes, 2) - 1).bit_length() - 12)
    return SdramGeometry(banks=4, row_bits=rows, col_bits=9)

