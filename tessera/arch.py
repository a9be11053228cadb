"""The NPU's architecture parameters: one frozen dataclass and its named presets.

Every other part (HDL, compiler, emulator, cycle model, host, synthesis) sizes
itself from an :class:`NpuConfig`. Its :meth:`NpuConfig.hash` identifies the
hardware a program was compiled for and goes into every program file and every
generated Verilog file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from tessera.errors import UserError

__all__ = ["NpuConfig", "ConfigError", "PRESETS", "get_config", "PARAM_FIELDS"]

#: Per-output-channel requantization record in the parameter buffer, in order.
#: Each entry is one little-endian int32 in external memory.
PARAM_FIELDS = ("bias", "mult", "shift")


class ConfigError(UserError, ValueError):
    """An :class:`NpuConfig` is inconsistent, or a preset name is unknown."""


def _is_pow2(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


@dataclass(frozen=True)
class NpuConfig:
    """Architecture parameters of one NPU instance.

    Parameters
    ----------
    name : str
        Preset or user name; not part of :meth:`hash` (the hash names hardware).
    lanes : int
        N, the input-vector width: int8 activations per activation word and
        per MAC-array row. Power of two.
    rows : int
        M, output channels per matrix-vector pass; the array does M×N MACs per
        cycle. A power-of-two multiple of ``lanes``.
    weight_bits : int
        Weight width (8, 4 or 2). Narrower weights are packed densely in
        weight words.
    act_bits : int
        Activation width (8).
    acc_bits : int
        Accumulator width (32); accumulation wraps modulo ``2**acc_bits``.
    abuf_words, wbuf_words, accbuf_words, pbuf_words : int
        Depths of the on-chip activation, weight, accumulator and parameter
        buffers, in words of that buffer (see the ``*_word_bytes`` properties).
    bus_bytes : int
        Width of the external memory port in bytes (one beat per cycle at most).
    dram_bytes : int
        Size of the external memory address space.
    mem_latency : int
        Cycles from a read request to its first data beat.
    mem_outstanding : int
        Read requests the memory port keeps in flight.
    queue_depth : int
        Instruction queue depth of each execution unit.
    token_depth : int
        Dependency tokens one queue between two units holds.
    clock_mhz : float
        Target clock, used for latency projections.
    post_lanes : int
        Channels EPILOGUE and POOL requantize per cycle (0: all ``lanes``, one ACT word per cycle).
        Fewer share the multipliers: an EPILOGUE output word takes ``lanes // post_lanes`` cycles,
        a POOL window at least that many.
    bram_buffers : bool
        Build the buffers from two-port block RAM: the ACT buffer gets one write port (POST's
        writes first, LOAD's wait in a small FIFO) and two read copies (CONV's; POST's, which
        STORE uses when POST does not read). The default gives every user its own port.
        Either option changes cycle counts, not results.
    pool_fl32 : bool
        POOL can average as onnxruntime's float32 path does (its ``fl32`` flag): a 9 × 24-bit
        product and two float32 roundings per lane and tap. Without it the compiler lowers
        every average pool to the fixed-point rule, whose exact ``.5`` ties can differ from
        onnxruntime's by one step (docs/numerics.md).
    timing_stages : bool
        Extra register stages for FPGA clock rates, at a few cycles per instruction: each unit's
        range check takes :attr:`check_cycles` registered steps (one multiply or add per step)
        before it starts, EPILOGUE and POOL split each multiply, float32 rounding and rounding
        shift over registered stages (:attr:`epilogue_stages`, :attr:`pool_stages`), CONV its
        address multiplies (:attr:`conv_stages`), the MAC array registers its operands and
        products (:attr:`mac_stages`), and each unit's instruction queue keeps its head in a
        register (:attr:`queue_stages`).
        Changes cycle counts, not results.
    core : str
        ``"parallel"``: the NPU of units, queues and the MAC array (:class:`tessera.hdl.npu.NpuCore`).
        ``"sequential"``: a small CPU executes the same instructions one at a time in firmware
        (:mod:`tessera.hdl.seq`), for FPGAs too small for the parallel core; needs ``bus_bytes=4``.
        Changes cycle counts (by orders of magnitude), not results; the cycle model models the parallel core.
    """

    name: str = "custom"
    lanes: int = 16
    rows: int = 16
    weight_bits: int = 8
    act_bits: int = 8
    acc_bits: int = 32
    abuf_words: int = 8192
    wbuf_words: int = 1024
    accbuf_words: int = 2048
    pbuf_words: int = 256
    bus_bytes: int = 16
    dram_bytes: int = 256 << 20
    mem_latency: int = 16
    mem_outstanding: int = 8
    queue_depth: int = 8
    token_depth: int = 8
    clock_mhz: float = 100.0
    post_lanes: int = 0
    bram_buffers: bool = False
    pool_fl32: bool = True
    timing_stages: bool = False
    core: str = "parallel"
    notes: str = field(default="", compare=False)

    def __post_init__(self):
        problems = []
        if not _is_pow2(self.lanes):
            problems.append(f"lanes={self.lanes} must be a power of two")
        if not _is_pow2(self.rows) or self.rows % self.lanes:
            problems.append(f"rows={self.rows} must be a power-of-two multiple of lanes={self.lanes}")
        if self.weight_bits not in (2, 4, 8):
            problems.append(f"weight_bits={self.weight_bits} must be 8, 4 or 2")
        if self.act_bits != 8:
            problems.append(f"act_bits={self.act_bits}: only 8-bit activations are supported")
        if self.acc_bits != 32:
            problems.append(f"acc_bits={self.acc_bits}: only 32-bit accumulators are supported")
        if not _is_pow2(self.bus_bytes):
            problems.append(f"bus_bytes={self.bus_bytes} must be a power of two")
        for fname in ("abuf_words", "wbuf_words", "accbuf_words", "pbuf_words"):
            v = getattr(self, fname)
            if not (0 < v <= 1 << 16):
                problems.append(f"{fname}={v} must be in 1..65536 (16-bit buffer addresses)")
        if not (0 < self.dram_bytes <= 1 << 32) or self.dram_bytes % self.bus_bytes:
            problems.append(f"dram_bytes={self.dram_bytes} must be a multiple of bus_bytes up to 4 GiB")
        for fname in ("mem_latency", "mem_outstanding", "queue_depth", "token_depth"):
            if getattr(self, fname) < 1:
                problems.append(f"{fname} must be at least 1")
        if self.token_depth > 255:
            problems.append("token_depth must be at most 255")
        for wname in ("act", "wgt", "acc", "param"):
            wb = getattr(self, f"{wname}_word_bytes") if _is_pow2(self.lanes) else 1
            if wb % self.bus_bytes and self.bus_bytes % wb:
                problems.append(f"{wname} word of {wb} bytes and bus of {self.bus_bytes} bytes: "
                                f"one must divide the other")
        if self.post_lanes and (not _is_pow2(self.post_lanes) or self.post_lanes > self.lanes):
            problems.append(f"post_lanes={self.post_lanes} must be 0 or a power of two up to lanes={self.lanes}")
        if self.bram_buffers and not problems:
            if self.act_word_bytes < self.bus_bytes or self.param_word_bytes < self.bus_bytes or self.bus_bytes < 4:
                problems.append("bram_buffers needs a bus of at least 4 bytes and ACT and PARAM words "
                                "at least as wide as the bus")
            elif (3 * self.post_lanes_eff) % (self.bus_bytes // 4):
                problems.append(f"bram_buffers: PARAM records of post_lanes={self.post_lanes_eff} channels "
                                f"({12 * self.post_lanes_eff} bytes) must be whole bus beats of {self.bus_bytes} bytes")
        if self.core not in CORES:
            problems.append(f"core={self.core!r} must be one of {', '.join(CORES)}")
        elif self.core == "sequential" and self.bus_bytes != 4:
            problems.append(f"core='sequential' needs bus_bytes=4 (one CPU word per beat), not {self.bus_bytes}")
        if problems:
            raise ConfigError(f"config {self.name!r}: " + "; ".join(problems))

    # ---- derived sizes -------------------------------------------------

    @property
    def macs_per_cycle(self) -> int:
        """Peak int8 MACs per cycle (rows × lanes)."""
        return self.rows * self.lanes

    @property
    def post_lanes_eff(self) -> int:
        """Channels EPILOGUE and POOL requantize per cycle (``post_lanes``, or ``lanes`` when 0)."""
        return self.post_lanes or self.lanes

    @property
    def check_cycles(self) -> int:
        """Cycles a unit's CHECK state waits for its registered range check (0: decided at once).

        Each step is one multiply, one add or one compare of instruction fields (hdl/common.py's
        ``CheckStages``); the longest check (a product of three fields, added, compared, OR-ed)
        needs four.
        """
        return 4 if self.timing_stages else 0

    @property
    def epilogue_stages(self) -> dict[str, int]:
        """Registers ``timing_stages`` adds to each step of EPILOGUE's pipeline (hdl/post.py).

        ``read_data`` registers the ACC, PARAM and ACT words as they leave the block RAMs (before
        their slices are selected). A multiply registers its 18 × 18 partial products (``split_mul``);
        ``multiply_operands`` registers the scale multiply's operands (on the ECP5 in its hard
        multipliers' input registers) and ``product_pieces`` its pieces once more in fabric (those
        blocks sit at the die's edges); a float32 rounding its
        bit length, that length decoded, its kept bits and increment, and its result
        (``round_sig``), a rounding shift its shifted value and rounding decision
        (``round_shift``); ``clamp`` registers the requantized value plus its zero points, then
        its clamps (apart from the residual products), ``residual_operands`` the residual
        products' operands, ``residual_clamp`` the residual sum plus the output zero point. The
        cycle model adds the sum.
        """
        steps = {"read_data": 1, "round_in": 4, "multiply_operands": 1, "multiply": 1, "product_pieces": 1,
                 "round_product": 4, "shift": 1, "clamp": 2,
                 "residual_operands": 1, "residual_multiply": 1, "residual_shift": 1, "residual_clamp": 1}
        return {k: (v if self.timing_stages else 0) for k, v in steps.items()}

    @property
    def conv_stages(self) -> dict[str, int]:
        """Registers ``timing_stages`` adds to CONV's address pipeline (hdl/conv.py): the tap's
        coordinates register their products (``y * stride_h``, ``ky * dil_h``, ...) before the sums,
        the pixel index ``iy * in_w + ix`` and the buffer address ``in_addr + lin * in_cb + cb`` their
        multiply's partial products (``split_mul``). The cycle model adds the sum."""
        steps = {"tap_coords": 1, "pixel_index": 1, "buffer_address": 1}
        return {k: (v if self.timing_stages else 0) for k, v in steps.items()}

    @property
    def mac_stages(self) -> dict[str, int]:
        """Registers ``timing_stages`` adds to the MAC array (hdl/mac.py): ``operands`` registers the
        activation and weight words at its input (after CONV's padding select, apart from the buffer
        reads), ``act_fanout`` registers the activation word once where it is read and copies it
        twice more, into a register per one or two rows (the weight word is read that much later
        rather than delayed in registers),
        ``products`` delays every product in fabric registers before its row's adder tree (on the
        ECP5 a row's hard multipliers span much of the die). The cycle model adds the sum to CONV.
        """
        steps = {"operands": 1, "act_fanout": 2, "products": 2}
        return {k: (v if self.timing_stages else 0) for k, v in steps.items()}

    @property
    def pool_stages(self) -> dict[str, int]:
        """Registers ``timing_stages`` adds to each step of POOL (as :attr:`epilogue_stages`): the
        tap address's products and two multiplies (as :attr:`conv_stages`), ``tap_read`` the ACT word
        read before the taps' compares and adds, ``select`` a lane's values (the bank's group select)
        before the requantization multiply."""
        steps = {"tap_coords": 1, "pixel_index": 1, "buffer_address": 1, "tap_read": 1, "select": 1,
                 "multiply": 1, "round_product": 4, "shift": 1, "clamp": 1}
        return {k: (v if self.timing_stages else 0) for k, v in steps.items()}

    @property
    def queue_stages(self) -> int:
        """Cycles a unit queue adds from fetch to start (hdl/dispatch.py): with ``timing_stages``
        two, its registered head and the register an entry passes before the queue's RAM."""
        return 2 if self.timing_stages else 0

    @property
    def act_write_stages(self) -> int:
        """Registers a LOAD's ACT word passes before the ACT buffer's shared write port (hdl/buffers.py,
        ``bram_buffers``): one with ``timing_stages``. LOAD is done once its last word has left
        them, so a LOAD into ACT takes that many cycles more (the cycle model adds them)."""
        return 1 if self.timing_stages and self.bram_buffers else 0

    @property
    def err_stages(self) -> int:
        """Registers between a unit's fault and dispatch (hdl/dispatch.py): one with ``timing_stages``.

        Dispatch holds every start while a fault waits; a unit's fault decided in the same cycle
        was a combinational path from every unit's instruction register through dispatch into every
        unit's start (the whole NPU's routed critical path, docs/synthesis.md). With the register a
        fault is seen, and reported, one cycle later; nothing else changes.
        """
        return 1 if self.timing_stages else 0

    @property
    def pc_stages(self) -> int:
        """Registers in dispatch's oldest-pc trees (``oldest_pc`` for the watchdog, ``deadlock_pc``):
        one per level of compares with ``timing_stages``. They only matter when nothing moves: a
        deadlock is reported after ``1 + max(1, queue_stages) + pc_stages`` stuck cycles, one more for
        its registered verdict (6 with ``timing_stages``, 2 without), and the watchdog
        fires after at least ``max(WATCHDOG, pc_stages)`` cycles without progress."""
        return 2 if self.timing_stages else 0

    @property
    def words_per_block(self) -> int:
        """Activation words holding one row block (``rows // lanes``)."""
        return self.rows // self.lanes

    @property
    def act_word_bytes(self) -> int:
        """Bytes in one activation word: ``lanes`` int8 values."""
        return self.lanes

    @property
    def wgt_word_bytes(self) -> int:
        """Bytes in one weight word: a rows×lanes block of packed weights."""
        return self.rows * self.lanes * self.weight_bits // 8

    @property
    def acc_word_bytes(self) -> int:
        """Bytes in one accumulator word: ``rows`` int32 values."""
        return self.rows * 4

    @property
    def param_word_bytes(self) -> int:
        """Bytes in one parameter word: ``rows`` records of :data:`PARAM_FIELDS` int32."""
        return self.rows * 4 * len(PARAM_FIELDS)

    def word_bytes(self, buffer) -> int:
        """Word size in bytes of a :class:`tessera.isa.Buffer`."""
        return {"ACT": self.act_word_bytes, "WGT": self.wgt_word_bytes,
                "ACC": self.acc_word_bytes, "PARAM": self.param_word_bytes}[buffer.name]

    def buffer_words(self, buffer) -> int:
        """Depth in words of a :class:`tessera.isa.Buffer`."""
        return {"ACT": self.abuf_words, "WGT": self.wbuf_words,
                "ACC": self.accbuf_words, "PARAM": self.pbuf_words}[buffer.name]

    # ---- identity ------------------------------------------------------

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "NpuConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "NpuConfig":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise ConfigError("config JSON must be an object")
        return cls.from_dict(d)

    def hash(self) -> str:
        """Stable 16-hex-digit hash of the hardware-defining fields (not name or notes)."""
        d = self.to_dict()
        d.pop("name")
        d.pop("notes")
        # Fields added later enter the hash only when set, so existing configs keep their hashes.
        for later in _LATER_FIELDS:
            if d[later] == NpuConfig.__dataclass_fields__[later].default:
                d.pop(later)
        canon = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:16]

    def replace(self, **changes) -> "NpuConfig":
        return dataclasses.replace(self, **changes)


