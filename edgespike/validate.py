"""Static checks of a model: structure, dtypes, shapes, and the worst-case integer bounds.

``analyse(model)`` is called whenever a model is loaded or built. It either returns an :class:`Analysis`
(channels, resolution level and value intervals of every node) or raises :class:`ModelError` with one line naming
the node at fault. The bounds are the overflow policy of ``docs/SEMANTICS.md``: every current and every membrane
is proved to fit the model's ``membrane_bits`` for any input frame, or the model is refused.

Bounds are computed with Python integers (no overflow possible) by interval arithmetic per channel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgespike.model import (
    ENCODERS,
    INPUT,
    QUANTITIES,
    RESETS,
    V_INITS,
    Add,
    BitPlaneNeuron,
    Concat,
    Conv,
    ConvTranspose,
    Integrator,
    Model,
    ModelError,
    Neuron,
)

MAX_TIMESTEPS = 1024
MAX_CHANNELS = 4096
MAX_KERNEL = 15
MAX_DILATION = 16  # a 3x3 conv then sees 33 pixels: as far as IRCNN's whole 7-layer network
MAX_MEMBRANE_BITS = 32


@dataclass
class Interval:
    """Per-channel closed integer intervals ``[lo[c], hi[c]]`` as lists of Python ints."""

    lo: list[int]
    hi: list[int]

    @property
    def channels(self) -> int:
        return len(self.lo)

    @property
    def magnitude(self) -> int:
        return max(max(abs(v) for v in self.lo), max(abs(v) for v in self.hi))

    @staticmethod
    def const(lo: int, hi: int, channels: int) -> Interval:
        return Interval([lo] * channels, [hi] * channels)


@dataclass
class NodeInfo:
    """What the analysis knows about one node."""

    channels: int
    level: int  # log2 of the down-sampling factor relative to the (padded) frame
    value: Interval  # per-step output value (current, spike, sum) at steps 0..T-1
    extra: Interval  # output value at the MPRN extra step
    state: Interval | None = None  # membrane range, for Neuron and Integrator
    binary: bool = False  # per-step values are 0/1 spikes


@dataclass
class Analysis:
    nodes: dict[str, NodeInfo]
    readout: Interval  # range of R, the decoder's weighted sum before the shift

    def worst_bits(self) -> int:
        """Signed bits needed by the widest current or membrane of the model."""
        worst = 0
        for info in self.nodes.values():
            for iv in (info.value, info.extra, info.state):
                if iv is not None:
                    worst = max(worst, iv.magnitude)
        return signed_bits(worst)


def signed_bits(magnitude: int) -> int:
    """Bits of a two's complement integer able to hold every value in ``[-magnitude, magnitude]``."""
    return int(magnitude).bit_length() + 1


def _fail(node: str, what: str) -> ModelError:
    return ModelError(f"node {node!r}: {what}")


def _check_array(node: str, label: str, arr, dtype, shape: tuple | None = None, ndim: int | None = None):
    if not isinstance(arr, np.ndarray):
        raise _fail(node, f"{label} must be a numpy array, got {type(arr).__name__}")
    if arr.dtype != np.dtype(dtype):
        raise _fail(node, f"{label} must be {np.dtype(dtype).name}, got {arr.dtype.name}")
    if ndim is not None and arr.ndim != ndim:
        raise _fail(node, f"{label} must have {ndim} dimensions, got shape {arr.shape}")
    if shape is not None and arr.shape != shape:
        raise _fail(node, f"{label} must have shape {shape}, got {arr.shape}")


def _conv_interval(weight: np.ndarray, bias: list[int], inp: Interval) -> Interval:
    """Interval of ``sum_{ci,ky,kx} w * x + bias`` per output channel, x in ``inp`` per input channel."""
    w = weight.astype(np.int64)
    lo_in = np.array(inp.lo, dtype=object)[None, :, None, None]
    hi_in = np.array(inp.hi, dtype=object)[None, :, None, None]
    w_obj = w.astype(object)
    a, b = w_obj * lo_in, w_obj * hi_in
    lo = np.minimum(a, b).reshape(w.shape[0], -1).sum(axis=1)
    hi = np.maximum(a, b).reshape(w.shape[0], -1).sum(axis=1)
    return Interval([int(v) + bb for v, bb in zip(lo, bias, strict=True)],
                    [int(v) + bb for v, bb in zip(hi, bias, strict=True)])


def _conv_t_interval(weight: np.ndarray, bias: list[int], inp: Interval) -> Interval:
    # With stride 2 an output pixel receives at most ceil(k/2)**2 taps per input channel; bounding with all
    # k*k taps is simpler and still safe.
    return _conv_interval(weight, bias, inp)


