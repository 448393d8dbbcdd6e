"""The quantisation-aware spiking DnCNN: one set of parameters, four views of it.

Parameters are float conv weights/biases (``W_l``, ``b_l``) and one learned threshold ``theta_l`` per hidden
layer. :meth:`QSpikingDnCNN.integerise` maps them to the exact integers a model file stores (gain compensation:
a spike of layer ``l`` stands for ``theta_l``, folded into the next layer's weights; int8 per output channel):

* ``W_int = round(W * g / q)`` with ``g = 1/255`` (first layer: the input is a pixel 0..255) or ``theta_{l-1}``,
  ``q_c = max|W * g|[c] / 127``;
* ``b_int = round(b / q)``, neuron threshold ``Theta_c = round(theta_l / q_c)``;
* read-out: an Integrator sums ``T`` steps of current ``R``; the residual in pixels is ``255 * q * R / T``,
  decoded as ``(m * R + 2**(s-1)) >> s`` with ``m / 2**s ~= 255 q / T``.

Views (all share the same integers, rounding uses straight-through gradients):

* :meth:`qann` - rate-coded q-ANN: every neuron sees its T-step current as if it were constant; the count of a
  soft-reset IF neuron with ``v0 = Theta >> 1`` is then exactly ``clip(floor((Theta>>1 + S) / Theta), 0, T)``.
  Cheap (one conv per layer), exact for the first layer and the read-out, approximate for the hidden layers.
* :meth:`snn` - the real SNN, layer-major over T steps (a feed-forward graph lets each layer process all steps in
  one batched conv). Forward is bit-exact to :func:`edgespike.reference.run`; backward uses a sigmoid surrogate
  (BPTT fine-tuning).
* :meth:`twin` - the float ANN twin: same float weights, ReLU clipped at ``theta`` (the rate-domain activation).
* :meth:`to_model` - the :class:`edgespike.model.Model` to save as ``.esnn``.

``down=True`` runs the body at half resolution (FFDNet's trick, 4x fewer operations per pixel for the same
weights): the first layer is a 5x5 stride-2 conv of the pixels, the read-out a 6x6 stride-2 transposed conv back to
full resolution (``padding=2``: output pixel ``2i+a`` sees the 3x3 half-resolution neighbourhood of ``i``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgespike.frames import pad_to_multiple
from edgespike.model import Conv, ConvTranspose, Decoder, Encoder, Integrator, Model, Neuron, ReadoutTerm

WEIGHT_MAX = 127
MULT_MAX = 2**31 - 1
DOWN_KERNEL = 5  # first conv of a half-resolution body: 5x5, stride 2, padding 2
UP_KERNEL, UP_PADDING = 6, 2  # its read-out: 6x6 transposed conv, stride 2, padding 2 (exactly doubles H, W)


def ste(exact: torch.Tensor, smooth: torch.Tensor) -> torch.Tensor:
    """Forward ``exact``, backward the gradient of ``smooth`` (straight-through estimator)."""
    return smooth + (exact - smooth).detach()


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return ste(torch.round(x), x)


class SpikeFn(torch.autograd.Function):
    """Heaviside spike ``v >= theta`` with the derivative of ``sigmoid(k (v - theta) / theta)``.

    Normalising by ``theta`` makes the surrogate width the same for every channel whatever its integer scale.
    """

    @staticmethod
    def forward(ctx, v, theta, k):
        ctx.save_for_backward(v, theta)
        ctx.k = k
        return (v >= theta).to(v.dtype)

    @staticmethod
    def backward(ctx, grad):
        v, theta = ctx.saved_tensors
        sg = torch.sigmoid(ctx.k * (v - theta) / theta)
        d = grad * sg * (1 - sg) * ctx.k / theta
        dtheta = -(d * (v / theta)).sum(dim=tuple(i for i in range(d.dim()) if theta.shape[i] == 1), keepdim=True)
        return d, dtheta, None


def dncnn_parameters(depth: int, width: int, down: bool) -> tuple[nn.ParameterList, nn.ParameterList]:
    """Float weights (Kaiming, the read-out's scaled by 0.1) and zero biases of a DnCNN-shaped stack:
    conv(1->C), (D-2) x conv(C->C), conv(C->1); with ``down``, the 5x5 stride-2 first and 6x6 transposed last."""
    chans = [1] + [width] * (depth - 1) + [1]
    weight, bias = nn.ParameterList(), nn.ParameterList()
    for i in range(depth):
        k = 3
        if down and i == 0:
            k = DOWN_KERNEL
        elif down and i == depth - 1:
            k = UP_KERNEL
        # Every weight is stored [C_out, C_in, k, k] (the model file's layout, transposed conv included).
        w = torch.empty(chans[i + 1], chans[i], k, k)
        nn.init.kaiming_normal_(w, nonlinearity="relu")
        weight.append(nn.Parameter(w))
        bias.append(nn.Parameter(torch.zeros(chans[i + 1])))
    with torch.no_grad():
        weight[-1].mul_(0.1)
    return weight, bias


def dncnn_conv(down: bool, depth: int, i: int, x: torch.Tensor, w: torch.Tensor,
               b: torch.Tensor | None = None, dilation: int = 1) -> torch.Tensor:
    """Layer ``i`` of a DnCNN-shaped stack: a "same" conv (its taps ``dilation`` pixels apart), or for a
    half-resolution body the stride-2 first conv and the stride-2 transposed read-out (weights in the model file's
    ``[C_out, C_in, k, k]`` layout)."""
    if down and i == 0:
        return F.conv2d(x, w, b, stride=2, padding=DOWN_KERNEL // 2)
    if down and i == depth - 1:
        return F.conv_transpose2d(x, w.transpose(0, 1), b, stride=2, padding=UP_PADDING)
    return F.conv2d(x, w, b, padding=dilation * (w.shape[-1] // 2), dilation=dilation)


@dataclass
class Integers:
    """The integer tensors of one network (float tensors holding exact integers, with STE gradients)."""

    weights: list[torch.Tensor]  # W_int per conv
    biases: list[torch.Tensor]  # b_int per conv
    thetas: list[torch.Tensor]  # Theta per hidden neuron layer, shape [C]
    scales: list[torch.Tensor]  # q per conv, shape [C_out]
    multiplier: int
    shift: int

    def double(self) -> Integers:
        """The same integers as detached float64 tensors (exact simulation of large frames)."""
        def f(ts):
            return [t.detach().double() for t in ts]
        return Integers(f(self.weights), f(self.biases), f(self.thetas), f(self.scales), self.multiplier, self.shift)


class QSpikingDnCNN(nn.Module):
    """DnCNN-shaped integer SNN: conv(1->C)+IF, (D-2) x [conv(C->C)+IF], conv(C->1) + Integrator, residual.

    Parameters
    ----------
    depth : int
        Number of conv layers D (>= 2).
    width : int
        Channels C of the hidden layers.
    timesteps : int
        T, the number of SNN steps (the rate code has T+1 levels).
    down : bool
        Half-resolution body: stride-2 first conv, stride-2 transposed read-out conv.
    """

    def __init__(self, depth: int = 12, width: int = 48, timesteps: int = 8, down: bool = False):
        super().__init__()
        if depth < 2:
            raise ValueError("depth must be >= 2")
        self.depth, self.width, self.T, self.down = depth, width, timesteps, down
        self.weight, self.bias = dncnn_parameters(depth, width, down)
        # Thresholds are real activation clip levels (image units); calibrate() sets them from data.
        self.theta = nn.Parameter(torch.ones(depth - 1))

    @property
    def size_multiple(self) -> int:
        """Frames are edge-padded to a multiple of this, as the exported model's ``size_multiple``."""
        return 2 if self.down else 1

    def conv(self, i: int, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        """The linear map of layer ``i`` (a "same" conv; stride 2 / transposed for a half-resolution body)."""
        return dncnn_conv(self.down, self.depth, i, x, w, b)

    # ------------------------------------------------------------------ integers
    def integerise(self) -> Integers:
        """The exact integers of the network, differentiable through straight-through rounding."""
        theta = self.theta.clamp(min=1e-4)
        Ws, bs, Ths, qs = [], [], [], []
        for i in range(self.depth):
            gain = (1.0 / 255.0) if i == 0 else theta[i - 1]
            w_eff = self.weight[i] * gain
            # The per-channel scale is detached: its gradient through max() only touches one weight and
            # makes the scale jitter; LSQ-style learning happens through theta instead.
            q = (w_eff.detach().abs().amax(dim=(1, 2, 3)) / WEIGHT_MAX).clamp(min=1e-12)
            W = round_ste(w_eff / q[:, None, None, None]).clamp(-WEIGHT_MAX, WEIGHT_MAX)
            b = round_ste(self.bias[i] / q)
            Ws.append(W)
            bs.append(b)
            qs.append(q)
            if i < self.depth - 1:
                Ths.append(round_ste(theta[i] / q).clamp(min=1.0))
        m, s = decoder_constants(float(qs[-1][0]), self.T)
        return Integers(Ws, bs, Ths, qs, m, s)

    # ------------------------------------------------------------------ views
    def qann(self, pixels: torch.Tensor, ints: Integers | None = None, return_R: bool = False) -> torch.Tensor:
        """Rate-coded q-ANN. ``pixels``: float [B,1,H,W] holding 0..255. Returns the residual in pixels
        (float, before the decoder's rounding) as [B,1,H,W], or the integer read-out ``R`` when ``return_R``."""
        ints = ints or self.integerise()
        T = self.T
        x = pixels
        for i in range(self.depth - 1):
            S = T * (self.conv(i, x, ints.weights[i]) + ints.biases[i][None, :, None, None]) if i == 0 else (
                self.conv(i, x, ints.weights[i]) + T * ints.biases[i][None, :, None, None])
            Th = ints.thetas[i][None, :, None, None]
            exact = torch.floor((torch.floor(Th / 2) + S) / Th).clamp(0, T)
            x = ste(exact, (S / Th + 0.5).clamp(0, T))
        R = self.conv(self.depth - 1, x, ints.weights[-1]) + T * ints.biases[-1][None, :, None, None]
        if return_R:
            return R
        return R * (255.0 * ints.scales[-1][None, :, None, None] / T)

    def snn(self, pixels: torch.Tensor, ints: Integers | None = None, k: float = 4.0,
            return_R: bool = False) -> torch.Tensor:
        """The spiking network, layer-major over T steps; same return as :meth:`qann` (or the integer
        read-out membrane ``R`` when ``return_R``). Exact in float64, and in float32 while every value stays
        below 2**24 (true for int8 weights, C <= 256 and T <= 8)."""
        ints = ints or self.integerise()
        T = self.T
        B = pixels.shape[0]
        # First layer: direct encoding, the current is the same at every step.
        cur0 = self.conv(0, pixels, ints.weights[0]) + ints.biases[0][None, :, None, None]
        cur = cur0.unsqueeze(0).expand(T, *cur0.shape)
        for i in range(self.depth - 1):
            Th = ints.thetas[i][None, :, None, None]
            v = torch.floor(Th / 2).expand_as(cur[0])
            spikes = []
            for t in range(T):
                v = v + cur[t]
                s = SpikeFn.apply(v, Th, k)
                v = v - Th * s
                spikes.append(s)
            s_all = torch.cat(spikes, 0)  # [T*B, C, H, W], step-major
            if i < self.depth - 2:
                cur = (self.conv(i + 1, s_all, ints.weights[i + 1])
                       + ints.biases[i + 1][None, :, None, None]).view(T, B, *cur0.shape[1:])
            else:
                counts = s_all.view(T, B, *s_all.shape[1:]).sum(0)
        # The Integrator's membrane after T steps is linear in the spike counts.
        R = self.conv(self.depth - 1, counts, ints.weights[-1]) + T * ints.biases[-1][None, :, None, None]
        if return_R:
            return R
        return R * (255.0 * ints.scales[-1][None, :, None, None] / T)

    def tandem(self, pixels: torch.Tensor, ints: Integers | None = None, return_R: bool = False) -> torch.Tensor:
        """Tandem learning (Wu et al. 2021): the forward values are the SNN's exact spike counts, the backward
        treats each count as the q-ANN function ``clip(S / Theta + 1/2, 0, T)`` of the T-step current ``S``
        computed from the previous layer's *actual* counts. Much cheaper than BPTT (the T-step simulation runs
        without an autograd graph; gradients need one conv per layer) while training on the true SNN outputs."""
        ints = ints or self.integerise()
        T = self.T
        B = pixels.shape[0]
        with torch.no_grad():
            cur0 = self.conv(0, pixels, ints.weights[0]) + ints.biases[0][None, :, None, None]
            cur = cur0.unsqueeze(0).expand(T, *cur0.shape)
        x = pixels
        for i in range(self.depth - 1):
            Th = ints.thetas[i][None, :, None, None]
            with torch.no_grad():  # exact spike trains of layer i
                Thd = Th.detach()
                v = torch.floor(Thd / 2).expand_as(cur[0])
                spikes = []
                for t in range(T):
                    v = v + cur[t]
                    sp = (v >= Thd).to(v.dtype)
                    v = v - Thd * sp
                    spikes.append(sp)
                s_all = torch.cat(spikes, 0)
                n_snn = s_all.view(T, B, *s_all.shape[1:]).sum(0)
                if i < self.depth - 2:
                    cur = (self.conv(i + 1, s_all, ints.weights[i + 1].detach())
                           + ints.biases[i + 1].detach()[None, :, None, None]).view(T, B, *cur0.shape[1:])
            S = (T * (self.conv(0, x, ints.weights[0]) + ints.biases[0][None, :, None, None]) if i == 0 else
                 self.conv(i, x, ints.weights[i]) + T * ints.biases[i][None, :, None, None])
            x = ste(n_snn, (S / Th + 0.5).clamp(0, T))
        R = self.conv(self.depth - 1, x, ints.weights[-1]) + T * ints.biases[-1][None, :, None, None]
        if return_R:
            return R
        return R * (255.0 * ints.scales[-1][None, :, None, None] / T)

    def twin(self, pixels: torch.Tensor) -> torch.Tensor:
        """Float ANN twin: float weights, ``clip(z, 0, theta_l)`` activations. Residual in pixels."""
        x = pixels / 255.0
        theta = self.theta.clamp(min=1e-4)
        for i in range(self.depth):
            x = self.conv(i, x, self.weight[i], self.bias[i])
            if i < self.depth - 1:
                x = torch.minimum(F.relu(x), theta[i])
        return 255.0 * x

    @torch.no_grad()
    def calibrate(self, pixels: torch.Tensor, quantile: float = 0.995) -> None:
        """Set each theta to a high quantile of its layer's positive pre-activations (layer by layer, so every
        layer sees the quantised outputs of the calibrated layers before it)."""
        x = pixels / 255.0
        for i in range(self.depth - 1):
            z = self.conv(i, x, self.weight[i], self.bias[i])
            pos = z[z > 0].flatten()
            if pos.numel():
                pos = pos[torch.randperm(pos.numel())[:1_000_000]]
                self.theta[i] = torch.quantile(pos, quantile).clamp(min=1e-3)
            th = self.theta[i]
            x = th * torch.floor(z / th * self.T + 0.5).clamp(0, self.T) / self.T

    # ------------------------------------------------------------------ export
    @torch.no_grad()
    def to_model(self, metadata: dict | None = None) -> Model:
        """The :class:`Model` these parameters define (int8 weights, int32 biases/thresholds)."""
        ints = self.integerise()
        nodes = []
        src = "input"
        theta = self.theta.clamp(min=1e-4)
        for i in range(self.depth):
            W = ints.weights[i].detach().cpu().numpy()
            b = ints.biases[i].detach().cpu().numpy()
            if np.abs(b).max(initial=0) >= 2**31:
                raise ValueError(f"bias of conv{i + 1} does not fit int32")
            scale = ints.scales[i].detach().cpu().numpy().astype(np.float32)
            if self.down and i == self.depth - 1:
                nodes.append(ConvTranspose(name=f"conv{i + 1}", input=src, weight=W.astype(np.int8),
                                           bias=b.astype(np.int32), padding=UP_PADDING, output_padding=0,
                                           scale=scale))
            else:
                nodes.append(Conv(name=f"conv{i + 1}", input=src, weight=W.astype(np.int8), bias=b.astype(np.int32),
                                  stride=2 if (self.down and i == 0) else 1, scale=scale))
            if i < self.depth - 1:
                Th = ints.thetas[i].detach().cpu().numpy()
                nodes.append(Neuron(name=f"if{i + 1}", input=f"conv{i + 1}", threshold=Th.astype(np.int32),
                                    reset="soft", leak_shift=0, v_init="half",
                                    scale=np.full(Th.shape, float(theta[i]), np.float32)))
                src = f"if{i + 1}"
        nodes.append(Integrator(name="readout", input=f"conv{self.depth}"))
        dec = Decoder(terms=[ReadoutTerm("readout", "membrane", np.array([ints.multiplier], np.int32))],
                      shift=ints.shift, residual=True)
        return Model(nodes=nodes, timesteps=self.T, encoder=Encoder("direct"), decoder=dec, membrane_bits=32,
                     metadata=dict(metadata or {}))


def decoder_constants(q: float, T: int) -> tuple[int, int]:
    """``(m, s)`` with ``m / 2**s`` closest to ``255 q / T``, ``m`` below 2**31 and as many bits as fit."""
    target = 255.0 * q / T
    s = min(62, int(math.floor(math.log2(MULT_MAX / target))))
    m = int(round(target * 2**s))
    while m > MULT_MAX:
        s -= 1
        m = int(round(target * 2**s))
    return max(m, 1), s


def decode(R: torch.Tensor, pixels: torch.Tensor, m: int, s: int) -> torch.Tensor:
    """The integer decoder: ``clip(x - ((m R + 2**(s-1)) >> s), 0, 255)`` in int64, for exact predictions."""
    Ri = R.round().to(torch.int64)
    r = (Ri * m + (1 << (s - 1))) >> s if s else Ri * m
    return (pixels.round().to(torch.int64) - r).clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def predict_uint8(net: QSpikingDnCNN, frame: np.ndarray, view: str = "snn") -> np.ndarray:
    """What the exported model outputs for one uint8 frame, computed by the training-side simulation
    (``view="snn"``, float64, bit-exact) or by the q-ANN approximation (``view="qann"``)."""
    ints = net.integerise().double()  # the very integers to_model() exports, simulated in float64
    h, w = frame.shape
    x = torch.from_numpy(pad_to_multiple(frame, net.size_multiple).astype(np.float64))[None, None]
    R = net.snn(x, ints, return_R=True) if view == "snn" else net.qann(x, ints, return_R=True)
    return decode(R, x, ints.multiplier, ints.shift)[0, 0, :h, :w].numpy()
