"""The Tessera instruction set, as data.

Every instruction is one :data:`INSTR_BITS`-bit word. It starts with a common
header (opcode, dependency-token masks) followed by the fields of its opcode,
packed from the least significant bit up in the order of :data:`FORMATS`. This
table is the single source of truth: the HDL decoder builds its
``data.StructLayout`` from :func:`layout`, the emulator and the cycle model
decode with :func:`decode`, the compiler encodes with :func:`encode`, and
``docs/isa.md`` is generated from it by :func:`markdown`.

Dependency tokens
-----------------
Four execution units (:class:`Unit`) run their own instruction queues
concurrently. Between every ordered pair of units there is a token queue. An
instruction's ``wait`` mask names the units it must first receive one token
from (each consumed); its ``signal`` mask names the units it sends one token
to once all of its memory writes are visible. Within one unit instructions
execute in program order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from amaranth.hdl import signed, unsigned
from amaranth.lib import data, enum

from tessera.errors import UserError

__all__ = [
    "INSTR_BITS", "INSTR_BYTES", "Opcode", "Unit", "Buffer", "PoolMode", "ErrorCode", "Csr", "Status",
    "Field", "Format", "FORMATS", "HEADER", "OPCODE_UNIT", "Instruction", "IsaError",
    "encode", "decode", "encode_program", "decode_program", "assemble", "disassemble",
    "layout", "markdown",
]

INSTR_BITS = 256
INSTR_BYTES = INSTR_BITS // 8


class IsaError(UserError, ValueError):
    """An instruction cannot be encoded, decoded or assembled; the message names the field.

    ``illegal_opcode`` tells the emulator which error code the hardware reports.
    """

    def __init__(self, message: str, *, illegal_opcode: bool = False):
        super().__init__(message)
        self.illegal_opcode = illegal_opcode


class Opcode(enum.Enum, shape=4):
    """Instruction opcodes. Zero is illegal so that erased memory never executes."""
    LOAD = 1
    STORE = 2
    CONV = 3
    EPILOGUE = 4
    POOL = 5
    SYNC = 6
    END = 7


class Unit(enum.Enum, shape=2):
    """Execution units; each has its own instruction queue."""
    LOAD = 0
    COMPUTE = 1
    POST = 2
    STORE = 3


class Buffer(enum.Enum, shape=2):
    """On-chip buffers, addressed in words (see ``NpuConfig.*_word_bytes``)."""
    ACT = 0
    WGT = 1
    ACC = 2
    PARAM = 3


class PoolMode(enum.Enum, shape=1):
    MAX = 0
    AVG = 1


class ErrorCode(enum.Enum, shape=4):
    """Value of the ``ERROR`` CSR after the NPU stopped with an error."""
    NONE = 0
    ILLEGAL_OPCODE = 1
    BAD_FIELD = 2
    DRAM_RANGE = 3
    BUFFER_RANGE = 4
    MISALIGNED = 5
    WATCHDOG = 6
    DEADLOCK = 7


class Csr(enum.Enum, shape=4):
    """Host-visible control/status registers (32-bit each, word addressed)."""
    CTRL = 0         # write 1: start at PROG_ADDR; write 2: soft reset
    STATUS = 1       # bit 0 busy, bit 1 done, bit 2 error
    ERROR = 2        # ErrorCode
    ERROR_PC = 3     # byte address of the instruction that failed
    PROG_ADDR = 4    # byte address of the first instruction
    CYCLES_LO = 5
    CYCLES_HI = 6
    STALL_LOAD = 7   # cycles each unit spent waiting for tokens or memory
    STALL_COMPUTE = 8
    STALL_POST = 9
    STALL_STORE = 10
    IRQ_ENABLE = 11  # bit 0: interrupt on done or error
    WATCHDOG = 12    # cycles without progress before ErrorCode.WATCHDOG; 0 disables
    MACS_LO = 13     # MACs issued by the array
    MACS_HI = 14
    CONFIG_HASH = 15 # low 32 bits of NpuConfig.hash()


class Status(enum.Flag, shape=3):
    """Bits of the ``STATUS`` CSR."""
    BUSY = 1
    DONE = 2
    ERROR = 4


@dataclass(frozen=True)
class Field:
    """One instruction field.

    ``kind`` is ``"u"`` (unsigned), ``"s"`` (two's complement), ``"mask"`` (a
    bit per :class:`Unit`) or an enum class. ``nonzero`` fields are counts or
    sizes for which zero is an illegal value (``ErrorCode.BAD_FIELD``).
    """
    name: str
    width: int
    doc: str
    kind: object = "u"
    nonzero: bool = False

    @property
    def signed(self) -> bool:
        return self.kind == "s"

    @property
    def shape(self):
        if isinstance(self.kind, type) and issubclass(self.kind, enum.Enum):
            return self.kind
        return signed(self.width) if self.signed else unsigned(self.width)

    @property
    def min(self) -> int:
        if self.signed:
            return -(1 << (self.width - 1))
        return 1 if self.nonzero else 0

    @property
    def max(self) -> int:
        return (1 << (self.width - 1)) - 1 if self.signed else (1 << self.width) - 1


@dataclass(frozen=True)
class Format:
    opcode: Opcode
    unit: Unit | None  # None: the unit is named by the instruction (SYNC) or by fetch (END)
    doc: str
    fields: tuple[Field, ...]


HEADER = (
    Field("opcode", 4, "operation", Opcode),
    Field("wait", 4, "units to receive one token from before starting", "mask"),
    Field("signal", 4, "units to send one token to after finishing", "mask"),
)

_DMA_FIELDS = (
    Field("buf", 2, "on-chip buffer", Buffer),
    Field("dram_addr", 32, "external memory byte address of row 0"),
    Field("dram_stride", 32, "bytes between the starts of consecutive rows in external memory"),
    Field("buf_addr", 16, "buffer word address of row 0"),
    Field("buf_stride", 16, "words between the starts of consecutive rows in the buffer"),
    Field("rows", 16, "rows to transfer", nonzero=True),
    Field("cols", 16, "words per row", nonzero=True),
)

FORMATS: dict[Opcode, Format] = {f.opcode: f for f in (
    Format(Opcode.LOAD, Unit.LOAD,
           "2-D strided copy from external memory into an ACT, WGT or PARAM buffer. "
           "Row r, word c comes from `dram_addr + r*dram_stride + c*word_bytes` and goes to "
           "`buf_addr + r*buf_stride + c`. Weight words hold packed `weight_bits` values.",
           _DMA_FIELDS),
    Format(Opcode.STORE, Unit.STORE,
           "2-D strided copy from the ACT buffer to external memory (same addressing as LOAD; `buf` must be ACT).",
           _DMA_FIELDS),
    Format(Opcode.CONV, Unit.COMPUTE,
           "Convolution of an int8 input tile with `ob_count` blocks of `rows` output channels "
           "(implicit im2col). The input tile is stored pixel-major at `in_addr`, "
           "`in_cb` words (channel blocks of `lanes`) per pixel, `in_h`×`in_w` pixels. "
           "For output block b, pixel (y, x): acc[acc_addr + b*out_h*out_w + y*out_w + x] "
           "(+)= Σ over taps (ky, kx) and blocks c of W[w_addr + ((b*k_h + ky)*k_w + kx)*in_cb + c] · "
           "A[y*stride_h - pad_t + ky*dil_h, x*stride_w - pad_l + kx*dil_w, c], where A outside the "
           "tile reads `pad_value` in every lane. int32 accumulation wraps.",
           (
               Field("in_addr", 16, "ACT word address of input pixel (0, 0)"),
               Field("in_h", 10, "input tile height in pixels", nonzero=True),
               Field("in_w", 10, "input tile width in pixels", nonzero=True),
               Field("in_cb", 10, "channel blocks (ACT words) per input pixel", nonzero=True),
               Field("out_h", 10, "output tile height", nonzero=True),
               Field("out_w", 10, "output tile width", nonzero=True),
               Field("k_h", 4, "kernel height", nonzero=True),
               Field("k_w", 4, "kernel width", nonzero=True),
               Field("stride_h", 3, "vertical stride", nonzero=True),
               Field("stride_w", 3, "horizontal stride", nonzero=True),
               Field("dil_h", 4, "vertical dilation", nonzero=True),
               Field("dil_w", 4, "horizontal dilation", nonzero=True),
               Field("pad_t", 4, "zero-point rows above the tile"),
               Field("pad_l", 4, "zero-point columns left of the tile"),
               Field("pad_value", 8, "value read outside the tile (the input zero point)", "s"),
               Field("w_addr", 16, "WGT word address of block 0, tap (0, 0), channel block 0"),
               Field("acc_addr", 16, "ACC word address of block 0, pixel (0, 0)"),
               Field("ob_count", 10, "output-channel blocks of `rows` channels", nonzero=True),
               Field("accumulate", 1, "1: add to the ACC contents; 0: overwrite them"),
           )),
    Format(Opcode.EPILOGUE, Unit.POST,
           "Requantize ACC words to int8 ACT words. For block b, pixel p and channel m of the block, "
           "with (bias, mult, shift) from PARAM word `param_addr + b`: "
           "v = wrap32(acc + bias); q = rnd(scale_product(v, mult), shift). Without residual: "
           "y = clamp(q + zp_out, out_min, out_max). With residual: a = clamp(q + zp_mid, -128, 127), "
           "r = the int8 at `res_addr + p*res_stride + b*rows/lanes` (same lane), "
           "y = clamp(rnd((a - zp_mid)*res_mult_a + (r - zp_res)*res_mult_b, res_shift) + zp_out, "
           "out_min, out_max). rnd() is docs/numerics.md's rounding shift, scale_product(x, mult) = "
           "round_sig(round_sig(x)*mult) its float32 product (24 significant bits, ties to even). "
           "The `rows/lanes` words of block b, pixel p go to `out_addr + p*out_stride + b*rows/lanes`.",
           (
               Field("acc_addr", 16, "ACC word address of block 0, pixel 0 (blocks are `pixels` words apart)"),
               Field("pixels", 16, "pixels per block", nonzero=True),
               Field("ob_count", 10, "output-channel blocks", nonzero=True),
               Field("param_addr", 16, "PARAM word address of block 0"),
               Field("out_addr", 16, "ACT word address of block 0, pixel 0"),
               Field("out_stride", 16, "ACT words between consecutive output pixels"),
               Field("zp_out", 8, "output zero point", "s"),
               Field("out_min", 8, "lower clamp (ReLU: max(zp_out, -128))", "s"),
               Field("out_max", 8, "upper clamp", "s"),
               Field("residual", 1, "1: add the residual tensor at `res_addr`"),
               Field("res_addr", 16, "ACT word address of the residual's block 0, pixel 0"),
               Field("res_stride", 16, "ACT words between consecutive residual pixels"),
               Field("zp_mid", 8, "zero point of the requantized convolution output", "s"),
               Field("zp_res", 8, "zero point of the residual input", "s"),
               Field("res_mult_a", 31, "multiplier of the convolution term"),
               Field("res_mult_b", 31, "multiplier of the residual term"),
               Field("res_shift", 6, "rounding shift of the residual sum"),
           )),
    Format(Opcode.POOL, Unit.POST,
           "Max or average pooling, lane-parallel over `cb` channel blocks. Input and output tiles are "
           "pixel-major with `cb` words per pixel. MAX: y = max over the window's taps inside the tile "
           "(-128 if none). AVG: y = clamp(rnd(scale_product(Σ(x - zp_in), mult), shift) + zp_out, -128, 127) where "
           "taps outside the tile contribute 0 (divisor folded into `mult`). AVG with `fl32`: y = clamp(pool_avg_fl32("
           "taps x - zp_in, mult, shift, zp_ort if fl32_zp) + zp_out, -128, 127), onnxruntime's float32 average of "
           "2**shift taps in one scale whose 24-bit significand is `mult` (tessera.numerics).",
           (
               Field("mode", 1, "MAX or AVG", PoolMode),
               Field("in_addr", 16, "ACT word address of input pixel (0, 0)"),
               Field("in_h", 10, "input tile height", nonzero=True),
               Field("in_w", 10, "input tile width", nonzero=True),
               Field("cb", 10, "channel blocks per pixel", nonzero=True),
               Field("out_addr", 16, "ACT word address of output pixel (0, 0)"),
               Field("out_h", 10, "output height", nonzero=True),
               Field("out_w", 10, "output width", nonzero=True),
               Field("k_h", 4, "window height", nonzero=True),
               Field("k_w", 4, "window width", nonzero=True),
               Field("stride_h", 3, "vertical stride", nonzero=True),
               Field("stride_w", 3, "horizontal stride", nonzero=True),
               Field("pad_t", 4, "padding rows above"),
               Field("pad_l", 4, "padding columns left"),
               Field("zp_in", 8, "input zero point (AVG)", "s"),
               Field("zp_out", 8, "output zero point (AVG)", "s"),
               Field("mult", 31, "requantization multiplier (AVG)"),
               Field("shift", 6, "rounding shift (AVG); log2 of the tap count with `fl32`"),
               Field("fl32", 1, "AVG: average as onnxruntime's float32 path does (config `pool_fl32`)"),
               Field("fl32_zp", 1, "fl32: add `zp_ort` in float32 before rounding (onnxruntime's fused "
                     "QLinearAveragePool)"),
               Field("zp_ort", 9, "fl32_zp: the output zero point as onnxruntime holds it (int8, or "
                     "uint8 = zp_out + 128)", "s"),
           )),
    Format(Opcode.SYNC, None,
           "No operation on unit `unit`: only receives and sends tokens.",
           (Field("unit", 2, "unit that executes it", Unit),)),
    Format(Opcode.END, None,
           "End of program: fetch stops; the NPU is done when every unit has drained.",
           ()),
)}

OPCODE_UNIT = {op: f.unit for op, f in FORMATS.items()}


def _check_formats():
    for fmt in FORMATS.values():
        names = [f.name for f in HEADER + fmt.fields]
        assert len(names) == len(set(names)), fmt.opcode
        assert sum(f.width for f in HEADER + fmt.fields) <= INSTR_BITS, fmt.opcode


_check_formats()


def _fields(op: Opcode) -> tuple[Field, ...]:
    return HEADER + FORMATS[op].fields


def layout(op: Opcode) -> data.StructLayout:
    """Amaranth layout of one opcode's instruction word (padded to :data:`INSTR_BITS`)."""
    members = {f.name: f.shape for f in _fields(op)}
    used = sum(f.width for f in _fields(op))
    if used < INSTR_BITS:
        members["_reserved"] = unsigned(INSTR_BITS - used)
    return data.StructLayout(members)


