"""One Verilog build holding several NPU components side by side, for per-component cocotb benches."""

from amaranth.back import verilog
from amaranth.hdl import Module, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from tessera.hdl.common import round_shift
from tessera.hdl.fetch import decode_checks
from tessera.hdl.mac import MacArray

from tessera.isa import INSTR_BITS


class Components(wiring.Component):
    """MacArray, the instruction decoder and the rounding shift, each with its own ports."""

    def __init__(self, config):
        self.config = c = config
        self.mac = MacArray(c)
        members = {f"mac_{k}": v for k, v in self.mac.signature.members.items()}
        members.update({"dec_raw": In(INSTR_BITS), "dec_legal": Out(1), "dec_bad": Out(1), "dec_unit": Out(2),
                        "rnd_x": In(signed(63)), "rnd_s": In(unsigned(32)), "rnd_y": Out(signed(63))})
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.mac = self.mac
        for name, member in self.mac.signature.members.items():
            outer, inner = getattr(self, f"mac_{name}"), getattr(self.mac, name)
            m.d.comb += (outer.eq(inner) if member.flow == Out else inner.eq(outer))
        legal, bad, unit, _ = decode_checks(m, self.dec_raw)
        m.d.comb += [self.dec_legal.eq(legal), self.dec_bad.eq(bad), self.dec_unit.eq(unit.as_value()),
                     self.rnd_y.eq(round_shift(self.rnd_x, self.rnd_s, 63))]
        return m


def sources(config) -> dict:
    top = Components(config)
    ports = [(p, v) for p, _, v in top.signature.flatten(top)]
    text = verilog.convert(top, name="components", emit_src=False)
    decls, conns = [], [".clk(clk)", ".rst(rst)"]
    for path, v in ports:
        name = "__".join(str(x) for x in path)
        flow = top.signature.members[path[0]].flow
        decls.append(f"  {'input' if flow == In else 'output'} [{len(v) - 1}:0] {name}")
        conns.append(f".{name}({name})")
    wrapper = ("`timescale 1ns/1ps\nmodule tb_components(\n  input rst,\n" + ",\n".join(decls)
               + ");\n  reg clk = 1'b0;\n  always #5 clk = ~clk;\n  components dut(" + ", ".join(conns)
               + ");\nendmodule\n")
    return {"components.v": text, "tb_components.v": wrapper}