#: Fields added after the first presets were hashed (see :meth:`NpuConfig.hash`).
_LATER_FIELDS = ("post_lanes", "bram_buffers", "pool_fl32", "timing_stages", "core")

#: Values of :attr:`NpuConfig.core`.
CORES = ("parallel", "sequential")


PRESETS: dict[str, NpuConfig] = {
    # Small enough to verilate in about a minute and run ResNet-50 in RTL simulation.
    "sim": NpuConfig(
        name="sim", lanes=16, rows=16,
        abuf_words=8192, wbuf_words=1024, accbuf_words=2048, pbuf_words=256,
        bus_bytes=16, dram_bytes=256 << 20, mem_latency=16, clock_mhz=100.0,
        notes="CI and RTL-simulation size: 256 MACs/cycle, 128-bit memory port."),
    # ECP5-85F on the ULX3S: 256 int8 MACs, the most that fit its 83,640 LUT4s with the NPU around
    # them (512 pack into 84,301, 0.8 % too many: docs/synthesis.md); buffers in 162 of the 208 DP16KD
    # block RAMs (block-RAM shaped ACT/PARAM), EPILOGUE and POOL share 4 lanes of multipliers.
    "ulx3s-85f": NpuConfig(
        name="ulx3s-85f", lanes=16, rows=16,
        abuf_words=4096, wbuf_words=512, accbuf_words=512, pbuf_words=64,
        bus_bytes=16, dram_bytes=32 << 20, mem_latency=24, clock_mhz=100.0,
        post_lanes=4, bram_buffers=True, pool_fl32=False, timing_stages=True,
        notes="ULX3S-85F with its 32 MiB SDRAM behind a width-converting controller; block-RAM shaped "
              "buffers, an EPILOGUE/POOL of 4 channels per cycle, registered range checks."),
    # iCEBreaker (iCE40 UP5K, 5,280 LUT4): the sequential core, a PicoRV32 running the ISA in firmware
    # (tessera.hdl.seq); its buffers fill one pair of the UP5K's 32 KiB single-port RAMs, external memory
    # the other pair (docs/synthesis.md).
    "icebreaker": NpuConfig(
        name="icebreaker", lanes=4, rows=8,
        abuf_words=2048, wbuf_words=512, accbuf_words=512, pbuf_words=32,
        bus_bytes=4, dram_bytes=64 << 10, mem_latency=2, mem_outstanding=1, queue_depth=4, token_depth=4,
        clock_mhz=18.0, pool_fl32=False, core="sequential",
        notes="iCEBreaker (iCE40 UP5K): the sequential core (PicoRV32 + firmware), 64 KiB of on-chip "
              "external memory filled over the UART link."),
    # Brainwave-class Arria 10 (GX 1150): 4096 MACs, wide DDR4 port.
    "arria10": NpuConfig(
        name="arria10", lanes=64, rows=64,
        abuf_words=16384, wbuf_words=512, accbuf_words=2048, pbuf_words=128,
        bus_bytes=128, dram_bytes=1 << 30, mem_latency=40, mem_outstanding=48,
        clock_mhz=300.0,
        notes="Arria 10 GX 1150 with two DDR4 banks (about 38 GB/s at 300 MHz); the DMA keeps "
              "48 reads in flight, more than a 40-cycle round trip, so a LOAD streams a beat per cycle."),
}


def get_config(name_or_path: str) -> NpuConfig:
    """Return a preset by name, or load a config from a JSON file path."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    if name_or_path.endswith(".json"):
        try:
            with open(name_or_path, encoding="utf-8") as f:
                return NpuConfig.from_json(f.read())
        except OSError as e:
            raise ConfigError(f"cannot read config file {name_or_path}: {e.strerror}") from None
    raise ConfigError(f"unknown config {name_or_path!r}; presets: {', '.join(PRESETS)} (or a .json file)")
