"""VTSNN (Qiu et al. 2023): UWE input coding, a small U-net of IF neurons without biases, UWD output decoding
(T = 8), trained with ITBP or the STBP baseline.

* UWE: step t carries bit plane ``7 - t`` of the pixel (MSB first); UWD: ``sum_t o_t 2**(7 - t)``. Both are the
  format's ``uwe`` encoder and ``uwd`` read-out, so the runtime is lossless by construction.
* U-net (small, for 2 CPU cores): conv(1->C)+IF, stride-2 conv(C->2C)+IF, conv(2C->2C)+IF, transposed
  conv(2C->C)+IF, concat with the first layer's spikes, conv(2C->C)+IF, 1x1 conv(C->1)+IF. No biases; IF with
  soft reset (SpikingJelly's ``v_reset=None``), ``v0 = 0``, fixed thresholds 1.0, and 0.077 after the 1x1 conv
  (the paper's values; real units, gain-compensated into the integers).
* ITBP (Independent-Temporal BackPropagation): the label is UWE-encoded and the loss is
  ``sum_t 2**(7-t) mean((o_t - l_t)**2)`` on the output spike planes (the paper's ``sum_t 2^t ||o_t - o_hat_t||^2``
  with its MSB-first bit index); no decoding in training, and errors propagate only through the layers (the
  membranes' step-to-step path carries no gradient).
* STBP baseline: ``mean((UWD(o) - y)**2)`` on the decoded image (the paper's eq. 9), in [0, 1] units, with
  gradients through layers and time (BPTT).
"""

from __future__ import annotations

import torch

from edgespike.train.methods import common
from edgespike.train.methods.graph import ConcatSpec, ConvSpec, NeuronSpec, QGraph, Term, uwe_planes

NAME = "vtsnn"
HELP = "VTSNN: UWE/UWD coding (T = 8), spiking U-net without biases, ITBP or STBP loss"
T = 8
OUT = "out"


def add_arguments(p) -> None:
    p.add_argument("--width", type=int, default=16, help="U-net channels at full resolution (default 16)")
    p.add_argument("--loss", choices=("itbp", "stbp"), default="itbp")


def unet(width: int, seed: int = 0) -> QGraph:
    C = width

    def neuron(name, src, theta=1.0):
        return NeuronSpec(name, src, theta=theta, learn_theta=False, reset="soft", v_init="zero")

    specs = [
        ConvSpec("enc1", "input", 1, C, bias=False), neuron("n_enc1", "enc1"),
        ConvSpec("down", "n_enc1", C, 2 * C, stride=2, bias=False), neuron("n_down", "down"),
        ConvSpec("mid", "n_down", 2 * C, 2 * C, bias=False), neuron("n_mid", "mid"),
        ConvSpec("up", "n_mid", 2 * C, C, k=4, transpose=True, padding=1, bias=False), neuron("n_up", "up"),
        ConcatSpec("skip", ("n_up", "n_enc1")),
        ConvSpec("dec1", "skip", 2 * C, C, bias=False), neuron("n_dec1", "dec1"),
        ConvSpec("head", "n_dec1", C, 1, k=1, bias=False), neuron(OUT, "head", theta=0.077),
    ]
    return QGraph(specs, T, "uwe", [Term(OUT, "uwd")], residual=False, seed=seed)


def bit_weights(T: int = T) -> torch.Tensor:
    """The ITBP weight of step t: ``2**(T-1-t)`` (step 0 carries the most significant bit)."""
    return 2.0 ** torch.arange(T - 1, -1, -1, dtype=torch.float64)


def itbp_loss_planes(out: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """``sum_t 2**(T-1-t) * mean((out_t - label_t)**2)`` for spike planes ``[T, ...]``."""
    w = bit_weights(out.shape[0]).to(out.dtype)
    per_step = (out - label).pow(2).flatten(1).mean(1)
    return (w * per_step).sum()


def uwd(out: torch.Tensor) -> torch.Tensor:
    """UWD of spike planes ``[T, ...]``: ``sum_t o_t 2**(T-1-t)``."""
    w = bit_weights(out.shape[0]).to(out.dtype)
    return (w.view(-1, *[1] * (out.dim() - 1)) * out).sum(0)


def stbp_loss_planes(out: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """``mean((UWD(out) - clean)**2)`` in [0, 1] units (``clean`` in pixels 0..255)."""
    return ((uwd(out) - clean) / 255.0).pow(2).mean()


def itbp_loss(g: QGraph, clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """ITBP: the bit-plane loss, gradients through the layers only (no backpropagation through time)."""
    res = g.simulate(noisy, temporal=False)
    return itbp_loss_planes(res.spikes[OUT], uwe_planes(clean, T))


def stbp_loss(g: QGraph, clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """STBP: the loss of the decoded image, gradients through layers and time (BPTT)."""
    res = g.simulate(noisy)
    return stbp_loss_planes(res.spikes[OUT], clean)


def setup(a):
    g = unet(a.width, a.seed)
    loss = itbp_loss if a.loss == "itbp" else stbp_loss
    phases = [common.Phase(a.loss, loss, a.minutes, a.iters, a.lr, a.batch, a.patch)]
    return g, phases, (f"VTSNN U-net width {a.width}, IF (soft reset, Vth 1.0 / 0.077), no biases, UWE in, "
                       f"UWD out, T=8, {a.loss.upper()} loss")
