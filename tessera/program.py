"""The ``.tsp`` program file: everything the host needs to run a compiled model.

Binary layout (all integers little-endian)::

    offset  size  content
    0       8     magic  b"TESSERA\\x00"
    8       4     format version (u32)
    12      4     header length H (u32)
    16      H     header: UTF-8 JSON (config, config hash, sections, memory layout,
                  I/O table, host-side ops, metadata)
    16+H    ...   section data ("instructions", then "constants"), at the offsets
                  the header gives relative to 16+H
    end-32  32    SHA-256 of every byte before it

The instruction stream is placed in external memory at ``prog_addr`` and the
constant blob (weights, biases, requantization tables) at ``const_addr``;
activations live in ``[scratch_addr, scratch_addr + scratch_size)``.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field

import numpy as np

from tessera.errors import UserError

from .arch import ConfigError, NpuConfig
from .isa import INSTR_BYTES, Instruction, IsaError, decode_program, encode_program

__all__ = ["MAGIC", "FORMAT_VERSION", "Program", "ProgramError", "TensorInfo"]

MAGIC = b"TESSERA\x00"
FORMAT_VERSION = 1
#: Version written for programs with several segments (``Program.starts``); version-1 readers would run only
#: the first segment, so such files must not look readable to them.
FORMAT_VERSION_SEGMENTS = 2
#: Version written when an input is stored as overlapping patches (``TensorInfo.patch``): version-1/2 readers
#: would reject the unknown field only by accident, and must not pack such an input as space-to-depth.
FORMAT_VERSION_PATCHES = 3
_VERSIONS = (FORMAT_VERSION, FORMAT_VERSION_SEGMENTS, FORMAT_VERSION_PATCHES)
_PREAMBLE = struct.Struct("<8sII")
_DIGEST = 32


class ProgramError(UserError, ValueError):
    """A program file is malformed, corrupt, or built for other hardware."""


@dataclass
class TensorInfo:
    """One model input or output as the NPU stores it.

    The NPU keeps a tensor as ``H×W`` pixels of ``cpad`` int8 channels
    (``cpad`` a multiple of the lane count), pixel-major, at ``addr``. The host
    converts between that and the source model's tensor (``shape``, ``layout``,
    ``dtype``) with ``scale`` and ``zero_point`` (int8 domain:
    ``real = scale * (q - zero_point)``).

    Inputs may also be stored transformed, so that a first layer with few
    channels fills the lanes: ``pad`` (top, left, bottom, right) pixels of the
    zero point are added around the image, then ``block``×``block``
    space-to-depth packs each block into one pixel with channels ordered
    (dy, dx, c). With ``patch`` = ``[kh, kw]`` (format version 3) stored pixel
    ``(j, i)`` instead holds the ``kh×kw`` window of the padded image at
    ``(block·j, block·i)``, channels again ordered (dy, dx, c): the im2col
    image of a ``kh×kw``/``block`` convolution, which then runs as a 1×1
    convolution; windows overlap when ``patch`` exceeds ``block``, and
    ``patch = None`` is ``[block, block]`` (space-to-depth). ``height``,
    ``width`` and ``channels`` always describe the source tensor;
    :attr:`stored_height`, :attr:`stored_width` the memory image.
    """

    name: str
    shape: list[int]
    layout: str          # "NCHW", "NHWC" or "NC": how `shape` maps onto H, W, C
    addr: int
    height: int
    width: int
    channels: int
    cpad: int
    scale: float
    zero_point: int
    dtype: str = "float32"
    pad: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    block: int = 1
    patch: list[int] | None = None

    def __post_init__(self):
        pt, pl, pb, pr = self.pad
        kh, kw = self.window
        # Space-to-depth tiles the padded image exactly; patches may leave rows/columns no window reaches.
        exact = self.block if self.patch is None else 1
        if min(self.pad) < 0 or self.block < 1 or min(kh, kw) < 1 \
                or self.height + pt + pb < kh or (self.height + pt + pb - kh) % exact \
                or self.width + pl + pr < kw or (self.width + pl + pr - kw) % exact:
            what = f"block {self.block}" if self.patch is None else f"patches {kh}x{kw} every {self.block}"
            raise ProgramError(f"tensor {self.name!r}: pad {self.pad} and {what} do not tile "
                               f"{self.height}x{self.width}")
        if self.cpad < kh * kw * self.channels:
            raise ProgramError(f"tensor {self.name!r}: cpad {self.cpad} < {kh}×{kw}×{self.channels} channels")

    @property
    def window(self) -> tuple[int, int]:
        """(rows, columns) of the padded source image in one stored pixel."""
        if self.patch is None:
            return self.block, self.block
        if len(self.patch) != 2:
            raise ProgramError(f"tensor {self.name!r}: patch {self.patch} is not [rows, columns]")
        return int(self.patch[0]), int(self.patch[1])

    @property
    def stored_height(self) -> int:
        return (self.height + self.pad[0] + self.pad[2] - self.window[0]) // self.block + 1

    @property
    def stored_width(self) -> int:
        return (self.width + self.pad[1] + self.pad[3] - self.window[1]) // self.block + 1

    @property
    def nbytes(self) -> int:
        return self.stored_height * self.stored_width * self.cpad

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        if d["patch"] is None:
            del d["patch"]      # files without patches stay readable by format-1/2 readers
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TensorInfo":
        try:
            return cls(**d)
        except TypeError as e:
            raise ProgramError(f"I/O table entry {d.get('name', '?')!r}: {e}") from None

    # ---- host-side packing --------------------------------------------------

    def _to_hwc(self, x: np.ndarray) -> np.ndarray:
        if self.layout == "NCHW":
            return x.reshape(self.channels, self.height, self.width).transpose(1, 2, 0)
        if self.layout == "NHWC":
            return x.reshape(self.height, self.width, self.channels)
        if self.layout == "NC":
            return x.reshape(1, 1, self.channels)
        raise ProgramError(f"tensor {self.name!r}: unknown layout {self.layout!r}")

    def quantize(self, x) -> np.ndarray:
        """Source-model tensor (float) → int8 NPU image, ``H×W×cpad``, padded with the zero point."""
        x = np.asarray(x)
        if list(x.shape) != list(self.shape):
            raise ValueError(f"input {self.name!r} has shape {list(x.shape)}, the model expects {self.shape}")
        if x.dtype.kind in "iu" and self.dtype in ("int8", "uint8"):
            q = x.astype(np.int32) - (128 if self.dtype == "uint8" else 0)
        else:
            # float32 division, as onnxruntime's QuantizeLinear: float64 rounds a few near-ties the other way.
            q = np.rint(x.astype(np.float32) / np.float32(self.scale)) + self.zero_point
        q = np.clip(q, -128, 127).astype(np.int8)
        hwc = self._to_hwc(q)
        pt, pl, pb, pr = self.pad
        if any(self.pad):
            hwc = np.pad(hwc, ((pt, pb), (pl, pr), (0, 0)), constant_values=self.zero_point)
        s, (kh, kw), c = self.block, self.window, self.channels
        sh, sw = self.stored_height, self.stored_width
        out = np.empty((sh, sw, self.cpad), dtype=np.int8)
        out[:, :, kh * kw * c:] = self.zero_point
        # [y][x][dy][dx][c] windows of the padded image, every s pixels: one copy in (dy, dx, c) channel order.
        hwc = np.ascontiguousarray(hwc)
        if hwc.shape[0] < s * (sh - 1) + kh or hwc.shape[1] < s * (sw - 1) + kw:
            raise ProgramError(f"tensor {self.name!r}: {sh}×{sw} windows of {kh}×{kw} every {s} need more than "
                               f"the padded {hwc.shape[0]}×{hwc.shape[1]} image")
        y, x_, ch = hwc.strides
        win = np.lib.stride_tricks.as_strided(hwc, (sh, sw, kh, kw, c), (s * y, s * x_, y, x_, ch), writeable=False)
        out[:, :, :kh * kw * c].reshape(sh, sw, kh, kw, c)[...] = win
        return out

    def dequantize(self, img: np.ndarray) -> np.ndarray:
        """int8 NPU image (``H×W×cpad``) → source-model tensor (float32, source shape and layout)."""
        if any(self.pad) or self.block != 1 or self.patch is not None:
            raise ProgramError(f"tensor {self.name!r}: padded, space-to-depth or patch tensors are inputs only")
        q = img.reshape(self.height, self.width, self.cpad)[:, :, :self.channels].astype(np.float32)
        real = (q - self.zero_point) * np.float32(self.scale)
        if self.layout == "NCHW":
            real = real.transpose(2, 0, 1)
        return real.reshape(self.shape).astype(np.float32)


@dataclass
class Program:
    """A compiled program and everything needed to load and run it."""

    config: NpuConfig
    instructions: list[Instruction]
    constants: bytes = b""
    prog_addr: int = 0
    const_addr: int = 0
    scratch_addr: int = 0
    scratch_size: int = 0
    inputs: list[TensorInfo] = field(default_factory=list)
    outputs: list[TensorInfo] = field(default_factory=list)
    host_ops: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    #: instruction index where each END-terminated segment starts; the host starts the NPU at
    #: ``segment_addr(k)`` for each in turn and runs the host ops with ``after_segment == k`` in between
    starts: list[int] = field(default_factory=lambda: [0])

    def segment_addr(self, k: int) -> int:
        """External-memory address of segment ``k``'s first instruction (32-byte aligned)."""
        return self.prog_addr + INSTR_BYTES * self.starts[k]

    # ---- memory image -------------------------------------------------------

    def segments(self) -> list[tuple[int, bytes]]:
        """(address, bytes) pieces to write into external memory before a run."""
        segs = [(self.prog_addr, encode_program(self.instructions))]
        if self.constants:
            segs.append((self.const_addr, bytes(self.constants)))
        return segs

    def check_config(self, config: NpuConfig) -> None:
        """Raise :class:`ProgramError` unless this program was built for ``config``'s hardware."""
        if config.hash() != self.config.hash():
            raise ProgramError(
                f"program was built for config {self.config.name!r} (hash {self.config.hash()}), "
                f"but the NPU is {config.name!r} (hash {config.hash()}); recompile with --config {config.name}")

    def tensor(self, name: str) -> TensorInfo:
        for t in self.inputs + self.outputs:
            if t.name == name:
                return t
        raise KeyError(f"no tensor {name!r}; inputs: {[t.name for t in self.inputs]}, "
                       f"outputs: {[t.name for t in self.outputs]}")

    # ---- serialization ------------------------------------------------------

    def to_bytes(self) -> bytes:
        instr = encode_program(self.instructions)
        const = bytes(self.constants)
        header = {
            "config": self.config.to_dict(),
            "config_hash": self.config.hash(),
            "sections": {"instructions": [0, len(instr)], "constants": [len(instr), len(const)]},
            "prog_addr": self.prog_addr,
            "const_addr": self.const_addr,
            "scratch_addr": self.scratch_addr,
            "scratch_size": self.scratch_size,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "host_ops": self.host_ops,
            "meta": self.meta,
        }
        version = FORMAT_VERSION
        if list(self.starts) != [0]:
            header["starts"] = list(self.starts)
            version = FORMAT_VERSION_SEGMENTS
        if any(t.patch is not None for t in self.inputs + self.outputs):
            version = FORMAT_VERSION_PATCHES
        hjson = json.dumps(header, sort_keys=True).encode()
        body = _PREAMBLE.pack(MAGIC, version, len(hjson)) + hjson + instr + const
        return body + hashlib.sha256(body).digest()

    def save(self, path) -> None:
        data = self.to_bytes()
        with open(path, "wb") as f:
            f.write(data)

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "program") -> "Program":
        def bad(msg):
            return ProgramError(f"{source}: {msg}")

        if len(data) < _PREAMBLE.size:
            raise bad(f"truncated: {len(data)} bytes is shorter than the {_PREAMBLE.size}-byte preamble")
        magic, version, hlen = _PREAMBLE.unpack_from(data)
        if magic != MAGIC:
            raise bad("not a Tessera program (bad magic; expected a .tsp file from `tessera compile`)")
        if version not in _VERSIONS:
            raise bad(f"format version {version} is not supported (this Tessera reads versions "
                      f"{', '.join(map(str, _VERSIONS))}); recompile the model with this Tessera")
        if len(data) < _PREAMBLE.size + hlen + _DIGEST:
            raise bad(f"truncated: header says {hlen} header bytes but the file has only {len(data)} bytes")
        body, digest = data[:-_DIGEST], data[-_DIGEST:]
        if hashlib.sha256(body).digest() != digest:
            raise bad("checksum mismatch: the file is corrupt or truncated")
        try:
            header = json.loads(body[_PREAMBLE.size:_PREAMBLE.size + hlen].decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise bad(f"header is not valid JSON: {e}") from None
        payload = body[_PREAMBLE.size + hlen:]
        try:
            config = NpuConfig.from_dict(header["config"])
            if config.hash() != header["config_hash"]:
                raise bad(f"config hash {header['config_hash']} does not match its config "
                          f"({config.hash()}); the file was edited or written by another version")
            sections = {}
            for name in ("instructions", "constants"):
                off, size = header["sections"][name]
                if off < 0 or size < 0 or off + size > len(payload):
                    raise bad(f"section {name!r} ({off}+{size}) lies outside the {len(payload)}-byte payload")
                sections[name] = payload[off:off + size]
            if len(sections["instructions"]) % INSTR_BYTES:
                raise bad(f"instruction section of {len(sections['instructions'])} bytes "
                          f"is not a multiple of {INSTR_BYTES}")
            try:
                instrs = decode_program(sections["instructions"])
            except IsaError as e:
                raise bad(str(e)) from None
            starts = [int(v) for v in header.get("starts", [0])]
            ends = {i for i, ins in enumerate(instrs) if ins.op.name == "END"}
            if not starts or starts[0] != 0 or any(not 0 < k < len(instrs) or k - 1 not in ends
                                                   for k in starts[1:]) or starts != sorted(set(starts)):
                raise bad(f"segment starts {starts} do not each follow an END instruction")
            return cls(
                starts=starts, config=config, instructions=instrs, constants=sections["constants"],
                prog_addr=int(header["prog_addr"]), const_addr=int(header["const_addr"]),
                scratch_addr=int(header["scratch_addr"]), scratch_size=int(header["scratch_size"]),
                inputs=[TensorInfo.from_dict(d) for d in header["inputs"]],
                outputs=[TensorInfo.from_dict(d) for d in header["outputs"]],
                host_ops=list(header.get("host_ops", [])), meta=dict(header.get("meta", {})),
            )
        except KeyError as e:
            raise bad(f"header lacks field {e}") from None
        except ConfigError as e:
            raise bad(f"bad config: {e}") from None
        except (TypeError, ValueError) as e:
            if isinstance(e, ProgramError):
                raise
            raise bad(f"malformed header: {e}") from None

    @classmethod
    def load(cls, path) -> "Program":
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ProgramError(f"{path}: cannot read: {e.strerror}") from None
        return cls.from_bytes(data, source=str(path))
