"""Energy of one memory access, by named memory model, each with the range of memory sizes it was made for.

A model prices one read or write of one element of ``bits`` bits in a memory of ``elements`` elements and says
whether that memory is inside the model's validity range. Outside it the price is still returned (so totals
exist), but :func:`verdict` and the reports say that the figure is extrapolated and in which direction.

Models (``MODELS``; a technology table picks one with ``"memory": {"model": NAME, ...}`` and may override it
for one memory kind with ``"kinds": {KIND: {...}}``):

``sram-fit``
    Lemaire et al. (ICONIP 2022): ``E = a N b + c`` pJ, ``a = 1.09e-5``, ``c = 13.2``, a least-squares line
    through Horowitz's (ISSCC 2014, 45 nm) 64-bit reads of 8 KB, 32 KB and 1 MB SRAMs (10, 20, 100 pJ). Valid
    for memories of 8 KiB to 1 MiB. Below, the constant ``c`` is above the 8 KB point (an upper bound); above, a
    straight line through three points says nothing about a 10 MB array (which would not be one SRAM anyway).
``packed-sram``
    The authors' later option (``sram_estimation_type='new'`` in qualia-plugin-snn, T. Louis): memory built
    of 8 KiB blocks with a 64-bit bus, 10 pJ per bus access (Horowitz's 8 KB point), ``64 // b`` elements
    packed per word, so ``10 / (64 // b)`` pJ per element whatever the memory size. Valid for one block (up to
    8 KiB); a larger memory is counted as if every access stayed inside one block with no wiring across blocks,
    which makes the figure a lower bound there.
``fpga-bram``
    On-chip FPGA block RAM (this project's choice for its accelerator): a logical memory is built from
    fixed blocks (``block_bits``, 18 kbit on ECP5, with ports up to ``port_bits`` = 36 bits); a deep memory is
    cascaded by address with decoded enables, so an access enables ``ceil(b / port_bits)`` blocks whatever the
    depth, at ``block_pJ`` each. ``block_pJ = 10`` pJ is Horowitz's 8 KB 64-bit SRAM read taken as the stand-in
    for one block access with its share of programmable routing: an assumption, not a measurement (a vendor
    power estimator's figure for the target device replaces it through ``--energy-table``). Valid while the
    memory fits the device's block RAM (``capacity_bits``: 3.74 Mbit, ECP5-85F); beyond that the data would live
    in DRAM (1.3-2.6 nJ per access, Horowitz), so the figure is a lower bound.
``constant``
    A fixed ``pJ`` per access (e.g. a measured figure for one memory kind); valid everywhere it is stated for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

KIB = 8 * 1024  # bits


@dataclass(frozen=True)
class Range:
    """Memory sizes, in bits, that a model was made for (``None``: no bound on that side)."""

    lo_bits: float | None
    hi_bits: float | None
    below: str  # what an estimate below the range means
    above: str  # and above

    def where(self, size_bits: float) -> str:
        """``"below"``, ``"inside"`` or ``"above"`` the range."""
        if self.lo_bits is not None and size_bits < self.lo_bits:
            return "below"
        if self.hi_bits is not None and size_bits > self.hi_bits:
            return "above"
        return "inside"

    def text(self) -> str:
        lo = _size(self.lo_bits) if self.lo_bits else "0"
        hi = _size(self.hi_bits) if self.hi_bits else "any size"
        return f"{lo} to {hi}"


def _size(bits: float) -> str:
    b = bits / 8
    for unit, k in (("MiB", 2**20), ("KiB", 2**10)):
        if b >= k:
            return f"{b / k:.3g} {unit}"
    return f"{b:.3g} B"


@dataclass(frozen=True)
class MemoryModel:
    """One named memory model: ``access_pJ(elements, bits)`` and the range it holds in."""

    name: str
    label: str
    source: str
    range: Range
    params: tuple = ()

    def p(self, key: str) -> float:
        return dict(self.params)[key]

    def access_pJ(self, elements: float, bits: float) -> float:
        """Energy in pJ of one read or write of one ``bits``-bit element in a memory of ``elements`` elements."""
        kind = self.name if self.name in _PRICE else dict(self.params).get("base", self.name)
        return _PRICE[kind](self, elements, bits)

    def where(self, elements: float, bits: float) -> str:
        return self.range.where(elements * bits)


def _sram_fit(m: MemoryModel, n: float, b: float) -> float:
    return m.p("a") * n * b + m.p("c")


def _packed(m: MemoryModel, n: float, b: float) -> float:
    bus, word = m.p("bus_bits"), m.p("word_pJ")
    if b <= bus:
        return word / max(1, int(bus // max(b, 1)))
    return word * math.ceil(b / bus)


def _bram(m: MemoryModel, n: float, b: float) -> float:
    return m.p("block_pJ") * math.ceil(b / m.p("port_bits"))


def _constant(m: MemoryModel, n: float, b: float) -> float:
    return m.p("pJ")


_PRICE = {"sram-fit": _sram_fit, "packed-sram": _packed, "fpga-bram": _bram, "constant": _constant}

HOROWITZ = "Horowitz, ISSCC 2014 (45 nm): SRAM 64-bit read 10 / 20 / 100 pJ at 8 KB / 32 KB / 1 MB"
MODELS: dict[str, MemoryModel] = {
    "sram-fit": MemoryModel(
        "sram-fit", "SRAM fit a N b + c (Lemaire et al. 2022)",
        HOROWITZ + "; least-squares line of Lemaire et al., ICONIP 2022",
        Range(8 * KIB, 1024 * KIB, "the fit's floor c is above Horowitz's 8 KB point: an upper bound",
              "a line through 8 KB-1 MB extrapolated: not a figure for any real memory"),
        (("a", 1.09e-5), ("c", 13.2))),
    "packed-sram": MemoryModel(
        "packed-sram", "packed SRAM, 10 pJ per 64-bit word of an 8 KiB block (qualia-plugin-snn 'new')",
        HOROWITZ + "; qualia-plugin-snn _e_ram(sram_estimation_type='new')",
        Range(None, 8 * KIB, "", "counted as one 8 KiB block with no wiring across blocks: a lower bound"),
        (("bus_bits", 64), ("word_pJ", 10.0))),
    "fpga-bram": MemoryModel(
        "fpga-bram", "FPGA block RAM, 10 pJ per enabled 18-kbit block (ECP5-85F capacity)",
        "assumption: one block access priced as Horowitz's 8 KB SRAM 64-bit read (10 pJ, ISSCC 2014, 45 nm); "
        "blocks of 18 kbit with ports up to 36 bits, 3.74 Mbit on chip (ECP5-85F DP16KD)",
        Range(None, 208 * 18 * 1024, "", "does not fit the device's block RAM: the data would be in DRAM "
              "(1.3-2.6 nJ per access), so this is a lower bound"),
        (("block_pJ", 10.0), ("port_bits", 36), ("block_bits", 18 * 1024))),
}


def model(spec: str | dict | MemoryModel) -> MemoryModel:
    """A model by name, or from a table's spec ``{"model": NAME, <parameter overrides>}``.

    ``{"model": "constant", "pJ": x}`` is a fixed price (valid for any size). ``KeyError`` names the choices.
    """
    if isinstance(spec, MemoryModel):
        return spec
    if isinstance(spec, str):
        spec = {"model": spec}
    name = spec.get("model", "sram-fit")
    if name == "constant":
        return MemoryModel("constant", spec.get("label", f"constant {spec['pJ']:g} pJ per access"),
                           spec.get("source", "stated in the table"), Range(None, None, "", ""),
                           (("pJ", float(spec["pJ"])),))
    if name not in MODELS:
        raise KeyError(f"no memory model {name!r}; choose one of {', '.join(list(MODELS) + ['constant'])}")
    base = MODELS[name]
    over = {k: v for k, v in spec.items() if k in dict(base.params)}
    if not over:
        return base
    return MemoryModel(base.name, base.label + " (parameters changed)", spec.get("source", base.source),
                       base.range, tuple({**dict(base.params), **over}.items()))


def verdict(uses: list[dict]) -> dict:
    """Whether an estimate stays inside its memory models' ranges.

    ``uses``: one entry per memory priced, ``{"kind", "model", "elements", "bits", "pJ"}`` (``pJ`` the energy
    of all its accesses). Returns ``{"inside": bool, "above_share", "below_share", "text"}``: the share of the
    memory energy that comes from memories above (extrapolated) and below the range, and one sentence.
    """
    total = sum(u["pJ"] for u in uses) or 1.0
    above = [u for u in uses if model(u["model"]).where(u["elements"], u["bits"]) == "above"]
    below = [u for u in uses if model(u["model"]).where(u["elements"], u["bits"]) == "below"]
    a_share = sum(u["pJ"] for u in above) / total
    b_share = sum(u["pJ"] for u in below) / total
    if above:
        big = max(above, key=lambda u: u["elements"] * u["bits"])
        m = model(big["model"])
        text = (f"OUTSIDE its range ({m.range.text()}): {a_share:.0%} of the memory energy is in memories above "
                f"it (largest: {big['kind']} {_size(big['elements'] * big['bits'])}); {m.range.above}")
    elif below and b_share > 0.01:
        m = model(below[0]["model"])
        text = f"below its range for {b_share:.0%} of the memory energy ({m.range.below})"
    else:
        text = "inside its range"
    return {"inside": not above, "above_share": a_share, "below_share": b_share, "text": text}


__all__ = ["MODELS", "MemoryModel", "Range", "model", "verdict"]
