"""The float network an imported NIR graph describes, and a small float simulator of it.

An imported graph is first lowered (:mod:`edgespike.interchange.nir_import`) to this float network, which keeps
NIR's continuous parameters discretised with forward Euler at ``dt`` exactly as NIR specifies, but nothing
integer yet. The simulator below runs it in float64 on frames: it is the reference the integer model's
quantisation error is measured against (PSNR of the integer output vs this float output).

Neuron state is kept in *current units*: a NIR (L)IF neuron ``v <- a*v + g*I`` (``a = 1 - dt/tau``,
``g = dt/tau * r`` for LIF, ``a = 1, g = dt * r`` for IF) is the same as ``u <- a*u + I`` with ``u = v / g`` and
threshold ``thr / g``, because NIR's reset target and leak voltage are 0 here (anything else is refused). So the
gain never touches the weights and the integer threshold is simply ``thr / g`` in units of the input current.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgespike.frames import pad_to_multiple
from edgespike.model import INPUT
from edgespike.twin import conv2d


@dataclass
class FConv:
    """Convolution with 'same' padding ``dilation * (k // 2)`` (the only padding edgespike has); pools are lowered to
    this."""

    name: str
    input: str
    weight: np.ndarray  # float64 [C_out, C_in, k, k]
    bias: np.ndarray  # float64 [C_out]
    stride: int = 1
    path: str = ""
    origin: str = "Conv2d"
    dilation: int = 1

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.input,)


@dataclass
class FNeuron:
    """A neuron layer in current units: ``u <- a*u + I``; fire ``u > thr`` (NIR's strict compare; ``compare="ge"``:
    ``u >= thr``, as Sinabs and SpikingJelly fire); reset.

    ``reset``: ``"hard"`` (to 0), ``"soft"`` (subtract ``thr``) or ``"soft-delayed"`` (snnTorch's default: the
    threshold of a spike at step t is subtracted at step t + 1, after the leak: ``u <- a*u + I - thr*s_prev``).
    ``spiking=False`` is a leaky read-out (NIR ``LI``): it never fires and its membrane is read.
    ``leak_shift`` is the edgespike shift leak chosen for ``a`` (0 = no leak).
    """

    name: str
    input: str
    thr: np.ndarray  # float64 [C], in units of the input current
    a: float = 1.0
    leak_shift: int = 0
    gain: float = 1.0  # NIR membrane = gain * u (for a membrane read-out)
    reset: str = "hard"
    spiking: bool = True
    path: str = ""
    origin: str = "LIF"
    tau_steps: float | None = None  # tau / dt, for the report
    compare: str = "gt"

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.input,)


@dataclass
class FIntegrator:
    """NIR ``I``: ``v <- v + gain * I``, read out as the membrane."""

    name: str
    input: str
    gain: float = 1.0
    path: str = ""

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.input,)


@dataclass
class FAdd:
    """Sum of several edges arriving at one NIR node (NIR sums the inputs of a node)."""

    name: str
    inputs: tuple[str, ...]


@dataclass
class FloatNet:
    """A lowered graph: nodes in topological order, the read-out node, and the pixel mapping.

    The NIR input value is ``input_scale * pixel``. The read-out ``y`` is the read-out node's spike count
    (spiking neuron) or its NIR membrane after the last step (``I`` / ``LI``); the output pixel is
    ``clip(x - output_scale * y)`` when ``residual`` else ``clip(output_scale * y)``.
    """

    nodes: list = field(default_factory=list)
    readout: str = ""
    input_scale: float = 1 / 255
    output_scale: float = 1.0
    residual: bool = False
    timesteps: int = 8
    dt: float = 1e-4
    notes: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)  # frameworks the file's parameters look written by

    def node(self, name: str):
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    @property
    def size_multiple(self) -> int:
        depth = {INPUT: 0}
        deepest = 0
        for n in self.nodes:
            d = max(depth[i] for i in n.inputs) + (isinstance(n, FConv) and n.stride == 2)
            depth[n.name] = d
            deepest = max(deepest, d)
        return 2**deepest

    @property
    def readout_quantity(self) -> str:
        n = self.node(self.readout)
        return "count" if isinstance(n, FNeuron) and n.spiking else "membrane"


@dataclass
class FloatRun:
    """What a float run produced: the output frame (float, clipped to 0..255), the read-out ``y``, spike counts
    per neuron, and (when recorded) each node's per-step values."""

    output: np.ndarray
    y: np.ndarray
    counts: dict[str, np.ndarray]
    values: dict[str, list[np.ndarray]] | None = None


def simulate(net: FloatNet, frame: np.ndarray, record: bool = False) -> FloatRun:
    """Run ``net`` on one uint8 frame for ``net.timesteps`` steps, in float64 (forward Euler at ``dt``)."""
    H, W = frame.shape
    x = pad_to_multiple(frame, net.size_multiple)
    state: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    rec: dict[str, list[np.ndarray]] = {}
    inp = net.input_scale * x.astype(np.float64)[None]
    for t in range(net.timesteps):
        values = {INPUT: inp}
        for n in net.nodes:
            if isinstance(n, FConv):
                out = conv2d(values[n.input], n.weight, n.stride, n.dilation) + n.bias[:, None, None]
            elif isinstance(n, FNeuron):
                cur = values[n.input]
                if t == 0:
                    state[n.name] = np.zeros_like(cur)
                    counts[n.name] = np.zeros_like(cur)
                u = state[n.name] = n.a * state[n.name] + cur
                if n.spiking:
                    thr = n.thr[:, None, None]
                    if n.reset == "soft-delayed" and t > 0:
                        u -= thr * state[n.name + "\0spikes"]
                    s = ((u >= thr) if n.compare == "ge" else (u > thr)).astype(np.float64)
                    if n.reset == "soft":
                        u -= thr * s
                    elif n.reset == "hard":
                        u[s == 1] = 0.0
                    else:
                        state[n.name + "\0spikes"] = s
                    counts[n.name] += s
                    out = s
                else:
                    out = n.gain * u
            elif isinstance(n, FIntegrator):
                cur = values[n.input]
                if t == 0:
                    state[n.name] = np.zeros_like(cur)
                state[n.name] += cur
                out = n.gain * state[n.name]
            else:  # FAdd
                out = sum(values[i] for i in n.inputs)
            values[n.name] = out
            if record:
                rec.setdefault(n.name, []).append(out)
        if record:
            rec.setdefault(INPUT, []).append(inp)
    r = net.node(net.readout)
    if isinstance(r, FNeuron) and r.spiking:
        y = counts[r.name][0]
    else:
        y = r.gain * state[r.name][0]
    pix = net.output_scale * y
    out = x.astype(np.float64) - pix if net.residual else pix
    return FloatRun(np.clip(out, 0, 255)[:H, :W], y[:H, :W], counts, rec if record else None)
