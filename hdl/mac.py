"""The rows×lanes int8 MAC array: products, pipelined adder trees, int32 accumulators."""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from tessera.arch import NpuConfig

from .common import delay, log2, register_copies, register_fanout

__all__ = ["MacArray"]


class MacArray(wiring.Component):
    """Output-stationary MAC array.

    Each cycle with ``valid`` one activation word (``lanes`` int8) and one weight
    word (a rows×lanes block, ``weight_bits`` each, element ``m*lanes + n``) enter.
    Row ``m`` reduces its ``lanes`` products in a registered adder tree and adds
    the sum into its int32 accumulator (cleared by ``first``). With ``last`` the
    rows' totals leave on ``o_valid``/``o_sum`` together with ``tag``
    :attr:`latency` cycles later (``o_sum`` shows the accumulators: it holds the totals in the
    ``o_valid`` cycle only). No stalls: the pipeline advances every cycle
    with ``en`` (the owner holds it low only while idle and drained, which lets
    a simulator skip the array; with ``timing_stages`` it is held high, so the
    array has no enable net).

    ``multipliers`` = (dsp_kind, dsp_products, soft_kind) builds the products for a board with
    :func:`tessera.hdl.boards.multipliers.product` (8-bit weights, at least 4 lanes): the first
    ``dsp_products`` (row-major) on hard multipliers, the rest soft; weights in offset binary with
    one ``128 * sum(act)`` correction per array. Those products take two cycles, so the first adder
    level is combinational and :attr:`latency` (and every cycle count) stays the same.

    With ``timing_stages`` (:attr:`~tessera.arch.NpuConfig.mac_stages`) the operands are registered
    at the input and every product waits in fabric registers before its row's adder tree; the
    latency grows by as many cycles. The activation word then passes one more register, a copy per
    one or two rows, so the weight word enters :attr:`wgt_lag` cycles after its activation word
    (its owner reads it that much later: the weights need no registers of their own for it).

    With ``acc_add`` a pixel's first term adds to its old total ``acc_old``, the one-cycle read of
    ``acc_addr`` (a pixel's tag) issued a cycle before that term reaches the accumulators, with
    ``timing_stages`` two cycles before (the word then waits in a register of the array).
    """

    def __init__(self, config: NpuConfig, tag_bits: int = 16, multipliers=None, acc_copies: int = 1):
        self.config = c = config
        if multipliers is not None and (c.weight_bits != 8 or c.lanes < 4):
            multipliers = None
        self.multipliers = multipliers
        self.stages = c.mac_stages
        # With timing_stages only the valid bits keep a reset: the reset net reached every data
        # register of the array (CONV's routed critical path, 13.8 ns of wire to the farthest).
        self.reset_less = c.timing_stages
        self.latency = 1 + log2(c.lanes) + 1 + sum(self.stages.values())
        #: Cycles the weight word enters after its activation word (and sideband).
        self.wgt_lag = self.stages["act_fanout"]
        assert self.stages["operands"] or not self.wgt_lag
        self.acc_copies = acc_copies
        super().__init__({
            "en": In(1, init=1), "valid": In(1), "first": In(1), "last": In(1), "tag": In(tag_bits),
            "act": In(8 * c.lanes), "wgt": In(c.rows * c.lanes * c.weight_bits),
            "o_valid": Out(1), "o_tag": Out(tag_bits), "o_sum": Out(32 * c.rows),
            "acc_add": In(1), "acc_addr": Out(tag_bits), "acc_old": In(32 * c.rows),
            # Copies of acc_addr, one per further column group of the ACC buffer (hdl/buffers.py).
            **({"acc_addrx": Out(tag_bits).array(acc_copies - 1)} if acc_copies > 1 else {}),
        })

    def elaborate(self, platform):
        m = Module()
        c = self.config
        N, M, wb = c.lanes, c.rows, c.weight_bits
        pbits = 8 + wb
        rl = self.reset_less

        before = {}                                    # the sideband a cycle before the last side()
        history = []                                   # every side()'s input, oldest first

        def side(prev):
            before.update(prev)
            history.append(dict(prev))
            s = {k: Signal.like(v, name=f"{k}_d", reset_less=rl and k != "valid") for k, v in prev.items()}
            m.d.sync += [s[k].eq(v) for k, v in prev.items()]
            return s

        with m.If(self.en):
            sb = {"valid": self.valid, "first": self.first, "last": self.last, "tag": self.tag}
            acts, wgt = [self.act] * M, self.wgt
            if self.stages["operands"]:
                # The weight word, wgt_lag cycles behind, meets the activation's last copy here.
                acts, wgt = self._operand_registers(m), delay(m, wgt, 1, "wgt_in", reset_less=rl)
                for _ in range(1 + self.wgt_lag):
                    sb = side(sb)
            sb = side(sb)
            if self.multipliers is not None:
                level, corr = self._board_products(m, acts, wgt)
                sb = side(sb)                          # the products' second cycle
                pbits = len(level[0][0])
                depth = 1
            else:
                level, corr, depth = self._products(m, acts, wgt), None, 0
            for _ in range(self.stages["products"]):
                sb = side(sb)
            # Adder tree: one registered level per halving.
            while len(level[0]) > 1:
                depth += 1
                sb = side(sb)
                nxt = []
                for r, row in enumerate(level):
                    out = []
                    for i in range(0, len(row), 2):
                        s = Signal(signed(pbits + depth + (corr is not None)), name=f"t{depth}_{r}_{i // 2}",
                                   reset_less=rl)
                        total = row[i] + row[i + 1]
                        if corr is not None and len(row) == 2:
                            total = total - corr       # the offset-binary correction, at the root
                        m.d.sync += s.eq(total)
                        out.append(s)
                    nxt.append(out)
                level = nxt
            # Accumulate (wrapping int32); emit on the pixel's last term.
            accs = [Signal(signed(32), name=f"acc{r}", reset_less=rl) for r in range(M)]
            # The totals are the accumulators themselves, read in the o_valid cycle (the cycle after the
            # last term): a separate o_sum register was 32 * rows more flip-flops in the most congested
            # corner of the routed NPU (docs/synthesis.md, session 10).
            m.d.comb += self.o_sum.eq(Cat(*accs))
            # A pixel's first term adds to its old total (acc_add) or to 0; the read of that total was
            # addressed a cycle earlier, so the old word meets the term here. Each group of rows has
            # its own copy of the enable and the selects: one register's 32 * rows loads across the
            # array were late in the routed NPU (docs/synthesis.md, session 11). The copies' first
            # cycle after reset does not matter: a pixel's first term overwrites the accumulator.
            # With timing_stages the old word is read a cycle earlier still and waits in a register here:
            # the ACC block RAMs' wire into the accumulators' adds was 14-15 ns in the routed NPU
            # (docs/synthesis.md, session 17).
            acc_old = delay(m, self.acc_old, 1, "acc_old_r", reset_less=True) if rl else self.acc_old
            n = min(self.ACT_COPIES, M)
            en = register_copies(m, before["valid"], n, "acc_en", rl)
            first = register_copies(m, before["first"], n, "acc_first", rl)
            use_old = register_copies(m, before["first"] & self.acc_add, n, "acc_use_old", rl)
            for r in range(M):
                g = r * n // M
                base = Mux(use_old[g], acc_old[32 * r:32 * r + 32].as_signed(),
                           Mux(first[g], 0, accs[r]))
                with m.If(en[g]):
                    m.d.sync += accs[r].eq((base + level[r][0])[:32])
            m.d.sync += [self.o_valid.eq(sb["valid"] & sb["last"]), self.o_tag.eq(sb["tag"])]
            if self.acc_copies > 1:
                # history[-2]'s tag is history[-3]'s a cycle (of en) later: so is each copy, kept apart
                # (register_copies; a copy may differ in the first cycle after reset, when nothing reads).
                assert rl, "ACC address copies come with timing_stages"
                addrs = register_copies(m, history[-3]["tag"], self.acc_copies, "acc_rd_addr", reset_less=True)
                m.d.comb += [self.acc_addr.eq(addrs[0])] + [x.eq(a) for x, a in zip(self.acc_addrx, addrs[1:])]
        if self.acc_copies == 1:
            m.d.comb += self.acc_addr.eq((history[-2] if rl else before)["tag"])
        return m

    #: Copies of the registered activation word, each feeding a group of rows (with ``act_fanout``:
    #: :attr:`ACT_FANOUT`).
    ACT_COPIES = 4
    #: Copies of the activation word after ``act_fanout``'s second register.
    ACT_FANOUT = 8

    def _operand_registers(self, m):
        """The registered activation word, one copy per group of rows: returns each row's copy.

        One register would fan every activation bit out to every row's multipliers across the die
        (CONV's routed critical path, 13 ns of wire); :func:`~tessera.hdl.common.register_copies`.
        With ``act_fanout`` a second level (:func:`~tessera.hdl.common.register_fanout`) gives every
        one or two rows a copy that is not inverted: an inverted copy's inverter LUT before the soft
        multipliers' carry chains drove four rows, 9.5 ns of wire (docs/synthesis.md, session 20).
        """
        c = self.config
        if self.wgt_lag:
            assert self.wgt_lag in (1, 2), self.wgt_lag
            # With a lag of 2 the word is registered once first, beside the buffer read and CONV's
            # padding select that make it: from there straight into the four parent copies, spread
            # by their rows, was 12.8 ns (docs/synthesis.md, session 21).
            act = delay(m, self.act, self.wgt_lag - 1, "act_rd", self.reset_less)
            words = register_fanout(m, act, min(self.ACT_FANOUT, c.rows), "act_in", self.reset_less)
        else:
            words = register_copies(m, self.act, min(self.ACT_COPIES, c.rows), "act_in", self.reset_less)
        return [words[r * len(words) // c.rows] for r in range(c.rows)]

    def _products(self, m, acts, wgt):
        """Stage 1: registered ``a * w`` products, signed weights (then ``products`` delays)."""
        c = self.config
        N, M, wb = c.lanes, c.rows, c.weight_bits
        level = []
        for r in range(M):
            row = []
            for n in range(N):
                a = acts[r][8 * n:8 * n + 8].as_signed()
                idx = r * N + n
                w = wgt[idx * wb:(idx + 1) * wb].as_signed()
                p = Signal(signed(8 + wb), name=f"p{r}_{n}", reset_less=self.reset_less)
                m.d.sync += p.eq(a * w)
                row.append(delay(m, p, self.stages["products"], reset_less=self.reset_less))
            level.append(row)
        return level

    def _board_products(self, m, acts_of_row, wgt):
        """Two-cycle board products (offset-binary weights), then the combinational first adder level.

        Returns the first level's sums and the correction ``128 * sum(act)`` aligned with the tree's
        root (registered levels below it: ``log2(lanes) - 1``).
        """
        from tessera.hdl.boards.multipliers import LATENCY, product
        assert LATENCY == 2
        c = self.config
        N, M = c.lanes, c.rows
        P = self.stages["products"]
        dsp, dsp_products, soft = self.multipliers
        level = []
        for r in range(M):
            prods = []
            for n in range(N):
                idx = r * N + n
                wu = wgt[8 * idx:8 * idx + 8] ^ 0x80          # w + 128, unsigned
                p = product(m, acts_of_row[r][8 * n:8 * n + 8].as_signed(), wu,
                            dsp=dsp if idx < dsp_products else None, soft=soft, name=f"mul{r}_{n}",
                            reset_less=self.reset_less)
                prods.append(delay(m, p, P, reset_less=self.reset_less))
            pairs = []
            for i in range(0, N, 2):
                s = Signal(signed(17), name=f"t1_{r}_{i // 2}", attrs={"keep": 1})
                m.d.comb += s.eq(prods[i] + prods[i + 1])
                pairs.append(s)
            level.append(pairs)
        # sum(act) shares the array's input; it reaches the root with the rows' sums, as a registered
        # adder tree (one level per cycle: as one sum it followed the buffer read in one cycle).
        sums, levels = [acts_of_row[0][8 * n:8 * n + 8].as_signed() for n in range(N)], 0
        while len(sums) > 1:
            levels += 1
            nxt = []
            for i in range(0, len(sums), 2):
                t = Signal(signed(8 + levels), name=f"asum{levels}_{i // 2}", reset_less=self.reset_less)
                m.d.sync += t.eq(sums[i] + sums[i + 1])
                nxt.append(t)
            sums = nxt
        # The root's inputs are LATENCY + P + (log2(lanes) - 2) registers after the operands (the first level
        # of pairs is combinational); the correction meets them there.
        wait = LATENCY + P + log2(N) - 2 - levels
        assert wait >= 0, wait
        return level, delay(m, sums[0], wait, "asum", reset_less=self.reset_less) << 7
