"""The rows×lanes int8 MAC array: products, pipelined adder trees, int32 accumulators."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from tessera.arch import NpuConfig

from .common import log2

__all__ = ["MacArray"]


class MacArray(wiring.Component):
    """Output-stationary MAC array.

    Each cycle with ``valid`` one activation word (``lanes`` int8) and one weight
    word (a rows×lanes block, ``weight_bits`` each, element ``m*lanes + n``) enter.
    Row ``m`` reduces its ``lanes`` products in a registered adder tree and adds
    the sum into its int32 accumulator (cleared by ``first``). With ``last`` the
    rows' totals leave on ``o_valid``/``o_sum`` together with ``tag``
    :attr:`latency` cycles later. No stalls: the pipeline advances every cycle
    with ``en`` (the owner holds it low only while idle and drained, which lets
    a simulator skip the array).
    """

    def __init__(self, config: NpuConfig, tag_bits: int = 16):
        self.config = c = config
        self.latency = 1 + log2(c.lanes) + 1
        super().__init__({
            "en": In(1, init=1), "valid": In(1), "first": In(1), "last": In(1), "tag": In(tag_bits),
            "act": In(8 * c.lanes), "wgt": In(c.rows * c.lanes * c.weight_bits),
            "o_valid": Out(1), "o_tag": Out(tag_bits), "o_sum": Out(32 * c.rows),
        })

    def elaborate(self, platform):
        m = Module()
        c = self.config
        N, M, wb = c.lanes, c.rows, c.weight_bits
        pbits = 8 + wb

        def side(prev):
            s = {k: Signal.like(v, name=f"{k}_d") for k, v in prev.items()}
            m.d.sync += [s[k].eq(v) for k, v in prev.items()]
            return s

        with m.If(self.en):
            sb = side({"valid": self.valid, "first": self.first, "last": self.last, "tag": self.tag})
            # Stage 1: products.
            level = []
            for r in range(M):
                row = []
                for n in range(N):
                    a = self.act[8 * n:8 * n + 8].as_signed()
                    idx = r * N + n
                    w = self.wgt[idx * wb:(idx + 1) * wb].as_signed()
                    p = Signal(signed(pbits), name=f"p{r}_{n}")
                    m.d.sync += p.eq(a * w)
                    row.append(p)
                level.append(row)
            # Adder tree: one registered level per halving.
            depth = 0
            while len(level[0]) > 1:
                depth += 1
                sb = side(sb)
                nxt = []
                for r, row in enumerate(level):
                    out = []
                    for i in range(0, len(row), 2):
                        s = Signal(signed(pbits + depth), name=f"t{depth}_{r}_{i // 2}")
                        m.d.sync += s.eq(row[i] + row[i + 1])
                        out.append(s)
                    nxt.append(out)
                level = nxt
            # Accumulate (wrapping int32); emit on the pixel's last term.
            accs = [Signal(signed(32), name=f"acc{r}") for r in range(M)]
            for r in range(M):
                new = (accs[r] + level[r][0])[:32]
                with m.If(sb["valid"]):
                    with m.If(sb["first"]):
                        m.d.sync += accs[r].eq(level[r][0])
                    with m.Else():
                        m.d.sync += accs[r].eq(new)
                m.d.sync += self.o_sum[32 * r:32 * r + 32].eq(Mux(sb["first"], level[r][0], new))
            m.d.sync += [self.o_valid.eq(sb["valid"] & sb["last"]), self.o_tag.eq(sb["tag"])]
        return m

