"""The reference implementation of ``docs/SEMANTICS.md``: plain, step-major, int64, slow on purpose.

Every other executor (the fast runtime, the PyTorch integer simulation, the RTL, the firmware, the exporters) is
tested bit for bit against :func:`run`. Keep it obviously right rather than fast: one loop over timesteps, one
pass over the nodes per step, one kernel tap at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgespike.frames import check_frame, pad_to_multiple
from edgespike.model import (
    INPUT,
    Add,
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


def conv2d(x: np.ndarray, w: np.ndarray, stride: int) -> np.ndarray:
    """``out[o, y, x] = sum_{c,i,j} w[o,c,i,j] * xpad[c, y*s + i, x*s + j]`` with zero padding ``k // 2``."""
    k = w.shape[2]
    p = k // 2
    c, h, wd = x.shape
    xp = np.zeros((c, h + 2 * p, wd + 2 * p), np.int64)
    xp[:, p:p + h, p:p + wd] = x
    ho = (h + 2 * p - k) // stride + 1
    wo = (wd + 2 * p - k) // stride + 1
    out = np.zeros((w.shape[0], ho, wo), np.int64)
    w = w.astype(np.int64)
    for i in range(k):
        for j in range(k):
            window = xp[:, i:i + stride * ho:stride, j:j + stride * wo:stride]
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
    (and a :class:`Trace` when ``trace``)."""
    analysis = analyse(model)
    frame = check_frame(frame)
    H, W = frame.shape
    x = pad_to_multiple(frame, model.size_multiple)
    T = model.timesteps
    steps = T + (1 if model.has_extra_step else 0)
    limit = 2 ** (model.membrane_bits - 1)

    membrane: dict[str, np.ndarray] = {}
    count: dict[str, np.ndarray] = {}
    uwd: dict[str, np.ndarray] = {}
    spikes: dict[str, list[int]] = {}

    for t in range(steps):
        extra = t == T
        values = {INPUT: encode(model, x, t)}
        for node in model.nodes:
            if isinstance(node, Conv):
                w = node.weight_extra if (extra and node.weight_extra is not None) else node.weight
                out = conv2d(values[node.input], w, node.stride)
                if not extra:
                    out += node.bias.astype(np.int64)[:, None, None]
            elif isinstance(node, ConvTranspose):
                out = conv_transpose2d(values[node.input], node.weight, node.padding)
                if not extra:
                    out += node.bias.astype(np.int64)[:, None, None]
            elif isinstance(node, Neuron):
                cur = values[node.input]
                theta = node.threshold.astype(np.int64)[:, None, None]
                if t == 0:
                    v0 = theta >> 1 if node.v_init == "half" else np.zeros_like(theta)
                    membrane[node.name] = np.broadcast_to(v0, cur.shape).copy()
                    count[node.name] = np.zeros(cur.shape, np.int64)
                    uwd[node.name] = np.zeros(cur.shape, np.int64)
                    spikes[node.name] = []
                v = membrane[node.name]
                if not extra:
                    if node.leak_shift:
                        v -= v >> node.leak_shift
                    v += cur
                    s = (v >= theta).astype(np.int64)
                    uwd[node.name] += s << (T - 1 - t)
                else:
                    v += cur
                    if node.mprn:
                        num, den = node.mprn
                        s = (den * v >= num * theta).astype(np.int64)
                    else:
                        s = np.zeros_like(v)
                if node.reset == "soft":
                    v -= theta * s
                else:
                    v[s == 1] = 0
                count[node.name] += s
                spikes[node.name].append(int(s.sum()))
                out = s
            elif isinstance(node, Integrator):
                cur = values[node.input]
                if t == 0:
                    membrane[node.name] = np.zeros(cur.shape, np.int64)
                membrane[node.name] += cur
                out = np.zeros_like(cur)
            elif isinstance(node, Add):
                out = sum(values[i] for i in node.inputs)
            elif isinstance(node, Concat):
                out = np.concatenate([values[i] for i in node.inputs], axis=0)
            else:  # pragma: no cover - analyse() refuses unknown nodes
                raise TypeError(type(node))
            values[node.name] = out
            # The bound proved by analyse() must hold: a failure here is a bug in validate.py.
            for arr in (out, membrane.get(node.name)):
                assert arr is None or not arr.size or np.abs(arr).max() < limit, node.name

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
