"""Time one NPU unit alone on a board: its inputs from registers, its outputs folded into the LED.

Place and route of the whole NPU takes the better part of an hour on this machine and names one
critical path; a unit alone (ConvUnit, PostUnit, the DMAs, Fetch, Dispatch) routes in minutes and
names its own. :class:`UnitHarness` wraps any :class:`~amaranth.lib.wiring.Component`: every input
port bit comes from a register of a shift chain fed by an LFSR (so nothing is constant and yosys
can optimize nothing away, and no input path starts at a pin), and every output port bit goes
through a registered XOR tree to ``led`` (so every output is observed and no path ends at a pin).
The paths nextpnr reports are then the unit's own, register to register.
"""

from amaranth.hdl import Cat, Module, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .macarray import _pipelined_xor, lfsr32

__all__ = ["UnitHarness", "port_bits"]


def port_bits(unit):
    """The unit's flattened ports: ``(inputs, outputs)``, lists of (dotted name, Value)."""
    ins, outs = [], []
    for path, member, value in unit.signature.flatten(unit):
        name = ".".join(str(p) for p in path)
        (ins if member.flow == In else outs).append((name, Value.cast(value)))  # enum and data views too
    return ins, outs


class UnitHarness(wiring.Component):
    """``unit`` between registers: LFSR-fed inputs, XOR-reduced outputs on ``led``.

    Parameters
    ----------
    unit : wiring.Component
        Any component (its ports may be nested signatures).
    macs_per_cycle : int
        Reported by :func:`tessera.hdl.synth.synthesize` (0 for units without a MAC array).
    """

    led: Out(1)

    def __init__(self, unit, macs_per_cycle=0):
        self.unit = unit
        self.macs_per_cycle = macs_per_cycle
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.unit = self.unit
        lfsr = lfsr32(m)
        ins, outs = port_bits(self.unit)
        for k, (name, value) in enumerate(ins):
            # One shift register per port, fed by its own LFSR bit: every input bit is a register output.
            r = Signal(len(value), name=f"in_{name.replace('.', '_')}")
            src = lfsr[k % 32]
            m.d.sync += r.eq(Cat(src, r[:-1]) if len(value) > 1 else src)
            m.d.comb += value.eq(r)
        bits = [value[i] for _, value in outs for i in range(len(value))]
        m.d.sync += self.led.eq(_pipelined_xor(m, bits, "out"))
        return m
