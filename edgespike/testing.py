"""Model and frame generators for tests and benchmarks (the runtime, RTL and interchange tests share them).

* :func:`dncnn_like` builds a DnCNN-shaped integer SNN (Conv+IF stacks, a linear read-out into an Integrator)
  with random int8 weights and per-layer thresholds calibrated on a synthetic image so that every layer fires at
  a realistic rate (``rate``, default 0.2 spikes per neuron per step).
* :func:`models` is a hypothesis strategy over small random models covering every node kind (Conv k 1/3/5 stride
  1/2, dilated stride-1 Convs, ConvTranspose, Add, Concat in U-net shapes), every neuron variant (IF/LIF,
  soft/hard reset, v_init zero/half, MPRN with ``weight_extra``, bit-plane layers mixed with IF ones, ``uwd``
  Integrators with a bias), every encoder (direct/uwe/rate) and every read-out (membrane, count, uwd, SpikingIR
  membrane recycling), residual or direct output, sometimes with bounds that force float64/int64.
* :func:`bitplane_dncnn` builds a DnCNN-shaped network of bit-plane layers (the shipped models' coding).
* :func:`frames` draws uint8 frames of odd sizes (1x1, 3x7, occasionally 257x255).

Hypothesis is imported lazily: :func:`dncnn_like` works without it.
"""

from __future__ import annotations

import numpy as np

from edgespike.model import (
    INPUT,
    Add,
    BitPlaneNeuron,
    Concat,
    Conv,
    ConvTranspose,
    Decoder,
    Encoder,
    Integrator,
    Model,
    Neuron,
    ReadoutTerm,
)

# --------------------------------------------------------------------------- DnCNN-like benchmark models


def calibration_frame(size: int = 48, seed: int = 0) -> np.ndarray:
    """A smooth random image plus Gaussian noise (sigma 25): what a denoiser sees."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (size // 8 + 2, size // 8 + 2))
    img = np.kron(coarse, np.ones((8, 8)))[:size, :size]
    for _ in range(3):  # box blur: smooth regions with soft edges
        img = (img + np.roll(img, 1, 0) + np.roll(img, -1, 0) + np.roll(img, 1, 1) + np.roll(img, -1, 1)) / 5
    return np.clip(img + rng.normal(0, 25, img.shape), 0, 255).astype(np.uint8)


def _if_spikes(cur: np.ndarray, theta: int, T: int) -> np.ndarray:
    """IF soft-reset neurons, v0 = theta // 2, on currents ``[T or 1, h, w, C]`` (int64)."""
    v = np.full(cur.shape[1:], theta >> 1, np.int64)
    out = np.empty((T,) + cur.shape[1:], np.uint8)
    for t in range(T):
        v += cur[0] if cur.shape[0] == 1 else cur[t]
        s = v >= theta
        v -= theta * s
        out[t] = s
    return out


