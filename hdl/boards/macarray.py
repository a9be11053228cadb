"""A stand-in compute core for board builds: a rows×lanes int8 MAC array that nothing can optimize away.

It has the shape of the NPU's matrix-vector engine (one activation vector shared by every row, a
weight per MAC, a pipelined adder tree per row, a 32-bit accumulator per row) and is fed by an LFSR,
with every accumulator bit XOR-reduced into one output. It sizes the device (how many int8 MACs
fit, at which Fmax) and develops the synthesis flow independently of the NPU's control logic.

Products go either to hard multipliers (instantiated explicitly, so exactly ``dsp_products`` of them
are used) or to soft (LUT) multipliers; both have the same three-cycle latency so a row's adder tree can mix them.
"""

from amaranth.hdl import ClockSignal, Const, Instance, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

__all__ = ["MacArrayDemo", "product", "soft_product", "DSP_KINDS"]

#: How a hard multiplier is instantiated: "ecp5" (MULT18X18D), "ice40" (SB_MAC16), "infer" (``a * b``
#: registered both sides, for vendor tools that infer DSP blocks, e.g. Quartus on Arria 10).
DSP_KINDS = ("ecp5", "ice40", "infer")

#: LFSR taps (x^32 + x^22 + x^2 + x + 1, maximal length) for the 32-bit Fibonacci LFSR.
_LFSR_TAPS = (31, 21, 1, 0)


def _mult18x18d(m, a, b, p, name):
    # Input, pipeline and output registers inside the DSP block: three cycles, like the soft path.
    ports = {"i_CLK0": ClockSignal(), "i_CE0": Const(1), "i_RST0": Const(0),
             "i_SIGNEDA": Const(1), "i_SIGNEDB": Const(1), "i_SOURCEA": Const(0), "i_SOURCEB": Const(0)}
    for i in range(18):
        ports[f"i_A{i}"] = a[min(i, len(a) - 1)]  # sign extension to 18 bits
        ports[f"i_B{i}"] = b[min(i, len(b) - 1)]
        ports[f"i_C{i}"] = Const(0)
    p36 = Signal(36, name=f"{name}_p36")
    for i in range(36):
        ports[f"o_P{i}"] = p36[i]
    m.submodules[name] = Instance(
        "MULT18X18D",
        p_REG_INPUTA_CLK="CLK0", p_REG_INPUTB_CLK="CLK0", p_REG_OUTPUT_CLK="CLK0",
        p_REG_INPUTC_CLK="NONE", p_REG_PIPELINE_CLK="CLK0", p_GSR="DISABLED",
        p_RESETMODE="SYNC", **ports)
    m.d.comb += p.eq(p36[:len(p)])


def _sb_mac16(m, a, b, p, name):
    # Input registers (A_REG/B_REG) and the 16x16 output pipeline register: two cycles as well.
    o = Signal(32, name=f"{name}_o")
    a16 = Signal(signed(16), name=f"{name}_a16")
    b16 = Signal(signed(16), name=f"{name}_b16")
    m.d.comb += [a16.eq(a), b16.eq(b)]  # sign extension to the 16-bit operands
    m.submodules[name] = Instance(
        "SB_MAC16",
        p_NEG_TRIGGER=Const(0, 1), p_C_REG=Const(0, 1), p_A_REG=Const(1, 1), p_B_REG=Const(1, 1),
        p_D_REG=Const(0, 1), p_TOP_8x8_MULT_REG=Const(0, 1), p_BOT_8x8_MULT_REG=Const(0, 1),
        p_PIPELINE_16x16_MULT_REG1=Const(0, 1), p_PIPELINE_16x16_MULT_REG2=Const(1, 1),
        p_TOPOUTPUT_SELECT=Const(3, 2), p_TOPADDSUB_LOWERINPUT=Const(0, 2),
        p_TOPADDSUB_UPPERINPUT=Const(0, 1), p_TOPADDSUB_CARRYSELECT=Const(0, 2),
        p_BOTOUTPUT_SELECT=Const(3, 2), p_BOTADDSUB_LOWERINPUT=Const(0, 2),
        p_BOTADDSUB_UPPERINPUT=Const(0, 1), p_BOTADDSUB_CARRYSELECT=Const(0, 2),
        p_MODE_8x8=Const(0, 1), p_A_SIGNED=Const(1, 1), p_B_SIGNED=Const(1, 1),
        i_CLK=ClockSignal(), i_CE=Const(1),
        i_A=a16, i_B=b16,
        i_C=Const(0, 16), i_D=Const(0, 16),
        i_AHOLD=Const(0), i_BHOLD=Const(0), i_CHOLD=Const(0), i_DHOLD=Const(0),
        i_IRSTTOP=Const(0), i_IRSTBOT=Const(0), i_ORSTTOP=Const(0), i_ORSTBOT=Const(0),
        i_OLOADTOP=Const(0), i_OLOADBOT=Const(0), i_ADDSUBTOP=Const(0), i_ADDSUBBOT=Const(0),
        i_OHOLDTOP=Const(0), i_OHOLDBOT=Const(0), i_CI=Const(0), i_ACCUMCI=Const(0),
        i_SIGNEXTIN=Const(0), o_O=o)
    m.d.comb += p.eq(o[:len(p)])


