"""A fast, bit-exact SNN simulation for the profiler's spike counts (layer-major, float GEMMs that are exact).

The profiler needs the spikes of every neuron node on real frames of real size. :func:`edgespike.reference.run`
is exact but one kernel tap at a time in int64; this module computes the same integers layer-major: a conv is one
BLAS GEMM per kernel tap on a flattened, padded NHWC map, in float32 when the layer's worst-case partial sum is
below 2**24 (then float32 is exact for integers) and in float64 otherwise. Membranes are int64. It is tested bit
for bit against the reference (``tests/test_profile.py``). When the fast runtime (``edgespike.load``) is merged
the command uses it instead; this stays as the fallback.

Supported graphs: stride-1 ``Conv`` nodes each feeding exactly one ``Neuron`` or ``Integrator``, any encoder,
MPRN, any decoder. Other graphs (U-nets, skips) fall back to the reference.
"""

from __future__ import annotations

import numpy as np

from edgespike.frames import check_frame, pad_to_multiple
from edgespike.model import INPUT, Conv, Integrator, Model, Neuron
from edgespike.reference import encode

EXACT_F32 = 2**24


def conv_same(x: np.ndarray, w: np.ndarray, dtype=np.float32) -> np.ndarray:
    """``same`` 2-D convolution, stride 1, zero padding: ``x`` [H, W, C], ``w`` [O, C, k, k] -> [H, W, O].

    One GEMM per tap on contiguous row slices of the flattened padded map (no im2col copy): output row ``y``,
    column ``x`` of tap ``(i, j)`` reads flat index ``(y + i) * Wp + x + j``; the ``2p`` extra columns per row are
    computed and dropped.
    """
    h, wd, c = x.shape
    k = w.shape[2]
    p = k // 2
    wp = wd + 2 * p
    xp = np.zeros((h + 2 * p + 1, wp, c), dtype)  # one spare row keeps the last tap's slice in bounds
    xp[p:p + h, p:p + wd] = x
    flat = xp.reshape(-1, c)
    n = h * wp
    out = np.zeros((n, w.shape[0]), dtype)
    wt = np.ascontiguousarray(w.transpose(2, 3, 1, 0).astype(dtype))  # [k, k, C, O]
    for i in range(k):
        for j in range(k):
            off = i * wp + j
            out += flat[off:off + n] @ wt[i, j]
    return out.reshape(h, wp, -1)[:, :wd]


def supported(model: Model) -> bool:
    """True when :func:`run` can simulate ``model`` (else use the reference)."""
    consumers: dict[str, list] = {}
    for node in model.nodes:
        for i in node.inputs:
            consumers.setdefault(i, []).append(node)
    for node in model.nodes:
        if isinstance(node, Conv):
            nxt = consumers.get(node.name, [])
            if node.stride != 1 or len(nxt) != 1 or not isinstance(nxt[0], (Neuron, Integrator)):
                return False
        elif isinstance(node, (Neuron, Integrator)):
            if not isinstance(model.node(node.input), Conv):
                return False
        else:
            return False
    return True


def _input_bound(model: Model) -> int:
    return {"direct": 255}.get(model.encoder.kind, 1)