def _membrane(node: Neuron, T: int, cur: Interval, extra: Interval) -> Interval:
    """Range of a neuron's membrane over all steps (see SEMANTICS.md, "Overflow policy")."""
    lo, hi = [], []
    for c in range(cur.channels):
        theta = int(node.threshold[c])
        v0 = theta >> 1 if node.v_init == "half" else 0
        # Integration adds at most max(hi, 0) per step; a reset or a leak never moves v away from [lo, hi]
        # once it contains 0 and v0, and a soft reset only fires when v >= theta (leaving v >= 0).
        top = v0 + T * max(cur.hi[c], 0) + max(extra.hi[c], 0)
        # The leak may shrink v0 towards 0 before negative currents arrive: do not count on v0 below.
        bot = T * min(cur.lo[c], 0) + min(extra.lo[c], 0)
        # An MPRN soft reset fires at v >= alpha * theta with alpha <= 1, so it can leave v down to -theta.
        lo.append(min(bot, 0) - (theta if node.mprn and node.reset == "soft" else 0))
        hi.append(max(top, theta))
    return Interval(lo, hi)


def analyse(model: Model) -> Analysis:
    """Check ``model`` and prove its integer bounds. Raises :class:`ModelError` (one line) on any fault."""
    T = model.timesteps
    if not isinstance(T, int) or not 1 <= T <= MAX_TIMESTEPS:
        raise ModelError(f"timesteps must be an integer in 1..{MAX_TIMESTEPS}, got {T!r}")
    if not isinstance(model.membrane_bits, int) or not 8 <= model.membrane_bits <= MAX_MEMBRANE_BITS:
        raise ModelError(f"membrane_bits must be in 8..{MAX_MEMBRANE_BITS}, got {model.membrane_bits!r}")
    enc = model.encoder
    if enc.kind not in ENCODERS:
        raise ModelError(f"encoder {enc.kind!r} is not one of {', '.join(ENCODERS)}")
    if enc.kind == "uwe" and T != 8:
        raise ModelError(f"encoder 'uwe' codes 8-bit pixels in exactly 8 steps; the model has T = {T}")
    if not isinstance(enc.seed, int) or not 0 <= enc.seed < 2**32:
        raise ModelError(f"encoder seed must be an integer in 0..2**32-1, got {enc.seed!r}")
    if not model.nodes:
        raise ModelError("the model has no nodes")

    top = 255 if enc.kind == "direct" else 1
    infos: dict[str, NodeInfo] = {
        INPUT: NodeInfo(1, 0, Interval.const(0, top, 1), Interval.const(0, 0, 1), binary=enc.kind != "direct")
    }
    limit = 2 ** (model.membrane_bits - 1)

    for node in model.nodes:
        name = getattr(node, "name", None)
        if not isinstance(name, str) or not name or name == INPUT or name in infos:
            raise ModelError(f"node name {name!r} is empty, reserved or used twice")
        for src in node.inputs:
            if src not in infos:
                raise _fail(name, f"input {src!r} is not an earlier node (nodes must be in topological order)")
        ins = [infos[s] for s in node.inputs]
        info = _analyse_node(node, ins, model, T)
        for label, iv in (("current", info.value), ("extra-step current", info.extra), ("membrane", info.state)):
            if iv is not None and iv.magnitude >= limit:
                raise _fail(
                    name,
                    f"worst-case {label} needs {signed_bits(iv.magnitude)} bits, more than the model's "
                    f"{model.membrane_bits}-bit membrane_bits; use smaller weights/thresholds, fewer timesteps "
                    f"or a wider membrane",
                )
        infos[name] = info

    readout = _analyse_decoder(model, infos, T)
    return Analysis(nodes=infos, readout=readout)