def soft_product(m, a, b, p, name):
    """Registered shift-and-add multiplier: ``p`` = ``a * b`` three cycles later, in LUTs and carry chains.

    Yosys turns a plain ``a * b`` into about 170 LUT4s without carry chains (ABC collapses the
    adder tree); keeping each partial-product sum as its own adder maps them onto carry chains
    (about 65 LUT4 and 36 CCU2C on ECP5). The first adder level is registered for Fmax.
    """
    ra = Signal(signed(8), name=f"{name}_a")
    rb = Signal(signed(8), name=f"{name}_b")
    m.d.sync += [ra.eq(a), rb.eq(b)]
    # Two's complement: bit 7 of b weighs -128, so its partial product is subtracted.
    terms = [Mux(rb[i], ra << i, 0) for i in range(7)] + [-Mux(rb[7], ra << 7, 0)]
    pairs = []
    for i in range(0, 8, 2):
        s = Signal(signed(16), name=f"{name}_pp{i // 2}")
        m.d.sync += s.eq(terms[i] + terms[i + 1])
        pairs.append(s)
    s0 = Signal(signed(16), name=f"{name}_s0", attrs={"keep": 1})
    s1 = Signal(signed(16), name=f"{name}_s1", attrs={"keep": 1})
    m.d.comb += [s0.eq(pairs[0] + pairs[1]), s1.eq(pairs[2] + pairs[3])]
    m.d.sync += p.eq(s0 + s1)


def product(m, a, b, *, dsp, name):
    """Return a signed(16) signal equal to ``a * b`` (two int8) three cycles later.

    Parameters
    ----------
    m : Module
        Module to add the logic to.
    a, b : Value
        signed(8) operands.
    dsp : str or None
        One of :data:`DSP_KINDS` to use a hard multiplier, ``None`` for a soft (LUT) one.
    name : str
        Instance name prefix.
    """
    p = Signal(signed(16), name=f"{name}_p")
    if dsp == "ecp5":
        _mult18x18d(m, a, b, p, name)
    elif dsp == "ice40":
        p2 = Signal(signed(16), name=f"{name}_p2")
        _sb_mac16(m, a, b, p2, name)
        m.d.sync += p.eq(p2)  # the third register, to match the soft path
    elif dsp == "infer":
        ra = Signal(signed(8), name=f"{name}_a")
        rb = Signal(signed(8), name=f"{name}_b")
        rp = Signal(signed(16), name=f"{name}_rp", attrs={"multstyle": "dsp"})
        m.d.sync += [ra.eq(a), rb.eq(b), rp.eq(ra * rb), p.eq(rp)]
    elif dsp is None:
        soft_product(m, a, b, p, name)
    else:
        raise ValueError(f"dsp={dsp!r}: expected one of {DSP_KINDS} or None")
    return p