def run(model: Model, frame: np.ndarray) -> tuple[np.ndarray, dict[str, list[int]]]:
    """Denoise ``frame`` exactly as :func:`edgespike.reference.run`; returns ``(output, spikes)`` with spikes per
    neuron node per step (MPRN extra step last), like the reference ``Trace.spikes``."""
    if not supported(model):
        from edgespike import reference

        out, tr = reference.run(model, frame, trace=True)
        return out, tr.spikes
    frame = check_frame(frame)
    H, W = frame.shape
    x = pad_to_multiple(frame, model.size_multiple)
    T = model.timesteps
    extra = model.has_extra_step
    steps = T + int(extra)
    needed = {(t.node, t.quantity) for t in model.decoder.terms}

    # per node: list over steps of [H, W, C] int arrays (spikes as int8), or a single array when constant
    values: dict[str, object] = {}
    enc = [encode(model, x, t)[0][..., None] for t in range(steps)]
    const_input = model.encoder.kind == "direct"
    values[INPUT] = enc
    remaining: dict[str, int] = {}
    for node in model.nodes:
        for i in node.inputs:
            remaining[i] = remaining.get(i, 0) + 1

    spikes: dict[str, list[int]] = {}
    membrane: dict[str, np.ndarray] = {}
    count: dict[str, np.ndarray] = {}
    uwd: dict[str, np.ndarray] = {}
    bound_in = {INPUT: _input_bound(model)}
    nodes = {n.name: n for n in model.nodes}
    for node in model.nodes:
        if isinstance(node, Conv):
            continue  # computed step by step inside its consumer
        conv = nodes[node.input]
        src = values[conv.input]
        b_in = bound_in[conv.input]
        dtype = np.float32
        for wgt in (conv.weight, conv.weight_extra):
            if wgt is not None and b_in * int(np.abs(wgt.astype(np.int64)).sum(axis=(1, 2, 3)).max()) >= EXACT_F32:
                dtype = np.float64
        bias = conv.bias.astype(np.int64)
        cache: dict[int, np.ndarray] = {}

        def current(t: int, conv=conv, src=src, dtype=dtype, bias=bias, cache=cache) -> np.ndarray:
            is_extra = t == T
            w = conv.weight_extra if (is_extra and conv.weight_extra is not None) else conv.weight
            if src is enc and const_input and not is_extra:
                if 0 not in cache:  # direct coding: the first layer's current is the same at every step
                    cache[0] = np.rint(conv_same(src[0], w, dtype)).astype(np.int64) + bias
                return cache[0]
            out = np.rint(conv_same(src[t], w, dtype)).astype(np.int64)
            return out if is_extra else out + bias

        if isinstance(node, Integrator):
            v = None
            for t in range(steps):
                cur = current(t)
                v = cur.copy() if v is None else v + cur
            membrane[node.name] = v
            bound_in[node.name] = 0
            values[node.name] = None
            continue
        theta = node.threshold.astype(np.int64)
        out_steps = []
        v = None
        cnt = None
        u = None
        spikes[node.name] = []
        for t in range(steps):
            cur = current(t)
            if v is None:
                v0 = theta >> 1 if node.v_init == "half" else np.zeros_like(theta)
                v = np.broadcast_to(v0, cur.shape).copy()
                cnt = np.zeros(cur.shape, np.int64)
                u = np.zeros(cur.shape, np.int64) if (node.name, "uwd") in needed else None
            if t < T:
                if node.leak_shift:
                    v -= v >> node.leak_shift
                v += cur
                s = v >= theta
                if u is not None:
                    u += s.astype(np.int64) << (T - 1 - t)
            else:
                v += cur
                if node.mprn:
                    num, den = node.mprn
                    s = den * v >= num * theta
                else:
                    s = np.zeros(v.shape, bool)
            if node.reset == "soft":
                v -= theta * s
            else:
                v[s] = 0
            cnt += s
            spikes[node.name].append(int(s.sum()))
            out_steps.append(s.astype(np.int8))
        values[node.name] = out_steps
        bound_in[node.name] = 1
        membrane[node.name], count[node.name] = v, cnt
        if u is not None:
            uwd[node.name] = u
        # free the input spike trains once their last reader is done (keeps large frames in memory)
        remaining[conv.input] -= 1
        if remaining[conv.input] == 0 and conv.input != INPUT:
            values[conv.input] = None

    dec = model.decoder
    R = np.zeros(x.shape + (1,), np.int64)
    for term in dec.terms:
        q = {"membrane": membrane, "count": count, "uwd": uwd}[term.quantity][term.node]
        R = R + np.int64(term.multiplier[0]) * q
    R = R[..., 0]
    r = (R + (1 << (dec.shift - 1))) >> dec.shift if dec.shift else R
    y = x.astype(np.int64) - r if dec.residual else r
    return np.clip(y, 0, 255).astype(np.uint8)[:H, :W], spikes
