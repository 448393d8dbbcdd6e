"""From a model to the accelerator's parameters, and the fit check that refuses what the hardware cannot run.

:func:`plan` is the only way into the gateware: every component is built from the :class:`Plan` it returns, and
it raises :class:`FitError` (one line: what does not fit, and by how much) before any simulation or synthesis.

The architecture (``docs/RTL.md``) is **layer-major with one shared engine**: the layers run one after the
other, each for all ``T`` steps, one block of ``lanes`` output channels at a time. So only one block of one
layer's membranes is ever resident, and the only storage between layers is two spike bitmaps (``T x h x w x C``
bits each, ping-pong). Weights, biases and thresholds of all layers live in two read/write RAMs that the host
can (re)load at run time.

Widths come from :func:`edgespike.validate.analyse`: the membrane register holds the worst-case membrane plus
one worst-case current of any layer (the engine adds the bias at the start of a step and the synaptic terms one
at a time, so a partial sum can exceed the membrane interval by at most one step's current). Depths come from
the tile size, the channel counts and ``lanes``.

Memory estimates map each RAM as yosys would on the device: all of them are single-port read/write RAMs, so on
an iCE40 UP5K they go to SPRAM while blocks remain (the subset that saves most EBR), the rest to EBR in its best
aspect ratio. Yosys makes its own choice at synthesis, so these are estimates. Logic is a linear estimate
calibrated on yosys syntheses; memory binds first for the models this project runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import ceil, gcd

import numpy as np

from edgespike.model import INPUT, Conv, ConvTranspose, Integrator, Model, ModelError, Neuron
from edgespike.rtl.common import bits_for, pack
from edgespike.validate import analyse, signed_bits

PARAM_BITS = 64  # one params word per channel: bias (int32) then threshold (int32)


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
    """One single-port read/write memory of the design."""

    name: str
    width: int
    depth: int

    @property
    def bits(self) -> int:
        return self.width * self.depth


@dataclass
class LayerParams:
    """One layer: a Conv or ConvTranspose and the Neuron or Integrator it feeds, as the shared engine runs it.

    A *wide* layer runs in ``groups = C_out / lanes`` blocks of ``lanes`` consecutive output channels; a membrane
    word holds one block at one position. A *narrow* layer (one output channel, fewer than ``lanes``: the read-out
    layer) packs ``lanes`` consecutive positions of a row into one word instead (lane = ``x mod lanes``).
    """

    index: int
    name: str  # the Neuron / Integrator node
    conv: str
    kind: str  # "neuron" or "integrator"
    op: str  # "conv" or "convT"
    cin: int
    cout: int
    k: int
    stride: int  # 1 or 2 (conv); 2 for convT
    pad: int  # conv: k // 2; convT: its padding
    weight: np.ndarray  # int8 [cout, cin, k, k]
    bias: list[int]
    theta: list[int]
    reset: str
    leak: int
    v_init: str
    bit_serial: bool  # first layer under direct coding: events carry a bit weight 2**sh
    mbits: int  # this layer's own membrane width (the engine uses the plan's maximum)
    level_in: int
    level_out: int
    narrow: bool = False
    groups: int = 1
    wbase: int = 0  # first weight word (a narrow layer packs its bytes from byte wbase * lanes on)
    pbase: int = 0  # params word of output channel 0

    @property
    def taps(self) -> int:
        return self.k * self.k

    def init_value(self, c: int) -> int:
        """Membrane of channel ``c`` after the init pass: ``v0``, leaked once, plus the bias of step 0."""
        if self.kind == "integrator":
            return self.bias[c]
        v0 = self.theta[c] >> 1 if self.v_init == "half" else 0
        if self.leak:
            v0 -= v0 >> self.leak
        return v0 + self.bias[c]


@dataclass
class Term:
    """A decoder term: ``multiplier * quantity`` of the last layer."""

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
    lanes: int
    layers: list[LayerParams]
    terms: list[Term]
    shift: int
    residual: bool
    readout_bits: int
    halo: int
    mbits: int  # membrane field of every lane
    count_bits: int
    uwd_bits: int
    rams: list[Ram] = field(default_factory=list)
    usage: dict = field(default_factory=dict)

    # --- geometry (address fields are concatenated: no multiplier in any address path)
    @property
    def multiple(self) -> int:
        """Tile sides must be multiples of this (the model's frame size multiple)."""
        return self.model.size_multiple

    @property
    def ybits(self) -> int:
        return bits_for(self.tile[0])

    @property
    def xbits(self) -> int:
        return bits_for(self.tile[1])

    @property
    def cbits(self) -> int:
        return bits_for(max(lp.cin for lp in self.layers))

    @property
    def lane_shift(self) -> int:
        """log2(lanes) when a narrow layer packs positions into lanes (lanes is then a power of two)."""
        return (self.lanes - 1).bit_length()

    @property
    def wide(self) -> list[LayerParams]:
        return [lp for lp in self.layers if not lp.narrow]

    def dims(self, level: int) -> tuple[int, int]:
        return -(-self.tile[0] // (1 << level)), -(-self.tile[1] // (1 << level))

    @property
    def wide_ybits(self) -> int:
        return max(bits_for(self.dims(lp.level_out)[0]) for lp in self.wide)

    @property
    def wide_xbits(self) -> int:
        return max(bits_for(self.dims(lp.level_out)[1]) for lp in self.wide)

    @property
    def gbits(self) -> int:
        """Bits of the block index in a bitmap address (0 when every layer is one block)."""
        g = max(lp.groups for lp in self.wide)
        return bits_for(g) if g > 1 else 0

    @property
    def tbits(self) -> int:
        return bits_for(self.timesteps)

    @property
    def lane_bits(self) -> int:
        return self.mbits + self.count_bits + self.uwd_bits

    @property
    def word_bits(self) -> int:
        return self.lanes * self.lane_bits

    @property
    def narrow_xbits(self) -> int:
        """Word-index bits of x in a narrow layer's address (positions ``x >> lane_shift``)."""
        return max(0, self.xbits - self.lane_shift)

    @property
    def mem_depth(self) -> int:
        """Membrane words: one block of a wide layer ``{y, x}``, or a narrow layer ``{y, x >> lane_shift}``."""
        depth = 1 << (self.wide_ybits + self.wide_xbits)
        if any(lp.narrow for lp in self.layers):
            depth = max(depth, 1 << (self.ybits + self.narrow_xbits))
        return depth

    @property
    def bitmap_depth(self) -> int:
        """Spike-bitmap words (``lanes`` bits: one block at one position of one step), address ``{t, y, x, g}``."""
        return 1 << (self.tbits + self.wide_ybits + self.wide_xbits + self.gbits)

    @property
    def weight_depth(self) -> int:
        last = self.layers[-1]
        if last.narrow:
            return last.wbase + ceil(last.cin * last.taps / self.lanes)
        return last.wbase + last.cin * last.taps * last.groups

    @property
    def params_depth(self) -> int:
        return sum(lp.cout for lp in self.layers)

    # --- run-time loaded contents
    def weight_words(self) -> list[int]:
        """The weight RAM: wide layer word ``wbase + (c*k*k + tap) * groups + g`` holds the ``lanes`` weights of
        block ``g``; a narrow layer's weights are bytes ``wbase*lanes + c*k*k + tap``, ``lanes`` per word."""
        words = [0] * self.weight_depth
        L = self.lanes
        for lp in self.layers:
            w = lp.weight
            for c in range(lp.cin):
                for tap in range(lp.taps):
                    i, j = divmod(tap, lp.k)
                    if lp.narrow:
                        byte = lp.wbase * L + c * lp.taps + tap
                        words[byte // L] |= (int(w[0, c, i, j]) & 0xFF) << (8 * (byte % L))
                        continue
                    for g in range(lp.groups):
                        lanes = [(int(w[g * L + lane, c, i, j]), 8) for lane in range(L)]
                        words[lp.wbase + (c * lp.taps + tap) * lp.groups + g] = pack(lanes)
        return words

    def param_words(self) -> list[int]:
        """The params RAM: one word per output channel of every layer, ``bias | theta << 32``."""
        return [pack([(lp.bias[c], 32), (lp.theta[c], 32)]) for lp in self.layers for c in range(lp.cout)]

    def weight_image(self) -> bytes:
        """What the host sends after ``'W'``: the weight RAM then the params RAM, words little-endian."""
        wb, pb = self.lanes, PARAM_BITS // 8
        return (b"".join(v.to_bytes(wb, "little") for v in self.weight_words())
                + b"".join(v.to_bytes(pb, "little") for v in self.param_words()))

    def summary(self) -> str:
        u = self.usage
        lines = [f"{self.device.name}, tile {self.tile[0]}x{self.tile[1]} (halo {self.halo}), T = {self.timesteps},"
                 f" {len(self.layers)} layers on one engine of {self.lanes} lanes",
                 f"  logic ~{u['luts']} LUT4 of {self.device.luts}; {u['bram']} of {self.device.bram_blocks} "
                 f"{self.device.bram_label}" + (f"; {u['spram']} of {self.device.spram_blocks} SPRAM"
                                                if self.device.spram_blocks else "")]
        for r in self.rams:
            lines.append(f"  {r.name}: {r.depth} x {r.width} bit -> {u['where'][r.name]}")
        return "\n".join(lines)


def _supported(model: Model) -> None:
    """Refuse encoders and node types the gateware has no block for (checked before the bounds analysis)."""
    if model.encoder.kind not in ("direct", "uwe"):
        raise FitError(f"encoder {model.encoder.kind!r} is not supported by the accelerator (direct or uwe only): "
                       f"its hash needs multipliers")
    for node in model.nodes:
        if not isinstance(node, (Conv, ConvTranspose, Neuron, Integrator)):
            raise FitError(f"node {node.name!r} ({type(node).__name__}) is not supported by the accelerator: it "
                           f"runs Conv/ConvTranspose -> Neuron/Integrator chains (no Add or Concat yet)")
        if getattr(node, "weight_extra", None) is not None or getattr(node, "mprn", None):
            raise FitError(f"node {node.name!r} uses the MPRN extra step, which the accelerator does not run")


def _chain(model: Model) -> list[tuple[Conv | ConvTranspose, Neuron | Integrator]]:
    """The model as Conv -> Neuron/Integrator pairs, each Conv reading the previous pair; or FitError."""
    pairs = []
    prev = INPUT
    nodes = list(model.nodes)
    if len(nodes) % 2:
        raise FitError(f"the accelerator runs chains of Conv -> Neuron/Integrator pairs; node {nodes[-1].name!r} "
                       f"is left without its pair")
    for conv, act in zip(nodes[0::2], nodes[1::2], strict=True):
        if not isinstance(conv, (Conv, ConvTranspose)):
            raise FitError(f"node {conv.name!r} ({type(conv).__name__}) is not supported by the accelerator: it "
                           f"runs Conv/ConvTranspose -> Neuron/Integrator chains")
        if not isinstance(act, (Neuron, Integrator)):
            raise FitError(f"node {act.name!r} ({type(act).__name__}) is not supported after {conv.name!r}: "
                           f"expected a Neuron or an Integrator")
        if conv.input != prev or act.input != conv.name:
            raise FitError(f"node {conv.name!r} reads {conv.input!r}, not {prev!r}: the accelerator runs a "
                           f"single chain, no branches")
        pairs.append((conv, act))
        prev = act.name
    return pairs


def _bram_blocks(ram: Ram, dev: Device) -> int:
    return min(ceil(ram.width / w) * ceil(ram.depth / d) for w, d in dev.bram_configs)


def _spram_blocks(ram: Ram) -> int:
    return ceil(ram.width / 16) * ceil(ram.depth / 16384)


def _lane_choices(pairs) -> list[int]:
    """Candidate lane counts, widest first: divisors of every multi-channel layer's width (powers of two when
    a one-channel layer must pack positions)."""
    widths = [c.out_channels for c, _ in pairs if c.out_channels > 1]
    if not widths:
        return [1]
    g = 0
    for w in widths:
        g = gcd(g, w)
    cands = [d for d in range(g, 0, -1) if g % d == 0]
    if any(c.out_channels == 1 for c, _ in pairs):
        cands = [d for d in cands if d & (d - 1) == 0]
    return cands


def plan(model: Model, device: str = "up5k", tile: tuple[int, int] = (32, 32), lanes: int | None = None) -> Plan:
    """Check ``model`` against the accelerator and ``device`` and derive every parameter of the gateware.

    Parameters
    ----------
    model : Model
        An analysed-valid edgespike model (``analyse`` is run here too).
    device : str
        A key of :data:`DEVICES`.
    tile : (int, int)
        Largest tile (height, width) the hardware holds, halo included; at most 254 per side (byte protocol)
        and a multiple of the model's frame size multiple.
    lanes : int, optional
        Output channels the engine updates in parallel (one membrane word). Default: the widest choice that fits
        the device. Must divide every layer's channel count; a one-channel read-out layer needs a power of two.

    Raises
    ------
    FitError
        Unsupported encoder, node, graph shape or option, or more memory / logic than the device has.
    """
    _supported(model)
    analysis = analyse(model)
    if device not in DEVICES:
        raise FitError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    th, tw = tile
    mult = model.size_multiple
    if not (1 <= th <= 255 and 1 <= tw <= 255):
        raise FitError(f"tile {th}x{tw} exceeds the byte protocol's 255 x 255")
    if th % mult or tw % mult:
        raise FitError(f"tile {th}x{tw} is not a multiple of {mult} (the model halves the resolution "
                       f"{mult.bit_length() - 1} time(s)): use e.g. {th - th % mult or mult}x{tw - tw % mult or mult}")
    pairs = _chain(model)
    for term in model.decoder.terms:
        if term.node != pairs[-1][1].name:
            raise FitError(f"the decoder reads {term.node!r}; the accelerator runs layer after layer and keeps only "
                           f"the last layer ({pairs[-1][1].name!r}) at the end")
    if lanes is not None:
        return _plan(model, analysis, DEVICES[device], (th, tw), pairs, lanes)
    errors = []
    for n in _lane_choices(pairs):
        try:
            return _plan(model, analysis, DEVICES[device], (th, tw), pairs, n)
        except FitError as exc:
            errors.append(exc)
    raise min(errors, key=lambda e: getattr(e, "over", 0))  # the nearest miss says best what to change


def _plan(model, analysis, dev: Device, tile, pairs, lanes: int) -> Plan:
    th, tw = tile
    T = model.timesteps
    quantities = {t.quantity for t in model.decoder.terms}
    layers: list[LayerParams] = []
    level = 0
    halo = 0
    wbase = pbase = 0
    for idx, (conv, act) in enumerate(pairs):
        cout, cin, k = conv.out_channels, int(conv.weight.shape[1]), conv.kernel
        level_in = level
        if isinstance(conv, ConvTranspose):
            op, stride, pad = "convT", 2, conv.padding
            level -= 1
            halo += max(pad, k - 1 - pad) << level  # output (2*iy - pad + i): input offsets up to that, full-res
        else:
            op, stride, pad = "conv", conv.stride, k // 2
            halo += (k // 2) << level_in
            if stride == 2:
                level += 1
        narrow = cout < lanes
        last = idx == len(pairs) - 1
        if narrow and not (cout == 1 and last and lanes & (lanes - 1) == 0):
            raise FitError(f"layer {act.name!r}: {cout} channels are not a multiple of lanes = {lanes}")
        if not narrow and cout % lanes:
            raise FitError(f"layer {act.name!r}: {cout} channels are not a multiple of lanes = {lanes}")
        cur = analysis.nodes[conv.name].value
        state = analysis.nodes[act.name].state
        mbits = signed_bits(state.magnitude + cur.magnitude)
        if mbits > 40:
            raise FitError(f"layer {act.name!r}: membrane needs {mbits} bits, {mbits - 40} more than the engine's "
                           f"40-bit limit")
        neuron = isinstance(act, Neuron)
        groups = 1 if narrow else cout // lanes
        lp = LayerParams(
            index=idx, name=act.name, conv=conv.name, kind="neuron" if neuron else "integrator", op=op,
            cin=cin, cout=cout, k=k, stride=stride, pad=pad,
            weight=conv.weight, bias=[int(b) for b in conv.bias],
            theta=[int(v) for v in act.threshold] if neuron else [0] * cout,
            reset=act.reset if neuron else "none", leak=act.leak_shift if neuron else 0,
            v_init=act.v_init if neuron else "zero",
            bit_serial=idx == 0 and model.encoder.kind == "direct", mbits=mbits,
            level_in=level_in, level_out=level, narrow=narrow, groups=groups, wbase=wbase, pbase=pbase)
        layers.append(lp)
        wbase += cin * lp.taps * groups
        pbase += cout

    dec = model.decoder
    readout_bits = signed_bits(analysis.readout.magnitude + (1 << max(dec.shift - 1, 0))) + 1
    halo = -(-halo // model.size_multiple) * model.size_multiple  # tiles start on the coarsest grid
    p = Plan(model=model, device=dev, tile=(th, tw), encoder=model.encoder.kind, timesteps=T, lanes=lanes,
             layers=layers, terms=[Term(t.quantity, int(t.multiplier[0])) for t in dec.terms], shift=dec.shift,
             residual=dec.residual, readout_bits=readout_bits, halo=halo,
             mbits=max(lp.mbits for lp in layers),
             count_bits=bits_for(T + 1) if "count" in quantities else 0,
             uwd_bits=T if "uwd" in quantities else 0)
    _fit(p)
    return p


def _fit(p: Plan) -> None:
    dev = p.device
    th, tw = p.tile
    rams = [Ram("pixels", 8, 1 << (p.ybits + p.xbits)),
            Ram("membranes", p.word_bits, p.mem_depth)]
    if len(p.layers) > 1:
        rams += [Ram(f"bitmap{b}", p.lanes, p.bitmap_depth) for b in (0, 1)]
    rams += [Ram("weights", p.lanes * 8, p.weight_depth), Ram("params", PARAM_BITS, p.params_depth)]
    p.rams = rams

    # Which RAMs go to SPRAM: the subset that saves the most EBR within the SPRAM blocks (a handful of RAMs,
    # so exhaustively); everything else in EBR at its best aspect ratio.
    candidates = rams if dev.spram_blocks else []
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
    # A linear estimate: per lane the scatter adder, the fire path (compare, reset, leak, bias) and the bias /
    # threshold registers; per layer its constants in the configuration multiplexers; fixed control.
    luts = 700 + 60 * len(p.layers) + p.lanes * (12 * p.mbits + 80 + 4 * (p.count_bits + p.uwd_bits))
    luts += 4 * p.readout_bits * max(1, len(p.terms))
    p.usage = {"luts": luts, "bram": bram, "spram": spram, "where": where}

    if bram > dev.bram_blocks:
        worst = sorted(rams, key=lambda r: -_bram_blocks(r, dev) if "SPRAM" not in where[r.name] else 0)[:3]
        detail = ", ".join(f"{r.name} {where[r.name]}" for r in worst)
        error = FitError(f"model does not fit {dev.name} at tile {th}x{tw} with {p.lanes} lanes: needs {bram} "
                         f"{dev.bram_label} blocks, the device has {dev.bram_blocks} ({bram - dev.bram_blocks} over; "
                         f"largest: {detail}); use a smaller tile or fewer channels")
        error.over = (bram - dev.bram_blocks) / dev.bram_blocks
        raise error
    if luts > dev.luts:
        error = FitError(f"model does not fit {dev.name}: needs about {luts} LUT4 of logic, the device has "
                         f"{dev.luts} ({luts - dev.luts} over); use fewer lanes or fewer layers")
        error.over = (luts - dev.luts) / dev.luts
        raise error
