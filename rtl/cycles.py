"""Cycle model of the accelerator, exact to the cycle, and the frame tiling.

The sequencer is strictly sequential (``sequencer.py``), so its cycle count is a closed form of the input
pixels and the spike maps of every layer at every step:

==========  ===========================================================================================
INIT        ``max_l words_l + 2`` (all engines write their ``h_l * w_l * groups_l`` words in parallel)
ENC (t)     ``N * (1 + D) + 2``; ``N = h * w`` pixels; ``D`` SAR steps per pixel: 8 (direct), ``t + 1`` (UWE)
SCAT (l,t)  ``sum over input events of (1 + S) + 2``; ``S = 2 * groups * (taps landing in the tile)``
            ``+ (taps that do not)``
FIRE (l,t)  ``2 * words_l + spikes_l(t) + 2``
READOUT     ``2 * N + 1``
==========  ===========================================================================================

Input events of layer 0 are the set bits of each pixel (direct coding, bit-serial) or the pixels whose bit
``7 - t`` is set (UWE); those of layer ``l > 0`` are the spikes of layer ``l - 1`` at the same step.
The test ``tests/test_rtl_sequencer.py`` checks :func:`tile_cost` against the RTL's ``cycles`` counter.

:func:`frame_cost` runs this over the halo'd tiles of a whole frame (numpy, fast), which is how the FPGA issue
estimates frames per second at a given Fmax without simulating gateware.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgespike.model import Model
from edgespike.reference import conv2d, encode
from edgespike.rtl.params import LayerParams, Plan


def tiles(shape: tuple[int, int], tile: tuple[int, int], halo: int):
    """Cut a frame into regions of at most ``tile`` with ``halo`` pixels of context around each core.

    Yields ``((y0, y1, x0, x1), (cy0, cy1, cx0, cx1))``: the region to run and the core to keep (frame
    coordinates). Regions are clipped to the frame, so the hardware's zero padding at a region edge is the
    frame's own padding wherever the region touches the frame border.
    """

    def spans(n: int, t: int):
        if n <= t:
            return [(0, n, 0, n)]
        core = t - 2 * halo
        if core < 1:
            raise ValueError(f"tile side {t} leaves no core inside a halo of {halo} on each side")
        out = []
        for c0 in range(0, n, core):
            c1 = min(n, c0 + core)
            out.append((max(0, c0 - halo), min(n, c1 + halo), c0, c1))
        return out

    for y0, y1, cy0, cy1 in spans(shape[0], tile[0]):
        for x0, x1, cx0, cx1 in spans(shape[1], tile[1]):
            yield (y0, y1, x0, x1), (cy0, cy1, cx0, cx1)


@dataclass
class TileCost:
    """Cycles of one tile by phase, with the activity that caused them."""

    cycles: int = 0
    init: int = 0
    encode: int = 0
    scatter: list[int] = field(default_factory=list)  # per layer, summed over steps
    fire: list[int] = field(default_factory=list)
    readout: int = 0
    spikes: int = 0
    sops: int = 0
    out: np.ndarray | None = None  # the output pixels the hardware computes (golden model)
    spike_maps: list[list[np.ndarray]] = field(default_factory=list)  # [layer][t] -> [C, h, w] 0/1


def _valid_taps(n_out: int, n_in: int, k: int, stride: int) -> np.ndarray:
    """Per input coordinate, how many of the k kernel rows land on an output row inside the tile."""
    pad = k // 2
    idx = np.arange(n_in)[:, None] + pad - np.arange(k)[None, :]
    if stride == 1:
        ok = (idx >= 0) & (idx < n_out)
    else:
        ok = (idx >= 0) & (idx % 2 == 0) & (idx // 2 < n_out)
    return ok.sum(axis=1)


def _scatter_cost(lp: LayerParams, h_in: int, w_in: int, h_out: int, w_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Per input position: engine busy cycles for one event, and synaptic operations it makes."""
    vy = _valid_taps(h_out, h_in, lp.k, lp.stride)
    vx = _valid_taps(w_out, w_in, lp.k, lp.stride)
    valid = vy[:, None] * vx[None, :]
    busy = 2 * lp.groups * valid + (lp.taps - valid)
    return busy, valid * lp.cout


