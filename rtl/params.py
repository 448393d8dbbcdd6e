"""From a model to the accelerator's parameters, and the fit check that refuses what the hardware cannot run.

:func:`plan` is the only way into the gateware: every component is built from the :class:`Plan` it returns, and
it raises :class:`FitError` (one line: what does not fit, and by how much) before any simulation or synthesis.

Widths come from :func:`edgespike.validate.analyse`: a layer's membrane register holds the worst-case membrane
plus one worst-case current (the engine adds the bias at the start of a step and the synaptic terms one at a
time, so a partial sum can exceed the membrane interval by at most one step's current). Depths come from the tile
size and the channel counts.

Memory estimates map each RAM as yosys would on the device: single-port read/write RAMs (membranes, event
buffers, pixels) go to iCE40 SPRAM while blocks remain, the rest to EBR in its best aspect ratio; weight ROMs
always to EBR (SPRAM cannot be preloaded). Yosys makes its own choice at synthesis (it may keep small RAMs in
EBR), so these are estimates. Logic is a linear estimate (adders and registers per lane plus a fixed cost per
engine) calibrated on yosys syntheses of a layer engine and a top level; memory binds first for the models this
project runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import ceil

import numpy as np

from edgespike.model import INPUT, Conv, Integrator, Model, ModelError, Neuron
from edgespike.rtl.common import bits_for, pack
from edgespike.validate import analyse, signed_bits


class FitError(ModelError):
    """A model the accelerator cannot run on the chosen device; the message names the part and the excess."""


@dataclass(frozen=True)
class Device:
    """Memory and logic of a target FPGA, as the fit check sees it."""

    name: str
    luts: int
    bram_blocks: int
    bram_configs: tuple[tuple[int, int], ...]  # (width, depth) aspect ratios of one block
    bram_label: str
    spram_blocks: int = 0  # iCE40 UP5K only: 16384 x 16 single-port blocks

    @property
    def bram_bits(self) -> int:
        w, d = self.bram_configs[0]
        return w * d


DEVICES = {
    "up5k": Device("iCE40UP5K", 5280, 30, ((16, 256), (8, 512), (4, 1024), (2, 2048)), "EBR (4 kbit)", 4),
    "ecp5-85f": Device("ECP5-85F", 83640, 208, ((36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192),
                                                (1, 16384)), "DP16KD (18 kbit)"),
    "ecp5-25f": Device("ECP5-25F", 24288, 56, ((36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192),
                                               (1, 16384)), "DP16KD (18 kbit)"),
}


@dataclass
class Ram:
    """One memory of the design: ``rw`` (single-port read/write) or ``rom`` (weights)."""

    name: str
    width: int
    depth: int
    kind: str

    @property
    def bits(self) -> int:
        return self.width * self.depth


@dataclass
class LayerParams:
    """One layer engine: a Conv and the Neuron or Integrator it feeds.

    Membrane words hold ``lanes`` neurons (consecutive output channels); a layer has ``groups = C_out / lanes``
    words per position. Each lane is ``v`` (``mbits``, signed), then the spike count and the UWD word when the
    decoder reads them.
    """

    index: int
    name: str  # the Neuron / Integrator node
    conv: str
    kind: str  # "neuron" or "integrator"
    cin: int
    cout: int
    k: int
    stride: int
    lanes: int
    weight: np.ndarray  # int8 [cout, cin, k, k]
    bias: list[int]
    theta: list[int]
    reset: str
    leak: int
    v_init: str
    bit_serial: bool  # first layer under direct coding: events carry a bit weight 2**sh
    timesteps: int
    mbits: int
    keep_count: bool
    keep_uwd: bool
    level: int
    max_h: int  # output positions at this layer's resolution
    max_w: int

    @property
    def groups(self) -> int:
        return self.cout // self.lanes

    @property
    def gbits(self) -> int:
        return bits_for(self.groups) if self.groups > 1 else 0

    @property
    def ybits(self) -> int:
        return bits_for(self.max_h)

    @property
    def xbits(self) -> int:
        return bits_for(self.max_w)

    @property
    def count_bits(self) -> int:
        return bits_for(self.timesteps + 1) if self.keep_count else 0

    @property
    def uwd_bits(self) -> int:
        return self.timesteps if self.keep_uwd else 0

    @property
    def lane_bits(self) -> int:
        return self.mbits + self.count_bits + self.uwd_bits

    @property
    def word_bits(self) -> int:
        return self.lanes * self.lane_bits

    @property
    def mem_depth(self) -> int:
        """Membrane words, addressed ``{y, x, g}`` by concatenation (no multiplier in the address path)."""
        return 1 << (self.ybits + self.xbits + self.gbits)

    @property
    def taps(self) -> int:
        return self.k * self.k

    @property
    def weight_depth(self) -> int:
        """Weight words, addressed ``{c * k*k + tap, g}``."""
        return (self.cin * self.taps) << self.gbits

    def init_value(self, c: int) -> int:
        """Membrane of channel ``c`` after the init pass: ``v0``, leaked once, plus the bias of step 0."""
        if self.kind == "integrator":
            return self.bias[c]
        v0 = self.theta[c] >> 1 if self.v_init == "half" else 0
        if self.leak:
            v0 -= v0 >> self.leak
        return v0 + self.bias[c]

    def init_word(self, g: int) -> int:
        fields = []
        for lane in range(self.lanes):
            fields += [(self.init_value(g * self.lanes + lane), self.mbits), (0, self.count_bits),
                       (0, self.uwd_bits)]
        return pack(fields)

    def weight_words(self) -> list[int]:
        words = [0] * self.weight_depth
        w = self.weight
        for c in range(self.cin):
            for tap in range(self.taps):
                i, j = divmod(tap, self.k)
                for g in range(self.groups):
                    lanes = [(int(w[g * self.lanes + lane, c, i, j]), 8) for lane in range(self.lanes)]
                    words[((c * self.taps + tap) << self.gbits) | g] = pack(lanes)
        return words


@dataclass
class Term:
    """A decoder term: ``multiplier * quantity`` of layer ``layer``."""

    layer: int
    quantity: str
    multiplier: int


@dataclass
class Plan:
    """Everything the gateware is built from; made by :func:`plan`."""

    model: Model
    device: Device
    tile: tuple[int, int]
    encoder: str
    timesteps: int
    layers: list[LayerParams]
    terms: list[Term]
    shift: int
    residual: bool
    readout_bits: int
    halo: int
    rams: list[Ram] = field(default_factory=list)
    usage: dict = field(default_factory=dict)

    @property
    def ybits(self) -> int:
        return bits_for(self.tile[0])

    @property
    def xbits(self) -> int:
        return bits_for(self.tile[1])

    @property
    def cbits(self) -> int:
        return bits_for(max(layer.cout for layer in self.layers))

    @property
    def event_bits(self) -> int:
        return self.ybits + self.xbits + self.cbits + 3

    @property
    def buffer_depth(self) -> int:
        """Worst-case events of one step: every input bit plane, or every neuron of a layer."""
        h, w = self.tile
        first = (8 if self.encoder == "direct" else 1) * h * w
        return max([first] + [lp.max_h * lp.max_w * lp.cout for lp in self.layers if lp.kind == "neuron"])

    def summary(self) -> str:
        u = self.usage
        lines = [f"{self.device.name}, tile {self.tile[0]}x{self.tile[1]} (halo {self.halo}), T = {self.timesteps},"
                 f" {len(self.layers)} layer engines",
                 f"  logic ~{u['luts']} LUT4 of {self.device.luts}; {u['bram']} of {self.device.bram_blocks} "
                 f"{self.device.bram_label}" + (f"; {u['spram']} of {self.device.spram_blocks} SPRAM"
                                                if self.device.spram_blocks else "")]
        for r in self.rams:
            lines.append(f"  {r.name}: {r.depth} x {r.width} bit {r.kind} -> {u['where'][r.name]}")
        return "\n".join(lines)


def _supported(model: Model) -> None:
    """Refuse encoders and node types the gateware has no block for (checked before the bounds analysis)."""
    if model.encoder.kind not in ("direct", "uwe"):
        raise FitError(f"encoder {model.encoder.kind!r} is not supported by the accelerator (direct or uwe only): "
                       f"its hash needs multipliers")
    for node in model.nodes:
        if not isinstance(node, (Conv, Neuron, Integrator)):
            raise FitError(f"node {node.name!r} ({type(node).__name__}) is not supported by the accelerator: it "
                           f"runs Conv -> Neuron/Integrator chains (no Add, Concat or ConvTranspose yet)")
        if getattr(node, "weight_extra", None) is not None or getattr(node, "mprn", None):
            raise FitError(f"node {node.name!r} uses the MPRN extra step, which the accelerator does not run")


def _chain(model: Model) -> list[tuple[Conv, Neuron | Integrator]]:
    """The model as Conv -> Neuron/Integrator pairs, each Conv reading the previous pair; or FitError."""
    pairs = []
    prev = INPUT
    nodes = list(model.nodes)
    if len(nodes) % 2:
        raise FitError(f"the accelerator runs chains of Conv -> Neuron/Integrator pairs; node {nodes[-1].name!r} "
                       f"is left without its pair")
    for conv, act in zip(nodes[0::2], nodes[1::2], strict=True):
        if not isinstance(conv, Conv):
            raise FitError(f"node {conv.name!r} ({type(conv).__name__}) is not supported by the accelerator: it "
                           f"runs Conv -> Neuron/Integrator chains (no Add, Concat or ConvTranspose yet)")
        if not isinstance(act, (Neuron, Integrator)):
            raise FitError(f"node {act.name!r} ({type(act).__name__}) is not supported after Conv {conv.name!r}: "
                           f"expected a Neuron or an Integrator")
        if conv.input != prev or act.input != conv.name:
            raise FitError(f"node {conv.name!r} reads {conv.input!r}, not {prev!r}: the accelerator runs a "
                           f"single chain, no branches")
        if conv.weight_extra is not None or (isinstance(act, Neuron) and act.mprn):
            raise FitError(f"layer {act.name!r} uses the MPRN extra step, which the accelerator does not run")
        pairs.append((conv, act))
        prev = act.name
    return pairs


def _bram_blocks(ram: Ram, dev: Device) -> int:
    return min(ceil(ram.width / w) * ceil(ram.depth / d) for w, d in dev.bram_configs)


def _spram_blocks(ram: Ram) -> int:
    return ceil(ram.width / 16) * ceil(ram.depth / 16384)


def plan(model: Model, device: str = "up5k", tile: tuple[int, int] = (32, 32), lanes: int | None = None) -> Plan:
    """Check ``model`` against the accelerator and ``device`` and derive every parameter of the gateware.

    Parameters
    ----------
    model : Model
        An analysed-valid edgespike model (``analyse`` is run here too).
    device : str
        A key of :data:`DEVICES`.
    tile : (int, int)
        Largest tile (height, width) the hardware holds, halo included; at most 255 per side (byte protocol).
    lanes : int, optional
        Output channels updated in parallel per membrane word (default: all of a layer's channels, one word per
        position). Must divide every layer's channel count; 1 gives the narrowest, slowest engines.

    Raises
    ------
    FitError
        Unsupported encoder, node, graph shape or option, or more memory / logic than the device has.
    """
    _supported(model)
    analysis = analyse(model)
    if device not in DEVICES:
        raise FitError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    dev = DEVICES[device]
    th, tw = tile
    if not (1 <= th <= 255 and 1 <= tw <= 255):
        raise FitError(f"tile {th}x{tw} exceeds the byte protocol's 255 x 255")
    pairs = _chain(model)
    T = model.timesteps

    read = {}
    for term in model.decoder.terms:
        read.setdefault(term.node, set()).add(term.quantity)

    layers: list[LayerParams] = []
    level = 0
    halo = 0
    for idx, (conv, act) in enumerate(pairs):
        if conv.stride == 2:
            level += 1
        halo += (conv.kernel // 2) << level
        cout, cin = conv.out_channels, int(conv.weight.shape[1])
        n_lanes = cout if lanes is None else lanes
        if cout % n_lanes:
            raise FitError(f"layer {act.name!r}: {cout} channels are not a multiple of lanes = {n_lanes}")
        cur = analysis.nodes[conv.name].value
        state = analysis.nodes[act.name].state
        mbits = signed_bits(state.magnitude + cur.magnitude)
        if mbits > 40:
            raise FitError(f"layer {act.name!r}: membrane needs {mbits} bits, {mbits - 40} more than the engine's "
                           f"40-bit limit")
        neuron = isinstance(act, Neuron)
        q = read.get(act.name, set())
        layers.append(LayerParams(
            index=idx, name=act.name, conv=conv.name, kind="neuron" if neuron else "integrator",
            cin=cin, cout=cout, k=conv.kernel, stride=conv.stride, lanes=n_lanes,
            weight=conv.weight, bias=[int(b) for b in conv.bias],
            theta=[int(v) for v in act.threshold] if neuron else [0] * cout,
            reset=act.reset if neuron else "none", leak=act.leak_shift if neuron else 0,
            v_init=act.v_init if neuron else "zero",
            bit_serial=idx == 0 and model.encoder.kind == "direct", timesteps=T, mbits=mbits,
            keep_count="count" in q, keep_uwd="uwd" in q, level=level,
            max_h=-(-th // (1 << level)), max_w=-(-tw // (1 << level)),
        ))

    terms = [Term(next(lp.index for lp in layers if lp.name == t.node), t.quantity, int(t.multiplier[0]))
             for t in model.decoder.terms]
    dec = model.decoder
    readout_bits = signed_bits(analysis.readout.magnitude + (1 << max(dec.shift - 1, 0))) + 1

    p = Plan(model=model, device=dev, tile=(th, tw), encoder=model.encoder.kind, timesteps=T, layers=layers,
             terms=terms, shift=dec.shift, residual=dec.residual, readout_bits=readout_bits, halo=halo)
    _fit(p)
    return p


def _fit(p: Plan) -> None:
    dev = p.device
    th, tw = p.tile
    rams = [Ram("pixels", 8, 1 << (p.ybits + p.xbits), "rw")]
    rams += [Ram(f"events{b}", p.event_bits, p.buffer_depth, "rw") for b in (0, 1)]
    for lp in p.layers:
        rams.append(Ram(f"{lp.name}.membranes", lp.word_bits, lp.mem_depth, "rw"))
        rams.append(Ram(f"{lp.name}.weights", lp.lanes * 8, lp.weight_depth, "rom"))
    p.rams = rams

    # Which RW RAMs go to SPRAM: the subset that saves the most EBR within the SPRAM blocks (a handful of RAMs,
    # so exhaustively); everything else in EBR at its best aspect ratio.
    candidates = [r for r in rams if r.kind == "rw" and dev.spram_blocks]
    best, best_saved = (), 0
    for mask in range(1 << len(candidates)):
        chosen = [r for i, r in enumerate(candidates) if mask >> i & 1]
        if sum(_spram_blocks(r) for r in chosen) > dev.spram_blocks:
            continue
        saved = sum(_bram_blocks(r, dev) for r in chosen)
        if saved > best_saved:
            best, best_saved = tuple(chosen), saved
    where: dict[str, str] = {}
    bram = spram = 0
    for ram in rams:
        if any(ram is r for r in best):
            n = _spram_blocks(ram)
            spram += n
            where[ram.name] = f"{n} SPRAM"
        else:
            n = _bram_blocks(ram, dev)
            bram += n
            where[ram.name] = f"{n} {dev.bram_label.split()[0]}"
    # calibrated on yosys: a 1-lane engine with 11-bit membranes 483 SB_LUT4 (model: 460); a 3-layer 4-channel
    # 1-lane top level 1613 (model: ~1870)
    luts = 400 + sum(300 + lp.lanes * (12 * lp.mbits + 16 + 4 * (lp.count_bits + lp.uwd_bits)) for lp in p.layers)
    luts += 4 * p.readout_bits * max(1, len(p.terms))
    p.usage = {"luts": luts, "bram": bram, "spram": spram, "where": where}

    if bram > dev.bram_blocks:
        worst = sorted(rams, key=lambda r: -_bram_blocks(r, dev) if "SPRAM" not in where[r.name] else 0)[:3]
        detail = ", ".join(f"{r.name} {where[r.name]}" for r in worst)
        raise FitError(f"model does not fit {dev.name} at tile {th}x{tw}: needs {bram} {dev.bram_label} blocks, "
                       f"the device has {dev.bram_blocks} ({bram - dev.bram_blocks} over; largest: {detail}); "
                       f"use a smaller tile or fewer channels")
    if luts > dev.luts:
        raise FitError(f"model does not fit {dev.name}: needs about {luts} LUT4 of logic, the device has "
                       f"{dev.luts} ({luts - dev.luts} over); use fewer lanes (lanes=1) or fewer layers")
