"""A quantisation-aware spiking graph: float parameters whose integer image is an edgespike model.

Every method of the founding papers (VTSNN, SpikingIR, SpikerIR, the LIF and rate-coding baselines, the strided
CAE) is a small graph of the node kinds the model format has (``docs/SEMANTICS.md``). :class:`QGraph` describes
such a graph once and gives three views of the same parameters:

* :meth:`QGraph.integerise` - the exact integers a model file stores, with straight-through rounding so that
  training sees them. Gain compensation as in :mod:`edgespike.train.qnet`: one integer unit of a node's value is
  worth ``gain`` real units per channel (a pixel ``1/255``, an input spike ``1``, a spike of a neuron its real
  threshold ``theta``); a conv's real weights are multiplied by its input's gain and quantised per output
  channel to int8 (``q_o = max |w g| / 127``), a neuron's integer threshold is ``round(theta / q)``.
* :meth:`QGraph.simulate` - the integer SNN in PyTorch, layer-major over the T steps (plus the MPRN extra step),
  bit-exact to :func:`edgespike.reference.run` in float64 (and in float32 while values stay below 2**24), with a
  sigmoid surrogate gradient through every spike (BPTT).
* :meth:`QGraph.ann` - the float ANN with the same weights (ReLU, optionally clipped at ``theta``): the network
  that ANN -> SNN conversion starts from and whose activation statistics set the thresholds.

:meth:`QGraph.to_model` writes the :class:`~edgespike.model.Model`. Decoder terms get pixel scales (a membrane
read-out ``255 q / T``, a spike count ``255 theta / T``, a UWD read-out ``1``) turned into integer multipliers with
one common shift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgespike.frames import pad_to_multiple
from edgespike.model import (
    INPUT,
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
from edgespike.reference import lowbias32
from edgespike.train.qnet import SpikeFn, round_ste, ste

WEIGHT_MAX = 127
MULT_MAX = 2**31 - 1


# --------------------------------------------------------------------------- layer descriptions
@dataclass
class ConvSpec:
    name: str
    src: str
    c_in: int
    c_out: int
    k: int = 3
    stride: int = 1
    bias: bool = True
    transpose: bool = False  # stride-2 ConvTranspose, k - 2*padding == 2
    padding: int = 1  # transposed convs only


@dataclass
class NeuronSpec:
    name: str
    src: str
    theta: float = 1.0  # initial real threshold (per layer)
    learn_theta: bool = True
    reset: str = "soft"
    leak_shift: int = 0
    v_init: str = "half"
    mprn: tuple[int, int] | None = None  # SpikingIR: extra firing at v >= num/den * theta, learned spike value


@dataclass
class IntegratorSpec:
    name: str
    src: str


@dataclass
class ConcatSpec:
    name: str
    srcs: tuple[str, ...]


Spec = ConvSpec | NeuronSpec | IntegratorSpec | ConcatSpec


@dataclass
class Term:
    """A decoder term: ``quantity`` ("membrane", "count" or "uwd") of a 1-channel node."""

    node: str
    quantity: str
    via: str = ""  # SpikingIR recycling: the 1x1 pixel-mapper conv whose weight also scales this membrane


@dataclass
class Ints:
    """The integers of one graph (float tensors holding exact integers, STE gradients), keyed by node name."""

    weight: dict[str, torch.Tensor] = field(default_factory=dict)
    weight_extra: dict[str, torch.Tensor] = field(default_factory=dict)
    bias: dict[str, torch.Tensor] = field(default_factory=dict)
    theta: dict[str, torch.Tensor] = field(default_factory=dict)  # integer thresholds [C]
    gain: dict[str, torch.Tensor] = field(default_factory=dict)  # real value of one unit of each node's value [C]
    scales: list[float] = field(default_factory=list)  # pixel value of one unit of each decoder quantity
    multipliers: list[int] = field(default_factory=list)
    shift: int = 0

    def double(self) -> Ints:
        """The same integers as detached float64 tensors (exact simulation)."""
        def f(d):
            return {k: v.detach().double() for k, v in d.items()}
        return Ints(f(self.weight), f(self.weight_extra), f(self.bias), f(self.theta), f(self.gain),
                    list(self.scales), list(self.multipliers), self.shift)


@dataclass
class SimResult:
    """What :meth:`QGraph.simulate` computed. ``spikes[name]``: ``[S, B, C, H, W]`` per neuron node (S = T, or
    T + 1 with an MPRN extra step); ``state[name]``: membrane ``v``, ``count`` and ``uwd`` after the last step;
    ``R``: the decoder's integer sum ``[B, 1, H, W]``; ``residual``: ``R / 2**shift`` in pixels (float, before
    rounding)."""

    spikes: dict[str, torch.Tensor]
    state: dict[str, dict[str, torch.Tensor]]
    R: torch.Tensor
    residual: torch.Tensor


def decoder_constants(scales: list[float]) -> tuple[list[int], int]:
    """Integer multipliers ``m_i`` and one shift ``s`` with ``m_i / 2**s`` closest to ``scales[i]`` (each
    ``|m_i| < 2**31``, as many bits as fit; a scale of exactly 1 with all others 1 gives ``m = 1, s = 0``)."""
    if all(s == 1.0 for s in scales):
        return [1] * len(scales), 0
    big = max(abs(s) for s in scales)
    if big <= 0:
        raise ValueError("decoder scales are all zero")
    s = max(0, min(62, int(math.floor(math.log2(MULT_MAX / big)))))
    while any(abs(round(x * 2**s)) > MULT_MAX for x in scales):
        s -= 1
    return [int(round(x * 2**s)) for x in scales], s


def rate_planes(frames: np.ndarray, T: int, seed: int) -> np.ndarray:
    """The rate encoder's spikes for uint8 frames ``[N, H, W]`` (already padded): ``[T, N, 1, H, W]`` of 0/1,
    exactly :func:`edgespike.reference.encode` (every frame hashed as a frame of its own)."""
    n, h, w = frames.shape
    out = np.empty((T, n, 1, h, w), np.uint8)
    pix = np.arange(h * w, dtype=np.uint64).reshape(h, w)
    for t in range(T):
        idx = (np.uint64(t) * np.uint64(h) * np.uint64(w) + pix) & np.uint64(0xFFFFFFFF)
        r = (lowbias32(idx.astype(np.uint32) ^ np.uint32(seed)) >> np.uint32(24)).astype(np.int64)
        out[t, :, 0] = r[None] < frames.astype(np.int64)
    return out


def uwe_planes(frames: torch.Tensor, T: int = 8) -> torch.Tensor:
    """VTSNN UWE of pixel tensors ``[..., H, W]`` holding 0..255: ``[T, ...]`` bit planes, MSB first."""
    x = frames.round().to(torch.int64)
    return torch.stack([((x >> (T - 1 - t)) & 1) for t in range(T)]).to(frames.dtype)


# --------------------------------------------------------------------------- the graph
class QGraph(nn.Module):
    """A quantisation-aware spiking graph (see the module docstring).

    Parameters
    ----------
    specs : list of ConvSpec, NeuronSpec, IntegratorSpec, ConcatSpec
        The nodes in topological order; the input node is ``"input"`` (1 channel).
    timesteps : int
    encoder : str
        ``"direct"``, ``"uwe"`` (T = 8) or ``"rate"``.
    terms : list of Term
        The decoder's read-out.
    residual : bool
        Output ``x - r`` (the net predicts the noise) or ``r``.
    seed : int
        Seed of the rate encoder.
    """

    def __init__(self, specs: list[Spec], timesteps: int, encoder: str, terms: list[Term], residual: bool,
                 seed: int = 0):
        super().__init__()
        if encoder == "uwe" and timesteps != 8:
            raise ValueError("UWE input coding needs T = 8")
        self.specs, self.T, self.encoder, self.terms, self.residual, self.seed = (
            specs, timesteps, encoder, terms, residual, seed)
        self.by_name = {s.name: s for s in specs}
        self.weight = nn.ParameterDict()
        self.bias = nn.ParameterDict()
        self.log_theta = nn.ParameterDict()  # log of the real threshold keeps it positive
        self.beta = nn.ParameterDict()  # MPRN spike values (in units of theta)
        self.fixed_theta: dict[str, float] = {}
        for s in specs:
            if isinstance(s, ConvSpec):
                w = torch.empty(s.c_out, s.c_in, s.k, s.k)  # [C_out, C_in, k, k], the file's layout
                nn.init.kaiming_normal_(w, nonlinearity="relu")
                self.weight[s.name] = nn.Parameter(w)
                if s.bias:
                    self.bias[s.name] = nn.Parameter(torch.zeros(s.c_out))
            elif isinstance(s, NeuronSpec):
                if s.learn_theta:
                    self.log_theta[s.name] = nn.Parameter(torch.tensor(math.log(s.theta)))
                else:
                    self.fixed_theta[s.name] = s.theta
                if s.mprn:
                    self.beta[s.name] = nn.Parameter(torch.tensor(1.0))
        self.channels = self._channels()

    def _channels(self) -> dict[str, int]:
        ch = {INPUT: 1}
        for s in self.specs:
            if isinstance(s, ConvSpec):
                if ch[s.src] != s.c_in:
                    raise ValueError(f"{s.name}: input {s.src!r} has {ch[s.src]} channels, not {s.c_in}")
                ch[s.name] = s.c_out
            elif isinstance(s, ConcatSpec):
                ch[s.name] = sum(ch[i] for i in s.srcs)
            else:
                ch[s.name] = ch[s.src]
        return ch

    @property
    def has_extra_step(self) -> bool:
        return any(isinstance(s, NeuronSpec) and s.mprn for s in self.specs)

    def theta(self, name: str) -> torch.Tensor:
        """The real threshold of neuron layer ``name`` (a scalar tensor)."""
        if name in self.log_theta:
            return self.log_theta[name].exp()
        return torch.tensor(self.fixed_theta[name])

    def set_theta(self, name: str, value: float) -> None:
        """Set a real threshold (calibration; a fixed threshold stays fixed from then on)."""
        with torch.no_grad():
            if name in self.log_theta:
                self.log_theta[name].fill_(math.log(value))
            else:
                self.fixed_theta[name] = float(value)

    def input_gain(self) -> float:
        return 1.0 / 255.0 if self.encoder == "direct" else 1.0

    # ------------------------------------------------------------------ integers
    def integerise(self) -> Ints:
        """The exact integers of the graph, differentiable through straight-through rounding."""
        ints = Ints()
        gain = {INPUT: torch.full((1,), self.input_gain())}
        gain_extra = {INPUT: gain[INPUT]}  # real value of one unit at the MPRN extra step
        # Nodes whose extra-step value carries a learned spike value beta: the convs reading them get a
        # weight_extra (decided by structure, not by value, so that beta = 1 still receives gradients).
        carries_beta = {INPUT: False}
        for s in self.specs:
            if isinstance(s, ConvSpec):
                g = gain[s.src][None, :, None, None]
                ge = gain_extra[s.src][None, :, None, None]
                w_eff = self.weight[s.name] * g
                mag = w_eff.detach().abs().amax(dim=(1, 2, 3))
                extra = carries_beta[s.src]
                if extra and s.transpose:
                    raise ValueError(f"{s.name}: a ConvTranspose has no weight_extra; it cannot read an MPRN layer")
                if extra:
                    w_ex = self.weight[s.name] * ge
                    mag = torch.maximum(mag, w_ex.detach().abs().amax(dim=(1, 2, 3)))
                q = (mag / WEIGHT_MAX).clamp(min=1e-12)  # detached: the scale does not jitter with one weight
                qq = q[:, None, None, None]
                ints.weight[s.name] = round_ste(w_eff / qq).clamp(-WEIGHT_MAX, WEIGHT_MAX)
                if extra:
                    ints.weight_extra[s.name] = round_ste(w_ex / qq).clamp(-WEIGHT_MAX, WEIGHT_MAX)
                if s.name in self.bias:
                    ints.bias[s.name] = round_ste(self.bias[s.name] / q)
                gain[s.name] = gain_extra[s.name] = q
                carries_beta[s.name] = False
            elif isinstance(s, NeuronSpec):
                q = gain[s.src]
                th = self.theta(s.name)
                ints.theta[s.name] = round_ste(th / q).clamp(min=1.0)
                gain[s.name] = th.expand_as(q)
                beta = self.beta[s.name].clamp(min=0.0) if s.mprn else 1.0
                gain_extra[s.name] = th.expand_as(q) * beta
                carries_beta[s.name] = bool(s.mprn)
            elif isinstance(s, IntegratorSpec):
                gain[s.name] = gain_extra[s.name] = gain[s.src]
                carries_beta[s.name] = False
            else:
                gain[s.name] = torch.cat([gain[i] for i in s.srcs])
                gain_extra[s.name] = torch.cat([gain_extra[i] for i in s.srcs])
                carries_beta[s.name] = any(carries_beta[i] for i in s.srcs)
        ints.gain = gain
        scales = []
        for term in self.terms:
            if term.quantity == "uwd":
                scales.append(1.0)
            elif term.quantity == "count":
                scales.append(255.0 * float(self.theta(term.node).detach()) / self.T)
            else:
                sc = 255.0 * float(gain[self.by_name[term.node].src][0].detach()) / self.T
                if term.via:
                    sc *= float(self.weight[term.via].detach().sum())
                scales.append(sc)
        ints.scales = scales
        ints.multipliers, ints.shift = decoder_constants(scales)
        return ints

    # ------------------------------------------------------------------ the SNN
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Per-step value of node ``"input"``: ``[T, B, 1, H, W]`` for pixels ``[B, 1, H, W]`` (0..255)."""
        T = self.T
        if self.encoder == "direct":
            return pixels.unsqueeze(0).expand(T, *pixels.shape)
        if self.encoder == "uwe":
            return uwe_planes(pixels, T)
        frames = pixels[:, 0].detach().round().clamp(0, 255).cpu().numpy().astype(np.uint8)
        return torch.from_numpy(rate_planes(frames, T, self.seed)).to(pixels.device, pixels.dtype)

    def _conv(self, s: ConvSpec, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        if s.transpose:
            return F.conv_transpose2d(x, w.transpose(0, 1), b, stride=2, padding=s.padding)
        return F.conv2d(x, w, b, stride=s.stride, padding=s.k // 2)

    def simulate(self, pixels: torch.Tensor, ints: Ints | None = None, k: float = 4.0,
                 temporal: bool = True) -> SimResult:
        """Run the integer SNN on pixels ``[B, 1, H, W]`` (float holding 0..255, sizes a multiple of
        :attr:`size_multiple`). Differentiable (surrogate gradient ``k``); exact in float64.

        ``temporal=False`` cuts the gradient through the membranes from one step to the next (VTSNN's ITBP: errors
        propagate through the layers only, never back in time); the forward pass is the same."""
        ints = ints or self.integerise()
        T = self.T
        extra = self.has_extra_step
        B = pixels.shape[0]
        values: dict[str, torch.Tensor] = {INPUT: self.encode(pixels)}
        if extra:  # the input is 0 at the extra step
            values[INPUT] = torch.cat([values[INPUT], torch.zeros_like(values[INPUT][:1])])
        spikes: dict[str, torch.Tensor] = {}
        state: dict[str, dict[str, torch.Tensor]] = {}
        for s in self.specs:
            if isinstance(s, ConvSpec):
                src = values[s.src]
                w, b = ints.weight[s.name], ints.bias.get(s.name)
                if s.src == INPUT and self.encoder == "direct":  # the same input at every step: one conv
                    y = self._conv(s, src[0], w, b).unsqueeze(0).expand(T, -1, -1, -1, -1)
                else:
                    flat = src[:T].reshape(T * B, *src.shape[2:])
                    y = self._conv(s, flat, w, b)
                    y = y.view(T, B, *y.shape[1:])
                if extra:
                    ye = self._conv(s, src[T], ints.weight_extra.get(s.name, w), None)
                    y = torch.cat([y, ye.unsqueeze(0)])
                values[s.name] = y
            elif isinstance(s, NeuronSpec):
                values[s.name], state[s.name] = self._neuron(s, values[s.src], ints, k, temporal)
                spikes[s.name] = values[s.name]
            elif isinstance(s, IntegratorSpec):
                cur = values[s.src]
                state[s.name] = {"v": cur.sum(0)}
                values[s.name] = torch.zeros_like(cur)
            else:
                values[s.name] = torch.cat([values[i] for i in s.srcs], dim=2)
        R = 0
        for term, m in zip(self.terms, ints.multipliers, strict=True):
            R = R + m * state[term.node]["v" if term.quantity == "membrane" else term.quantity]
        return SimResult(spikes, state, R, R / 2**ints.shift)

    def _neuron(self, s: NeuronSpec, cur: torch.Tensor, ints: Ints, k: float, temporal: bool = True):
        T = self.T
        th = ints.theta[s.name][None, :, None, None]
        v = (torch.floor(th / 2) if s.v_init == "half" else torch.zeros_like(th)).expand_as(cur[0])
        out, count, uwd = [], 0, 0
        for t in range(T):
            if not temporal:
                v = v.detach()
            if s.leak_shift:  # v -= v >> k: an arithmetic shift is a floor division
                v = v - ste(torch.floor(v / 2**s.leak_shift), v / 2**s.leak_shift)
            v = v + cur[t]
            sp = SpikeFn.apply(v, th, k)
            v = v - th * sp if s.reset == "soft" else v * (1 - sp)
            out.append(sp)
            count = count + sp
            uwd = uwd + sp * 2 ** (T - 1 - t)
        if cur.shape[0] > T:  # the MPRN extra step: no leak, fire at alpha * theta (exact integer compare)
            v = v + cur[T]
            if s.mprn:
                num, den = s.mprn
                sp = SpikeFn.apply(den * v, num * th, k)
                v = v - th * sp if s.reset == "soft" else v * (1 - sp)
            else:
                sp = torch.zeros_like(v)
            out.append(sp)
            count = count + sp
        return torch.stack(out), {"v": v, "count": count, "uwd": uwd}

    @property
    def size_multiple(self) -> int:
        depth, deepest = {INPUT: 0}, 0
        for s in self.specs:
            srcs = s.srcs if isinstance(s, ConcatSpec) else (s.src,)
            d = max(depth[i] for i in srcs)
            if isinstance(s, ConvSpec):
                d += -1 if s.transpose else (1 if s.stride == 2 else 0)
            depth[s.name] = d
            deepest = max(deepest, d)
        return 2**deepest

    def output(self, pixels: torch.Tensor, ints: Ints | None = None, k: float = 4.0) -> torch.Tensor:
        """The denoised image in pixels (float, before the decoder's rounding and clipping) and the run."""
        res = self.simulate(pixels, ints, k)
        return (pixels - res.residual if self.residual else res.residual), res

    # ------------------------------------------------------------------ the ANN
    def ann(self, pixels: torch.Tensor, clip: bool = False, features: bool = False, rate_aware: bool = False,
            currents: dict | None = None):
        """The float ANN with the same weights: ReLU activations (clipped at ``theta`` when ``clip``), the
        read-out terms summed as real values (membrane of an Integrator = its mean current). Not for UWE input.
        ``rate_aware``: every activation is instead the neuron's own spike rate under its constant mean current
        (:func:`constant_drive_rate`: the T + 1 levels of IF, the dead zone and uneven levels of LIF) with the
        clipped ReLU's gradient - a rate-coded q-ANN, so that the SNN starts where the ANN ends.
        Returns the denoised image in pixels, and ``{neuron: activation}`` when ``features``; ``currents``, when
        given, receives ``{neuron: input current}``."""
        if self.encoder == "uwe":
            raise ValueError("the ANN view needs the direct or rate encoder")
        # A rate-coded pixel fires with probability x / 256: its expected spike is the ANN's input.
        acts: dict[str, torch.Tensor] = {INPUT: pixels / (255.0 if self.encoder == "direct" else 256.0)}
        feats = {}
        for s in self.specs:
            if isinstance(s, ConvSpec):
                acts[s.name] = self._conv(s, acts[s.src], self.weight[s.name], self.bias[s.name]
                                          if s.name in self.bias else None)
            elif isinstance(s, NeuronSpec):
                cur, th = acts[s.src], self.theta(s.name)
                if currents is not None:
                    currents[s.name] = cur
                if rate_aware:
                    exact = th.detach() * constant_drive_rate(cur.detach(), th.detach(), s, self.T)
                    a = ste(exact, torch.minimum(F.relu(cur), th))
                else:
                    a = F.relu(cur)
                    if clip:
                        a = torch.minimum(a, th)
                acts[s.name] = feats[s.name] = a
            elif isinstance(s, IntegratorSpec):
                acts[s.name] = acts[s.src]
            else:
                acts[s.name] = torch.cat([acts[i] for i in s.srcs], dim=1)
        r = 0
        for term in self.terms:
            if term.quantity == "membrane" and isinstance(self.by_name[term.node], IntegratorSpec):
                r = r + 255.0 * acts[term.node]
            elif term.quantity == "count":
                r = r + 255.0 * acts[term.node]
            elif term.quantity == "uwd":
                r = r + 255.0 * acts[term.node]
            # a neuron's residual membrane (SpikingIR recycling) has no ANN counterpart
        out = pixels - r if self.residual else r
        return (out, feats) if features else out

    @torch.no_grad()
    def balance_thresholds(self, pixels: torch.Tensor, quantile: float = 0.999,
                           sequential: bool = False) -> dict[str, float]:
        """Threshold balancing (Rueckauer et al. 2017): each neuron layer's real threshold becomes a high
        quantile of its ANN activation over ``pixels``. Returns the thresholds set.

        ``sequential``: layer by layer in order, each from its input current in the rate-aware ANN whose earlier
        thresholds are already set. For LIF, whose dead zone (no spike below ``theta / 2**k`` of constant drive)
        shrinks each layer's output, balancing all layers on the ReLU ANN at once silences the deep layers."""
        def quantile_of(a):
            pos = a[a > 0].flatten()
            if not pos.numel():
                return None
            pos = pos[torch.randperm(pos.numel())[:1_000_000]]
            return float(torch.quantile(pos, quantile).clamp(min=1e-3))

        out = {}
        if not sequential:
            _, feats = self.ann(pixels, features=True)
            for name, a in feats.items():
                if (val := quantile_of(a)) is not None:
                    self.set_theta(name, val)
                    out[name] = val
            return out
        for s in self.specs:
            if isinstance(s, NeuronSpec):
                cur: dict = {}
                self.ann(pixels, rate_aware=True, currents=cur)
                if (val := quantile_of(cur[s.name])) is not None:
                    self.set_theta(s.name, val)
                    out[s.name] = val
        return out

    # ------------------------------------------------------------------ export
    @torch.no_grad()
    def to_model(self, metadata: dict | None = None) -> Model:
        """The :class:`Model` these parameters define (int8 weights, int32 biases and thresholds)."""
        ints = self.integerise()
        nodes = []

        def arr(t, dtype):
            a = t.detach().cpu().numpy()
            if np.abs(a).max(initial=0) >= 2**31:
                raise ValueError("an integer does not fit int32")
            return a.astype(dtype)

        for s in self.specs:
            if isinstance(s, ConvSpec):
                W = arr(ints.weight[s.name], np.int8)
                b = arr(ints.bias[s.name], np.int32) if s.name in ints.bias else np.zeros(s.c_out, np.int32)
                scale = ints.gain[s.name].detach().cpu().numpy().astype(np.float32)
                if s.transpose:
                    nodes.append(ConvTranspose(s.name, s.src, W, b, padding=s.padding,
                                               output_padding=2 - s.k + 2 * s.padding, scale=scale))
                else:
                    we = ints.weight_extra.get(s.name)
                    nodes.append(Conv(s.name, s.src, W, b, stride=s.stride,
                                      weight_extra=None if we is None else arr(we, np.int8), scale=scale))
            elif isinstance(s, NeuronSpec):
                th = ints.theta[s.name]
                nodes.append(Neuron(s.name, s.src, arr(th, np.int32), reset=s.reset, leak_shift=s.leak_shift,
                                    v_init=s.v_init, mprn=s.mprn,
                                    scale=np.full(th.shape, float(self.theta(s.name)), np.float32)))
            elif isinstance(s, IntegratorSpec):
                nodes.append(Integrator(s.name, s.src))
            else:
                nodes.append(Concat(s.name, tuple(s.srcs)))
        terms = [ReadoutTerm(t.node, t.quantity, np.array([m], np.int32))
                 for t, m in zip(self.terms, ints.multipliers, strict=True)]
        return Model(nodes=nodes, timesteps=self.T, encoder=Encoder(self.encoder, self.seed),
                     decoder=Decoder(terms, ints.shift, self.residual), membrane_bits=32,
                     metadata=dict(metadata or {}))

    @torch.no_grad()
    def predict_uint8(self, frame: np.ndarray) -> np.ndarray:
        """What the exported model outputs for one uint8 frame, computed here in float64 (bit-exact)."""
        ints = self.integerise().double()  # the very integers to_model() exports, simulated in float64
        h, w = frame.shape
        x = torch.from_numpy(pad_to_multiple(frame, self.size_multiple).astype(np.float64))[None, None]
        res = self.simulate(x, ints)
        return decode(res.R, x, ints.shift, self.residual)[0, 0, :h, :w].numpy()


def constant_drive_rate(current: torch.Tensor, theta: torch.Tensor, spec: NeuronSpec, T: int) -> torch.Tensor:
    """Spikes per step of a neuron driven by the same real ``current`` at each of ``T`` steps (real-valued
    dynamics of section 5.2: leak ``v -= v / 2**k``, integrate, fire at ``v >= theta``, soft or hard reset,
    ``v0 = theta / 2`` or 0). For a soft-reset IF neuron with ``v0 = theta/2`` this is
    ``clip(floor(T I / theta + 1/2), 0, T) / T``."""
    v0 = theta / 2 if spec.v_init == "half" else torch.zeros_like(theta)
    if spec.reset == "soft" and not spec.leak_shift:
        # Closed form: v_T = v0 + T I - theta n, at most one spike per step (the T-step loop, ~3x cheaper).
        return torch.floor((v0 + T * current) / theta).clamp(0, T) / T
    v = v0.expand_as(current)
    count = torch.zeros_like(current)
    for _ in range(T):
        if spec.leak_shift:
            v = v - v / 2**spec.leak_shift
        v = v + current
        s = (v >= theta).to(current.dtype)
        v = v - theta * s if spec.reset == "soft" else v * (1 - s)
        count = count + s
    return count / T


def decode(R: torch.Tensor, pixels: torch.Tensor, shift: int, residual: bool) -> torch.Tensor:
    """The integer decoder of ``docs/SEMANTICS.md`` section 6 on an exact read-out sum ``R``."""
    Ri = R.round().to(torch.int64)
    r = (Ri + (1 << (shift - 1))) >> shift if shift else Ri
    y = pixels.round().to(torch.int64) - r if residual else r
    return y.clamp(0, 255).to(torch.uint8)
