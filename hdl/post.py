"""The POST unit: EPILOGUE (requantize ACC → ACT, optional residual add) and POOL (max/avg)."""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from tessera.arch import NpuConfig
from tessera.isa import INSTR_BITS, Buffer, ErrorCode, Opcode, PoolMode, layout
from tessera.numerics import FL32_MAX_N

from .common import (
    BufReadSignature,
    BufWriteSignature,
    CheckStages,
    UnitSignature,
    acc_groups,
    bit_length,
    clamp,
    delay,
    instr_copy,
    instr_register,
    last_flag,
    load_instr,
    loop_counters,
    narrow_mul,
    past_room,
    register_copies,
    register_fanout,
    round_shift,
    round_shift_sat,
    round_sig,
    saturate,
    shift_decode,
    shift_decode_copies,
    registered_hard_product,
    split_mul,
    word_at,
    word_bits,
)

__all__ = ["EpilogueEngine", "PoolEngine", "PostUnit", "param_read_shape", "prm_groups"]


def param_read_shape(c: NpuConfig) -> tuple[int, int]:
    """(depth, width) of the PARAM buffer as the EPILOGUE reads it.

    A PARAM word holds ``rows`` records (bias, mult, shift; 32 bits each). With ``bram_buffers``
    the buffer keeps one entry per ``post_lanes`` records (``rows // post_lanes`` entries per word),
    so a read is as wide as one cycle's requantization needs and block RAM is not wasted on width.
    """
    if c.bram_buffers:
        return c.pbuf_words * (c.rows // c.post_lanes_eff), 96 * c.post_lanes_eff
    return c.pbuf_words, word_bits(c, Buffer.PARAM)


def prm_groups(c: NpuConfig) -> int:
    """Column groups of the block-RAM PARAM buffer (hdl/buffers.py): up to four, whole lanes each,
    with ``timing_stages``, each read at its own register copy of EPILOGUE's PARAM address (one
    register drove all of the buffer's block RAMs: 17 ns in a routed build, docs/synthesis.md,
    session 20); 1 otherwise."""
    if not (c.bram_buffers and c.timing_stages):
        return 1
    E = c.post_lanes_eff
    return max(g for g in range(1, 5) if E % g == 0)


def _prm_addr_copies(c: NpuConfig) -> dict:
    """Copies of ``prm_rd.addr``, one per further PARAM column group (:func:`prm_groups`)."""
    n = prm_groups(c)
    return {"prm_rd_addrx": Out(range(param_read_shape(c)[0])).array(n - 1)} if n > 1 else {}


def _acc_addr_copies(c: NpuConfig) -> dict:
    """Copies of ``acc_rd.addr``, one per further ACC column group (hdl/buffers.py)."""
    n = acc_groups(c)
    return {"acc_rd_addrx": Out(range(c.accbuf_words)).array(n - 1)} if n > 1 else {}


def _engine_signature(c: NpuConfig, extra: dict) -> dict:
    # ``act_wr_next``: with timing_stages (the pipeline moves in every cycle), ``act_wr.en`` of the next cycle.
    return {"start": In(1), "instr": In(INSTR_BITS), "bad": Out(1), "done": Out(1), "active": Out(1),
            "act_rd": Out(BufReadSignature(c.abuf_words, word_bits(c, Buffer.ACT))),
            "act_wr": Out(BufWriteSignature(c.abuf_words, word_bits(c, Buffer.ACT))), "act_wr_next": Out(1),
            **extra}


class _Drain:
    """Counts the pipeline empty after the generator's last element."""

    def __init__(self, m, depth, gen, done):
        self.cnt = Signal(range(depth + 2))
        self.busy = Signal()
        with m.If(gen):
            m.d.sync += [self.cnt.eq(depth), self.busy.eq(1)]
        with m.Elif(self.busy):
            m.d.sync += self.cnt.eq(self.cnt - 1)
            with m.If(self.cnt == 0):
                m.d.sync += self.busy.eq(0)
                m.d.comb += done.eq(1)


def _lane_data(reset_less: bool):
    """A factory of an engine's lane data registers: without reset when ``reset_less`` (``timing_stages``).

    Their valid bits keep a reset; the core's reset reached 8,133 flip-flops across the die, a third
    of them late (docs/synthesis.md, session 11).
    """
    return lambda shape, name=None: Signal(shape, name=name, reset_less=reset_less)


class EpilogueEngine(wiring.Component):
    """One ACT output word (``lanes`` channels) per ``lanes // post_lanes`` cycles through a fixed-latency pipeline.

    Stages: read ACC/PARAM/residual → select the word's channels → bias →
    float32 rounding of the sum and 64-bit multiply → float32 rounding of the
    product and rounding shift → clamp or residual products → residual
    rounding shift → clamp → write. With ``post_lanes`` below ``lanes`` each
    cycle requantizes one group of ``post_lanes`` channels of the word, and the
    word is written with its last group.
    """

    def __init__(self, config: NpuConfig):
        self.config = c = config
        super().__init__(_engine_signature(c, {
            "acc_rd": Out(BufReadSignature(c.accbuf_words, word_bits(c, Buffer.ACC))), **_acc_addr_copies(c),
            "prm_rd": Out(BufReadSignature(*param_read_shape(c))), **_prm_addr_copies(c),
        }))

    def elaborate(self, platform):
        m = Module()
        c = self.config
        N, k = c.lanes, c.words_per_block
        # The range checks read the instruction register (loaded with the unit's start); with
        # timing_stages the generator and the lanes read a copy a cycle later (they start after the
        # check's cycles), so that register drives a few loads, not every lane (POST's critical path).
        ins_chk = data.View(layout(Opcode.EPILOGUE), self.instr)
        ins = instr_copy(m, c, ins_chk)
        P, ob = ins_chk.pixels, ins_chk.ob_count
        # Registered steps with timing_stages; PostUnit's CHECK state waits for them.
        hard = registered_hard_product(platform)
        chk = CheckStages(m, c, None, hard)
        # The products take two steps each (CheckStages.product), so the last row's address is
        # (addr - stride) + P * stride: its subtract runs beside the multiply, not after P - 1.
        obp = chk.product(ob, P)
        pm1 = chk.step(P - 1)
        out_rows = chk.product(P, ins_chk.out_stride)
        res_rows = chk.product(P, ins_chk.res_stride)
        out_base = chk.step(ins_chk.out_addr - ins_chk.out_stride)
        res_base = chk.step(ins_chk.res_addr - ins_chk.res_stride)
        obk = chk.step(narrow_mul(ob, k))
        acc_bad = chk.step(ins_chk.acc_addr + obp > c.accbuf_words, obp)
        prm_bad = chk.step(ins_chk.param_addr + ob > c.pbuf_words)
        out_end = chk.step(out_base + out_rows, out_base, out_rows)
        res_end = chk.step(res_base + res_rows, res_base, res_rows)
        m.d.comb += self.bad.eq(chk.step(acc_bad | prm_bad | (out_end + obk > c.abuf_words)
                                         | (ins_chk.residual & (res_end + obk > c.abuf_words)),
                                         acc_bad, prm_bad, out_end, res_end, obk))

        E = c.post_lanes_eff
        G = N // E                      # channel groups per ACT word, one per cycle
        # p * out_stride, p * res_stride and b * k kept as running sums (16-bit addresses wrap alike):
        # S1's addresses are then adds only, with no multiplier in the cycle or on a DSP.
        b, p, j, g, acc_cnt, p_out, p_res, bk = loop_counters(b=10, p=16, j=range(k), g=range(G), acc_cnt=26,
                                                              p_out=16, p_res=16, bk=16)
        gen = Signal()
        last_g = g == G - 1
        # pm1 and ob - 1 registered with timing_stages: no subtract in the counters' wrap cycle; the
        # pixel and block counters' "last" are flags (last_flag), so their enables are ANDs of flags.
        last_j = j == k - 1
        last_p = last_flag(m, p, pm1, self.start, gen & last_g & last_j, "last_p")
        last_b = last_flag(m, b, chk.step(ob - 1), self.start, gen & last_g & last_j & last_p, "last_b")
        # The counters rest at zero while the generator is off (a start only sets ``gen``): their clear is
        # then ``~gen``, a register, not the start decision (PostUnit's CHECK verdict), whose LUTs drove
        # their resets across the unit (late endpoints of the routed 128-MAC builds, docs/synthesis.md,
        # session 24). The generator is off for cycles (drain, done, CHECK) before any start.
        with m.If(self.start):
            m.d.sync += gen.eq(1)
        with m.If(~gen):
            m.d.sync += [b.eq(0), p.eq(0), j.eq(0), g.eq(0), acc_cnt.eq(0), p_out.eq(0), p_res.eq(0), bk.eq(0)]
        with m.Else():
            m.d.sync += g.eq(Mux(last_g, 0, g + 1))
            with m.If(last_g):
                m.d.sync += j.eq(Mux(last_j, 0, j + 1))
            with m.If(last_g & last_j):
                m.d.sync += [p.eq(Mux(last_p, 0, p + 1)), acc_cnt.eq(acc_cnt + 1),
                             p_out.eq(Mux(last_p, 0, p_out + ins.out_stride)),
                             p_res.eq(Mux(last_p, 0, p_res + ins.res_stride))]
                with m.If(last_p):
                    m.d.sync += [b.eq(b + 1), bk.eq(bk + k)]
                    with m.If(last_b):
                        m.d.sync += gen.eq(0)
        X = c.epilogue_stages           # timing_stages: registers inside each multiply, rounding and shift
        # With timing_stages the lanes' data registers have no reset (the reset net reached every one of them).
        rl = c.timing_stages

        def dly(v, cycles):
            return delay(m, v, cycles, reset_less=rl)
        Data = _lane_data(rl)

        extra = sum(X.values())
        depth = 12 + extra
        drain = _Drain(m, depth, gen, self.done)
        m.d.comb += self.active.eq(gen | drain.busy)

        # The pipeline only moves while the engine is active (Verilator then skips it when idle); with
        # timing_stages it moves every cycle, as that enable's fan-out to every stage was POST's critical path.
        with m.If(1 if c.timing_stages else self.active):
            # S1: addresses.
            v1, j1, oa1 = Signal(), Signal(range(k)), Signal(16)
            g1, lg1 = Signal(range(G)), Signal()
            blk = bk + j
            m.d.sync += [v1.eq(gen), j1.eq(j), oa1.eq(ins.out_addr + p_out + blk), g1.eq(g),
                         lg1.eq(last_g)]
            ra1 = Signal(16)
            m.d.sync += ra1.eq(ins.res_addr + p_res + blk)
            # The ACC address in a register per ACC column group, kept apart (register_copies; a copy may
            # differ in the first cycle after reset, when nothing reads).
            aa1, *aax = register_copies(m, (ins.acc_addr + acc_cnt)[:16], acc_groups(c), "acc_rd_addr", rl)
            m.d.comb += [x.eq(a) for x, a in zip(getattr(self, "acc_rd_addrx", []), aax)]
            # Channel group of the block (j, g) selects the ACC/PARAM slice.
            jg1 = Cat(g1, j1) if G > 1 else j1
            # The PARAM address (with bram_buffers one entry per channel group: rows // post_lanes entries
            # per word) in a register per PARAM column group, kept apart (prm_groups, as ACC's above).
            pa = (ins.param_addr + b)[:16]
            if c.bram_buffers and c.rows // E > 1:
                pa = Cat(Cat(g, j) if G > 1 else j, pa)
            pa1, *pax = register_copies(m, pa[:len(self.prm_rd.addr)], prm_groups(c), "prm_rd_addr", rl)
            m.d.comb += [self.prm_rd.addr.eq(pa1)] + [x.eq(a) for x, a in zip(getattr(self, "prm_rd_addrx", []), pax)]
            m.d.comb += [self.acc_rd.addr.eq(aa1), self.act_rd.addr.eq(ra1)]
            # R: the read data of S1's addresses arrives; its sideband waits one cycle with it.
            vr, jgr, oar = Signal(), Signal(len(jg1)), Signal(16)
            gr, lgr = Signal(range(G)), Signal()
            m.d.sync += [vr.eq(v1), jgr.eq(jg1), oar.eq(oa1), gr.eq(g1), lgr.eq(lg1)]
            # With timing_stages the words read are registered as they leave the block RAMs, before their
            # slices are selected: a block RAM's clock-to-out, its wire and the select into the lanes'
            # registers were 11-12 ns in the routed NPU (docs/synthesis.md, session 20).
            RD = X["read_data"]
            acc_data, prm_data, res_data = (delay(m, d, RD, f"{k}_rd_data", reset_less=True) for k, d in
                                            (("acc", self.acc_rd.data), ("prm", self.prm_rd.data), ("res", self.act_rd.data)))
            vr = delay(m, vr, RD, "vr")
            jgr, oar, gr, lgr = (dly(x, RD) for x in (jgr, oar, gr, lgr))
            # S2: the word's channels.
            v2, oa2, g2, lg2 = Signal(), Signal(16), Signal(range(G)), Signal()
            m.d.sync += [v2.eq(vr), oa2.eq(oar), g2.eq(gr), lg2.eq(lgr)]
            # One signal per selected word: every slice of a word_select expression would otherwise
            # become its own full-width selector (48 of 1536 bits here), slow to convert and to simulate.
            accw, prmw, resw = Signal(32 * E), Signal(96 * E), Signal(8 * E)
            if k * G == 1:
                m.d.comb += accw.eq(acc_data)
            else:
                m.d.comb += accw.eq(word_at(acc_data, jgr, 32 * E))
            if c.bram_buffers or k * G == 1:
                m.d.comb += prmw.eq(prm_data)
            else:
                m.d.comb += prmw.eq(word_at(prm_data, jgr, 96 * E))
            if G == 1:
                m.d.comb += resw.eq(res_data)
            else:
                m.d.comb += resw.eq(word_at(res_data, gr, 8 * E))
            lanes = []
            for n in range(E):
                L = {"acc": Data(signed(32)), "bias": Data(signed(32)), "mult": Data(signed(32)), "shift": Data(6),
                     "r": Data(signed(8))}
                m.d.sync += [L["acc"].eq(accw[32 * n:32 * n + 32]), L["bias"].eq(prmw[96 * n:96 * n + 32]),
                             L["mult"].eq(prmw[96 * n + 32:96 * n + 64]), L["shift"].eq(prmw[96 * n + 64:96 * n + 70]),
                             L["r"].eq(resw[8 * n:8 * n + 8])]
                lanes.append(L)
            # S3 .. S8, per lane.
            v, oa, gs, lgs = [v2], [oa2], [g2], [lg2]
            for _ in range(6 + extra - RD):            # read_data's register is before S2
                nv, no = Signal(), Data(16)
                m.d.sync += [nv.eq(v[-1]), no.eq(oa[-1])]
                v.append(nv)
                oa.append(no)
                if G > 1:
                    ng, nl = Data(range(G)), Data(1)
                    m.d.sync += [ng.eq(gs[-1]), nl.eq(lgs[-1])]
                    gs.append(ng)
                    lgs.append(nl)
            # The residual shift is the instruction's: decoded once; with timing_stages registered, each
            # lane (or share of the lanes) reading its own copy.
            res_shifts = shift_decode_copies(m, ins.res_shift, len(lanes), "res_shift", X["residual_shift"] > 0, rl)
            # With timing_stages the lanes read the instruction's zero points, bounds and residual
            # multipliers from copies of their own (register_fanout, two cycles later: the lanes first use
            # them many cycles after the generator starts), each copy by a share of the lanes: the one
            # copy's wires to every lane were a routed critical path (14.5 ns, docs/synthesis.md, session 24).
            if c.timing_stages:
                nf = min(E, 4)
                lane_ins = [data.View(ins.shape(), cp)
                            for cp in register_fanout(m, ins.as_value(), nf, "lane_ins", reset_less=True)]
                lane_ins = [lane_ins[n * nf // E] for n in range(E)]
            else:
                lane_ins = [ins] * E
            ys = []
            for n, L in enumerate(lanes):
                li = lane_ins[n]
                s3v, s3m, s3s, s3r = Data(signed(32)), Data(signed(32)), Data(6), Data(signed(8))
                m.d.sync += [s3v.eq((L["acc"] + L["bias"])[:32]), s3m.eq(L["mult"]), s3s.eq(L["shift"]), s3r.eq(L["r"])]
                # scale_product(v, mult) = round_sig(round_sig(v) * mult): each rounding shares a stage
                # (with the multiply, with the rounding shift), so the pipeline keeps its depth and timing.
                # |round_sig(v)| <= 2**31 and mult < 2**31: 63 bits hold the product.
                # With timing_stages each step is split over registers of its own (X), and its sideband waits.
                v3 = round_sig(m, s3v, 33, X["round_in"], rl)
                s3m, s3s, s3r = (dly(x, X["round_in"]) for x in (s3m, s3s, s3r))
                s4p, s4s, s4r = Data(signed(63)), Data(6), Data(signed(8))
                # With timing_stages the operands enter the multiply from registers (on the ECP5 its
                # MULT18X18D's input registers: the rounding's result into a far block's unregistered
                # input was a routed critical path, docs/synthesis.md, session 20) and its pieces are
                # registered again in fabric before their adds.
                MP = X["multiply_operands"] + X["multiply"] + X["product_pieces"]
                m.d.sync += [s4p.eq(split_mul(m, v3, s3m, X["multiply"], rl, hard, operand_register=X["multiply_operands"] > 0,
                                              piece_register=X["product_pieces"] > 0)),
                             s4s.eq(dly(s3s, MP)), s4r.eq(dly(s3r, MP))]
                p4 = round_sig(m, s4p, 63, X["round_product"], rl)
                # The lane's shift decoded while the rounding runs (with timing_stages): out of the shift's cycle.
                s4s, s4r = shift_decode(m, s4s, X["round_product"], f"s4s_{n}", rl), dly(s4r, X["round_product"])
                # q saturated to 11 bits first clamps the same (zero points and bounds are int8) with short
                # carry chains, and needs only an 11-bit window of the shift.
                q11, s5r = Data(signed(11), name=f"q11_{n}"), Data(signed(8))
                m.d.sync += [q11.eq(round_shift_sat(p4, s4s, 11, m, X["shift"], rl)), s5r.eq(dly(s4r, X["shift"]))]
                za, zy = Signal(signed(12), name=f"za{n}"), Signal(signed(12), name=f"zy{n}")
                m.d.comb += [za.eq(q11 + li.zp_mid), zy.eq(q11 + li.zp_out)]
                # With timing_stages the zero-point adds and the clamps (three carry chains in a row) get a
                # stage each, apart from the residual products.
                C = X["clamp"]
                za, zy, r6 = (dly(x, max(C - 1, 0)) for x in (za, zy, s5r))
                a, y6 = Signal(signed(9), name=f"a{n}"), Signal(signed(8), name=f"y6_{n}")
                m.d.comb += [a.eq(clamp(za, -128, 127)), y6.eq(clamp(zy, li.out_min, li.out_max))]
                a, y6, r6 = (dly(x, min(C, 1)) for x in (a, y6, r6))
                s6y, s6s = Data(signed(8)), Data(signed(48))
                da, db = Signal(signed(10), name=f"da{n}"), Signal(signed(10), name=f"db{n}")
                m.d.comb += [da.eq(a - li.zp_mid), db.eq(r6 - li.zp_res)]
                # With timing_stages the products' operands are registered first (in the MULT18X18D's input
                # registers on the ECP5): the subtract's wire into a far multiplier plus its setup was
                # 11.9 ns of a routed critical path (docs/synthesis.md, session 19).
                M, O = X["residual_multiply"], X["residual_operands"]
                m.d.sync += [s6y.eq(dly(y6, M + O)),
                             s6s.eq(split_mul(m, da, li.res_mult_a, M, rl, hard, operand_register=O > 0)
                                    + split_mul(m, db, li.res_mult_b, M, rl, hard, operand_register=O > 0))]
                s7q, s7y = Data(signed(11)), Data(signed(8))
                m.d.sync += [s7q.eq(round_shift_sat(s6s, res_shifts[n], 11, m, X["residual_shift"], rl)),
                             s7y.eq(dly(s6y, X["residual_shift"]))]
                zr = Signal(signed(12), name=f"zr{n}")
                m.d.comb += zr.eq(s7q + li.zp_out)
                zr, s7y = dly(zr, X["residual_clamp"]), dly(s7y, X["residual_clamp"])
                s8y = Data(signed(8))
                m.d.sync += s8y.eq(Mux(li.residual, clamp(zr, li.out_min, li.out_max), s7y))
                ys.append(s8y)
            if G > 1:
                # Earlier groups of the word wait here; the word is written with its last group.
                held = [Data(8 * E, name=f"held{i}") for i in range(G - 1)]
                with m.If(v[-1]):
                    for i, h in enumerate(held):
                        with m.If(gs[-1] == i):
                            m.d.sync += h.eq(Cat(*[y.as_unsigned() for y in ys]))
        if G > 1:
            m.d.comb += [self.act_wr.en.eq(v[-1] & lgs[-1]), self.act_wr_next.eq(v[-2] & lgs[-2]),
                         self.act_wr.addr.eq(oa[-1]), self.act_wr.data.eq(Cat(*held, *[y.as_unsigned() for y in ys]))]
        else:
            m.d.comb += [self.act_wr.en.eq(v[-1]), self.act_wr_next.eq(v[-2]), self.act_wr.addr.eq(oa[-1]),
                         self.act_wr.data.eq(Cat(*[y.as_unsigned() for y in ys]))]
        return m


#: Width of POOL's window sum of ``x - zp_in`` (each within ±255): at most k_h × k_w taps. 17 bits, so
#: the AVG product ``sum * mult`` takes two hard multipliers, not four (20 bits took four).
_WINDOW = layout(Opcode.POOL).members
_SUM_BITS = ((2 ** _WINDOW["k_h"].width - 1) * (2 ** _WINDOW["k_w"].width - 1) * 255).bit_length() + 1

#: Width of POOL's float32 window sum (``fl32``): up to 225 taps of ``|x - zp| * mult < 2**39``.
_FL_BITS = 50


def _fl32_result(m, k, e, base, base_f, n, mult, zp, fused):
    """numerics.pool_avg_fl32 from the window's exact sum ``k`` and ``e = S - k*mult``.

    ``base = rnd(k, n)`` and ``base_f = rnd(k + zp * 2**n, n) - zp`` are the fixed-point answers
    (unfused and fused); an exact tie of ``k / 2**n`` moves towards ``e`` when the offset survives
    the float32 roundings (docs/numerics.md has the comparisons).
    """
    kw = len(k)
    k64 = Cat(k, k[-1].replicate(64 - kw))
    mask = Signal(17)
    m.d.comb += mask.eq(Const((1 << 17) - 1, 17) >> (17 - n).as_unsigned()[:5])
    half = mask ^ (mask >> 1)
    tie = Signal()
    m.d.comb += tie.eq((half != 0) & ((k64[:17] & mask) == half))
    mag_k, mag_e = Signal(kw), Signal(len(e))
    m.d.comb += [mag_k.eq(Mux(k < 0, -k, k)), mag_e.eq(Mux(e < 0, -e, e))]
    b_k = Signal(range(kw + 1))
    m.d.comb += b_k.eq(bit_length(mag_k))
    in1 = Signal()
    m.d.comb += in1.eq(((mag_k & (mag_k - 1)) == 0) & ((e < 0) != (k < 0)))
    cap24 = Signal(25)
    m.d.comb += cap24.eq(Mux(mag_e >= (1 << 24), 1 << 24, mag_e))
    keep1 = Signal()
    m.d.comb += keep1.eq((cap24 << (25 - b_k + in1).as_unsigned()[:5]) > mult)
    # Fused: does the offset also survive float32(v + zp)?
    bq = Signal(signed(kw + 18))
    m.d.comb += bq.eq(k + (zp << n))
    mag_b = Signal(kw + 17)
    m.d.comb += mag_b.eq(Mux(bq < 0, -bq, bq))
    b_b = Signal(range(kw + 18))
    m.d.comb += b_b.eq(bit_length(mag_b))
    in2 = Signal()
    m.d.comb += in2.eq((mag_b == half) & ((e < 0) != (bq < 0)))
    t = Signal(signed(7))
    m.d.comb += t.eq(b_b - b_k - 1 - in2 + in1)
    cap32, lhs, d = Signal(33), Signal(60), Signal(signed(61))
    m.d.comb += [cap32.eq(Mux(mag_e >= (1 << 32), 1 << 32, mag_e)),
                 lhs.eq(cap32 << (25 - b_b + in2).as_unsigned()[:5]),
                 d.eq(lhs - mult)]
    dcap, scaled = Signal(32), Signal(60)
    m.d.comb += [dcap.eq(Mux(d <= 0, 0, Mux(d >= (1 << 31), 1 << 31, d))),
                 scaled.eq(dcap << Mux(t < 0, 0, t + 1).as_unsigned()[:5])]
    keep2 = Signal()
    m.d.comb += keep2.eq((d > 0) & ((scaled > mult) | ((scaled == mult) & (t == 0))))
    keep = Signal()
    m.d.comb += keep.eq(Mux(fused, Mux(t < 0, keep1, keep2), keep1))
    r = Signal(signed(kw + 1))
    m.d.comb += r.eq(Mux(tie & keep & (e != 0), (k >> n) + (e > 0), Mux(fused, base_f, base)))
    return r


class PoolEngine(wiring.Component):
    """Window taps one ACT read per cycle; the pixel's max or requantized sum leaves after the last tap.

    With ``post_lanes`` below ``lanes`` the AVG requantization shares ``post_lanes`` multipliers:
    a pixel's sums wait in a bank and leave one group per cycle, so a window takes at least
    ``lanes // post_lanes`` cycles (the generator waits when it has fewer taps).
    """

    def __init__(self, config: NpuConfig):
        self.config = c = config
        super().__init__(_engine_signature(c, {"bad_field": Out(1)}))

    def elaborate(self, platform):
        m = Module()
        c = self.config
        N = c.lanes
        E = c.post_lanes_eff
        G = N // E
        # Checks from the instruction register, the rest from its copy (as EPILOGUE's).
        ins_chk = data.View(layout(Opcode.POOL), self.instr)
        ins = instr_copy(m, c, ins_chk)
        def fl32_avg(i):
            return i.fl32 & (i.mode == PoolMode.AVG)

        fl = Signal()           # AVG in onnxruntime's float32 arithmetic (numerics.pool_avg_fl32)
        fl_n = Signal(5)        # its log2 tap count, limited as numerics limits it
        m.d.comb += [fl.eq(fl32_avg(ins)), fl_n.eq(Mux(ins.shift > FL32_MAX_N, FL32_MAX_N, ins.shift))]
        if not c.pool_fl32:
            m.d.comb += self.bad_field.eq(fl32_avg(ins_chk))
        hard = registered_hard_product(platform)
        chk = CheckStages(m, c, None, hard)
        ihw, ohw = chk.product(ins_chk.in_h, ins_chk.in_w), chk.product(ins_chk.out_h, ins_chk.out_w)
        # Registered partial products (one 18 x 18 and a narrow rest in LUTs): as one product of 20 x 10
        # bits yosys put the 2-bit rest on a second hard multiplier.
        ihwc, ohwc = chk.mul_pieces(ihw, ins_chk.cb, ihw), chk.mul_pieces(ohw, ins_chk.cb, ohw)
        # Both extents against their rooms in the last step (past_room: compares, no adds; the
        # products' two steps leave no step for an OR alone).
        rooms = [chk.step(c.abuf_words - ins_chk.in_addr), chk.step(c.abuf_words - ins_chk.out_addr)]
        m.d.comb += self.bad.eq(chk.step(past_room(ihwc, rooms[0]) | past_room(ohwc, rooms[1]),
                                         *rooms, *[p for e in (ihwc, ohwc) for p, _ in e]))
        oy, ox, cc, ky, kx, ocnt = loop_counters(oy=10, ox=10, cc=10, ky=4, kx=4, ocnt=30)
        gen = Signal()
        adv = Signal()          # the generator emits a tap this cycle
        # The counters' last values, registered with timing_stages, and flags of their own (as CONV's).
        last_kx = last_flag(m, kx, chk.step(ins_chk.k_w - 1), self.start, adv, "last_kx")
        last_ky = last_flag(m, ky, chk.step(ins_chk.k_h - 1), self.start, adv & last_kx, "last_ky")
        win_end = last_kx & last_ky
        last_c = last_flag(m, cc, chk.step(ins_chk.cb - 1), self.start, adv & win_end, "last_c")
        last_x = last_flag(m, ox, chk.step(ins_chk.out_w - 1), self.start, adv & win_end & last_c, "last_x")
        last_y = last_flag(m, oy, chk.step(ins_chk.out_h - 1), self.start, adv & win_end & last_c & last_x,
                           "last_y")
        if G > 1:
            # Windows at least G cycles apart: the bank below holds one pixel's sums for G cycles.
            wc, = loop_counters(wc=range(G))
            m.d.comb += adv.eq(gen & ~(win_end & (wc < G - 1)))
            with m.If(~gen | (adv & win_end)):
                m.d.sync += wc.eq(0)
            with m.Elif(gen & (wc < G - 1)):
                m.d.sync += wc.eq(wc + 1)
        else:
            m.d.comb += adv.eq(gen)
        # The counters rest at zero while the generator is off, as EPILOGUE's.
        with m.If(self.start):
            m.d.sync += gen.eq(1)
        with m.If(~gen):
            m.d.sync += [oy.eq(0), ox.eq(0), cc.eq(0), ky.eq(0), kx.eq(0), ocnt.eq(0)]
        with m.Elif(adv):
            m.d.sync += kx.eq(Mux(last_kx, 0, kx + 1))
            with m.If(last_kx):
                m.d.sync += ky.eq(Mux(last_ky, 0, ky + 1))
            with m.If(win_end):
                m.d.sync += [ocnt.eq(ocnt + 1), cc.eq(Mux(last_c, 0, cc + 1))]
                with m.If(last_c):
                    m.d.sync += ox.eq(Mux(last_x, 0, ox + 1))
                    with m.If(last_x):
                        m.d.sync += oy.eq(oy + 1)
                        with m.If(last_y):
                            m.d.sync += gen.eq(0)
        X = c.pool_stages               # timing_stages: registers inside the multiply, rounding and shift
        # With timing_stages the lanes' data registers have no reset (as EPILOGUE's).
        rl = c.timing_stages

        def dly(v, cycles):
            return delay(m, v, cycles, reset_less=rl)
        Data = _lane_data(rl)

        extra = sum(X.values())
        # The requantization's stages before its result (s7) (the address stages come before the taps).
        pre = X["select"] + X["multiply"] + X["round_product"] + X["shift"]
        drain = _Drain(m, 10 + extra + (G if G > 1 else 0), gen, self.done)
        m.d.comb += self.active.eq(gen | drain.busy)

        def carry(prev, extra=0):
            nxt = {k: Signal.like(s, name=f"{k}_p") for k, s in prev.items()}
            m.d.sync += [nxt[k].eq(delay(m, s, extra)) for k, s in prev.items()]
            return nxt

        # The pipeline only moves while the engine is active (Verilator then skips it when idle), with
        # timing_stages every cycle (as EPILOGUE's).
        with m.If(1 if c.timing_stages else self.active):
            s1 = {"v": Signal(), "first": Signal(), "last": Signal(), "cc": Signal(10), "oa": Signal(16)}
            iy1, ix1 = Signal(signed(16)), Signal(signed(16))
            # With timing_stages the coordinates' products are registered before their sums (as CONV's).
            T = X["tap_coords"]

            def late(v):
                return delay(m, v, T, "s0")

            m.d.sync += [s1["v"].eq(late(adv)), s1["first"].eq(late((kx == 0) & (ky == 0))), s1["last"].eq(late(win_end)),
                         s1["cc"].eq(late(cc)), s1["oa"].eq(late(ins.out_addr + ocnt)),
                         iy1.eq(late(narrow_mul(oy, ins.stride_h)) + late(ky) - ins.pad_t),
                         ix1.eq(late(narrow_mul(ox, ins.stride_w)) + late(kx) - ins.pad_l)]
            # With timing_stages both address multiplies register their partial products first (A1, A2).
            A1, A2 = X["pixel_index"], X["buffer_address"]
            s2 = carry(s1, A1)
            inside2, lin2 = Signal(), Signal(signed(32))
            inside1 = (iy1 >= 0) & (iy1 < ins.in_h) & (ix1 >= 0) & (ix1 < ins.in_w)
            m.d.sync += [inside2.eq(delay(m, inside1, A1)),
                         lin2.eq(split_mul(m, iy1, ins.in_w, A1, rl, hard) + dly(ix1, A1))]
            s3 = carry(s2, A2)
            inside3, aa3 = Signal(), Signal(32)
            m.d.sync += [inside3.eq(delay(m, inside2, A2)),
                         aa3.eq(ins.in_addr + split_mul(m, lin2, ins.cb, A2, rl, hard) + dly(s2["cc"], A2))]
            m.d.comb += self.act_rd.addr.eq(aa3)
            # With timing_stages the read word is registered before the taps' compares and adds: the
            # block RAM's output through them was the routed critical path (docs/synthesis.md, session 18).
            R = X["tap_read"]
            s4 = carry(s3, R)
            inside4 = Signal()
            m.d.sync += inside4.eq(delay(m, inside3, R))
            word = dly(self.act_rd.data, R)
            # S4: running max / sum per lane; the pixel's result is latched on the last tap.
            s5v, s5a = Signal(), Signal(16)
            m.d.sync += [s5v.eq(s4["v"] & s4["last"]), s5a.eq(s4["oa"])]
            s5 = []
            for n in range(N):
                x = word[8 * n:8 * n + 8].as_signed()
                mx, sm = Data(signed(8)), Data(signed(_SUM_BITS))
                new_mx = Signal(signed(8))
                new_sm = Signal(signed(_SUM_BITS))
                tap = Signal(signed(9))
                base_mx = Mux(s4["first"], -128, mx)
                m.d.comb += [new_mx.eq(Mux(inside4 & (x > base_mx), x, base_mx)),
                             tap.eq(Mux(inside4, x - ins.zp_in, 0)),
                             new_sm.eq(Mux(s4["first"], 0, sm) + tap)]
                with m.If(s4["v"]):
                    m.d.sync += [mx.eq(new_mx), sm.eq(new_sm)]
                s5m, s5s, s5f = Data(signed(8)), Data(signed(_SUM_BITS)), Data(signed(_FL_BITS))
                m.d.sync += [s5m.eq(new_mx), s5s.eq(new_sm)]
                if c.pool_fl32:
                    # The float32 sum, scaled by 2**-e: every tap and partial sum to 24 significant bits.
                    fs, prod, new_fs = Data(signed(_FL_BITS)), Signal(signed(41)), Signal(signed(_FL_BITS))
                    m.d.comb += [prod.eq(tap * ins.mult),
                                 new_fs.eq(round_sig(m, Mux(s4["first"], 0, fs) + round_sig(m, prod, 42),
                                                     _FL_BITS))]
                    with m.If(s4["v"]):
                        m.d.sync += fs.eq(new_fs)
                    m.d.sync += s5f.eq(new_fs)
                s5.append((s5m, s5s, s5f))
            if G > 1:
                # The bank: one pixel's maxima and sums, requantized one group per cycle.
                fb = _FL_BITS if c.pool_fl32 else 1
                bank = [(Data(signed(8), name=f"bm{n}"), Data(signed(_SUM_BITS), name=f"bs{n}"),
                         Data(signed(fb), name=f"bf{n}")) for n in range(N)]
                bv, bg, ba = Signal(), Signal(range(G)), Signal(16)
                with m.If(s5v):
                    m.d.sync += [bv.eq(1), bg.eq(0), ba.eq(s5a)]
                    m.d.sync += [b.eq(v) for bl, vl in zip(bank, s5) for b, v in zip(bl, vl)]
                with m.Elif(bv):
                    m.d.sync += [bg.eq(bg + 1), bv.eq(bg != G - 1)]
                lanes = []
                for n in range(E):
                    lm, ls, lf = Signal(signed(8), name=f"gm{n}"), Signal(signed(_SUM_BITS), name=f"gs{n}"), \
                        Signal(signed(fb), name=f"gf{n}")
                    with m.Switch(bg):
                        for g in range(G):
                            with m.Case(g):
                                m.d.comb += [a.eq(b) for a, b in zip((lm, ls, lf), bank[g * E + n])]
                    lanes.append((lm, ls, lf))
                s6v, s6a, s6g = Signal(), Signal(16), Signal(range(G))
                m.d.sync += [s6v.eq(bv), s6a.eq(ba), s6g.eq(bg)]
                s7v, s7a, s7g, s8v, s8a, s8g = Signal(), Signal(16), Signal(range(G)), Signal(), Signal(16), Signal(range(G))
                s8v_d, s8g_d = delay(m, s7v, X["clamp"]), delay(m, s7g, X["clamp"])
                m.d.sync += [s7v.eq(delay(m, s6v, pre)), s7a.eq(delay(m, s6a, pre)), s7g.eq(delay(m, s6g, pre)),
                             s8v.eq(s8v_d), s8a.eq(delay(m, s7a, X["clamp"])), s8g.eq(s8g_d)]
                m.d.comb += self.act_wr_next.eq(s8v_d & (s8g_d == G - 1))
            else:
                lanes = s5
                s6v, s6a, s7v, s7a, s8v, s8a = Signal(), Signal(16), Signal(), Signal(16), Signal(), Signal(16)
                s8v_d = delay(m, s7v, X["clamp"])
                m.d.sync += [s6v.eq(s5v), s6a.eq(s5a), s7v.eq(delay(m, s6v, pre)), s7a.eq(delay(m, s6a, pre)),
                             s8v.eq(s8v_d), s8a.eq(delay(m, s7a, X["clamp"]))]
                m.d.comb += self.act_wr_next.eq(s8v_d)
            # With timing_stages each lane (or share of the lanes) reads its own register of the decoded shift.
            pool_shift = shift_decode_copies(m, ins.shift, len(lanes), "pool_shift", X["shift"] > 0, rl)
            ys = []
            S = X["select"]
            for (lm, ls, lf), lane_shift in zip(lanes, pool_shift):
                # With timing_stages a lane's values (the bank's group select) are registered before the multiply.
                lm, ls, lf = (dly(x, S) for x in (lm, ls, lf))
                s6m, s6p = Data(signed(8)), Data(signed(56))
                m.d.sync += [s6m.eq(lm), s6p.eq(split_mul(m, ls, ins.mult, X["multiply"], rl, hard))]
                # scale_product(sum, mult): the window sum is exact in float32; the product rounds before the shift.
                # With timing_stages the multiply, the rounding and the shift are split over registers (X),
                # and the rest waits beside them.
                p6 = round_sig(m, s6p, 56, X["round_product"], rl)
                # Saturated to 11 bits as below, which leaves an already saturated value as it is.
                s7m, s7q = Data(signed(8)), Data(signed(11))
                m.d.sync += [s7m.eq(dly(s6m, pre - S)), s7q.eq(round_shift_sat(p6, lane_shift, 11, m, X["shift"], rl))]
                q = s7q
                if c.pool_fl32:
                    # fl32: K * mult is the same product, so E = S - K*m takes no multiplier of its own.
                    s6k, s6f = Data(signed(20)), Data(signed(_FL_BITS))
                    m.d.sync += [s6k.eq(ls), s6f.eq(lf)]
                    s6k, s6f = (dly(x, pre - S) for x in (s6k, s6f))
                    s6p = dly(s6p, X["round_product"] + X["shift"])
                    s7k, s7e, s7b, s7f = Data(signed(20)), Data(signed(58)), Data(signed(20)), Data(signed(21))
                    m.d.sync += [s7k.eq(s6k), s7e.eq(s6f - s6p), s7b.eq(round_shift(s6k, fl_n, 20)),
                                 s7f.eq(round_shift(s6k + (ins.zp_ort << fl_n), fl_n, 27) - ins.zp_ort)]
                    q = Mux(fl, _fl32_result(m, s7k, s7e, s7b, s7f, fl_n, ins.mult, ins.zp_ort, ins.fl32_zp), s7q)
                # With timing_stages the zero-point add gets a stage apart from the clamp.
                zq = Signal(signed(12))
                m.d.comb += zq.eq(saturate(q, 11) + ins.zp_out)
                zq, s7m = dly(zq, X["clamp"]), dly(s7m, X["clamp"])
                s8y = Data(signed(8))
                m.d.sync += s8y.eq(Mux(ins.mode == PoolMode.MAX, s7m, clamp(zq, -128, 127)))
                ys.append(s8y)
            if G > 1:
                held = [Data(8 * E, name=f"pheld{i}") for i in range(G - 1)]
                with m.If(s8v):
                    for i, h in enumerate(held):
                        with m.If(s8g == i):
                            m.d.sync += h.eq(Cat(*[y.as_unsigned() for y in ys]))
        if G > 1:
            m.d.comb += [self.act_wr.en.eq(s8v & (s8g == G - 1)), self.act_wr.addr.eq(s8a),
                         self.act_wr.data.eq(Cat(*held, *[y.as_unsigned() for y in ys]))]
        else:
            m.d.comb += [self.act_wr.en.eq(s8v), self.act_wr.addr.eq(s8a),
                         self.act_wr.data.eq(Cat(*[y.as_unsigned() for y in ys]))]
        return m


class PostUnit(wiring.Component):
    """Runs EPILOGUE and POOL instructions one at a time, sharing one ACT read and one ACT write port."""

    def __init__(self, config: NpuConfig):
        self.config = c = config
        super().__init__({
            "ctl": In(UnitSignature()),
            "act_rd": Out(BufReadSignature(c.abuf_words, word_bits(c, Buffer.ACT))),
            "act_wr": Out(BufWriteSignature(c.abuf_words, word_bits(c, Buffer.ACT))),
            "acc_rd": Out(BufReadSignature(c.accbuf_words, word_bits(c, Buffer.ACC))), **_acc_addr_copies(c),
            "prm_rd": Out(BufReadSignature(*param_read_shape(c))), **_prm_addr_copies(c),
            # ``bram_buffers``: POST reads ACT this cycle (POOL, or an EPILOGUE with a residual).
            **({"act_rd_use": Out(1)} if c.bram_buffers else {}),
        })

    def elaborate(self, platform):
        m = Module()
        c = self.config
        m.submodules.epi = epi = EpilogueEngine(c)
        m.submodules.pool = pool = PoolEngine(c)
        is_pool = Signal()
        running, running_next = Signal(), Signal()
        m.d.comb += running_next.eq(running)
        m.d.sync += running.eq(running_next)
        starts_pool = self.ctl.instr[:4] == Opcode.POOL.value
        with m.If(self.ctl.start):
            m.d.sync += is_pool.eq(starts_pool)
        if c.timing_stages:
            # An instruction register per engine, placed by its engine: one register's fan-out to both
            # engines was a long wire. Each is enabled in four slices by four copies of ``running``: one
            # enable for the ~190 bits of EPILOGUE's was 11.3 ns late (docs/synthesis.md, session 21). A
            # copy may differ in the first cycle after reset, when no instruction can start. Both load
            # every idle cycle, so their enables are those copies alone (loading each only with its own
            # opcode put dispatch's queue head into them: 23-51 late endpoints, session 24); POOL's starts
            # as all ones, so yosys does not merge the two.
            idle = [~r for r in register_copies(m, running_next, 4, "running_ir")]
            ir_epi = instr_register(c, "ir_epi")
            ir_pool = instr_register(c, "ir_pool", ones=True)
            load_instr(m, ir_pool, self.ctl.instr, idle)
            load_instr(m, ir_epi, self.ctl.instr, idle)
        else:
            ir_epi = ir_pool = instr_register(c, "ir_epi")
            load_instr(m, ir_epi, self.ctl.instr, ~running)
        m.d.comb += [epi.instr.eq(ir_epi), pool.instr.eq(ir_pool)]
        wiring.connect(m, wiring.flipped(self.acc_rd), epi.acc_rd)
        m.d.comb += [x.eq(a) for x, a in zip(getattr(self, "acc_rd_addrx", []), getattr(epi, "acc_rd_addrx", []))]
        m.d.comb += [x.eq(a) for x, a in zip(getattr(self, "prm_rd_addrx", []), getattr(epi, "prm_rd_addrx", []))]
        wiring.connect(m, wiring.flipped(self.prm_rd), epi.prm_rd)
        m.d.comb += [pool.act_rd.data.eq(self.act_rd.data), epi.act_rd.data.eq(self.act_rd.data)]
        with m.If(is_pool):
            m.d.comb += [self.act_rd.addr.eq(pool.act_rd.addr), self.act_wr.addr.eq(pool.act_wr.addr),
                         self.act_wr.data.eq(pool.act_wr.data)]
        with m.Else():
            m.d.comb += [self.act_rd.addr.eq(epi.act_rd.addr), self.act_wr.addr.eq(epi.act_wr.addr),
                         self.act_wr.data.eq(epi.act_wr.data)]
        if c.timing_stages:
            # The write's enable from a register of its own, loaded with what the engines' enables will be:
            # the idle engine's pipeline is empty (one instruction at a time, each drained before its
            # done), so an OR chooses as ``is_pool`` does. As that choice of two engines' registers it
            # was, through the ACT write queue's pop, the clock enable of the queue's 84-bit head: up to
            # 77 late endpoints of session 24's builds (docs/synthesis.md, session 25).
            post_wr = Signal(name="post_wr")
            m.d.sync += post_wr.eq(epi.act_wr_next | pool.act_wr_next)
            m.d.comb += self.act_wr.en.eq(post_wr)
        else:
            m.d.comb += self.act_wr.en.eq(Mux(is_pool, pool.act_wr.en, epi.act_wr.en))
        m.d.comb += [self.ctl.busy.eq(running), self.ctl.progress.eq(epi.active | pool.active)]
        if c.bram_buffers:
            residual = data.View(layout(Opcode.EPILOGUE), ir_epi).residual
            m.d.comb += self.act_rd_use.eq(pool.active | (epi.active & residual))
        # The engines' range checks take check_cycles registered steps from their instruction registers.
        ready = CheckStages(m, c, self.ctl.start).ready
        with m.FSM():
            with m.State("IDLE"), m.If(self.ctl.start):
                m.d.comb += running_next.eq(1)
                m.next = "CHECK"
            with m.State("CHECK"), m.If(ready):
                with m.If(Mux(is_pool, pool.bad | pool.bad_field, epi.bad)):
                    m.d.comb += [self.ctl.err.eq(1), self.ctl.err_code.eq(
                        Mux(is_pool & pool.bad_field, ErrorCode.BAD_FIELD, ErrorCode.BUFFER_RANGE))]
                    m.d.comb += running_next.eq(0)
                    m.next = "IDLE"
                with m.Else():
                    m.d.comb += [pool.start.eq(is_pool), epi.start.eq(~is_pool)]
                    m.next = "RUN"
            with m.State("RUN"), m.If(epi.done | pool.done):
                m.d.comb += self.ctl.done.eq(1)
                m.d.comb += running_next.eq(0)
                m.next = "IDLE"
        return m