def unit_mask(units) -> int:
    """Bit mask of an iterable of :class:`Unit` (or unit names)."""
    m = 0
    for u in units:
        u = Unit[u.upper()] if isinstance(u, str) else Unit(u)
        m |= 1 << u.value
    return m


def mask_units(mask: int) -> list[Unit]:
    return [u for u in Unit if mask >> u.value & 1]


class Instruction:
    """A decoded instruction: ``op`` plus field values as attributes.

    Enum fields hold enum members, ``wait``/``signal`` hold int masks.
    Fields not given default to zero (or the first enum member).
    """

    __slots__ = ("op", "values")

    def __init__(self, op: Opcode | str, **values):
        if isinstance(op, str):
            try:
                op = Opcode[op.upper()]
            except KeyError:
                raise IsaError(f"unknown opcode {op!r}; opcodes: "
                               f"{', '.join(o.name.lower() for o in Opcode)}") from None
        object.__setattr__(self, "op", op)
        known = {f.name: f for f in _fields(op)}
        vals = {}
        for f in _fields(op)[1:]:
            if isinstance(f.kind, type):
                vals[f.name] = next(iter(f.kind))
            else:
                vals[f.name] = 0
        for k, v in values.items():
            if k not in known or k == "opcode":
                raise IsaError(f"{op.name.lower()}: unknown field {k!r}; fields: "
                               f"{', '.join(f.name for f in _fields(op)[1:])}")
            f = known[k]
            if f.kind == "mask" and not isinstance(v, int):
                v = unit_mask(v)
            elif isinstance(f.kind, type) and not isinstance(v, f.kind):
                try:
                    v = f.kind[v.upper()] if isinstance(v, str) else f.kind(v)
                except (KeyError, ValueError):
                    raise IsaError(f"{op.name.lower()}.{k}: {v!r} is not a {f.kind.__name__}") from None
            vals[k] = v
        object.__setattr__(self, "values", vals)

    def __getattr__(self, name):
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        raise AttributeError("Instruction is immutable; use .replace()")

    def replace(self, **changes) -> "Instruction":
        return Instruction(self.op, **{**self.values, **changes})

    @property
    def unit(self) -> Unit | None:
        if self.op == Opcode.SYNC:
            return self.values["unit"]
        return OPCODE_UNIT[self.op]

    def __eq__(self, other):
        return isinstance(other, Instruction) and self.op == other.op and self.values == other.values

    def __hash__(self):
        return hash((self.op, tuple(sorted((k, int(getattr(v, "value", v))) for k, v in self.values.items()))))

    def __repr__(self):
        return f"Instruction({disassemble_one(self)!r})"


