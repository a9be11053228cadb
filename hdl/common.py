"""Shared interface signatures and arithmetic helpers of the NPU components.

Every size comes from an :class:`~tessera.arch.NpuConfig`; every instruction
layout from :func:`tessera.isa.layout`.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from tessera.arch import NpuConfig
from tessera.isa import INSTR_BITS, Buffer, ErrorCode
from tessera.numerics import SIG_BITS

__all__ = [
    "ADDR_BITS",
    "BRAM_BITS",
    "BufReadSignature",
    "BufWriteSignature",
    "CheckStages",
    "bit_length",
    "MemPortSignature",
    "ReadClientSignature",
    "UnitSignature",
    "acc_groups",
    "acc_slices",
    "WriteClientSignature",
    "beat_bits",
    "clamp",
    "delay",
    "instr_register",
    "last_flag",
    "load_instr",
    "loop_counters",
    "log2",
    "narrow_mul",
    "past_room",
    "word_at",
    "register_copies",
    "register_fanout",
    "register_copy",
    "registered_hard_product",
    "is_narrow",
    "round_shift",
    "round_shift_sat",
    "split_mul",
    "split_mul_pieces",
    "sum_pieces",
    "round_sig",
    "saturate",
    "shift_decode",
    "shift_decode_copies",
    "word_bits",
]

#: External memory byte addresses are 32 bit (ISA `dram_addr`).
ADDR_BITS = 32


def log2(v: int) -> int:
    assert v > 0 and v & (v - 1) == 0, v
    return v.bit_length() - 1


def beat_bits(c: NpuConfig) -> int:
    """Width of a beat (bus word) address."""
    return ADDR_BITS - log2(c.bus_bytes)


def word_bits(c: NpuConfig, buf: Buffer) -> int:
    return c.word_bytes(buf) * 8


#: Bits of an ECP5 DP16KD port in its 512-word mode (512×36): the ACC word's groups are cut at
#: multiples of it, so grouping costs no block RAM there.
BRAM_BITS = 36


def acc_slices(c: NpuConfig) -> list[tuple[int, int]]:
    """Bit ranges ``(lo, hi)`` of the ACC word's column groups, each read and written at its own
    address copies (``timing_stages``; one range otherwise).

    One registered address, EPILOGUE's, drove every block RAM of its ACC copy (15 DP16KD at 128
    MACs, 29 at 512): a single 12.7 ns net to one 33 columns away was the routed critical path
    (docs/synthesis.md, session 18). Groups are whole :data:`BRAM_BITS` columns, at most four
    (:func:`register_copies`).
    """
    width = word_bits(c, Buffer.ACC)
    blocks = -(-width // BRAM_BITS)
    n = min(4, blocks) if c.timing_stages else 1
    edges = [min(width, blocks * g // n * BRAM_BITS) for g in range(n)] + [width]
    return list(zip(edges, edges[1:]))


def acc_groups(c: NpuConfig) -> int:
    """Column groups of the ACC buffer (:func:`acc_slices`)."""
    return len(acc_slices(c))


def MemPortSignature(c: NpuConfig) -> wiring.Signature:
    """The single external memory port, seen from the NPU.

    ``rd_req`` carries beat addresses and a client ``id`` (0 fetch, 1 load DMA)
    that ``rd_resp`` returns in request order; ``rd_resp`` cannot be stalled, so
    clients only request what they can take. ``wr_req`` writes one beat with
    byte strobes; a write is visible to reads accepted after it.
    """
    bb = c.bus_bytes
    return wiring.Signature({
        "rd_req": Out(stream.Signature(data.StructLayout({"addr": unsigned(beat_bits(c)), "id": unsigned(1)}))),
        "rd_resp": In(stream.Signature(data.StructLayout({"data": unsigned(8 * bb), "id": unsigned(1)}),
                                       always_ready=True)),
        "wr_req": Out(stream.Signature(data.StructLayout({"addr": unsigned(beat_bits(c)),
                                                          "data": unsigned(8 * bb), "strb": unsigned(bb)}))),
    })


def BufReadSignature(depth: int, width: int) -> wiring.Signature:
    """Synchronous buffer read, from the reader's side: data of ``addr`` arrives one cycle later."""
    return wiring.Signature({"addr": Out(range(depth)), "data": In(width)})


def BufWriteSignature(depth: int, width: int, lanes: int = 1) -> wiring.Signature:
    """Buffer write, from the writer's side; ``en`` has one bit per ``width // lanes`` slice."""
    return wiring.Signature({"addr": Out(range(depth)), "data": Out(width), "en": Out(lanes)})


