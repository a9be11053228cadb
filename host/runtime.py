"""The host runtime: one driver API over swappable backends.

``Runtime(program, backend="emulator")`` quantizes the source model's float
inputs, moves them into the NPU's external memory, runs the program, reads and
dequantizes the outputs, applies the host-side ops the compiler left (such as
Softmax) and returns the outputs by the source model's tensor names.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from tessera.errors import UserError
from tessera.program import Program

__all__ = ["Runtime", "RunResult", "Backend", "EmulatorBackend", "BackendUnavailable", "make_backend",
           "BACKENDS", "apply_host_ops"]

BACKENDS = ("emulator", "rtl", "board")


class BackendUnavailable(UserError, RuntimeError):
    """The requested backend is not available (not built yet, or missing a dependency)."""


@dataclass
class RunResult:
    """Statistics of one run."""
    backend: str
    cycles: int | None
    macs: int
    utilization: float | None
    seconds: float

    def to_dict(self) -> dict:
        return dict(backend=self.backend, cycles=self.cycles, macs=self.macs,
                    utilization=self.utilization, seconds=self.seconds)


class Backend:
    """Executes a loaded program on a memory image. Subclasses: emulator, rtl, board."""

    name = "?"

    def __init__(self, program: Program):
        self.program = program

    def write(self, addr: int, data: bytes) -> None:
        raise NotImplementedError

    def read(self, addr: int, n: int) -> bytes:
        raise NotImplementedError

    def execute(self, prog_addr: int | None = None) -> RunResult:
        """Run from ``prog_addr`` (default: the program's start) until END; 32-byte aligned."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class EmulatorBackend(Backend):
    """The bit-exact golden model (``tessera.sim.emulator``)."""

    name = "emulator"

    def __init__(self, program: Program, *, check_hazards: bool = False):
        super().__init__(program)
        from tessera.sim.emulator import Emulator
        self.emu = Emulator(program.config, check_hazards=check_hazards)
        self.emu.load_program(program)

    def write(self, addr, data):
        self.emu.write(addr, data)

    def read(self, addr, n):
        return self.emu.read(addr, n)

    def execute(self, prog_addr: int | None = None) -> RunResult:
        st = self.emu.run(self.program.prog_addr if prog_addr is None else prog_addr)
        return RunResult("emulator", None, st.macs, None, st.seconds)


def make_backend(name: str, program: Program, **options) -> Backend:
    """Instantiate a backend by name for ``program``."""
    if name == "emulator":
        return EmulatorBackend(program, **options)
    if name == "rtl":
        try:
            from tessera.sim.rtl import RtlBackend
        except ImportError:
            raise BackendUnavailable("the rtl backend is not built yet (tessera.sim.rtl: issue 5)") from None
        return RtlBackend(program, **options)
    if name == "board":
        try:
            from tessera.host.board import BoardBackend
        except ImportError:
            raise BackendUnavailable("the board backend is not built yet (tessera.host.board: issue 7)") from None
        return BoardBackend(program, **options)
    raise BackendUnavailable(f"unknown backend {name!r}; backends: {', '.join(BACKENDS)}")


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


_HOST_OPS = {
    "Softmax": lambda xs, attrs: _softmax(xs[0], attrs.get("axis", -1)),
    "Identity": lambda xs, attrs: xs[0],
}


def _last_segment(program: Program) -> int:
    return len(program.starts) - 1


def _run_float_op(op: dict, backend: Backend, values: dict) -> None:
    """A host op with float ``steps``: read its NPU tensors, evaluate, write back the NPU tensors it feeds."""
    from .hostops import run_steps
    from tessera.program import TensorInfo
    io = {name: TensorInfo.from_dict(d) for name, d in op.get("io", {}).items()}
    env = {}
    for name in op["inputs"]:
        t = io.get(name)
        env[name] = values[name] if t is None else t.dequantize(np.frombuffer(backend.read(t.addr, t.nbytes), np.int8))
    run_steps(op["attrs"]["steps"], env)
    for name in op["outputs"]:
        values[name] = env[name].astype(np.float32)
        t = io.get(name)
        if t is not None:
            backend.write(t.addr, t.quantize(env[name]).tobytes())


def apply_host_ops(program: Program, values: dict, backend: Backend | None = None, *, segment: int | None = None) -> dict:
    """Run the program's host-side ops (in order) on the dequantized NPU outputs.

    ``segment``: run only the ops placed after that segment (default: the last; float ops between
    segments read and write NPU memory through ``backend``).
    """
    segment = _last_segment(program) if segment is None else segment
    for op in program.host_ops:
        if op.get("after_segment", _last_segment(program)) != segment:
            continue
        if "steps" in op.get("attrs", {}):
            _run_float_op(op, backend, values)
            continue
        fn = _HOST_OPS.get(op["op"])
        if fn is None:
            raise ValueError(f"host op {op['op']!r} ({op.get('name', '?')}) is not supported by this runtime")
        values[op["outputs"][0]] = fn([values[n] for n in op["inputs"]], op.get("attrs", {})).astype(np.float32)
    return values


class Runtime:
    """Run a compiled program on a backend.

    Parameters
    ----------
    program : Program or path
        A loaded program or the path of a ``.tsp`` file.
    backend : str
        ``"emulator"``, ``"rtl"`` or ``"board"``.
    """

    def __init__(self, program, backend: str = "emulator", **options):
        self.program = program if isinstance(program, Program) else Program.load(program)
        self.backend = make_backend(backend, self.program, **options)
        self.last: RunResult | None = None

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.program.inputs]

    @property
    def output_names(self) -> list[str]:
        names = [t.name for t in self.program.outputs]
        names += [op["outputs"][0] for op in self.program.host_ops]
        return names

    def run(self, inputs: dict) -> dict:
        """Run once. ``inputs`` maps input names to float arrays of the source model's shapes."""
        missing = [t.name for t in self.program.inputs if t.name not in inputs]
        if missing:
            raise KeyError(f"missing input(s) {missing}; the model's inputs are {self.input_names}")
        unknown = sorted(set(inputs) - set(self.input_names))
        if unknown:
            raise KeyError(f"unknown input(s) {unknown}; the model's inputs are {self.input_names}")
        t0 = time.perf_counter()
        for t in self.program.inputs:
            self.backend.write(t.addr, t.quantize(inputs[t.name]).tobytes())
        values = {}
        result = self._execute(values)
        for t in self.program.outputs:
            img = np.frombuffer(self.backend.read(t.addr, t.nbytes), dtype=np.int8)
            values[t.name] = t.dequantize(img)
        values = apply_host_ops(self.program, values, self.backend)
        result.seconds = time.perf_counter() - t0
        self.last = result
        return values

    def run_quantized(self, images: dict) -> dict:
        """Run on int8 NPU images (``H×W×cpad``) and return int8 output images; no host ops."""
        for t in self.program.inputs:
            self.backend.write(t.addr, np.asarray(images[t.name], dtype=np.int8).tobytes())
        self.last = self._execute({})
        return {t.name: np.frombuffer(self.backend.read(t.addr, t.nbytes), dtype=np.int8)
                .reshape(t.height, t.width, t.cpad).copy() for t in self.program.outputs}

    def _execute(self, values: dict) -> RunResult:
        """Run every segment in turn, with the host ops placed between segments (their outputs go to
        ``values``); statistics summed."""
        prog = self.program
        if len(prog.starts) == 1:
            return self.backend.execute()
        total = None
        for k in range(len(prog.starts)):
            r = self.backend.execute(prog.segment_addr(k))
            if total is None:
                total = r
            else:
                total.macs += r.macs
                total.seconds += r.seconds
                if total.cycles is not None and r.cycles is not None:
                    total.cycles += r.cycles
            if k < len(prog.starts) - 1:
                apply_host_ops(prog, values, self.backend, segment=k)
        if total.cycles:
            total.utilization = total.macs / (total.cycles * prog.config.macs_per_cycle)
        return total

    def close(self):
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
