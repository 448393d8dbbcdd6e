"""The layer pipeline, host side: a bit-plane model as a chain of layer engines, and its exact cycle model.

A bit-plane network (SEMANTICS 5.5) is a chain ``Conv -> BitPlaneNeuron -> ... -> Conv(Transpose) -> uwd
Integrator``; each Conv and its neuron become one :class:`edgespike.rtl.bitplane.BitPlaneLayer`, with its own
weight RAM and line buffer. :func:`layer_specs` cuts a model into :class:`LayerSpec` records (refusing what the
pipeline cannot run, with :class:`PipelineError`); :meth:`LayerSpec.compute` is the layer's arithmetic by
``edgespike.reference`` itself (bit planes, the conv of each plane, the reference's bit-plane neuron), and
:meth:`LayerSpec.cost` the engine's cycles and memory accesses, a closed form of the input's bit counts that the
simulation must equal (``tests/test_rtl_bitplane.py``).

Nothing here imports Amaranth: costing and planning run without the ``[hw]`` extra.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import numpy as np

from edgespike.model import BitPlaneNeuron, Conv, ConvTranspose, Integrator, Model
from edgespike.reference import _bitplane_neuron, conv2d, conv_transpose2d


@cache
def _popcounts(T: int) -> np.ndarray:
    """Set bits of every T-bit code."""
    return np.array([bin(v).count("1") for v in range(2**T)])


# Lanes per SAR converter at most (the gateware's ``bitplane.SAR_LANES``; the layers' ``sar_lanes``): a converter
# is shared by that many lanes, which take turns on it (``SARNeuron``), so a conversion takes T steps per lane. The
# converters work beside the next block's accumulation, so their 4 + 16 T = 132 cycles cost nothing while a block
# takes longer (the cycle model counts the waits when it does not); 16 against 4 saves about 165 cells of a 64-lane
# engine (docs/RTL.md, "SAR converters beside the compute").
SAR_LANES = 16


def sar_share(lanes: int, most: int = SAR_LANES) -> int:
    """Lanes per SAR converter (as ``edgespike.rtl.bitplane.sar_share``): the largest power of two that divides
    ``lanes`` and is at most ``most``."""
    k = 1
    while k * 2 <= most and lanes % (k * 2) == 0:
        k *= 2
    return k


# Register stages between a weight read and the accumulator (as ``edgespike.rtl.bitplane.WEIGHT_STAGES``): extra
# DRAIN cycles of every block.
WEIGHT_STAGES = 1


# Cycles from a line-buffer read to its word in the engine's registers (``edgespike.rtl.common.RegisteredRAM``:
# the block RAM, then a register beside it): TAP's read is loaded two cycles later, a part's prefetch likewise.
LB_LATENCY = 2


def tree_stages(group: int) -> int:
    """Register stages inside the accumulator's adder tree of ``group`` channels (as
    ``edgespike.rtl.uwd.tree_stages``: one every two adder levels, none up to 4 channels): the extra DRAIN cycles
    of every block."""
    return max(0, ((group - 1).bit_length() - 1) // 2)


class PipelineError(ValueError):
    """The model cannot run on the layer pipeline (one line naming the node and the reason)."""


@dataclass
class LayerSpec:
    """One engine of the pipeline: a Conv or ConvTranspose and the bit-plane neuron or Integrator after it."""

    conv: Conv | ConvTranspose
    neuron: BitPlaneNeuron | Integrator
    T: int

    @property
    def transposed(self) -> bool:
        return isinstance(self.conv, ConvTranspose)

    @property
    def stride(self) -> int:
        return 2 if self.transposed else self.conv.stride

    @property
    def dilation(self) -> int:
        """A Conv's tap spacing (SEMANTICS 4: stride-1 Convs only); 1 for a ConvTranspose."""
        return 1 if self.transposed else self.conv.dilation

    @property
    def padding(self) -> int:
        return self.conv.padding if self.transposed else self.dilation * (self.conv.weight.shape[2] // 2)

    @property
    def c_in(self) -> int:
        return self.conv.weight.shape[1]

    @property
    def c_out(self) -> int:
        return self.conv.weight.shape[0]

    @property
    def k(self) -> int:
        return self.conv.weight.shape[2]

    @property
    def bias(self) -> np.ndarray:
        """Added once after decoding: the neuron's bias plus the conv's per-step bias weighted by ``2**T - 1``."""
        own = self.neuron.bias if self.neuron.bias is not None else np.zeros(self.c_out)
        return own.astype(np.int64) + (2**self.T - 1) * self.conv.bias.astype(np.int64)

    @property
    def theta(self) -> np.ndarray | None:
        return self.neuron.threshold if isinstance(self.neuron, BitPlaneNeuron) else None

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        if self.transposed:
            return 2 * h, 2 * w
        p, s = self.padding, self.stride
        return (h + 2 * p - self.span) // s + 1, (w + 2 * p - self.span) // s + 1

    def gateware(self, height: int, width: int, lanes: int, group: int = 1, parts: int = 1,
                 rom_words: int = 0, ring: int = 0, lb_slice: int = 0) -> dict:
        """Keyword arguments of :class:`edgespike.rtl.bitplane.BitPlaneLayer` for an input of ``height x width``,
        ``lanes`` output channels, ``group`` input channels per cycle, ``parts`` line-buffer words per pixel, the
        last ``rom_words`` weight words in a ROM of logic cells, a ring line buffer of :attr:`span` rows and
        ``ring`` pixels (0: whole rows), and the line buffer in slices of ``lb_slice`` words (0: one memory;
        :func:`linebuf_slice` gives a part's)."""
        return dict(weights=self.conv.weight, bias=self.bias, theta=self.theta, T=self.T, height=height,
                    width=width, lanes=lanes, stride=self.stride, transposed=self.transposed,
                    padding=self.conv.padding if self.transposed else 0, group=group, parts=parts,
                    rom_words=rom_words, sar_lanes=SAR_LANES, ring=ring, lb_slice=lb_slice,
                    dilation=self.dilation)

    @property
    def ring_ok(self) -> bool:
        """Whether the engine can take a ring line buffer (``ring``): stride-1 Convs and ConvTransposes."""
        return self.transposed or self.stride == 1

    @property
    def span(self) -> int:
        """Input rows one output row reads (a ring holds that many rows and its extra pixels): a Conv's ``k``, or
        ``d (k - 1) + 1`` dilated; a ConvTranspose's pair of output rows reads ``k / 2``."""
        return self.k // 2 if self.transposed else self.dilation * (self.k - 1) + 1

    @property
    def ring_least(self) -> int:
        """The fewest pixels beyond its rows a ring may have (``BitPlaneLayer`` asserts it): an output row starts
        once the last input row it reads is whole, while the oldest pixel still read is its first window's tap 0,
        ``padding`` pixels left of the row's first, so a Conv's ring holds at least its padding beyond its rows
        (a dilated 3x3: ``d``); 2 otherwise."""
        return 2 if self.transposed else max(2, self.padding)

    def oldest(self, h: int, w: int) -> np.ndarray:
        """Per output pixel (raster order): the oldest input pixel (raster index, negative in the padding) that it
        or any later output pixel reads, as a ring line buffer's gateware tracks it (``o_lin``). A Conv (stride
        1): the window's first pixel. A ConvTranspose: output rows come in pairs on the same input rows; the first
        of a pair leaves the oldest row whole for the second, which frees a column every two output pixels."""
        ho, wo = self.out_size(h, w)
        oy, ox = np.arange(ho)[:, None], np.arange(wo)[None, :]
        p = self.padding
        if self.transposed:
            side = self.k // 2
            col = np.where((oy + p) % 2 == 1, (ox + p) >> 1, p >> 1)
            return (((oy + p) >> 1) - (side - 1)) * w + col - (side - 1)
        return (oy - p) * w + ox - p

    def compute(self, q: np.ndarray) -> np.ndarray:
        """The layer on input codes ``q`` (``[C_in, H, W]``, ``0 .. 2**T - 1``) as ``reference.run`` computes it:
        bit planes MSB first, the conv of each plane plus the conv's bias, then the reference's bit-plane neuron
        (codes out) or ``uwd`` Integrator (membranes out)."""
        T = self.T
        currents = []
        for t in range(T):
            plane = (q >> (T - 1 - t)) & 1
            cur = (conv_transpose2d(plane, self.conv.weight, self.conv.padding) if self.transposed
                   else conv2d(plane, self.conv.weight, self.stride, self.dilation))
            currents.append(cur + self.conv.bias.astype(np.int64)[:, None, None])
        if isinstance(self.neuron, BitPlaneNeuron):
            spikes, _ = _bitplane_neuron(self.neuron, currents, T, lambda *a: None)
            return sum(s << (T - 1 - t) for t, s in enumerate(spikes))
        v = np.zeros_like(currents[0])
        for cur in currents:
            v = 2 * v + cur
        return v + (0 if self.neuron.bias is None else self.neuron.bias.astype(np.int64)[:, None, None])

    def taps(self, h: int, w: int):
        """For each kernel tap the engine visits: the input row of every output row and the input column of every
        output column (``-1`` or ``>= h``/``w`` when outside), in the engine's visiting order."""
        ho, wo = self.out_size(h, w)
        oy, ox = np.arange(ho), np.arange(wo)
        if self.transposed:
            side, p = self.k // 2, self.padding
            return [(((oy + p) >> 1) - a, ((ox + p) >> 1) - b) for a in range(side) for b in range(side)]
        k, p, s, d = self.k, self.padding, self.stride, self.dilation
        return [(s * oy + d * i - p, s * ox + d * j - p) for i in range(k) for j in range(k)]

    def need(self, h: int) -> np.ndarray:
        """Input rows received before each output row is computed."""
        ho, _ = self.out_size(h, 1)
        oy = np.arange(ho)
        rows = ((oy + self.padding) >> 1) + 1 if self.transposed else self.stride * oy + self.span - self.padding
        return np.minimum(rows, h)

    def schedule(self, q: np.ndarray, lanes: int, group: int = 1, parts: int = 1):
        """The engine's work on input codes ``q``: input rows received before each output row, per output pixel
        the cycles of one block from its ``START`` to its ``HAND`` (a neuron) or ``STORE`` (an Integrator), the
        line-buffer reads and the adds (groups of ``group`` channels of one plane with a spike; one block)."""
        _, h, w = q.shape
        ho, wo = self.out_size(h, w)
        pop = np.zeros((h, w), np.int64)  # per input pixel: (plane, channel group) pairs holding a spike
        part_pop = np.zeros((parts, h, w), np.int64)  # the same per line-buffer part (planes p T / P ..)
        tp = self.T // parts
        for c0 in range(0, q.shape[0], group):
            bits = np.bitwise_or.reduce(q[c0:c0 + group], axis=0)
            pop += self.popcount(bits)
            for p in range(parts):  # plane t is code bit T - 1 - t
                part_pop[p] += self.popcount(bits & (((1 << tp) - 1) << (self.T - (p + 1) * tp)))
        # The scan of an input pixel's parts goes from part P - 1 (its least significant planes) to its most
        # significant part with a spike (``last``; when none has one, the scan ends with its first part, P - 1):
        # V = P - last parts (``visits``), each read once. A part but the scan's last takes the next (prefetched)
        # part's flags in its last add, or in a cycle of its own when it has none; the prefetch takes LB_LATENCY + 1
        # cycles (the read, the line buffer's register, nword), so such a part costs max(adds, 3); the last part its
        # adds and the cycle that ends the tap.
        nonempty = part_pop > 0
        last = np.where(nonempty.any(0), nonempty.argmax(0), parts - 1)
        visits = parts - last
        scan = np.zeros((h, w), np.int64)
        for p in range(parts):
            inner = np.where(p > last, np.maximum(part_pop[p], LB_LATENCY + 1), 0)  # scanned, not the last
            scan += inner + np.where(p == last, part_pop[p] + 1, 0)
        tap_cycles = np.zeros((ho, wo), np.int64)
        tap_reads = np.zeros((ho, wo), np.int64)
        events = np.zeros((ho, wo), np.int64)
        for iy, ix in self.taps(h, w):
            vy, vx = (iy >= 0) & (iy < h), (ix >= 0) & (ix < w)
            inside = vy[:, None] & vx[None, :]
            rows, cols = np.clip(iy, 0, h - 1), np.clip(ix, 0, w - 1)
            # TAP, READ, LOAD, FLAGS, the parts' SCAN; or TAP
            tap_cycles += np.where(inside, 2 + LB_LATENCY + scan[rows][:, cols], 1)
            tap_reads += np.where(inside, visits[rows][:, cols], 0)
            events += pop[rows][:, cols] * inside
        # A block: START (the bias loaded), taps, DRAIN (one cycle, one per weight register and one per register
        # stage of the adder tree), then HAND (a neuron's membranes to the converters, which work beside the next
        # block: :meth:`agents`) or an Integrator's STORE
        block = 1 + tap_cycles + 2 + WEIGHT_STAGES + tree_stages(group)
        received = np.diff(np.concatenate([[0], self.need(h)]))
        return received, block, tap_reads, events

    def conversion(self, lanes: int) -> int:
        """Cycles from a block's HAND to the cycle its codes can enter the output word: the load's register, the
        membranes' copy, its sum with the biases (``rtl.uwe.SARNeuron``'s ``staged``), the converters' load, and T
        steps for each of the lanes that share a converter (:func:`sar_share`)."""
        return 4 + self.T * sar_share(lanes)

    def popcount(self, q: np.ndarray) -> np.ndarray:
        return _popcounts(self.T)[q]

    def cost(self, q: np.ndarray, lanes: int, group: int = 1, parts: int = 1, rom_words: int = 0,
             ring: int = 0) -> LayerCost:
        """Cycles and memory accesses of the engine on one frame of input codes ``q``, input always valid and
        output always ready (the engine alone); see :mod:`edgespike.rtl.bitplane` for the schedule. ``events``
        are the weight-word adds (groups with spikes), ``sops`` the synaptic operations (spikes x lanes).
        ``rom_words`` (weight words in a ROM of logic) changes neither: its reads count as weight reads; nor does
        ``ring`` (a ring line buffer), which only changes when the receiver has room."""
        _, h, w = q.shape
        G = self.c_out // lanes
        _, block, tap_reads, events = self.schedule(q, lanes, group, parts)
        _, _, _, spikes = self.schedule(q, lanes, 1)
        cycles = pipeline_cycles([self], [q], [(lanes, group, parts, rom_words, ring)])
        n_events = int(G * events.sum())
        sops = int(G * spikes.sum()) * lanes
        pixels = block.size
        return LayerCost(
            cycles=cycles, events=n_events, sops=sops,
            # an Integrator reads its biases per block; a neuron's are the converters' constants (no params memory)
            reads={"linebuf": int(G * tap_reads.sum()), "weights": n_events,
                   "params": 0 if self.theta is not None else G * pixels},
            writes={"linebuf": h * w * parts},
            adds={"synaptic": sops, "accumulate": n_events * lanes, "bias": G * pixels * lanes,
                  "sar": G * pixels * lanes * self.T if self.theta is not None else 0},
        )

    def slots(self) -> int:
        """Input rows the line buffer holds: a window's rows (:attr:`span`) plus one, rounded up to a power of two
        (a dilated 3x3 layer's ``2 d + 1`` rows: 4, 8, 8, 16 rows at d = 1 .. 4)."""
        return 1 << self.span.bit_length()

    def first_row(self, h: int) -> np.ndarray:
        """The oldest input row each output row reads (may be negative: padding)."""
        oy = np.arange(self.out_size(h, 1)[0])
        if self.transposed:
            return ((oy + self.padding) >> 1) - (self.k // 2 - 1)
        return self.stride * oy - self.padding

    def agents(self, n: int, q: np.ndarray, lanes: int, times: dict, group: int = 1, parts: int = 1,
               ring: int = 0):
        """The engine's receiver and compute processes in time, as generators for :func:`pipeline_cycles`.

        They yield ``("recv", link, cycle)`` / ``("send", link, cycle)`` when ready to take / offer a pixel on a
        link (link ``n`` feeds engine ``n``) and are resumed with the handshake's cycle; ``("wait", key)`` waits
        for a time another process records in ``times``: ``("R", n, r)`` the handshake of input row ``r``'s
        last pixel, ``("S", n, oy)`` that of output row ``oy``'s last pixel, ``("O", n, j)`` that of output pixel
        ``j`` (raster index; recorded with a ring line buffer).

        With a ring line buffer (``ring`` > 0: ``D = span W + ring`` pixels) input pixel ``m`` overwrites pixel ``m
        - D``, so it is taken once the oldest pixel still to be read (:meth:`oldest`) is past ``m - D``: the output
        pixel before the first whose oldest is past it has been sent, two cycles before (the count moves one cycle after
        the handshake, the ``room`` register one cycle later).
        """
        _, h, w = q.shape
        _, block, _, _ = self.schedule(q, lanes, group, parts)
        G = self.c_out // lanes
        need, first, slots = self.need(h), self.first_row(h), self.slots()
        depth = self.span * w + ring  # the ring's pixels
        wo = block.shape[1]
        oldest = self.oldest(h, w).ravel() if ring else None

        def receiver():
            t = 1  # ``room`` is a register: nothing is taken in the first cycle
            for r in range(h):
                if not ring:
                    # room for row r once the current output row reads no row below r - S + 1; the compute's row
                    # counter moves one cycle after its last handshake, the room register one cycle later
                    later = np.nonzero(first + slots > r)[0]
                    if later[0] > 0:
                        t = max(t, (yield ("wait", ("S", n, int(later[0]) - 1))) + 2)
                for x in range(w):
                    # the output pixel after which the oldest pixel read is past the one this pixel overwrites
                    j = int(np.searchsorted(oldest, r * w + x - depth, side="right")) - 1 if ring else -1
                    if j >= 0:
                        t = max(t, (yield ("wait", ("O", n, j))) + 2)
                    hs = yield ("recv", n, t)
                    t = hs + parts  # parts 1 .. P-1 are written in the cycles after the handshake
                times[("R", n, r)] = hs + parts - 1
                t += 1  # the cycle after a row is complete takes nothing (row_done)

        def compute():  # an Integrator: the blocks, STORE, OUT until the pixel is taken
            c = 0  # the cycle the engine enters ROW
            for oy in range(block.shape[0]):
                c = max(c, (yield ("wait", ("R", n, int(need[oy]) - 1))) + 1)  # rows_in counts one cycle later
                t = c
                for ox in range(wo):
                    t = yield ("send", n + 1, t + 1 + G * int(block[oy, ox]))  # START .. STORE per block, OUT
                    if ring:
                        times[("O", n, oy * wo + ox)] = t
                times[("S", n, oy)] = t
                c = t + 1

        def compute_convert():
            """A neuron's compute and converters. A block's HAND completes in the first cycle the converters are
            free (the cycle after their last store); they store the block's codes ``conversion`` cycles later, or
            once the output word is free (the cycle after the previous pixel's handshake), and offer a pixel in the
            cycle after its last block's store. The compute moves on after HAND, so its output counters (and the
            receiver's room) follow HAND; a pixel's send is resolved when the next pixel's first store needs it."""
            conv = self.conversion(lanes)
            c = 0  # the cycle the engine enters ROW
            free = 0  # the first cycle the converters take a block
            offer = None  # the cycle the last pixel is offered, its handshake not yet resolved
            taken = -1  # the handshake of the pixel before
            for oy in range(block.shape[0]):
                c = max(c, (yield ("wait", ("R", n, int(need[oy]) - 1))) + 1)  # rows_in counts one cycle later
                t = c  # the cycle before START
                for ox in range(wo):
                    for b in range(G):
                        hand = max(t + int(block[oy, ox]), free)
                        if b == 0 and offer is not None:
                            taken = yield ("send", n + 1, offer)
                            offer = None
                        stored = max(hand + conv, taken + 1 if b == 0 else 0)
                        free = stored + 1
                        t = hand
                    offer = stored + 1
                    if ring:
                        times[("O", n, oy * wo + ox)] = t
                times[("S", n, oy)] = t
                c = t + 1
            yield ("send", n + 1, offer)

        return receiver(), (compute() if self.theta is None else compute_convert())


@dataclass
class LayerCost:
    """One engine's work on one frame: cycles, spikes added (``events``), synaptic ops (``events * lanes``),
    reads and writes per memory, adds per use."""

    cycles: int
    events: int
    sops: int
    reads: dict = field(default_factory=dict)
    writes: dict = field(default_factory=dict)
    adds: dict = field(default_factory=dict)


def full_fold(fold) -> tuple:
    """A fold as all five entries ``(lanes, group, parts, ROM words, ring)``: a bare ``lanes`` or a shorter tuple
    takes the defaults (1 channel per cycle, 1 part, no ROM, whole rows)."""
    fold = tuple(fold) if isinstance(fold, (tuple, list)) else (fold,)
    return fold + (1, 1, 1, 0, 0)[len(fold):]


def pipeline_cycles(specs: list[LayerSpec], codes: list[np.ndarray], folds: list, trace: dict | None = None) -> int:
    """Cycles of the whole pipeline on one frame, input always valid and output always ready.

    Each engine is two processes (:meth:`LayerSpec.agents`); the ``k``-th handshake on a link happens in the
    first cycle both sides are ready (the ``max`` of the two), as the ``lib.stream`` handshakes of
    :mod:`edgespike.rtl.pipeline` behave. ``codes[n]`` is layer ``n``'s input, ``folds[n]`` its ``lanes`` or
    ``(lanes, group[, parts[, ROM words[, ring]]])``. Returns the cycles until the last output pixel is taken (its
    handshake's cycle + 1). ``trace``, when given, receives the handshakes' cycles per link (``trace[i]``: link
    ``i``, the input of engine ``i``; ``trace[len(specs)]`` the output).
    """
    trace = {} if trace is None else trace
    n = len(specs)
    times: dict = {}
    gens = []
    # agent 2i receives on link i, agent 2i + 1 sends on link i + 1
    for i, (spec, q, fold) in enumerate(zip(specs, codes, folds, strict=True)):
        lanes, group, parts, _, ring = full_fold(fold)
        gens.extend(spec.agents(i, q, lanes, times, group, parts, ring))
    posts: list = [None] * len(gens)
    last = -1

    def resume(a, value=None):
        try:
            posts[a] = gens[a].send(value) if value is not None else next(gens[a])
        except StopIteration:
            posts[a] = None

    for a in range(len(gens)):
        resume(a)
    progress = True
    while progress:
        progress = False
        for a in range(len(gens)):
            while posts[a] is not None:
                kind, *rest = posts[a]
                if kind == "wait":
                    if rest[0] not in times:
                        break
                    resume(a, times[rest[0]])
                elif kind == "recv" and rest[0] == 0:  # the source always has a pixel
                    trace.setdefault(0, []).append(rest[1])
                    resume(a, rest[1])
                elif kind == "send" and rest[0] == n:  # the sink is always ready
                    last = rest[1]
                    trace.setdefault(n, []).append(last)
                    resume(a, rest[1])
                elif kind == "send" and posts[a + 1] is not None and posts[a + 1][0] == "recv":
                    hs = max(rest[1], posts[a + 1][2])
                    trace.setdefault(rest[0], []).append(hs)
                    resume(a, hs)
                    resume(a + 1, hs)
                else:
                    break
                progress = True
    assert all(p is None for p in posts), f"pipeline model deadlocked: {posts}"
    return last + 1


def frame_accesses(specs: list[LayerSpec], codes: list[np.ndarray], folds: list, width: int | None = None,
                   decoder: tuple | None = None):
    """Every memory read and write and every add of the pipeline on one frame, as the profiler's
    :class:`edgespike.fpga.cycles.Accesses` record: RAMs named ``<conv>.linebuf`` / ``.weights`` / ``.params``
    with their word width and depth (line buffers sized for rows of ``width`` input pixels, default the
    frame's), adds summed over layers (``synaptic``: spikes x lanes; ``accumulate``: adder-tree results added to
    a membrane; ``bias``; ``sar``). ``add_bits`` is the widest membrane. The counts are those the simulation's
    RAM enables give (``tests/test_rtl_bitplane.py``).

    Beside the engines' RAMs, ``residual`` is the decoder's pixel FIFO (8 bits, the gateware's power-of-two
    depth; :func:`pipeline_counts`), a block RAM once deeper than 32 words, so the profiler prices it like the
    others. With ``decoder`` (``(multiplier, shift, residual)``, as :func:`decoder_adds` takes them) the
    decoder's adds are ``adds["decoder"]``: they are at the product's width (the membrane's plus the
    multiplier's), not ``add_bits``, and :func:`edgespike.profile.accel.energy` prices only ``synaptic``,
    ``fire`` and ``init`` adds, so they are counted here but not in its energy sum."""
    from edgespike.fpga.cycles import Accesses

    acc = Accesses()
    bits = 0
    w_in = codes[0].shape[2] if width is None else width
    for spec, q, fold in zip(specs, codes, folds, strict=True):
        fold = full_fold(fold)
        cost = spec.cost(q, *fold)
        for name, (wd, dp) in memories(spec, w_in, *fold).items():
            acc.rams[f"{spec.conv.name}.{name}"] = {"reads": cost.reads.get(name, 0),
                                                   "writes": cost.writes.get(name, 0), "width": wd, "depth": dp}
        for k, v in cost.adds.items():
            acc.adds[k] = acc.adds.get(k, 0) + int(v)
        bits = max(bits, spec_vbits(spec))
        w_in = spec.out_size(1, w_in)[1]
    acc.add_bits = bits
    h, w = codes[0].shape[1:]
    extra = pipeline_counts(specs, h, w, decoder)
    depth = residual_depth(specs, h, w if width is None else width)
    acc.rams["residual"] = {"reads": extra["residual"]["reads"], "writes": extra["residual"]["writes"],
                            "width": 8, "depth": 1 << max(0, (depth - 1).bit_length())}
    if decoder is not None:
        acc.adds["decoder"] = extra["decoder"]["adds"]
    return acc


def decoder_adds(multiplier: int, shift: int, residual: bool) -> int:
    """Adds the layer pipeline's decoder does per output pixel (:class:`edgespike.rtl.pipeline.LayerPipeline`'s
    ``decoder_adds``): its product is an adder tree of the multiplier's signed digits in non-adjacent form, one add
    or subtract per digit but the first; then the rounding constant's add (``shift > 0``) and the residual's
    subtraction. The clip's compares are not counted. The digits are counted here without building them: the
    non-adjacent form of ``n`` has as many nonzero digits as ``n ^ 3n`` has ones."""
    n = abs(int(multiplier))
    return max(bin(n ^ 3 * n).count("1") - 1, 0) + (shift > 0) + bool(residual)


def pipeline_counts(specs: list[LayerSpec], height: int, width: int, decoder: tuple | None = None) -> dict:
    """The layer pipeline's own counts on a ``height x width`` (padded) frame, beside its engines': the residual
    FIFO takes every input pixel once and gives one per output pixel; the decoder takes one membrane per output
    pixel, :func:`decoder_adds` adds each (``decoder``: ``(multiplier, shift, residual)``; without it the adds are
    left out). The same record as the simulators' ``PipelineRun.pipeline``."""
    size = (height, width)
    for spec in specs:
        size = spec.out_size(*size)
    pixels = size[0] * size[1]
    counts = {"residual": {"reads": pixels, "writes": height * width}, "decoder": {"pixels": pixels}}
    if decoder is not None:
        counts["decoder"]["adds"] = pixels * decoder_adds(*decoder)
    return counts


def run_codes(specs: list[LayerSpec], x: np.ndarray) -> list[np.ndarray]:
    """Every layer's input codes for a padded uint8 frame ``x``, and the last layer's membranes (last item)."""
    codes = [x.astype(np.int64)[None]]
    for spec in specs:
        codes.append(spec.compute(codes[-1]))
    return codes


def residual_depth(specs: list[LayerSpec], h: int, w: int) -> int:
    """Pixels the decoder's FIFO must hold: the input rows the pipeline can have taken ahead of the output row
    being sent, plus two rows. Each engine takes at most one output row ahead of its consumer's need, or, a
    stride-1 Conv, the rows its whole-row line buffer has room for (:meth:`LayerSpec.slots` from the oldest row
    read): the same where the window's rows plus one are a power of two (1x1, 3x3), more where they are rounded up
    (a dilated 3x3 of d = 2 or 4: 5 or 9 rows in 8 or 16)."""
    sizes = [(h, w)]
    for spec in specs:
        sizes.append(spec.out_size(*sizes[-1]))
    ho = sizes[-1][0]
    rows = np.arange(ho) + 1  # output rows 0 .. oy sent or in flight
    for spec, (hi, _) in zip(reversed(specs), reversed(sizes[:-1]), strict=True):
        need = spec.need(hi)
        ahead = need[np.minimum(rows, len(need) - 1)]  # one row ahead: the row after the one needed
        if not spec.transposed and spec.stride == 1:  # the receiver's room while output row rows - 1 computes
            room = spec.first_row(hi)[np.minimum(rows, len(need)) - 1] + spec.slots()
            ahead = np.maximum(ahead, np.minimum(room, hi))
        rows = ahead
    lag = int((rows - (np.arange(ho) + 1)).max())
    return (lag + 2) * w


# Block RAM of each part: (width, depth) aspect ratios of one block, blocks, LUT4s (as fpga.params.DEVICES).
PARTS = {
    "up5k": ("iCE40UP5K", ((16, 256), (8, 512), (4, 1024), (2, 2048)), 30, 5280),
    "ecp5-85f": ("ECP5-85F", ((36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384)), 208, 83640),
    "ecp5-25f": ("ECP5-25F", ((36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384)), 56, 24288),
}


def ram_blocks(width: int, depth: int, device: str) -> int:
    """Block RAMs one memory of ``width`` bits x ``depth`` words takes: the best aspect ratio, blocks side by
    side for the width and stacked for the depth (as yosys maps them). A memory of at most 32 words and 4 kbit
    is taken to be logic (yosys builds such small memories from flip-flops or LUT RAM)."""
    if depth <= 32 and width * depth <= 4096:
        return 0
    configs = PARTS[device][1]
    return min(-(-width // w) * -(-depth // d) for w, d in configs)


def linebuf_slice(spec: LayerSpec, width: int, parts: int, ring: int, device: str) -> int:
    """Words per slice of the engine's line buffer on ``device`` (``BitPlaneLayer``'s ``lb_slice``): the depth of
    one block in the aspect ratio that takes the fewest blocks (:func:`ram_blocks`; of equals the deepest), so that
    each slice is a row of blocks with no multiplexer inside and a register beside it; 0 when one block's depth
    holds the whole buffer (nothing to slice) or the buffer is logic."""
    wd, dp = memories(spec, width, 1, 1, parts, 0, ring)["linebuf"]
    if ram_blocks(wd, dp, device) == 0:
        return 0
    best = min(PARTS[device][1], key=lambda c: (-(-wd // c[0]) * -(-dp // c[1]), -c[1]))
    return 0 if best[1] >= dp else best[1]


def memories(spec: LayerSpec, width: int, lanes: int, group: int, parts: int = 1,
             rom_words: int = 0, ring: int = 0) -> dict[str, tuple[int, int]]:
    """The engine's memories for input rows of ``width`` pixels: name -> (bits per word, words), as
    :class:`edgespike.rtl.bitplane.BitPlaneLayer` declares them (``ring``: a ring line buffer of ``span`` rows and
    ``ring`` pixels instead of whole rows)."""
    cin_p = 1 << max(0, (spec.c_in - 1).bit_length())
    xdepth = 1 << max(1, (width - 1).bit_length())
    ntaps = 4 * (spec.k // 2) ** 2 if spec.transposed else spec.k**2
    G = spec.c_out // lanes
    vb = spec_vbits(spec)
    mems = {
        # a word per part; the last part's word also holds the scan's length (rtl.bitplane's ``last_visit``)
        "linebuf": (spec.T * cin_p // parts + (parts - 1).bit_length(),
                    (spec.span * width + ring if ring else spec.slots() * xdepth) * parts),
        "weights": (8 * lanes * group, G * ntaps * cin_p // group - rom_words),  # the ROM's words are logic
    }
    if spec.theta is None:  # an Integrator's biases (a neuron's and its thresholds are the converters' constants)
        mems["params"] = (vb * lanes, G)
    return mems


def spec_vbits(spec: LayerSpec) -> int:
    """The engine's membrane width, as :func:`edgespike.rtl.bitplane.membrane_bits` computes it (the bound
    SEMANTICS 7 proves per channel, each sign on its own: 23 bits on ``s25``'s body layers where ``(2**T - 1) *
    sum |w| + |b|`` gave 24)."""
    key = (id(spec.conv.weight), id(spec.neuron), spec.T)
    if spec.__dict__.get("_vbits", (None,))[0] != key:  # cached: the planner asks thousands of times
        w = spec.conv.weight.astype(np.int64).reshape(spec.c_out, -1)
        b, T = spec.bias.astype(np.int64), spec.T
        top = (2**T - 1) * np.where(w > 0, w, 0).sum(1) + np.maximum(b, 0)
        low = -(2**T - 1) * np.where(w < 0, -w, 0).sum(1) + np.minimum(b, 0)
        hi, lo = int(top.max()), int(low.min())
        spec.__dict__["_vbits"] = (key, max(hi.bit_length(), (-lo - 1).bit_length()) + 1)
    return spec.__dict__["_vbits"][1]


# Logic estimate (nextpnr's iCE40 LCs or ECP5 TRELLIS_COMB), least squares (non-negative) on four placed and
# routed 3-layer pipelines of the shipped shape with the UART top (docs/HARDWARE.md, "Layer pipeline builds":
# bitplane_dncnn(depth=3, width=W, seed=3) with folds (W,1), (W,1), (1,W): W = 4: 4159 LC, W = 8: 5578 LC (UP5K),
# W = 16: 9412 COMB (ECP5-85F); the shipped small model's iCEBreaker build: 4033 LC) and seven yosys synth_ecp5
# runs of one s25 body engine (64 -> 64 channels, 3x3, membranes of 24 bits) at (lanes, group, parts) (8,1,2),
# (16,1,1), (16,1,2), (16,1,8), (16,4,2), (32,1,2), (64,1,2), counted as LUT4 + 2 CCU2C and scaled by 1.08 (the
# width-16 ULX3S build: 9412 TRELLIS_COMB for 6088 LUT4 and 1313 CCU2C in yosys). Within 6 % of all eleven
# (docs/RTL.md, "Logic of a 64-channel engine"). Terms: per engine (FSM, counters, SAR control, UART and decoder
# shared out), per flag of the scan's priority encoder (one per plane and channel group of a line-buffer word:
# mask, encoder, the group's selection), per bit of a line-buffer word (the word register, the held pixel, the
# flags' inputs), per lane and membrane bit (adder, shifter, SAR, the lane's parameters), per lane and extra
# channel of a group (the lane's adder tree). A weight ROM of logic (``rom_words``): per bit it holds, from the
# same engine at (64,1,8) with and without its last 64 words of 512 bits in a ROM (yosys with abc, as abc9 exits on
# both: 3185 LUT4 more, scaled by abc9's 0.855 of abc's LUT4 on the (16,1,2) engine and by 1.08; 14 DP16KD fewer).
# The lane term was refitted when SAR converters became shared by up to SAR_LANES lanes (and membranes one bit
# narrower by the per-sign bound): the same engine at (16,1,2) and (64,1,2) synthesised again (5063 LUT4 + 340 CCU2C
# and 8105 + 1059, from 5083 + 481 and 8811 + 1632), the other terms kept: 6.01 -> 4.89 per lane and membrane bit,
# -5 % and +2 % on the two (docs/RTL.md, "Logic of a 64-channel engine"). The flag term grew by 2.3 when a part's
# last add began to take the next part (``rtl.bitplane.two_set``, a tree beside each of the two encoders): conv3 at
# (64,1,8) with a ring of 38 on rows of 94, yosys synth_ecp5, 6283 -> 6419 LUT4 (+136 for 64 flags, x 1.08).
# The lane term fell by 0.11 when a converter came to serve 16 lanes instead of 4 (conv4 at (64,1,8,64) with a ring
# of 19 on rows of 79, yosys synth_ecp5: 8839 LUT4 + 1156 CCU2C -> 8960 + 1013, -165 cells / 64 lanes / 23 bits).
# A pixel whose scan ends early (``rtl.bitplane``'s ``last_visit``: parts > 1) costs an OR of the word written and
# two registers, ``LOGIC_SKIP`` per engine (the same engine: 8780 -> 8839 LUT4, x 1.08; at (64,2,2) no change).
# The lane term fell by 0.86 when a neuron's bias moved from the membranes' start into the converters (the membranes'
# clear is then the flip-flops' synchronous reset; conv4 at (64,1,8,64) with a ring of 38 on rows of 79, 16 lanes per
# converter: 9166 LUT4 + 1041 CCU2C -> 7809 + 1089, -1,261 cells / 64 lanes / 23 bits; docs/RTL.md). Then the lane
# and group terms were refitted (non-negative least squares, the other terms kept) on eight of s25's engines in the
# two plans built in session 19, synthesised alone (LUT4 + 2 CCU2C, x 1.05: those builds placed 1.051 and 1.050
# times yosys's count of the whole): (16,1,1), (32,8,8), (64,1,8,64) x 3, (1,32,8), (64,2,4), (32,4,8); within 6 %
# of each but the read-out (+15 %, 300 cells). The group term had been fitted on groups of at most 4 at 16 lanes and
# was a quarter of a group's adder tree and masks (5.04 against 23 per lane and extra channel); the whole plans'
# estimates come within 5 % of their placed counts (65,837 against 62,621; 61,873 against 63,656).
LOGIC_ENGINE, LOGIC_FLAG, LOGIC_WORD_BIT, LOGIC_LANE_BIT, LOGIC_LANE_GROUP = 776, 9.25, 5.98, 3.78, 23.0
LOGIC_SKIP = 64
LOGIC_ROM_BIT = 0.09
# A ring line buffer (``ring``): the input pixel count, the oldest pixel still read, the write, pixel and tap
# addresses modulo the ring's depth with their wrap compares, and the room compare. Measured (yosys synth_ecp5, s25's
# engines with rows of 82 pixels, ring 10 against whole rows; LUT4 + 2 CCU2C, x 1.08): conv3 at (16,1,2) 4584 + 2 x
# 342 -> 4637 + 2 x 365 (+99), the read-out at (1,32,8) 2161 + 2 x 129 -> 2308 + 2 x 165 (+219: the pair's row
# registers and its two-way column steps); docs/RTL.md, "Throughput of the default model".
LOGIC_RING, LOGIC_RING_T = 107, 236
# A ring's pixels beyond its rows at least. 2 would do for the gateware (the receiver can complete a row before the
# compute needs it), but a ring couples an engine to the one before it pixel by pixel instead of row by row, and
# the stalls are not in the planner's frame time: s25's 0.8 plan on a 160 x 164 crop by pipeline_cycles took 8.5 %
# more cycles with rings of 10 pixels than with whole rows, 5.0 % with 14, 1.0 % with 20, 0.2 % with 32, none
# with 40 (the 0.9 plan: 0.15 % with 10).
RING_MIN = 32
RING_FEW = 2  # the gateware's least: the planner takes such rings only where their measured stalls pay
STALL_ROWS = 64  # rows of the tiled sample the planner measures a ring plan's stalls on
ROM_MAX_WORDS = 128  # the weight words a ROM of logic may hold (weight_rom)
LOGIC_BUDGET = 0.8  # the share of a part's logic a plan may take (the iCE40 width-4 build closed timing at 78 %)


def estimate_logic(specs: list[LayerSpec], folds: list) -> int:
    """Logic cells (iCE40 LCs / ECP5 TRELLIS_COMB) the pipeline with ``folds`` (``(lanes, group[, parts])`` per
    layer, parts 1 when not given; ``(lanes, group, parts, ROM words)`` with a weight ROM) and its UART top take,
    estimated (see ``LOGIC_*``); nextpnr's report is the judge."""
    total = 0.0
    for spec, fold in zip(specs, folds, strict=True):
        lanes, group, parts, rom, ring = full_fold(fold)
        total += LOGIC_ROM_BIT * 8 * lanes * group * rom
        total += (LOGIC_RING_T if spec.transposed else LOGIC_RING) if ring else 0
        cin_p = 1 << max(0, (spec.c_in - 1).bit_length())
        word = spec.T // parts * cin_p
        flags = 1 << max(0, (word // group - 1).bit_length())
        total += (LOGIC_ENGINE + LOGIC_FLAG * flags + LOGIC_WORD_BIT * word + LOGIC_LANE_BIT * lanes * spec_vbits(spec)
                  + LOGIC_LANE_GROUP * lanes * (group - 1) + (LOGIC_SKIP if parts > 1 else 0))
    return int(round(total))


def receptive_radius(specs: list[LayerSpec]) -> int:
    """Input columns a stripe needs on each side for its core to be exact (the receptive field's radius, in
    input pixels, rounded up to the size multiple 2): a Conv adds its padding, ``d (k // 2)`` dilated (IRCNN's
    1, 2, 3, 4, 3, 2, 1: 16)."""
    r, level = 0, 0
    for spec in specs:
        if spec.transposed:
            r += max(spec.padding, spec.k - 1 - spec.padding) << (level - 1)
            level -= 1
        else:
            r += spec.padding << level
            level += spec.stride - 1
    return r + (r % 2)


@dataclass
class PipelinePlan:
    """Folds, stripe and memory of a pipeline on a part, and its frame time by the cycle model."""

    device: str
    folds: list  # (lanes, group, parts, ROM words, ring pixels) per layer
    stripe: int  # input columns of a stripe, halo included
    core: int  # columns of a stripe that are kept
    blocks: dict
    total_blocks: int
    cycles_per_pixel: list  # per layer, per input pixel of the stripe (sample's codes)
    frame_cycles: float  # one frame of the planned size, stripes included
    logic: int = 0  # estimated logic cells (estimate_logic)
    logic_total: int = 0  # the part's
    frame: tuple = (0, 0)  # the planned frame (height, width)
    stall: float = 1.0  # rings of fewer than RING_MIN pixels: their stalls against whole rows, in frame_cycles

    @property
    def stripes(self) -> int:
        """Stripes per frame (as the firmware cuts them: :func:`stripe_count`)."""
        return stripe_count(self.frame[1], self.stripe, self.core)

    def seconds(self, hz: float) -> float:
        return self.frame_cycles / hz

    def summary(self, hz: float | None = None) -> str:
        """One line: folds, stripes, block RAM, logic estimate and (at ``hz``) the time per frame."""
        name, _, blocks, _ = PARTS[self.device]
        kind = "EBR" if self.device == "up5k" else "DP16KD"
        h, w = self.frame
        stripes = self.stripes
        text = (f"layer pipeline on {name}: folds (lanes, group, parts, ROM words, ring) {self.folds}, "
                + (f"whole rows of {w}" if stripes == 1 else f"{stripes} stripes of {self.stripe} columns "
                   f"({self.core} kept)")
                + f", {self.total_blocks} of {blocks} {kind}, logic about {self.logic} of {self.logic_total} cells")
        if hz:
            text += f"; {self.seconds(hz):.3g} s per {w}x{h} frame at {hz / 1e6:g} MHz (cycle model)"
        return text


def stripe_count(width: int, stripe: int, core: int) -> int:
    """Stripes of ``stripe`` columns that cover a frame ``width`` wide when each keeps ``core`` columns inside the
    halo, ``(stripe - core) / 2`` on each side: the firmware's cut (``edgespike.firmware.tiling.regions``), in
    which the first and the last stripe end at the frame's edge, where the model's zero padding is the frame's own,
    and keep the halo's columns on that side too. So ``n`` stripes cover ``n * core + (stripe - core)`` columns."""
    if stripe >= width:
        return 1
    return 1 + -(-(width - stripe) // core)


def ring_extra(spec: LayerSpec, width: int, parts: int, device: str, least: int = RING_MIN) -> int:
    """The pixels beyond a window's rows (:attr:`LayerSpec.span`) a ring line buffer gets (``BitPlaneLayer``'s
    ``ring``) on rows of ``width``: as many as the blocks of those rows and ``least`` pixels hold (the more, the
    further the receiver may run ahead of the compute), at most a row (a ring of ``span + 1`` rows never waits for
    the compute's pixels); at least :attr:`LayerSpec.ring_least` (a dilated Conv's padding)."""
    least = max(least, spec.ring_least)
    wd, _ = memories(spec, width, 1, 1, parts)["linebuf"]
    base = spec.span * width
    blocks = ram_blocks(wd, (base + least) * parts, device)
    lo, hi = least, max(least, width)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ram_blocks(wd, (base + mid) * parts, device) <= blocks:
            lo = mid
        else:
            hi = mid - 1
    return lo


def weight_rom(spec: LayerSpec, lanes: int, group: int, device: str) -> int:
    """The weight words worth a ROM of logic (``BitPlaneLayer``'s ``rom_words``): those beyond the largest power
    of two of words when that many words in block RAM take fewer blocks than all of them (an s25 body layer at 64
    lanes: 576 words of 512 bits, 29 DP16KD; 512 of them take 15), at most ``ROM_MAX_WORDS``; else 0."""
    width, depth = memories(spec, 8, lanes, group)["weights"]
    ram = 1 << (depth.bit_length() - 1)
    rom = depth - ram
    if 0 < rom <= ROM_MAX_WORDS and ram_blocks(width, ram, device) < ram_blocks(width, depth, device):
        return rom
    return 0


def plan_pipeline(model: Model, device: str, frame: tuple[int, int], sample: np.ndarray,
                  folds: list | None = None, max_lanes: int | None = None,
                  logic_budget: float = LOGIC_BUDGET, ring: bool = True, stripe: int | None = None) -> PipelinePlan:
    """Choose each engine's (lanes, group, parts, ROM words, ring) and the stripe width for ``frame`` (height,
    width) on ``device``.

    The cycles per pixel of each layer come from :meth:`LayerSpec.cost` on ``sample`` (a uint8 frame like the
    ones to be run: the bit densities set the cycles). Frame time: the slowest layer's cycles per pixel times the
    pixels of all stripes (halos included); the pipeline's fill is not counted (a few percent on tall frames).

    The search is joint over the stripe width and the folds: for every stripe count (1, 2, 3 ... stripes, each
    stripe as narrow as that count allows, so the line buffers are as small as they can be), a water filling
    starts from one lane, one channel per cycle and the line-buffer parts that take the fewest blocks (then the
    most parts: the least logic), and the slowest layer repeatedly takes a faster ``(lanes, group, parts)``, with
    or without its weight ROM (:func:`weight_rom`), and (stride-1 Convs and ConvTransposes, with ``ring``) with a
    ring line buffer of the rows a window spans and :func:`ring_extra` pixels instead of whole rows, while block RAM
    and :func:`estimate_logic` (within ``logic_budget`` of the part's logic cells) still fit. Three orders of
    taking are tried (the step that adds the least logic, the fewest blocks, the fastest); the four fastest plans
    are tried again at every stripe with rings and filled on from there, and the fastest plan over all stripe counts
    wins. Rings get at least ``RING_MIN`` pixels; the search is then made again with rings of ``RING_FEW``, whose
    plan wins when it is faster with its stalls against whole rows counted (its folds in :func:`pipeline_cycles` on
    ``sample`` tiled to ``STALL_ROWS`` rows of a stripe: ``PipelinePlan.stall``). ``max_lanes`` caps every layer's
    lanes. Given ``folds`` (``(lanes, group)`` per layer, a ring line buffer where a fifth entry is nonzero) are
    taken as they are, each line buffer split into the parts that take the fewest blocks at the widest stripe that
    fits (the plan records their logic estimate). The plan's folds give a ring's pixels as their fifth entry (0:
    whole rows). Given ``folds`` and ``stripe`` too (a plan's own ``folds`` and ``stripe``, e.g. one that closed
    timing: :mod:`edgespike.fpga.closure`), the plan is that one: the stripe as it is, the folds' parts and ROMs as
    they are, rings of at least the fewest pixels given (so a plan given back comes out the same, its stalls
    measured again); block RAM over the part is refused. The place-and-route report is the judge.
    """
    specs = layer_specs(model)
    codes = run_codes(specs, sample)
    H, W = frame
    halo = receptive_radius(specs)
    npx = sample.size
    budget = logic_budget * PARTS[device][3]
    split = [p for p in (1, 2, 4, 8) if specs[0].T % p == 0 and (specs[0].T // p) & (specs[0].T // p - 1) == 0]

    @cache
    def options(i):  # (lanes, group, parts, ROM words): lanes a power of two dividing C_out; with and without ROM
        spec = specs[i]
        cin_p = 1 << max(0, (spec.c_in - 1).bit_length())
        lanes = [1 << i for i in range(spec.c_out.bit_length())
                 if spec.c_out % (1 << i) == 0 and (not max_lanes or 1 << i <= max_lanes)]
        groups = [1 << i for i in range(cin_p.bit_length())]
        folds = []
        for lane in lanes:
            for g in groups:
                rom = weight_rom(spec, lane, g, device)
                for p in split:
                    for r in ((0, 1) if ring and spec.ring_ok else (0,)):
                        folds += [(lane, g, p, 0, r)] + ([(lane, g, p, rom, r)] if rom else [])
        return folds

    per_fold: dict = {}

    least = [RING_MIN]  # a ring's pixels at least, in the search under way

    def per_pixel(i, fold):
        key = (i, tuple(fold)[:3], ring_of(fold) * least[0])  # the ROM changes no cycle
        if key not in per_fold:
            extra = ring_extra(specs[i], codes[i].shape[2], fold[2], device, least[0]) if key[2] else 0
            per_fold[key] = specs[i].cost(codes[i], *key[1], 0, extra).cycles / npx
        return per_fold[key]

    def ring_of(fold):  # a ring line buffer (during the search a flag, in a plan the ring's pixels)
        return int(bool((tuple(fold) + (0, 0, 0, 0, 0))[4]))

    def resolved(i, width, f):  # the fold with its ring's pixels for rows of ``width``
        f = full_fold(f)
        return f[:4] + ((ring_extra(specs[i], width, f[2], device, least[0]) if f[4] else 0),)

    @cache
    def widths(stripe):  # each layer's input width for a stripe of ``stripe`` input columns
        sizes = [stripe]
        for spec in specs:
            sizes.append(spec.out_size(1, sizes[-1])[1])
        return tuple(sizes)

    def lb_blocks(i, width, parts, ring_=0):
        f = resolved(i, width, (1, 1, parts, 0, ring_))
        return ram_blocks(*memories(specs[i], width, *f)["linebuf"], device)

    memo: dict = {}

    def memo_of(key, fn):  # the search asks the same block counts and logic terms thousands of times
        if key not in memo:
            memo[key] = fn()
        return memo[key]

    def layer_blocks(i, width, f):
        return memo_of(("b", i, width, f, least[0]), lambda: {
            f"{specs[i].conv.name}.{name}": ram_blocks(wd, dp, device)
            for name, (wd, dp) in memories(specs[i], width, *resolved(i, width, f)).items()})

    def residual_blocks(stripe):
        return memo_of(("r", stripe), lambda: ram_blocks(
            8, 1 << (residual_depth(specs, H, stripe) - 1).bit_length(), device))

    def blocks_at(fl, stripe):
        """Blocks per memory of folds ``fl`` (all three entries) at ``stripe``."""
        blocks = {}
        for i, (width, f) in enumerate(zip(widths(stripe), fl, strict=False)):
            blocks.update(layer_blocks(i, width, f))
        blocks["residual"] = residual_blocks(stripe)
        return blocks

    def logic_of(fl):
        return sum(memo_of(("l", i, f), lambda i=i, f=f: estimate_logic([specs[i]], [f]))
                   for i, f in enumerate(fl))

    def stripes_of(stripe):
        return stripe_count(W, stripe, stripe - 2 * halo)

    def frame_time(fl, stripe):
        if logic_of(fl) > budget or sum(blocks_at(fl, stripe).values()) > PARTS[device][2]:
            return float("inf")
        return max(per_pixel(i, f) for i, f in enumerate(fl)) * H * min(stripe, W) * stripes_of(stripe)

    def least_parts(stripe):  # per layer: the parts whose line buffer takes the fewest blocks, then the most parts
        sizes = widths(stripe)
        return [min(split, key=lambda p, i=i: (lb_blocks(i, sizes[i], p), -p)) for i in range(len(specs))]

    def least_buffer(stripe):  # per layer: (parts, ring) with the fewest line-buffer blocks, then most parts, rows
        sizes = widths(stripe)
        return [min(((p, r) for p in split for r in ((0, 1) if ring and specs[i].ring_ok else (0,))),
                    key=lambda pr, i=i: (lb_blocks(i, sizes[i], *pr), -pr[0], pr[1])) for i in range(len(specs))]

    given, given_stripe = folds, stripe  # (search() has its own ``stripe``)
    if given_stripe is not None:
        if given is None:
            raise ValueError("plan_pipeline: a stripe is given with its folds")
        given = [full_fold(f) for f in given]
        least[0] = min([f[4] for f in given if f[4]] or [RING_MIN])

    def search():
        """The best (stripe, folds) with rings of at least ``least[0]`` pixels."""
        if given_stripe is not None:  # a plan given back
            if sum(blocks_at(given, given_stripe).values()) > PARTS[device][2]:
                raise PipelineError(f"the layer pipeline does not fit {PARTS[device][0]}: block RAM over at a "
                                    f"stripe of {given_stripe}")
            return given_stripe, given
        if given is not None:
            # the widest stripe that fits (blocks only grow with the stripe: a binary search)
            def fit_at(stripe):
                fl = [(*f[:2], p, (tuple(f) + (0, 0))[3], ring_of(f)) for f, p in zip(given, least_parts(stripe),
                                                                                 strict=True)]
                return fl if sum(blocks_at(fl, stripe).values()) <= PARTS[device][2] else None

            cands = list(range(min(W, 2048) + (W % 2), 2 * halo + 1, -2))[::-1]
            lo, hi, best = 0, len(cands) - 1, None
            while lo <= hi:
                mid = (lo + hi) // 2
                got = fit_at(cands[mid])
                if got is None:
                    hi = mid - 1
                else:
                    best, lo = (cands[mid], got), mid + 1
            if best is None:
                raise PipelineError(f"the layer pipeline does not fit {PARTS[device][0]}: block RAM over at every "
                                    "stripe")
            return best
        else:
            # The narrowest stripe for each count (n cores and one halo on each side cover the frame: stripe_count),
            # down to cores as wide as the halo; of the stripes whose line buffers take the same blocks (in every mode
            # and split) only the widest can win, so only it is searched.
            stripes, seen = [], set()
            for n in range(1, W + 1):
                s = W if n == 1 else min(W, -(-(W - 2 * halo) // n) + 2 * halo)
                s += s % 2
                if n > 1 and s - 2 * halo < halo:
                    break
                key = (tuple(lb_blocks(i, w, p, r) for i, w in enumerate(widths(s)[:-1]) for p in split
                             for r in ((0, 1) if ring and specs[i].ring_ok else (0,))), residual_blocks(s))
                if key not in seen:
                    seen.add(key)
                    stripes.append(s)
            def water(fl, stripe, order):  # the slowest layer takes a faster fold while the plan fits
                fl = list(fl)
                while True:
                    costs = [per_pixel(i, f) for i, f in enumerate(fl)]
                    worst = int(np.argmax(costs))
                    steps = []
                    for o in options(worst):
                        if per_pixel(worst, o) >= costs[worst]:
                            continue
                        trial = fl[:worst] + [o] + fl[worst + 1:]
                        if frame_time(trial, stripe) == float("inf"):
                            continue
                        logic, blocks = logic_of(trial), sum(blocks_at(trial, stripe).values())
                        steps.append({"logic": (logic, blocks, per_pixel(worst, o)),
                                      "blocks": (blocks, logic, per_pixel(worst, o)),
                                      "fast": (per_pixel(worst, o), logic, blocks)}[order] + (o,))
                    if steps:
                        fl[worst] = min(steps)[-1]
                        continue
                    # None fits: one other layer gives up logic or blocks (a neighbouring fold, still faster than
                    # the slowest) so that the slowest can take a faster one. The fastest such pair wins.
                    faster = [o for o in options(worst) if per_pixel(worst, o) < costs[worst]]
                    trades = []
                    for j, f in enumerate(fl):
                        if j == worst:
                            continue
                        for fj in neighbours(j, f):
                            if fj not in options(j) or per_pixel(j, fj) >= costs[worst]:
                                continue
                            base = fl[:j] + [fj] + fl[j + 1:]
                            for o in faster:
                                trial = base[:worst] + [o] + base[worst + 1:]
                                t = frame_time(trial, stripe)
                                if t < float("inf"):
                                    trades.append((t, logic_of(trial), sum(blocks_at(trial, stripe).values()), j, fj,
                                                   o))
                    if not trades:
                        return fl
                    *_, j, fj, o = min(trades)
                    fl[j], fl[worst] = fj, o

            def neighbours(i, f):  # folds one step from ``f`` in one entry (half the lanes or group, twice or half
                # the parts, the ROM on or off, a ring or whole rows)
                lanes, group, parts, rom, r = f
                out = [(lanes, group, parts * 2, rom, r), (lanes, group, parts // 2, rom, r),
                       (lanes, group, parts, 0 if rom else weight_rom(specs[i], lanes, group, device), r),
                       (lanes, group, parts, rom, 1 - r)]
                for la, g in ((lanes // 2, group), (lanes, group // 2)):
                    if la and g:
                        out.append((la, g, parts, weight_rom(specs[i], la, g, device) if rom else 0, r))
                return out

            found, at_one_lane = [], None
            for stripe in stripes:
                start = [(1, 1, p, 0, r) for p, r in least_buffer(stripe)]
                if at_one_lane is None:
                    at_one_lane = start
                if frame_time(start, stripe) == float("inf"):
                    continue
                for order in ("logic", "blocks", "fast"):
                    fl = water(start, stripe, order)
                    found.append((frame_time(fl, stripe), stripe, fl))
            # The water filling is greedy: a plan found at one stripe may fit a wider one once its line buffers are
            # rings. The fastest few are tried at every stripe (rings where they allow it) and filled on from there.
            if ring:
                tops = sorted(found, key=lambda x: x[0])[:4]
                for _, _, fl in tops:
                    rung = [f[:4] + (int(specs[i].ring_ok),) for i, f in enumerate(fl)]
                    for stripe in stripes:
                        if frame_time(rung, stripe) < float("inf"):
                            for order in ("logic", "blocks", "fast"):
                                more = water(rung, stripe, order)
                                found.append((frame_time(more, stripe), stripe, more))
            best = min(found, key=lambda x: x[0])[1:] if found else None
            if best is None:
                fl = at_one_lane or [(1, 1, 1)] * len(specs)
                raise PipelineError(f"the layer pipeline does not fit {PARTS[device][0]}: at one lane per layer its "
                                    f"logic is about {estimate_logic(specs, fl)} cells ({budget:.0f} allowed) "
                                    f"and its block RAM over at every stripe width")
            return best

    def finish(stripe, fl, stall=1.0):
        blocks = blocks_at(fl, stripe)
        fl = [resolved(i, w, f) for i, (w, f) in enumerate(zip(widths(stripe), fl, strict=False))]
        core = W if stripe >= W else stripe - 2 * halo
        costs = [per_pixel(i, f) for i, f in enumerate(fl)]
        frame_cycles = max(costs) * H * min(stripe, W) * stripes_of(stripe) * stall
        return PipelinePlan(device, fl, stripe, core, blocks, sum(blocks.values()), costs, frame_cycles,
                            estimate_logic(specs, fl), PARTS[device][3], (H, W), stall)

    plan = finish(*search())
    if given_stripe is not None and any(0 < f[4] < RING_MIN for f in plan.folds):
        plan = finish(given_stripe, given, ring_stall(specs, sample, plan))
    if ring and given is None:
        # Rings of fewer pixels may allow wider stripes, but couple each engine to the one before it more tightly;
        # such a plan is taken when it is faster with its stalls against whole rows (the same folds) measured by
        # pipeline_cycles on the sample tiled to STALL_ROWS rows of a stripe.
        least[0] = RING_FEW
        try:
            few = finish(*search())
        except PipelineError:
            few = None
        if few is not None and few.frame_cycles < plan.frame_cycles and any(
                0 < f[4] < RING_MIN for f in few.folds):
            stall = ring_stall(specs, sample, few)
            if few.frame_cycles * stall < plan.frame_cycles:
                plan = finish(few.stripe, few.folds, stall)
    return plan


def ring_stall(specs: list[LayerSpec], sample: np.ndarray, plan: PipelinePlan) -> float:
    """The cycles of ``plan``'s folds against the same folds with whole rows (:func:`pipeline_cycles` on
    ``sample`` tiled to ``STALL_ROWS`` rows of a stripe): what its small rings cost in stalls."""
    tile = np.tile(sample, (-(-STALL_ROWS // sample.shape[0]), -(-plan.stripe // sample.shape[1])))
    codes = run_codes(specs, tile[:STALL_ROWS, :min(plan.stripe, plan.frame[1])])[:-1]
    return (pipeline_cycles(specs, codes, plan.folds)
            / pipeline_cycles(specs, codes, [f[:4] + (0,) for f in plan.folds]))


def layer_specs(model: Model) -> list[LayerSpec]:
    """Cut a bit-plane model into pipeline layers, or raise :class:`PipelineError`.

    The pipeline runs a chain ``Conv/ConvTranspose -> BitPlaneNeuron`` ending in ``-> uwd Integrator``, read by
    a decoder with one ``membrane`` term of that Integrator, and the ``uwe`` encoder at T = 8 (its planes are the
    pixel's bits, so the first layer's input codes are the pixels).
    """
    if model.encoder.kind != "uwe":
        raise PipelineError(f"the layer pipeline takes the uwe encoder, not {model.encoder.kind!r}")
    nodes = list(model.nodes)
    if len(nodes) % 2:
        raise PipelineError("the layer pipeline takes a chain of conv + neuron pairs")
    specs, src = [], "input"
    for conv, neuron in zip(nodes[::2], nodes[1::2], strict=True):
        if not isinstance(conv, (Conv, ConvTranspose)) or conv.input != src or neuron.input != conv.name:
            raise PipelineError(f"{conv.name}: the layer pipeline takes a single chain of conv + neuron pairs")
        if isinstance(conv, ConvTranspose) and (conv.output_padding or conv.weight.shape[2] % 2):
            raise PipelineError(f"{conv.name}: transposed convs need an even kernel and no output padding")
        last = neuron is nodes[-1]
        if last and not (isinstance(neuron, Integrator) and neuron.uwd):
            raise PipelineError(f"{neuron.name}: the last layer must be a uwd Integrator")
        if not last and not isinstance(neuron, BitPlaneNeuron):
            raise PipelineError(f"{neuron.name}: {type(neuron).__name__} layers do not run on the layer pipeline")
        specs.append(LayerSpec(conv, neuron, model.timesteps))
        src = neuron.name
    terms = model.decoder.terms
    if len(terms) != 1 or terms[0].node != src or terms[0].quantity != "membrane":
        raise PipelineError("the layer pipeline's decoder reads one membrane term of the last Integrator")
    if specs[-1].c_out != 1:
        raise PipelineError(f"{specs[-1].conv.name}: the read-out layer must have one output channel")
    return specs


def decode(model: Model, pixels: np.ndarray, membrane: np.ndarray) -> np.ndarray:
    """The decoder (SEMANTICS 6) on the last Integrator's membranes ``[1, H, W]``: uint8 output frame."""
    dec = model.decoder
    R = np.int64(dec.terms[0].multiplier[0]) * membrane[0].astype(np.int64)
    r = (R + (1 << (dec.shift - 1))) >> dec.shift if dec.shift else R
    y = pixels.astype(np.int64) - r if dec.residual else r
    return np.clip(y, 0, 255).astype(np.uint8)


__all__ = ["PARTS", "LayerCost", "LayerSpec", "PipelineError", "PipelinePlan", "decode", "estimate_logic",
           "decoder_adds", "frame_accesses", "layer_specs", "memories", "pipeline_counts", "pipeline_cycles",
           "plan_pipeline", "ram_blocks", "receptive_radius", "residual_depth", "ring_extra", "run_codes"]
