"""The reference implementation of ``docs/SEMANTICS.md``: plain, layer-major, int64, slow on purpose.

Every other executor (the fast runtime, the PyTorch integer simulation, the RTL, the firmware, the exporters) is
tested bit for bit against :func:`run`. Keep it obviously right rather than fast: one pass over the nodes, one
loop over timesteps inside each node, one kernel tap at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgespike.frames import check_frame, pad_to_multiple
from edgespike.model import (
    INPUT,
    SPIKING,
    Add,
    BitPlaneNeuron,
    Concat,
    Conv,
    ConvTranspose,
    Integrator,
    Model,
    Neuron,
)
from edgespike.validate import analyse


def lowbias32(x: np.ndarray) -> np.ndarray:
    """The counter hash of the rate encoder (C. Wellons' lowbias32), on uint32 with wrap-around."""
    x = x.astype(np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return x


def encode(model: Model, frame: np.ndarray, t: int) -> np.ndarray:
    """Value of node ``"input"`` at step ``t`` for a (padded) uint8 frame, as int64 ``[1, H, W]``."""
    if t >= model.timesteps:  # the MPRN extra step carries no input
        return np.zeros((1,) + frame.shape, np.int64)
    x = frame.astype(np.int64)
    kind = model.encoder.kind
    if kind == "direct":
        v = x
    elif kind == "uwe":
        v = (x >> (7 - t)) & 1
    else:  # rate
        h, w = frame.shape
        idx = (np.uint64(t) * np.uint64(h) * np.uint64(w)
               + np.arange(h * w, dtype=np.uint64).reshape(h, w)) & np.uint64(0xFFFFFFFF)
        r = lowbias32((idx.astype(np.uint32)) ^ np.uint32(model.encoder.seed))
        v = ((r >> np.uint32(24)).astype(np.int64) < x).astype(np.int64)
    return v[None]


def conv2d(x: np.ndarray, w: np.ndarray, stride: int, dilation: int = 1) -> np.ndarray:
    """``out[o, y, x] = sum_{c,i,j} w[o,c,i,j] * xpad[c, y*s + d*i, x*s + d*j]`` with zero padding ``d * (k // 2)``."""
    k = w.shape[2]
    d = dilation
    p = d * (k // 2)
    c, h, wd = x.shape
    xp = np.zeros((c, h + 2 * p, wd + 2 * p), np.int64)
    xp[:, p:p + h, p:p + wd] = x
    ho = (h + 2 * p - d * (k - 1) - 1) // stride + 1
    wo = (wd + 2 * p - d * (k - 1) - 1) // stride + 1
    out = np.zeros((w.shape[0], ho, wo), np.int64)
    w = w.astype(np.int64)
    for i in range(k):
        for j in range(k):
            window = xp[:, d * i:d * i + stride * ho:stride, d * j:d * j + stride * wo:stride]
            out += np.einsum("oc,chw->ohw", w[:, :, i, j], window)
    return out


def conv_transpose2d(x: np.ndarray, w: np.ndarray, padding: int) -> np.ndarray:
    """Stride-2 transposed conv: input ``(iy, ix)`` adds ``w[o,c,i,j]`` at ``(2*iy - p + i, 2*ix - p + j)``."""
    k = w.shape[2]
    c, h, wd = x.shape
    full = np.zeros((w.shape[0], 2 * h + k + 2, 2 * wd + k + 2), np.int64)
    w = w.astype(np.int64)
    for i in range(k):
        for j in range(k):
            full[:, i:i + 2 * h:2, j:j + 2 * wd:2] += np.einsum("oc,chw->ohw", w[:, :, i, j], x)
    return full[:, padding:padding + 2 * h, padding:padding + 2 * wd]


@dataclass
class Trace:
    """What a reference run observed, for tests: spikes per neuron node per step (extra step last)."""

    spikes: dict[str, list[int]]
    counts: dict[str, np.ndarray]
    membranes: dict[str, np.ndarray]


def run(model: Model, frame: np.ndarray, trace: bool = False):
    """Denoise one uint8 grayscale frame exactly as the semantics define. Returns the output frame
    (and a :class:`Trace` when ``trace``).

    Layer-major (section 2 of the semantics): each node computes its value at every step from its inputs' values
    at every step, in file order. For a graph without bit-plane layers this is the same as stepping the whole
    graph once per step, because every other node reads only the present step and its own past.
    """
    analysis = analyse(model)
    frame = check_frame(frame)
    H, W = frame.shape
    x = pad_to_multiple(frame, model.size_multiple)
    T = model.timesteps
    steps = T + (1 if model.has_extra_step else 0)
    limit = 2 ** (model.membrane_bits - 1)

    seq: dict[str, list[np.ndarray]] = {INPUT: [encode(model, x, t) for t in range(steps)]}
    membrane: dict[str, np.ndarray] = {}
    count: dict[str, np.ndarray] = {}
    uwd: dict[str, np.ndarray] = {}
    spikes: dict[str, list[int]] = {}

    def check(name: str, arr: np.ndarray) -> None:
        # The bound proved by analyse() must hold: a failure here is a bug in validate.py.
        assert not arr.size or np.abs(arr).max() < limit, name

    for node in model.nodes:
        if isinstance(node, Conv):
            out = []
            for t, value in enumerate(seq[node.input]):
                extra = t == T
                w = node.weight_extra if (extra and node.weight_extra is not None) else node.weight
                cur = conv2d(value, w, node.stride, node.dilation)
                if not extra:
                    cur += node.bias.astype(np.int64)[:, None, None]
                out.append(cur)
        elif isinstance(node, ConvTranspose):
            out = []
            for t, value in enumerate(seq[node.input]):
                cur = conv_transpose2d(value, node.weight, node.padding)
                if t < T:
                    cur += node.bias.astype(np.int64)[:, None, None]
                out.append(cur)
        elif isinstance(node, Neuron):
            out = _if_neuron(node, seq[node.input], T, check)
            membrane[node.name] = out.pop()
        elif isinstance(node, BitPlaneNeuron):
            out, membrane[node.name] = _bitplane_neuron(node, seq[node.input], T, check)
        elif isinstance(node, Integrator):
            v = np.zeros_like(seq[node.input][0])
            for cur in seq[node.input]:
                v = 2 * v + cur if node.uwd else v + cur
                check(node.name, v)
            if node.bias is not None:
                v = v + node.bias.astype(np.int64)[:, None, None]
            membrane[node.name] = v
            out = [np.zeros_like(v) for _ in range(steps)]
        elif isinstance(node, Add):
            out = [sum(values) for values in zip(*(seq[i] for i in node.inputs), strict=True)]
        elif isinstance(node, Concat):
            out = [np.concatenate(values, axis=0) for values in zip(*(seq[i] for i in node.inputs), strict=True)]
        else:  # pragma: no cover - analyse() refuses unknown nodes
            raise TypeError(type(node))
        for value in out:
            check(node.name, value)
        if isinstance(node, SPIKING):
            spikes[node.name] = [int(s.sum()) for s in out]
            count[node.name] = sum(out)
            uwd[node.name] = sum(s << (T - 1 - t) for t, s in enumerate(out[:T]))
        seq[node.name] = out

    dec = model.decoder
    R = np.zeros((1,) + x.shape, np.int64)
    for term in dec.terms:
        if term.quantity == "membrane":
            q = membrane[term.node]
        elif term.quantity == "count":
            q = count[term.node]
        else:
            q = uwd[term.node]
        R += np.int64(term.multiplier[0]) * q
    assert analysis.readout.lo[0] <= R.min() and R.max() <= analysis.readout.hi[0]
    r = (R + (1 << (dec.shift - 1))) >> dec.shift if dec.shift else R
    y = x.astype(np.int64)[None] - r if dec.residual else r
    out = np.clip(y[0], 0, 255).astype(np.uint8)[:H, :W]
    if trace:
        return out, Trace(spikes=spikes, counts=count, membranes=membrane)
    return out


def _if_neuron(node: Neuron, currents: list[np.ndarray], T: int, check) -> list[np.ndarray]:
    """Section 5.2 and 5.4: the spikes of every step, then (appended last) the membrane after the last step."""
    theta = node.threshold.astype(np.int64)[:, None, None]
    v0 = theta >> 1 if node.v_init == "half" else np.zeros_like(theta)
    v = np.broadcast_to(v0, currents[0].shape).copy()
    out = []
    for t, cur in enumerate(currents):
        if t < T:
            if node.leak_shift:
                v -= v >> node.leak_shift
            v += cur
            s = (v >= theta).astype(np.int64)
        else:  # the MPRN extra step
            v += cur
            if node.mprn:
                num, den = node.mprn
                s = (den * v >= num * theta).astype(np.int64)
            else:
                s = np.zeros_like(v)
        check(node.name, v)
        if node.reset == "soft":
            v -= theta * s
        else:
            v[s == 1] = 0
        out.append(s)
    out.append(v)
    return out


def _bitplane_neuron(node: BitPlaneNeuron, currents: list[np.ndarray], T: int, check):
    """Section 5.5: decode the T input steps MSB first (UWD), add the bias, emit the T bits of the quantised
    value MSB first by successive approximation (UWE). Returns the spikes of every step and the final residue."""
    theta = node.threshold.astype(np.int64)[:, None, None]
    v = np.zeros_like(currents[0])
    for cur in currents:
        v = 2 * v + cur
        check(node.name, v)
    v = v + node.bias.astype(np.int64)[:, None, None]
    out = []
    for t in range(T):
        weight = theta << (T - 1 - t)
        s = (v >= weight).astype(np.int64)
        v = v - weight * s
        out.append(s)
    return out, v
