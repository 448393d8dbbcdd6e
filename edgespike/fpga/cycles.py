"""Cycle model of the accelerator, exact to the cycle, over one tile or a whole frame.

The sequencer is strictly sequential (``sequencer.py``), so its cycle count is a closed form of the input
pixels and the spike maps of every layer at every step. Per layer ``l`` and block ``g`` (``W`` = membrane words
of the block: ``h_l * w_l``, or ``h_l * ceil(w_l / lanes)`` for a narrow layer; ``L`` = lanes):

==========  ===========================================================================================
PARAMS      ``L + 3``
INIT        ``W + 2``
INPUT (t)   layer 0: ``N * (1 + D) + sum over events of S + 2``; ``N = h * w`` pixels, ``D`` SAR steps per
            pixel: 8 (direct), ``t + 1`` (UWE)
            layer l > 0: ``3 * words_in + sum over events of (1 + S) + 1``; ``words_in = h_in * w_in * groups_in``
FIRE (t)    ``2 * W + 2``
READOUT     ``2 * N + 1``
==========  ===========================================================================================

Memory accesses (:class:`Accesses`): every read and write of each RAM of the design, the same quantities the
simulation counts from the RAMs' enables (``sim.run_tile(..., accesses=...)``). Per block ``g`` of layer ``l``:
params ``L`` reads; membranes ``W`` init writes, per step one read and one write per in-tile tap of every input
event and per fire word, ``N`` read-out reads; weights one read per in-tile tap; bitmap ``l % 2`` ``W`` writes
per step (all but the last layer) and bitmap ``(l - 1) % 2`` ``words_in`` reads per step; pixels ``N`` writes
(LOAD), ``N`` reads per step of each block of layer 0 and ``N`` at read-out.

``S = 2 * (taps landing in the tile) + (visited taps that do not)``: the engine's busy cycles for one event
(a stride-2 Conv visits only the taps of the event's parity). Input
events of layer 0 are the set bits of each pixel (direct coding, bit-serial) or the pixels whose bit ``7 - t``
is set (UWE); those of layer ``l > 0`` are the spikes of layer ``l - 1`` at the same step, replayed once per
output block. The tests check :func:`tile_cost` against the RTL's ``cycles`` counter.

:func:`frame_cost` runs this over the halo'd tiles of a whole frame (numpy, fast), which is how frames per
second are estimated at a given Fmax without simulating gateware.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgespike.firmware.tiling import tiles
from edgespike.fpga.params import LayerParams, Plan
from edgespike.model import Model
from edgespike.reference import conv2d, conv_transpose2d, encode

RAMS = ("pixels", "membranes", "weights", "params", "bitmap0", "bitmap1")


@dataclass
class Accesses:
    """Reads and writes of each RAM of the accelerator and its adds, for a tile or a whole frame.

    A plain record so that any implementation (this sequencer, a future layer pipeline) can fill it: ``rams``
    maps a RAM name to ``{"reads", "writes", "width", "depth"}`` (bits per word, words); ``adds`` maps an adder
    use to a count: ``synaptic`` (one per lane per membrane update, the ``sops``), ``fire`` (one threshold,
    reset and bias update per lane per fire word), ``init`` (one per lane per init word); ``add_bits`` is the
    membrane width those adders work at.
    """

    rams: dict = field(default_factory=dict)
    adds: dict = field(default_factory=dict)
    add_bits: int = 32

    def add(self, ram: str, reads: int = 0, writes: int = 0) -> None:
        r = self.rams[ram]
        r["reads"] += int(reads)
        r["writes"] += int(writes)

    def merge(self, other: Accesses) -> None:
        for name, r in other.rams.items():
            if name not in self.rams:
                self.rams[name] = dict(r, reads=0, writes=0)
            self.add(name, r["reads"], r["writes"])
        for k, v in other.adds.items():
            self.adds[k] = self.adds.get(k, 0) + v
        self.add_bits = other.add_bits


def ram_shapes(plan: Plan) -> dict[str, tuple[int, int]]:
    """``{name: (width bits, depth words)}`` of the RAMs the design instantiates for ``plan``."""
    from edgespike.fpga.params import PARAM_BITS

    shapes = {"pixels": (8, 1 << (plan.ybits + plan.xbits)), "membranes": (plan.word_bits, plan.mem_depth),
              "weights": (plan.lanes * 8, plan.weight_depth), "params": (PARAM_BITS, plan.params_depth)}
    if len(plan.layers) > 1:
        shapes.update({f"bitmap{b}": (plan.lanes, plan.bitmap_depth) for b in (0, 1)})
    return shapes


def _empty(plan: Plan) -> Accesses:
    return Accesses({k: {"reads": 0, "writes": 0, "width": w, "depth": d} for k, (w, d) in ram_shapes(plan).items()},
                    {"synaptic": 0, "fire": 0, "init": 0}, plan.mbits)


@dataclass
class TileCost:
    """Cycles of one tile by phase, with the activity that caused them."""

    cycles: int = 0
    params: int = 0
    init: int = 0
    input: list[int] = field(default_factory=list)  # per layer, summed over blocks and steps
    fire: list[int] = field(default_factory=list)
    readout: int = 0
    spikes: int = 0
    sops: int = 0
    out: np.ndarray | None = None  # the output pixels the hardware computes (golden model)
    spike_maps: list[list[np.ndarray]] = field(default_factory=list)  # [layer][t] -> [C, h, w] 0/1
    accesses: Accesses | None = None


def _valid_taps(n_out: int, n_in: int, lp: LayerParams) -> tuple[np.ndarray, np.ndarray]:
    """Per input coordinate: how many of the k kernel rows land on an output row inside the tile, and how many
    the engine visits (all k, or at stride 2 those of the coordinate's parity)."""
    i = np.arange(lp.k)[None, :]
    y = np.arange(n_in)[:, None]
    if lp.op == "convT":
        idx = 2 * y - lp.pad + i
        ok = (idx >= 0) & (idx < n_out)
    else:
        idx = y + lp.pad - i
        if lp.stride == 1:
            ok = (idx >= 0) & (idx < n_out)
        else:
            ok = (idx >= 0) & (idx % 2 == 0) & (idx // 2 < n_out)
            return ok.sum(axis=1), (idx % 2 == 0).sum(axis=1)
    return ok.sum(axis=1), np.full(n_in, lp.k)


def _scatter_cost(lp: LayerParams, h_in: int, w_in: int, h_out: int, w_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Per input position: engine busy cycles for one event in one block, and the valid taps."""
    vy, ty = _valid_taps(h_out, h_in, lp)
    vx, tx = _valid_taps(w_out, w_in, lp)
    valid, visited = vy[:, None] * vx[None, :], ty[:, None] * tx[None, :]
    return 2 * valid + (visited - valid), valid


def tile_cost(plan: Plan, tile: np.ndarray) -> TileCost:
    """Run the hardware's arithmetic in numpy on one tile, layer after layer, and count its cycles exactly."""
    model: Model = plan.model
    x = np.asarray(tile, dtype=np.uint8)
    h, w = x.shape
    n = h * w
    T, L = plan.timesteps, plan.lanes
    nl = len(plan.layers)
    c = TileCost(input=[0] * nl, fire=[0] * nl, spike_maps=[[] for _ in plan.layers], accesses=_empty(plan))
    acc = c.accesses
    acc.add("pixels", writes=n)  # LOAD

    if plan.encoder == "direct":
        bits_at = sum((x.astype(np.int64) >> b) & 1 for b in range(8))
    inputs = [encode(model, x, t) for t in range(T)]  # [1, h, w] per step: the layer's input values
    counts = uwds = membranes = None
    for li, lp in enumerate(plan.layers):
        h_in, w_in = h >> lp.level_in, w >> lp.level_in
        h_out, w_out = h >> lp.level_out, w >> lp.level_out
        words = h_out * (-(-w_out // L) if lp.narrow else w_out)
        busy, valid = _scatter_cost(lp, h_in, w_in, h_out, w_out)
        c.params += lp.groups * (L + 3)
        c.init += lp.groups * (words + 2)
        acc.add("params", reads=lp.groups * L)
        acc.add("membranes", writes=lp.groups * words)
        acc.adds["init"] += lp.groups * words * L
        bias = np.array(lp.bias, np.int64)[:, None, None]
        theta = np.array(lp.theta, np.int64)[:, None, None]
        v = np.broadcast_to(np.array([lp.init_value(ch) for ch in range(lp.cout)], np.int64)[:, None, None],
                            (lp.cout, h_out, w_out)).copy()
        counts, uwds = np.zeros_like(v), np.zeros_like(v)
        outputs = []
        for t in range(T):
            if li == 0:
                d = 8 if plan.encoder == "direct" else t + 1
                events_at = bits_at if plan.encoder == "direct" else inputs[t][0]
                c.input[li] += lp.groups * (n * (1 + d) + int((events_at * busy).sum()) + 2)
                acc.add("pixels", reads=lp.groups * n)
            else:
                events_at = inputs[t].sum(axis=0)
                words_in = h_in * w_in * plan.layers[li - 1].groups
                c.input[li] += lp.groups * (3 * words_in + int((events_at * (1 + busy)).sum()) + 1)
                acc.add(f"bitmap{(li - 1) % 2}", reads=lp.groups * words_in)
            taps = int((events_at * valid).sum())
            c.sops += taps * lp.cout
            # one membrane read-modify-write and one weight-word read per in-tile tap, per block
            acc.add("membranes", reads=lp.groups * taps, writes=lp.groups * taps)
            acc.add("weights", reads=lp.groups * taps)
            acc.adds["synaptic"] += taps * lp.cout
            # the membrane after the scatter: the prepared value plus this step's synaptic sum
            syn = conv_transpose2d(inputs[t], lp.weight, lp.pad) if lp.op == "convT" \
                else conv2d(inputs[t], lp.weight, lp.stride)
            v = v + syn
            last = t == T - 1
            if lp.kind == "integrator":
                s = np.zeros_like(v)
                if not last:
                    v = v + bias
            else:
                s = (v >= theta).astype(np.int64)
                v = v - theta * s if lp.reset == "soft" else np.where(s == 1, 0, v)
                if not last:
                    if lp.leak:
                        v = v - (v >> lp.leak)
                    v = v + bias
                counts += s
                uwds += s << (T - 1 - t)
            c.spikes += int(s.sum())
            c.fire[li] += lp.groups * (2 * words + 2)
            acc.add("membranes", reads=lp.groups * words, writes=lp.groups * words)
            acc.adds["fire"] += lp.groups * words * L
            if li != nl - 1:
                acc.add(f"bitmap{li % 2}", writes=lp.groups * words)
            c.spike_maps[li].append(s)
            outputs.append(s)
        inputs = outputs
        membranes = v

    R = np.zeros((h, w), np.int64)
    for term in plan.terms:
        q = {"membrane": membranes, "count": counts, "uwd": uwds}[term.quantity][0]
        R += term.multiplier * q
    r = (R + (1 << (plan.shift - 1))) >> plan.shift if plan.shift else R
    y = x.astype(np.int64) - r if plan.residual else r
    c.out = np.clip(y, 0, 255).astype(np.uint8)
    c.readout = 2 * n + 1
    acc.add("pixels", reads=n)
    acc.add("membranes", reads=n)
    c.cycles = c.params + c.init + sum(c.input) + sum(c.fire) + c.readout
    return c


def worst_tile_cycles(plan: Plan, shape: tuple[int, int] | None = None) -> int:
    """The most cycles a tile of ``shape`` (default: the plan's whole tile) can take: :func:`tile_cost`'s count
    with every input event present (pixel bits all set, every neuron spiking at every step).

    The count grows with the events at every position, so this is an upper bound that a tile of all-255 pixels
    through a model whose neurons all fire reaches exactly. The link announces it for a whole tile (IDENT), and
    the host's wait for a result follows it.
    """
    h, w = shape or plan.tile
    n = h * w
    T, L = plan.timesteps, plan.lanes
    cycles = 2 * n + 1  # read-out
    prev_cout = 1
    for li, lp in enumerate(plan.layers):
        h_in, w_in = h >> lp.level_in, w >> lp.level_in
        h_out, w_out = h >> lp.level_out, w >> lp.level_out
        words = h_out * (-(-w_out // L) if lp.narrow else w_out)
        busy, _ = _scatter_cost(lp, h_in, w_in, h_out, w_out)
        cycles += lp.groups * (L + 3) + lp.groups * (words + 2)
        for t in range(T):
            if li == 0:
                d = 8 if plan.encoder == "direct" else t + 1
                events = 8 if plan.encoder == "direct" else 1
                cycles += lp.groups * (n * (1 + d) + int(events * busy.sum()) + 2)
            else:
                words_in = h_in * w_in * plan.layers[li - 1].groups
                cycles += lp.groups * (3 * words_in + int(prev_cout * (1 + busy).sum()) + 1)
            cycles += lp.groups * (2 * words + 2)
        prev_cout = lp.cout
    return cycles


@dataclass
class FrameCost:
    """A whole frame through the tiles: cycles, activity, memory accesses, and the throughput they imply."""

    tiles: int
    cycles: int
    spikes: int
    sops: int
    io_bytes: int
    accesses: Accesses = field(default_factory=Accesses)

    def frames_per_second(self, fmax_hz: float) -> float:
        return fmax_hz / self.cycles

    def sops_per_cycle(self) -> float:
        return self.sops / self.cycles

    def uart_seconds(self, baud: int = 3_000_000) -> float:
        """Time to move the frame's tiles over a UART (10 bits per byte), the other bound on frames/s."""
        return self.io_bytes * 10 / baud


def frame_cost(plan: Plan, frame: np.ndarray) -> FrameCost:
    """Cycle count of a whole frame run as halo'd tiles (one :func:`tile_cost` per tile)."""
    frame = np.asarray(frame, dtype=np.uint8)
    total = FrameCost(0, 0, 0, 0, 0)
    for (y0, y1, x0, x1), _ in tiles(frame.shape, plan.tile, plan.halo, plan.multiple):
        c = tile_cost(plan, frame[y0:y1, x0:x1])
        total.tiles += 1
        total.cycles += c.cycles
        total.spikes += c.spikes
        total.sops += c.sops
        total.accesses.merge(c.accesses)
        n = (y1 - y0) * (x1 - x0)
        total.io_bytes += 3 + n + n + 1 + 12  # request header + pixels, reply tag + pixels + counters
    return total
