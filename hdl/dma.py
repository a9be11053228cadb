"""LOAD and STORE: 2-D strided DMA between the external memory port and the on-chip buffers."""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, fifo, wiring
from amaranth.lib.wiring import In, Out

from tessera.arch import NpuConfig
from tessera.isa import INSTR_BITS, Buffer, ErrorCode, Opcode, layout

from .common import (
    BufReadSignature,
    BufWriteSignature,
    ReadClientSignature,
    UnitSignature,
    WriteClientSignature,
    log2,
    word_bits,
)

__all__ = ["LoadDma", "StoreDma", "write_lanes"]


def write_lanes(c: NpuConfig, buf: Buffer) -> int:
    """Write-enable slices of a buffer word: one per bus beat when a word spans several beats."""
    return max(1, c.word_bytes(buf) // c.bus_bytes)


def _checks(m, c: NpuConfig, ins, wb, depth):
    """(misaligned, dram_range, buffer_range) of a DMA instruction, as the emulator orders them."""
    align = Mux(wb < c.bus_bytes, wb, c.bus_bytes)
    mis = ((ins.dram_addr & (align - 1)) != 0) | ((ins.rows > 1) & ((ins.dram_stride & (align - 1)) != 0))
    end = Signal(52)
    m.d.comb += end.eq(ins.dram_addr + (ins.rows - 1) * ins.dram_stride + ins.cols * wb)
    dram = end > c.dram_bytes
    bufr = ins.buf_addr + (ins.rows - 1) * ins.buf_stride + ins.cols > depth
    return mis, dram, bufr


def _check_then_run(m, ctl, running, walker, bad_buf, mis, dram, bufr):
    """The CHECK state of LOAD and STORE: stop with the first fault in the emulator's order
    (buffer kind, alignment, DRAM range, buffer range), else start the transfer."""
    code = Mux(bad_buf, ErrorCode.BAD_FIELD.value, Mux(mis, ErrorCode.MISALIGNED.value,
               Mux(dram, ErrorCode.DRAM_RANGE.value, ErrorCode.BUFFER_RANGE.value)))
    with m.If(bad_buf | mis | dram | bufr):
        m.d.comb += [ctl.err.eq(1), ctl.err_code.eq(code)]
        m.d.sync += running.eq(0)
        m.next = "IDLE"
    with m.Else():
        walker.start(m)
        m.next = "RUN"


class _Walker:
    """Row/column/beat counters of a 2-D transfer and the addresses they name."""

    def __init__(self, m, ins, wb, bpw):
        self.r, self.col, self.e = Signal(16), Signal(16), Signal(16)
        self.row_dram, self.word_dram = Signal(34), Signal(34)
        self.row_buf, self.word_buf = Signal(32), Signal(32)
        self.active = Signal()
        self.last_e = self.e == bpw - 1
        self.last_col = self.col == ins.cols - 1
        self.last_r = self.r == ins.rows - 1
        self.ins, self.wb = ins, wb

    def start(self, m):
        ins = self.ins
        m.d.sync += [self.r.eq(0), self.col.eq(0), self.e.eq(0), self.row_dram.eq(ins.dram_addr),
                     self.word_dram.eq(ins.dram_addr), self.row_buf.eq(ins.buf_addr),
                     self.word_buf.eq(ins.buf_addr), self.active.eq(1)]

    def advance(self, m):
        ins = self.ins
        m.d.sync += self.e.eq(Mux(self.last_e, 0, self.e + 1))
        with m.If(self.last_e):
            with m.If(self.last_col):
                m.d.sync += [self.col.eq(0), self.r.eq(self.r + 1),
                             self.row_dram.eq(self.row_dram + ins.dram_stride),
                             self.word_dram.eq(self.row_dram + ins.dram_stride),
                             self.row_buf.eq(self.row_buf + ins.buf_stride),
                             self.word_buf.eq(self.row_buf + ins.buf_stride)]
                with m.If(self.last_r):
                    m.d.sync += self.active.eq(0)
            with m.Else():
                m.d.sync += [self.col.eq(self.col + 1), self.word_dram.eq(self.word_dram + self.wb),
                             self.word_buf.eq(self.word_buf + 1)]


class LoadDma(wiring.Component):
    """LOAD: beats stream in (up to ``mem_outstanding`` in flight) and are written as they arrive.

    A word wider than the bus is written one beat-wide slice at a time; a word
    narrower than the bus is cut out of its beat. Each request's destination
    travels in a FIFO beside the memory's in-order responses.
    """

    def __init__(self, config: NpuConfig):
        self.config = c = config
        super().__init__({
            "ctl": In(UnitSignature()),
            "mem": Out(ReadClientSignature(c)),
            "act_wr": Out(BufWriteSignature(c.abuf_words, word_bits(c, Buffer.ACT), write_lanes(c, Buffer.ACT))),
            "wgt_wr": Out(BufWriteSignature(c.wbuf_words, word_bits(c, Buffer.WGT), write_lanes(c, Buffer.WGT))),
            "prm_wr": Out(BufWriteSignature(c.pbuf_words, word_bits(c, Buffer.PARAM), write_lanes(c, Buffer.PARAM))),
        })

    def elaborate(self, platform):
        m = Module()
        c = self.config
        B = c.bus_bytes
        ir = Signal(INSTR_BITS)
        ins = data.View(layout(Opcode.LOAD), ir)
        with m.If(self.ctl.start):
            m.d.sync += ir.eq(self.ctl.instr)
        bufs = (Buffer.ACT, Buffer.WGT, Buffer.PARAM)
        sel = {b: ins.buf == b for b in bufs}

        def per_buf(fn):
            v = fn(Buffer.ACT)
            for b in (Buffer.WGT, Buffer.PARAM):
                v = Mux(sel[b], fn(b), v)
            return v

        wb = Signal(16)
        bpw = Signal(16)
        depth = Signal(17)
        m.d.comb += [wb.eq(per_buf(c.word_bytes)), bpw.eq(per_buf(lambda b: write_lanes(c, b))),
                     depth.eq(per_buf(c.buffer_words))]
        mis, dram, bufr = _checks(m, c, ins, wb, depth)

        w = _Walker(m, ins, wb, bpw)
        m.submodules.meta = meta = fifo.SyncFIFO(width=32 + 16, depth=c.mem_outstanding)
        inflight = Signal(range(c.mem_outstanding + 1))
        running = Signal()
        m.d.comb += self.ctl.busy.eq(running)

        # Requests.
        byte = Signal(34)
        m.d.comb += byte.eq(w.word_dram + w.e * B)
        can = w.active & (inflight < c.mem_outstanding) & meta.w_rdy
        m.d.comb += [self.mem.req.valid.eq(can), self.mem.req.payload.eq(byte >> log2(B))]
        chunk = Mux(wb < B, (byte & (B - 1)) // Mux(wb < B, wb, 1), w.e)
        m.d.comb += [meta.w_data.eq(Cat(w.word_buf[:32], chunk[:16])), meta.w_en.eq(self.mem.req.valid & self.mem.req.ready)]
        with m.If(self.mem.req.valid & self.mem.req.ready):
            w.advance(m)
        got = self.mem.resp.valid
        m.d.sync += inflight.eq(inflight + (self.mem.req.valid & self.mem.req.ready) - got)
        m.d.comb += self.ctl.stall.eq(self.mem.req.valid & ~self.mem.req.ready)
        m.d.comb += self.ctl.progress.eq((self.mem.req.valid & self.mem.req.ready) | got)

        # Responses: write the beat into the buffer word it belongs to.
        m.d.comb += meta.r_en.eq(got)
        waddr, wchunk = meta.r_data[:32], meta.r_data[32:48]
        beat = self.mem.resp.payload
        for b, port in ((Buffer.ACT, self.act_wr), (Buffer.WGT, self.wgt_wr), (Buffer.PARAM, self.prm_wr)):
            bw = c.word_bytes(b)
            m.d.comb += port.addr.eq(waddr)
            if bw >= B:
                m.d.comb += [port.data.eq(Cat(*([beat] * (bw // B)))),
                             port.en.eq(Mux(got & sel[b], Const(1, bw // B) << wchunk[:max(1, (bw // B - 1).bit_length())], 0))]
            else:
                m.d.comb += [port.data.eq(beat.word_select(wchunk[:log2(B // bw)], 8 * bw)),
                             port.en.eq(got & sel[b])]

        with m.FSM():
            with m.State("IDLE"), m.If(self.ctl.start):
                m.d.sync += running.eq(1)
                m.next = "CHECK"
            with m.State("CHECK"):
                _check_then_run(m, self.ctl, running, w, ins.buf == Buffer.ACC, mis, dram, bufr)
            with m.State("RUN"), m.If(~w.active & (inflight == 0)):
                m.d.comb += self.ctl.done.eq(1)
                m.d.sync += running.eq(0)
                m.next = "IDLE"
        return m


class StoreDma(wiring.Component):
    """STORE: ACT words are read into a small FIFO and leave as bus beats with byte strobes."""

    def __init__(self, config: NpuConfig):
        self.config = c = config
        super().__init__({
            "ctl": In(UnitSignature()),
            "mem": Out(WriteClientSignature(c)),
            "act_rd": Out(BufReadSignature(c.abuf_words, word_bits(c, Buffer.ACT))),
        })

    def elaborate(self, platform):
        m = Module()
        c = self.config
        B, N = c.bus_bytes, c.act_word_bytes
        ir = Signal(INSTR_BITS)
        ins = data.View(layout(Opcode.STORE), ir)
        with m.If(self.ctl.start):
            m.d.sync += ir.eq(self.ctl.instr)
        mis, dram, bufr = _checks(m, c, ins, Const(N, 16), c.abuf_words)
        w = _Walker(m, ins, N, 1)
        fd = 4
        m.submodules.q = q = fifo.SyncFIFO(width=8 * N + 34, depth=fd)
        running = Signal()
        m.d.comb += self.ctl.busy.eq(running)

        # Reads: one ACT word per cycle while the FIFO has room for it.
        pending = Signal()
        rd_dram = Signal(34)
        issue = w.active & (q.level + pending < fd - 1)
        m.d.comb += self.act_rd.addr.eq(w.word_buf)
        m.d.sync += [pending.eq(issue), rd_dram.eq(w.word_dram)]
        with m.If(issue):
            w.advance(m)
        m.d.comb += [q.w_en.eq(pending), q.w_data.eq(Cat(self.act_rd.data, rd_dram))]

        # Beats.
        word, addr = q.r_data[:8 * N], q.r_data[8 * N:8 * N + 34]
        req = self.mem.req
        m.d.comb += req.valid.eq(q.r_rdy)
        if N >= B:
            e = Signal(range(N // B))
            m.d.comb += [req.payload.addr.eq((addr >> log2(B)) + e), req.payload.data.eq(word.word_select(e, 8 * B)),
                         req.payload.strb.eq(-1)]
            last = e == N // B - 1
            with m.If(req.valid & req.ready):
                m.d.sync += e.eq(Mux(last, 0, e + 1))
        else:
            off = addr[:log2(B)]
            m.d.comb += [req.payload.addr.eq(addr >> log2(B)),
                         req.payload.data.eq(word << (off * 8)),
                         req.payload.strb.eq(Const((1 << N) - 1, B) << off)]
            last = 1
        m.d.comb += q.r_en.eq(req.valid & req.ready & last)
        m.d.comb += [self.ctl.stall.eq(req.valid & ~req.ready), self.ctl.progress.eq(req.valid & req.ready)]

        with m.FSM():
            with m.State("IDLE"), m.If(self.ctl.start):
                m.d.sync += running.eq(1)
                m.next = "CHECK"
            with m.State("CHECK"):
                _check_then_run(m, self.ctl, running, w, ins.buf != Buffer.ACT, mis, dram, bufr)
            with m.State("RUN"), m.If(~w.active & ~pending & ~q.r_rdy):
                m.d.comb += self.ctl.done.eq(1)
                m.d.sync += running.eq(0)
                m.next = "IDLE"
        return m