def _analyse_node(node, ins: list[NodeInfo], model: Model, T: int) -> NodeInfo:
    name = node.name
    if isinstance(node, (Conv, ConvTranspose)):
        src = ins[0]
        _check_array(name, "weight", node.weight, np.int8, ndim=4)
        cout, cin, kh, kw = node.weight.shape
        if kh != kw or not 1 <= kh <= MAX_KERNEL:
            raise _fail(name, f"kernel must be square and at most {MAX_KERNEL}, got {kh}x{kw}")
        if not 1 <= cout <= MAX_CHANNELS:
            raise _fail(name, f"output channels must be in 1..{MAX_CHANNELS}, got {cout}")
        if cin != src.channels:
            raise _fail(name, f"weight expects {cin} input channels but {node.input!r} has {src.channels}")
        _check_array(name, "bias", node.bias, np.int32, shape=(cout,))
        if node.scale is not None:
            _check_array(name, "scale", node.scale, np.float32, shape=(cout,))
        bias = [int(b) for b in node.bias]
        if isinstance(node, Conv):
            if kh % 2 == 0:
                raise _fail(name, f"Conv kernels must be odd for 'same' padding, got {kh}")
            if node.stride not in (1, 2):
                raise _fail(name, f"stride must be 1 or 2, got {node.stride!r}")
            d = node.dilation
            if not (isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= MAX_DILATION):
                raise _fail(name, f"dilation must be an integer in 1..{MAX_DILATION}, got {d!r}")
            if d > 1 and node.stride != 1:
                raise _fail(name, f"a dilated conv (dilation {d}) must have stride 1, got {node.stride}")
            level = src.level + (node.stride == 2)
            value = _conv_interval(node.weight, bias, src.value)
            w_extra = node.weight if node.weight_extra is None else node.weight_extra
            if node.weight_extra is not None:
                _check_array(name, "weight_extra", node.weight_extra, np.int8, shape=node.weight.shape)
            extra = _conv_interval(w_extra, [0] * cout, src.extra)
        else:
            p, op = node.padding, node.output_padding
            if not (isinstance(p, int) and isinstance(op, int) and p >= 0 and op in (0, 1)):
                raise _fail(name, f"padding must be >= 0 and output_padding 0 or 1, got {p!r}, {op!r}")
            if kh - 2 * p + op != 2:
                raise _fail(name, f"kernel {kh}, padding {p}, output_padding {op} does not exactly double the size")
            level = src.level - 1
            value = _conv_t_interval(node.weight, bias, src.value)
            extra = _conv_t_interval(node.weight, [0] * cout, src.extra)
        return NodeInfo(cout, level, value, extra)

    if isinstance(node, Neuron):
        src = ins[0]
        C = src.channels
        _check_array(name, "threshold", node.threshold, np.int32, shape=(C,))
        if np.any(node.threshold <= 0):
            raise _fail(name, "thresholds must be strictly positive")
        if node.reset not in RESETS:
            raise _fail(name, f"reset must be one of {RESETS}, got {node.reset!r}")
        if node.v_init not in V_INITS:
            raise _fail(name, f"v_init must be one of {V_INITS}, got {node.v_init!r}")
        if not isinstance(node.leak_shift, int) or not 0 <= node.leak_shift < model.membrane_bits:
            raise _fail(name, f"leak_shift must be in 0..{model.membrane_bits - 1}, got {node.leak_shift!r}")
        if node.mprn is not None:
            num, den = node.mprn
            if not (isinstance(num, int) and isinstance(den, int) and 0 < num <= den <= 2**16):
                raise _fail(name, f"mprn alpha must be num/den with 0 < num <= den <= 65536, got {node.mprn!r}")
        if node.scale is not None:
            _check_array(name, "scale", node.scale, np.float32, shape=(C,))
        state = _membrane(node, T, src.value, src.extra)
        extra = Interval.const(0, 1 if node.mprn else 0, C)
        return NodeInfo(C, src.level, Interval.const(0, 1, C), extra, state=state, binary=True)

    if isinstance(node, BitPlaneNeuron):
        src = ins[0]
        C = src.channels
        _check_bitplane_step(name, model)
        _check_array(name, "threshold", node.threshold, np.int32, shape=(C,))
        if np.any(node.threshold <= 0):
            raise _fail(name, "thresholds must be strictly positive")
        _check_array(name, "bias", node.bias, np.int32, shape=(C,))
        if node.scale is not None:
            _check_array(name, "scale", node.scale, np.float32, shape=(C,))
        # The decoded membrane is sum_t 2**(T-1-t) I[t] (every partial sum lies between 0 and that), plus the
        # bias; the successive approximation compares it with theta * 2**(T-1) and only ever subtracts.
        weight = 2**T - 1
        lo, hi = [], []
        for c in range(C):
            b = int(node.bias[c])
            lo.append(min(weight * src.value.lo[c], 0) + min(b, 0))
            hi.append(max(weight * src.value.hi[c], 0) + max(b, 0, int(node.threshold[c]) << (T - 1)))
        zero = Interval.const(0, 0, C)
        return NodeInfo(C, src.level, Interval.const(0, 1, C), zero, state=Interval(lo, hi), binary=True)

    if isinstance(node, Integrator):
        src = ins[0]
        if not isinstance(node.uwd, bool):
            raise _fail(name, f"uwd must be true or false, got {node.uwd!r}")
        if node.bias is not None:
            _check_array(name, "bias", node.bias, np.int32, shape=(src.channels,))
        bias = [0] * src.channels if node.bias is None else [int(b) for b in node.bias]
        if node.uwd:
            _check_bitplane_step(name, model)
            weight = 2**T - 1
            lo = [weight * min(a, 0) + min(b, 0) for a, b in zip(src.value.lo, bias, strict=True)]
            hi = [weight * max(a, 0) + max(b, 0) for a, b in zip(src.value.hi, bias, strict=True)]
        else:
            lo = [T * min(a, 0) + min(e, 0) + min(b, 0)
                  for a, e, b in zip(src.value.lo, src.extra.lo, bias, strict=True)]
            hi = [T * max(a, 0) + max(e, 0) + max(b, 0)
                  for a, e, b in zip(src.value.hi, src.extra.hi, bias, strict=True)]
        zero = Interval.const(0, 0, src.channels)
        return NodeInfo(src.channels, src.level, zero, zero, state=Interval(lo, hi))

    if isinstance(node, (Add, Concat)):
        if len(ins) < 2:
            raise _fail(name, f"{type(node).__name__} needs at least two inputs")
        if len({i.level for i in ins}) != 1:
            raise _fail(name, "inputs have different resolutions (check the stride-2 and transposed convs)")
        if isinstance(node, Add):
            if len({i.channels for i in ins}) != 1:
                raise _fail(name, f"Add inputs have different channel counts {[i.channels for i in ins]}")

            def total(get) -> Interval:
                ivs = [get(i) for i in ins]
                return Interval([sum(v) for v in zip(*(iv.lo for iv in ivs), strict=True)],
                                [sum(v) for v in zip(*(iv.hi for iv in ivs), strict=True)])

            return NodeInfo(ins[0].channels, ins[0].level, total(lambda i: i.value), total(lambda i: i.extra))
        return NodeInfo(
            sum(i.channels for i in ins),
            ins[0].level,
            Interval(sum((i.value.lo for i in ins), []), sum((i.value.hi for i in ins), [])),
            Interval(sum((i.extra.lo for i in ins), []), sum((i.extra.hi for i in ins), [])),
            binary=all(i.binary for i in ins),
        )

    raise ModelError(f"node {name!r} has unknown type {type(node).__name__}")


