"""The accelerator's parameters: the record every component of the shared engine is built from.

A :class:`Plan` holds a model cut into :class:`LayerParams` (one Conv or ConvTranspose and the Neuron or Integrator
it feeds), the widths and depths of every RAM and the layout of the weight and params RAMs
(:meth:`Plan.weight_words`, :meth:`Plan.weight_image`: what the host loads at run time). It is made on the host by
:func:`edgespike.fpga.params.plan`, the planner and fit check (which refuses what does not fit before any
simulation or synthesis); the gateware only reads it, and imports nothing from the host side.

The architecture (``docs/RTL.md``) is **layer-major with one shared engine**: the layers run one after the
other, each for all ``T`` steps, one block of ``lanes`` output channels at a time. So only one block of one
layer's membranes is ever resident, and the only storage between layers is two spike bitmaps (``T x h x w x C``
bits each, ping-pong). Weights, biases and thresholds of all layers live in two read/write RAMs that the host
can (re)load at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import ceil

import numpy as np

from edgespike.model import Model
from edgespike.rtl.common import bits_for, pack

PARAM_BITS = 64  # one params word per channel: bias (int32) then threshold (int32)


@dataclass(frozen=True)
class Device:
    """Memory and logic of a target FPGA, as the fit check sees it."""

    name: str
    luts: int
    bram_blocks: int
    bram_configs: tuple[tuple[int, int], ...]  # (width, depth) aspect ratios of one block
    bram_label: str
    spram_blocks: int = 0  # iCE40 UP5K only: 16384 x 16 single-port blocks

    @property
    def bram_bits(self) -> int:
        w, d = self.bram_configs[0]
        return w * d


@dataclass
class Ram:
    """One single-port read/write memory of the design."""

    name: str
    width: int
    depth: int

    @property
    def bits(self) -> int:
        return self.width * self.depth


@dataclass
class LayerParams:
    """One layer: a Conv or ConvTranspose and the Neuron or Integrator it feeds, as the shared engine runs it.

    A *wide* layer runs in ``groups = C_out / lanes`` blocks of ``lanes`` consecutive output channels; a membrane
    word holds one block at one position. A *narrow* layer (one output channel, fewer than ``lanes``: the read-out
    layer) packs ``lanes`` consecutive positions of a row into one word instead (lane = ``x mod lanes``).
    """

    index: int
    name: str  # the Neuron / Integrator node
    conv: str
    kind: str  # "neuron" or "integrator"
    op: str  # "conv" or "convT"
    cin: int
    cout: int
    k: int
    stride: int  # 1 or 2 (conv); 2 for convT
    pad: int  # conv: k // 2; convT: its padding
    weight: np.ndarray  # int8 [cout, cin, k, k]
    bias: list[int]
    theta: list[int]
    reset: str
    leak: int
    v_init: str
    bit_serial: bool  # first layer under direct coding: events carry a bit weight 2**sh
    mbits: int  # this layer's own membrane width (the engine uses the plan's maximum)
    level_in: int
    level_out: int
    narrow: bool = False
    groups: int = 1
    wbase: int = 0  # first weight word (a narrow layer packs its bytes from byte wbase * lanes on)
    pbase: int = 0  # params word of output channel 0

    @property
    def taps(self) -> int:
        return self.k * self.k

    def init_value(self, c: int) -> int:
        """Membrane of channel ``c`` after the init pass: ``v0``, leaked once, plus the bias of step 0."""
        if self.kind == "integrator":
            return self.bias[c]
        v0 = self.theta[c] >> 1 if self.v_init == "half" else 0
        if self.leak:
            v0 -= v0 >> self.leak
        return v0 + self.bias[c]


@dataclass
class Term:
    """A decoder term: ``multiplier * quantity`` of the last layer."""

    quantity: str
    multiplier: int


@dataclass
class Plan:
    """Everything the gateware is built from; made by :func:`edgespike.fpga.params.plan`.

    ``fingerprint``, ``structure`` and ``device_key`` are what the link's IDENT reports (the model's CRC-32, the
    CRC-32 of what the bitstream fixes, the fit-check device): the planner computes them on the host, so that the
    gateware need not import the firmware to know them.
    """

    model: Model
    device: Device
    tile: tuple[int, int]
    encoder: str
    timesteps: int
    lanes: int
    layers: list[LayerParams]
    terms: list[Term]
    shift: int
    residual: bool
    readout_bits: int
    halo: int
    mbits: int  # membrane field of every lane
    count_bits: int
    uwd_bits: int
    rams: list[Ram] = field(default_factory=list)
    usage: dict = field(default_factory=dict)
    fingerprint: int = 0
    structure: int = 0
    device_key: str = ""
    max_tile_cycles: int = 0  # the worst case of a whole tile (announced by IDENT; edgespike.fpga.cycles)

    # --- geometry (address fields are concatenated: no multiplier in any address path)
    @property
    def multiple(self) -> int:
        """Tile sides must be multiples of this (the model's frame size multiple)."""
        return self.model.size_multiple

    @property
    def ybits(self) -> int:
        return bits_for(self.tile[0])

    @property
    def xbits(self) -> int:
        return bits_for(self.tile[1])

    @property
    def cbits(self) -> int:
        return bits_for(max(lp.cin for lp in self.layers))

    @property
    def lane_shift(self) -> int:
        """log2(lanes) when a narrow layer packs positions into lanes (lanes is then a power of two)."""
        return (self.lanes - 1).bit_length()

    @property
    def wide(self) -> list[LayerParams]:
        return [lp for lp in self.layers if not lp.narrow]

    def dims(self, level: int) -> tuple[int, int]:
        return -(-self.tile[0] // (1 << level)), -(-self.tile[1] // (1 << level))

    @property
    def wide_ybits(self) -> int:
        return max(bits_for(self.dims(lp.level_out)[0]) for lp in self.wide)

    @property
    def wide_xbits(self) -> int:
        return max(bits_for(self.dims(lp.level_out)[1]) for lp in self.wide)

    @property
    def gbits(self) -> int:
        """Bits of the block index in a bitmap address (0 when every layer is one block)."""
        g = max(lp.groups for lp in self.wide)
        return bits_for(g) if g > 1 else 0

    @property
    def tbits(self) -> int:
        return bits_for(self.timesteps)

    @property
    def lane_bits(self) -> int:
        return self.mbits + self.count_bits + self.uwd_bits

    @property
    def word_bits(self) -> int:
        return self.lanes * self.lane_bits

    @property
    def narrow_xbits(self) -> int:
        """Word-index bits of x in a narrow layer's address (positions ``x >> lane_shift``)."""
        return max(0, self.xbits - self.lane_shift)

    @property
    def mem_depth(self) -> int:
        """Membrane words: one block of a wide layer ``{y, x}``, or a narrow layer ``{y, x >> lane_shift}``."""
        depth = 1 << (self.wide_ybits + self.wide_xbits)
        if any(lp.narrow for lp in self.layers):
            depth = max(depth, 1 << (self.ybits + self.narrow_xbits))
        return depth

    @property
    def bitmap_depth(self) -> int:
        """Spike-bitmap words (``lanes`` bits: one block at one position of one step), address ``{t, y, x, g}``."""
        return 1 << (self.tbits + self.wide_ybits + self.wide_xbits + self.gbits)

    @property
    def weight_depth(self) -> int:
        last = self.layers[-1]
        if last.narrow:
            return last.wbase + ceil(last.cin * last.taps / self.lanes)
        return last.wbase + last.cin * last.taps * last.groups

    @property
    def params_depth(self) -> int:
        return sum(lp.cout for lp in self.layers)

    # --- run-time loaded contents
    def weight_words(self) -> list[int]:
        """The weight RAM: wide layer word ``wbase + (c*k*k + tap) * groups + g`` holds the ``lanes`` weights of
        block ``g``; a narrow layer's weights are bytes ``wbase*lanes + c*k*k + tap``, ``lanes`` per word."""
        words = [0] * self.weight_depth
        L = self.lanes
        for lp in self.layers:
            w = lp.weight
            for c in range(lp.cin):
                for tap in range(lp.taps):
                    i, j = divmod(tap, lp.k)
                    if lp.narrow:
                        byte = lp.wbase * L + c * lp.taps + tap
                        words[byte // L] |= (int(w[0, c, i, j]) & 0xFF) << (8 * (byte % L))
                        continue
                    for g in range(lp.groups):
                        lanes = [(int(w[g * L + lane, c, i, j]), 8) for lane in range(L)]
                        words[lp.wbase + (c * lp.taps + tap) * lp.groups + g] = pack(lanes)
        return words

    def param_words(self) -> list[int]:
        """The params RAM: one word per output channel of every layer, ``bias | theta << 32``."""
        return [pack([(lp.bias[c], 32), (lp.theta[c], 32)]) for lp in self.layers for c in range(lp.cout)]

    def weight_image(self) -> bytes:
        """What the host sends after ``'W'``: the weight RAM then the params RAM, words little-endian."""
        wb, pb = self.lanes, PARAM_BITS // 8
        return (b"".join(v.to_bytes(wb, "little") for v in self.weight_words())
                + b"".join(v.to_bytes(pb, "little") for v in self.param_words()))

    def summary(self) -> str:
        u = self.usage
        lines = [f"{self.device.name}, tile {self.tile[0]}x{self.tile[1]} (halo {self.halo}), T = {self.timesteps},"
                 f" {len(self.layers)} layers on one engine of {self.lanes} lanes",
                 f"  logic ~{u['luts']} LUT4 of {self.device.luts}; {u['bram']} of {self.device.bram_blocks} "
                 f"{self.device.bram_label}" + (f"; {u['spram']} of {self.device.spram_blocks} SPRAM"
                                                if self.device.spram_blocks else "")]
        for r in self.rams:
            lines.append(f"  {r.name}: {r.depth} x {r.width} bit -> {u['where'][r.name]}")
        return "\n".join(lines)
