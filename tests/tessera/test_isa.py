import pathlib

import pytest
from amaranth.hdl import Shape
from hypothesis import given
from hypothesis import strategies as st

from tessera import isa
from tessera.isa import (FORMATS, HEADER, INSTR_BITS, INSTR_BYTES, Instruction, IsaError, Opcode, Unit,
                         assemble, decode, disassemble, encode, layout)

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _field_values(fmt):
    out = {}
    for f in HEADER[1:] + fmt.fields:
        if isinstance(f.kind, type):
            out[f.name] = st.sampled_from(list(f.kind))
        elif f.kind == "mask":
            own = fmt.unit
            out[f.name] = st.integers(0, 15).map(lambda m, own=own: m & ~(1 << own.value) if own else m)
        else:
            out[f.name] = st.integers(f.min, f.max)
    return st.fixed_dictionaries(out)


instructions = st.sampled_from(list(FORMATS.values())).flatmap(
    lambda fmt: _field_values(fmt).map(lambda vals, op=fmt.opcode: Instruction(op, **vals)))


@given(instructions)
def test_encode_decode_round_trip_every_opcode(ins):
    raw = encode(ins)
    assert len(raw) == INSTR_BYTES
    assert decode(raw) == ins


@given(st.lists(instructions, max_size=8))
def test_disassemble_assemble_round_trip(instrs):
    assert assemble(disassemble(instrs)) == instrs
    assert assemble(disassemble(instrs, addresses=False)) == instrs


@pytest.mark.parametrize("op", list(Opcode))
def test_layout_matches_table(op):
    lay = layout(op)
    assert lay.size == INSTR_BITS
    offset = 0
    for f in HEADER + FORMATS[op].fields:
        assert lay[f.name].offset == offset
        assert Shape.cast(lay[f.name].shape).width == f.width
        offset += f.width


def test_opcode_zero_is_illegal():
    with pytest.raises(IsaError, match="illegal opcode 0") as e:
        decode(bytes(INSTR_BYTES))
    assert e.value.illegal_opcode


def test_decode_rejects_zero_count_and_reserved_bits():
    ins = Instruction("load", buf="act", rows=1, cols=1)
    raw = bytearray(encode(ins.replace(rows=0), check=False))
    with pytest.raises(IsaError, match="load.rows: must not be zero"):
        decode(bytes(raw))
    raw = bytearray(encode(ins))
    raw[-1] = 0x80
    with pytest.raises(IsaError, match="reserved bits"):
        decode(bytes(raw))


def test_encode_names_the_field_out_of_range():
    with pytest.raises(IsaError, match=r"conv.pad_value=200 is out of range \(signed 8 bits"):
        encode(Instruction("conv", pad_value=200, in_h=1, in_w=1, in_cb=1, out_h=1, out_w=1, k_h=1, k_w=1,
                           stride_h=1, stride_w=1, dil_h=1, dil_w=1, ob_count=1))


def test_assemble_reports_line_and_field():
    with pytest.raises(IsaError, match="line 2: load has no field 'bogus'"):
        assemble("end\nload bogus=1\n")
    with pytest.raises(IsaError, match="line 1: unknown opcode 'frob'"):
        assemble("frob x=1")
    with pytest.raises(IsaError, match="line 1: buf=xyz: expected one of"):
        assemble("load buf=xyz rows=1 cols=1")
    with pytest.raises(IsaError, match="line 1: .*rows=0 is out of range"):
        assemble("load rows=0 cols=1")


def test_every_opcode_has_a_unit_or_is_control():
    for op, fmt in FORMATS.items():
        assert isinstance(fmt.unit, Unit) or op in (Opcode.SYNC, Opcode.END)


def test_isa_doc_is_generated_from_the_table():
    doc = (ROOT / "docs" / "isa.md").read_text()
    assert doc == isa.markdown(), "docs/isa.md is stale: run `make docs`"
