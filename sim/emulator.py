"""Bit-exact functional model of the NPU: the golden model.

The emulator fetches instructions from its external-memory image exactly as
the hardware does, dispatches them to the four unit queues (bounded by
``queue_depth``), and executes them one whole instruction at a time with
numpy. Units are interleaved deterministically (the ready head with the lowest
address goes first) while dependency tokens and queue bounds are honoured, so
a program that deadlocks on hardware deadlocks here too. With
``check_hazards=True`` every buffer and external-memory access is also checked
for races that the tokens leave open (see :mod:`tessera.sim.hazards`).

Speed without giving up a bit (it runs a ResNet-50 image in a few times
onnxruntime's time): each instruction word gets a plan at its first execution
(range checks, numpy views of what it reads and writes); CONV is an int8 GEMM
and EPILOGUE one compiled integer loop, both exact (:mod:`.emulator_kernels`);
weight matrices and per-channel constants are kept by content; and a program
that ran to the end replays its unit interleaving, which depends only on the
instruction words, while those are unchanged.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from tessera.arch import PARAM_FIELDS, NpuConfig
from tessera.errors import UserError
from tessera.isa import (
    INSTR_BYTES,
    Buffer,
    ErrorCode,
    Instruction,
    IsaError,
    Opcode,
    PoolMode,
    Unit,
    decode,
    mask_units,
)
from tessera.numerics import pool_avg_fl32, round_shift, scale_product, unpack_weights
from tessera.program import Program

from .emulator_kernels import (
    ChannelParams,
    Int8Gemm,
    ResidualParams,
    acc_store,
    requantize_into,
    residual_into,
    store_accumulators,
)
from .hazards import HazardError, HazardTracker, VectorClocks
from .replay import Trace

__all__ = ["Emulator", "HazardError", "NpuError", "RunStats"]


class NpuError(UserError, RuntimeError):
    """The NPU stopped with an error code (as the hardware's ERROR CSR would show)."""

    def __init__(self, code: ErrorCode, pc: int, message: str):
        super().__init__(f"{code.name} at instruction 0x{pc:x}: {message}")
        self.code = code
        self.pc = pc


@dataclass
class RunStats:
    """What one run executed."""
    instructions: int = 0
    by_opcode: dict = field(default_factory=dict)
    macs: int = 0
    dram_read_bytes: int = 0
    dram_write_bytes: int = 0
    seconds: float = 0.0


class Emulator:
    """Golden model of one NPU instance.

    Parameters
    ----------
    config : NpuConfig
        The hardware to model.
    check_hazards : bool
        Check every access for races between units (slower; for tests).
    gemm : {"auto", "onnxruntime", "float32"}
        How CONV's exact int8 GEMM is computed (see :class:`~tessera.sim.emulator_kernels.Int8Gemm`);
        every choice gives the same bits.

    Attributes
    ----------
    dram : ndarray
        External memory (uint8), a read-only view: it changes only through :meth:`write` and STOREs, which is
        how replays learn of changed weights (:mod:`tessera.sim.replay`).
    buffers : dict
        The on-chip buffers by :class:`~tessera.isa.Buffer` (ACT, WGT, ACC, PARAM), as a full run leaves them.
    """

    def __init__(self, config: NpuConfig, *, check_hazards: bool = False, gemm: str = "auto"):
        self.config = c = config
        self.check_hazards = check_hazards
        # External memory: written only through write() and STOREs (``dram`` is a read-only view), so that
        # replays learn which weight bytes changed without reading them (see tessera.sim.replay).
        self._mem = np.zeros(c.dram_bytes, dtype=np.uint8)
        self.dram = self._mem.view()
        self.dram.flags.writeable = False
        self._bufs = {
            Buffer.ACT: np.zeros((c.abuf_words, c.lanes), dtype=np.int8),
            Buffer.WGT: np.zeros((c.wbuf_words, c.rows, c.lanes), dtype=np.int8),
            Buffer.ACC: np.zeros((c.accbuf_words, c.rows), dtype=np.int32),
            Buffer.PARAM: np.zeros((c.pbuf_words, c.rows, len(PARAM_FIELDS)), dtype=np.int32),
        }
        self.buffers = _Buffers(self)
        self._exec = {op: getattr(self, f"exec_{op.name.lower()}") for op in Opcode}
        self._plan = {op: getattr(self, f"_plan_{op.name.lower()}", _no_plan) for op in Opcode}
        self._decoded: dict[bytes, list | None] = {}
        self._scratch: dict[tuple, np.ndarray] = {}
        self._gemm = Int8Gemm(gemm)
        self._wmats: dict[tuple, list] = {}
        # LOAD stamps the WGT words it writes; a weight matrix checked against a WGT region stays valid
        # while no stamp in that region is newer, within one run (the host may write buffers between runs).
        self._wgt_stamp = np.zeros(c.wbuf_words, np.int64)
        self._wgt_clock = 0
        self._wgt_checked: dict[tuple, tuple] = {}
        self._chans: dict[tuple, ChannelParams] = {}
        self._prepared: dict[int, tuple] = {}
        self._prepared_bytes = 0
        self._wmat_bytes = 0
        self._clocks = None
        self._traces: dict[int, object] = {}
        # While replaying a trace whose weights come only from unchanged external memory: per step, the
        # weight matrix that CONV used last time (see tessera.sim.replay).
        self._wcells: list | None = None
        self._wepoch = 0
        self._istep = 0
        # Traces that skip their WGT LOADs while the bytes those read are unchanged, and those whose skipped
        # LOADs the WGT buffer does not hold yet, in the order they ran (applied, in that order, before
        # anything reads the buffer, loads into it, or changes the bytes they read).
        self._watchers: list = []
        self._pending: list = []
        self._watch_version = 0
        self.stats = RunStats()

    # ---- host access ----------------------------------------------------------

    def write(self, addr: int, data) -> None:
        """Write bytes (or a numpy array's bytes) into external memory at ``addr``; the only way in from
        outside (``dram`` is read-only)."""
        if isinstance(data, np.ndarray):
            data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        else:
            data = np.frombuffer(bytes(data), dtype=np.uint8)
        if addr < 0 or addr + data.size > self.dram.size:
            raise ValueError(f"write of {data.size} bytes at 0x{addr:x} is outside external memory "
                             f"({self.dram.size} bytes)")
        dst = self._mem[addr:addr + data.size]
        if self._watchers and self._watched(addr, addr + data.size):
            self._notice(dst[None], data[None], np.array([addr]))
        dst[...] = data

    def read(self, addr: int, n: int) -> bytes:
        if addr < 0 or addr + n > self.dram.size:
            raise ValueError(f"read of {n} bytes at 0x{addr:x} is outside external memory")
        return self.dram[addr:addr + n].tobytes()

    def _watched(self, lo: int, hi: int) -> list:
        """The traces that watch some of external memory's bytes [lo, hi) (see tessera.sim.replay)."""
        return [t for t in self._watchers if t.watches(lo, hi)]

    def _notice(self, old: np.ndarray, new: np.ndarray, starts: np.ndarray) -> None:
        """Before rows ``old`` of external memory (row r at address ``starts[r]``) take the values ``new``:
        traces whose weight bytes change load again in their next replay, and the WGT LOADs replays skipped
        are applied first while they can still read the bytes they would have read."""
        rows, cols = np.nonzero(old != new)
        if rows.size:
            changed = np.sort(starts[rows] + cols)
            hits = [t for t in self._watchers if t.changes(changed)]
            if self._pending and any(t in self._pending for t in hits):
                self._materialize()
            for t in hits:
                t.clean = False

    def _materialize(self) -> None:
        """Apply the WGT LOADs that replays skipped to the WGT buffer (the bytes they read are unchanged).
        Only the order of each trace's last replay matters: its LOADs overwrite those of earlier ones."""
        pending, self._pending = self._pending, []
        for trace in pending:
            for ins, p in trace.wgt_loads:
                self._load_copy(ins, p)

    def _watch(self, trace) -> None:
        """Make ``trace`` the watcher for its program address (in place of an earlier trace there), if it watches."""
        self._watchers = [t for t in self._watchers if t is not trace and t.prog_addr != trace.prog_addr]
        if trace.known:
            self._watchers.append(trace)
        self._watch_version += 1

    def load_program(self, program: Program) -> None:
        program.check_config(self.config)
        for addr, blob in program.segments():
            self.write(addr, blob)

    # ---- the run loop -----------------------------------------------------------

    def run(self, prog_addr: int = 0, *, max_instructions: int = 10_000_000) -> RunStats:
        """Execute from ``prog_addr`` until END has been fetched and every unit drained."""
        t0 = time.perf_counter()
        c = self.config
        self.stats = RunStats()
        self._wgt_checked.clear()
        self._wcells = None
        trace = self._traces.get(prog_addr)
        if (trace is not None and not self.check_hazards and len(trace.steps) <= max_instructions
                and trace.matches(self, prog_addr)):
            trace.replay(self)
            self.stats.instructions = len(trace.steps)
            self.stats.by_opcode = dict(trace.by_opcode)
            self.stats.seconds = time.perf_counter() - t0
            return self.stats
        self._materialize()
        order = [] if not self.check_hazards else None
        nu = len(Unit)
        queues = [deque() for _ in range(nu)]
        tokens = [0] * (nu * nu)          # tokens[src * nu + dst]
        depth, qdepth = c.token_depth, c.queue_depth
        checking = self.check_hazards
        self._clocks = VectorClocks() if checking else None
        self._trackers = {}
        counts = {}
        pc = prog_addr
        fetching = True
        executed = 0
        fetch = self._fetch
        while True:
            while fetching:
                e = fetch(pc)
                if e is None:
                    fetching = False
                    break
                if len(queues[e[1]]) >= qdepth:
                    break
                queues[e[1]].append((pc, e))
                pc += INSTR_BYTES
            # Among the heads that can start, the oldest goes first (deterministic).
            best = None
            bpc = 0
            for u in range(nu):
                q = queues[u]
                if not q:
                    continue
                ipc, e = q[0]
                if best is not None and ipc > bpc:
                    continue
                for t in e[5]:              # token queues it must take from
                    if not tokens[t]:
                        break
                else:
                    for t in e[6]:          # token queues it must have room in
                        if tokens[t] >= depth:
                            break
                    else:
                        best, bpc = u, ipc
            if best is None:
                if not fetching and not any(queues):
                    break
                self._deadlock(queues, pc, fetching)
            ipc, e = queues[best].popleft()
            ins = e[0]
            for t in e[5]:
                tokens[t] -= 1
            self._pc = ipc
            if checking:
                self._vc = self._clocks.start(best, list(e[2]))
                self._where = f"instruction 0x{ipc:x} ({ins.op.name})"
                self._unit = best
            plan = e[8]
            if plan is None:
                plan = e[8] = e[7](ins)     # first execution: range checks, views (see the exec_ section)
            e[4](ins, plan)
            if order is not None:
                order.append(e)
            for t in e[6]:
                tokens[t] += 1
            if checking:
                self._clocks.signal(best, list(e[3]), self._vc)
            counts[ins.op] = counts.get(ins.op, 0) + 1
            executed += 1
            if executed > max_instructions:
                raise NpuError(ErrorCode.WATCHDOG, ipc, f"more than {max_instructions} instructions executed")
        self.stats.instructions = executed
        self.stats.by_opcode = {op.name: n for op, n in counts.items()}
        self.stats.by_opcode["END"] = 1
        if order is not None:
            trace = Trace.record(self, prog_addr, pc, order)
            if trace is not None:
                self._traces[prog_addr] = trace
                self._watch(trace)
        self.stats.seconds = time.perf_counter() - t0
        return self.stats

    def _deadlock(self, queues, pc, fetching):
        heads = [(q[0][0], Unit(u), q[0][1][0]) for u, q in enumerate(queues) if q]
        hpc, hu, hins = min(heads, key=lambda t: t[0]) if heads else (pc, None, None)
        blocked = (f"unit {hu.name} waits for tokens from "
                   f"{','.join(u.name for u in mask_units(hins.wait)) or '-'} "
                   f"or for room to signal {','.join(u.name for u in mask_units(hins.signal)) or '-'}"
                   if hu is not None else "no unit can start")
        fetch = f"blocked at 0x{pc:x}" if fetching else "finished"
        raise NpuError(ErrorCode.DEADLOCK, hpc, f"deadlock: {blocked}; fetch is {fetch}")

    def _fetch(self, pc: int):
        """The dispatch entry of the word at ``pc``: (instruction, unit, waits, signals, exec), or None for END."""
        if pc < 0 or pc + INSTR_BYTES > self.dram.size:
            raise NpuError(ErrorCode.DRAM_RANGE, pc, "instruction fetch outside external memory")
        raw = self.dram[pc:pc + INSTR_BYTES].tobytes()
        hit = self._decoded.get(raw, False)
        if hit is not False:
            return hit
        try:
            ins = decode(raw)
        except IsaError as e:
            raise NpuError(ErrorCode.ILLEGAL_OPCODE if e.illegal_opcode else ErrorCode.BAD_FIELD, pc, str(e)) from None
        unit = ins.unit
        if unit is not None and (ins.wait | ins.signal) >> unit.value & 1:
            raise NpuError(ErrorCode.BAD_FIELD, pc, f"{ins.op.name.lower()} on unit {unit.name} "
                           f"cannot wait for or signal its own unit")
        entry = None
        if ins.op != Opcode.END:
            u = unit.value
            waits = tuple(w.value for w in mask_units(ins.wait))
            sigs = tuple(d.value for d in mask_units(ins.signal))
            nu = len(Unit)
            # [ins, unit, waits, signals, exec, token indices taken, token indices given, planner, plan]
            entry = [ins, u, waits, sigs, self._exec[ins.op], tuple(s * nu + u for s in waits),
                     tuple(u * nu + d for d in sigs), self._plan[ins.op], None]
        # Decoding is pure, so identical words share one entry (fetch may retry a word).
        self._decoded[raw] = entry
        return entry

    # ---- helpers ---------------------------------------------------------------

    def _fail(self, code: ErrorCode, msg: str):
        raise NpuError(code, self._pc, msg)

    def _touch(self, mem, idx, write: bool):
        if self._clocks is None:
            return
        if isinstance(idx, slice):
            idx = np.arange(idx.start, idx.stop, dtype=np.int64)
        name = mem.name if isinstance(mem, Buffer) else "DRAM"
        tr = self._trackers.get(name)
        if tr is None:
            words = self.config.buffer_words(mem) if isinstance(mem, Buffer) else self.dram.size // self.config.bus_bytes
            tr = self._trackers[name] = HazardTracker(name if name == "DRAM" else f"{name} buffer", words)
        tr.access(self._unit, self._vc, idx, write, self._where)

    def _buf_index(self, buf: Buffer, idx: np.ndarray, what: str) -> np.ndarray:
        depth = self.config.buffer_words(buf)
        if idx.size and (idx.min() < 0 or idx.max() >= depth):
            self._fail(ErrorCode.BUFFER_RANGE, f"{what} reaches {buf.name} word {int(idx.max())}, "
                       f"the buffer has {depth} words")
        return idx

    def _span(self, buf: Buffer, start: int, n: int, what: str) -> slice:
        """The ``n`` words from ``start`` of ``buf`` as a slice, after the same range check as _buf_index."""
        depth = self.config.buffer_words(buf)
        if n and (start < 0 or start + n > depth):
            self._fail(ErrorCode.BUFFER_RANGE, f"{what} reaches {buf.name} word {start + n - 1}, "
                       f"the buffer has {depth} words")
        return slice(start, start + n)

    def _dma_geometry(self, ins: Instruction):
        c = self.config
        wb = c.word_bytes(ins.buf)
        align = min(wb, c.bus_bytes)
        if ins.dram_addr % align or (ins.rows > 1 and ins.dram_stride % align):
            self._fail(ErrorCode.MISALIGNED, f"dram_addr=0x{ins.dram_addr:x} / dram_stride={ins.dram_stride} "
                       f"must be multiples of {align} bytes for {ins.buf.name} words")
        end = ins.dram_addr + (ins.rows - 1) * ins.dram_stride + ins.cols * wb
        if end > c.dram_bytes:
            self._fail(ErrorCode.DRAM_RANGE, f"transfer ends at 0x{end:x}, external memory has "
                       f"0x{c.dram_bytes:x} bytes")
        if ins.rows == 1 or ins.buf_stride == ins.cols:
            # Contiguous in the buffer: checked and addressed as one slice.
            bidx = self._span(ins.buf, ins.buf_addr, ins.rows * ins.cols, ins.op.name.lower())
        else:
            bidx = (ins.buf_addr + np.arange(ins.rows, dtype=np.int64)[:, None] * ins.buf_stride
                    + np.arange(ins.cols, dtype=np.int64)[None, :])
            self._buf_index(ins.buf, bidx, ins.op.name.lower())
        row_starts = ins.dram_addr + np.arange(ins.rows, dtype=np.int64) * ins.dram_stride
        return wb, bidx, row_starts

    def _dram_rows(self, ins: Instruction, nbytes: int) -> np.ndarray:
        """Strided view of the transfer's rows in external memory (bounds checked by _dma_geometry)."""
        stride = ins.dram_stride if ins.rows > 1 else nbytes
        return np.lib.stride_tricks.as_strided(self._mem[ins.dram_addr:], shape=(ins.rows, nbytes),
                                               strides=(stride, 1), writeable=True)

    def _dram_words(self, row_starts, nbytes):
        bus = self.config.bus_bytes
        first = row_starts // bus
        n = int((-(-(row_starts % bus + nbytes) // bus)).max())
        return (first[:, None] + np.arange(n, dtype=np.int64)[None, :]).reshape(-1)

    # ---- one exec_ per opcode ------------------------------------------------------
    #
    # Each exec_<op>(ins, plan) runs one instruction. The plan (from _plan_<op>) holds what depends only on
    # the instruction's fields: range checks (done once, at the first execution, where the hardware would
    # fault) and numpy views of the buffers and external memory it reads and writes. run() keeps a word's
    # plan with its decode-cache entry, so repeated tiles reuse it; called without a plan, exec_<op> makes one.

    def _plan_load(self, ins: Instruction):
        c = self.config
        if ins.buf == Buffer.ACC:
            self._fail(ErrorCode.BAD_FIELD, "load: buf=acc is not a DMA target (act, wgt or param)")
        wb, bidx, row_starts = self._dma_geometry(ins)
        p = _Plan(bidx=bidx, row_starts=row_starts, nbytes=ins.cols * wb, total=ins.rows * ins.cols * wb, dst=None)
        p.src = self._dram_rows(ins, p.nbytes)
        buf = self._bufs[ins.buf]
        # Bytes land in the buffer unchanged (no weight unpacking, little-endian int32 parameters):
        # one strided copy, unless buffer rows overlap (then the index form below keeps numpy's order).
        raw_bytes = (ins.buf != Buffer.WGT or c.weight_bits == 8) and sys.byteorder == "little"
        if raw_bytes and (isinstance(bidx, slice) or ins.buf_stride >= ins.cols):
            p.dst = _byte_rows(buf, wb, ins.buf_addr, ins.rows, ins.buf_stride, p.nbytes)
        p.wgt = bidx if ins.buf == Buffer.WGT else None
        return p

    def exec_load(self, ins: Instruction, plan=None):
        p = plan or self._plan_load(ins)
        if self._clocks is not None:
            self._touch(None, self._dram_words(p.row_starts, p.nbytes), False)
            self._touch(ins.buf, p.bidx, True)
        if p.wgt is not None:
            self._wgt_clock += 1
            self._wgt_stamp[p.wgt] = self._wgt_clock
        self._load_copy(ins, p)
        self.stats.dram_read_bytes += p.total

    def _load_copy(self, ins: Instruction, p) -> None:
        """The data movement of LOAD ``ins`` (plan ``p``)."""
        if p.dst is not None:
            np.copyto(p.dst, p.src)
        else:
            c = self.config
            raw = p.src.copy()
            if ins.buf == Buffer.ACT:
                words = raw.view(np.int8).reshape(ins.rows, ins.cols, c.lanes)
            elif ins.buf == Buffer.WGT:
                words = unpack_weights(raw.reshape(-1), c.weight_bits).reshape(ins.rows, ins.cols, c.rows, c.lanes)
            else:
                words = raw.reshape(-1).view("<i4").reshape(ins.rows, ins.cols, c.rows, len(PARAM_FIELDS))
            if isinstance(p.bidx, slice):
                self._bufs[ins.buf][p.bidx] = words.reshape((ins.rows * ins.cols,) + words.shape[2:])
            else:
                self._bufs[ins.buf][p.bidx] = words

    def _plan_store(self, ins: Instruction):
        if ins.buf != Buffer.ACT:
            self._fail(ErrorCode.BAD_FIELD, f"store: buf={ins.buf.name.lower()}; only act can be stored")
        wb, bidx, row_starts = self._dma_geometry(ins)
        nbytes = ins.cols * wb
        p = _Plan(bidx=bidx, row_starts=row_starts, nbytes=nbytes, total=ins.rows * nbytes, dst=None,
                  lo=ins.dram_addr, hi=ins.dram_addr + (ins.rows - 1) * ins.dram_stride + nbytes)
        # Reading overlapping buffer rows is harmless, so the source is always one strided view.
        p.src = _byte_rows(self._bufs[Buffer.ACT], wb, ins.buf_addr, ins.rows, ins.buf_stride, nbytes)
        if ins.rows == 1 or ins.dram_stride >= nbytes:
            p.dst = self._dram_rows(ins, nbytes)
        return p

    def exec_store(self, ins: Instruction, plan=None):
        p = plan or self._plan_store(ins)
        if self._clocks is not None:
            self._touch(Buffer.ACT, p.bidx, False)
            self._touch(None, self._dram_words(p.row_starts, p.nbytes), True)
        watched = self._watchers and self._watched(p.lo, p.hi)
        if p.dst is not None:
            if watched:
                self._notice(p.dst, p.src, p.row_starts)
            np.copyto(p.dst, p.src)
        else:
            # Rows are written in order, so overlapping rows end with the last one.
            data = p.src.copy()
            if watched:
                # What the rows leave, before they are written.
                new = self._mem[p.lo:p.hi].copy()
                for r in range(ins.rows):
                    s = int(p.row_starts[r]) - p.lo
                    new[s:s + p.nbytes] = data[r]
                self._notice(self._mem[None, p.lo:p.hi], new[None], np.array([p.lo]))
            for r in range(ins.rows):
                s = int(p.row_starts[r])
                self._mem[s:s + p.nbytes] = data[r]
        self.stats.dram_write_bytes += p.total

    def _plan_conv(self, ins: Instruction):
        c = self.config
        N, M = c.lanes, c.rows
        taps = ins.k_h * ins.k_w
        cw = ins.in_cb * N
        P = ins.out_h * ins.out_w
        p = _Plan(in_idx=self._span(Buffer.ACT, ins.in_addr, ins.in_h * ins.in_w * ins.in_cb, "conv input tile"),
                  w_idx=self._span(Buffer.WGT, ins.w_addr, ins.ob_count * taps * ins.in_cb, "conv weights"),
                  acc_idx=self._span(Buffer.ACC, ins.acc_addr, ins.ob_count * P, "conv accumulators"),
                  ins=ins, accumulate=ins.accumulate, im2col={})
        # uint8 view of the int8 input: XOR 0x80 turns int8 v into uint8 v + 128, the GEMM's A operand.
        p.x = self._bufs[Buffer.ACT].view(np.uint8)[p.in_idx].reshape(ins.in_h, ins.in_w, cw)
        p.w = self._bufs[Buffer.WGT][p.w_idx].reshape(ins.ob_count, taps, ins.in_cb, M, N)
        p.acc = self._bufs[Buffer.ACC][p.acc_idx].reshape(ins.ob_count, P, M)
        # Few input channels: check which carry weights at all (channel padding to the lane width).
        p.trim = cw <= 64
        wb = p.w.reshape(-1).view(np.uint8)
        p.wflat = wb.view(np.uint64) if wb.size % 8 == 0 else wb
        p.wsample = max(1, p.wflat.size // 32)
        p.wkey = (ins.w_addr, p.w.shape)
        p.macs = P * taps * ins.in_cb * ins.ob_count * M * N
        return p

    def exec_conv(self, ins: Instruction, plan=None):
        p = plan or self._plan_conv(ins)
        if self._clocks is not None:
            self._touch(Buffer.ACT, p.in_idx, False)
            self._touch(Buffer.WGT, p.w_idx, False)
            if p.accumulate:
                self._touch(Buffer.ACC, p.acc_idx, False)
            self._touch(Buffer.ACC, p.acc_idx, True)
        self._conv_accumulate(p, *self._conv_operands(p, plan is not None))

    def _conv_accumulate(self, p, cols: np.ndarray, wmat: np.ndarray, gemm=None) -> None:
        """CONV's second half: the GEMM into the accumulators (reads nothing but its operands)."""
        store_accumulators(p.acc, gemm() if gemm is not None else self._gemm(cols, wmat), p.accumulate)
        self.stats.macs += p.macs

    def _conv_operands(self, p, planned: bool):
        """CONV's first half: the GEMM's operands (A built from the ACT buffer, B, and B's prepared GEMM)."""
        cells = self._wcells
        fixed = cells[self._istep] if cells is not None else None
        if fixed is not None and fixed[0] != self._wepoch:
            fixed = None
        gemm = None
        if fixed is not None:
            _, wmat, sel, gemm = fixed
        else:
            if self._pending:
                raise RuntimeError("emulator: a CONV step without its weight matrix in a replay that skipped "
                                   "its weight loads")
            # Weight tiles serve several CONVs in a row: check the WGT words once per LOAD into them.
            checked = self._wgt_checked.get(p.wkey) if planned else None
            if checked is not None and self._wgt_stamp[p.w_idx].max() <= checked[0]:
                wmat, sel = checked[1], checked[2]
            else:
                wmat, sel = self._weight_matrix(p)
                self._wgt_checked[p.wkey] = (self._wgt_clock, wmat, sel)
            if cells is not None:
                cells[self._istep] = (self._wepoch, wmat, sel, None)
        cw = p.x.shape[2] if sel is None else len(sel)
        im = p.im2col.get(cw)
        if im is None:
            im = p.im2col[cw] = self._im2col_views(p, cw)
        xsel, xor_src, xor_dst, copy_src, copy_dst, cols = im
        if sel is not None:
            np.take(p.x, sel, axis=2, out=xsel)
        if xor_src is not None:
            np.bitwise_xor(xor_src, 0x80, out=xor_dst)
        if copy_src is not None:
            np.copyto(copy_dst, copy_src)
        if fixed is not None and gemm is None:
            gemm = self._bound_gemm(wmat, cols)
            cells[self._istep] = (self._wepoch, wmat, sel, gemm)
        return cols, wmat, gemm

    def _conv_runner(self, p, cell, epoch: int):
        """CONV step ``p`` of a replay that skips its weight loads as one call ``run(_, _)`` (operands, bound GEMM,
        accumulator write; the MACs are counted by the caller), once its ``cell`` of epoch ``epoch`` holds a
        bound GEMM; else None."""
        if cell is None or cell[0] != epoch or cell[3] is None:
            return None
        _, wmat, sel, gemm = cell
        im = p.im2col.get(p.x.shape[2] if sel is None else len(sel))
        if im is None:
            return None
        xsel, xor_src, xor_dst, copy_src, copy_dst, _ = im
        x, acc, accumulate, xor, copy, take = p.x, p.acc, bool(p.accumulate), np.bitwise_xor, np.copyto, np.take
        if sel is None and copy_src is None:
            def run(_a, _b):
                xor(xor_src, 0x80, out=xor_dst)
                acc_store(acc, gemm(), accumulate)
        elif sel is None and xor_src is not None:
            def run(_a, _b):
                xor(xor_src, 0x80, out=xor_dst)
                copy(copy_dst, copy_src)
                acc_store(acc, gemm(), accumulate)
        else:
            def run(_a, _b):
                if sel is not None:
                    take(x, sel, axis=2, out=xsel)
                if xor_src is not None:
                    xor(xor_src, 0x80, out=xor_dst)
                if copy_src is not None:
                    copy(copy_dst, copy_src)
                acc_store(acc, gemm(), accumulate)
        return run

    def _bound_gemm(self, wmat: np.ndarray, cols: np.ndarray):
        """The GEMM of ``cols`` (a fixed operand buffer) by ``wmat``, prepacked once per matrix within a memory
        budget, bound to its buffers, as a call without arguments; or None."""
        hit = self._prepared.get(id(wmat))
        if hit is None or hit[0] is not wmat:
            if self._prepared_bytes + wmat.nbytes > _PREPARED_BYTES:
                return None
            hit = self._prepared[id(wmat)] = (wmat, self._gemm.prepare(wmat))  # wmat held: its id stays unique
            self._prepared_bytes += wmat.nbytes
        if hit[1] is None:
            return None
        shape = (cols.shape[0], wmat.shape[1])
        out = self._scratch.get(("gemm out", shape))
        if out is None:
            out = self._scratch[("gemm out", shape)] = np.empty(shape, np.int32)
        return hit[1].bind(cols, out)

    def _weight_matrix(self, p):
        """The GEMM's B operand [tap][input channel][output channel] of the weight tile, and the input
        channels it keeps (None: all).

        Building it moves every byte, so it is kept per weight content: the same tile serves several
        output tiles, and every image. A key of sampled bytes finds candidates; equality of all bytes
        decides.
        """
        flat = p.wflat
        key = (p.w.shape, flat[::p.wsample].tobytes())
        cands = self._wmats.get(key)
        if cands is not None:
            for raw, wmat, sel in cands:
                if (raw == flat).all():
                    return wmat, sel
        ob, taps, cb, M, N = p.w.shape
        cw = cb * N
        wmat = p.w.transpose(1, 2, 4, 0, 3).reshape(taps, cw, ob * M)
        sel = None
        if p.trim:
            live = p.w.any(axis=(0, 1, 3)).reshape(cw)
            n = int(np.count_nonzero(live))
            if 2 * n <= cw:
                # Channels whose weights are all zero add nothing: leave them out (exact; one kept if none).
                sel = np.flatnonzero(live) if n else np.zeros(1, np.intp)
                wmat = wmat[:, sel]
        wmat = np.ascontiguousarray(wmat.reshape(-1, ob * M))
        if self._wmat_bytes < _WMAT_CACHE_BYTES:
            self._wmats.setdefault(key, []).append((flat.copy(), wmat, sel))
            self._wmat_bytes += 2 * flat.nbytes
        return wmat, sel

    def _im2col_views(self, p, cw: int):
        """Arrays and views that build the GEMM's A operand [pixel][tap][channel] (uint8: input + 128).

        Returns (buffer for the kept channels or None, XOR source or None, XOR destination, copy source or
        None, copy destination, A). Without padding reads, the taps are read straight from the input tile;
        otherwise the tile goes into a canvas whose border holds pad_value, and the taps from there.
        """
        ins = p.ins
        x = p.x
        xsel = None
        if cw != x.shape[2]:
            xsel = x = np.empty(x.shape[:2] + (cw,), np.uint8)
        key = (ins.out_h * ins.out_w, ins.k_h * ins.k_w * cw)
        cols = self._scratch.get(key)
        if cols is None:
            cols = self._scratch[key] = np.empty(key, np.uint8)
        dst = cols.reshape(ins.out_h, ins.out_w, ins.k_h, ins.k_w, cw)
        span_h = (ins.out_h - 1) * ins.stride_h + (ins.k_h - 1) * ins.dil_h + 1
        span_w = (ins.out_w - 1) * ins.stride_w + (ins.k_w - 1) * ins.dil_w + 1

        def taps(src):
            sy, sx, sc = src.strides
            return np.lib.stride_tricks.as_strided(
                src, shape=(ins.out_h, ins.out_w, ins.k_h, ins.k_w, cw),
                strides=(ins.stride_h * sy, ins.stride_w * sx, ins.dil_h * sy, ins.dil_w * sx, sc), writeable=False)

        if ins.pad_t == 0 and ins.pad_l == 0 and span_h <= ins.in_h and span_w <= ins.in_w:
            return xsel, taps(x), dst, None, None, cols
        # Canvas row i holds input row i - pad_t.
        y0, y1 = max(0, ins.pad_t), min(span_h, ins.pad_t + ins.in_h)
        x0, x1 = max(0, ins.pad_l), min(span_w, ins.pad_l + ins.in_w)
        ckey = ("canvas", span_h, span_w, cw, ins.pad_value, y0, y1, x0, x1)
        canvas = self._scratch.get(ckey)
        if canvas is None:
            # Only the interior is rewritten, so the border keeps pad_value for every user of this geometry.
            canvas = self._scratch[ckey] = np.full((span_h, span_w, cw), (ins.pad_value + 128) & 0xFF, np.uint8)
        if y0 >= y1 or x0 >= x1:
            return xsel, None, None, taps(canvas), dst, cols       # the tile is outside every tap
        return (xsel, x[y0 - ins.pad_t:y1 - ins.pad_t, x0 - ins.pad_l:x1 - ins.pad_l], canvas[y0:y1, x0:x1],
                taps(canvas), dst, cols)

    def _plan_epilogue(self, ins: Instruction):
        c = self.config
        M, k = c.rows, c.words_per_block
        ob, P = ins.ob_count, ins.pixels
        p = _Plan(acc_idx=self._span(Buffer.ACC, ins.acc_addr, ob * P, "epilogue accumulators"),
                  p_idx=self._span(Buffer.PARAM, ins.param_addr, ob, "epilogue parameters"), r_idx=None, r=None,
                  prm_key=None, pixels=P, zp_out=ins.zp_out, lo=ins.out_min, hi=ins.out_max, res=None)
        dense = ob * k                 # words per pixel when the output (or residual) is packed
        if ins.out_stride == dense:
            p.out_idx = self._span(Buffer.ACT, ins.out_addr, P * dense, "epilogue output")
        else:
            p.out_idx = self._buf_index(Buffer.ACT, ins.out_addr + self._block_words(P, ob, ins.out_stride),
                                        "epilogue output")
        if ins.residual:
            if self._clocks is not None:
                # These reads come before the residual's range check (the order of checks is part of the model).
                self._touch(Buffer.ACC, p.acc_idx, False)
                self._touch(Buffer.PARAM, p.p_idx, False)
            if ins.res_stride == dense:
                p.r_idx = self._span(Buffer.ACT, ins.res_addr, P * dense, "epilogue residual")
            else:
                p.r_idx = self._buf_index(Buffer.ACT, ins.res_addr + self._block_words(P, ob, ins.res_stride),
                                          "epilogue residual")
            p.r = _act_blocks(self._bufs[Buffer.ACT], ins.res_addr, ins.res_stride, ob, P, M)
            p.res = ResidualParams(ins.zp_mid, ins.zp_res, ins.res_mult_a, ins.res_mult_b, ins.res_shift)
        p.acc = self._bufs[Buffer.ACC][p.acc_idx].reshape(ob, P, M)
        p.prm = self._bufs[Buffer.PARAM][p.p_idx]                 # [block][channel][field]
        # [block][pixel][channel] of the output words; overlapping pixels keep the index form's order.
        p.out = (_act_blocks(self._bufs[Buffer.ACT], ins.out_addr, ins.out_stride, ob, P, M)
                 if ins.out_stride >= dense else None)
        return p

    def exec_epilogue(self, ins: Instruction, plan=None):
        p = plan or self._plan_epilogue(ins)
        if self._clocks is not None:
            self._touch(Buffer.ACC, p.acc_idx, False)
            self._touch(Buffer.PARAM, p.p_idx, False)
            if p.res is not None:
                self._touch(Buffer.ACT, p.r_idx, False)
            self._touch(Buffer.ACT, p.out_idx, True)
        out = p.out if p.out is not None else np.empty(p.acc.shape, np.int8)
        key = p.prm.tobytes()
        if key != p.prm_key:
            p.chan, p.prm_key = self._channel_params(key, p.prm, p.pixels), key
        if p.res is None:
            requantize_into(out, p.acc, p.chan, p.zp_out, p.lo, p.hi)
        else:
            residual_into(out, p.acc, p.chan, p.r, p.res, p.zp_out, p.lo, p.hi)
        if p.out is None:
            self._bufs[Buffer.ACT][p.out_idx.reshape(-1)] = out.reshape(-1, self.config.lanes)

    def _channel_params(self, key: bytes, prm: np.ndarray, pixels: int) -> ChannelParams:
        """ChannelParams of these PARAM words, kept per content (one EPILOGUE word may serve many layers)."""
        ch = self._chans.get((key, pixels))
        if ch is None:
            if len(self._chans) > 4096:
                self._chans.clear()
            ch = self._chans[(key, pixels)] = ChannelParams(prm, pixels)
        return ch

    def _block_words(self, P: int, ob: int, stride: int) -> np.ndarray:
        """ACT word offsets [block][pixel][word] of ``ob`` blocks of ``P`` pixels, ``stride`` words apart."""
        k = self.config.words_per_block
        return (np.arange(P, dtype=np.int64)[None, :, None] * stride
                + (np.arange(ob, dtype=np.int64)[:, None, None] * k + np.arange(k, dtype=np.int64)[None, None, :]))

    def _plan_pool(self, ins: Instruction):
        cw = ins.cb * self.config.lanes
        fl32 = ins.mode == PoolMode.AVG and bool(ins.fl32)
        if fl32 and not self.config.pool_fl32:
            self._fail(ErrorCode.BAD_FIELD, f"pool: fl32 on config {self.config.name}, built without pool_fl32")
        p = _Plan(in_idx=self._span(Buffer.ACT, ins.in_addr, ins.in_h * ins.in_w * ins.cb, "pool input tile"),
                  out_idx=self._span(Buffer.ACT, ins.out_addr, ins.out_h * ins.out_w * ins.cb, "pool output tile"),
                  max=ins.mode == PoolMode.MAX, taps=ins.k_h * ins.k_w, src=None)
        x = self._bufs[Buffer.ACT][p.in_idx].reshape(ins.in_h, ins.in_w, cw)
        p.out = self._bufs[Buffer.ACT][p.out_idx].reshape(ins.out_h, ins.out_w, cw)
        span_h = (ins.out_h - 1) * ins.stride_h + ins.k_h
        span_w = (ins.out_w - 1) * ins.stride_w + ins.k_w
        # MAX pads with -128: it never beats a tap inside the tile and is the answer when none is.
        # AVG pads with zp_in, which adds 0 to the sum of (x - zp_in).
        canvas = (np.full((span_h, span_w, cw), -128, np.int8) if p.max
                  else np.full((span_h, span_w, cw), ins.zp_in, np.int32))
        y0, y1 = max(0, ins.pad_t), min(span_h, ins.pad_t + ins.in_h)
        x0, x1 = max(0, ins.pad_l), min(span_w, ins.pad_l + ins.in_w)
        if y0 < y1 and x0 < x1:
            p.src = x[y0 - ins.pad_t:y1 - ins.pad_t, x0 - ins.pad_l:x1 - ins.pad_l]
            p.dst = canvas[y0:y1, x0:x1]
        p.views = [canvas[ky:ky + (ins.out_h - 1) * ins.stride_h + 1:ins.stride_h,
                          kx:kx + (ins.out_w - 1) * ins.stride_w + 1:ins.stride_w]
                   for ky in range(ins.k_h) for kx in range(ins.k_w)]
        p.y = np.empty(p.out.shape, canvas.dtype)
        p.zp_in, p.zp_out, p.mult, p.shift, p.fl32 = ins.zp_in, ins.zp_out, ins.mult, ins.shift, fl32
        p.zp_float = ins.zp_ort if ins.fl32_zp else None
        return p

    def exec_pool(self, ins: Instruction, plan=None):
        p = plan or self._plan_pool(ins)
        if self._clocks is not None:
            self._touch(Buffer.ACT, p.in_idx, False)
            self._touch(Buffer.ACT, p.out_idx, True)
        if p.src is not None:
            np.copyto(p.dst, p.src)
        if p.fl32:
            # pool_avg_fl32 needs the taps themselves (it forms the window sum too).
            q = pool_avg_fl32(np.stack(p.views) - p.zp_in, p.mult, p.shift, p.zp_float) + p.zp_out
            np.copyto(p.out, np.clip(q, -128, 127), casting="unsafe")
            return
        y = p.y
        np.copyto(y, p.views[0])
        for v in p.views[1:]:
            if p.max:
                np.maximum(y, v, out=y)
            else:
                np.add(y, v, out=y)
        if p.max:
            np.copyto(p.out, y)
        else:
            total = y.astype(np.int64) - p.zp_in * p.taps
            q = round_shift(scale_product(total, p.mult), p.shift) + p.zp_out
            np.copyto(p.out, np.clip(q, -128, 127), casting="unsafe")

    def exec_sync(self, ins: Instruction, plan=None):
        pass

    def exec_end(self, ins: Instruction, plan=None):
        # END never reaches a unit: fetch consumes it (see run()).
        pass


def _no_plan(ins):
    return ()


#: Bound on the weight matrices kept by Emulator._weight_matrix (with their raw copies).
_WMAT_CACHE_BYTES = 512 << 20
#: Weight matrices held prepacked by onnxruntime sessions, at most (about as many bytes again inside them).
_PREPARED_BYTES = 256 << 20


class _Buffers(dict):
    """``Emulator.buffers``: the on-chip buffers by :class:`~tessera.isa.Buffer`. Reading the WGT buffer first
    applies the WGT LOADs a replay skipped (see tessera.sim.replay), so it always shows what a full run leaves."""

    def __init__(self, emu: Emulator):
        super().__init__(emu._bufs)
        self._emu = emu

    def __getitem__(self, buf):
        if buf is Buffer.WGT and self._emu._pending:
            self._emu._materialize()
        return super().__getitem__(buf)

    def get(self, buf, default=None):
        return self[buf] if buf in self else default

    def values(self):
        self._emu._materialize()
        return super().values()

    def items(self):
        self._emu._materialize()
        return super().items()


class _Plan:
    """Per-instruction state that depends only on its fields (see the exec_ section of Emulator)."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


def _byte_rows(buf: np.ndarray, wb: int, addr: int, rows: int, stride: int, nbytes: int) -> np.ndarray:
    """[row][byte] view of ``rows`` runs of ``nbytes`` bytes of ``buf``, ``stride`` words apart from word ``addr``."""
    flat = buf.reshape(buf.shape[0], -1).view(np.uint8)
    assert flat.shape[1] == wb, "buffer word size disagrees with the config"
    return np.lib.stride_tricks.as_strided(flat[addr:], shape=(rows, nbytes),
                                           strides=(stride * wb if rows > 1 else nbytes, 1))


def _act_blocks(act: np.ndarray, addr: int, stride: int, ob: int, P: int, M: int) -> np.ndarray:
    """[block][pixel][channel] view of ACT: block b, pixel p at word ``addr + p*stride + b*M/lanes``."""
    lanes = act.shape[1]
    return np.lib.stride_tricks.as_strided(act.reshape(-1)[addr * lanes:], shape=(ob, P, M),
                                           strides=(M, stride * lanes, 1))
