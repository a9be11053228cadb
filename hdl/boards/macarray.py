"""A stand-in compute core for board builds: a rows×lanes int8 MAC array that nothing can optimize away.

It has the shape of the NPU's matrix-vector engine (one activation vector shared by every row, a
weight per MAC, a pipelined adder tree per row, a 32-bit accumulator per row) and is fed by an LFSR,
with every accumulator bit XOR-reduced into one output. It sizes the device (how many int8 MACs
fit, at which Fmax) and develops the synthesis flow independently of the NPU's control logic.

Products go either to hard multipliers (instantiated explicitly, so exactly ``dsp_products`` of them
are used) or to soft (LUT) multipliers (see :mod:`.multipliers`; weights in offset binary).
"""

from amaranth.hdl import ClockDomain, ClockSignal, DomainRenamer, Module, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from .multipliers import DSP_KINDS, LATENCY, SOFT_KINDS, product

__all__ = ["MacArrayDemo"]

#: LFSR taps (x^32 + x^22 + x^2 + x + 1, maximal length) for the 32-bit Fibonacci LFSR.
_LFSR_TAPS = (31, 21, 1, 0)


def lfsr32(m, init=1, name="lfsr"):
    """A free-running 32-bit maximal-length LFSR (``_LFSR_TAPS``), starting from ``init``; returns its register."""
    lfsr = Signal(32, init=init, name=name)
    feedback = 0
    for t in _LFSR_TAPS:
        feedback = feedback ^ lfsr[t]
    m.d.sync += lfsr.eq((lfsr << 1) | feedback)
    return lfsr


def _pipelined_sum(m, terms, name, reg_every=2):
    """Sum a power-of-two number of signed terms with a binary adder tree.

    Levels are registered every ``reg_every`` levels and at the root. Returns (sum, latency).
    """
    if len(terms) & (len(terms) - 1):
        raise ValueError(f"{name}: {len(terms)} terms, expected a power of two")
    level, latency = 0, 0
    while len(terms) > 1:
        registered = (level + 1) % reg_every == 0 or len(terms) == 2
        nxt = []
        for i in range(0, len(terms) - 1, 2):
            a, b = terms[i], terms[i + 1]
            # keep: a combinational level must stay its own adder (carry chain), not a multi-input sum.
            s = Signal(signed(max(len(a), len(b)) + 1), name=f"{name}_l{level}_{i // 2}",
                       attrs={} if registered else {"keep": 1})
            if registered:
                m.d.sync += s.eq(a + b)
            else:
                m.d.comb += s.eq(a + b)
            nxt.append(s)
        terms = nxt
        level += 1
        latency += registered
    return terms[0], latency


def _pipelined_xor(m, bits, name, fan_in=4):
    """XOR-reduce bits with a registered tree of ``fan_in``-input XORs (one LUT4 each)."""
    level = 0
    while len(bits) > 1:
        nxt = []
        for i in range(0, len(bits), fan_in):
            group = bits[i:i + fan_in]
            r = Signal(name=f"{name}_l{level}_{i // fan_in}")
            x = group[0]
            for g in group[1:]:
                x = x ^ g
            m.d.sync += r.eq(x)
            nxt.append(r)
        bits = nxt
        level += 1
    return bits[0]


