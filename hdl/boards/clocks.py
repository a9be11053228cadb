"""PLL settings and instances that turn a board oscillator into the NPU clock, and the clock networks.

The parameter search follows each family's data sheet limits; the chosen output frequency
(possibly a little off the request) is what the design is constrained to.
"""

from dataclasses import dataclass

from amaranth.hdl import Const, Instance, Signal

__all__ = ["PllSetting", "ecp5_pll_setting", "ice40_pll_setting", "ecp5_pll", "ice40_pll", "ecp5_global"]


@dataclass(frozen=True)
class PllSetting:
    """Divider values of one PLL and the output frequency they give (Hz)."""

    params: dict
    fout_hz: float


def ecp5_pll_setting(fin_hz: float, fout_hz: float) -> PllSetting:
    """EHXPLLL dividers (CLKOP feedback) giving the output closest to ``fout_hz``.

    Limits (ECP5 family data sheet): PFD 3.125–400 MHz, VCO 400–800 MHz, CLKOP 3.125–400 MHz.
    """
    if not 3.125e6 <= fout_hz <= 400e6:
        raise ValueError(f"ECP5 PLL output {fout_hz / 1e6:g} MHz is outside 3.125..400 MHz")
    best = None
    for clki in range(1, 129):
        pfd = fin_hz / clki
        if pfd < 3.125e6:
            break
        if pfd > 400e6:
            continue
        for clkfb in range(1, 81):
            out = pfd * clkfb
            for clkop in range(1, 129):
                vco = out * clkop
                if 400e6 <= vco <= 800e6:
                    err = abs(out - fout_hz)
                    if best is None or err < best[0]:
                        best = (err, clki, clkfb, clkop, out)
                    break
    if best is None:
        raise ValueError(f"no ECP5 PLL setting for {fin_hz / 1e6:g} -> {fout_hz / 1e6:g} MHz")
    _, clki, clkfb, clkop, out = best
    return PllSetting(dict(CLKI_DIV=clki, CLKFB_DIV=clkfb, CLKOP_DIV=clkop, CLKOP_CPHASE=clkop - 1), out)


def _ice40_filter_range(pfd_hz):
    # iCE40 sysCLOCK PLL design guide: loop filter range by PFD frequency.
    for limit, value in ((17e6, 1), (26e6, 2), (44e6, 3), (66e6, 4), (101e6, 5)):
        if pfd_hz < limit:
            return value
    return 6


def ice40_pll_setting(fin_hz: float, fout_hz: float) -> PllSetting:
    """SB_PLL40 dividers (SIMPLE feedback) giving the output closest to ``fout_hz``.

    Limits (iCE40 sysCLOCK PLL guide): PFD 10–133 MHz, VCO 533–1066 MHz, output 16–275 MHz.
    """
    if not 16e6 <= fout_hz <= 275e6:
        raise ValueError(f"iCE40 PLL output {fout_hz / 1e6:g} MHz is outside 16..275 MHz")
    best = None
    for divr in range(16):
        pfd = fin_hz / (divr + 1)
        if not 10e6 <= pfd <= 133e6:
            continue
        for divf in range(128):
            vco = pfd * (divf + 1)
            if not 533e6 <= vco <= 1066e6:
                continue
            for divq in range(1, 7):
                out = vco / (1 << divq)
                err = abs(out - fout_hz)
                if 16e6 <= out <= 275e6 and (best is None or err < best[0]):
                    best = (err, divr, divf, divq, out, pfd)
    if best is None:
        raise ValueError(f"no iCE40 PLL setting for {fin_hz / 1e6:g} -> {fout_hz / 1e6:g} MHz")
    _, divr, divf, divq, out, pfd = best
    return PllSetting(dict(DIVR=divr, DIVF=divf, DIVQ=divq, FILTER_RANGE=_ice40_filter_range(pfd)), out)


def ecp5_pll(m, clk_in, fin_hz, setting: PllSetting, name="pll"):
    """Add an EHXPLLL; return (clock out, lock) signals."""
    clk_out = Signal(name=f"{name}_clkop")
    lock = Signal(name=f"{name}_lock")
    p = setting.params
    m.submodules[name] = Instance(
        "EHXPLLL",
        p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
        p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
        p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD",
        p_CLKI_DIV=p["CLKI_DIV"], p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=p["CLKOP_DIV"],
        p_CLKOP_CPHASE=p["CLKOP_CPHASE"], p_CLKOP_FPHASE=0,
        p_FEEDBK_PATH="CLKOP", p_CLKFB_DIV=p["CLKFB_DIV"],
        i_RST=Const(0), i_STDBY=Const(0), i_CLKI=clk_in, i_CLKFB=clk_out, o_CLKOP=clk_out,
        i_PHASESEL0=Const(0), i_PHASESEL1=Const(0), i_PHASEDIR=Const(1), i_PHASESTEP=Const(1),
        i_PHASELOADREG=Const(1), i_PLLWAKESYNC=Const(0), i_ENCLKOP=Const(0), o_LOCK=lock,
        a_FREQUENCY_PIN_CLKI=f"{fin_hz / 1e6:g}", a_FREQUENCY_PIN_CLKOP=f"{setting.fout_hz / 1e6:g}",
        a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
        a_MFG_GMCREF_SEL="2")
    return clk_out, lock


def ecp5_global(m, signal, name="glb"):
    """Carry ``signal`` on one of the ECP5's global (clock) networks; return the buffered copy.

    A DCCA drives the global network, which reaches every slice's clock, clock-enable and
    set/reset inputs at the same delay whatever the fanout. nextpnr routes the fabric loads of a
    DCCA's output through the global wires (it has 16; the core clock takes one).
    """
    out = Signal(name=f"{name}_g")
    m.submodules[name] = Instance("DCCA", i_CLKI=signal, i_CE=Const(1), o_CLKO=out)
    return out


def ice40_pll(m, pad, setting: PllSetting, name="pll"):
    """Add an SB_PLL40_PAD on the board clock's pad (an IO port, no buffer); return (clock out, lock).

    The PLL must own the pad: an SB_PLL40_CORE behind the pin's input buffer cannot be placed on
    the UP5K (the PLL site shares that pin).
    """
    clk_out = Signal(name=f"{name}_clkout")
    lock = Signal(name=f"{name}_lock")
    p = setting.params
    m.submodules[name] = Instance(
        "SB_PLL40_PAD",
        p_FEEDBACK_PATH="SIMPLE", p_DIVR=p["DIVR"], p_DIVF=p["DIVF"], p_DIVQ=p["DIVQ"],
        p_FILTER_RANGE=p["FILTER_RANGE"],
        io_PACKAGEPIN=pad, i_RESETB=Const(1), i_BYPASS=Const(0),
        o_PLLOUTGLOBAL=clk_out, o_LOCK=lock)
    return clk_out, lock