def UnitSignature() -> wiring.Signature:
    """Dispatch ↔ execution unit: ``start`` pulses with the instruction; ``done`` or ``err`` ends it.

    ``done`` means every write of the instruction is visible to reads from the cycle after it
    (with ``timing_stages``, ACT block-RAM writes from the second cycle after it: no unit reads
    that soon after a start; hdl/buffers.py). ``progress`` tells
    the watchdog the unit moved data this cycle; ``stall`` that it waited on memory.
    """
    return wiring.Signature({
        "start": Out(1), "instr": Out(INSTR_BITS), "pc": Out(ADDR_BITS),
        "busy": In(1), "done": In(1), "err": In(1), "err_code": In(ErrorCode),
        "progress": In(1), "stall": In(1),
    })


class CheckStages:
    """A unit's range check as registered steps, when the config asks for ``timing_stages``.

    ``step(expr, *deps)`` is ``expr`` itself without ``timing_stages``; with it, ``expr`` in a
    register one step after the deepest of ``deps`` (earlier steps' results; instruction
    fields are step 0). Elaboration fails if a check needs more than ``config.check_cycles``
    steps. The steps run continuously from the instruction register, which is loaded with the
    ``start`` pulse, so ``ready`` (for the CHECK state) rises ``check_cycles`` cycles after the
    state is entered.

    Parameters
    ----------
    m : Module
    config : NpuConfig
    start : Value or None
        The unit's start pulse (its instruction register loads with it); None for a check
        whose CHECK state is another component's (which makes ``ready`` there).
    hard : callable, optional
        :func:`registered_hard_product`'s multiplier for ``mul``'s partial products.
    """

    def __init__(self, m, config: NpuConfig, start, hard=None):
        self.m, self.on, self.cycles, self.hard = m, config.timing_stages, config.check_cycles, hard
        self._depth = {}
        self.ready = Signal()
        if not self.cycles or start is None:
            m.d.comb += self.ready.eq(1)
            return
        wait = Signal(range(self.cycles + 1))
        with m.If(start):
            m.d.sync += wait.eq(self.cycles)
        with m.Elif(wait != 0):
            m.d.sync += wait.eq(wait - 1)
        m.d.comb += self.ready.eq(wait == 0)

    def _depth_of(self, deps, steps=1):
        depth = steps + max((self._depth.get(id(d), 0) for d in deps), default=0)
        if depth > self.cycles:
            raise ValueError(f"a range check of {depth} steps does not fit check_cycles={self.cycles}")
        return depth

    def step(self, expr, *deps):
        if not self.on:
            return expr
        depth = self._depth_of(deps)
        r = Signal(Value.cast(expr).shape())
        self.m.d.sync += r.eq(expr)
        self._depth[id(r)] = depth
        return r

    def mul(self, a, b, *deps):
        """``a * b`` as a step whose registers are its 18 × 18 partial products (:func:`split_mul`):
        the step that uses it adds them (a wide product is hard multipliers and their adds)."""
        if not self.on:
            return a * b
        pieces = self.mul_pieces(a, b, *deps)
        r = Signal(signed(len(Value.cast(a)) + len(Value.cast(b)) + 2))
        self.m.d.comb += r.eq(sum_pieces(pieces))
        self._depth[id(r)] = self._depth[id(pieces[0][0])]
        return r

    def mul_pieces(self, a, b, *deps):
        """:meth:`mul`'s registered partial products unsummed (:func:`split_mul_pieces`), a list of
        ``(piece, shift)``; without ``timing_stages`` ``[(a * b, 0)]``."""
        if not self.on:
            return [(a * b, 0)]
        depth = self._depth_of(deps)
        pieces = split_mul_pieces(self.m, a, b, reset_less=True, hard=self.hard)
        for r, _ in pieces:
            self._depth[id(r)] = depth
        return pieces

    def product(self, a, b, *deps):
        """``a * b`` as two steps: its operands registered, then the product (on the ECP5 a hard
        multiplier's input and output registers, :func:`split_mul`'s ``operand_register``).

        For a product of instruction fields, or of a step and a field: through an unregistered
        multiplier into a fabric register, the wire from the instruction register to the block,
        the block's 3.9 ns and the wire on to the register were one path (up to 14.9 ns in the
        routed NPU, docs/synthesis.md, session 23). A product of this one is best a :meth:`mul`,
        from block to block.
        """
        if not self.on:
            return a * b
        if is_narrow(a) or is_narrow(b):        # shifted adds, no multiplier (STORE's word size)
            return self.step(narrow_mul(a, b), *deps)
        depth = self._depth_of(deps, steps=2)
        r = Signal((Value.cast(a) * Value.cast(b)).shape())
        self.m.d.comb += r.eq(split_mul(self.m, a, b, 1, reset_less=True, hard=self.hard, operand_register=True))
        self._depth[id(r)] = depth
        return r


def loop_counters(**shapes) -> list:
    """A generator's loop counters, ``name=shape``, in that order, without the domain's reset.

    A generator's counters rest at their start values while it is off (its ``gen`` register, which
    has the reset, clears them), so the domain's reset adds nothing. With it, each counter's
    synchronous clear was an OR of the core's reset, from its clock-network buffer, and the loop's
    wrap: out of the global network into a LUT, the most common late endpoint in the routed
    128-MAC builds (the LSR pins of CONV's ``t``, ``cb`` and ``pcnt``, EPILOGUE's and POOL's
    counters; docs/synthesis.md, session 25).
    """
    return [Signal(shape, name=name, reset_less=True) for name, shape in shapes.items()]


