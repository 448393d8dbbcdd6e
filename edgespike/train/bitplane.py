"""The bit-plane spiking DnCNN: a quantisation-aware integer ANN that *is* the spiking network.

A bit-plane layer (``docs/SEMANTICS.md`` section 5.5) decodes its T input planes MSB first (the UWD: the membrane
doubles before each step), adds its bias once, and emits the T bits of ``clip(floor(V / Theta), 0, 2**T - 1)``
MSB first (the UWE, successive approximation). A network of such layers therefore equals, bit for bit, the integer
quantised ANN

    q_0 = x (pixels 0..255),    q_l = clip(floor((W_l q_{l-1} + B_l) / Theta_l), 0, 2**T - 1),
    V   = W_L q_{L-1} + B_L    (the read-out: residual = 255 * u_L * V pixels)

with int8 weights ``W_l`` (per output channel), int32 biases ``B_l`` (the rounding offset ``Theta >> 1``
included) and integer per-channel thresholds ``Theta_l``. No spiking dynamics have to be simulated to train it:
this module trains that integer ANN directly.

Parameters are float weights/biases and one learned activation step ``s_l`` per hidden layer (the real value of
one activation unit, learned in the log domain: LSQ, Esser et al. 2020). :meth:`BitPlaneDnCNN.integerise` maps them
to integers; with ``u_l = s_{l-1} * max|w_l|[c] / 127`` (``s_0 = 1/255``, the pixel unit):

* ``W_l = round(w_l / max|w_l|[c] * 127)``, ``B_l = round(b_l / u_l) + (Theta_l >> 1)``,
  ``Theta_l = round(s_l / u_l)`` (>= 1);
* read-out: ``V`` decoded as ``(m V + 2**(s-1)) >> s`` pixels with ``m / 2**s ~= 255 u_L``.

Rounding uses straight-through gradients; the forward pass of :meth:`BitPlaneDnCNN.qforward` computes exactly
the integers above (in float32 it is exact while every accumulator stays below 2**24; :func:`predict_uint8`
uses float64). Phase one of training (:meth:`BitPlaneDnCNN.float_forward`) is a plain ReLU network of the same
shape; :meth:`BitPlaneDnCNN.init_steps` then sets each ``s_l`` from the activations' range.

``down=True`` (the shipped shape) runs the body at half resolution: a 5x5 stride-2 conv of the pixels, 3x3 convs
at half resolution, and a 6x6 stride-2 transposed conv (padding 2) back to full resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgespike.frames import pad_to_multiple

# The shapes, the straight-through rounding and the integer decoder are those of the rate-coded network.
from edgespike.train.qnet import (
    UP_PADDING,
    WEIGHT_MAX,
    decode,
    dncnn_conv,
    dncnn_parameters,
    round_ste,
    ste,
)
from edgespike.train.qnet import decoder_constants as _rate_decoder_constants


@dataclass
class BitPlaneIntegers:
    """The integer tensors of one network (float tensors holding exact integers, with STE gradients)."""

    weights: list[torch.Tensor]  # W_l, [C_out, C_in, k, k]
    biases: list[torch.Tensor]  # B_l (hidden layers: Theta >> 1 included), [C_out]
    thetas: list[torch.Tensor]  # Theta_l per hidden layer, [C_out]
    units: list[torch.Tensor]  # u_l: the real value of one unit of layer l's accumulator, [C_out]
    multiplier: int
    shift: int

    def double(self) -> BitPlaneIntegers:
        """The same integers as detached float64 tensors (exact simulation of large frames)."""
        def f(ts):
            return [t.detach().double() for t in ts]
        return BitPlaneIntegers(f(self.weights), f(self.biases), f(self.thetas), f(self.units), self.multiplier,
                                self.shift)


class BitPlaneDnCNN(nn.Module):
    """DnCNN-shaped network of bit-plane layers: conv(1->C), (D-2) x conv(C->C), conv(C->1), residual.

    Parameters
    ----------
    depth : int
        Number of conv layers D (>= 2); D - 1 of them are followed by a bit-plane neuron layer.
    width : int
        Channels C of the hidden layers.
    timesteps : int
        T: every hidden activation has ``2**T`` levels, carried by T spikes (bit planes).
    down : bool
        Half-resolution body: stride-2 first conv, stride-2 transposed read-out conv.
    dilations : tuple of int, optional
        The spacing of each layer's 3x3 taps (IRCNN's 1, 2, 3, 4, 3, 2, 1 widens a 7-layer network's view to 33
        pixels); one per layer, 1 for the strided ends of a half-resolution body. Default: all 1.
    batch_norm : bool
        Float phase only: batch normalisation after the conv of every middle layer (not the first, not the
        read-out), as DnCNN and IRCNN train; :meth:`fold_batch_norm` folds it into the conv weights and biases
        before the integers exist, so the exported model is the same plain stack.
    """

    def __init__(self, depth: int = 8, width: int = 64, timesteps: int = 8, down: bool = True,
                 channel_steps: bool = False, dilations: tuple[int, ...] | None = None, batch_norm: bool = False):
        super().__init__()
        if depth < 2:
            raise ValueError("depth must be >= 2")
        if not 1 <= timesteps <= 16:
            raise ValueError("timesteps must be 1..16")
        dilations = tuple(int(d) for d in dilations) if dilations else (1,) * depth
        if len(dilations) != depth or min(dilations) < 1:
            raise ValueError(f"dilations: one positive spacing per layer ({depth}), got {list(dilations)}")
        if down and (dilations[0] != 1 or dilations[-1] != 1):
            raise ValueError("a half-resolution body's strided first and last layers are not dilated")
        self.depth, self.width, self.T, self.down = depth, width, timesteps, down
        self.dilations = dilations
        self.weight, self.bias = dncnn_parameters(depth, width, down)
        # layer i (1 <= i <= depth - 2) normalises with norm[i - 1]; None once folded (or never used)
        self.norm = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(depth - 2)) if batch_norm else None
        # log of the activation step s_l of each hidden layer (real units, pixels / 255), one per layer or, with
        # channel_steps, one per channel (the semantics' thresholds are per channel anyway, so the exported model
        # costs nothing more); init_steps() sets them.
        shape = (depth - 1, width) if channel_steps else (depth - 1,)
        self.log_step = nn.Parameter(torch.full(shape, math.log(1.0 / 255)))

    @property
    def channel_steps(self) -> bool:
        """One activation step per channel (else one per layer)."""
        return self.log_step.dim() == 2

    def load_params(self, state: dict) -> None:
        """Load a state dict; per-layer steps spread over the channels when this network has per-channel ones
        (a per-layer checkpoint as the start of a per-channel QAT); a float state trained with batch
        normalisation into a network without it is folded on the way in."""
        state = dict(state)
        steps = state.get("log_step")
        if steps is not None and self.channel_steps and steps.dim() == 1:
            state["log_step"] = steps[:, None].expand(-1, self.width).clone()
        if self.norm is None and any(k.startswith("norm.") for k in state):
            self.norm = nn.ModuleList(nn.BatchNorm2d(self.width) for _ in range(self.depth - 2))
            self.load_state_dict(state)
            self.fold_batch_norm()
            return
        self.load_state_dict(state)

    @torch.no_grad()
    def recalibrate_batch_norm(self, batches) -> None:
        """Set each batch normalisation's running statistics to the exact mean and variance of its input over
        ``batches`` (noisy pixel patches, float [B,1,H,W] holding 0..255) for the current weights.

        Why: training normalises by each batch's own statistics and keeps running averages (momentum 0.1) for
        evaluation; while the weights still move fast those averages lag them, and the network in eval mode is
        worse than the one being trained (0.4-0.9 dB on Set12 early in a run). Validation and the fold into the
        convs use these recomputed statistics instead."""
        if self.norm is None:
            return
        training = self.training
        momenta = [bn.momentum for bn in self.norm]
        for bn in self.norm:
            bn.reset_running_stats()
            bn.momentum = None  # a cumulative average over the batches
        self.train()
        for x in batches:
            self.float_forward(x)
        for bn, m in zip(self.norm, momenta, strict=True):
            bn.momentum = m
        self.train(training)

    @torch.no_grad()
    def fold_batch_norm(self) -> None:
        """Fold each middle layer's batch normalisation (its running statistics: what the network computes in
        eval mode) into that layer's conv weights and bias, and drop it. Nothing happens without one."""
        if self.norm is None:
            return
        for i, bn in enumerate(self.norm, start=1):
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            self.weight[i].mul_(scale[:, None, None, None])
            self.bias[i].copy_((self.bias[i] - bn.running_mean) * scale + bn.bias)
        self.norm = None

    @property
    def levels(self) -> int:
        """Largest activation value, ``2**T - 1``."""
        return 2**self.T - 1

    @property
    def size_multiple(self) -> int:
        """Frames are edge-padded to a multiple of this, as the exported model's ``size_multiple``."""
        return 2 if self.down else 1

    def conv(self, i: int, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        """The linear map of layer ``i`` (a "same" conv; stride 2 / transposed for a half-resolution body)."""
        return dncnn_conv(self.down, self.depth, i, x, w, b, self.dilations[i])

    # ------------------------------------------------------------------ float phase
    def float_forward(self, pixels: torch.Tensor, return_acts: bool = False):
        """Plain ReLU network of the same shape. ``pixels``: float [B,1,H,W] holding 0..255; returns the
        predicted residual in pixels (and the hidden activations when ``return_acts``)."""
        x = pixels / 255.0
        acts = []
        for i in range(self.depth):
            x = self.conv(i, x, self.weight[i], self.bias[i])
            if self.norm is not None and 0 < i < self.depth - 1:
                x = self.norm[i - 1](x)
            if i < self.depth - 1:
                x = F.relu(x)
                acts.append(x)
        return (255.0 * x, acts) if return_acts else 255.0 * x

    @torch.no_grad()
    def init_steps(self, pixels: torch.Tensor, quantile: float = 0.9999) -> None:
        """Set each step ``s_l`` so that ``2**T - 1`` steps cover a high quantile of the layer's float
        activations (before quantisation-aware training)."""
        _, acts = self.float_forward(pixels, return_acts=True)
        for i, a in enumerate(acts):
            if self.channel_steps:
                v = a.transpose(0, 1).flatten(1)  # [C, pixels]
                v = v[:, torch.randperm(v.shape[1])[:200_000]]
                top = torch.quantile(v, quantile, dim=1)
                # a channel silent on these pixels gets its layer's step: a tiny one would make it fire at
                # full scale on the first input that reaches it
                whole = float(torch.quantile(v.flatten()[:2_000_000], quantile)) if v.numel() else 1.0
                top = torch.where(top > 1e-3 * whole, top, torch.tensor(max(whole, 1e-4)))
                self.log_step[i] = torch.log(top / self.levels)
                continue
            v = a.flatten()
            v = v[torch.randperm(v.numel())[:2_000_000]]
            top = float(torch.quantile(v, quantile)) if v.numel() else 1.0
            self.log_step[i] = math.log(max(top, 1e-4) / self.levels)

    # ------------------------------------------------------------------ integers
    def integerise(self) -> BitPlaneIntegers:
        """The exact integers of the network, differentiable through straight-through rounding."""
        if self.norm is not None:
            raise RuntimeError("fold_batch_norm() first: the integers are those of the plain conv stack")
        steps = self.log_step.exp()
        Ws, Bs, Ths, us = [], [], [], []
        prev = torch.tensor(1.0 / 255.0)
        for i in range(self.depth):
            w = self.weight[i]
            if prev.dim() == 1:
                # Per-channel steps of the input: its channel c counts in units of s[c], so the real weight of one
                # input unit is w[:, c] * s[c], which the int8 weights quantise per output channel.
                w = w * prev[None, :, None, None]
            # The per-channel weight scale is detached (its gradient through max() touches one weight and makes
            # it jitter); the steps s_l are what LSQ learns.
            wmax = w.detach().abs().amax(dim=(1, 2, 3)).clamp(min=1e-12)
            W = round_ste(w / wmax[:, None, None, None] * WEIGHT_MAX).clamp(-WEIGHT_MAX, WEIGHT_MAX)
            u = (1.0 if prev.dim() == 1 else prev) * wmax / WEIGHT_MAX
            B = round_ste(self.bias[i] / u)
            if i < self.depth - 1:
                Th = round_ste(steps[i] / u).clamp(min=1.0)
                Ths.append(Th)
                B = B + torch.floor(Th.detach() / 2)
                prev = steps[i]
            Ws.append(W)
            Bs.append(B)
            us.append(u)
        m, s = decoder_constants(float(us[-1][0].detach()))
        return BitPlaneIntegers(Ws, Bs, Ths, us, m, s)

    def qforward(self, pixels: torch.Tensor, ints: BitPlaneIntegers | None = None, return_V: bool = False,
                 return_q: bool = False):
        """The integer network. ``pixels``: float [B,1,H,W] holding 0..255. Returns the residual in pixels
        (float, before the decoder's rounding), or the integer read-out ``V`` when ``return_V``; with
        ``return_q`` also the list of hidden activations ``q_l`` (integers)."""
        ints = ints or self.integerise()
        q = pixels
        qs = []
        for i in range(self.depth - 1):
            z = self.conv(i, q, ints.weights[i]) + ints.biases[i][None, :, None, None]
            Th = ints.thetas[i][None, :, None, None]
            exact = torch.floor(z / Th).clamp(0, self.levels)
            q = ste(exact, (z / Th - 0.5).clamp(0, self.levels))
            qs.append(q)
        V = self.conv(self.depth - 1, q, ints.weights[-1]) + ints.biases[-1][None, :, None, None]
        out = V if return_V else V * (255.0 * ints.units[-1][None, :, None, None])
        return (out, qs) if return_q else out

    # ------------------------------------------------------------------ export
    @torch.no_grad()
    def to_model(self, metadata: dict | None = None):
        """The :class:`edgespike.model.Model` these parameters define (bit-plane layers, uwe input at T = 8,
        direct input otherwise)."""
        from edgespike.model import (
            BitPlaneNeuron,
            Conv,
            ConvTranspose,
            Decoder,
            Encoder,
            Integrator,
            Model,
            ReadoutTerm,
        )

        ints = self.integerise().double()
        T = self.T
        # With the uwe encoder (T = 8) the first layer decodes the pixel itself; with direct input every step
        # carries the whole pixel, so the decoded membrane is (2**T - 1) times the pixel's current.
        encoder = "uwe" if T == 8 else "direct"
        first_gain = 1 if encoder == "uwe" else self.levels
        nodes = []
        src = "input"
        steps = self.log_step.exp()

        def i64(t):
            return t.cpu().numpy().round().astype(np.int64)

        for i in range(self.depth):
            W = i64(ints.weights[i]).astype(np.int8)
            zero = np.zeros(W.shape[0], np.int32)
            unit = ints.units[i].cpu().numpy().astype(np.float32)
            if self.down and i == self.depth - 1:
                nodes.append(ConvTranspose(name=f"conv{i + 1}", input=src, weight=W, bias=zero, padding=UP_PADDING,
                                           output_padding=0, scale=unit))
            else:
                nodes.append(Conv(name=f"conv{i + 1}", input=src, weight=W, bias=zero,
                                  stride=2 if (self.down and i == 0) else 1, scale=unit, dilation=self.dilations[i]))
            gain = first_gain if i == 0 else 1
            B = i64(ints.biases[i]) * gain
            if i < self.depth - 1:
                Th = i64(ints.thetas[i]) * gain
                _check_int32(f"bp{i + 1}", B, Th)
                nodes.append(BitPlaneNeuron(name=f"bp{i + 1}", input=f"conv{i + 1}", threshold=Th.astype(np.int32),
                                            bias=B.astype(np.int32),
                                            scale=np.broadcast_to(steps[i].cpu().numpy(), Th.shape)
                                            .astype(np.float32)))
                src = f"bp{i + 1}"
            else:
                _check_int32("readout", B)
                nodes.append(Integrator(name="readout", input=f"conv{i + 1}", uwd=True, bias=B.astype(np.int32)))
        dec = Decoder(terms=[ReadoutTerm("readout", "membrane", np.array([ints.multiplier], np.int32))],
                      shift=ints.shift, residual=True)
        return Model(nodes=nodes, timesteps=T, encoder=Encoder(encoder), decoder=dec, membrane_bits=32,
                     metadata=dict(metadata or {}))


def _check_int32(name: str, *arrays: np.ndarray) -> None:
    for a in arrays:
        if np.abs(a).max(initial=0) >= 2**31:
            raise ValueError(f"{name}: an integer does not fit int32")


def decoder_constants(unit: float) -> tuple[int, int]:
    """``(m, s)`` with ``m / 2**s`` closest to ``255 * unit`` (pixels per read-out unit), ``m < 2**31``."""
    return _rate_decoder_constants(unit, 1)  # the rate code's 255 q / T with T = 1: V is already the total


@torch.no_grad()
def predict_uint8(net: BitPlaneDnCNN, frame: np.ndarray) -> np.ndarray:
    """What the exported model outputs for one uint8 frame (the integer network in float64: exact)."""
    ints = net.integerise().double()
    h, w = frame.shape
    x = torch.from_numpy(pad_to_multiple(frame, net.size_multiple).astype(np.float64))[None, None]
    V = net.qforward(x, ints, return_V=True)
    return decode(V, x, ints.multiplier, ints.shift)[0, 0, :h, :w].numpy()
