"""Board tops: clock generation, reset, the compute core and a LED that observes it."""

from amaranth.hdl import ClockDomain, Elaboratable, Module
from amaranth.lib import io
from amaranth.lib.cdc import ResetSynchronizer

from .clocks import ecp5_global, ecp5_pll, ecp5_pll_setting, ice40_pll, ice40_pll_setting

__all__ = ["BoardTop"]


class BoardTop(Elaboratable):
    """Top level for one board: a PLL (or the clock pin) drives the ``sync`` domain of ``core``.

    Parameters
    ----------
    family : str
        "ecp5", "ice40" or "arria10": picks the clock generator.
    core : Elaboratable
        The compute core; it must have a one-bit ``led`` output that depends on all its results.
    target_hz : float
        Requested core clock. On ECP5/iCE40 a PLL makes the nearest frequency it can
        (``clock_hz`` after elaboration); on Arria 10 the clock pin itself is constrained.
    """

    def __init__(self, family, core, target_hz):
        self.family, self.core, self.target_hz = family, core, target_hz
        self.clock_hz = None
        if family == "ecp5":
            self._setting = ecp5_pll_setting(25e6, target_hz)
            self.clock_hz = self._setting.fout_hz
        elif family == "ice40":
            self._setting = ice40_pll_setting(12e6, target_hz)
            self.clock_hz = self._setting.fout_hz
        elif family == "arria10":
            self.clock_hz = target_hz
        else:
            raise ValueError(f"unknown FPGA family {family!r}")

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = cd_sync = ClockDomain("sync")
        if self.family == "ecp5":
            m.submodules.clk25 = clk25 = io.Buffer("i", platform.request("clk25", 0, dir="-"))
            clk, lock = ecp5_pll(m, clk25.i, 25e6, self._setting)
            m.d.comb += cd_sync.clk.eq(clk)
            # The synchronized reset reaches the sync domain over a global network (``ecp5_global``):
            # as a fabric net to every flip-flop with a reset it was the routed critical path of a
            # 128-MAC build (12.9 ns, docs/synthesis.md, session 21). The synchronizer has a domain
            # of its own, on the same clock, whose reset it drives.
            m.domains.por = cd_por = ClockDomain("por")
            m.d.comb += [cd_por.clk.eq(clk), cd_sync.rst.eq(ecp5_global(m, cd_por.rst, "rst_glb"))]
            m.submodules.reset_sync = ResetSynchronizer(~lock, domain="por")
        elif self.family == "ice40":
            clk, lock = ice40_pll(m, platform.request("clk12", 0, dir="-").io, self._setting)
            m.d.comb += cd_sync.clk.eq(clk)
            m.submodules.reset_sync = ResetSynchronizer(~lock, domain="sync")
        else:
            m.submodules.clk = clk = io.Buffer("i", platform.request("clk", 0, dir="-"))
            m.submodules.rst = rst = io.Buffer("i", platform.request("rst", 0, dir="-"))
            m.d.comb += cd_sync.clk.eq(clk.i)
            m.submodules.reset_sync = ResetSynchronizer(rst.i, domain="sync")
        if self.family != "arria10":
            # The Arria 10 clock pin already carries the constraint (its Clock resource).
            platform.add_clock_constraint(cd_sync.clk, self.clock_hz)
        m.submodules.core = self.core
        m.submodules.led = led = io.Buffer("o", platform.request("led", 0, dir="-"))
        m.d.comb += led.o.eq(self.core.led)
        return m