def dncnn_like(depth: int = 10, width: int = 32, T: int = 4, seed: int = 0, rate: float = 0.2,
               encoder: str = "direct", readout: str = "membrane", kernel: int = 3, calib_size: int = 48) -> Model:
    """A DnCNN-shaped integer SNN: ``depth`` convolutions of ``width`` channels, IF neurons, residual output.

    Layers: Conv(1 -> width) + IF, ``depth - 2`` x [Conv(width -> width) + IF], Conv(width -> 1) read out by an
    Integrator (``readout="membrane"``) or by an IF neuron's spike count (``"count"``). Thresholds (one per layer)
    are calibrated on :func:`calibration_frame` so each layer fires at about ``rate`` spikes per neuron per step.
    The decoder shift is chosen so the predicted noise residual has a standard deviation of about 10 grey levels.
    """
    from edgespike.runtime import conv_nhwc

    if depth < 2:
        raise ValueError("depth must be at least 2")
    rng = np.random.default_rng(seed)
    frame = calibration_frame(calib_size, seed)
    if encoder == "direct":
        x = frame[None, :, :, None].astype(np.int64)
    elif encoder == "uwe":
        x = np.stack([(frame >> (7 - t)) & 1 for t in range(T)])[..., None].astype(np.int64)
    else:
        raise ValueError("dncnn_like supports encoders 'direct' and 'uwe'")
    nodes = []
    prev = INPUT
    cin = 1
    for i in range(depth - 1):
        w = np.clip(np.rint(rng.normal(0, 40, (width, cin, kernel, kernel))), -127, 127).astype(np.int8)
        b = rng.integers(-20, 21, width).astype(np.int32)
        cur = conv_nhwc(x, np.ascontiguousarray(w.transpose(2, 3, 1, 0)).astype(np.int64), 1) + b
        # Binary search the threshold that gives the target rate (rate is monotone decreasing in theta).
        lo, hi = 1, int(np.abs(cur).max()) * 2 + 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if _if_spikes(cur, mid, T).mean() > rate:
                lo = mid
            else:
                hi = mid
        theta = hi
        x = _if_spikes(cur, theta, T).astype(np.int64)
        nodes += [Conv(f"conv{i}", prev, w, b), Neuron(f"if{i}", f"conv{i}", np.full(width, theta, np.int32),
                                                       v_init="half")]
        prev, cin = f"if{i}", width
    w = np.clip(np.rint(rng.normal(0, 40, (1, cin, kernel, kernel))), -127, 127).astype(np.int8)
    b = np.zeros(1, np.int32)
    last = depth - 1
    cur = conv_nhwc(x, np.ascontiguousarray(w.transpose(2, 3, 1, 0)).astype(np.int64), 1)
    if readout == "membrane":
        nodes += [Conv(f"conv{last}", prev, w, b), Integrator("out", f"conv{last}")]
        spread = float(cur.sum(axis=0).std()) + 1.0
        term = ReadoutTerm("out", "membrane", np.array([1], np.int32))
    elif readout == "count":
        theta = max(1, int(np.abs(cur).mean()))
        nodes += [Conv(f"conv{last}", prev, w, b + theta * T // 2),
                  Neuron("out", f"conv{last}", np.array([theta], np.int32), v_init="half")]
        spread = 1.0
        term = ReadoutTerm("out", "count", np.array([-8], np.int32))
    else:
        raise ValueError("readout must be 'membrane' or 'count'")
    shift = max(0, int(np.ceil(np.log2(spread / 10.0))))
    return Model(nodes=nodes, timesteps=T, encoder=Encoder(encoder),
                 decoder=Decoder([term], shift=shift, residual=True),
                 metadata={"generator": f"edgespike.testing.dncnn_like(depth={depth}, width={width}, T={T}, "
                                        f"seed={seed}, rate={rate})"})


# --------------------------------------------------------------------------- hypothesis strategies


def _rand_model(draw_int, draw_bool, draw_choice, seed: int) -> Model:
    """Build one random model from primitive draws (kept separate from hypothesis to be reusable)."""
    rng = np.random.default_rng(seed)
    encoder = draw_choice(["direct", "uwe", "rate"])
    T = 8 if encoder == "uwe" else draw_int(1, 4)
    mprn_model = draw_bool() and draw_bool()
    big = draw_int(0, 7) == 0  # large biases/thresholds: bounds >= 2**24 force the float64 path
    wmax = draw_choice([3, 20, 127])
    nodes: list = []
    info = {INPUT: (1, 0, encoder != "direct")}  # name -> (channels, level, binary)
    counter = [0]

    def fresh(prefix: str) -> str:
        counter[0] += 1
        return f"{prefix}{counter[0]}"

    def weights(cout, cin, k):
        return rng.integers(-wmax, wmax + 1, (cout, cin, k, k)).astype(np.int8)

    def bias(cout):
        scale = 2**20 if big else 30
        return rng.integers(-scale, scale + 1, cout).astype(np.int32)

    def conv(src, cout, k, stride, dilation=1):
        c, lvl, _ = info[src]
        name = fresh("c")
        extra = weights(cout, c, k) if (mprn_model and draw_bool()) else None
        nodes.append(Conv(name, src, weights(cout, c, k), bias(cout), stride=stride, weight_extra=extra,
                          dilation=dilation))
        info[name] = (cout, lvl + (stride == 2), False)
        return name

    def convt(src, cout):
        c, lvl, _ = info[src]
        k, p, op = draw_choice([(2, 0, 0), (3, 1, 1), (4, 1, 0)])
        name = fresh("t")
        nodes.append(ConvTranspose(name, src, weights(cout, c, k), bias(cout), padding=p, output_padding=op))
        info[name] = (cout, lvl - 1, False)
        return name

    # some models mix bit-plane and IF layers; not with the large biases of `big`, which decoded over 2**T - 1
    # steps would need more than 32 bits (those models are refused by analyse(), not what this draws)
    bitplane = not mprn_model and not big and draw_int(0, 2) > 0

    def neuron(src):
        c, lvl, _ = info[src]
        name = fresh("n")
        if bitplane and draw_int(0, 3) > 0:
            # thresholds small enough that theta << (T-1) fits the 32-bit membranes at T = 8
            theta = rng.integers(1, 2**16 if big else 400, c).astype(np.int32)
            b = rng.integers(-2**20 if big else -300, (2**20 if big else 300) + 1, c).astype(np.int32)
            nodes.append(BitPlaneNeuron(name, src, theta, b))
            info[name] = (c, lvl, True)
            return name
        hi = 2**24 if big else 400
        theta = rng.integers(1, hi, c).astype(np.int32)
        if draw_bool():
            theta[:] = theta[0]
        mprn = None
        if mprn_model and draw_bool():
            den = draw_int(1, 8)
            mprn = (draw_int(1, den), den)
        nodes.append(Neuron(name, src, theta, reset=draw_choice(["soft", "hard"]),
                            leak_shift=draw_choice([0, 0, 1, 3]), v_init=draw_choice(["zero", "half"]), mprn=mprn))
        info[name] = (c, lvl, True)
        return name

    cur = INPUT
    skips: dict[int, list[str]] = {0: [INPUT]}
    for _ in range(draw_int(1, 4)):
        c, lvl, _ = info[cur]
        op = draw_choice(["conv", "conv", "down", "up", "add", "concat", "current"])
        if op == "down" and lvl < 2:
            cur = neuron(conv(cur, draw_int(1, 4), draw_choice([1, 3, 5]), 2))
        elif op == "up" and lvl > 0:
            cur = neuron(convt(cur, draw_int(1, 4)))
        elif op in ("add", "concat"):
            same = [n for n in skips.get(lvl, []) if n != cur and (op == "concat" or info[n][0] == c)]
            if same:
                other = draw_choice(same)
                name = fresh("a" if op == "add" else "cat")
                nodes.append((Add if op == "add" else Concat)(name, (cur, other)))
                info[name] = (c if op == "add" else c + info[other][0], lvl,
                              op == "concat" and info[cur][2] and info[other][2])
                cur = name
                if draw_bool():
                    cur = neuron(conv(cur, draw_int(1, 4), draw_choice([1, 3]), 1))
            else:
                cur = neuron(conv(cur, draw_int(1, 4), 3, 1))
        elif op == "current":  # a conv feeding a conv directly: non-binary input
            cur = conv(conv(cur, draw_int(1, 3), draw_choice([1, 3]), 1, draw_choice([1, 2])), draw_int(1, 3), 1, 1)
            cur = neuron(cur)
        else:  # dilated now and then (taps 2 or 3 pixels apart: wider than the small frames drawn, at times)
            cur = neuron(conv(cur, draw_int(1, 4), draw_choice([1, 3, 5]), 1, draw_choice([1, 1, 2, 3])))
        skips.setdefault(info[cur][1], []).append(cur)
    while info[cur][1] > 0:  # back to full resolution, U-net style: concat with the skip at each level
        cur = neuron(convt(cur, draw_int(1, 3)))
        lvl = info[cur][1]
        if skips.get(lvl) and draw_bool():
            other = draw_choice(skips[lvl])
            name = fresh("cat")
            nodes.append(Concat(name, (cur, other)))
            info[name] = (info[cur][0] + info[other][0], lvl, info[cur][2] and info[other][2])
            cur = name

    readout = draw_choice(["membrane", "count", "uwd", "recycle", "neuron_membrane"])
    if readout == "uwd" and (mprn_model or T > 30):
        readout = "count"
    head = conv(cur, 1, draw_choice([1, 3]), 1)
    mult = lambda: np.array([draw_int(-40, 40)], np.int32)  # noqa: E731
    if readout == "membrane":
        integ = fresh("int")
        uwd = bitplane and draw_bool()
        nodes.append(Integrator(integ, head, uwd=uwd,
                                bias=np.array([draw_int(-500, 500)], np.int32) if draw_bool() else None))
        terms = [ReadoutTerm(integ, "membrane", mult())]
    elif readout in ("count", "uwd", "neuron_membrane"):
        n = neuron(head)
        terms = [ReadoutTerm(n, "membrane" if readout == "neuron_membrane" else readout, mult())]
    else:  # SpikingIR recycling: Mapper(rate) via an Integrator plus the last neuron's residual membrane
        n = neuron(head)
        mapper = conv(n, 1, 1, 1)
        integ = fresh("int")
        nodes.append(Integrator(integ, mapper))
        terms = [ReadoutTerm(integ, "membrane", mult()), ReadoutTerm(n, "membrane", mult())]
    if mprn_model and not any(isinstance(nd, Neuron) and nd.mprn for nd in nodes):
        for nd in nodes:
            if isinstance(nd, Neuron):
                nd.mprn = (1, 2)
                break
    if any(t.quantity == "uwd" for t in terms) and any(isinstance(nd, Neuron) and nd.mprn for nd in nodes):
        for t in terms:
            if t.quantity == "uwd":
                t.quantity = "count"
    return Model(nodes=nodes, timesteps=T, encoder=Encoder(encoder, seed=int(rng.integers(0, 2**32))),
                 decoder=Decoder(terms, shift=draw_int(0, 12), residual=draw_bool()))


def models():
    """Hypothesis strategy: small random valid models over every node, neuron, encoder and decoder kind."""
    from hypothesis import strategies as st

    @st.composite
    def strategy(draw):
        seed = draw(st.integers(0, 2**32 - 1))
        return _rand_model(lambda a, b: draw(st.integers(a, b)), lambda: draw(st.booleans()),
                           lambda xs: draw(st.sampled_from(xs)), seed)

    return strategy()


def frames(max_side: int = 12, large: bool = True):
    """Hypothesis strategy: uint8 frames with sides 1..``max_side`` (1x1 and 3x7 included), and occasionally
    257x255 when ``large``."""
    from hypothesis import strategies as st

    sizes = st.one_of(st.just((1, 1)), st.just((3, 7)),
                      st.tuples(st.integers(1, max_side), st.integers(1, max_side)))

    @st.composite
    def strategy(draw):
        # The large size is drawn rarely (1 in 40) and not where shrinking goes (0 -> a small frame).
        h, w = (257, 255) if large and draw(st.integers(0, 39)) == 39 else draw(sizes)
        seed = draw(st.integers(0, 2**32 - 1))
        return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)

    return strategy()


