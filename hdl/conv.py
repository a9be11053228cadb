"""The COMPUTE unit: CONV's address generator (implicit im2col) around the MAC array."""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from tessera.arch import NpuConfig
from tessera.isa import Buffer, ErrorCode, Opcode, layout

from .common import (
    BufReadSignature,
    BufWriteSignature,
    CheckStages,
    UnitSignature,
    acc_groups,
    delay,
    instr_copy,
    instr_register,
    last_flag,
    load_instr,
    loop_counters,
    narrow_mul,
    past_room,
    register_copies,
    register_copy,
    registered_hard_product,
    split_mul,
    word_bits,
)
from .buffers import wgt_groups
from .mac import MacArray

__all__ = ["ConvUnit"]


class ConvUnit(wiring.Component):
    """Executes CONV: walks blocks, output pixels, taps and channel blocks, one MAC-array cycle each.

    The generator emits one (ACT word, WGT word) pair per cycle; padding taps
    read ``pad_value`` in every lane. A pixel's row sums go to the ACC buffer,
    added to the old contents with ``accumulate``. The unit signals ``done``
    once the pipeline has drained, so the next instruction sees every write.
    """

    def __init__(self, config: NpuConfig):
        self.config = c = config
        super().__init__({
            "ctl": In(UnitSignature()),
            "act_rd": Out(BufReadSignature(c.abuf_words, word_bits(c, Buffer.ACT))),
            "wgt_rd": Out(BufReadSignature(c.wbuf_words, word_bits(c, Buffer.WGT))),
            # Copies of wgt_rd.addr, one per further column group of the WGT buffer (hdl/buffers.py).
            **({"wgt_rd_addrx": Out(range(c.wbuf_words)).array(wgt_groups(c) - 1)} if wgt_groups(c) > 1 else {}),
            "acc_rd": Out(BufReadSignature(c.accbuf_words, word_bits(c, Buffer.ACC))),
            "acc_wr": Out(BufWriteSignature(c.accbuf_words, word_bits(c, Buffer.ACC))),
            # Copies of acc_rd.addr and acc_wr.addr, one per further ACC column group, and of acc_wr.en
            # for the ACC copy EPILOGUE reads (``acc_wr_en_post``; hdl/buffers.py).
            **({"acc_rd_addrx": Out(range(c.accbuf_words)).array(acc_groups(c) - 1),
                "acc_wr_addrx": Out(range(c.accbuf_words)).array(acc_groups(c) - 1),
                "acc_wr_en_post": Out(1)} if acc_groups(c) > 1 else {}),
            "mac": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        c = self.config
        N = c.lanes
        # A board build may ask for its own multipliers (tessera.hdl.synth sets this on the platform).
        m.submodules.array = array = MacArray(c, multipliers=getattr(platform, "tessera_mac_multipliers", None),
                                                      acc_copies=acc_groups(c))

        ir = instr_register(c)
        ins_chk = data.View(layout(Opcode.CONV), ir)
        ins = instr_copy(m, c, ins_chk)         # the generator and datapath (see instr_copy)
        running = Signal()
        load_instr(m, ir, self.ctl.instr, ~running)

        # One multiply, add or compare per step with timing_stages (K is also the RUN state's weight step).
        hard = registered_hard_product(platform)
        chk = CheckStages(m, c, self.ctl.start, hard)
        ic = ins_chk
        # A product of fields takes two steps (CheckStages.product: operands, then product); a product of
        # a product is a mul, from one hard multiplier's output register to the next's.
        kk = chk.step(narrow_mul(ic.k_h, ic.k_w))
        hw = chk.product(ic.in_h, ic.in_w)
        P = chk.product(ic.out_h, ic.out_w)                  # pixels per block
        kcb = chk.mul(kk, ic.in_cb, kk)                      # terms per pixel: k_h*k_w*in_cb
        K = chk.step(kcb[:18], kcb)                          # (in fabric for RUN's weight step)
        # The products wider than one MULT18X18D register their partial products (the step using them adds
        # them): a hard multiplier far from the instruction register, then the adds, was CONV's path.
        hwc = chk.mul_pieces(hw, ic.in_cb, hw)
        obp = chk.mul_pieces(ic.ob_count, P, P)
        wgt_terms = chk.mul_pieces(kcb[:18], ic.ob_count, kcb)
        # Each extent against the room its buffer has past the address (past_room: compares, no adds).
        rooms = [chk.step(c.abuf_words - ic.in_addr), chk.step(c.accbuf_words - ic.acc_addr),
                 chk.step(c.wbuf_words - ic.w_addr)]
        extents = [hwc, obp, wgt_terms]
        bad_range = chk.step(Cat(*[past_room(e, r) for e, r in zip(extents, rooms)]).any(),
                             *rooms, *[p for e in extents for p, _ in e])

        # Generator counters.
        b, y, x, ky, kx, cb, t, wbase, pcnt = loop_counters(b=10, y=10, x=10, ky=4, kx=4, cb=10, t=18, wbase=28,
                                                            pcnt=30)
        gen = Signal()
        # The counters' last values, registered with timing_stages (the subtracts then leave the
        # counters' compare-and-wrap cycle, CONV's critical path from the instruction register).
        # Each counter's "last" is a register of its own (last_flag): an enable is then an AND of flags.
        go, adv = Signal(), Signal()        # counters restart (CHECK passed) / advance (RUN, generating)
        last_c = last_flag(m, cb, chk.step(ic.in_cb - 1), go, adv, "last_c")
        last_kx = last_flag(m, kx, chk.step(ic.k_w - 1), go, adv & last_c, "last_kx")
        last_ky = last_flag(m, ky, chk.step(ic.k_h - 1), go, adv & last_c & last_kx, "last_ky")
        pix_end = last_c & last_kx & last_ky
        last_x = last_flag(m, x, chk.step(ic.out_w - 1), go, adv & pix_end, "last_x")
        last_y = last_flag(m, y, chk.step(ic.out_h - 1), go, adv & pix_end & last_x, "last_y")
        last_b = last_flag(m, b, chk.step(ic.ob_count - 1), go, adv & pix_end & last_x & last_y, "last_b")

        X = c.conv_stages
        drain = Signal(range(64))
        # (The ACC writes end a cycle before the drain does: the count is kept from when CONV added the
        # old word on the way out, so cycle counts, and the cycle model, stay the same.)
        depth = 4 + sum(X.values()) + array.latency + 2

        m.d.comb += self.ctl.busy.eq(running)
        # The counters rest at their start values while the generator is off (it is, for the CHECK cycles
        # before any start; the instruction copy is loaded by then): their clears and enables are then
        # ``gen``, a register, not the CHECK verdict or the FSM's state, whose LUTs drove them
        # (late endpoints of the routed 128-MAC builds, docs/synthesis.md, session 24).
        m.d.comb += adv.eq(gen)
        with m.If(~gen):
            m.d.sync += [b.eq(0), y.eq(0), x.eq(0), ky.eq(0), kx.eq(0), cb.eq(0), t.eq(0),
                         wbase.eq(ins.w_addr), pcnt.eq(0)]
        with m.Else():
            m.d.sync += [cb.eq(Mux(last_c, 0, cb + 1)), t.eq(Mux(pix_end, 0, t + 1))]
            with m.If(last_c):
                m.d.sync += kx.eq(Mux(last_kx, 0, kx + 1))
            with m.If(last_c & last_kx):
                m.d.sync += ky.eq(Mux(last_ky, 0, ky + 1))
            with m.If(pix_end):
                m.d.sync += [pcnt.eq(pcnt + 1), x.eq(Mux(last_x, 0, x + 1))]
                with m.If(last_x):
                    m.d.sync += y.eq(Mux(last_y, 0, y + 1))
                    with m.If(last_y):
                        m.d.sync += [b.eq(b + 1), wbase.eq(wbase + K)]
                        with m.If(last_b):
                            m.d.sync += [gen.eq(0), drain.eq(depth)]
        with m.FSM():
            with m.State("IDLE"), m.If(self.ctl.start):
                m.next = "CHECK"
                m.d.sync += running.eq(1)
            with m.State("CHECK"), m.If(chk.ready):
                with m.If(bad_range):
                    m.d.comb += [self.ctl.err.eq(1), self.ctl.err_code.eq(ErrorCode.BUFFER_RANGE)]
                    m.d.sync += running.eq(0)
                    m.next = "IDLE"
                with m.Else():
                    m.d.comb += go.eq(1)
                    m.d.sync += gen.eq(1)
                    m.next = "RUN"
            with m.State("RUN"):
                with m.If(~gen):
                    m.d.sync += drain.eq(drain - 1)
                    with m.If(drain == 0):
                        m.d.comb += self.ctl.done.eq(1)
                        m.d.sync += running.eq(0)
                        m.next = "IDLE"

        m.d.comb += [self.mac.eq(gen), self.ctl.progress.eq(gen | array.o_valid)]

        # The datapath only moves while an instruction runs (a simulator then skips it when idle). With
        # timing_stages the MAC array runs every cycle: its enable reached every pipeline register of the
        # array, and that one net was CONV's routed critical path (18.1 ns of wire, docs/synthesis.md).
        m.d.comb += array.en.eq(1 if c.timing_stages else running)
        # So do the address pipeline and the array's operands (gated, `running` reached every multiplier).
        with m.If(1 if c.timing_stages else running):
            # S1: input coordinates of the tap.
            # With timing_stages only the valid bits keep a reset (the reset net reached every pipeline
            # register; see MacArray).
            rl = c.timing_stages

            def stage(**shapes):
                return {k: Signal(v, name=f"{k}", reset_less=rl and k != "v") for k, v in shapes.items()}

            s1 = stage(v=1, first=1, last=1, cb=10, wa=28, tag=16, iy=signed(16), ix=signed(16))
            # With timing_stages the coordinates' products are registered before their sums (T).
            T = X["tap_coords"]

            def late(v, k="data"):
                return delay(m, v, T, f"s0_{k}", reset_less=rl and k != "v")

            m.d.sync += [s1["v"].eq(late(gen, "v")), s1["first"].eq(late(t == 0)), s1["last"].eq(late(pix_end)),
                         s1["cb"].eq(late(cb)), s1["wa"].eq(late(wbase + t)), s1["tag"].eq(late(ins.acc_addr + pcnt)),
                         s1["iy"].eq(late(narrow_mul(y, ins.stride_h)) + late(narrow_mul(ky, ins.dil_h)) - ins.pad_t),
                         s1["ix"].eq(late(narrow_mul(x, ins.stride_w)) + late(narrow_mul(kx, ins.dil_w)) - ins.pad_l)]
            # S2: padding test and linear pixel index.
            s2 = stage(v=1, first=1, last=1, cb=10, wa=28, tag=16, pad=1, lin=signed(32))
            # With timing_stages each address multiply registers its partial products first (hard
            # multipliers straight into adders were CONV's next path), and the rest of the stage waits.
            P1, P2 = X["pixel_index"], X["buffer_address"]
            m.d.sync += [s2[k].eq(delay(m, s1[k], P1, reset_less=rl and k != "v"))
                         for k in ("v", "first", "last", "cb", "wa", "tag")]
            pad1 = (s1["iy"] < 0) | (s1["iy"] >= ins.in_h) | (s1["ix"] < 0) | (s1["ix"] >= ins.in_w)
            m.d.sync += [s2["pad"].eq(delay(m, pad1, P1, reset_less=rl)),
                         s2["lin"].eq(split_mul(m, s1["iy"], ins.in_w, P1, reset_less=rl, hard=hard)
                                      + delay(m, s1["ix"], P1, reset_less=rl))]
            # S3: buffer addresses, presented to the read ports.
            s3 = stage(v=1, first=1, last=1, wa=28, tag=16, pad=1, aa=32)
            m.d.sync += [s3[k].eq(delay(m, s2[k], P2, reset_less=rl and k != "v"))
                         for k in ("v", "first", "last", "wa", "tag", "pad")]
            m.d.sync += s3["aa"].eq(ins.in_addr + split_mul(m, s2["lin"], ins.in_cb, P2, reset_less=rl, hard=hard)
                                    + delay(m, s2["cb"], P2, reset_less=rl))
            m.d.comb += self.act_rd.addr.eq(s3["aa"])
            # The weight word is read array.wgt_lag cycles after the activation word (MacArray).
            lag = array.wgt_lag
            if wgt_groups(c) > 1:
                # s3["wa"] in one register per WGT column group, kept apart (register_copies); a copy
                # may differ in the first cycle after reset, when nothing reads.
                was = register_copies(m, delay(m, s2["wa"], P2 + lag, reset_less=rl), wgt_groups(c), "wgt_addr", rl)
                m.d.comb += [self.wgt_rd.addr.eq(was[0])] + [x.eq(a) for x, a in zip(self.wgt_rd_addrx, was[1:])]
            else:
                m.d.comb += self.wgt_rd.addr.eq(delay(m, s3["wa"], lag, "wgt_addr", reset_less=rl))
            # S4: data arrives; padding taps read pad_value in every lane.
            s4 = stage(v=1, first=1, last=1, tag=16, pad=1)
            m.d.sync += [s4[k].eq(s3[k]) for k in s4]
            pad_word = Cat(*([ins.pad_value.as_unsigned()] * N))
            m.d.comb += [array.valid.eq(s4["v"]), array.first.eq(s4["first"]), array.last.eq(s4["last"]),
                         array.tag.eq(s4["tag"]), array.act.eq(Mux(s4["pad"], pad_word, self.act_rd.data)),
                         array.wgt.eq(self.wgt_rd.data)]
            # With accumulate the array starts each pixel from its old ACC word, read as the pixel's
            # first term reaches the accumulators, and the totals go to the ACC buffer as they are.
            # (Adding the old word on the way out was 32 * rows adders and flip-flops between the array
            # and the buffer, in the most congested corner of the routed NPU: docs/synthesis.md.)
            m.d.comb += [self.acc_rd.addr.eq(array.acc_addr), array.acc_old.eq(self.acc_rd.data),
                         array.acc_add.eq(ins.accumulate)]
            # With timing_stages the totals reach the ACC block RAMs a cycle later, from registers (the
            # accumulators' wire to them was 15 ns in the routed NPU, docs/synthesis.md, session 17):
            # still before the drain ends (above), so CONV is done only when its writes are.
            late = 1 if c.timing_stages else 0
            m.d.comb += self.acc_wr.data.eq(delay(m, array.o_sum, late, "acc_wr_data", reset_less=True))
            n = acc_groups(c)
            if n > 1:
                m.d.comb += [x.eq(a) for x, a in zip(self.acc_rd_addrx, array.acc_addrx)]
                # The write address in a register per group, kept apart, and the enable in one per ACC
                # copy (CONV's, EPILOGUE's): copies 0 and 3, the two of register_copy's that are 0 after
                # reset (no write then). An enable per half of the groups reached both copies' block RAMs,
                # placed by their readers: a 14.4 ns wire, session 25's round 2 seed 2 critical path.
                addrs = register_copies(m, array.o_tag, n, "acc_wr_addr", reset_less=True)
                ens = [register_copy(m, array.o_valid, g, "acc_wr_en") for g in (0, 3)]
                m.d.comb += [self.acc_wr.addr.eq(addrs[0]), self.acc_wr.en.eq(ens[0]), self.acc_wr_en_post.eq(ens[1])]
                m.d.comb += [x.eq(a) for x, a in zip(self.acc_wr_addrx, addrs[1:])]
            else:
                m.d.comb += [self.acc_wr.en.eq(delay(m, array.o_valid, late, "acc_wr_en")),
                             self.acc_wr.addr.eq(delay(m, array.o_tag, late, "acc_wr_addr", reset_less=True))]
        return m