def last_flag(m, v, last, restart, advance, name=None):
    """``v == last`` as a register beside a loop counter ``v``, for the counters of a nested loop.

    ``v`` restarts at 0 with ``restart`` and with ``advance`` steps to 0 after ``last``, else to
    ``v + 1``; the flag follows it (``v + 1 == last`` is decided a cycle ahead, beside the counter).
    An outer counter advances on the AND of its inner counters' flags: as compares they were LUT
    levels ahead of that AND (CONV's generator: six LUTs to ``pcnt``'s enable, 13.0 ns of which 11.0
    wire, a critical path of session 22). ``last`` must hold still while the counter runs (a
    registered instruction field), and may be out of reach (-1 for a zero field: never last).
    """
    flag = Signal(name=name)
    with m.If(restart):
        m.d.sync += flag.eq(last == 0)
    with m.Elif(advance):
        m.d.sync += flag.eq(Mux(flag, last == 0, v + 1 == last))
    return flag


def past_room(pieces, room):
    """Whether a product of non-negative values, as :func:`split_mul_pieces`' ``(piece, shift)``,
    exceeds ``room``: a buffer's words less an address, so below ``2**17`` (buffers hold at most
    ``2**16`` words). A piece above the lowest, if not zero, makes the product at least ``2**17``,
    so only the lowest is compared: a range check's last step is then a compare and an OR, not the
    pieces' add, an address add and a compare (three of those in one step were 37 cells, CONV's
    critical path in session 23's first build).
    """
    (low, shift), *high = sorted(pieces, key=lambda p: p[1])
    assert shift == 0 and all(s >= 17 for _, s in high), pieces
    return Cat(low > room, *[p != 0 for p, _ in high]).any()


def instr_register(c: NpuConfig, name: str = "ir", ones: bool = False) -> Signal:
    """A unit's instruction register, for :func:`load_instr`: without reset with ``timing_stages``.

    It is loaded in every idle cycle before any start, so no reset is needed; dropping it takes
    these bits off the core's reset net (docs/synthesis.md, session 11). ``ones`` starts it as all
    ones, so synthesis keeps it apart from another register loaded with the same instruction.
    """
    return Signal(INSTR_BITS, name=name, init=(1 << INSTR_BITS) - 1 if ones else 0, reset_less=c.timing_stages)


def load_instr(m, ir, instr, idle):
    """Loads a unit's instruction register ``ir`` from ``instr`` in every cycle the unit is ``idle``.

    Dispatch only starts an idle unit, so in the cycle after its ``start`` pulse the register holds
    the started instruction, as if ``start`` loaded it; while the unit runs it holds. The
    register's clock enable is then the unit's own state, not ``start``: that pulse comes from
    dispatch's compares across the die, and its fan-out to every bit of the register was the last
    wire of the whole NPU's routed critical path (docs/synthesis.md). ``idle`` may be a list of copies of the state (as
    :func:`register_copies` makes): the register is then cut into as many slices, each enabled by
    its own copy, so no one enable net reaches every bit.
    """
    idles = list(idle) if isinstance(idle, (list, tuple)) else [idle]
    n = len(idles)
    for g, i in enumerate(idles):
        lo, hi = len(ir) * g // n, len(ir) * (g + 1) // n
        with m.If(i):
            m.d.sync += ir[lo:hi].eq(instr[lo:hi])


def instr_copy(m, config: NpuConfig, ins):
    """``ins`` (a View of a unit's instruction register) one register later with ``timing_stages``.

    A unit's range checks read the register itself (they start with it); its generator and
    datapath, which start ``check_cycles`` later, read this copy. So the register drives the
    checks and one copy, not every consumer across the unit (a long wire with many loads was
    the critical path of CONV and POST). Without ``timing_stages``: ``ins``.
    """
    if not config.timing_stages:
        return ins
    return data.View(ins.shape(), delay(m, ins.as_value(), 1, "instr_copy", reset_less=True))


def register_copies(m, value, n: int, name: str, reset_less: bool = False) -> list:
    """``n`` registers (at most 4) of ``value``, one cycle late, that synthesis keeps apart.

    One register driving hundreds of loads across the die makes a long, late net; copies split
    the loads. yosys merges flip-flops with the same input and initial (or reset) value, so copy
    ``g`` holds ``value`` inverted when ``g`` is odd (its loads invert it back, inside their own
    LUTs or clock-enable inverters) and starts as all ones when ``g & 2``. So in the first cycle
    after reset a copy may differ from ``value``: only loads that do not care then may use them.
    """
    if not 1 <= n <= 4:
        raise ValueError(f"{name}: {n} copies (1..4 can be told apart)")
    return [register_copy(m, value, g, name, reset_less) for g in range(n)]


