"""An integer spiking network as a small graph of plain dataclasses.

The graph is what a model file stores and what every executor (the reference, the fast CPU runtime, the RTL,
the exporters) consumes. Its meaning, to the bit, is defined in ``docs/SEMANTICS.md`` and executed by
:mod:`edgespike.reference`. Nodes are listed in topological order; each names its inputs. The encoded frame is
the implicit node ``"input"``.

Integer tensors are numpy arrays with fixed dtypes (int8 weights, int32 biases and thresholds). Float arrays
(``scale``) are metadata: they let exporters and the profiler recover real values and never enter the integer
computation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

INPUT = "input"
"""Name of the implicit node that carries the encoded frame."""

ENCODERS = ("direct", "uwe", "rate")
QUANTITIES = ("membrane", "count", "uwd")
RESETS = ("soft", "hard")
V_INITS = ("zero", "half")


class ModelError(ValueError):
    """A model that is malformed or cannot be run within its declared widths.

    The message is one line that names the node (or field) at fault and what to do.
    """


@dataclass(eq=False)
class Conv:
    """2-D convolution, odd square kernel, stride 1 or 2, zero padding ``k // 2`` ("same").

    ``weight`` is int8 ``[C_out, C_in, k, k]``; ``bias`` int32 ``[C_out]`` is added at every timestep.
    ``dilation`` (format 1.3, stride 1 only) spaces the taps ``dilation`` pixels apart, padding ``dilation * (k // 2)``
    (IRCNN's dilated 3x3 layers: a wider view for the same weights and operations).
    ``weight_extra`` (optional, int8, same shape) replaces ``weight`` at the MPRN extra step: it carries the
    trained spike value beta folded into the weights. ``scale`` (float32 ``[C_out]``) is the real value of one
    integer unit of this node's output current.
    """

    name: str
    input: str
    weight: np.ndarray
    bias: np.ndarray
    stride: int = 1
    weight_extra: np.ndarray | None = None
    scale: np.ndarray | None = None
    dilation: int = 1

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.input,)

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[0])

    @property
    def kernel(self) -> int:
        return int(self.weight.shape[2])


@dataclass(eq=False)
class ConvTranspose:
    """Transposed 2-D convolution with stride 2 that exactly doubles height and width.

    ``weight`` is int8 ``[C_out, C_in, k, k]`` (note: output channels first, unlike PyTorch); ``padding`` and
    ``output_padding`` follow PyTorch and must satisfy ``k - 2 * padding + output_padding == 2``.
    """

    name: str
    input: str
    weight: np.ndarray
    bias: np.ndarray
    padding: int = 0
    output_padding: int = 0
    scale: np.ndarray | None = None

    stride = 2

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.input,)

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[0])

    @property
    def kernel(self) -> int:
        return int(self.weight.shape[2])


@dataclass(eq=False)
class Neuron:
    """A layer of spiking neurons, one per element of its input current.

    IF when ``leak_shift == 0``; LIF with the shift leak ``v -= v >> leak_shift`` otherwise.
    ``threshold`` is int32 ``[C]`` (a per-layer threshold is a constant array), strictly positive.
    ``mprn = (num, den)`` makes it a SpikingIR MPRN neuron: one extra firing decision after step T at
    ``v >= (num / den) * threshold``.
    """

    name: str
    input: str
    threshold: np.ndarray
    reset: str = "soft"
    leak_shift: int = 0
    v_init: str = "zero"
    mprn: tuple[int, int] | None = None
    scale: np.ndarray | None = None

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.input,)

    @property
    def kind(self) -> str:
        base = "LIF" if self.leak_shift else "IF"
        return f"{base}-MPRN" if self.mprn else base

    @property
    def alpha(self) -> Fraction | None:
        return Fraction(*self.mprn) if self.mprn else None


@dataclass(eq=False)
class BitPlaneNeuron:
    """A layer of bit-plane neurons (VTSNN's UWD and UWE at a layer boundary), one per element of its input.

    Over the T steps the membrane decodes the input MSB first, ``v = 2 v + I[t]`` (the UWD, a DAC: accumulate
    and shift only); then ``bias`` (int32 ``[C]``) is added once, and the neuron emits the T bits of
    ``clip(floor(v / threshold), 0, 2**T - 1)`` MSB first, one per step (the UWE, a successive-approximation ADC).
    It needs its whole input before its first output bit (``docs/SEMANTICS.md`` section 5.5). A network of such
    layers is exactly an integer quantised ANN with T-bit unsigned activations.
    """

    name: str
    input: str
    threshold: np.ndarray
    bias: np.ndarray
    scale: np.ndarray | None = None

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.input,)

    @property
    def kind(self) -> str:
        return "bit-plane"


@dataclass(eq=False)
class Integrator:
    """Integrate-without-fire read-out: ``v += I`` every step (``uwd``: ``v = 2 v + I``, the binary-weighted sum
    that decodes bit planes MSB first), no threshold, no reset, ``v0 = 0``; ``bias`` (int32 ``[C]``, optional) is
    added once after the last step."""

    name: str
    input: str
    uwd: bool = False
    bias: np.ndarray | None = None

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.input,)


@dataclass(eq=False)
class Add:
    """Element-wise sum of the per-step values of nodes of identical shape (skip connections)."""

    name: str
    inputs: tuple[str, ...]


@dataclass(eq=False)
class Concat:
    """Channel concatenation of the per-step values of nodes of identical height and width (U-net skips)."""

    name: str
    inputs: tuple[str, ...]


Node = Conv | ConvTranspose | Neuron | BitPlaneNeuron | Integrator | Add | Concat
NODE_TYPES: dict[str, type] = {
    cls.__name__: cls for cls in (Conv, ConvTranspose, Neuron, BitPlaneNeuron, Integrator, Add, Concat)
}
SPIKING = (Neuron, BitPlaneNeuron)
"""Node types that emit spikes."""


@dataclass(eq=False)
class Encoder:
    """How a uint8 frame becomes the per-step value of node ``"input"``.

    ``direct``: the pixel value 0..255 at every step. ``uwe``: VTSNN bit planes, MSB first (T must be 8).
    ``rate``: Bernoulli spikes from the counter-based ``lowbias32`` hash with ``seed``.
    """

    kind: str = "direct"
    seed: int = 0


@dataclass(eq=False)
class ReadoutTerm:
    """One term of the decoder: ``multiplier[c] * quantity(node)[c]``."""

    node: str
    quantity: str
    multiplier: np.ndarray


@dataclass(eq=False)
class Decoder:
    """``R = sum of terms``; ``r = round_half_up(R / 2**shift)``; output ``clip(x - r)`` or ``clip(r)``."""

    terms: list[ReadoutTerm]
    shift: int = 0
    residual: bool = True


@dataclass(eq=False)
class Model:
    """A whole integer SNN: graph, timesteps, encoder, decoder, widths and metadata."""

    nodes: list[Node]
    timesteps: int
    encoder: Encoder = field(default_factory=Encoder)
    decoder: Decoder = field(default_factory=lambda: Decoder(terms=[]))
    membrane_bits: int = 32
    metadata: dict = field(default_factory=dict)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise ModelError(f"no node named {name!r}")

    @property
    def has_extra_step(self) -> bool:
        """True when some neuron is MPRN: the model then runs one extra step after step T."""
        return any(isinstance(n, Neuron) and n.mprn for n in self.nodes)

    @property
    def has_bitplane(self) -> bool:
        """True when some layer is a bit-plane layer (execution must then be layer-major)."""
        return any(isinstance(n, BitPlaneNeuron) or (isinstance(n, Integrator) and n.uwd) for n in self.nodes)

    @property
    def size_multiple(self) -> int:
        """Frames are edge-padded to a multiple of this (2 ** number of stride-2 convs on the deepest path)."""
        depth = {INPUT: 0}
        deepest = 0
        for n in self.nodes:
            d = max(depth[i] for i in n.inputs)
            if isinstance(n, Conv) and n.stride == 2:
                d += 1
            elif isinstance(n, ConvTranspose):
                d -= 1
            depth[n.name] = d
            deepest = max(deepest, d)
        return 2**deepest

    def equals(self, other: Model) -> bool:
        """Structural and bitwise equality (the file round-trip test uses this)."""
        from edgespike.fileformat import model_to_header_and_tensors

        h1, t1 = model_to_header_and_tensors(self)
        h2, t2 = model_to_header_and_tensors(other)
        return h1 == h2 and t1.keys() == t2.keys() and all(
            t1[k].dtype == t2[k].dtype and np.array_equal(t1[k], t2[k]) for k in t1
        )