class MacArrayDemo(wiring.Component):
    """``rows``×``lanes`` int8 multiply-accumulate array fed by an LFSR; every result reaches ``led``.

    Each cycle every row computes the dot product of its ``lanes`` weights with the shared
    activation vector and adds it to its 32-bit accumulator (so ``rows * lanes`` MACs per cycle, as
    the NPU's matrix-vector engine). Weights are stationary, in offset binary: they shift in through
    one chain over the whole array when the LFSR says so. Activations move one lane per cycle
    through a delay line. ``128 * sum(activations)`` is subtracted once per row (see
    :mod:`.multipliers`), so ``acc[r]`` is the true int8 sum of ``a * w``.

    Parameters
    ----------
    rows, lanes : int
        Array shape; ``lanes`` a power of two.
    dsp : str or None
        Hard-multiplier kind (see :data:`DSP_KINDS`).
    dsp_products : int
        How many of the ``rows * lanes`` products use a hard multiplier (the first ones, row-major).
    soft : str
        Soft-multiplier kind for the others (see :data:`SOFT_KINDS`).
    rows_per_group : int
        Rows sharing one activation delay line (bounds the fan-out of each activation bit). On the
        ECP5 at 512 MACs even 4 rows were too far apart: an activation register 14.8 ns of wire
        from one of its multipliers (docs/synthesis.md), hence one line per row by default.
    product_regs : int
        Fabric registers after every product before the adder tree. A row's hard multipliers sit
        in the device's DSP rows, spread over much of the die's width, so the wire from a DSP
        output to the row's adders needs a cycle of its own (and a stage to retime into).

    Attributes
    ----------
    led : Signal, out
        XOR of every accumulator bit (registered); drives a LED so nothing is optimized away.
    """

    led: Out(1)

    def __init__(self, rows, lanes, *, dsp=None, dsp_products=0, soft="generic", rows_per_group=1,
                 product_regs=0):
        self._MustUse__silence = True  # a rejected instance is not an unused design
        if rows < 1 or lanes < 1 or lanes & (lanes - 1):
            raise ValueError(f"rows={rows}, lanes={lanes}: need rows >= 1 and lanes a power of two")
        if not 0 <= dsp_products <= rows * lanes:
            raise ValueError(f"dsp_products={dsp_products} must be within 0..{rows * lanes}")
        if dsp_products and dsp not in DSP_KINDS:
            raise ValueError(f"dsp_products={dsp_products} needs dsp in {DSP_KINDS}, not {dsp!r}")
        if soft not in SOFT_KINDS:
            raise ValueError(f"soft={soft!r}: expected one of {SOFT_KINDS}")
        if product_regs < 0:
            raise ValueError(f"product_regs={product_regs} must be >= 0")
        self.product_regs = product_regs
        self.rows, self.lanes, self.dsp, self.dsp_products, self.soft = rows, lanes, dsp, dsp_products, soft
        self._MustUse__silence = False
        super().__init__()
        # Internal registers, kept as attributes so a testbench can check the arithmetic.
        self.rows_per_group = rows_per_group
        self.act_groups = [[Signal(signed(8), name=f"act{g}_{i}") for i in range(lanes)]
                           for g in range(-(-rows // rows_per_group))]
        self.weights = [[Signal(unsigned(8), name=f"wu{r}_{i}") for i in range(lanes)] for r in range(rows)]
        self.accs = [Signal(signed(32), name=f"acc{r}") for r in range(rows)]

    def acts_of_row(self, r):
        """The activation registers row ``r`` multiplies with."""
        return self.act_groups[r // self.rows_per_group]

    @property
    def macs_per_cycle(self):
        return self.rows * self.lanes

    def elaborate(self, platform):
        # Every register of the array is reset-less: nothing in it needs a reset (each starts from its
        # init value at configuration, and the running sums stay consistent with their lines), and a
        # synchronous reset fanned out to tens of thousands of flip-flops was the critical path of the
        # routed 512-MAC build (15.3 ns of wire to one weight register's LSR; docs/synthesis.md).
        m = Module()
        m.domains.datapath = datapath = ClockDomain("datapath", reset_less=True, local=True)
        m.d.comb += datapath.clk.eq(ClockSignal("sync"))
        m.submodules.array = DomainRenamer("datapath")(self._array())
        return m

    def _array(self):
        m = Module()
        lfsr = lfsr32(m)

        # Activations: per group of rows a delay line one byte per lane, refilled every cycle from
        # its own LFSR. One line for all rows would fan every activation bit out to hundreds of
        # carry-chain inputs (the slowest nets after placement). yosys merges flip-flops whose inputs
        # are the same nets, so lines fed from one LFSR's bits collapsed into that LFSR's shift
        # register and into each other (the reset-less 512-MAC build's critical path ran from row 30's
        # line into group 0's running sum, 13.2 ns of wire): each line has its own LFSR, entered
        # through an XOR of two of its bytes, which no other flip-flop's input repeats.
        entering = []
        for g in range(len(self.act_groups)):
            own = lfsr32(m, init=0x9E3779B9 ^ (g + 1), name=f"alfsr{g}")
            entering.append((own[:8] ^ own[8:16]).as_signed())
        for g, acts in enumerate(self.act_groups):
            m.d.sync += acts[0].eq(entering[g])
            for i in range(1, self.lanes):
                m.d.sync += acts[i].eq(acts[i - 1])

        # Weights (offset binary): one shift chain through all rows. The shift enable comes from LFSR
        # bit 31 through a chain of per-row registers, so no net drives every weight register.
        weights = self.weights
        enables = [Signal(name=f"wshift{r}") for r in range(self.rows)]
        m.d.sync += enables[0].eq(lfsr[31])
        for r in range(1, self.rows):
            m.d.sync += enables[r].eq(enables[r - 1])
        for r in range(self.rows):
            with m.If(enables[r]):
                src = lfsr[8:16] if r == 0 else weights[r - 1][-1]
                m.d.sync += weights[r][0].eq(src)
                for i in range(1, self.lanes):
                    m.d.sync += weights[r][i].eq(weights[r][i - 1])

        # The offset-binary correction, one per group, as a running sum of its delay line: a byte enters
        # and one leaves each cycle, so sum(acts) updates with one add and one subtract (a tree per group
        # would cost a row's adders; a registered copy of the line would be merged into the line itself).
        sums = []
        for g, acts in enumerate(self.act_groups):
            s = Signal(signed(8 + (self.lanes - 1).bit_length() + 1), name=f"asum{g}")
            m.d.sync += s.eq(s + entering[g] - acts[-1])
            sums.append(s)
        acc_bits = []
        for r in range(self.rows):
            prods = []
            for i in range(self.lanes):
                k = r * self.lanes + i
                p = product(m, self.acts_of_row(r)[i], weights[r][i],
                            dsp=self.dsp if k < self.dsp_products else None, soft=self.soft, name=f"mul{r}_{i}")
                for d in range(self.product_regs):
                    q = Signal.like(p, name=f"mul{r}_{i}_r{d}")
                    m.d.sync += q.eq(p)
                    p = q
                prods.append(p)
            dot, tree_latency = _pipelined_sum(m, prods, f"row{r}")
            # sum(acts) of the cycle the products' operands were registered, delayed like a product.
            asum = sums[r // self.rows_per_group]
            for k in range(LATENCY + self.product_regs + tree_latency):
                d = Signal.like(asum, name=f"{asum.name}_r{r}_d{k}")
                m.d.sync += d.eq(asum)
                asum = d
            # Registered apart from the accumulation: a three-input sum would lose its carry chains.
            true_dot = Signal(signed(len(dot) + 9), name=f"row{r}_dot")
            m.d.sync += true_dot.eq(dot - (asum << 7))
            acc = self.accs[r]
            m.d.sync += acc.eq(acc + true_dot)
            acc_bits.extend(acc[b] for b in range(32))
        m.d.sync += self.led.eq(_pipelined_xor(m, acc_bits, "xor"))
        return m