def _raw(f: Field, v) -> int:
    if isinstance(f.kind, type):
        return v.value
    return int(v)


def encode(ins: Instruction, *, check: bool = True) -> bytes:
    """Encode one instruction into :data:`INSTR_BYTES` little-endian bytes.

    With ``check=False`` out-of-range values are truncated to their field
    (tests use this to build illegal instructions).
    """
    word = 0
    pos = 0
    for f in _fields(ins.op):
        v = ins.op.value if f.name == "opcode" else _raw(f, ins.values[f.name])
        if check and not (f.min <= v <= f.max):
            raise IsaError(f"{ins.op.name.lower()}.{f.name}={v} is out of range "
                           f"({'signed ' if f.signed else ''}{f.width} bits: {f.min}..{f.max})")
        word |= (v & ((1 << f.width) - 1)) << pos
        pos += f.width
    return word.to_bytes(INSTR_BYTES, "little")


def decode(raw: bytes) -> Instruction:
    """Decode :data:`INSTR_BYTES` bytes. Raises :class:`IsaError` on an illegal opcode or field."""
    if len(raw) != INSTR_BYTES:
        raise IsaError(f"instruction has {len(raw)} bytes, expected {INSTR_BYTES}")
    word = int.from_bytes(raw, "little")
    opv = word & 0xF
    try:
        op = Opcode(opv)
    except ValueError:
        raise IsaError(f"illegal opcode {opv}", illegal_opcode=True) from None
    vals = {}
    pos = 0
    for f in _fields(op):
        v = (word >> pos) & ((1 << f.width) - 1)
        pos += f.width
        if f.name == "opcode":
            continue
        if f.signed and v >> (f.width - 1):
            v -= 1 << f.width
        if isinstance(f.kind, type):
            try:
                v = f.kind(v)
            except ValueError:
                raise IsaError(f"{op.name.lower()}.{f.name}: illegal value {v}") from None
        elif f.nonzero and v == 0:
            raise IsaError(f"{op.name.lower()}.{f.name}: must not be zero")
        vals[f.name] = v
    if word >> pos:
        raise IsaError(f"{op.name.lower()}: reserved bits {pos}..{INSTR_BITS - 1} are not zero")
    return Instruction(op, **vals)


