"""Small random DnCNN-shaped models for tests and for profiling before a trained model exists.

Weights are random int8; thresholds are calibrated on a frame so that every layer fires at a realistic rate
(a random net with arbitrary thresholds is either silent or saturated, which profiles nothing). The read-out gain
makes the residual a few tens of grey levels, like a denoiser's.
"""

from __future__ import annotations

import math

import numpy as np

from edgespike.model import Conv, Decoder, Encoder, Integrator, Model, Neuron, ReadoutTerm
from edgespike.profile.floatconv import conv_same


def _decoder_constants(target: float) -> tuple[int, int]:
    s = min(62, int(math.floor(math.log2((2**31 - 1) / target))))
    return max(1, int(round(target * 2**s))), s


def random_dncnn(depth: int = 4, width: int = 8, timesteps: int = 4, seed: int = 0,
                 frame: np.ndarray | None = None, quantile: float = 0.98, v_init: str = "half",
                 reset: str = "soft", leak_shift: int = 0, mprn: tuple[int, int] | None = None) -> Model:
    """A ``depth``-conv DnCNN-shaped SNN (conv+IF, ..., conv+Integrator, residual) with random int8 weights.

    Parameters
    ----------
    frame : uint8 array, optional
        Calibration frame for the thresholds (default: a smooth random 32x32 image).
    quantile : float
        Threshold = this quantile of each channel's positive mean current: rates end up mostly below 1.
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
        w = np.clip(np.rint(rng.normal(0, 45, (chans[i + 1], chans[i], 3, 3))), -127, 127).astype(np.int8)
        cur = conv_same(a, w, np.float64)
        b = np.rint(rng.normal(0, 0.3, chans[i + 1]) * cur.std(axis=(0, 1))).astype(np.int32)
        cur = cur + b
        name = f"conv{i + 1}"
        nodes.append(Conv(name=name, input=src, weight=w, bias=b))
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
