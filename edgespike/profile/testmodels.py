"""Small random DnCNN-shaped models for tests and for profiling before a trained model exists.

``down=True`` gives the half-resolution body of the default model (FFDNet style, as
``edgespike.train.qnet.QSpikingDnCNN(down=True)`` builds it): a 5x5 stride-2 first conv, 3x3 convs at half
resolution, and a 6x6 stride-2 transposed read-out conv with padding 2 that doubles the size back.

Weights are random int8; thresholds are calibrated on a frame so that every layer fires at a realistic rate
(a random net with arbitrary thresholds is either silent or saturated, which profiles nothing). The read-out gain
makes the residual a few tens of grey levels, like a denoiser's.
"""

from __future__ import annotations

import math

import numpy as np

from edgespike.model import Conv, ConvTranspose, Decoder, Encoder, Integrator, Model, Neuron, ReadoutTerm
from edgespike.twin import conv2d, conv_transpose2d

DOWN_KERNEL = 5  # the half-resolution body's first conv: 5x5, stride 2 (as in edgespike.train.qnet)
UP_KERNEL, UP_PADDING = 6, 2  # its read-out: 6x6 transposed conv, stride 2, padding 2


def _decoder_constants(target: float) -> tuple[int, int]:
    s = min(62, int(math.floor(math.log2((2**31 - 1) / target))))
    return max(1, int(round(target * 2**s))), s


def random_dncnn(depth: int = 4, width: int = 8, timesteps: int = 4, seed: int = 0,
                 frame: np.ndarray | None = None, quantile: float = 0.98, v_init: str = "half",
                 reset: str = "soft", leak_shift: int = 0, mprn: tuple[int, int] | None = None,
                 down: bool = False) -> Model:
    """A ``depth``-conv DnCNN-shaped SNN (conv+IF, ..., conv+Integrator, residual) with random int8 weights.

    Parameters
    ----------
    frame : uint8 array, optional
        Calibration frame for the thresholds (default: a smooth random 32x32 image).
    quantile : float
        Threshold = this quantile of each channel's positive mean current: rates end up mostly below 1.
    down : bool
        Half-resolution body: 5x5 stride-2 first conv and a 6x6 stride-2 transposed read-out (padding 2).
        The calibration frame's sides must then be even.
    """
    rng = np.random.default_rng(seed)
    if frame is None:
        base = rng.integers(40, 216, (8, 8)).astype(np.float64)
        frame = np.clip(np.kron(base, np.ones((4, 4))) + rng.normal(0, 20, (32, 32)), 0, 255).astype(np.uint8)
    chans = [1] + [width] * (depth - 1) + [1]
    nodes = []
    a = frame.astype(np.float64)[..., None]  # rate-domain activity of the previous layer (pixels first)
    src = "input"
    for i in range(depth):
        first, last = down and i == 0, down and i == depth - 1
        k = DOWN_KERNEL if first else UP_KERNEL if last else 3
        w = np.clip(np.rint(rng.normal(0, 45, (chans[i + 1], chans[i], k, k))), -127, 127).astype(np.int8)
        chw = np.moveaxis(a, -1, 0)
        if last:
            cur = np.moveaxis(conv_transpose2d(chw, w.astype(np.float64), UP_PADDING), 0, -1)
        else:
            cur = np.moveaxis(conv2d(chw, w.astype(np.float64), 2 if first else 1), 0, -1)
        b = np.rint(rng.normal(0, 0.3, chans[i + 1]) * cur.std(axis=(0, 1))).astype(np.int32)
        cur = cur + b
        name = f"conv{i + 1}"
        if last:
            nodes.append(ConvTranspose(name=name, input=src, weight=w, bias=b, padding=UP_PADDING))
        else:
            nodes.append(Conv(name=name, input=src, weight=w, bias=b, stride=2 if first else 1))
        if i < depth - 1:
            theta = np.array([max(1.0, np.quantile(c[c > 0], quantile)) if np.any(c > 0) else 1.0
                              for c in np.moveaxis(cur, -1, 0)])
            th = np.maximum(1, np.rint(theta)).astype(np.int32)
            nodes.append(Neuron(name=f"if{i + 1}", input=name, threshold=th, reset=reset, leak_shift=leak_shift,
                                v_init=v_init, mprn=mprn))
            a = np.clip(cur / th, 0, 1)
            src = f"if{i + 1}"
        else:
            nodes.append(Integrator(name="readout", input=name))
            # residual ~ 20 grey levels rms: pixels = (m / 2**s) * T * mean current
            gain = 20.0 / max(float(cur.std()), 1e-6) / timesteps
            m, s = _decoder_constants(gain)
    dec = Decoder(terms=[ReadoutTerm("readout", "membrane", np.array([m], np.int32))], shift=s, residual=True)
    return Model(nodes=nodes, timesteps=timesteps, encoder=Encoder("direct"), decoder=dec, membrane_bits=32,
                 metadata={"task": "random test model", "seed": seed})


