"""PyTorch integer simulation of an edgespike :class:`~edgespike.model.Model` (needs the ``[train]`` extra).

This is what a snnTorch / SpikingJelly user would run: dense ``conv2d`` on the spike maps at every timestep,
membranes as tensors, no sparsity. It serves two purposes:

* proof that a trained network's export is bit-exact (tests compare it with :func:`edgespike.reference.run`);
* the "dense PyTorch multi-step simulation" baseline of the runtime benchmark.

All values are integers held in floating point: float32 when the model's proved worst-case bound leaves room
(every partial sum below 2**24, so float32 arithmetic is exact), float64 otherwise (exact below 2**53, and
:func:`edgespike.validate.analyse` bounds everything to ``membrane_bits`` <= 32). The decoder runs in int64.

Two schedules give identical results:

* ``mode="step"`` (default): step-major, every node once per step (snnTorch style, the benchmark baseline);
* ``mode="layer"``: layer-major, each node processes all T steps at once as one batched conv (SpikingJelly's
  multi-step mode). Valid because the graphs are feed-forward within a step.

A bit-plane layer (``BitPlaneNeuron``, ``Integrator(uwd=True)``) needs all T steps of its input before it emits its
first bit (``docs/SEMANTICS.md`` section 5.5), so models with such layers always run layer-major (``mode="step"``
runs them as ``"layer"``).

Supported: Conv (stride 1/2, dilated), ConvTranspose, Neuron (IF/LIF, soft/hard reset, v_init zero/half), Integrator,
Add, Concat; direct, uwe and rate encoders; membrane, count and uwd read-outs; the MPRN extra step of SpikingIR
(``weight_extra``, firing at ``den * v >= num * theta``, compared in float64) when asked for with
``extra_step=True`` (without it a model with MPRN neurons raises :class:`NotImplementedError`, as before).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from edgespike.frames import check_frame, pad_to_multiple
from edgespike.model import INPUT, Add, BitPlaneNeuron, Concat, Conv, ConvTranspose, Integrator, Model, Neuron
from edgespike.reference import encode
from edgespike.validate import analyse

FLOAT32_SAFE_BITS = 23
"""Use float32 only if every bound fits 23 signed bits: a conv's partial sums are then below 2**24 in magnitude
(the interval of a sum with non-negative inputs bounds its positive and negative parts separately)."""


class TorchSim:
    """A model prepared for repeated runs (weights converted to tensors once).

    Parameters
    ----------
    model : Model
    device : str or torch.device
    dtype : torch.dtype, optional
        Force float32 or float64; default picks float32 when provably exact.
    extra_step : bool
        Simulate the MPRN extra step of models that have one (opt-in; otherwise such models are refused).
    """

    def __init__(self, model: Model, device="cpu", dtype: torch.dtype | None = None, extra_step: bool = False):
        self.analysis = analyse(model)
        if model.has_extra_step and not extra_step:
            raise NotImplementedError("torchsim simulates MPRN extra steps only with extra_step=True")
        self.model = model
        self.device = torch.device(device)
        if dtype is None:
            dtype = torch.float32 if self.analysis.worst_bits() <= FLOAT32_SAFE_BITS else torch.float64
        self.dtype = dtype
        self.params: dict[str, dict[str, torch.Tensor]] = {}
        for node in model.nodes:
            p = {}
            if isinstance(node, Conv):
                p["w"] = self._t(node.weight)
                p["b"] = self._t(node.bias)
                p["w_extra"] = p["w"] if node.weight_extra is None else self._t(node.weight_extra)
            elif isinstance(node, ConvTranspose):
                p["w"] = self._t(node.weight).transpose(0, 1).contiguous()  # PyTorch wants [C_in, C_out, k, k]
                p["b"] = self._t(node.bias)
            elif isinstance(node, (Neuron, BitPlaneNeuron)):
                p["theta"] = self._t(node.threshold)[None, :, None, None]
            if isinstance(node, BitPlaneNeuron):
                p["b"] = self._t(node.bias)[None, :, None, None]
            self.params[node.name] = p

    def _t(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a, np.float64)).to(self.device, self.dtype)

    # ---------------------------------------------------------------- running
    @torch.no_grad()
    def run(self, frames: np.ndarray, mode: str = "step") -> np.ndarray:
        """Denoise a uint8 frame ``[H, W]`` or a batch ``[N, H, W]`` of equally sized frames."""
        frames = np.asarray(frames)
        single = frames.ndim == 2
        if single:
            frames = frames[None]
        for f in frames:
            check_frame(f)
        H, W = frames.shape[1:]
        m = self.model
        x = np.stack([pad_to_multiple(f, m.size_multiple) for f in frames])
        T = m.timesteps
        enc = self._encode(x)  # [T, N, 1, Hp, Wp]
        state: dict[str, dict[str, torch.Tensor]] = {}
        if mode == "step" and not m.has_bitplane:
            for t in range(T):
                self._pass(enc[t:t + 1], t, state)
        elif mode in ("layer", "step"):
            self._pass(enc, 0, state)
        else:
            raise ValueError(f"mode must be 'step' or 'layer', got {mode!r}")
        if m.has_extra_step:  # step T: no input, weight_extra without bias, only MPRN neurons fire
            self._pass(torch.zeros_like(enc[:1]), T, state, extra=True)
        out = self._decode(x, state)[:, :H, :W]
        return out[0] if single else out

    def _encode(self, x: np.ndarray) -> torch.Tensor:
        m = self.model
        T = m.timesteps
        if m.encoder.kind == "direct":
            v = torch.from_numpy(x.astype(np.float64)).to(self.device, self.dtype)[None, :, None]
            return v.expand(T, *v.shape[1:])
        planes = np.stack([np.stack([encode(m, f, t) for f in x]) for t in range(T)])  # [T, N, 1, H, W]
        return torch.from_numpy(planes.astype(np.float64)).to(self.device, self.dtype)

    def _pass(self, inp: torch.Tensor, t0: int, state: dict, extra: bool = False) -> None:
        """Run every node over the steps ``t0 .. t0 + L - 1`` (or the MPRN extra step when ``extra``); values are
        ``[L, N, C, H, W]``."""
        T = self.model.timesteps
        L, N = inp.shape[:2]
        values = {INPUT: inp}
        for node in self.model.nodes:
            p = self.params[node.name]
            if isinstance(node, (Conv, ConvTranspose)):
                src = values[node.input]
                flat = src.reshape(L * N, *src.shape[2:])
                if isinstance(node, Conv):
                    y = F.conv2d(flat, p["w_extra"] if extra else p["w"], None if extra else p["b"],
                                 stride=node.stride, padding=node.dilation * (node.kernel // 2),
                                 dilation=node.dilation)
                else:
                    y = F.conv_transpose2d(flat, p["w"], None if extra else p["b"], stride=2, padding=node.padding,
                                           output_padding=node.output_padding)
                out = y.reshape(L, N, *y.shape[1:])
            elif isinstance(node, Neuron):
                cur = values[node.input]
                theta = p["theta"]
                st = state.get(node.name)
                if st is None:
                    v0 = torch.floor(theta / 2) if node.v_init == "half" else torch.zeros_like(theta)
                    st = state[node.name] = {"v": v0.expand_as(cur[0]).clone(),
                                             "count": torch.zeros_like(cur[0]), "uwd": torch.zeros_like(cur[0])}
                v = st["v"]
                spikes = []
                if extra:
                    v = v + cur[0]  # no leak at the extra step
                    if node.mprn:  # den * v can pass 2**24: compare in float64 (exact below 2**53)
                        num, den = node.mprn
                        s = (den * v.double() >= num * theta.double()).to(v.dtype)
                        v = v - theta * s if node.reset == "soft" else v * (1 - s)
                    else:
                        s = torch.zeros_like(v)
                    st["count"] = st["count"] + s
                    spikes.append(s)
                for i in range(0 if extra else L):
                    t = t0 + i
                    if node.leak_shift:
                        v = v - torch.floor(v / 2**node.leak_shift)  # arithmetic shift = floor division
                    v = v + cur[i]
                    s = (v >= theta).to(v.dtype)
                    st["uwd"] = st["uwd"] + s * 2 ** (T - 1 - t)
                    v = v - theta * s if node.reset == "soft" else v * (1 - s)
                    st["count"] = st["count"] + s
                    spikes.append(s)
                st["v"] = v
                out = torch.stack(spikes)
            elif isinstance(node, BitPlaneNeuron):
                out = self._bitplane(node, p, values[node.input], state)
            elif isinstance(node, Integrator):
                cur = values[node.input]
                st = state.setdefault(node.name, {"v": torch.zeros_like(cur[0])})
                st["v"] = st["v"] + (_binary_weighted(cur).to(cur.dtype) if node.uwd else cur.sum(0))
                out = torch.zeros_like(cur)
            elif isinstance(node, Add):
                out = sum(values[i] for i in node.inputs)
            elif isinstance(node, Concat):
                out = torch.cat([values[i] for i in node.inputs], dim=2)
            else:  # pragma: no cover - analyse() refuses unknown nodes
                raise NotImplementedError(type(node).__name__)
            values[node.name] = out

    def _bitplane(self, node: BitPlaneNeuron, p: dict, cur: torch.Tensor, state: dict) -> torch.Tensor:
        """Decode T steps MSB first, add the bias, emit the T bits of ``clip(floor(v / theta))`` MSB first.
        The division runs in float64 (exact for integers below 2**53)."""
        T = self.model.timesteps
        theta = p["theta"].double()
        v = _binary_weighted(cur) + p["b"].double()
        q = torch.floor(v / theta).clamp(0, 2**T - 1)
        bits = [torch.remainder(torch.floor(q / 2 ** (T - 1 - t)), 2) for t in range(T)]
        state[node.name] = {"v": v - theta * q, "uwd": q, "count": sum(bits)}
        return torch.stack(bits).to(cur.dtype)

    def _decode(self, x: np.ndarray, state: dict) -> np.ndarray:
        dec = self.model.decoder
        R = torch.zeros((x.shape[0], 1) + x.shape[1:], dtype=torch.int64)
        for term in dec.terms:
            key = "v" if term.quantity == "membrane" else term.quantity
            q = state[term.node][key].cpu().to(torch.float64).round().to(torch.int64)
            node = self.model.node(term.node)
            if isinstance(node, Integrator) and node.bias is not None:
                q = q + int(node.bias[0])
            R += int(term.multiplier[0]) * q
        r = (R + (1 << (dec.shift - 1))) >> dec.shift if dec.shift else R
        xt = torch.from_numpy(x.astype(np.int64))[:, None]
        y = xt - r if dec.residual else r
        return y.clamp(0, 255).to(torch.uint8)[:, 0].numpy()


def _binary_weighted(cur: torch.Tensor) -> torch.Tensor:
    """``sum_t 2**(T-1-t) cur[t]`` over the first axis, in float64 (the UWD)."""
    v = torch.zeros_like(cur[0], dtype=torch.float64)
    for c in cur:
        v = 2 * v + c.double()
    return v


def run(model: Model, frame: np.ndarray, mode: str = "step", device="cpu", dtype: torch.dtype | None = None,
        extra_step: bool = False):
    """One-shot convenience: :class:`TorchSim` ``(model).run(frame, mode)``; same result as the reference."""
    return TorchSim(model, device, dtype, extra_step).run(frame, mode)
