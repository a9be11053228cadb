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
    "BufReadSignature",
    "BufWriteSignature",
    "CheckStages",
    "bit_length",
    "MemPortSignature",
    "ReadClientSignature",
    "UnitSignature",
    "WriteClientSignature",
    "beat_bits",
    "clamp",
    "log2",
    "round_shift",
    "round_sig",
    "saturate",
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

    ``done`` means every write of the instruction is visible. ``progress`` tells
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
    """

    def __init__(self, m, config: NpuConfig, start):
        self.m, self.on, self.cycles = m, config.timing_stages, config.check_cycles
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

    def step(self, expr, *deps):
        if not self.on:
            return expr
        depth = 1 + max((self._depth.get(id(d), 0) for d in deps), default=0)
        if depth > self.cycles:
            raise ValueError(f"a range check of {depth} steps does not fit check_cycles={self.cycles}")
        r = Signal(Value.cast(expr).shape())
        self.m.d.sync += r.eq(expr)
        self._depth[id(r)] = depth
        return r


def round_shift(x, s, width: int):
    """docs/numerics.md's ``rnd(x, s)`` (ties to even) of a signed value; ``s`` is taken & 63, max 62.

    ``x`` is at most 63 bits wide so that every intermediate fits 64 bits (wider
    values cost Verilator multi-word arithmetic every cycle). Returns a signed
    value of ``width`` bits (the caller's bound on the result).
    """
    assert len(x) <= 63, len(x)
    s6 = s[:6]
    s_eff = Mux(s6 > 62, 62, s6)
    xs = x.as_signed()
    q = xs >> s_eff
    mask = Const((1 << 64) - 1, 64) >> (64 - s_eff).as_unsigned()[:7]   # low s bits
    half = mask ^ (mask >> 1)                                 # bit s-1 (0 when s = 0)
    # The remainder comes from x's 64-bit two's-complement pattern: a negative x shifted by more than
    # its own width must still see its sign bits below the shift, or rnd(-1, 60) would come out -1.
    x64 = Cat(xs, xs[-1].replicate(64 - len(xs)))
    # rem > half or rem == half with q odd, as guard and sticky bits: no comparators.
    up = (x64 & half).any() & ((x64 & (mask >> 1)).any() | q[0])
    return (q + up)[:width].as_signed()


def bit_length(v):
    """Position of ``v``'s highest set bit plus one (0 for 0), in log2(len(v)) levels of muxes."""
    n = len(v)
    if n == 1:
        return v[0]
    h = n // 2
    hi, lo = v[h:], v[:h]
    return Mux(hi.any(), h + bit_length(hi), bit_length(lo))


def round_sig(m, x, width: int):
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
    """
    w = len(x)
    assert w <= 63, w
    # A comb signal for the operand and the result: an expression would be copied into every use
    # (a nested round_sig into each of the outer one's).
    xs = Signal(signed(w))
    m.d.comb += xs.eq(x.as_signed())
    s = Signal(range(w + 1))
    ones = (xs ^ xs[-1].replicate(w)).as_unsigned()[:w]
    m.d.comb += s.eq(bit_length(ones[SIG_BITS:]) if w > SIG_BITS else 0)
    mask = Signal(w)                                   # the s bits dropped
    m.d.comb += mask.eq(Const((1 << 64) - 1, 64) >> (64 - s).as_unsigned()[:7])
    xu = xs.as_unsigned()
    guard = (xu >> (s - 1).as_unsigned()[:6])[0] & (s != 0)
    up = guard & ((xu & (mask >> 1)).any() | (xu >> s)[0])
    r = Signal(signed(w + 1))
    m.d.comb += r.eq((xu & ~mask).as_signed() + Mux(up, (mask + 1)[:w + 1], 0))
    limit = (1 << (width - 1)) - 1
    out = Signal(signed(width))
    m.d.comb += out.eq(Mux(r > limit, limit, r)[:width].as_signed())
    return out


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
    """``min(max(x, lo), hi)``, as numpy computes it (``hi`` wins when ``lo > hi``)."""
    t = Mux(x < lo, lo, x)
    return Mux(t > hi, hi, t)


def ReadClientSignature(c: NpuConfig) -> wiring.Signature:
    """One reader's share of the memory port: beat addresses out, beats back in request order."""
    return wiring.Signature({
        "req": Out(stream.Signature(unsigned(beat_bits(c)))),
        "resp": In(stream.Signature(unsigned(8 * c.bus_bytes), always_ready=True)),
    })


def WriteClientSignature(c: NpuConfig) -> wiring.Signature:
    return wiring.Signature({"req": Out(MemPortSignature(c).members["wr_req"].signature)})