def random_graph(timesteps: int = 4, seed: int = 0, frame: np.ndarray | None = None, quantile: float = 0.98,
                 ) -> Model:
    """A small random graph with every node kind the int8 twins support (frame sides must be even)::

        input -> conv1 (3x3, stride 2, 1->4) -> if1 -> conv2 (3x3, 4->4) -> if2 -> add = if1 + if2
        add -> up1 (ConvTranspose 3x3, padding 1, output_padding 1, 4->3) -> if3
        add -> up2 (ConvTranspose 4x4, padding 1, 4->2) -> if4
        cat = Concat(input, if3, if4) -> conv3 (3x3, 6->1) -> Integrator (residual read-out)

    Thresholds are calibrated on ``frame`` (default: a smooth random 32x32 image) with the rate twin of
    :mod:`edgespike.twin`, layer by layer, as :func:`random_dncnn` does.
    """
    from edgespike.model import Add, Concat
    from edgespike.twin import Twin

    rng = np.random.default_rng(seed)
    if frame is None:
        base = rng.integers(40, 216, (8, 8)).astype(np.float64)
        frame = np.clip(np.kron(base, np.ones((4, 4))) + rng.normal(0, 20, (32, 32)), 0, 255).astype(np.uint8)

    def weights(o, i, k):
        return np.clip(np.rint(rng.normal(0, 45, (o, i, k, k))), -127, 127).astype(np.int8)

    def neuron(name, src, c):
        return Neuron(name=name, input=src, threshold=np.ones(c, np.int32), v_init="half")

    zeros = lambda c: np.zeros(c, np.int32)  # noqa: E731
    nodes = [Conv("conv1", "input", weights(4, 1, 3), zeros(4), stride=2), neuron("if1", "conv1", 4),
             Conv("conv2", "if1", weights(4, 4, 3), zeros(4)), neuron("if2", "conv2", 4),
             Add("add", ("if1", "if2")),
             ConvTranspose("up1", "add", weights(3, 4, 3), zeros(3), padding=1, output_padding=1),
             neuron("if3", "up1", 3),
             ConvTranspose("up2", "add", weights(2, 4, 4), zeros(2), padding=1), neuron("if4", "up2", 2),
             Concat("cat", ("input", "if3", "if4")), Conv("conv3", "cat", weights(1, 6, 3), zeros(1)),
             Integrator("readout", "conv3")]
    dec = Decoder(terms=[ReadoutTerm("readout", "membrane", np.array([1], np.int32))], shift=0, residual=True)
    model = Model(nodes=nodes, timesteps=timesteps, encoder=Encoder("direct"), decoder=dec, membrane_bits=32,
                  metadata={"task": "random test graph", "seed": seed})
    for n in nodes:  # each threshold from the currents its neuron sees with the thresholds before it set
        if isinstance(n, Neuron):
            cur = Twin(model, mode="relu", dtype=np.float64).values(frame)[n.input]
            n.threshold = np.array([max(1.0, np.quantile(c[c > 0], quantile)) if np.any(c > 0) else 1.0
                                    for c in cur]).round().astype(np.int32)
    cur = Twin(model, mode="relu", dtype=np.float64).values(frame)["readout"]
    m, s = _decoder_constants(20.0 / max(float(cur.std()), 1e-6) / timesteps)
    model.decoder = Decoder(terms=[ReadoutTerm("readout", "membrane", np.array([m], np.int32))], shift=s,
                            residual=True)
    return model


