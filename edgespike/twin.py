"""The float ANN twin of an integer SNN, computed from the ``.esnn`` integers alone.

Over T steps an integrate-and-fire neuron with soft reset and constant input current ``I`` fires about
``I / theta`` times per step, so the rate-domain network below is what the spiking network approximates (exactly,
for the first spiking layer, in ``"quant"`` mode). It is what ``edgespike eval --compare ann`` runs and what the
ONNX/TFLite exporters translate: :func:`layers` gives a plain layer-by-layer description they can walk.

Every node carries its **per-step average value** ("rate"):

- ``input`` (direct encoder): the pixel value 0..255.
- Conv / ConvTranspose: ``I = conv(r_in, W_int) + b_int`` in integer units (W, b are the model's int8/int32
  tensors as floats, the float ``scale`` metadata is not used).
- Neuron (IF, soft reset), mode ``"relu"``: ``r = clip(I / theta, 0, 1)``.
  Mode ``"quant"`` (T + 1 levels, the spike count of an IF neuron under constant drive):
  ``r = clip(floor((T*I + theta // 2) / theta), 0, T) / T`` for ``v_init = "half"``
  (``= floor(T*I/theta + 1/2)`` since ``T*I`` is an integer in this mode) and
  ``clip(floor(T*I / theta), 0, T) / T`` for ``v_init = "zero"``.
- Integrator: passes 0 on (as in the SNN); its read-out membrane is ``T * I``.
- Add: element-wise sum; Concat: channel concatenation.

The decoder is the model's: ``R = sum(multiplier * q)`` with ``q = T * I`` for the membrane of an Integrator and
``q = T * r`` for the count of a Neuron; ``r_out = floor(R / 2**shift + 1/2)`` (round half up), output
``clip(x - r_out, 0, 255)`` (residual) or ``clip(r_out, 0, 255)``. Frames are edge-padded to the model's size
multiple and cropped back, as in the reference.

Refused, with one line naming the node: rate and UWE encoders, LIF and MPRN neurons, hard reset, and the
``membrane`` of a Neuron or the ``uwd`` quantity in the decoder (their value depends on spike timing, which a
rate network does not have).

**Bit-plane models** (``docs/SEMANTICS.md`` section 5.5) have an exact twin: the integer quantised ANN they are.
Every value is then the *decoded* one (``sum_t 2^(T-1-t) value[t]``): the input is the pixel (``uwe``) or
``(2^T - 1)`` times it (``direct``, folded into the first conv's weights), a conv gives ``W q + (2^T - 1) b`` plus the
bias of the bit-plane layer or ``uwd`` Integrator it feeds (folded into the conv's bias), and a bit-plane layer
``q = clip(floor(I / theta), 0, 2^T - 1)`` in ``"quant"`` mode (``clip(I / theta, 0, 2^T - 1)`` in ``"relu"`` mode,
the same network without activation rounding). Mixing bit-plane and IF layers has no twin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgespike.frames import check_frame, pad_to_multiple
from edgespike.model import (
    INPUT,
    Add,
    BitPlaneNeuron,
    Concat,
    Conv,
    ConvTranspose,
    Integrator,
    Model,
    ModelError,
    Neuron,
)
from edgespike.validate import analyse

MODES = ("relu", "quant")


@dataclass
class TwinLayer:
    """One node of the twin, in the model's topological order.

    Attributes
    ----------
    name, inputs
        As in the model (``"input"`` is the frame, pixel values 0..255).
    op
        ``"conv"``, ``"conv_transpose"``, ``"rate"`` (a Neuron), ``"integrator"``, ``"add"`` or ``"concat"``.
    weight, bias
        Float copies of the integer tensors (conv ops): weight ``[C_out, C_in, k, k]`` (also for ``conv_transpose``,
        whose PyTorch/ONNX layout is the transpose ``[C_in, C_out, k, k]``), bias ``[C_out]``.
    stride, padding, output_padding, dilation
        Conv: stride 1 or 2 with zero padding ``dilation * (k // 2)``, taps ``dilation`` apart; ConvTranspose:
        stride 2 with the PyTorch paddings.
    theta, v_init
        Rate ops: per-channel threshold ``[C]`` (float) and the neuron's initial membrane (rounding in quant mode).
    levels
        Bit-plane layers only: the largest activation ``2**T - 1``.
    scale
        The model's float ``scale`` metadata for this node, if any (the real value of one integer unit).
    """

    name: str
    op: str
    inputs: tuple[str, ...]
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    stride: int = 1
    padding: int = 0
    output_padding: int = 0
    dilation: int = 1
    theta: np.ndarray | None = None
    v_init: str = "zero"
    scale: np.ndarray | None = None
    levels: int | None = None  # a bit-plane layer's 2**T - 1 (its values are then decoded, not per step)


@dataclass
class TwinReadout:
    """One decoder term: ``multiplier * T * value(node)`` (value = current I of an Integrator, rate of a Neuron)."""

    node: str
    quantity: str
    multiplier: float


def _refuse(msg: str) -> ModelError:
    return ModelError(f"the ANN twin cannot model this: {msg}")


def layers(model: Model) -> list[TwinLayer]:
    """The twin's layer-by-layer description of ``model`` (validated; unsupported parts raise ModelError)."""
    analyse(model)
    if model.has_bitplane:
        return _bitplane_layers(model)
    if model.encoder.kind != "direct":
        raise _refuse(f"encoder {model.encoder.kind!r} (only the direct encoder has a rate-domain twin)")
    out = []
    for n in model.nodes:
        if isinstance(n, Conv):
            out.append(TwinLayer(n.name, "conv", n.inputs, n.weight.astype(np.float64), n.bias.astype(np.float64),
                                 stride=n.stride, padding=n.dilation * (n.kernel // 2), dilation=n.dilation,
                                 scale=n.scale))
        elif isinstance(n, ConvTranspose):
            out.append(TwinLayer(n.name, "conv_transpose", n.inputs, n.weight.astype(np.float64),
                                 n.bias.astype(np.float64), stride=2, padding=n.padding,
                                 output_padding=n.output_padding, scale=n.scale))
        elif isinstance(n, Neuron):
            if n.leak_shift:
                raise _refuse(f"node {n.name!r} is a LIF neuron (leak 2^-{n.leak_shift}); only IF neurons work")
            if n.mprn:
                raise _refuse(f"node {n.name!r} is an MPRN neuron (extra step); only plain IF neurons are supported")
            if n.reset != "soft":
                raise _refuse(f"node {n.name!r} uses a hard reset; only soft-reset IF neurons have a rate twin")
            out.append(TwinLayer(n.name, "rate", n.inputs, theta=n.threshold.astype(np.float64), v_init=n.v_init,
                                 scale=n.scale))
        elif isinstance(n, Integrator):
            out.append(TwinLayer(n.name, "integrator", n.inputs))
        elif isinstance(n, Add):
            out.append(TwinLayer(n.name, "add", tuple(n.inputs)))
        elif isinstance(n, Concat):
            out.append(TwinLayer(n.name, "concat", tuple(n.inputs)))
        else:  # pragma: no cover - analyse() refuses unknown node types
            raise _refuse(f"node {n.name!r} of type {type(n).__name__}")
    readout(model)  # refuse unsupported decoder terms up front
    return out


def _bitplane_layers(model: Model) -> list[TwinLayer]:
    """The exact twin of a bit-plane model: its integer quantised ANN (see the module docstring)."""
    if model.encoder.kind not in ("uwe", "direct"):
        raise _refuse(f"encoder {model.encoder.kind!r} (bit-plane models decode uwe or direct input)")
    levels = 2**model.timesteps - 1
    consumers: dict[str, list] = {}
    for n in model.nodes:
        for i in n.inputs:
            consumers.setdefault(i, []).append(n)
    out = []
    for n in model.nodes:
        if isinstance(n, (Conv, ConvTranspose)):
            nxt = consumers.get(n.name, [])
            if len(nxt) != 1 or not isinstance(nxt[0], (BitPlaneNeuron, Integrator)):
                raise _refuse(f"conv {n.name!r} must feed exactly one bit-plane layer or uwd Integrator")
            after = nxt[0]
            w = n.weight.astype(np.float64) * (levels if n.input == INPUT and model.encoder.kind == "direct" else 1)
            b = n.bias.astype(np.float64) * levels
            if getattr(after, "bias", None) is not None:
                b = b + after.bias.astype(np.float64)
            op = "conv" if isinstance(n, Conv) else "conv_transpose"
            out.append(TwinLayer(n.name, op, n.inputs, w, b, stride=n.stride,
                                 padding=n.dilation * (n.kernel // 2) if op == "conv" else n.padding,
                                 output_padding=0 if op == "conv" else n.output_padding,
                                 dilation=getattr(n, "dilation", 1), scale=n.scale))
        elif isinstance(n, BitPlaneNeuron):
            out.append(TwinLayer(n.name, "rate", n.inputs, theta=n.threshold.astype(np.float64), v_init="zero",
                                 scale=n.scale, levels=levels))
        elif isinstance(n, Integrator) and n.uwd:
            out.append(TwinLayer(n.name, "integrator", n.inputs))
        else:
            raise _refuse(f"node {n.name!r} ({type(n).__name__}) in a bit-plane model; the twin takes chains of "
                          "convs into bit-plane layers and a uwd Integrator")
    readout(model)
    return out


def readout(model: Model) -> list[TwinReadout]:
    """The decoder terms the twin computes (refuses the quantities a rate network cannot produce)."""
    terms = []
    for t in model.decoder.terms:
        node = model.node(t.node)
        if t.quantity == "membrane" and isinstance(node, Integrator):
            terms.append(TwinReadout(t.node, "membrane", float(t.multiplier[0])))
        elif t.quantity == "count" and isinstance(node, Neuron):
            terms.append(TwinReadout(t.node, "count", float(t.multiplier[0])))
        else:
            raise _refuse(f"decoder term {t.quantity}({t.node}) (supported: membrane of an Integrator, "
                          "count of a Neuron)")
    return terms


def conv2d(x: np.ndarray, w: np.ndarray, stride: int, dilation: int = 1) -> np.ndarray:
    """Float 'same' convolution (zero padding ``dilation * (k // 2)``, taps ``dilation`` apart) of ``x [C, H, W]``
    with ``w [O, C, k, k]``."""
    k = w.shape[2]
    d = dilation
    p = d * (k // 2)
    c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (p, p), (p, p)))
    ho = (h + 2 * p - d * (k - 1) - 1) // stride + 1
    wo = (wd + 2 * p - d * (k - 1) - 1) // stride + 1
    out = np.zeros((w.shape[0], ho * wo), x.dtype)
    for i in range(k):
        for j in range(k):
            window = xp[:, d * i:d * i + stride * ho:stride, d * j:d * j + stride * wo:stride].reshape(c, -1)
            out += w[:, :, i, j] @ window
    return out.reshape(w.shape[0], ho, wo)


def conv_transpose2d(x: np.ndarray, w: np.ndarray, padding: int) -> np.ndarray:
    """Float stride-2 transposed convolution that doubles the size (see docs/SEMANTICS.md section 4)."""
    k = w.shape[2]
    c, h, wd = x.shape
    full = np.zeros((w.shape[0], 2 * h + k + 2, 2 * wd + k + 2), x.dtype)
    flat = x.reshape(c, -1)
    for i in range(k):
        for j in range(k):
            full[:, i:i + 2 * h:2, j:j + 2 * wd:2] += (w[:, :, i, j] @ flat).reshape(-1, h, wd)
    return full[:, padding:padding + 2 * h, padding:padding + 2 * wd]


class Twin:
    """The float twin of a model, ready to run.

    Parameters
    ----------
    model : Model
        The integer SNN.
    mode : {"relu", "quant"}
        ``"relu"``: clipped-ReLU rates ``clip(I/theta, 0, 1)``; ``"quant"``: the T + 1 level rates of IF neurons.
    dtype : numpy dtype
        ``float32`` (fast; the default) or ``float64``.
    """

    def __init__(self, model: Model, mode: str = "quant", dtype=np.float32):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.model = model
        self.mode = mode
        self.dtype = np.dtype(dtype)
        self.layers = layers(model)
        self.terms = readout(model)
        self.T = model.timesteps
        # Bit-plane models are computed on decoded values: no per-step averages, nothing to scale by T.
        self.bitplane = model.has_bitplane
        # Cast the parameters once: the per-tap matmuls run in self.dtype.
        self._w = {layer.name: layer.weight.astype(self.dtype) for layer in self.layers if layer.weight is not None}
        self._b = {layer.name: layer.bias.astype(self.dtype)[:, None, None]
                   for layer in self.layers if layer.bias is not None}
        self._th = {layer.name: layer.theta.astype(self.dtype)[:, None, None]
                    for layer in self.layers if layer.theta is not None}

    def _run(self, frame: np.ndarray) -> dict[str, np.ndarray]:
        """Every node's value for one padded uint8 frame, in the internal domain (see :meth:`values`).

        In quant mode the values are totals over the T steps (``T * rate``, ``T * I``): all integers, so float32 is
        exact below 2**24 and the floor of the count formula never sees rounding dust. In relu mode they are rates.
        """
        T = self.T
        k = T if self.mode == "quant" and not self.bitplane else 1
        vals = {INPUT: (k * frame.astype(self.dtype))[None]}
        currents = {}
        for layer in self.layers:
            if layer.op == "conv":
                v = (conv2d(vals[layer.inputs[0]], self._w[layer.name], layer.stride, layer.dilation)
                     + k * self._b[layer.name])
            elif layer.op == "conv_transpose":
                v = (conv_transpose2d(vals[layer.inputs[0]], self._w[layer.name], layer.padding)
                     + k * self._b[layer.name])
            elif layer.op == "rate":
                current = vals[layer.inputs[0]]
                theta = self._th[layer.name]
                if layer.levels is not None:  # a bit-plane layer: T-bit activations
                    v = current / theta if self.mode == "relu" else np.floor(current / theta)
                    v = np.clip(v, 0, layer.levels)
                elif self.mode == "relu":
                    v = np.clip(current / theta, 0, 1)
                else:  # the spike count of a soft-reset IF neuron driven by a constant current I for T steps
                    offset = np.floor(theta / 2) if layer.v_init == "half" else 0
                    v = np.clip(np.floor((current + offset) / theta), 0, T)
                v = v.astype(self.dtype, copy=False)
            elif layer.op == "integrator":
                currents[layer.name] = vals[layer.inputs[0]]
                v = np.zeros_like(vals[layer.inputs[0]])  # what later nodes see, as in the SNN
            elif layer.op == "add":
                v = sum(vals[i] for i in layer.inputs)
            else:  # concat
                v = np.concatenate([vals[i] for i in layer.inputs], axis=0)
            vals[layer.name] = v
        vals.update(currents)
        return vals

    def values(self, frame: np.ndarray) -> dict[str, np.ndarray]:
        """Per-step average value (rate or current I) of every node for one padded uint8 frame.

        Integrators map to their input current I (the read-out membrane is ``T * I``), not to the 0 they pass on.
        """
        k = self.T if self.mode == "quant" and not self.bitplane else 1
        return {name: v / k for name, v in self._run(frame).items()}

    def readout_value(self, frame: np.ndarray) -> np.ndarray:
        """The decoder sum ``R`` (float64, ``H x W`` of the padded frame) before the shift and rounding."""
        vals = self._run(frame)
        # quant values are already totals over T steps; bit-plane values are decoded (their own totals)
        k = 1 if self.mode == "quant" or self.bitplane else self.T
        R = np.zeros(frame.shape, np.float64)
        for term in self.terms:
            R += term.multiplier * (k * vals[term.node][0].astype(np.float64))
        return R

    def denoise(self, frame: np.ndarray) -> np.ndarray:
        """Denoise one uint8 grey frame; returns uint8 of the same size (decoder as in the reference)."""
        frame = check_frame(frame)
        h, w = frame.shape
        x = pad_to_multiple(frame, self.model.size_multiple)
        R = self.readout_value(x)
        dec = self.model.decoder
        r = np.floor(R / 2.0**dec.shift + 0.5)
        y = x.astype(np.float64) - r if dec.residual else r
        return np.clip(y, 0, 255).astype(np.uint8)[:h, :w]


def twin(model: Model, mode: str = "quant", dtype=np.float32) -> Twin:
    """Shorthand for :class:`Twin`."""
    return Twin(model, mode=mode, dtype=dtype)
