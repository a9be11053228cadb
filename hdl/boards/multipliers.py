"""int8 × uint8 multipliers for the MAC arrays of the board builds: hard (DSP) and soft (LUT) ones.

Weights are kept in offset binary: ``wu = w + 128`` (the weight's sign bit inverted, free in a
register), so every product is ``a * wu`` with ``a`` signed and ``wu`` unsigned. A dot product then
needs one correction, ``sum(a * w) = sum(a * wu) - 128 * sum(a)``, and ``sum(a)`` is shared by every
row of a matrix-vector array: computed once per array instead of once per multiplier. With an
unsigned ``wu`` every partial product of the soft multiplier is an addition, which lets ECP5 carry
chains absorb the partial-product AND gates (see :func:`ecp5_and_add`).

Every multiplier here has a latency of two cycles, so one adder tree can mix them. Results are
signed(16): ``a * wu`` lies in [-32640, 32385].
"""

from amaranth.hdl import Cat, ClockSignal, Const, Instance, Mux, Signal, signed, unsigned

from .netlist import CARRY_START_INIT

__all__ = ["DSP_KINDS", "SOFT_KINDS", "product", "soft_product", "ecp5_and_add", "AND_ADD_INIT",
           "and_add_wiring", "and_add_halves", "LATENCY", "DSP_A_SHIFT", "mult18x18d_a_pins",
           "mult18x18d_registered", "signed18"]

#: Hard multipliers: "ecp5" (MULT18X18D), "ice40" (SB_MAC16), "infer" (``a * wu`` between registers,
#: for vendor tools that infer DSP blocks, e.g. Quartus on Arria 10).
DSP_KINDS = ("ecp5", "ice40", "infer")
#: Soft multipliers: "generic" (plain Amaranth adds, any tool), "ecp5" (CCU2C with fused ANDs).
SOFT_KINDS = ("generic", "ecp5")
#: Cycles from operands to product, for every kind.
LATENCY = 2


def _ccu2c_init(fn):
    # LUT4 INIT bit i is the output for inputs {D,C,B,A} = i. The CCU2C also uses INIT[3:0] (C=D=0)
    # as a LUT2 of A,B that generates the carry when the LUT4 (propagate) output is 0.
    return sum(fn(i & 1, i >> 1 & 1, i >> 2 & 1, i >> 3 & 1) << i for i in range(16))


#: Propagate = (A & B) ^ (C & D): one bit of x + y with x = A & B and y = C & D. When it is 0,
#: x == y, so the carry out is x = A & B, which is exactly INIT[3:0] as a function of A and B.
AND_ADD_INIT = _ccu2c_init(lambda a, b, c, d: (a & b) ^ (c & d))


def and_add_wiring(j):
    """Inputs of sum bit ``j`` (0..9) of ``g0 * a + 2 * g1 * a``: ((A, B), (C, D)) as names.

    "a{i}" is bit i of the signed activation (sign-extended past bit 7), "g0"/"g1" the gate bits,
    None a constant 0. Shared by the hardware builder and its exhaustive model test.
    """
    x = (f"a{min(j, 7)}", "g0")
    y = (f"a{min(j - 1, 7)}", "g1") if j >= 1 else (None, None)
    return x, y


def and_add_halves():
    """The ten CCU2C halves of :func:`ecp5_and_add`, first to last: (INIT, ((A, B), (C, D)), sum bit).

    Half 0 starts the carry at 0 (:data:`~tessera.hdl.boards.netlist.CARRY_START_INIT`, inputs "1" for
    tied high) and makes no sum bit, so the chain needs no carry in: nextpnr feeds a constant one in
    with a CCU2C of its own. Halves 1..9 make sum bits 1..9; bit 0 (``a0 & g0``) has no carry to take
    and is a LUT. Shared by the builder and its exhaustive model test.
    """
    start = (int(CARRY_START_INIT["0"], 2), (("1", "1"), ("1", "1")), None)
    return [start] + [(AND_ADD_INIT, and_add_wiring(j), j) for j in range(1, 10)]


def ecp5_and_add(m, a, g0, g1, name):
    """``g0 * a + 2 * g1 * a`` (signed(10), combinational) in five CCU2C: the ANDs ride in the carry LUTs.

    Yosys maps an adder of AND terms to separate AND LUTs plus a carry chain; here each carry-chain
    LUT4 computes its propagate from the two AND terms directly, halving the soft multiplier. The
    chain has no carry in or out (:func:`and_add_halves`), so nextpnr adds no CCU2C to start or end it.
    """
    bits = {f"a{i}": a[i] for i in range(8)}
    bits.update({"g0": g0, "g1": g1, "1": Const(1), None: Const(0)})
    s = Signal(signed(10), name=f"{name}_s")
    m.d.comb += s[0].eq(a[0] & g0)
    halves = and_add_halves()
    cin = None
    for c in range(5):
        ports = {}
        for half in range(2):
            init, ((xa, xb), (ya, yb)), j = halves[2 * c + half]
            ports.update({f"i_A{half}": bits[xa], f"i_B{half}": bits[xb], f"i_C{half}": bits[ya],
                          f"i_D{half}": bits[yb], f"p_INIT{half}": Const(init, 16)})
            if j is not None:
                ports[f"o_S{half}"] = s[j]
        if cin is not None:
            ports["i_CIN"] = cin
        if c < 4:
            cin = Signal(name=f"{name}_c{c}")
            ports["o_COUT"] = cin
        m.submodules[f"{name}_ccu{c}"] = Instance("CCU2C", p_INJECT1_0="NO", p_INJECT1_1="NO", **ports)
    return s