def polyphase_blur(depth: int = 4, timesteps: int = 8, frame: np.ndarray | None = None, quantile: float = 0.99,
                   ) -> Model:
    """A hand-made half-resolution denoiser of the default model's shape: it outputs a 3x3 box blur of the frame.

    The residual to predict is the high-pass ``hp = x - box3x3(x)``. ``conv1`` (5x5, stride 2, 1->8) computes
    ``9 hp`` at the four pixels ``(2y + a, 2x + b)`` of each half-resolution cell (the tap of pixel ``2y + a`` is
    ``a + 2``, and its 3x3 neighbourhood fits in the 5x5 kernel), once with each sign, so that IF neurons carry
    its positive and negative parts as rates; ``depth - 2`` 3x3 convs (8->8) pass the spikes on unchanged (centre
    weight 127 = threshold); the 6x6 transposed read-out (stride 2, padding 2) puts channel ``(a, b, sign)`` back
    at pixel ``(2y + a, 2x + b)`` with weight +-1, and the decoder scales the Integrator's spike count to pixels.
    The threshold (in units of ``9 hp``) is the ``quantile`` of ``|9 hp|`` on ``frame`` (default 360, i.e. hp
    clipped at 40 grey levels), so larger details are kept partly. Real denoising (sigma 25: 20.5 -> 26.4 dB on
    129x97 crops of Set12 01-02) from a network with no training, so that the profiler's PSNR
    figures mean something in tests.
    """
    if depth < 2:
        raise ValueError("depth must be >= 2")
    hp = np.full((3, 3), -1, np.int8)
    hp[1, 1] = 8
    w1 = np.zeros((8, 1, 5, 5), np.int8)
    up = np.zeros((1, 8, 6, 6), np.int8)
    for ch in range(8):
        a, b, sign = (ch >> 2) & 1, (ch >> 1) & 1, 1 - 2 * (ch & 1)
        w1[ch, 0, a + 1:a + 4, b + 1:b + 4] = sign * hp
        up[0, ch, a + 2, b + 2] = sign
    theta = 360
    if frame is not None:
        x = frame.astype(np.float64)
        box = sum(np.roll(np.roll(x, i, 0), j, 1) for i in (-1, 0, 1) for j in (-1, 0, 1))
        theta = max(1, int(round(np.quantile(np.abs(9 * x - box)[1:-1, 1:-1], quantile))))
    ident = np.zeros((8, 8, 3, 3), np.int8)
    ident[np.arange(8), np.arange(8), 1, 1] = 127
    zeros = np.zeros(8, np.int32)
    nodes = [Conv("conv1", "input", w1, zeros, stride=2),
             Neuron("if1", "conv1", np.full(8, theta, np.int32), v_init="half")]
    for i in range(2, depth):
        nodes += [Conv(f"conv{i}", f"if{i - 1}", ident, zeros),
                  Neuron(f"if{i}", f"conv{i}", np.full(8, 127, np.int32), v_init="half")]
    nodes += [ConvTranspose(f"conv{depth}", f"if{depth - 1}", up, np.zeros(1, np.int32), padding=UP_PADDING),
              Integrator("readout", f"conv{depth}")]
    # residual in pixels = hp = (spike count / T) * theta / 9
    m, s = _decoder_constants(theta / 9.0 / timesteps)
    dec = Decoder(terms=[ReadoutTerm("readout", "membrane", np.array([m], np.int32))], shift=s, residual=True)
    return Model(nodes=nodes, timesteps=timesteps, encoder=Encoder("direct"), decoder=dec, membrane_bits=32,
                 metadata={"task": "hand-made 3x3 box blur, half-resolution body", "theta": theta})