def tile_cost(plan: Plan, tile: np.ndarray) -> TileCost:
    """Run the hardware's arithmetic in numpy on one tile and count its cycles exactly."""
    model: Model = plan.model
    x = np.asarray(tile, dtype=np.uint8)
    h, w = x.shape
    n = h * w
    T = plan.timesteps
    dims = [(-(-h // (1 << lp.level)), -(-w // (1 << lp.level))) for lp in plan.layers]
    c = TileCost(scatter=[0] * len(plan.layers), fire=[0] * len(plan.layers),
                 spike_maps=[[] for _ in plan.layers])
    words = [hh * ww * lp.groups for lp, (hh, ww) in zip(plan.layers, dims, strict=True)]
    c.init = max(words) + 2

    membranes = []
    for lp, (hh, ww) in zip(plan.layers, dims, strict=True):
        v = np.array([lp.init_value(ch) for ch in range(lp.cout)], np.int64)[:, None, None]
        membranes.append(np.broadcast_to(v, (lp.cout, hh, ww)).copy())
    counts = [np.zeros_like(v) for v in membranes]
    uwds = [np.zeros_like(v) for v in membranes]

    for t in range(T):
        d = 8 if plan.encoder == "direct" else t + 1
        c.encode += n * (1 + d) + 2
        inp = encode(model, x, t)  # [1, h, w]
        if plan.encoder == "direct":
            events_at = np.zeros((h, w), np.int64)
            for b in range(8):
                events_at += (x.astype(np.int64) >> b) & 1
        else:
            events_at = inp[0]
        h_in, w_in = h, w
        for li, lp in enumerate(plan.layers):
            hh, ww = dims[li]
            busy, sops = _scatter_cost(lp, h_in, w_in, hh, ww)
            c.scatter[li] += int((events_at * (1 + busy)).sum()) + 2
            c.sops += int((events_at * sops).sum())
            # the membrane after the scatter: the prepared value plus this step's synaptic sum
            v = membranes[li] + conv2d(inp, lp.weight, lp.stride)
            bias = np.array(lp.bias, np.int64)[:, None, None]
            last = t == T - 1
            if lp.kind == "integrator":
                s = np.zeros_like(v)
                membranes[li] = v if last else v + bias
            else:
                theta = np.array(lp.theta, np.int64)[:, None, None]
                s = (v >= theta).astype(np.int64)
                vr = v - theta * s if lp.reset == "soft" else np.where(s == 1, 0, v)
                if not last:
                    if lp.leak:
                        vr = vr - (vr >> lp.leak)
                    vr = vr + bias
                membranes[li] = vr
                counts[li] += s
                uwds[li] += s << (T - 1 - t)
            spikes = int(s.sum())
            c.spikes += spikes
            c.fire[li] += 2 * words[li] + spikes + 2
            c.spike_maps[li].append(s)
            inp, events_at = s, s.sum(axis=0)
            h_in, w_in = hh, ww

    R = np.zeros((h, w), np.int64)
    for term in plan.terms:
        q = {"membrane": membranes, "count": counts, "uwd": uwds}[term.quantity][term.layer][0]
        R += term.multiplier * q
    r = (R + (1 << (plan.shift - 1))) >> plan.shift if plan.shift else R
    y = x.astype(np.int64) - r if plan.residual else r
    c.out = np.clip(y, 0, 255).astype(np.uint8)
    c.readout = 2 * n + 1
    c.cycles = c.init + c.encode + sum(c.scatter) + sum(c.fire) + c.readout
    return c


@dataclass
class FrameCost:
    """A whole frame through the tiles: cycles, activity, and the throughput they imply."""

    tiles: int
    cycles: int
    spikes: int
    sops: int
    io_bytes: int

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
    for (y0, y1, x0, x1), _ in tiles(frame.shape, plan.tile, plan.halo):
        c = tile_cost(plan, frame[y0:y1, x0:x1])
        total.tiles += 1
        total.cycles += c.cycles
        total.spikes += c.spikes
        total.sops += c.sops
        n = (y1 - y0) * (x1 - x0)
        total.io_bytes += 3 + n + n + 1 + 12  # request header + pixels, reply tag + pixels + counters
    return total