def _check_bitplane_step(name: str, model: Model) -> None:
    if model.has_extra_step:
        raise _fail(name, "bit-plane layers cannot be combined with an MPRN extra step (a step past the last bit)")


def _analyse_decoder(model: Model, infos: dict[str, NodeInfo], T: int) -> Interval:
    dec = model.decoder
    if not dec.terms:
        raise ModelError("decoder has no terms: name the node(s) the output is read from")
    if not isinstance(dec.shift, int) or not 0 <= dec.shift <= 62:
        raise ModelError(f"decoder shift must be in 0..62, got {dec.shift!r}")
    steps = T + (1 if model.has_extra_step else 0)
    lo_total, hi_total = [0], [0]
    for term in dec.terms:
        if term.node not in infos or term.node == INPUT:
            raise ModelError(f"decoder reads node {term.node!r}, which the model does not have")
        node = model.node(term.node)
        info = infos[term.node]
        if term.quantity not in QUANTITIES:
            raise ModelError(f"decoder quantity {term.quantity!r} is not one of {', '.join(QUANTITIES)}")
        if term.quantity in ("count", "uwd") and not isinstance(node, (Neuron, BitPlaneNeuron)):
            raise ModelError(f"decoder reads the {term.quantity} of {term.node!r}, which is not a Neuron")
        if term.quantity == "membrane" and not isinstance(node, (Neuron, BitPlaneNeuron, Integrator)):
            raise ModelError(f"decoder reads the membrane of {term.node!r}, which has none")
        if term.quantity == "uwd" and model.has_extra_step:
            raise ModelError("decoder 'uwd' is undefined with an MPRN extra step")
        if term.quantity == "uwd" and T > 30:
            raise ModelError(f"decoder 'uwd' weights spikes by 2**t: T = {T} is too large (at most 30)")
        if info.channels != 1:
            raise ModelError(f"decoder node {term.node!r} has {info.channels} channels; the output is grayscale (1)")
        if info.level != 0:
            raise ModelError(f"decoder node {term.node!r} is not at the frame's resolution")
        _check_array("decoder", f"multiplier of {term.node!r}", term.multiplier, np.int32, shape=(1,))
        if term.quantity == "membrane":
            q_lo, q_hi = info.state.lo[0], info.state.hi[0]
        elif term.quantity == "count":
            q_lo, q_hi = 0, steps
        else:
            q_lo, q_hi = 0, 2**T - 1
        m = int(term.multiplier[0])
        a, b = m * q_lo, m * q_hi
        lo_total[0] += min(a, b)
        hi_total[0] += max(a, b)
    readout = Interval(lo_total, hi_total)
    if readout.magnitude + (1 << max(dec.shift - 1, 0)) >= 2**63:
        raise ModelError("decoder: the weighted read-out can exceed 64 bits; lower the multipliers")
    if not isinstance(dec.residual, bool):
        raise ModelError(f"decoder residual must be true or false, got {dec.residual!r}")
    return readout
