"""The ``sync`` clock domain from an ECP5 PLL, for designs slower than their board's oscillator.

The accelerator of the shipped model places at about 20 MHz on an ECP5-85F, below the ULX3S's 25 MHz oscillator, so
the ULX3S build runs it at 12.5 MHz from an ``EHXPLLL``. :func:`ecp5_pll_dividers` finds the divider settings
(what Lattice's and nextpnr's ``ecppll`` compute); :class:`ECP5PLLDomain` instantiates the PLL, holds ``sync`` in reset
until the PLL locks, and tells nextpnr the derived clock so that Fmax is checked against it.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import ClockSignal, Elaboratable, Instance, Module, ResetSignal, Signal
from amaranth.lib import io
from amaranth.lib.cdc import AsyncFFSynchronizer

# the ECP5 sysCLOCK PLL's limits (FPGA-TN-02200; the phase detector's floor as Project Trellis's ecppll has it, which
# divides a 25 MHz oscillator by up to 8: 70 MHz is 25 x 14 / 5, where a 10 MHz floor left only multiples of 12.5)
PFD_HZ = (3.125e6, 400e6)
VCO_HZ = (400e6, 800e6)
OUT_HZ = (3.125e6, 400e6)


@dataclass(frozen=True)
class PLLDividers:
    """``EHXPLLL`` settings with feedback from CLKOP: ``f_out = f_in * clkfb_div / clki_div``."""

    clki_div: int
    clkfb_div: int
    clkop_div: int
    f_in: float

    @property
    def f_out(self) -> float:
        return self.f_in * self.clkfb_div / self.clki_div

    @property
    def f_vco(self) -> float:
        return self.f_out * self.clkop_div


def ecp5_pll_outputs(f_in: float) -> list[float]:
    """Every clock :func:`ecp5_pll_dividers` can make from ``f_in`` (ascending): ``f_in * clkfb_div / clki_div``
    with the PFD, VCO and output in range."""
    found = set()
    for clki_div in (d for d in range(1, 129) if PFD_HZ[0] <= f_in / d <= PFD_HZ[1]):
        for clkfb_div in range(1, 81):
            f = f_in * clkfb_div / clki_div
            if OUT_HZ[0] <= f <= OUT_HZ[1] and any(VCO_HZ[0] <= f * k <= VCO_HZ[1] for k in range(1, 129)):
                found.add(f)
    return sorted(found)


def ecp5_pll_dividers(f_in: float, f_out: float) -> PLLDividers:
    """The dividers that make ``f_out`` from ``f_in`` (or ValueError), VCO nearest 600 MHz.

    "Make" is to 10 ppm: 25 x 8 / 3 MHz is asked for as 66.6667, the six digits it is printed with; two clocks the
    PLL makes are at least half a percent apart."""
    if not OUT_HZ[0] <= f_out <= OUT_HZ[1]:
        raise ValueError(f"{f_out / 1e6:g} MHz is outside the ECP5 PLL's output range")
    best = None
    for clki_div in range(1, 129):
        if not PFD_HZ[0] <= f_in / clki_div <= PFD_HZ[1]:
            continue
        for clkfb_div in range(1, 81):
            if abs(f_in * clkfb_div / clki_div - f_out) > f_out * 1e-5:
                continue
            for clkop_div in range(1, 129):
                d = PLLDividers(clki_div, clkfb_div, clkop_div, f_in)
                if VCO_HZ[0] <= d.f_vco <= VCO_HZ[1] and (best is None or
                                                          abs(d.f_vco - 600e6) < abs(best.f_vco - 600e6)):
                    best = d
    if best is None:
        raise ValueError(f"no ECP5 PLL setting makes {f_out / 1e6:g} MHz from {f_in / 1e6:g} MHz exactly")
    return best


class ECP5PLLDomain(Elaboratable):
    """Drives the ``sync`` domain at ``f_out`` from the platform's default clock through an ``EHXPLLL``.

    The parent defines ``sync`` (``m.domains.sync = ClockDomain()``); this drives its clock and reset.
    """

    def __init__(self, f_out: float):
        self.f_out = f_out

    def elaborate(self, platform):
        m = Module()
        d = ecp5_pll_dividers(platform.default_clk_frequency, self.f_out)
        clk = Signal()  # a plain signal: nextpnr's constraint names a net
        m.d.comb += ClockSignal("sync").eq(clk)
        m.submodules.clk_buf = clk_buf = io.Buffer("i", platform.request(platform.default_clk, dir="-"))
        locked = Signal()
        m.submodules.pll = Instance(
            "EHXPLLL",
            a_FREQUENCY_PIN_CLKI=f"{d.f_in / 1e6:g}", a_FREQUENCY_PIN_CLKOP=f"{d.f_out / 1e6:g}",
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED", p_DPHASE_SOURCE="DISABLED",
            p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB", p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD",
            p_CLKI_DIV=d.clki_div, p_CLKFB_DIV=d.clkfb_div, p_FEEDBK_PATH="CLKOP",
            p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=d.clkop_div, p_CLKOP_CPHASE=(d.clkop_div - 1) // 2,
            p_CLKOP_FPHASE=0,
            i_CLKI=clk_buf.i, o_CLKOP=clk, i_CLKFB=clk, o_LOCK=locked,
            i_RST=0, i_STDBY=0, i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1,
            i_PLLWAKESYNC=0, i_ENCLKOP=0)
        # The design stays in reset until the PLL output is stable. The reset reaches every flip-flop of the
        # design: on the fabric's routing it was the default plan's critical path (25 ns, 38.5 MHz), so it goes
        # through a DCCA onto a global net (nextpnr promotes only clocks by itself).
        rst = Signal()
        m.submodules.reset_sync = AsyncFFSynchronizer(~locked, rst, o_domain="sync")
        rst_global = Signal()
        m.submodules.reset_buf = Instance("DCCA", i_CLKI=rst, i_CE=1, o_CLKO=rst_global)
        m.d.comb += ResetSignal("sync").eq(rst_global)
        platform.add_clock_constraint(clk, d.f_out)
        return m