def _pipelined_sum(m, terms, name):
    """Sum signed terms with a binary tree, one register level per tree level."""
    level = 0
    while len(terms) > 1:
        nxt = []
        for i in range(0, len(terms) - 1, 2):
            a, b = terms[i], terms[i + 1]
            s = Signal(signed(max(len(a), len(b)) + 1), name=f"{name}_l{level}_{i // 2}")
            m.d.sync += s.eq(a + b)
            nxt.append(s)
        if len(terms) % 2:
            s = Signal.like(terms[-1], name=f"{name}_l{level}_pass")
            m.d.sync += s.eq(terms[-1])
            nxt.append(s)
        terms = nxt
        level += 1
    return terms[0]


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
    the NPU's matrix-vector engine). Weights are stationary: they shift in through one chain over
    the whole array when the LFSR says so. Activations move one lane per cycle through a delay line.

    Parameters
    ----------
    rows, lanes : int
        Array shape; ``lanes`` a power of two.
    dsp : str or None
        Hard-multiplier kind (see :data:`DSP_KINDS`); ``None`` puts every product in LUTs.
    dsp_products : int
        How many of the ``rows * lanes`` products use a hard multiplier (the first ones, row-major).

    Attributes
    ----------
    led : Signal, out
        XOR of every accumulator bit (registered); drives a LED so nothing is optimized away.
    """

    led: Out(1)

    def __init__(self, rows, lanes, *, dsp=None, dsp_products=0):
        if rows < 1 or lanes < 1 or lanes & (lanes - 1):
            raise ValueError(f"rows={rows}, lanes={lanes}: need rows >= 1 and lanes a power of two")
        if not 0 <= dsp_products <= rows * lanes:
            raise ValueError(f"dsp_products={dsp_products} must be within 0..{rows * lanes}")
        if dsp_products and dsp not in DSP_KINDS:
            raise ValueError(f"dsp_products={dsp_products} needs dsp in {DSP_KINDS}, not {dsp!r}")
        self.rows, self.lanes, self.dsp, self.dsp_products = rows, lanes, dsp, dsp_products
        super().__init__()

    @property
    def macs_per_cycle(self):
        return self.rows * self.lanes

    def elaborate(self, platform):
        m = Module()
        lfsr = Signal(32, init=1)
        feedback = 0
        for t in _LFSR_TAPS:
            feedback = feedback ^ lfsr[t]
        m.d.sync += lfsr.eq((lfsr << 1) | feedback)

        # Activations: a delay line one byte per lane, refilled from the LFSR every cycle.
        acts = [Signal(signed(8), name=f"act{i}") for i in range(self.lanes)]
        m.d.sync += acts[0].eq(lfsr[:8])
        for i in range(1, self.lanes):
            m.d.sync += acts[i].eq(acts[i - 1])

        # Weights: one shift chain through all rows, advancing when LFSR bit 31 is set.
        weights = [[Signal(signed(8), name=f"w{r}_{i}") for i in range(self.lanes)] for r in range(self.rows)]
        chain = [w for row in weights for w in row]
        with m.If(lfsr[31]):
            m.d.sync += chain[0].eq(lfsr[8:16])
            for i in range(1, len(chain)):
                m.d.sync += chain[i].eq(chain[i - 1])

        acc_bits = []
        for r in range(self.rows):
            prods = []
            for i in range(self.lanes):
                k = r * self.lanes + i
                prods.append(product(m, acts[i], weights[r][i],
                                     dsp=self.dsp if k < self.dsp_products else None, name=f"mul{r}_{i}"))
            dot = _pipelined_sum(m, prods, f"row{r}")
            acc = Signal(signed(32), name=f"acc{r}")
            m.d.sync += acc.eq(acc + dot)
            acc_bits.extend(acc[b] for b in range(32))
        m.d.sync += self.led.eq(_pipelined_xor(m, acc_bits, "xor"))
        return m
