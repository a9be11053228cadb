"""Bit-exact functional model of the NPU: the golden model.

The emulator fetches instructions from its external-memory image exactly as
the hardware does, dispatches them to the four unit queues (bounded by
``queue_depth``), and executes them one whole instruction at a time with
numpy. Units are interleaved deterministically (the ready head with the lowest
address goes first) while dependency tokens and queue bounds are honoured, so
a program that deadlocks on hardware deadlocks here too. With
``check_hazards=True`` every buffer and external-memory access is also checked
for races that the tokens leave open (see :mod:`tessera.sim.hazards`).
"""

from __future__ import annotations

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
from tessera.numerics import requantize, round_shift, unpack_weights, wrap32
from tessera.program import Program

from .hazards import HazardError, HazardTracker, VectorClocks

__all__ = ["Emulator", "NpuError", "RunStats", "HazardError"]


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
    """

    def __init__(self, config: NpuConfig, *, check_hazards: bool = False):
        self.config = c = config
        self.check_hazards = check_hazards
        self.dram = np.zeros(c.dram_bytes, dtype=np.uint8)
        self.buffers = {
            Buffer.ACT: np.zeros((c.abuf_words, c.lanes), dtype=np.int8),
            Buffer.WGT: np.zeros((c.wbuf_words, c.rows, c.lanes), dtype=np.int8),
            Buffer.ACC: np.zeros((c.accbuf_words, c.rows), dtype=np.int32),
            Buffer.PARAM: np.zeros((c.pbuf_words, c.rows, len(PARAM_FIELDS)), dtype=np.int32),
        }
        self._exec = {op: getattr(self, f"exec_{op.name.lower()}") for op in Opcode}
        self._decoded: dict[bytes, tuple | None] = {}
        self.stats = RunStats()

    # ---- host access ----------------------------------------------------------

    def write(self, addr: int, data) -> None:
        data = np.frombuffer(bytes(data), dtype=np.uint8)
        if addr < 0 or addr + data.size > self.dram.size:
            raise ValueError(f"write of {data.size} bytes at 0x{addr:x} is outside external memory "
                             f"({self.dram.size} bytes)")
        self.dram[addr:addr + data.size] = data

    def read(self, addr: int, n: int) -> bytes:
        if addr < 0 or addr + n > self.dram.size:
            raise ValueError(f"read of {n} bytes at 0x{addr:x} is outside external memory")
        return self.dram[addr:addr + n].tobytes()

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
        nu = len(Unit)
        queues = [deque() for _ in range(nu)]
        tokens = [0] * (nu * nu)          # tokens[src * nu + dst]
        depth, qdepth = c.token_depth, c.queue_depth
        self._clocks = VectorClocks() if self.check_hazards else None
        self._trackers = {}
        counts = {}
        pc = prog_addr
        fetching = True
        executed = 0
        while True:
            while fetching:
                e = self._fetch(pc)
                if e is None:
                    fetching = False
                    break
                if len(queues[e[1]]) >= qdepth:
                    break
                queues[e[1]].append((pc, e))
                pc += INSTR_BYTES
            # Among the heads that can start, the oldest goes first (deterministic).
            best = None
            for u in range(nu):
                q = queues[u]
                if not q:
                    continue
                ipc, (ins, _, waits, sigs, fn) = q[0]
                if best is not None and ipc > best[0]:
                    continue
                if all(tokens[s * nu + u] for s in waits) and all(tokens[u * nu + d] < depth for d in sigs):
                    best = (ipc, u)
            if best is None:
                if not fetching and not any(queues):
                    break
                self._deadlock(queues, pc, fetching)
            ipc, u = best
            _, (ins, _, waits, sigs, fn) = queues[u].popleft()
            for s in waits:
                tokens[s * nu + u] -= 1
            if self._clocks is not None:
                self._vc = self._clocks.start(u, list(waits))
                self._where = f"instruction 0x{ipc:x} ({ins.op.name})"
                self._unit = u
            self._pc = ipc
            fn(ins)
            for d in sigs:
                tokens[u * nu + d] += 1
            if self._clocks is not None:
                self._clocks.signal(u, list(sigs), self._vc)
            counts[ins.op] = counts.get(ins.op, 0) + 1
            executed += 1
            if executed > max_instructions:
                raise NpuError(ErrorCode.WATCHDOG, ipc, f"more than {max_instructions} instructions executed")
        self.stats.instructions = executed
        self.stats.by_opcode = {op.name: n for op, n in counts.items()}
        self.stats.by_opcode["END"] = 1
        self.stats.seconds = time.perf_counter() - t0
        return self.stats

    def _deadlock(self, queues, pc, fetching):
        heads = [(q[0][0], Unit(u), q[0][1][0]) for u, q in enumerate(queues) if q]
        hpc, hu, hins = min(heads, key=lambda t: t[0]) if heads else (pc, None, None)
        blocked = (f"unit {hu.name} waits for tokens from "
                   f"{','.join(u.name for u in mask_units(hins.wait)) or '-'} "
                   f"or for room to signal {','.join(u.name for u in mask_units(hins.signal)) or '-'}"
                   if hu is not None else "no unit can start")
        raise NpuError(ErrorCode.DEADLOCK, hpc, f"deadlock: {blocked}; fetch is "
                       f"{'blocked at 0x%x' % pc if fetching else 'finished'}")

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
        entry = None if ins.op == Opcode.END else (
            ins, unit.value, tuple(u.value for u in mask_units(ins.wait)),
            tuple(u.value for u in mask_units(ins.signal)), self._exec[ins.op])
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
        return np.lib.stride_tricks.as_strided(self.dram[ins.dram_addr:], shape=(ins.rows, nbytes),
                                               strides=(stride, 1), writeable=True)

    def _dram_words(self, row_starts, nbytes):
        bus = self.config.bus_bytes
        first = row_starts // bus
        n = int((-(-(row_starts % bus + nbytes) // bus)).max())
        return (first[:, None] + np.arange(n, dtype=np.int64)[None, :]).reshape(-1)

    # ---- one exec_ per opcode ------------------------------------------------------

    def exec_load(self, ins: Instruction):
        c = self.config
        if ins.buf == Buffer.ACC:
            self._fail(ErrorCode.BAD_FIELD, "load: buf=acc is not a DMA target (act, wgt or param)")
        wb, bidx, row_starts = self._dma_geometry(ins)
        nbytes = ins.cols * wb
        raw = self._dram_rows(ins, nbytes).copy()
        if self._clocks is not None:
            self._touch(None, self._dram_words(row_starts, nbytes), False)
        self._touch(ins.buf, bidx, True)
        if ins.buf == Buffer.ACT:
            words = raw.view(np.int8).reshape(ins.rows, ins.cols, c.lanes)
        elif ins.buf == Buffer.WGT:
            words = unpack_weights(raw.reshape(-1), c.weight_bits).reshape(ins.rows, ins.cols, c.rows, c.lanes)
        else:
            words = raw.reshape(-1).view("<i4").reshape(ins.rows, ins.cols, c.rows, len(PARAM_FIELDS))
        if isinstance(bidx, slice):
            self.buffers[ins.buf][bidx] = words.reshape((ins.rows * ins.cols,) + words.shape[2:])
        else:
            self.buffers[ins.buf][bidx] = words
        self.stats.dram_read_bytes += raw.size

    def exec_store(self, ins: Instruction):
        if ins.buf != Buffer.ACT:
            self._fail(ErrorCode.BAD_FIELD, f"store: buf={ins.buf.name.lower()}; only act can be stored")
        wb, bidx, row_starts = self._dma_geometry(ins)
        data = self.buffers[Buffer.ACT][bidx].view(np.uint8).reshape(ins.rows, ins.cols * wb)  # slice or gather
        self._touch(Buffer.ACT, bidx, False)
        if self._clocks is not None:
            self._touch(None, self._dram_words(row_starts, ins.cols * wb), True)
        if ins.rows == 1 or ins.dram_stride >= ins.cols * wb:
            self._dram_rows(ins, ins.cols * wb)[...] = data
        else:
            # Rows are written in order, so overlapping rows end with the last one.
            for r in range(ins.rows):
                s = int(row_starts[r])
                self.dram[s:s + ins.cols * wb] = data[r]
        self.stats.dram_write_bytes += data.size

    def exec_conv(self, ins: Instruction):
        c = self.config
        N, M = c.lanes, c.rows
        taps = ins.k_h * ins.k_w
        cw = ins.in_cb * N
        P = ins.out_h * ins.out_w
        in_idx = self._span(Buffer.ACT, ins.in_addr, ins.in_h * ins.in_w * ins.in_cb, "conv input tile")
        w_idx = self._span(Buffer.WGT, ins.w_addr, ins.ob_count * taps * ins.in_cb, "conv weights")
        acc_idx = self._span(Buffer.ACC, ins.acc_addr, ins.ob_count * P, "conv accumulators")
        self._touch(Buffer.ACT, in_idx, False)
        self._touch(Buffer.WGT, w_idx, False)
        if ins.accumulate:
            self._touch(Buffer.ACC, acc_idx, False)
        self._touch(Buffer.ACC, acc_idx, True)

        x = self.buffers[Buffer.ACT][in_idx].reshape(ins.in_h, ins.in_w, cw)
        span_h = (ins.out_h - 1) * ins.stride_h + (ins.k_h - 1) * ins.dil_h + 1
        span_w = (ins.out_w - 1) * ins.stride_w + (ins.k_w - 1) * ins.dil_w + 1
        canvas = np.full((span_h, span_w, cw), ins.pad_value, dtype=np.int8)
        # Canvas row i holds input row i - pad_t.
        y0, y1 = max(0, ins.pad_t), min(span_h, ins.pad_t + ins.in_h)
        x0, x1 = max(0, ins.pad_l), min(span_w, ins.pad_l + ins.in_w)
        if y0 < y1 and x0 < x1:
            canvas[y0:y1, x0:x1] = x[y0 - ins.pad_t:y1 - ins.pad_t, x0 - ins.pad_l:x1 - ins.pad_l]
        cols = np.empty((P, taps, cw), dtype=np.int8)
        for ky in range(ins.k_h):
            for kx in range(ins.k_w):
                ys, xs = ky * ins.dil_h, kx * ins.dil_w
                v = canvas[ys:ys + (ins.out_h - 1) * ins.stride_h + 1:ins.stride_h,
                           xs:xs + (ins.out_w - 1) * ins.stride_w + 1:ins.stride_w]
                cols[:, ky * ins.k_w + kx] = v.reshape(P, cw)
        w = self.buffers[Buffer.WGT][w_idx].reshape(ins.ob_count, taps, ins.in_cb, M, N)
        wmat = w.transpose(1, 2, 4, 0, 3).reshape(taps * cw, ins.ob_count * M)
        k = taps * cw
        cols = cols.reshape(P, k)
        live = wmat.any(axis=1)
        if not live.all():
            # Input lanes whose weights are all zero (channel padding) add nothing: leave them out.
            cols, wmat = cols[:, live], wmat[live]
            k = int(live.sum())
        # float32 GEMM is exact while every partial sum stays below 2**24: split the reduction into
        # chunks that keep it so, and add the (exact, integer) chunk results in float64.
        a = cols.astype(np.float32)
        wf = wmat.astype(np.float32)
        per = int(np.abs(cols).max(initial=0)) * int(np.abs(wmat).max(initial=0))
        chunk = max(1, ((1 << 24) - 1) // per) if per else k
        if chunk >= k:
            prod = a @ wf
        else:
            prod = np.zeros((P, wf.shape[1]), dtype=np.float64)
            for k0 in range(0, k, chunk):
                prod += a[:, k0:k0 + chunk] @ wf[k0:k0 + chunk]
        res = np.rint(prod).astype(np.int64).reshape(P, ins.ob_count, M).transpose(1, 0, 2).reshape(-1, M)
        acc = self.buffers[Buffer.ACC]
        if ins.accumulate:
            res = res + acc[acc_idx]
        acc[acc_idx] = wrap32(res).astype(np.int32)
        self.stats.macs += P * taps * ins.in_cb * ins.ob_count * M * N

    def exec_epilogue(self, ins: Instruction):
        c = self.config
        N, M = c.lanes, c.rows
        k = c.words_per_block
        ob, P = ins.ob_count, ins.pixels
        acc_idx = self._span(Buffer.ACC, ins.acc_addr, ob * P, "epilogue accumulators")
        p_idx = self._span(Buffer.PARAM, ins.param_addr, ob, "epilogue parameters")
        dense = ob * k                 # words per pixel when the output (or residual) is packed
        if ins.out_stride == dense:
            out_idx = self._span(Buffer.ACT, ins.out_addr, P * dense, "epilogue output")
        else:
            out_idx = self._buf_index(Buffer.ACT, ins.out_addr + self._block_words(P, ob, ins.out_stride),
                                      "epilogue output")
        self._touch(Buffer.ACC, acc_idx, False)
        self._touch(Buffer.PARAM, p_idx, False)
        acc = self.buffers[Buffer.ACC][acc_idx].astype(np.int64).reshape(ob, P, M)
        prm = self.buffers[Buffer.PARAM][p_idx].astype(np.int64)[:, None, :, :]
        bias, mult, shift = prm[..., 0], prm[..., 1], prm[..., 2]
        if not ins.residual:
            y = requantize(acc, bias, mult, shift, ins.zp_out, ins.out_min, ins.out_max)
        else:
            if ins.res_stride == dense:
                r_idx = self._span(Buffer.ACT, ins.res_addr, P * dense, "epilogue residual")
                # Pixel-major words, viewed block-major like the accumulators.
                r = self.buffers[Buffer.ACT][r_idx].reshape(P, ob, M).transpose(1, 0, 2).astype(np.int64)
            else:
                r_idx = self._buf_index(Buffer.ACT, ins.res_addr + self._block_words(P, ob, ins.res_stride),
                                        "epilogue residual")
                r = self.buffers[Buffer.ACT][r_idx].astype(np.int64).reshape(ob, P, M)
            self._touch(Buffer.ACT, r_idx, False)
            a = requantize(acc, bias, mult, shift, ins.zp_mid)
            s = (a - ins.zp_mid) * ins.res_mult_a + (r - ins.zp_res) * ins.res_mult_b
            y = np.minimum(np.maximum(round_shift(s, ins.res_shift) + ins.zp_out, ins.out_min), ins.out_max)
        self._touch(Buffer.ACT, out_idx, True)
        if isinstance(out_idx, slice):
            self.buffers[Buffer.ACT][out_idx] = y.transpose(1, 0, 2).reshape(-1, N).astype(np.int8)
        else:
            self.buffers[Buffer.ACT][out_idx.reshape(-1)] = y.reshape(-1, N).astype(np.int8)

    def _block_words(self, P: int, ob: int, stride: int) -> np.ndarray:
        """ACT word offsets [block][pixel][word] of ``ob`` blocks of ``P`` pixels, ``stride`` words apart."""
        k = self.config.words_per_block
        return (np.arange(P, dtype=np.int64)[None, :, None] * stride
                + (np.arange(ob, dtype=np.int64)[:, None, None] * k + np.arange(k, dtype=np.int64)[None, None, :]))

    def exec_pool(self, ins: Instruction):
        c = self.config
        N = c.lanes
        cw = ins.cb * N
        in_idx = self._buf_index(Buffer.ACT, ins.in_addr + np.arange(ins.in_h * ins.in_w * ins.cb, dtype=np.int64),
                                 "pool input tile")
        out_idx = self._buf_index(Buffer.ACT, ins.out_addr + np.arange(ins.out_h * ins.out_w * ins.cb, dtype=np.int64),
                                  "pool output tile")
        self._touch(Buffer.ACT, in_idx, False)
        x = self.buffers[Buffer.ACT][in_idx].reshape(ins.in_h, ins.in_w, cw).astype(np.int64)
        span_h = (ins.out_h - 1) * ins.stride_h + ins.k_h
        span_w = (ins.out_w - 1) * ins.stride_w + ins.k_w
        fill = -(1 << 20) if ins.mode == PoolMode.MAX else ins.zp_in
        canvas = np.full((span_h, span_w, cw), fill, dtype=np.int64)
        y0, y1 = max(0, ins.pad_t), min(span_h, ins.pad_t + ins.in_h)
        x0, x1 = max(0, ins.pad_l), min(span_w, ins.pad_l + ins.in_w)
        if y0 < y1 and x0 < x1:
            canvas[y0:y1, x0:x1] = x[y0 - ins.pad_t:y1 - ins.pad_t, x0 - ins.pad_l:x1 - ins.pad_l]
        views = [canvas[ky:ky + (ins.out_h - 1) * ins.stride_h + 1:ins.stride_h,
                        kx:kx + (ins.out_w - 1) * ins.stride_w + 1:ins.stride_w]
                 for ky in range(ins.k_h) for kx in range(ins.k_w)]
        if ins.mode == PoolMode.MAX:
            y = np.maximum(np.max(views, axis=0), -128)
        else:
            total = np.sum(views, axis=0) - ins.zp_in * len(views)
            y = np.clip(round_shift(total * ins.mult, ins.shift) + ins.zp_out, -128, 127)
        self._touch(Buffer.ACT, out_idx, True)
        self.buffers[Buffer.ACT][out_idx] = y.reshape(-1, N).astype(np.int8)

    def exec_sync(self, ins: Instruction):
        pass

    def exec_end(self, ins: Instruction):
        # END never reaches a unit: fetch consumes it (see run()).
        pass
