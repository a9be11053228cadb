"""An Amaranth platform for an Arria 10 GX board (the Brainwave/Catapult board family).

amaranth-boards has no Arria 10 board, so this is a minimal one: the device, one clock input, an
active-low reset and a few LEDs, enough for Quartus to place and time the NPU core. The pin
locations follow the Arria 10 GX FPGA Development Kit's 100 MHz oscillator, CPU reset button and
user LEDs as far as we know them; check them against the schematic of the board you build for
(Catapult/Brainwave boards have no public pinout).
"""

from amaranth.build import Attrs, Clock, Pins, PinsN, Resource
from amaranth.vendor import AlteraPlatform
from amaranth_boards.resources import LEDResources

__all__ = ["Arria10GXPlatform"]


class Arria10GXPlatform(AlteraPlatform):
    """Arria 10 GX 1150 (10AX115S2F45I1SG) with a clock input constrained at ``clock_hz``.

    Parameters
    ----------
    clock_hz : float
        Frequency of the clock input, written into the .sdc (the NPU runs directly on it; a board
        with a slower oscillator puts an IOPLL in front, which Quartus generates, not us).
    """

    device = "10AX115S2"
    package = "F45"
    speed = "I1"
    suffix = "SG"
    default_clk = "clk"
    default_rst = "rst"
    connectors = []
    resources = []  # set per instance: the clock resource carries the requested frequency

    def __init__(self, clock_hz=100e6, **kwargs):
        self.clock_hz = clock_hz
        self.resources = [
            Resource("clk", 0, Pins("AR36", dir="i"), Clock(clock_hz), Attrs(IO_STANDARD="1.8 V")),
            Resource("rst", 0, PinsN("BD27", dir="i"), Attrs(IO_STANDARD="1.8 V")),
            *LEDResources(pins="L28 K26 K25 L25", invert=True, attrs=Attrs(IO_STANDARD="1.8 V")),
        ]
        super().__init__(**kwargs)

    def get_io_buffer(self, buffer):
        # Plain Verilog ports: Quartus inserts its own I/O buffers. Amaranth's default here
        # instantiates ALTIOBUF megafunctions, which tie the project to one Quartus edition's IP.
        return type(buffer).elaborate(buffer, None)

    @property
    def device_name(self):
        """Full ordering code as Quartus names it in DEVICE."""
        return f"{self.device}{self.package}{self.speed}{self.suffix}"