def soft_product(m, a, wu, p, name, kind="generic", reset_less=False):
    """``p`` = ``a * wu`` two cycles later from adders only (no multiplier cell).

    Four partial sums ``(wu[2k] + 2 wu[2k+1]) * a`` (registered), then two adder levels to the
    (registered) result. A plain ``a * b`` becomes about 170 LUT4s in yosys (ABC collapses the
    adder tree into logic); this keeps every sum on a carry chain (``keep`` stops yosys from
    merging the two levels into one multi-operand adder, which would lose them).
    """
    if kind not in SOFT_KINDS:
        raise ValueError(f"soft={kind!r}: expected one of {SOFT_KINDS}")
    pairs = []
    for k in range(4):
        g0, g1 = wu[2 * k], wu[2 * k + 1]
        s = Signal(signed(10), name=f"{name}_s{k}", reset_less=reset_less)
        if kind == "ecp5":
            m.d.sync += s.eq(ecp5_and_add(m, a, g0, g1, f"{name}_aa{k}"))
        else:
            m.d.sync += s.eq(Mux(g0, a, 0) + (Mux(g1, a, 0) << 1))
        pairs.append(s)
    t0 = Signal(signed(13), name=f"{name}_t0", attrs={"keep": 1})
    t1 = Signal(signed(13), name=f"{name}_t1", attrs={"keep": 1})
    m.d.comb += [t0.eq(pairs[0] + (pairs[1] << 2)), t1.eq(pairs[2] + (pairs[3] << 2))]
    m.d.sync += p.eq(t0 + (t1 << 4))


#: The int8 activation enters the MULT18X18D's signed 18-bit A port shifted left by this much (A = a * 2**10,
#: its low bits constant 0), and the product leaves from P[10:26]. Sign-extending ``a`` instead would drive ten
#: more A pins per DSP from one net: 1,560 extra routed pins at 156 DSPs, enough to congest the DSP rows.
DSP_A_SHIFT = 10


def mult18x18d_a_pins(j):
    """Source of MULT18X18D pin ``A{j}``: ``"a{i}"`` (bit i of the int8 activation) or None (constant 0).

    Shared by the hardware builder and its exhaustive model test.
    """
    i = j - DSP_A_SHIFT
    return f"a{i}" if 0 <= i < 8 else None


def _mult18x18d_block(m, name, a_pins, b_pins, signed_a, signed_b, input_regs):
    """A MULT18X18D with its output register (and input registers if ``input_regs``): the 36-bit P."""
    clk = "CLK0" if input_regs else "NONE"
    ports = {"i_CLK0": ClockSignal(), "i_CE0": Const(1), "i_RST0": Const(0),
             "i_SIGNEDA": Const(signed_a), "i_SIGNEDB": Const(signed_b), "i_SOURCEA": Const(0), "i_SOURCEB": Const(0)}
    for j in range(18):
        ports[f"i_A{j}"], ports[f"i_B{j}"], ports[f"i_C{j}"] = a_pins[j], b_pins[j], Const(0)
    p36 = Signal(36, name=f"{name}_p36")
    for j in range(36):
        ports[f"o_P{j}"] = p36[j]
    m.submodules[name] = Instance(
        "MULT18X18D",
        p_REG_INPUTA_CLK=clk, p_REG_INPUTB_CLK=clk, p_REG_PIPELINE_CLK="NONE",
        p_REG_OUTPUT_CLK="CLK0", p_REG_INPUTC_CLK="NONE", p_GSR="DISABLED", p_RESETMODE="SYNC", **ports)
    return p36


def _mult18x18d(m, a, wu, p, name):
    # Input and output registers inside the DSP block: two cycles, like the soft path. Constant data pins are
    # set in the bitstream (nextpnr), so only the 16 activation and weight bits are routed into each DSP.
    a_pins = [a[int(src[1:])] if src else Const(0) for src in map(mult18x18d_a_pins, range(18))]
    b_pins = [wu[j] if j < 8 else Const(0) for j in range(18)]  # zero extension
    p36 = _mult18x18d_block(m, name, a_pins, b_pins, 1, 0, input_regs=True)
    m.d.comb += p.eq(p36[DSP_A_SHIFT:DSP_A_SHIFT + 16])


def signed18(v):
    """``v`` (at most 18 bits if signed, 17 if unsigned) as the 18 bits of a signed MULT18X18D operand."""
    if len(v) > (18 if v.shape().signed else 17):
        raise ValueError(f"{len(v)}-bit {'signed' if v.shape().signed else 'unsigned'} operand: too wide for 18 bits")
    return (v.as_signed() if v.shape().signed else Cat(v, Const(0, 1)).as_signed()).as_signed()


