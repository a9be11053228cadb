"""Instruction fetch and decode: 32-byte instructions from external memory, checked against the ISA table."""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import data, enum, fifo, wiring
from amaranth.lib.wiring import In, Out

from tessera.arch import NpuConfig
from tessera.isa import (
    FORMATS,
    HEADER,
    INSTR_BITS,
    INSTR_BYTES,
    ErrorCode,
    Opcode,
    Unit,
    layout,
)

from .common import ADDR_BITS, ReadClientSignature, log2

__all__ = ["Fetch", "decode_checks"]


def decode_checks(m: Module, raw, beat_bits: int | None = None, beat: int | None = None):
    """Combinational decode of one instruction word, built from :data:`tessera.isa.FORMATS`.

    Returns ``(legal_opcode, bad_field, unit, is_end)``: ``bad_field`` covers
    illegal enum values, zero counts, non-zero reserved bits and a unit waiting
    for or signalling itself (``ErrorCode.BAD_FIELD`` in the emulator).

    With ``beat_bits`` and ``beat``, ``bad_field`` covers only the checks whose field ends in
    beat ``beat`` of ``beat_bits`` bits (reserved bits: those in that beat): bits of ``raw``
    after that beat are not read, so a fetch can check each beat as it arrives. The checks of
    all beats together are ``bad_field`` of the whole word.
    """
    opcode = raw[:4]
    legal = Signal()
    bad = Signal()
    unit = Signal(Unit)
    is_end = Signal()

    def here(lo, width):
        return beat is None or (lo + width - 1) // beat_bits == beat

    m.d.comb += [legal.eq(0), bad.eq(0), is_end.eq(opcode == Opcode.END.value)]
    with m.Switch(opcode):
        for op, fmt in FORMATS.items():
            with m.Case(op.value):
                lay = layout(op)
                v = data.View(lay, raw)
                terms = []
                for f in HEADER[1:] + fmt.fields:
                    if not here(lay[f.name].offset, f.width):
                        continue
                    val = getattr(v, f.name)
                    if isinstance(f.kind, type) and issubclass(f.kind, enum.Enum):
                        raw_v = val.as_value()
                        ok = 0
                        for mem in f.kind:
                            ok = ok | (raw_v == mem.value)
                        if len(f.kind) < (1 << f.width):
                            terms.append(~ok)
                    elif f.nonzero:
                        terms.append(val == 0)
                if "_reserved" in lay.members:
                    lo, width = lay["_reserved"].offset, lay["_reserved"].width
                    if beat is not None:
                        lo, hi = max(lo, beat * beat_bits), min(lo + width, (beat + 1) * beat_bits)
                        width = hi - lo
                    if width > 0:
                        terms.append(raw[lo:lo + width] != 0)
                # The unit's own wait and signal bits (and SYNC's unit) lie in the first beat.
                if fmt.unit is not None:
                    u = fmt.unit.value
                    m.d.comb += unit.eq(fmt.unit)
                    if here(0, lay["signal"].offset + 4):
                        terms.append((v.wait | v.signal).bit_select(u, 1))
                elif op == Opcode.SYNC:
                    m.d.comb += unit.eq(v.unit)
                    if here(0, lay["unit"].offset + 2):
                        terms.append((v.wait | v.signal).bit_select(v.unit.as_value(), 1))
                m.d.comb += [legal.eq(1), bad.eq(Cat(*terms).any() if terms else 0)]
    return legal, bad, unit, is_end