def register_fanout(m, value, n: int, name: str, reset_less: bool = False) -> list:
    """``n`` registers (at most 8) of ``value``, two cycles late, that synthesis keeps apart and
    none of which holds ``value`` inverted.

    :func:`register_copies` tells at most four apart, and its odd copies make their loads invert
    them back: where the loads are hard-block pins or carry chains, yosys puts one inverter LUT
    per bit before them all, a net as long as the copy's own. Here ``(n + 1) // 2`` such copies
    each feed two registers of their own, one starting at 0 and one at all ones, which hold
    ``value`` itself (an odd copy's inverter drives just those two flip-flops). So each copy may
    differ from ``value`` in the first two cycles after reset.
    """
    if not 1 <= n <= 8:
        raise ValueError(f"{name}: {n} copies (1..8 can be told apart)")
    parents = register_copies(m, value, (n + 1) // 2, f"{name}_p", reset_less)
    leaves = []
    for k in range(n):
        r = Signal(len(value), init=(1 << len(value)) - 1 if k & 1 else 0, name=f"{name}{k}", reset_less=reset_less)
        m.d.sync += r.eq(parents[k // 2])
        leaves.append(r)
    return leaves


def register_copy(m, value, g: int, name: str, reset_less: bool = False):
    """Copy ``g`` (0..3) of :func:`register_copies` alone: ``value`` one cycle late.

    Registers of one value with different ``g`` are never merged, so loads far apart (two
    buffers written at the same address) can each have their own."""
    if not 0 <= g <= 3:
        raise ValueError(f"{name}: copy {g} (0..3 can be told apart)")
    inv, ones = g & 1, g >> 1 & 1
    r = Signal(len(value), init=(1 << len(value)) - 1 if ones else 0, name=f"{name}{g}", reset_less=reset_less)
    m.d.sync += r.eq(~value if inv else value)
    return ~r if inv else r


def delay(m, sig, cycles: int, name: str | None = None, reset_less: bool = False):
    """``sig`` delayed by ``cycles`` registers of ``m.d.sync`` (``sig`` itself for 0).

    The sideband of a pipeline step split into stages waits beside it with this. ``reset_less``
    registers data that no reset needs to clear (fewer loads on the reset net).
    """
    for i in range(cycles):
        d = Signal.like(sig, name=f"{name or getattr(sig, 'name', 'v')}_late{i}", reset_less=reset_less)
        m.d.sync += d.eq(sig)
        sig = d
    return sig


def shift_decode(m, s, cycles: int = 0, name: str = "sh", reset_less: bool = False):
    """``rnd``'s shift amount decoded: ``(s_eff, mask of the s_eff low bits, bit s_eff - 1)``.

    Pure functions of ``s`` (taken & 63, at most 62). With ``cycles`` > 0 they are registered
    ``cycles`` cycles after ``s``: a shift known early (an instruction field, a PARAM entry beside a
    rounding) then leaves its compare and mask out of :func:`round_shift`'s cycle.
    """
    if cycles:
        s = delay(m, s, cycles - 1, name, reset_less)
    s6 = s[:6]
    s_eff = Mux(s6 > 62, 62, s6)
    # Each bit its own function of the 6 shift bits (one LUT6 level), not a bit of a 64-bit shifter of a
    # constant: a mask register's input was then a subtract and a shifter deep (docs/synthesis.md,
    # session 21). Bit i of the mask (the s low bits) is i < s; bit s - 1 (0 when s = 0) is alone in
    # half. Each is a bit of a 64-entry table indexed by the shift: written as compares, yosys made
    # every one a carry chain (125 CCU2C per decode).
    def table(bit):
        return Cat(*[Const(sum(1 << v for v in range(64) if bit(i, min(v, 62))), 64).bit_select(s6, 1)
                     for i in range(64)])
    mask = table(lambda i, e: i < e)
    half = table(lambda i, e: e == i + 1)
    if not cycles:
        return s_eff, mask, half
    rs, rm, rh = (Signal(w, name=f"{name}_{k}", reset_less=reset_less)
                  for k, w in (("eff", 6), ("mask", 64), ("half", 64)))
    m.d.sync += [rs.eq(s_eff), rm.eq(mask), rh.eq(half)]
    return rs, rm, rh


def shift_decode_copies(m, s, lanes: int, name: str, registered: bool = True, reset_less: bool = False) -> list:
    """:func:`shift_decode` of ``s`` for each of ``lanes`` lanes: two cycles later when
    ``registered``, else the one combinational decode for all.

    An instruction's shift decoded fans out to every lane's rounding shift (134 bits each). So the
    6-bit shift is kept in up to 4 :func:`register_copies`, and each copy is decoded into a
    register of its own, lane ``n`` reading copy ``n * copies // lanes``: each decode drives a
    contiguous share of the lanes. One decode for all, even behind a register of its own, sent
    its 134 bits to registers by every lane, 12 ns in the routed NPU (docs/synthesis.md, session
    20). The copies may differ from the decode in the first two cycles after reset, when no
    instruction runs.
    """
    if not registered:
        return [shift_decode(m, s)] * lanes
    n = min(4, lanes)
    decoded = [shift_decode(m, sk, 1, f"{name}{k}", reset_less)
               for k, sk in enumerate(register_copies(m, s, n, f"{name}_in", reset_less))]
    return [decoded[k * n // lanes] for k in range(lanes)]


def round_shift(x, s, width: int, m=None, stages: int = 0, reset_less: bool = False):
    """docs/numerics.md's ``rnd(x, s)`` (ties to even) of a signed value; ``s`` is taken & 63, max 62.

    ``x`` is at most 63 bits wide so that every intermediate fits 64 bits (wider
    values cost Verilator multi-word arithmetic every cycle). Returns a signed
    value of ``width`` bits (the caller's bound on the result). ``s`` may be
    :func:`shift_decode`'s tuple.

    With ``stages=1`` (``m`` given) the shift and its rounding decision are registered and the
    increment follows in the next cycle: ``x`` and ``s`` are read in the first cycle.
    """
    assert len(x) <= 63, len(x)
    assert stages in (0, 1) and (m is not None or not stages), stages
    s_eff, mask, half = s if isinstance(s, tuple) else shift_decode(None, s)
    xs = x.as_signed()
    q = xs >> s_eff
    # The remainder comes from x's 64-bit two's-complement pattern: a negative x shifted by more than
    # its own width must still see its sign bits below the shift, or rnd(-1, 60) would come out -1.
    x64 = Cat(xs, xs[-1].replicate(64 - len(xs)))
    # rem > half or rem == half with q odd, as guard and sticky bits: no comparators.
    up = (x64 & half).any() & ((x64 & (mask >> 1)).any() | q[0])
    if stages:
        rq, rup = Signal(signed(len(xs)), reset_less=reset_less), Signal(reset_less=reset_less)
        m.d.sync += [rq.eq(q), rup.eq(up)]
        q, up = rq, rup
    return (q + up)[:width].as_signed()


def _window(m, v, s, n: int):
    """``(v >> s)[:n]`` for ``s`` below ``2**len(s)``, ``v`` at least ``n + 2**len(s) - 1`` bits.

    A log shifter whose largest step comes first: after the step of bit ``b`` only ``n + 2**b - 1``
    bits can still reach the output, so each level is that many 2:1 multiplexers (about
    ``6 * n + 57`` for a 6-bit shift, against ``6 * len(v)`` for the whole shifted value). Each
    level is a comb signal of ``m``: the next level reads it twice, and as an expression every
    read would copy the levels before it.
    """
    for b in reversed(range(len(s))):
        need = n + (1 << b) - 1
        level = Signal(need, name=f"win{b}")
        m.d.comb += level.eq(Mux(s[b], v[1 << b:(1 << b) + need], v[:need]))
        v = level
    return v[:n]


def round_shift_sat(x, s, bits: int, m, stages: int = 0, reset_less: bool = False):
    """``saturate(round_shift(x, s, len(x)), bits)``, without shifting all of ``x``.

    Every rounding shift of POST is saturated to 11 bits before its zero point and clamp, so of
    the quotient ``q = x >> s`` only its low ``bits`` bits and the guard bit below them (an output
    window of the shifter, :func:`_window`) and whether ``q`` fits ``bits`` signed bits are
    needed: it does when every bit of ``x`` from ``s + bits - 1`` up equals the sign, which
    ``s``'s low-bit mask decides, as it decides the sticky bit. Rounding up (``q + 1``) cannot
    leave the range downwards, and upwards only from its maximum, which then stays there. ``s``
    as in :func:`round_shift` (its :func:`shift_decode` tuple too; the decoded guard bit is not
    used); ``stages`` (0 or 1) registers the window, the range flag and the rounding decision, the
    add and saturation follow in the next cycle, as :func:`round_shift`'s. Its intermediate values
    are comb signals of ``m``. Returns a signed value of ``bits`` bits.
    """
    assert len(x) <= 63, len(x)
    assert stages in (0, 1), stages
    s_eff, mask, _ = s if isinstance(s, tuple) else shift_decode(None, s)
    # Comb signals for what is read bit by bit: a slice of an expression copies the whole expression.
    xs, se, mk = Signal(signed(len(x))), Signal(6), Signal(64)
    m.d.comb += [xs.eq(x.as_signed()), se.eq(s_eff), mk.eq(mask)]
    w, k = len(xs), bits - 1
    sign = xs[-1]
    # Bit 0 below x: the window's first bit is the guard (bit s - 1 of x, 0 when s = 0), then
    # q[:bits], which reaches bit s + bits - 1 <= 62 + k of the sign-extended x.
    win = _window(m, Cat(Const(0, 1), xs, sign.replicate(63 + k - w)), se, bits + 1)
    guard, low = win[0], win[1:]
    x64 = Cat(xs, sign.replicate(64 - w))
    up = guard & ((x64 & (mk >> 1)).any() | low[0])
    # q fits when no bit of x at or above s + k differs from the sign: bit i >= k counts unless
    # mask (the s low bits) covers i - k.
    ones = Signal(w)
    m.d.comb += ones.eq(xs.as_unsigned() ^ sign.replicate(w))
    outside = (ones[k:] & ~mk[:w - k]).any() if w > k else Const(0)
    if stages:
        regs = [Signal(bits, reset_less=reset_less), Signal(reset_less=reset_less),
                Signal(reset_less=reset_less), Signal(reset_less=reset_less)]
        m.d.sync += [r.eq(v) for r, v in zip(regs, (low, up, outside, sign))]
        low, up, outside, sign = regs
    lo, hi = -(1 << k), (1 << k) - 1
    # low + up leaves the range only from hi (a compare of low's bits, no carry chain).
    at_hi = (low == hi) & up
    return Mux(outside | at_hi, Mux(sign, lo, hi), low.as_signed() + up)[:bits].as_signed()


#: Most bits (or, for a constant, set bits) of an operand that :func:`narrow_mul` multiplies by with shifted
#: adds. yosys puts every other ``*`` of at least 2 × 2 bits on a hard multiplier: a whole MULT18X18D for a
#: ``k_h * k_w`` or a 3-bit stride: 19 of them went back to the 512-MAC NPU's array products (docs/synthesis.md,
#: session 14).
NARROW_MUL_BITS = 4


def _set_bits(v):
    if isinstance(v, Const):
        pattern = v.value & ((1 << len(v)) - 1)
        return [i for i in range(len(v)) if pattern >> i & 1]
    return None


def is_narrow(v) -> bool:
    """Whether :func:`narrow_mul` multiplies by ``v`` with shifted adds rather than a ``*``."""
    v = Value.cast(v)
    ones = _set_bits(v)
    return len(ones) <= NARROW_MUL_BITS if ones is not None else len(v) <= NARROW_MUL_BITS


def narrow_mul(a, b):
    """``a * b`` with Amaranth's shape and value, as shifted adds when an operand is narrow.

    An operand of at most :data:`NARROW_MUL_BITS` bits, or a constant with at most that many set bits,
    selects shifted copies of the other (its sign bit, if signed, subtracts one); synthesis then keeps
    the hard multipliers for wide products. Otherwise it is ``a * b``.
    """
    a, b = Value.cast(a), Value.cast(b)
    shape = (a * b).shape()

    for x, y in ((a, b), (b, a)):
        if is_narrow(y):
            ones = _set_bits(y)
            break
    else:
        return a * b
    total = Const(0, shape)
    for i in (ones if ones is not None else range(len(y))):
        term = (x if ones is not None else Mux(y[i], x, 0)) << i
        total = total - term if y.shape().signed and i == len(y) - 1 else total + term
    return total[:shape.width].as_signed() if shape.signed else total[:shape.width]


def registered_hard_product(platform):
    """The board's hard multiplier with an output register, for :func:`split_mul`'s ``hard``, or None.

    A synthesis build for the ECP5 says so on its platform (``tessera_mac_multipliers``, set by
    :func:`tessera.hdl.synth.synthesize`); simulation (no platform) and other boards keep plain
    registers after an inferred multiply.
    """
    spec = getattr(platform, "tessera_mac_multipliers", None)
    if spec and spec[0] == "ecp5":
        from .boards.multipliers import mult18x18d_registered
        return mult18x18d_registered
    return None


def word_at(v, i, width: int):
    """``v.word_select(i, width)`` without a multiplier: Amaranth forms the offset ``i * width`` with a
    ``$mul`` that yosys puts on a hard multiplier; here it is :func:`narrow_mul`'s shifted adds."""
    return v.bit_select(narrow_mul(i, Const(width)), width)


def split_mul(m, a, b, stages: int = 0, reset_less: bool = False, hard=None, operand_register: bool = False,
              piece_register: bool = False):
    """``a * b`` (signed), with ``stages=1`` as registered partial products of at most 18 × 18 bits.

    A wide product in one cycle is hard multipliers chained through fabric adders; registering
    each 18 × 18 piece (one ``MULT18X18D`` or ``SB_MAC16`` each) leaves the next cycle the adds
    alone. An operand wider than 18 bits splits into its low 17 bits (unsigned) and the signed
    rest. An unsigned operand counts as its value (a zero bit is put above it). Returns a signed
    expression of ``len(a) + len(b)`` bits.

    ``hard(m, pa, pb, r, name)``, when given (:func:`registered_hard_product`), makes each piece
    that would be a hard multiplier anyway (neither operand narrow, :func:`is_narrow`) a hard
    multiplier with its own output register as ``r``: the same value in the same cycle, but the
    wire from the multiplier to the adds gets a cycle of its own (the ECP5's MULT18X18D sit in a
    few rows across the die). Its register has no enable, so with ``stages=1`` the caller must
    register every cycle (as every caller does with ``timing_stages``).

    ``operand_register`` (with ``stages=1``) registers the operands first, so the product comes
    a cycle later still: a hard piece in its multiplier's input registers, the others in fabric.
    The operands' logic then ends at the block's input register rather than running through the
    multiplier, whose unregistered input's setup is about 3.5 ns on the ECP5.

    ``piece_register`` (with ``stages=1``) registers every piece once more in fabric, a cycle later
    again: a hard multiplier's output register then drives one flip-flop, which the placer can put
    by the adds, not those adds across the die from the block (8-13 ns of wire in the routed NPU,
    docs/synthesis.md, session 19). The pieces are then summed as a tree.
    """
    assert stages in (0, 1), stages
    assert stages or not (operand_register or piece_register)
    a, b = (_as_signed_operand(v) for v in (a, b))
    if not stages:
        return a * b
    pieces = split_mul_pieces(m, a, b, reset_less, hard, operand_register, piece_register)
    return sum_pieces(pieces, tree=piece_register)[:len(a) + len(b)].as_signed()


def sum_pieces(pieces, tree: bool = False):
    """The sum of :func:`split_mul_pieces`' ``(piece, shift)``: a chain of adds, or with ``tree`` a
    balanced tree (two adds in a row for four pieces, not three)."""
    terms = [r.as_signed() << s if s else r.as_signed() for r, s in pieces]
    if tree:
        while len(terms) > 1:
            terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i] for i in range(0, len(terms), 2)]
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total


def _as_signed_operand(v):
    v = Value.cast(v)
    return v if v.shape().signed else Cat(v, Const(0, 1)).as_signed()


def split_mul_pieces(m, a, b, reset_less: bool = False, hard=None, operand_register: bool = False,
                     piece_register: bool = False):
    """:func:`split_mul`'s registered partial products with ``stages=1``, unsummed: a list of
    ``(piece, shift)`` with ``a * b == sum(piece << shift)`` (signed pieces, ``a``'s low part first)."""
    a, b = _as_signed_operand(a), _as_signed_operand(b)

    def parts(v):
        if len(v) <= 18:
            return [(v, 0)]
        return [(v[:17].as_unsigned(), 0)] + [(p, 17 + sh) for p, sh in parts(v[17:].as_signed())]

    terms = []
    for pa, sa in parts(a):
        for pb, sb in parts(b):
            r = Signal(signed(len(pa) + len(pb) + 1), reset_less=reset_less)
            if hard is not None and not is_narrow(pa) and not is_narrow(pb):
                n = getattr(m, "_tessera_hard_products", 0)   # a unique submodule name per Module
                m._tessera_hard_products = n + 1
                hard(m, pa, pb, r, f"hard_product{n}", input_regs=operand_register)
            elif operand_register:
                pr, br = (delay(m, v, 1, reset_less=reset_less) for v in (pa, pb))
                m.d.sync += r.eq(narrow_mul(pr, br))
            else:
                m.d.sync += r.eq(narrow_mul(pa, pb))  # an operand just over 18 bits leaves a narrow part
            if piece_register:
                r = delay(m, r, 1, reset_less=reset_less)
            terms.append((r, sa + sb))
    return terms


def bit_length(v):
    """Position of ``v``'s highest set bit plus one (0 for 0).

    The highest set bit's index comes from a tree of muxes over halves padded to a power of two
    (each level a select and a concatenated bit, no adder); one short increment follows.
    """
    n = len(v)
    if n == 1:
        return v[0]
    width = 1 << (n - 1).bit_length()
    padded = Cat(v, Const(0, width - n)) if width > n else v

    def top(u):             # index of u's highest set bit (any value when u == 0)
        if len(u) == 1:
            return Const(0, 0)
        h = len(u) // 2
        hi, lo = u[h:], u[:h]
        return Cat(Mux(hi.any(), top(hi), top(lo)), hi.any())

    return Mux(v.any(), top(padded) + 1, 0)


def round_sig(m, x, width: int, stages: int = 0, reset_less: bool = False):
    """docs/numerics.md's ``round_sig(x)``: ``x`` rounded to 24 significant bits, ties to even.

    Rounds the two's-complement value in place (half to even is symmetric, and on a floor basis
    the rule is: up when the guard bit is set and a lower bit or the kept LSB is): the ``s``
    bits below position ``bit_length(|x|) - 24`` are cleared, and ``2**s`` added when they round
    up. ``s`` comes from ``x ^ sign``, which is ``|x| - 1`` for a negative ``x``: different from
    ``|x|``'s bit length only at ``-2**k``, whose dropped bits are zero either way. Returns a
    signed value of ``width`` bits; a positive result of ``2**(width - 1)`` (``x`` just below it
    rounding up to the power of two) saturates to ``2**(width - 1) - 1``. Callers follow this
    with a rounding shift of at most 62 and an int8 clamp, which give the same output for both.
    The intermediate values are comb signals of ``m``: as one expression the bit-length tree
    would be copied into every use, which Amaranth's simulator compiles very slowly.

    ``stages`` (0..4) registers that many of its steps' results, in order: the bit length ``s``;
    the kept bits and the increment; the result; and with 4, between the first two, ``s``
    decoded into its masks (:func:`shift_decode`). The value returned is ``stages`` cycles after
    ``x``. ``reset_less`` (here and in :func:`round_shift`, :func:`shift_decode`,
    :func:`split_mul`): those registers have no reset.
    """
    w = len(x)
    assert w <= 63, w
    assert 0 <= stages <= 4, stages
    # A comb signal for the operand and the result: an expression would be copied into every use
    # (a nested round_sig into each of the outer one's).
    xs = Signal(signed(w))
    m.d.comb += xs.eq(x.as_signed())
    s = Signal(range(w + 1))
    ones = (xs ^ xs[-1].replicate(w)).as_unsigned()[:w]
    m.d.comb += s.eq(bit_length(ones[SIG_BITS:]) if w > SIG_BITS else 0)
    if stages >= 1:
        xs, s = delay(m, xs, 1, reset_less=reset_less), delay(m, s, 1, reset_less=reset_less)
    # s <= w - 24 < 62: the decode's clamp never acts. half is bit s - 1 (the guard), half << 1 bit s.
    _, mask64, half64 = shift_decode(m, s, 1 if stages >= 4 else 0, "rs", reset_less)
    if stages >= 4:
        xs = delay(m, xs, 1, reset_less=reset_less)
    mask, half, unit = Signal(w), Signal(w), Signal(w + 1)     # the s bits dropped; bit s - 1; bit s
    # s <= w - 25 (ones' top bit is 0): bits from w - 25 up are never dropped and bit s goes no higher,
    # which yosys cannot see from s's width; the masks stop there, and so do their ANDs and OR trees.
    n = max(w - SIG_BITS - 1, 0)
    m.d.comb += [mask.eq(mask64[:n]), half.eq(half64[:n]), unit.eq((half64 << 1)[:n + 1])]
    xu = xs.as_unsigned()
    up = (xu & half).any() & ((xu & (mask >> 1)).any() | (xu & unit[:w]).any())
    # 2**s as a decoded bit, not mask + 1: no carry chain (s = 0 never rounds up). With stages the
    # rounding decision and the bit are registered apart and meet at the add's inputs: registered as
    # one, the late decision became the set/reset of every bit of the increment (docs/synthesis.md,
    # session 21).
    kept = Signal(w)
    m.d.comb += kept.eq(xu & ~mask)
    if stages >= 2:
        kept, unit, up = (delay(m, v, 1, reset_less=reset_less) for v in (kept, unit, up))
    inc = Signal(w + 1)
    m.d.comb += inc.eq(Mux(up, unit, 0))
    r = Signal(signed(w + 1))
    m.d.comb += r.eq(kept.as_signed() + inc)
    limit = (1 << (width - 1)) - 1
    out = Signal(signed(width))
    # r > limit as r >= 2**(width - 1): sign clear and a bit at or above width - 1 set (no compare's
    # carry chain after the add's; the compare's was POST's path into the register's set/reset pin).
    over = ~r[-1] & r[width - 1:w].any() if width <= w else Const(0)
    m.d.comb += out.eq(Mux(over, limit, r)[:width].as_signed())
    return delay(m, out, 1, reset_less=reset_less) if stages >= 3 else out


def saturate(x, bits: int):
    """``x`` clamped to the signed ``bits``-bit range, decided by its high bits alone (no carry chain).

    ``clamp(saturate(x, 11) + zp, lo, hi)`` equals ``clamp(x + zp, lo, hi)`` for int8 ``zp``, ``lo``
    and ``hi``: beyond ±1023 both sides are past either bound.
    """
    x = x.as_signed()
    if len(x) <= bits:
        return x
    top = x[bits - 1:]
    inside = (top == 0) | (top == (1 << len(top)) - 1)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return Mux(inside, x[:bits].as_signed(), Mux(x[-1], lo, hi))


def clamp(x, lo, hi):
    """``min(max(x, lo), hi)``, as numpy computes it (``hi`` wins when ``lo > hi``).

    Both compares read ``x`` (side by side, not one after the other): ``hi`` when ``x > hi`` or
    ``lo > hi``, else ``max(x, lo)``.
    """
    return Mux((x > hi) | (lo > hi), hi, Mux(x < lo, lo, x))


def ReadClientSignature(c: NpuConfig) -> wiring.Signature:
    """One reader's share of the memory port: beat addresses out, beats back in request order."""
    return wiring.Signature({
        "req": Out(stream.Signature(unsigned(beat_bits(c)))),
        "resp": In(stream.Signature(unsigned(8 * c.bus_bytes), always_ready=True)),
    })


def WriteClientSignature(c: NpuConfig) -> wiring.Signature:
    return wiring.Signature({"req": Out(MemPortSignature(c).members["wr_req"].signature)})