def mult18x18d_registered(m, a, b, r, name, input_regs=False):
    """``r`` = ``a * b`` one cycle later, from a MULT18X18D's output register (two cycles later with
    ``input_regs``: its input registers too).

    For :func:`tessera.hdl.common.split_mul`'s pieces on the ECP5: the same value and cycle as a
    fabric register after an inferred multiply, but that register sits in the DSP block, so the wire
    from the block to the adds that use the piece gets a whole cycle (those wires ran 15-17 ns in the
    routed NPU, docs/synthesis.md, session 17). Both operands enter signed (:func:`signed18`), so the
    36-bit product is exact; ``r`` takes it sign-extended or cut to its width.
    """
    a18, b18 = Signal(signed(18), name=f"{name}_a"), Signal(signed(18), name=f"{name}_b")
    m.d.comb += [a18.eq(signed18(a)), b18.eq(signed18(b))]
    p36 = _mult18x18d_block(m, name, list(a18), list(b18), 1, 1, input_regs=input_regs)
    m.d.comb += r.eq(p36.as_signed())


def _sb_mac16(m, a, wu, p, name):
    # A_REG/B_REG input registers and the 16x16 output register: two cycles.
    o = Signal(32, name=f"{name}_o")
    a16 = Signal(signed(16), name=f"{name}_a16")
    b16 = Signal(unsigned(16), name=f"{name}_b16")
    m.d.comb += [a16.eq(a), b16.eq(wu)]
    m.submodules[name] = Instance(
        "SB_MAC16",
        p_NEG_TRIGGER=Const(0, 1), p_C_REG=Const(0, 1), p_A_REG=Const(1, 1), p_B_REG=Const(1, 1),
        p_D_REG=Const(0, 1), p_TOP_8x8_MULT_REG=Const(0, 1), p_BOT_8x8_MULT_REG=Const(0, 1),
        p_PIPELINE_16x16_MULT_REG1=Const(0, 1), p_PIPELINE_16x16_MULT_REG2=Const(1, 1),
        p_TOPOUTPUT_SELECT=Const(3, 2), p_TOPADDSUB_LOWERINPUT=Const(0, 2),
        p_TOPADDSUB_UPPERINPUT=Const(0, 1), p_TOPADDSUB_CARRYSELECT=Const(0, 2),
        p_BOTOUTPUT_SELECT=Const(3, 2), p_BOTADDSUB_LOWERINPUT=Const(0, 2),
        p_BOTADDSUB_UPPERINPUT=Const(0, 1), p_BOTADDSUB_CARRYSELECT=Const(0, 2),
        p_MODE_8x8=Const(0, 1), p_A_SIGNED=Const(1, 1), p_B_SIGNED=Const(0, 1),
        i_CLK=ClockSignal(), i_CE=Const(1), i_A=a16, i_B=b16, i_C=Const(0, 16), i_D=Const(0, 16),
        i_AHOLD=Const(0), i_BHOLD=Const(0), i_CHOLD=Const(0), i_DHOLD=Const(0),
        i_IRSTTOP=Const(0), i_IRSTBOT=Const(0), i_ORSTTOP=Const(0), i_ORSTBOT=Const(0),
        i_OLOADTOP=Const(0), i_OLOADBOT=Const(0), i_ADDSUBTOP=Const(0), i_ADDSUBBOT=Const(0),
        i_OHOLDTOP=Const(0), i_OHOLDBOT=Const(0), i_CI=Const(0), i_ACCUMCI=Const(0),
        i_SIGNEXTIN=Const(0), o_O=o)
    m.d.comb += p.eq(o[:16])


def product(m, a, wu, *, dsp=None, soft="generic", name, reset_less=False):
    """Return a signed(16) signal equal to ``a * wu`` :data:`LATENCY` cycles later.

    Parameters
    ----------
    m : Module
    a : Value
        signed(8) activation.
    wu : Value
        unsigned(8) weight in offset binary (``w + 128``).
    dsp : str or None
        One of :data:`DSP_KINDS` for a hard multiplier, ``None`` for a soft one.
    soft : str
        One of :data:`SOFT_KINDS`, for ``dsp=None``.
    name : str
        Prefix of the signal and instance names.
    reset_less : bool
        Fabric registers without reset (the hard multipliers' own registers have none).
    """
    p = Signal(signed(16), name=f"{name}_p", reset_less=reset_less)
    if dsp == "ecp5":
        _mult18x18d(m, a, wu, p, name)
    elif dsp == "ice40":
        _sb_mac16(m, a, wu, p, name)
    elif dsp == "infer":
        ra = Signal(signed(8), name=f"{name}_a", reset_less=reset_less)
        rw = Signal(unsigned(8), name=f"{name}_w", reset_less=reset_less)
        p.attrs["multstyle"] = "dsp"
        m.d.sync += [ra.eq(a), rw.eq(wu), p.eq(ra * rw)]
    elif dsp is None:
        soft_product(m, a, wu, p, name, soft, reset_less)
    else:
        raise ValueError(f"dsp={dsp!r}: expected one of {DSP_KINDS} or None")
    return p
