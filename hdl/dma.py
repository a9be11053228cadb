"""LOAD and STORE: 2-D strided DMA between the external memory port and the on-chip buffers."""

from __future__ import annotations

from typing import ClassVar

from amaranth.hdl import Cat, Const, Module, Mux, ResetInserter, Signal
from amaranth.lib import data, fifo, wiring
from amaranth.lib.wiring import In, Out

from tessera.arch import NpuConfig
from tessera.isa import Buffer, ErrorCode, Opcode, layout

from .common import (
    BufReadSignature,
    BufWriteSignature,
    CheckStages,
    ReadClientSignature,
    UnitSignature,
    WriteClientSignature,
    delay,
    instr_copy,
    instr_register,
    last_flag,
    load_instr,
    log2,
    narrow_mul,
    register_copies,
    registered_hard_product,
    word_bits,
)

__all__ = ["LoadDma", "StoreDma", "beat_copies", "wgt_groups", "words_per_beat", "write_lanes"]


def write_lanes(c: NpuConfig, buf: Buffer) -> int:
    """Write-enable slices of a buffer word: one per bus beat when a word spans several beats."""
    return max(1, c.word_bytes(buf) // c.bus_bytes)


def beat_copies(c: NpuConfig, buf: Buffer) -> int:
    """Registers LOAD keeps a response beat in when ``timing_stages`` registers the writes of a
    buffer whose words span several beats: beat ``j`` of the word comes from copy
    ``j * copies // write_lanes``, so each copy feeds a contiguous share of the word's block RAMs."""
    return min(4, write_lanes(c, buf))


def wgt_groups(c: NpuConfig) -> int:
    """Column groups of the WGT buffer (hdl/buffers.py), each with its own copy of CONV's read address
    and of LOAD's write address (``timing_stages``).

    One registered address drove every block RAM of the WGT word (29 DP16KD at 128 MACs, 120 at
    512) across the die: 16.6 ns of wire, the routed critical path (docs/synthesis.md, session 17;
    the write address, session 19). A group is a whole number of bus beats and takes one of LOAD's
    registered beat copies (:func:`beat_copies`).
    """
    beats, n = write_lanes(c, Buffer.WGT), beat_copies(c, Buffer.WGT)
    return n if c.timing_stages and n > 1 and beats % n == 0 else 1


def words_per_beat(c: NpuConfig, buf: Buffer) -> int:
    """Buffer words one bus beat holds: LOAD writes that many consecutive words per response
    (``<prefix>_wr`` and ``<prefix>_wrx``), so narrow words stream at the bus's rate."""
    return max(1, c.bus_bytes // c.word_bytes(buf))


def _checks(m, c: NpuConfig, ins, wb, row_bytes, depth, start, hard=None):
    """(misaligned, dram_range, buffer_range, ready, rows - 1) of a DMA instruction, the faults as the
    emulator orders them. ``row_bytes`` is ``ins.cols * wb`` as the unit forms it.

    With ``timing_stages`` each is a few registered steps (:class:`.common.CheckStages`)."""
    chk = CheckStages(m, c, start, hard)
    align = Mux(wb < c.bus_bytes, wb, c.bus_bytes)
    mis = chk.step(((ins.dram_addr & (align - 1)) != 0) | ((ins.rows > 1) & ((ins.dram_stride & (align - 1)) != 0)))
    rm1 = chk.step(ins.rows - 1)            # apart from the multiplies: it fed their operand pins
    # The last row ends past the DRAM when dram_addr + rm1 * dram_stride > dram_bytes - row_bytes. As
    # one three-operand add of 50 bits (the product's two pieces and the address), then a compare, it
    # was a late group of LOAD's and STORE's checks; here the right side forms beside the multiply, the
    # low piece is subtracted from it, and the high piece is compared with what is left, shifted down
    # (top << s > t exactly when top > t >> s, for an integer top).
    rb = chk.step(row_bytes)
    room = chk.step(c.dram_bytes - ins.dram_addr)
    lim = chk.step(room - rb, room, rb)
    pieces = chk.mul_pieces(rm1, ins.dram_stride, rm1)
    top, shift = max(pieces, key=lambda p: p[1])
    rest = [(p, s) for p, s in pieces if p is not top]
    t = chk.step(lim - sum(p << s for p, s in rest), lim, *[p for p, _ in rest])
    top_r = chk.step(top, top)              # a copy by the compare, not at the multiplier
    dram = chk.step(top_r > (t >> shift), t, top_r)
    rows_buf = chk.mul(rm1, ins.buf_stride, rm1)
    buf_row = chk.step(ins.buf_addr + rows_buf, rows_buf)
    buf_room = chk.step(depth - ins.cols)
    bufr = chk.step(buf_row > buf_room, buf_row, buf_room)
    return mis, dram, bufr, chk.ready, rm1


def _check_then_run(m, c: NpuConfig, ctl, running, walker, bad_buf, mis, dram, bufr, ready):
    """The CHECK state of LOAD and STORE: once the check is ``ready``, stop with the first fault in
    the emulator's order (buffer kind, alignment, DRAM range, buffer range), else run the transfer.

    Without ``timing_stages`` the walker starts with RUN. With it, the walker starts in CHECK's
    second cycle (its copy of the instruction is loaded then) and fills its request queue
    (:func:`walk_ahead`) while the check runs; a fault stops it.
    """
    code = Mux(bad_buf, ErrorCode.BAD_FIELD.value, Mux(mis, ErrorCode.MISALIGNED.value,
               Mux(dram, ErrorCode.DRAM_RANGE.value, ErrorCode.BUFFER_RANGE.value)))
    early = c.timing_stages
    if early:
        assert c.check_cycles >= 2, "the walker's early start would follow the check's verdict"
        with m.If(walker.early):
            walker.start(m)
    with m.If(~ready):
        pass
    with m.Elif(bad_buf | mis | dram | bufr):
        m.d.comb += [ctl.err.eq(1), ctl.err_code.eq(code)]
        m.d.sync += running.eq(0)
        if early:
            m.d.sync += walker.active.eq(0)
        m.next = "IDLE"
    with m.Else():
        if early:
            m.d.sync += walker.go.eq(1)
        else:
            walker.start(m)
        m.next = "RUN"


class _Walker:
    """Row/column/beat counters of a 2-D transfer and the addresses they name.

    Each ``advance`` moves ``step`` words along a row (``dstep`` bytes of DRAM); ``step`` never
    passes the row's end. The row's words still to go (``left``), not the column, are counted, and
    the limits (``bpw_m1``: beats per word - 1, ``rows_m1``) come in precomputed, so deciding the
    row's or the transfer's end takes a compare, not an add and a compare.

    ``step_of(left, dram)`` is the step (words) at a position with ``left`` words to go in the row
    and DRAM byte address ``dram`` (only its low ``log2(bus_bytes)`` bits matter), ``dstep_of(step)``
    its DRAM bytes. With ``registered`` (``timing_stages``) the step, its bytes and the three "last"
    verdicts are registers, decided for the position the walker moves to as it moves (the word's
    and the rows' ends as :func:`~tessera.hdl.common.last_flag`): the step's compares and the
    verdicts' then no longer lie between the walker's counters and their own enables and adds
    (from the DRAM address's low bits through the room in its beat and two compares into ~150
    registers' enables: LOAD's walker, up to 169 late endpoints of session 25's first builds).
    The limits must hold from the start pulse on (instruction fields, registered check steps).
    """

    def __init__(self, m, ins, bpw_m1, rows_m1, step_of, dstep_of, bus_bytes, registered=False):
        self.r, self.left, self.e = Signal(16, name="w_r"), Signal(16, name="w_left"), Signal(16, name="w_e")
        self.row_dram, self.word_dram = Signal(34, name="w_row_dram"), Signal(34, name="w_word_dram")
        self.row_buf, self.word_buf = Signal(32, name="w_row_buf"), Signal(32, name="w_word_buf")
        self.active = Signal(name="w_active")
        # With timing_stages (walk_ahead): the pulse that starts the walker in CHECK, and the register
        # that lets its queue's head leave once the check has passed.
        self.early, self.go = None, None
        self.ins = ins
        lb = log2(bus_bytes)
        if not registered:
            self.step = step_of(self.left, self.word_dram)
            self.dstep = dstep_of(self.step)
            self.last_e = self.e == bpw_m1
            self.last_col = self.left == self.step
            self.last_r = self.r == rows_m1
            self.moves = None
            return
        # The position after this cycle: where a start or a step leads (comb), and which of them happens.
        restart, adv = Signal(), Signal()
        self.moves = restart, adv
        left_n, dram_n = Signal(16), Signal(lb)
        step_n = step_of(left_n, dram_n)
        self.step = Signal.like(step_n, name="w_step")
        self.dstep = Signal.like(dstep_of(step_n), name="w_dstep")
        self.last_col = Signal(name="w_last_col")
        self.last_e = last_flag(m, self.e, bpw_m1, restart, adv, "w_last_e")
        row_end = adv & self.last_e & self.last_col
        self.last_r = last_flag(m, self.r, rows_m1, restart, row_end, "w_last_r")
        with m.If(restart):
            m.d.comb += [left_n.eq(ins.cols), dram_n.eq(ins.dram_addr[:lb])]
        with m.Elif(row_end):
            m.d.comb += [left_n.eq(ins.cols), dram_n.eq((self.row_dram + ins.dram_stride)[:lb])]
        with m.Else():
            m.d.comb += [left_n.eq(self.left - self.step), dram_n.eq((self.word_dram + self.dstep)[:lb])]
        with m.If(restart | (adv & self.last_e)):
            m.d.sync += [self.step.eq(step_n), self.dstep.eq(dstep_of(step_n)), self.last_col.eq(left_n == step_n)]

    def start(self, m):
        ins = self.ins
        m.d.sync += [self.r.eq(0), self.left.eq(ins.cols), self.e.eq(0), self.row_dram.eq(ins.dram_addr),
                     self.word_dram.eq(ins.dram_addr), self.row_buf.eq(ins.buf_addr),
                     self.word_buf.eq(ins.buf_addr), self.active.eq(1)]
        if self.moves:
            m.d.comb += self.moves[0].eq(1)

    def advance(self, m):
        ins = self.ins
        if self.moves:
            m.d.comb += self.moves[1].eq(1)
        m.d.sync += self.e.eq(Mux(self.last_e, 0, self.e + 1))
        with m.If(self.last_e):
            with m.If(self.last_col):
                m.d.sync += [self.left.eq(ins.cols), self.r.eq(self.r + 1),
                             self.row_dram.eq(self.row_dram + ins.dram_stride),
                             self.word_dram.eq(self.row_dram + ins.dram_stride),
                             self.row_buf.eq(self.row_buf + ins.buf_stride),
                             self.word_buf.eq(self.row_buf + ins.buf_stride)]
                with m.If(self.last_r):
                    m.d.sync += self.active.eq(0)
            with m.Else():
                m.d.sync += [self.left.eq(self.left - self.step), self.word_dram.eq(self.word_dram + self.dstep),
                             self.word_buf.eq(self.word_buf + self.step)]


def walk_ahead(m, c: NpuConfig, w: _Walker, fields, start, flush):
    """The walker's next request (``fields``, a value of its registers) as the head of a queue.

    Returns ``(valid, head, take)``: the request offered, its fields, and the signal to drive when it
    is taken. With ``timing_stages`` the walker fills a two-entry queue whenever the queue has room
    and the taker pops its head: the take (a far memory port's or buffer port's readiness) then
    reaches only the queue's pointers, not the walker's ~170 counter and address registers and
    their adds (late endpoints of every routed 128-MAC build, docs/synthesis.md, session 24). The
    walker then starts early, in CHECK (:func:`_check_then_run`), so the first request is offered
    in RUN's first cycle as before; ``flush`` (the unit idle) empties the queue of a transfer whose
    check failed (``start``: the unit's start pulse). Without ``timing_stages`` the head is the
    walker itself, which advances on the take.
    """
    take = Signal()
    if not c.timing_stages:
        with m.If(take):
            w.advance(m)
        return w.active, fields, take
    w.early = delay(m, start, 2, "walk_start")     # CHECK's second cycle
    w.go = Signal()                                 # RUN: the check passed, the head may leave
    with m.If(flush):
        m.d.sync += w.go.eq(0)
    m.submodules.ahead = q = ResetInserter(flush)(fifo.SyncFIFO(width=len(fields), depth=2))
    m.d.comb += [q.w_data.eq(fields), q.w_en.eq(w.active), q.r_en.eq(take)]
    with m.If(w.active & q.w_rdy):
        w.advance(m)
    return q.r_rdy & w.go, q.r_data, take


class LoadDma(wiring.Component):
    """LOAD: beats stream in (up to ``mem_outstanding`` in flight) and are written as they arrive.

    A word wider than the bus is written one beat-wide slice at a time. Words
    narrower than the bus are packed: one request fetches every word of the
    row that lies in its beat (a row's words are contiguous in memory), and
    the response writes them all in the same cycle, word ``j`` of the beat
    through ``<prefix>_wr`` (j = 0) or ``<prefix>_wrx[j-1]``. The addresses
    of those ports are consecutive, so a buffer built from
    :func:`words_per_beat` banks interleaved by address serves them without
    conflict. Each request's destination travels in a FIFO beside the
    memory's in-order responses; no response data is buffered.
    """

    def __init__(self, config: NpuConfig):
        self.config = c = config
        super().__init__({
            "ctl": In(UnitSignature()),
            "mem": Out(ReadClientSignature(c)),
            "act_wr": Out(BufWriteSignature(c.abuf_words, word_bits(c, Buffer.ACT), write_lanes(c, Buffer.ACT))),
            "wgt_wr": Out(BufWriteSignature(c.wbuf_words, word_bits(c, Buffer.WGT), write_lanes(c, Buffer.WGT))),
            "prm_wr": Out(BufWriteSignature(c.pbuf_words, word_bits(c, Buffer.PARAM), write_lanes(c, Buffer.PARAM))),
            **{f"{p}x": Out(BufWriteSignature(c.buffer_words(b), word_bits(c, b))).array(words_per_beat(c, b) - 1)
               for b, p in self.PORTS.items() if words_per_beat(c, b) > 1},
            # ``bram_buffers``: ACT words written but still waiting for the buffer's write port; with
            # ``act_write_stages`` instead how many of them leave for the port in this cycle (0-2).
            **({"backlog_leave": In(range(3))} if c.act_write_stages else
               {"backlog": In(range(c.mem_outstanding + 1))} if c.bram_buffers else {}),
            # Copies of wgt_wr's address, one per further column group of the WGT buffer (hdl/buffers.py).
            **({"wgt_wr_addrx": Out(range(c.wbuf_words)).array(wgt_groups(c) - 1)} if wgt_groups(c) > 1 else {}),
        })

    #: Write-port name of each buffer LOAD fills.
    PORTS: ClassVar[dict] = {Buffer.ACT: "act_wr", Buffer.WGT: "wgt_wr", Buffer.PARAM: "prm_wr"}

    def elaborate(self, platform):
        m = Module()
        c = self.config
        B = c.bus_bytes
        ir = instr_register(c)
        ins_chk = data.View(layout(Opcode.LOAD), ir)
        ins = instr_copy(m, c, ins_chk)         # the walker's (see instr_copy)
        running = Signal()
        load_instr(m, ir, self.ctl.instr, ~running)
        bufs = (Buffer.ACT, Buffer.WGT, Buffer.PARAM)
        sel = {b: ins_chk.buf == b for b in bufs}

        def per_buf(fn):
            v = fn(Buffer.ACT)
            for b in (Buffer.WGT, Buffer.PARAM):
                v = Mux(sel[b], fn(b), v)
            return v

        wb = Signal(16)
        lwb = Signal(range(32))
        bpw_m1 = Signal(16)
        depth = Signal(17)
        m.d.comb += [wb.eq(per_buf(c.word_bytes)), lwb.eq(per_buf(lambda b: log2(c.word_bytes(b)) if c.word_bytes(b) < B else 0)),
                     bpw_m1.eq(per_buf(lambda b: write_lanes(c, b) - 1)), depth.eq(per_buf(c.buffer_words))]
        row_bytes = per_buf(lambda b: narrow_mul(ins_chk.cols, Const(c.word_bytes(b), 16)))
        mis, dram, bufr, ready, rows_m1 = _checks(m, c, ins_chk, wb, row_bytes, depth, self.ctl.start,
                                                      registered_hard_product(platform))

        # Words per request: a narrow word's request takes the rest of its beat, up to the row's end.
        kmax = max(words_per_beat(c, b) for b in bufs)

        def step_of(left, dram):
            room = Signal(range(B + 1))
            m.d.comb += room.eq((B - (dram & (B - 1))) >> lwb)
            n = Signal(range(kmax + 1))
            m.d.comb += n.eq(Mux(wb < B, Mux(room < left, room, left), 1))
            return n

        w = _Walker(m, ins, bpw_m1, rows_m1, step_of, lambda n: Mux(wb < B, n << lwb, wb)[:34], B,
                    registered=c.timing_stages)
        n = w.step
        # The head of the destinations comes from flip-flops where a response cannot follow its request
        # in the next cycle (the head shows an entry one cycle later than a SyncFIFO's): the buffer
        # write's address then starts at a register, not at a LUT-RAM read (session 15's critical path).
        buffered = c.timing_stages and c.mem_latency >= 2
        meta = (fifo.SyncFIFOBuffered if buffered else fifo.SyncFIFO)(width=32 + 16 + len(n), depth=c.mem_outstanding)
        m.submodules.meta = meta
        m.d.comb += self.ctl.busy.eq(running)

        # Requests.
        byte = Signal(34)
        m.d.comb += byte.eq(w.word_dram + narrow_mul(w.e, B))
        chunk = Mux(wb < B, (byte & (B - 1)) // Mux(wb < B, wb, 1), w.e)
        beat_addr = Signal(len(self.mem.req.payload))
        m.d.comb += beat_addr.eq(byte >> log2(B))
        idle = Signal()
        offered, head, take = walk_ahead(m, c, w, Cat(beat_addr, w.word_buf[:32], chunk[:16], n), self.ctl.start, idle)
        head_addr, head_meta = head[:len(beat_addr)], head[len(beat_addr):]
        took = self.mem.req.valid & self.mem.req.ready
        m.d.comb += take.eq(took)
        if c.act_write_stages:
            # Reads in flight and ACT words not yet written (the backlog) in one counter: its sum of the
            # two, and the sum's compare, ran on through the request's valid into the walker's enables
            # (the 128-MAC build's critical path, docs/synthesis.md, session 22). An ACT response joins
            # the backlog, any other is written. The meta FIFO then has room (its level is the reads in flight).
            pending = Signal(range(c.mem_outstanding + 1))
            m.d.sync += pending.eq(pending + took - (self.mem.resp.valid & ~sel[Buffer.ACT]) - self.backlog_leave)
            can = offered & (pending < c.mem_outstanding)
            drained = (pending == 0) & ~offered
        else:
            inflight = Signal(range(c.mem_outstanding + 1))
            m.d.sync += inflight.eq(inflight + took - self.mem.resp.valid)
            backlog = self.backlog if c.bram_buffers else 0
            can = offered & (inflight + backlog < c.mem_outstanding) & meta.w_rdy
            drained = (inflight == 0) & (backlog == 0) & ~offered
        m.d.comb += [self.mem.req.valid.eq(can), self.mem.req.payload.eq(head_addr)]
        m.d.comb += [meta.w_data.eq(head_meta), meta.w_en.eq(took)]
        got = self.mem.resp.valid
        m.d.comb += self.ctl.stall.eq(self.mem.req.valid & ~self.mem.req.ready)
        m.d.comb += self.ctl.progress.eq(took | got)

        # Responses: write the beat into the buffer word it belongs to.
        m.d.comb += meta.r_en.eq(got)
        waddr, wchunk, wn = meta.r_data[:32], meta.r_data[32:48], meta.r_data[48:]
        beat = self.mem.resp.payload
        for b, pname in self.PORTS.items():
            port = getattr(self, pname)
            bw = c.word_bytes(b)
            # With timing_stages WGT and PARAM are written a cycle later, from registers (ACT has its
            # own in hdl/buffers.py): the response word's wire to the WGT block RAMs, 35 columns
            # across the die, was the whole NPU's routed critical path (docs/synthesis.md, sessions
            # 15 and 17). No unit reads such a word that soon: its reader starts after this LOAD is
            # done, a token and the reader's CHECK stage.
            late = c.timing_stages and b is not Buffer.ACT
            wrote = got & sel[b]

            def put(p, addr, data, en, tag, copies=()):
                if late:
                    if copies:
                        # WGT's address in a register per column group (register_copies), as its reads:
                        # one register for the four groups was a 15.1 ns net (docs/synthesis.md, session 19).
                        addr, *xs = register_copies(m, addr, 1 + len(copies), f"{tag}_addr", reset_less=True)
                        m.d.comb += [x.eq(a) for x, a in zip(copies, xs)]
                    else:
                        # Loaded only when this buffer is written: yosys then cannot merge it with WGT's copies
                        # of the same address (it did, and that wire to PARAM's block RAMs was a critical
                        # path, docs/synthesis.md, session 17). The address matters only with the enable.
                        r = Signal(len(addr), name=f"{tag}_addr", reset_less=True)
                        with m.If(wrote):
                            m.d.sync += r.eq(addr)
                        addr = r
                    en = delay(m, en, 1, f"{tag}_en")
                    if not isinstance(data, list):
                        data = delay(m, data, 1, f"{tag}_data", reset_less=True)
                m.d.comb += [p.addr.eq(addr), p.en.eq(en),
                             p.data.eq(Cat(*data) if isinstance(data, list) else data)]

            if bw >= B:
                reps = bw // B
                en = Mux(got & sel[b], Const(1, reps) << wchunk[:max(1, (reps - 1).bit_length())], 0)
                if late:
                    # The beat, repeated over the word, from up to 4 registers kept apart, each
                    # feeding its own share of the word's block RAMs.
                    n = beat_copies(c, b)
                    copies = register_copies(m, beat, n, f"{pname}_beat", reset_less=True)
                    put(port, waddr, [copies[j * n // reps] for j in range(reps)], en, pname,
                        list(getattr(self, f"{pname}_addrx", [])))
                else:
                    put(port, waddr, Cat(*([beat] * reps)), en, pname)
                continue
            k = B // bw
            ports = [port] + (list(getattr(self, f"{pname}x")) if k > 1 else [])
            for j, pj in enumerate(ports):
                put(pj, waddr + j, beat.word_select((wchunk + j)[:log2(k)], 8 * bw), got & sel[b] & (j < wn),
                    f"{pname}{j}")

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += idle.eq(1)
                with m.If(self.ctl.start):
                    m.d.sync += running.eq(1)
                    m.next = "CHECK"
            with m.State("CHECK"):
                _check_then_run(m, c, self.ctl, running, w, ins_chk.buf == Buffer.ACC, mis, dram, bufr, ready)
            with m.State("RUN"), m.If(~w.active & drained):
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
            # ``bram_buffers``: the shared ACT read port is STORE's this cycle (POST reads first).
            **({"act_grant": In(1)} if c.bram_buffers else {}),
        })

    def elaborate(self, platform):
        m = Module()
        c = self.config
        B, N = c.bus_bytes, c.act_word_bytes
        ir = instr_register(c)
        ins_chk = data.View(layout(Opcode.STORE), ir)
        ins = instr_copy(m, c, ins_chk)         # the walker's (see instr_copy)
        running = Signal()
        load_instr(m, ir, self.ctl.instr, ~running)
        wb = Const(N, 16)
        mis, dram, bufr, ready, rows_m1 = _checks(m, c, ins_chk, wb, narrow_mul(ins_chk.cols, wb), c.abuf_words,
                                                  self.ctl.start, registered_hard_product(platform))
        w = _Walker(m, ins, 0, rows_m1, lambda left, dram: Const(1, 1), lambda n: Const(N, 16), B,
                    registered=c.timing_stages)
        fd = 4
        m.submodules.q = q = fifo.SyncFIFO(width=8 * N + 34, depth=fd)
        m.d.comb += self.ctl.busy.eq(running)

        # Reads: one ACT word per cycle while the FIFO has room for it.
        pending = Signal()
        rd_dram = Signal(34)
        buf_addr = Signal(len(self.act_rd.addr))
        m.d.comb += buf_addr.eq(w.word_buf)
        idle = Signal()
        offered, head, take = walk_ahead(m, c, w, Cat(buf_addr, w.word_dram), self.ctl.start, idle)
        issue = offered & (q.level + pending < fd - 1)
        if c.bram_buffers:
            issue = issue & self.act_grant
        m.d.comb += [take.eq(issue), self.act_rd.addr.eq(head[:len(buf_addr)])]
        m.d.sync += [pending.eq(issue), rd_dram.eq(head[len(buf_addr):])]
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
            with m.State("IDLE"):
                m.d.comb += idle.eq(1)
                with m.If(self.ctl.start):
                    m.d.sync += running.eq(1)
                    m.next = "CHECK"
            with m.State("CHECK"):
                _check_then_run(m, c, self.ctl, running, w, ins_chk.buf != Buffer.ACT, mis, dram, bufr, ready)
            with m.State("RUN"), m.If(~w.active & ~offered & ~pending & ~q.r_rdy):
                m.d.comb += self.ctl.done.eq(1)
                m.d.sync += running.eq(0)
                m.next = "IDLE"
        return m
