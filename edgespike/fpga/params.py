"""The shared engine's planner: from a model to the gateware's :class:`~edgespike.rtl.params.Plan`, and the fit check.

:func:`plan` is the only way into the gateware: every component is built from the :class:`Plan` it returns, and
it raises :class:`FitError` (one line: what does not fit, and by how much) before any simulation or synthesis.
It runs on the host (it needs the model's bounds analysis, :mod:`edgespike.validate`); the gateware only reads
the record it returns.

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

from math import ceil, gcd

from edgespike.model import INPUT, Conv, ConvTranspose, Integrator, Model, ModelError, Neuron
from edgespike.rtl.common import bits_for
from edgespike.rtl.params import PARAM_BITS, Device, LayerParams, Plan, Ram, Term
from edgespike.validate import analyse, signed_bits

__all__ = ["DEVICES", "PARAM_BITS", "Device", "FitError", "LayerParams", "Plan", "Ram", "Term", "plan"]


class FitError(ModelError):
    """A model the accelerator cannot run on the chosen device; the message names the part and the excess."""


DEVICES = {
    "up5k": Device("iCE40UP5K", 5280, 30, ((16, 256), (8, 512), (4, 1024), (2, 2048)), "EBR (4 kbit)", 4),
    "ecp5-85f": Device("ECP5-85F", 83640, 208, ((36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192),
                                                (1, 16384)), "DP16KD (18 kbit)"),
    "ecp5-25f": Device("ECP5-25F", 24288, 56, ((36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192),
                                               (1, 16384)), "DP16KD (18 kbit)"),
}


def _supported(model: Model) -> None:
    """Refuse encoders and node types the gateware has no block for (checked before the bounds analysis)."""
    if model.encoder.kind not in ("direct", "uwe"):
        raise FitError(f"encoder {model.encoder.kind!r} is not supported by the accelerator (direct or uwe only): "
                       f"its hash needs multipliers")
    # first: a dilated model the layer pipeline does not take (rate-coded, or a bit-plane one it refuses for
    # another reason) is told where dilation runs before anything else is said of it
    for node in model.nodes:
        if getattr(node, "dilation", 1) > 1:
            raise FitError(dilated_refusal(node))
    for node in model.nodes:
        if not isinstance(node, (Conv, ConvTranspose, Neuron, Integrator)):
            raise FitError(f"node {node.name!r} ({type(node).__name__}) is not supported by the accelerator: it "
                           f"runs Conv/ConvTranspose -> Neuron/Integrator chains (no Add or Concat yet)")
        if getattr(node, "weight_extra", None) is not None or getattr(node, "mprn", None):
            raise FitError(f"node {node.name!r} uses the MPRN extra step, which the accelerator does not run")


def dilated_refusal(node: Conv) -> str:
    """What the shared engine says of a dilated conv: its scatter pass spreads each spike over the k x k
    neighbouring outputs; the layer pipeline's engines (:mod:`edgespike.rtl.bitplane`) read dilated windows."""
    return (f"node {node.name!r} is a dilated conv (taps {node.dilation} pixels apart), which the shared engine does "
            f"not implement: the layer pipeline runs dilated bit-plane models (uwe encoder, BitPlaneNeuron layers, a "
            f"uwd Integrator read-out); run this model on the CPU runtime (edgespike run / denoise)")


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
    _identify(p)
    return p


def _identify(p: Plan) -> None:
    """What the link's IDENT reports about the plan (see :class:`~edgespike.rtl.params.Plan`)."""
    from edgespike.firmware.accelerator import model_fingerprint, structure_key
    from edgespike.fpga.cycles import worst_tile_cycles

    p.fingerprint = model_fingerprint(p.model)
    p.max_tile_cycles = worst_tile_cycles(p)
    p.structure = structure_key(p)
    p.device_key = next(k for k, d in DEVICES.items() if d.name == p.device.name)


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