# --------------------------------------------------------------------------- bit-plane networks


def bitplane_dncnn(depth: int = 4, width: int = 8, T: int = 8, seed: int = 0, down: bool = False,
                   encoder: str | None = None, calib: np.ndarray | None = None,
                   dilations: tuple[int, ...] | None = None) -> Model:
    """A DnCNN-shaped network of bit-plane layers (conv + ``BitPlaneNeuron``, a ``uwd`` Integrator read-out) with
    random int8 weights, thresholds calibrated on ``calib`` (default :func:`calibration_frame`) so that the
    activations use their ``2**T`` levels, and random neuron biases; ``down`` gives the shipped shape (5x5 stride-2
    conv in, 6x6 stride-2 transposed conv out). ``encoder`` defaults to ``uwe`` at T = 8, ``direct`` otherwise.
    ``dilations`` (one per layer, stride-1 layers only) spaces each layer's taps, as IRCNN's 1, 2, 3, 4, 3, 2, 1."""
    from edgespike.reference import conv2d, conv_transpose2d

    rng = np.random.default_rng(seed)
    encoder = encoder or ("uwe" if T == 8 else "direct")
    calib = calibration_frame(48, seed) if calib is None else calib
    levels = 2**T - 1
    gain = 1 if encoder == "uwe" else levels  # the decoded input is x (uwe) or (2**T - 1) x (direct)
    q = calib.astype(np.int64)[None]
    nodes: list = []
    src = INPUT
    for i in range(depth):
        cin = 1 if i == 0 else width
        last = i == depth - 1
        cout = 1 if last else width
        k = (5 if i == 0 else 6 if last else 3) if down else 3
        w = rng.integers(-127, 128, (cout, cin, k, k)).astype(np.int8)
        zero = np.zeros(cout, np.int32)
        if down and last:
            nodes.append(ConvTranspose(f"conv{i + 1}", src, w, zero, padding=2))
            z = conv_transpose2d(q, w, 2)
        else:
            stride = 2 if (down and i == 0) else 1
            dil = dilations[i] if dilations else 1
            nodes.append(Conv(f"conv{i + 1}", src, w, zero, stride=stride, dilation=dil))
            z = conv2d(q, w, stride, dil)
        if i == 0:
            z = z * gain
        if last:
            bias = rng.integers(-1000, 1001, 1).astype(np.int32)
            nodes.append(Integrator("readout", f"conv{i + 1}", uwd=True, bias=bias))
            break
        top = np.quantile(np.abs(z).reshape(cout, -1), 0.99, axis=1)
        theta = np.maximum(1, top / levels).astype(np.int32)
        bias = (rng.integers(-2, 3, cout) * theta // 4).astype(np.int32)
        nodes.append(BitPlaneNeuron(f"bp{i + 1}", f"conv{i + 1}", theta, bias))
        q = np.clip((z + bias[:, None, None]) // theta[:, None, None].astype(np.int64), 0, levels)
        src = f"bp{i + 1}"
    dec = Decoder([ReadoutTerm("readout", "membrane", np.array([int(rng.integers(1, 64))], np.int32))],
                  shift=int(rng.integers(8, 20)), residual=True)
    return Model(nodes=nodes, timesteps=T, encoder=Encoder(encoder), decoder=dec)