class Fetch(wiring.Component):
    """Prefetches instruction beats from ``prog_addr`` on and hands decoded instructions to dispatch.

    Fetch stops at END (``finished``) or at the first faulty instruction
    (``err`` with its code; the pc is ``pc``). The core's reset restarts it.
    """

    def __init__(self, config: NpuConfig):
        self.config = c = config
        super().__init__({
            "mem": Out(ReadClientSignature(c)),
            "prog_addr": In(ADDR_BITS),
            "o_valid": Out(1), "o_ready": In(1), "o_instr": Out(INSTR_BITS), "o_unit": Out(Unit),
            "pc": Out(ADDR_BITS), "finished": Out(1),
            "err": Out(1), "err_code": Out(ErrorCode),
        })

    def elaborate(self, platform):
        m = Module()
        c = self.config
        B = c.bus_bytes
        ib = max(1, INSTR_BYTES // B)       # beats per instruction
        ipb = max(1, B // INSTR_BYTES)      # instructions per beat
        fd = max(2 * ib, 4)
        # With timing_stages and instructions of several beats, the beats come out of a register (a
        # buffered FIFO: a beat written to an empty FIFO is readable a cycle later, the cycle model's
        # ``fetch_buffer``): the distributed RAM's read of the last beat ran on through the
        # instruction's decode (docs/synthesis.md, session 18). A beat of whole instructions goes
        # into a register (``hb``) before its decode anyway.
        fifo_kind = fifo.SyncFIFOBuffered if c.timing_stages and ipb == 1 else fifo.SyncFIFO
        m.submodules.beats = beats = fifo_kind(width=8 * B, depth=fd)
        started, halted = Signal(), Signal()
        iss = Signal(ADDR_BITS + 1)
        # Beats requested and not yet taken out of the FIFO, in flight or queued: one counter rather
        # than the sum of an in-flight count and the FIFO's level, whose adder and compare ran on
        # through the read port's arbitration into the request address's enable (``iss``, late in
        # every routed build of sessions 20 and 21).
        used = Signal(range(fd + 1))
        # iss_in: the beat at iss lies in memory, kept beside iss (registered with it) rather than
        # compared after it: the compare's carry chain ran on through the memory port's arbitration
        # into LOAD's walker (session 15's routed critical path with seed 2).
        iss_in = Signal()
        first = self.prog_addr & ~(B - 1)
        # pc_bad likewise beside pc (its compare ran on through o_valid into dispatch's queue writes).
        pc_bad = Signal()

        def bad_pc(pc):
            return (pc + INSTR_BYTES > c.dram_bytes) | (pc[:log2(INSTR_BYTES)] != 0)

        with m.If(~started):
            m.d.sync += [started.eq(1), self.pc.eq(self.prog_addr), iss.eq(first),
                         iss_in.eq(first + B <= c.dram_bytes), pc_bad.eq(bad_pc(self.prog_addr))]

        # Requests: sequential beats while the beat FIFO has room for their answers.
        req = self.mem.req
        m.d.comb += [req.valid.eq(started & ~halted & ~self.finished & (used < fd) & iss_in),
                     req.payload.eq(iss >> log2(B))]
        acc = req.valid & req.ready
        with m.If(acc):
            m.d.sync += [iss.eq(iss + B), iss_in.eq(iss + 2 * B <= c.dram_bytes)]
        m.d.comb += [beats.w_en.eq(self.mem.resp.valid), beats.w_data.eq(self.mem.resp.payload)]
        m.d.sync += used.eq(used + acc - (beats.r_en & beats.r_rdy))

        # Assembly. ``word`` is the instruction ``cur`` holds from the next cycle on, when ``complete``.
        # With timing_stages the word has no reset (cur_valid has): fewer loads on the core's reset.
        cur, cur_valid = Signal(INSTR_BITS, reset_less=c.timing_stages), Signal()
        word, complete = Signal(INSTR_BITS), Signal()
        idle = started & ~halted & ~self.finished
        if ipb == 1:
            cnt = Signal(range(ib))
            # With timing_stages the decode reads its own copy of the beats gathered so far (it starts
            # as all ones, so yosys keeps it apart from `cur`): `cur` sits by dispatch's queues, which
            # take it, and its wire back to the decode was a routed critical path (16.2 ns,
            # docs/synthesis.md, session 20).
            gathered = cur
            if c.timing_stages:
                gathered = Signal(INSTR_BITS, init=(1 << INSTR_BITS) - 1, reset_less=True, name="cur_dec")
            m.d.comb += word.eq(Cat(gathered[:8 * B * (ib - 1)], beats.r_data))
            if c.timing_stages:
                # The beat slot ``cnt`` loads the FIFO's head in every cycle until it is taken (then
                # ``cnt`` moves on): its enable is ``cur_valid`` and ``cnt``, not the FIFO's ready and
                # fetch's state, which reached the 256 enables of ``cur`` by dispatch's queues late
                # (docs/synthesis.md, session 22). A slot's value matters only once taken.
                with m.If(~cur_valid):
                    m.d.sync += [cur.word_select(cnt, 8 * B).eq(beats.r_data),
                                 gathered.word_select(cnt, 8 * B).eq(beats.r_data)]
            with m.If(idle & ~cur_valid & beats.r_rdy):
                m.d.comb += beats.r_en.eq(1)
                if not c.timing_stages:
                    m.d.sync += cur.word_select(cnt, 8 * B).eq(beats.r_data)
                m.d.sync += cnt.eq(Mux(cnt == ib - 1, 0, cnt + 1))
                with m.If(cnt == ib - 1):
                    m.d.comb += complete.eq(1)
                    m.d.sync += cur_valid.eq(1)
        else:
            hb, hb_valid, sub = Signal(8 * B), Signal(), Signal(range(ipb))
            m.d.comb += word.eq(hb.word_select(sub, INSTR_BITS))
            with m.If(~started):
                m.d.sync += sub.eq(self.prog_addr[log2(INSTR_BYTES):log2(B)])
            with m.If(idle & ~cur_valid):
                with m.If(hb_valid):
                    m.d.comb += complete.eq(1)
                    m.d.sync += [cur.eq(word), cur_valid.eq(1), sub.eq(Mux(sub == ipb - 1, 0, sub + 1))]
                    with m.If(sub == ipb - 1):
                        m.d.sync += hb_valid.eq(0)
                with m.Elif(beats.r_rdy):
                    m.d.comb += beats.r_en.eq(1)
                    m.d.sync += [hb.eq(beats.r_data), hb_valid.eq(1)]

        # Decode as the word completes, registered beside it: decoded from ``cur`` in the hand-over cycle, the
        # checks ran on through dispatch's queue selects into their write enables (the whole NPU's routed
        # critical path, docs/synthesis.md). The same values, in the same cycles.
        if c.timing_stages and ipb == 1 and ib > 1:
            # Each beat's field checks as it is taken, gathered in ``bad_beats``: the last beat's
            # decode then checks only its own fields (mostly reserved bits), not the whole word's.
            # From the beat FIFO's head through the whole decode into ``dec_bad`` was a routed
            # critical path (17.1 ns, docs/synthesis.md, session 21).
            bb = 8 * B
            last = decode_checks(m, word, bb, ib - 1)
            beat_bad = [decode_checks(m, Cat(gathered[:bb * i], beats.r_data, Const(0, INSTR_BITS - bb * (i + 1))),
                                      bb, i)[1] for i in range(ib - 1)] + [last[1]]
            bad_beats = Signal(reset_less=True)
            with m.If(beats.r_en):
                m.d.sync += bad_beats.eq(Mux(cnt == 0, 0, bad_beats) | Array(beat_bad)[cnt])
            dec = (last[0], bad_beats | last[1], *last[2:])
        else:
            dec = decode_checks(m, word)
        legal, bad, unit, is_end = (Signal.like(v, name=f"dec_{k}") for k, v in
                                    zip(("legal", "bad", "unit", "is_end"), dec))
        with m.If(complete):
            m.d.sync += [legal.eq(dec[0]), bad.eq(dec[1]), unit.eq(dec[2]), is_end.eq(dec[3])]
        m.d.comb += [self.o_instr.eq(cur), self.o_unit.eq(unit)]
        with m.If(idle):
            with m.If(pc_bad):
                m.d.comb += [self.err.eq(1), self.err_code.eq(Mux(self.pc[:log2(INSTR_BYTES)] != 0,
                                                                   ErrorCode.MISALIGNED.value,
                                                                   ErrorCode.DRAM_RANGE.value))]
                m.d.sync += halted.eq(1)
            with m.Elif(cur_valid):
                with m.If(~legal):
                    m.d.comb += [self.err.eq(1), self.err_code.eq(ErrorCode.ILLEGAL_OPCODE)]
                    m.d.sync += halted.eq(1)
                with m.Elif(bad):
                    m.d.comb += [self.err.eq(1), self.err_code.eq(ErrorCode.BAD_FIELD)]
                    m.d.sync += halted.eq(1)
                with m.Elif(is_end):
                    m.d.sync += self.finished.eq(1)
                with m.Else():
                    m.d.comb += self.o_valid.eq(1)
                    with m.If(self.o_ready):
                        m.d.sync += [cur_valid.eq(0), self.pc.eq(self.pc + INSTR_BYTES),
                                     pc_bad.eq(bad_pc(self.pc + INSTR_BYTES))]
        return m