def encode_program(instrs) -> bytes:
    return b"".join(encode(i) for i in instrs)


def decode_program(raw: bytes) -> list[Instruction]:
    if len(raw) % INSTR_BYTES:
        raise IsaError(f"instruction stream of {len(raw)} bytes is not a multiple of {INSTR_BYTES}")
    out = []
    for pc in range(len(raw) // INSTR_BYTES):
        try:
            out.append(decode(raw[pc * INSTR_BYTES:(pc + 1) * INSTR_BYTES]))
        except IsaError as e:
            raise IsaError(f"instruction {pc}: {e}") from None
    return out


# ---- text assembly ---------------------------------------------------------

def _fmt_value(f: Field, v) -> str:
    if f.kind == "mask":
        return ",".join(u.name.lower() for u in mask_units(v)) or "-"
    if isinstance(f.kind, type):
        return v.name.lower()
    if f.name.endswith("addr") or f.name.endswith("stride") and f.name.startswith("dram"):
        return f"0x{v:x}"
    return str(v)


def disassemble_one(ins: Instruction) -> str:
    parts = [ins.op.name.lower()]
    for f in _fields(ins.op)[1:]:
        v = ins.values[f.name]
        if f.kind == "mask" and v == 0:
            continue
        parts.append(f"{f.name}={_fmt_value(f, v)}")
    return " ".join(parts)


def disassemble(instrs, *, addresses: bool = True) -> str:
    """Readable listing, one instruction a line, assemblable by :func:`assemble`."""
    lines = []
    for pc, ins in enumerate(instrs):
        prefix = f"{pc * INSTR_BYTES:#08x}: " if addresses else ""
        lines.append(prefix + disassemble_one(ins))
    return "\n".join(lines) + ("\n" if lines else "")


_TOKEN = re.compile(r"^([a-z_][a-z0-9_]*)=(\S+)$")


def _parse_value(f: Field, text: str, where: str):
    if f.kind == "mask":
        if text == "-":
            return 0
        try:
            return unit_mask(text.split(","))
        except KeyError as e:
            raise IsaError(f"{where}: {f.name}: unknown unit {e}") from None
    if isinstance(f.kind, type):
        try:
            return f.kind[text.upper()]
        except KeyError:
            raise IsaError(f"{where}: {f.name}={text}: expected one of "
                           f"{', '.join(m.name.lower() for m in f.kind)}") from None
    try:
        return int(text, 0)
    except ValueError:
        raise IsaError(f"{where}: {f.name}={text} is not an integer") from None


def assemble(text: str) -> list[Instruction]:
    """Parse assembly text (as :func:`disassemble` prints it; ``#`` starts a comment)."""
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if re.match(r"^0x[0-9a-f]+:", line):
            line = line.split(":", 1)[1].strip()
        if not line:
            continue
        where = f"line {lineno}"
        toks = line.split()
        try:
            op = Opcode[toks[0].upper()]
        except KeyError:
            raise IsaError(f"{where}: unknown opcode {toks[0]!r}") from None
        fields = {f.name: f for f in _fields(op)[1:]}
        vals = {}
        for t in toks[1:]:
            m = _TOKEN.match(t)
            if not m:
                raise IsaError(f"{where}: expected field=value, got {t!r}")
            name, val = m.groups()
            if name not in fields:
                raise IsaError(f"{where}: {op.name.lower()} has no field {name!r}")
            vals[name] = _parse_value(fields[name], val, where)
        ins = Instruction(op, **vals)
        try:
            encode(ins)
        except IsaError as e:
            raise IsaError(f"{where}: {e}") from None
        out.append(ins)
    return out


# ---- documentation ---------------------------------------------------------

def _kind_text(f: Field) -> str:
    if f.kind == "mask":
        return "unit mask"
    if isinstance(f.kind, type):
        return f.kind.__name__
    return ("signed" if f.signed else "unsigned") + (", ≥ 1" if f.nonzero else "")


def markdown() -> str:
    """The ISA reference, ``docs/isa.md``, generated from this module."""
    L = ["# Tessera ISA reference", "",
         "<!-- Generated by `python -m tessera.isa > docs/isa.md` from tessera/isa.py; do not edit. -->", "",
         f"Every instruction is one {INSTR_BITS}-bit ({INSTR_BYTES}-byte) little-endian word; "
         "fields are packed from bit 0 upward in the order listed. Bits past the last field are reserved "
         "and must be zero. Buffer addresses count words of that buffer; external addresses count bytes.",
         "", "## Enumerations", ""]
    for e in (Opcode, Unit, Buffer, PoolMode, ErrorCode, Csr, Status):
        L.append(f"**{e.__name__}** ({e.__doc__.strip().splitlines()[0] if e.__doc__ else ''}): " +
                 ", ".join(f"`{m.name}`={m.value}" for m in e))
        L.append("")
    L += ["## Dependency tokens", "", __doc__.split("Dependency tokens\n-----------------\n", 1)[1].strip(), ""]
    for op, fmt in FORMATS.items():
        unit = fmt.unit.name if fmt.unit else ("named by `unit`" if op == Opcode.SYNC else "fetch")
        L += [f"## {op.name} (opcode {op.value}, unit {unit})", "", fmt.doc, "",
              "| bits | field | width | kind | meaning |", "|---|---|---|---|---|"]
        pos = 0
        for f in _fields(op):
            L.append(f"| {pos}..{pos + f.width - 1} | `{f.name}` | {f.width} | {_kind_text(f)} | {f.doc} |")
            pos += f.width
        L.append("")
    return "\n".join(L)


if __name__ == "__main__":
    print(markdown(), end="")
