"""A bit-plane layer as a streaming engine: one layer of a layer pipeline, with its own weights and line buffer.

Every bit-plane layer computes ``q_out = clip(floor((W q_in + bias) / theta), 0, 2**T - 1)`` (SEMANTICS 5.5,
the conv's own bias folded into ``bias`` as ``(2**T - 1) * b``), or, for the ``uwd`` Integrator that ends the
network, ``W q_in + bias``. The engine computes it the way the semantics define it, adders only:

* **line buffer**: input pixels arrive in raster order, one per handshake, each carrying its ``C_in`` codes of
  ``T`` bits (the T bit planes of its spikes). They are stored plane-major, one word per pixel; the buffer holds
  the last ``S`` input rows (``S`` = the rows one output row needs, rounded up to a power of two), so every
  input pixel is received once and no halo is ever recomputed. A stride-1 Conv or a ConvTranspose may instead
  keep a ring of the rows a window spans and ``ring`` pixels (``ring``): a pixel is then taken once the compute
  no longer reads the one it overwrites, so the receiver runs at most ``ring`` pixels ahead of the window
  instead of a row;
* **UWD** (:class:`~edgespike.rtl.uwd.UWDAccumulator`): for each output pixel and block of ``lanes`` output
  channels, each kernel tap's input word is scanned for set bits only (a priority encoder; a spike-free word is
  skipped whole, spike-free planes cost nothing) and each spike ``(t, c)`` adds its ``lanes`` int8 weights
  shifted by ``T - 1 - t`` (one weight-RAM read, one add per lane);
* **UWE** (:class:`~edgespike.rtl.uwe.SARNeuron`): the converters add each lane's **bias** (a constant) to its
  membrane as they load it, then ``T`` successive-approximation steps against ``theta << (T - 1 - t)`` give the
  output code MSB first; ``K`` lanes take turns on one converter (``T`` steps each). The converters work beside the
  compute, on a copy of the block's membranes (which start each block at 0): the next block's accumulation starts
  while they convert. An Integrator starts its membranes at the bias (its params memory, read before the block
  starts), skips the SAR and sends the membrane.

Output pixels leave in raster order with all ``C_out`` channels, which is the next layer's input format: layers
chain with ``wiring.connect`` into a pipeline where every layer works at once (:mod:`~edgespike.rtl.pipeline`).

The compute is strictly sequential, so its cycles are a closed form of the input's bit counts: per output pixel
and block ``1 + sum over taps (4 + sum over parts but the last max(adds_p, 3) + adds_last + 1 if the tap is inside
the input, else 1) + 3`` (with one weight register stage and a tree of at most 4 channels), ``adds_p`` being the
(plane, channel group) pairs of part ``p`` of the tap's input pixel that hold a spike. An Integrator's pixel then
waits for its handshake (``+ 1`` at least); a neuron's block hands its membranes to the converters (HAND, the
block's last cycle) once they are free, and they store its codes ``4 + K * T`` cycles later (``K =
sar_share(lanes)``), or once the previous pixel has been taken. The receiver takes a pixel per ``parts`` cycles
while there is room. How the processes and the neighbouring engines meet is
:func:`edgespike.fpga.pipeline.pipeline_cycles` (:meth:`~edgespike.fpga.pipeline.LayerSpec.agents`).

Supported: Conv (odd ``k``, stride 1 or 2, padding ``k // 2``; a stride-1 Conv may be dilated), ConvTranspose
(stride 2, even ``k``, any ``padding``, no output padding: the shipped read-out's 6x6 ``padding=2``), into a
bit-plane neuron or an Integrator. A **dilated** Conv (``dilation`` d, SEMANTICS 4: IRCNN's 3x3 layers) reads
input row ``y + d (i - k // 2)`` and column ``x + d (j - k // 2)`` for tap ``(i, j)``, padding ``d (k // 2)``: the
same ``k x k`` taps, ``d`` pixels apart, so the same cycles per tap and the same weight words; only the window's
span grows to ``d (k - 1) + 1`` rows, which the line buffer (rounded up to a power of two as always) or the ring
holds. The taps' counters step by 1 as before and their positions by ``d`` (a constant product of the counter:
adders only); at ``d = 1`` the engine elaborates to the same logic as before dilation existed.

A ConvTranspose is computed in gather form: output row ``oy`` takes input rows ``(oy + p) // 2 - a`` with kernel
row ``(oy + p) % 2 + 2a``, ``a < k / 2``; its weights are stored per parity class so that the address stays a
counter.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from edgespike.rtl.common import RegisteredRAM, bits_for, const_mul
from edgespike.rtl.uwd import LANES_PER_COPY, UWDAccumulator
from edgespike.rtl.uwe import SARNeuron, pick

# Lanes per SAR converter at most (SARNeuron's ``share``; edgespike.fpga.pipeline.SAR_LANES is the same value)
SAR_LANES = 16
# Register stages between the weight memories' read and the accumulator: one, ``ram_q`` / ``rom_q`` below
# (``edgespike.fpga.pipeline.WEIGHT_STAGES`` counts it once per block, in the DRAIN).
WEIGHT_STAGES = 1
# A weight ROM of logic is decoded in slices of this many bits, each from its own copy of the address register:
# one address register for a 512-bit word drove about 2,000 LUTs, and the route to them was the ECP5 pipeline's
# critical path (20 ns of 21.7). The copies' names hold ``fanout_copy``: the build keeps them (yosys would merge
# identical flip-flops).
ROM_SLICE_BITS = 32


def sar_share(lanes: int, most: int = SAR_LANES) -> int:
    """Lanes per SAR converter: the largest power of two that divides ``lanes`` and is at most ``most``."""
    k = 1
    while k * 2 <= most and lanes % (k * 2) == 0:
        k *= 2
    return k


def membrane_bits(weights, bias, theta, T: int) -> int:
    """The signed membrane width a layer needs, by the bound SEMANTICS 7 proves at load (per channel, the interval
    of ``W q + bias`` over all T-bit codes ``q``, each sign on its own).

    Every partial sum of the decoding (the bias first, then the spikes' shifted weights in any order) lies in
    ``[min(b, 0) - (2**T - 1) * (sum of the negative weights' magnitudes), max(b, 0) + (2**T - 1) * (sum of the
    positive weights)]``, and the SAR's residue only decreases from the final sum and stays >= 0 once subtracted
    from (its comparison is computed wider). The bound of both signs at once, ``(2**T - 1) * sum |w| + |b|``, was
    one bit wider on ``s25``'s layers (24 bits where 23 do: the lanes' registers, adders and multiplexers are a
    bit narrower). ``edgespike.fpga.pipeline.spec_vbits`` is the same function on the host.
    """
    w = np.asarray(weights).astype(np.int64).reshape(np.shape(weights)[0], -1)
    b = np.asarray(bias, np.int64)
    top = (2**T - 1) * np.where(w > 0, w, 0).sum(1) + np.maximum(b, 0)
    low = -(2**T - 1) * np.where(w < 0, -w, 0).sum(1) + np.minimum(b, 0)
    hi, lo = int(top.max()), int(low.min())
    return max(hi.bit_length(), (-lo - 1).bit_length()) + 1


def pow2_at_least(n: int) -> int:
    """The smallest power of two ``>= n`` (1 for ``n <= 1``)."""
    return 1 << max(0, (int(n) - 1).bit_length())


def first_set(bits: list):
    """Tree priority encoder: ``(any, index of the lowest set bit)`` of a power-of-two list of 1-bit values."""
    if len(bits) == 1:
        return bits[0], Const(0, 0)
    half = len(bits) // 2
    any_lo, i_lo = first_set(bits[:half])
    any_hi, i_hi = first_set(bits[half:])
    index = Cat(Mux(any_lo, i_lo, i_hi), ~any_lo) if len(i_lo) else ~any_lo
    return any_lo | any_hi, index


def two_set(bits: list):
    """Tree of ``(any, two)``: whether a power-of-two list of 1-bit values has a set bit, and at least two; each node
    is a function of its halves' four bits (one LUT4 a level)."""
    if len(bits) == 1:
        return bits[0], Const(0, 1)
    half = len(bits) // 2
    any_lo, two_lo = two_set(bits[:half])
    any_hi, two_hi = two_set(bits[half:])
    return any_lo | any_hi, two_lo | two_hi | (any_lo & any_hi)


def word_at(value, index, width: int):
    """``value.word_select(index, width)`` for a power-of-two ``width``, its offset made by wiring (``index``
    shifted by concatenation): ``word_select`` scales the offset with a ``$mul`` cell, which the adders-only
    check (``tests/test_rtl_synth.py``) counts."""
    return value.bit_select(Cat(Const(0, (width - 1).bit_length()), index), width)


def weight_words(weights: np.ndarray, lanes: int, transposed: bool, group: int = 1) -> tuple[list[int], int]:
    """The weight RAM's contents: ``lanes x group`` int8 per word (lane-major), address ``(g, [parity,] tap,
    c // group)`` row-major.

    Returns the words and the number of taps per (block, parity) row. ``c`` is padded to a power of two.
    """
    c_out, c_in, k, _ = weights.shape
    cin_p = pow2_at_least(c_in)
    if transposed:
        side = k // 2
        taps = [[(py + 2 * a, px + 2 * b) for a in range(side) for b in range(side)]
                for py in range(2) for px in range(2)]
    else:
        taps = [[(i, j) for i in range(k) for j in range(k)]]
    words = []
    for g in range(c_out // lanes):
        for cls in taps:
            for i, j in cls:
                for c0 in range(0, cin_p, group):
                    word = 0
                    for lane in range(lanes):
                        for m in range(group):
                            c = c0 + m
                            w = int(weights[g * lanes + lane, c, i, j]) if c < c_in else 0
                            word |= (w & 0xFF) << (8 * (lane * group + m))
                    words.append(word)
    return words, len(taps[0])


class BitPlaneLayer(wiring.Component):
    """One bit-plane layer (Conv or ConvTranspose into a bit-plane neuron or a ``uwd`` Integrator), streaming.

    Parameters
    ----------
    weights : ndarray, int8 ``[C_out, C_in, k, k]``
    bias : ndarray of int
        Per output channel, added once after decoding: the neuron's (or Integrator's) bias plus
        ``(2**T - 1)`` times the conv's own bias.
    theta : ndarray of int or None
        Per output channel thresholds (> 0) of the bit-plane neuron; ``None`` for a ``uwd`` Integrator.
    T : int
        Bits of the input and output codes (timesteps).
    height, width : int
        Input frame size.
    lanes : int
        Output channels computed in parallel; divides ``C_out``.
    group : int
        Input channels of a plane added per cycle (a power of two, at most ``C_in`` rounded up to one); a group
        without spikes is skipped.
    parts : int
        Line-buffer words per pixel (a power of two dividing ``T``; part ``p`` holds planes ``p T / P ..``):
        narrower words fit block RAM better; a part of a tap but the last costs its adds and at least three cycles
        (the next part's prefetch), the last its adds and one; each part of a pixel received costs a cycle.
    stride : int
        Conv stride (1 or 2).
    transposed : bool
        A stride-2 ConvTranspose with ``padding`` (``k`` even) instead of a Conv.
    padding : int
        ConvTranspose padding (a Conv pads ``k // 2``).
    rom_words : int
        The last ``rom_words`` weight words are a ROM of logic cells (``ram_style = "logic"``) instead of block
        RAM; the words before them (a power of two, at least ``rom_words``) stay in block RAM. An ECP5 DP16KD holds
        512 words of 36 bits, so a 64-lane 3x3 body layer's 576 words of 512 bits take 29 blocks where 512 words
        take 15: its 64 last words in logic save 14 blocks. Same cycles and results.
    ring : int
        0: the line buffer holds ``S`` whole rows (a power of two, each of a power of two of pixels). Otherwise
        (a stride-1 Conv or a ConvTranspose, at least 2, and at least a Conv's padding ``d (k // 2)``) a ring of
        ``D = span * width + ring`` pixels (``span``: the input rows a window spans, ``d (k - 1) + 1`` or ``k /
        2``): pixel ``m`` of the frame (raster index) is stored at ``m mod D`` and taken once the oldest input
        pixel the current and later output pixels read is past ``m - D`` (a Conv: ``(oy - p) * width + ox - p``; a
        ConvTranspose: the same row ``side - 1`` above tap 0's, whole in the first output row of a pair, a column
        on every two output pixels in the second; ``edgespike.fpga.pipeline.LayerSpec.oldest``). Fewer words (3
        rows and a few pixels instead of 4 rows for a 3x3 Conv, and no row rounded up to a power of two: 9 rows
        instead of 16 for a dilation of 4), the same reads, writes and results; the receiver waits for the
        compute's pixels instead of its rows.
    dilation : int
        A stride-1 Conv's tap spacing (SEMANTICS 4; padding ``dilation * (k // 2)``); 1 otherwise.
    lb_slice : int
        The line buffer's words per block-RAM slice (:class:`~edgespike.rtl.common.RegisteredRAM`: each slice's
        read data registered beside it; 0: one memory). Same cycles and results either way.
    sar_lanes : int
        Lanes per SAR converter at most (``K`` = :func:`sar_share` of ``lanes``: a power of two dividing them):
        the converters are shared, a conversion takes ``K * T`` steps (``LayerSpec.gateware`` passes
        ``edgespike.fpga.pipeline.SAR_LANES``, the cycle model's).

    Attributes
    ----------
    i : In(stream.Signature(ArrayLayout(unsigned(T), C_in)))
        Input pixels, raster order, ``height * width`` per frame.
    o : Out(stream.Signature(ArrayLayout(unsigned(T) or signed(vbits), C_out)))
        Output pixels, raster order: codes (neuron) or membranes (Integrator).
    lb_read, w_read, p_read, lb_write : Out(1)
        This cycle reads the line buffer, the weight RAM, the params RAM (an Integrator's; a neuron has none: 0),
        writes the line buffer (for the access counts).
    add_spikes : Out(group)
        The spikes of the group the accumulator adds this cycle (0 when it adds nothing): each is one synaptic add
        per lane, and a nonzero value one accumulate per lane (for the add counts; unused in a build).
    bias_add, sar_step : Out(1)
        This cycle adds every lane's bias (a neuron: the converters' load; an Integrator: the membranes' start) /
        makes a SAR step in the converters' first lanes (``T`` cycles per block: counted times ``lanes``, one add
        per lane and step).
    """

    def __init__(self, weights, bias, theta, T: int, height: int, width: int, lanes: int, stride: int = 1,
                 transposed: bool = False, padding: int = 0, group: int = 1, parts: int = 1, rom_words: int = 0,
                 sar_lanes: int = SAR_LANES, ring: int = 0, lb_slice: int = 0, dilation: int = 1):
        w = np.asarray(weights)
        self.c_out, self.c_in, self.k, _ = w.shape
        assert self.c_out % lanes == 0, "lanes must divide the output channels"
        assert (self.k % 2 == 0) if transposed else (self.k % 2 == 1 and stride in (1, 2))
        assert dilation == 1 or (dilation > 1 and stride == 1 and not transposed), "dilation: stride-1 Convs only"
        self.dilation = dilation
        # the input rows one output row reads (a ConvTranspose's pair of output rows reads k / 2 of them)
        self.span = self.k // 2 if transposed else dilation * (self.k - 1) + 1
        self.weights, self.T, self.lanes, self.group, self.parts = w, T, lanes, group, parts
        self.rom_words = rom_words
        self.ring = ring
        self.lb_slice = lb_slice
        assert parts == pow2_at_least(parts) and T % parts == 0 and (parts == 1 or (T // parts) == pow2_at_least(
            T // parts)), "parts: a power of two dividing T into a power of two of planes"
        assert group == pow2_at_least(group) and group <= pow2_at_least(self.c_in), "group: a power of two <= C_in"
        self.bias = np.asarray(bias, np.int64)
        self.theta = None if theta is None else np.asarray(theta, np.int64)
        self.height, self.width, self.stride, self.transposed = height, width, stride, transposed
        self.pad = padding if transposed else dilation * (self.k // 2)
        if transposed:
            self.h_out, self.w_out = 2 * height, 2 * width
        else:
            self.h_out = (height + 2 * self.pad - self.span) // stride + 1
            self.w_out = (width + 2 * self.pad - self.span) // stride + 1
        # An output row starts once the last row it reads is whole, while the oldest pixel still read is the first
        # window's tap 0, ``pad`` pixels left of its row: a Conv's ring holds both at least ``pad`` pixels beyond
        # its rows (``edgespike.fpga.pipeline.LayerSpec.ring_least``; 2 for every undilated 3x3).
        least = 2 if transposed else max(2, self.pad)
        assert ring == 0 or ((transposed or stride == 1) and ring >= least), \
            "ring: not a stride-2 Conv; at least 2 pixels, and a Conv's padding"
        self.vbits = membrane_bits(w, self.bias, self.theta, T)
        self.sar_lanes = sar_share(lanes, sar_lanes)
        self.theta_bits = max(1, int(self.theta.max()).bit_length()) if self.theta is not None else 1
        out_shape = unsigned(T) if self.theta is not None else signed(self.vbits)
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(unsigned(T), self.c_in))),
            "o": Out(stream.Signature(data.ArrayLayout(out_shape, self.c_out))),
            "lb_read": Out(1),
            "w_read": Out(1),
            "p_read": Out(1),
            "lb_write": Out(1),
            "add_spikes": Out(group),
            "bias_add": Out(1),
            "sar_step": Out(1),
        })

    @staticmethod
    def _weight_rom(m: Module, words: list[int], abits: int, addr, en, data) -> None:
        """The ROM of logic: ``data`` (a register) takes word ``addr[:abits]`` two cycles after a read with
        ``en``, like the block RAM's word behind its output register. The address is registered once per
        :data:`ROM_SLICE_BITS` of the word, and each slice decoded from its own copy."""
        width = len(data)
        for k, lo in enumerate(range(0, width, ROM_SLICE_BITS)):
            n = min(ROM_SLICE_BITS, width - lo)
            copy = Signal(abits, name=f"rom_addr_fanout_copy{k}")
            with m.If(en):
                m.d.sync += copy.eq(addr[:abits])
            m.submodules[f"weights_rom{k}"] = rom = memory.Memory(
                shape=unsigned(n), depth=len(words), init=[(w >> lo) & ((1 << n) - 1) for w in words],
                attrs={"ram_style": "logic"})
            port = rom.read_port(domain="comb")
            m.d.comb += port.addr.eq(copy)
            m.d.sync += data[lo:lo + n].eq(port.data)

    def elaborate(self, platform):
        m = Module()
        T, L, k, s = self.T, self.lanes, self.k, self.stride
        G = self.c_out // L
        cin_p = pow2_at_least(self.c_in)
        M = self.group
        ngroups = cin_p // M
        gbits = (ngroups - 1).bit_length()
        span, d = self.span, self.dilation
        slots = pow2_at_least(span + 1)  # one row more than a window: the next row arrives while this one computes
        xbits = bits_for(self.width)
        side = k // 2 if self.transposed else k
        neuron = self.theta is not None

        # Memories: line buffer (S rows of plane-major words, each pixel in P parts of T / P planes), weights,
        # per-block bias and threshold.
        P = self.parts
        tp = T // P  # planes per part
        pbits = (P - 1).bit_length()
        mask_bits = pow2_at_least(tp * ngroups)  # one flag per (plane, group of M channels) holding spikes
        ring = self.ring
        depth = span * self.width + ring  # a ring's pixels
        # Its reads are registered (RegisteredRAM: per block-RAM slice of ``lb_slice`` words when given): a word
        # reaches nword LB_LATENCY cycles after its read.
        # A pixel's parts are scanned from its least significant planes up (part P - 1 first: the order of the adds
        # does not change their sum), and the scan ends with its last part that holds a spike: the high planes of a
        # layer's small codes are mostly empty. The last part's word carries, in ``lbits`` more bits, that part's
        # place in the scan (``last_visit``), so the first word read says how far to go.
        wbits = tp * cin_p
        lbits = pbits if P > 1 else 0
        m.submodules.linebuf = lb = RegisteredRAM(wbits + lbits, (depth if ring else slots << xbits) * P,
                                                  self.lb_slice)
        words, ntaps = weight_words(self.weights, L, self.transposed, M)
        ram_words = len(words) - self.rom_words
        assert self.rom_words == 0 or (ram_words == pow2_at_least(ram_words) and self.rom_words <= ram_words), \
            "rom_words: the block-RAM words must be a power of two, at least as many as the ROM's"
        m.submodules.weights = wm = memory.Memory(shape=unsigned(8 * L * M), depth=ram_words, init=words[:ram_words])
        w_r = wm.read_port()
        w_addr = Signal(bits_for(len(words)))
        # A word read in SCAN reaches the accumulator WEIGHT_STAGES + 1 cycles later: the read, then a register on
        # the RAM's output (a DP16KD's clock-to-output, 5.8 ns, was most of the ECP5 pipeline's paths) and on the
        # ROM's (its decode).
        ram_q = Signal(8 * L * M)
        m.d.sync += ram_q.eq(w_r.data)
        w_data = ram_q
        if self.rom_words:
            abits = (ram_words - 1).bit_length()
            in_rom = Signal()  # the word read is the ROM's (registered with the read, then with the data)
            in_rom_q = Signal()
            with m.If(w_r.en):
                m.d.sync += in_rom.eq(w_addr[abits:].any())
            m.d.sync += in_rom_q.eq(in_rom)
            rom_q = Signal(8 * L * M)
            self._weight_rom(m, words[ram_words:], abits, w_addr, w_r.en, rom_q)
            w_data = Mux(in_rom_q, rom_q, ram_q)
        vb, tb = self.vbits, self.theta_bits
        # An Integrator's per-block biases: a word of L membranes' starting values per block, read in the cycle
        # before the block's START. A neuron's converters add the biases (and compare with the thresholds) as
        # constants of the block they convert (``conv_g``), and its membranes start at 0.
        p_en = Signal()  # the params memory's read enable
        p_addr = Signal(bits_for(G))
        m.submodules.acc = acc = UWDAccumulator(L, vb, T, M, biased=not neuron)
        if neuron:
            bb = max(1, max(int(b).bit_length() for b in self.bias)) + 1  # signed width of the biases
            m.submodules.sar = sar = SARNeuron(L, vb, bb, tb, T, self.sar_lanes)
        else:
            params = [sum((int(self.bias[g * L + lane]) & ((1 << vb) - 1)) << (vb * lane) for lane in range(L))
                      for g in range(G)]
            m.submodules.params = pm = memory.Memory(shape=unsigned(vb * L), depth=G, init=params)
            p_r = pm.read_port()
            m.d.comb += [p_r.en.eq(p_en), p_r.addr.eq(p_addr), self.p_read.eq(p_en)]
            for lane in range(L):
                m.d.comb += acc.bias[lane].eq(p_r.data[vb * lane:][:vb].as_signed())

        # Counters: output position, input rows received, input column, block, tap, SAR step. A dilated window
        # reaches up to ``d (k // 2)`` pixels past a frame's edge, which may be more than the frame is wide.
        reach = span if d > 1 else 0
        ybits = bits_for(max(self.height, self.h_out, self.width, self.w_out) + 1 + reach) + 2
        oy = Signal(ybits)
        ox = Signal(ybits)
        rows_in = Signal(ybits)
        x_in = Signal(xbits)
        g = Signal(bits_for(G))
        ti = Signal(bits_for(side))
        tj = Signal(bits_for(side))
        wrow = Signal(bits_for(len(words) + 1))
        sar_steps = T * self.sar_lanes  # a conversion: T steps per lane, sar_lanes lanes per converter
        tt = Signal(bits_for(sar_steps))
        word = Signal(tp * cin_p)  # the part being scanned
        nword = Signal(tp * cin_p)  # the part read last: loaded in LOAD, or in the cycle after a prefetch
        # A prefetch in flight: issued last cycle (``fresh``), or the cycle before (``fresh2``: nword takes the line
        # buffer's word in this one); the scan takes nword's flags only when neither is set.
        fresh, fresh2 = Signal(), Signal()
        pending = fresh | fresh2
        rest = Signal(mask_bits)  # the part's (plane, group) flags that hold spikes, above the one being added
        rpart = Signal(max(1, pbits))  # the place in the scan of the part being scanned (part P - 1 - rpart)
        last_visit = Signal(max(1, pbits))  # the place of the scan's last part (read with the first)
        # the part being scanned is the scan's last (``rpart == last_visit``, a register: the scan's take condition
        # tests registers only)
        scan_last = Signal(init=P == 1)
        wpart = Signal(max(1, pbits))  # the part being written
        held = Signal(T * cin_p)  # a pixel whose later parts are still to be written
        # The line buffer reads every cycle (its enable is high), at an address that depends on registers only: the
        # FSM's state and the part counters (TAP: part ``rpart``, FLAGS: part 1, SCAN: part ``rpart + 2``, the only
        # parts read there); ``lb_read`` marks the reads the engine uses, whose words it takes LB_LATENCY cycles
        # later. With the enable and the part decided by the scan's take condition (the FSM state, ``rest_empty``,
        # the prefetch in flight) the route from that logic to a block RAM placed across the part was the critical
        # path of the ECP5-85F build at 90 % of the logic (69.1 MHz).
        rd_part = Signal(max(1, pbits))  # the part the line buffer reads this cycle
        lb_read = Signal()  # this cycle's read is used
        m.d.comb += rd_part.eq(rpart)
        ev_valid = Signal()
        ev_bits = Signal(M)
        ev_t = Signal(bits_for(T))
        obits = (T if neuron else vb) * L
        out_reg = Signal(obits * G)

        # Input rows an output row needs (all of them up to ``need``), and a tap's input position.
        def sg(v):  # as a non-negative signed value, so that differences below keep their sign
            return Cat(v, Const(0, 1)).as_signed()

        need = Signal(ybits)
        first_row = Signal(signed(ybits + 2))  # the oldest input row the current output row reads
        # The tap's input position and whether it is inside are registers, computed from the tap counters' next
        # values (nti, ntj), so the carry chains of the position and of the bounds checks end in a register.
        nti, ntj = Signal.like(ti), Signal.like(tj)
        m.d.comb += [nti.eq(ti), ntj.eq(tj)]
        m.d.sync += [ti.eq(nti), tj.eq(ntj)]
        # The next tap's offsets in input pixels: the counters themselves, or ``d`` times them in a dilated Conv (a
        # constant product: a shift, or one small adder for d = 3), made once for the position and the bounds.
        di, dj = nti, ntj
        if d > 1:
            di, dj = Signal(bits_for(d * side)), Signal(bits_for(d * side))
            m.d.comb += [di.eq(const_mul(nti, d)), dj.eq(const_mul(ntj, d))]
        iy, ix = Signal(signed(ybits + 2)), Signal(signed(ybits + 2))  # of the next tap
        ry, rx = Signal(signed(ybits + 2)), Signal(signed(ybits + 2))  # of the current tap
        m.d.sync += [ry.eq(iy), rx.eq(ix)]
        if self.transposed:
            m.d.comb += need.eq(((oy + self.pad) >> 1) + 1)
            m.d.comb += first_row.eq(sg((oy + self.pad) >> 1) - (side - 1))
            m.d.comb += [iy.eq(sg((oy + self.pad) >> 1) - sg(nti)), ix.eq(sg((ox + self.pad) >> 1) - sg(ntj))]
            parity = Cat((ox + self.pad)[0], (oy + self.pad)[0])
            gsel = Cat(parity, g)
        else:
            m.d.comb += need.eq((oy << (s - 1)) + (span - self.pad))
            m.d.comb += first_row.eq(sg(oy << (s - 1)) - self.pad)
            m.d.comb += [iy.eq(sg(oy << (s - 1)) + sg(di) - self.pad), ix.eq(sg(ox << (s - 1)) + sg(dj) - self.pad)]
            gsel = g
        # Taps inside the input: per output pixel the counters' ranges (row base ``by``, column base ``bx``, so
        # ``lo <= tap <= hi``), kept in registers; the bounds check of a tap is then a small compare of the
        # counters, and only START (tap 0) compares against the bases directly.
        by, bx = Signal(signed(ybits + 2)), Signal(signed(ybits + 2))
        if self.transposed:
            m.d.comb += [by.eq(sg((oy + self.pad) >> 1)), bx.eq(sg((ox + self.pad) >> 1))]
            # iy = by - a in [0, H-1]  <=>  by - (H-1) <= a <= by
            lo_y, hi_y, lo_x, hi_x = by - (self.height - 1), by, bx - (self.width - 1), bx
        else:
            m.d.comb += [by.eq(sg(oy << (s - 1))), bx.eq(sg(ox << (s - 1)))]
            # iy = by + d i - p in [0, H-1]  <=>  p - by <= d i <= H - 1 + p - by
            lo_y, hi_y = self.pad - by, self.height - 1 + self.pad - by
            lo_x, hi_x = self.pad - bx, self.width - 1 + self.pad - bx
        bounds = [Signal(signed(ybits + 3), name=n) for n in ("lo_y", "hi_y", "lo_x", "hi_x")]
        m.d.sync += [r.eq(v) for r, v in zip(bounds, (lo_y, hi_y, lo_x, hi_x), strict=True)]
        inside = Signal()
        m.d.sync += inside.eq((sg(di) >= bounds[0]) & (sg(di) <= bounds[1])
                              & (sg(dj) >= bounds[2]) & (sg(dj) <= bounds[3]))
        enough = (rows_in >= need) | (rows_in == self.height)
        # The receiver fills the line buffer while the engine computes: row r goes to slot r mod S once the
        # current output row no longer reads the row that was there (r < first_row + S), until the frame is in.
        # The input's ``ready`` is a register, so that no combinational path runs from one engine's counters
        # through it to the engine before it (that chain set the iCE40 Fmax). It is computed from this cycle's
        # values (``room``: there is room; ``row_done``: a row ends this cycle; the next part ``wpart_d``) and used
        # in the next: first_row only grows, so a stale ``room`` only delays; rows_in grows by one at the end of a
        # row, and the receiver waits that cycle out. The output's ``valid`` is a register too (``o_valid``): a
        # handshake between two engines is then one route from a register of each into the other's logic. With
        # both decoded (the producer's FSM state into the consumer's receiver and back into the producer's
        # counters) it was the critical path of the ECP5 build (13.9 ns, 10 ns of it two routes between engines).
        room = Signal()
        row_done = Signal()
        wpart_d = Signal.like(wpart)
        ready = Signal()
        last_part = Signal()
        # A ring (``ring``): pixel m of the frame is word m mod D. ``n_in`` counts the pixels in, ``o_lin`` is the
        # oldest input pixel the current and later output pixels read (raster index, negative in the padding),
        # ``pix`` the current output pixel's tap 0 modulo D, ``waddr`` the next pixel's word and ``raddr`` the
        # current tap's (all modulo D: one conditional subtract after each step, every step taken modulo D). A
        # ConvTranspose's output rows come in pairs on the same input rows: the first of a pair leaves the oldest row
        # whole for the second, which frees a column every two output pixels; ``o_row`` / ``p_row`` hold the row
        # start's values.
        W, p = self.width, self.pad
        if self.transposed:  # output row 0: tap (0, 0) is input (p // 2, p // 2), the oldest row side - 1 above it
            start = (p // 2 - (side - 1)) * W + p // 2 - (side - 1)
            start_pix = (p // 2) * W + p // 2
        else:
            start = start_pix = -p * W - p
        n_in = Signal(range(self.height * W + 2))
        lin = signed(bits_for(self.height * W + depth) + 2)
        o_lin, o_row = Signal(lin, init=start), Signal(lin, init=start)
        waddr, raddr = Signal(range(depth)), Signal(range(depth))
        pix, p_row = Signal(range(depth), init=start_pix % depth), Signal(range(depth), init=start_pix % depth)

        def wrap(v, step: int):
            """``(v + step) mod depth`` for ``v < depth``, ``0 <= step < depth``."""
            a = v + step
            return Mux(a >= depth, a - depth, a)

        if ring:
            n_next = n_in + last_part
            m.d.comb += room.eq((sg(n_next) < o_lin + depth) & (rows_in < self.height))
            with m.If(last_part):
                m.d.sync += [n_in.eq(n_next), waddr.eq(wrap(waddr, 1))]
        else:
            m.d.comb += room.eq((sg(rows_in) < first_row + slots) & (rows_in < self.height))
        m.d.sync += [wpart.eq(wpart_d), ready.eq(room & ~row_done & (wpart_d == 0))]
        last_tap = (ti == side - 1) & (tj == side - 1)

        # Plane-major input word: bit t * cin_p + c is plane t (MSB first) of channel c; part p holds planes
        # p * T / P .. (p + 1) * T / P - 1.
        pixel = Cat(*[self.i.payload[c][T - 1 - t] if c < self.c_in else Const(0, 1)
                      for t in range(T) for c in range(cin_p)])
        # The scan's state is registered: ``first``, the lowest (plane, group) flag still to add, ``any_set``,
        # whether there is one, and ``rest``, the flags above it. So the weight address and plane come straight
        # from registers (the encoder set the iCE40 Fmax), and the next state has two sources, each with its own
        # priority encoder, chosen only after them: ``rest`` when a group is added (its lowest flag next, cleared
        # from it by ``rest & (rest - 1)``, a carry chain), a new part's flags from ``nword`` when a part is
        # taken. One encoder behind a multiplexer of the sources (and ``first`` decoded to clear its flag) was
        # the ECP5 pipeline's critical path: the FSM's select and the decoder in front of seven encoder levels.
        # ``rest_empty`` (a register, like the others) says that ``first`` is the part's last flag: its next value
        # is whether the source had at most one flag (``two_set``, beside the encoders), so that the part's last add
        # can take the next part in the same cycle without a zero test of ``rest`` in front of the scan's select.
        flags = Signal(mask_bits)
        consume = Signal()  # SCAN adds group ``first``: move on to ``rest``
        taking = Signal()  # a part's flags (``flags``, from nword) replace the scan's (also in a part's last add)
        any_r, first_r = first_set([rest[b] for b in range(mask_bits)])
        any_f, first_f = first_set([flags[b] for b in range(mask_bits)])
        _, two_r = two_set([rest[b] for b in range(mask_bits)])
        _, two_f = two_set([flags[b] for b in range(mask_bits)])
        any_set = Signal()
        rest_empty = Signal()
        first = Signal(max(1, len(first_r)))
        with m.If(taking):
            m.d.sync += [any_set.eq(any_f), first.eq(first_f), rest.eq(flags & (flags - 1)), rest_empty.eq(~two_f)]
        with m.Elif(consume):
            m.d.sync += [any_set.eq(any_r), first.eq(first_r), rest.eq(rest & (rest - 1)), rest_empty.eq(~two_r)]

        # UWD pipeline: a weight read issued in SCAN is added WEIGHT_STAGES + 1 cycles later, with its plane and
        # spikes delayed as far.
        m.d.sync += ev_valid.eq(0)
        add_valid, add_t, add_bits = Signal(), Signal.like(ev_t), Signal(M)
        m.d.sync += [add_valid.eq(ev_valid), add_t.eq(ev_t), add_bits.eq(ev_bits)]
        m.d.comb += [
            acc.add.eq(add_valid), acc.t.eq(add_t), acc.weights.eq(w_data), acc.spikes.eq(ev_bits),  # a cycle ahead
            w_addr.eq(Cat(first[:gbits], wrow) if gbits else wrow), w_r.addr.eq(w_addr),
            lb.r_addr.eq(Cat(~rd_part[:pbits], raddr) if ring else
                         Cat(~rd_part[:pbits], rx[:xbits], ry[:(slots - 1).bit_length()])),
            lb.w_addr.eq(Cat(wpart[:pbits], waddr) if ring else
                         Cat(wpart[:pbits], x_in, rows_in[:(slots - 1).bit_length()])),
            self.lb_read.eq(lb_read), self.w_read.eq(w_r.en), self.lb_write.eq(lb.w_en),
            self.add_spikes.eq(Mux(add_valid, add_bits, 0)),
        ]
        # The converters work beside the compute: HAND gives them a block's membranes (``handing``) once they are
        # free, and the compute goes on with the next block while they convert; they store the codes into the output
        # word once it is free (the previous pixel taken) and offer the pixel after its last block. Their inputs are
        # a copy of the membranes (``snap``, taken the cycle after HAND, while START clears the membranes) and the
        # thresholds of the block they convert (``conv_g``: constants, a multiplexer of them when G > 1).
        handing = Signal()  # HAND gives the converters this block's membranes
        store = Signal()  # the converters' codes enter the output word
        if neuron:
            # The converters' load and step and the copy's enable are registers (set in the cycle before): they
            # drive every lane's residue, level and copy registers, and decoding them from the FSM's state in front
            # of that fanout was the critical path of most engines of the default plan placed alone.
            # The copy is taken the cycle after HAND (``snap``) and staged with its biases in the next (the
            # converters' ``staged``), so they load three cycles after HAND.
            sar_load, sar_stage, sar_go, sar_step = Signal(), Signal(), Signal(), Signal()
            m.d.sync += [sar_load.eq(handing), sar_stage.eq(sar_load), sar_go.eq(sar_stage), sar_step.eq(0)]
            m.d.comb += [sar.load.eq(sar_go), sar.step.eq(sar_step)]
            # a step of the converters' first lanes stands for one step in every lane, a load for every lane's
            # bias add (the add counts)
            m.d.comb += [self.sar_step.eq(sar.step & sar.first), self.bias_add.eq(sar_go)]
            # The copy's enable is one register per LANES_PER_COPY lanes (a copy of sar_load: its name holds
            # ``fanout_copy``, which the build keeps apart), as the accumulator's controls are: a 64-lane engine
            # copies about 1,500 membrane bits.
            snap = Signal(data.ArrayLayout(signed(vb), L))
            for j in range(0, L, LANES_PER_COPY):
                take = Signal(name=f"snap_fanout_copy{j}")
                m.d.sync += take.eq(handing)
                with m.If(take):
                    m.d.sync += [snap[lane].eq(acc.acc[lane]) for lane in range(j, min(L, j + LANES_PER_COPY))]
            conv_g = Signal.like(g)  # the block being converted
            conv_last = Signal()  # it is the pixel's last
            conv_busy = Signal()  # from HAND to the codes' store
            with m.If(handing):
                m.d.sync += [conv_g.eq(g), conv_last.eq(g == G - 1), conv_busy.eq(1)]
            with m.If(store):
                m.d.sync += conv_busy.eq(0)
            n_g = pow2_at_least(G)
            for lane in range(L):
                th = [Const(int(self.theta[min(b, G - 1) * L + lane]), tb) for b in range(n_g)]
                bs = [Const(int(self.bias[min(b, G - 1) * L + lane]), signed(bb)) for b in range(n_g)]
                m.d.comb += [sar.v[lane].eq(snap[lane]), sar.theta[lane].eq(pick(th, conv_g) if G > 1 else th[0]),
                             sar.bias[lane].eq(pick(bs, conv_g) if G > 1 else bs[0])]
        else:
            m.d.comb += self.bias_add.eq(acc.clear)
        m.d.comb += [self.o.payload.eq(out_reg), lb.r_en.eq(1)]
        m.d.comb += flags.eq(Cat(*[nword[e * M:(e + 1) * M].any() for e in range(tp * ngroups)]))
        # A weight is read in every SCAN cycle with a group to add, and only then: ``any_set`` is only ever set in
        # SCAN (a part's flags are taken on the way into it, and it is left only once they are used up), so the
        # weight memories' enable is that register itself, without a decode of the FSM's state in front of the
        # block RAMs (30 of them in a 64-lane layer).
        m.d.comb += w_r.en.eq(any_set)
        o_valid = Signal()  # high exactly in OUT
        m.d.comb += self.o.valid.eq(o_valid)

        # Receiver: part 0 of a pixel is written as it is taken, parts 1 .. P-1 in the next cycles (not ready
        # then); the pixel counts as in (x_in, rows_in) once its last part is written.
        m.d.comb += [self.i.ready.eq(ready), wpart_d.eq(wpart)]
        # The scan's last part of a pixel: its most significant part holding a spike, as its place in the scan (0
        # when only part P - 1 or none holds one), written with part P - 1 (written last, read first). The parts
        # are written most significant first, one a cycle, so the first written with a spike is the one: the OR of
        # each word written is registered (``w_any``, with its part; the OR sits by the block RAMs' data inputs, and
        # its route back into ``seen`` was the critical path of an ECP5-85F build, 65.3 MHz), and ``seen``, ``top``
        # keep the first found before the word last written.
        w_word = Signal(wbits)
        seen = Signal()
        top = Signal(max(1, pbits))
        w_any, w_any_part = Signal(), Signal(max(1, pbits))  # the word written last cycle (not a pixel's last)
        if P > 1:
            m.d.sync += [w_any.eq(lb.w_en & ~last_part & w_word.any()), w_any_part.eq(wpart)]
            with m.If(lb.w_en & last_part):
                m.d.sync += seen.eq(0)
            with m.Elif(w_any & ~seen):
                m.d.sync += [seen.eq(1), top.eq(w_any_part)]
        found = Mux(seen, ~top, Mux(w_any, ~w_any_part, 0))
        m.d.comb += lb.w_data.eq(Cat(w_word, found[:lbits]))
        with m.If(wpart == 0):
            m.d.comb += [lb.w_en.eq(self.i.valid & ready), w_word.eq(pixel[:wbits]),
                         last_part.eq((P == 1) & self.i.valid & ready)]
            if P > 1:
                with m.If(self.i.valid & ready):
                    m.d.comb += wpart_d.eq(1)
                    m.d.sync += held.eq(pixel)
        with m.Else():
            m.d.comb += [lb.w_en.eq(1), w_word.eq(word_at(held, wpart, wbits)),
                         last_part.eq(wpart == P - 1), wpart_d.eq(Mux(wpart == P - 1, 0, wpart + 1))]
        m.d.comb += row_done.eq(last_part & (x_in == self.width - 1))
        with m.If(last_part):
            m.d.sync += x_in.eq(x_in + 1)
            with m.If(x_in == self.width - 1):
                m.d.sync += [x_in.eq(0), rows_in.eq(rows_in + 1)]

        def next_tap():
            m.d.sync += wrow.eq(wrow + 1)
            with m.If(last_tap):
                m.next = "DRAIN"
            with m.Elif(tj == side - 1):
                m.d.comb += [ntj.eq(0), nti.eq(ti + 1)]
                if ring:  # the next kernel row: d input rows on (one back for a ConvTranspose), side - 1 taps back
                    step = -self.width + side - 1 if self.transposed else d * (self.width - side + 1)
                    m.d.sync += raddr.eq(wrap(raddr, step % depth))
                m.next = "TAP"
            with m.Else():
                m.d.comb += ntj.eq(tj + 1)
                if ring:
                    m.d.sync += raddr.eq(wrap(raddr, -1 % depth if self.transposed else d % depth))
                m.next = "TAP"

        # Each part's word is read, registered and flagged once; while a part is scanned the next one is read
        # (prefetch) into nword, and the part's last add takes the next part's flags in the same cycle once the
        # prefetch is in (else the scan's empty cycle takes them) instead of a LOAD and a FLAGS of its own: a part
        # but the pixel's last costs its adds, at least three cycles (the prefetch's: a read, the line buffer's
        # register and nword), and the last part its adds and one.
        m.d.sync += [fresh.eq(0), fresh2.eq(fresh)]
        with m.If(fresh2):
            m.d.sync += nword.eq(lb.r_data[:wbits])

        def take_part(prefetch):
            """nword's (plane, group) flags into the priority encoder and nword into word; where ``prefetch`` holds,
            use this cycle's line-buffer read (the part ``rd_part`` gives: 1 in FLAGS, ``rpart + 2`` in SCAN)."""
            m.d.comb += taking.eq(1)
            m.d.sync += word.eq(nword)
            with m.If(prefetch):
                m.d.comb += lb_read.eq(1)
                m.d.sync += fresh.eq(1)

        def next_part():
            """Take the pixel's next part (its prefetch is in nword) and prefetch the one after it, if the scan goes
            on that far."""
            is_last = rpart + 1 == last_visit
            take_part(~is_last)
            m.d.sync += [rpart.eq(rpart + 1), scan_last.eq(is_last)]

        with m.FSM():
            with m.State("ROW"):  # wait until the rows the next output row reads are in
                with m.If(enough):
                    m.d.comb += p_en.eq(1)
                    m.d.sync += g.eq(0)
                    m.next = "START"
            with m.State("START"):  # one block of one output pixel
                m.d.comb += acc.clear.eq(1)
                m.d.comb += [nti.eq(0), ntj.eq(0)]
                m.d.sync += [wrow.eq(const_mul(gsel, ntaps)),
                             inside.eq((lo_y <= 0) & (hi_y >= 0) & (lo_x <= 0) & (hi_x >= 0))]
                if ring:
                    m.d.sync += raddr.eq(pix)  # tap (0, 0)
                m.next = "TAP"
            with m.State("TAP"):
                with m.If(inside):
                    m.d.comb += lb_read.eq(1)
                    m.next = "READ"
                with m.Else():
                    next_tap()
            with m.State("READ"):  # the line buffer's slice registers take the word
                m.next = "LOAD"
            with m.State("LOAD"):  # the word into nword
                m.d.sync += nword.eq(lb.r_data[:wbits])
                if P > 1:
                    m.d.sync += [last_visit.eq(lb.r_data[wbits:]), scan_last.eq(lb.r_data[wbits:] == 0)]
                m.next = "FLAGS"
            with m.State("FLAGS"):  # the first part's flags into the priority encoder; the second is read
                m.d.comb += rd_part.eq(1)
                take_part(~scan_last)
                m.next = "SCAN"
            with m.State("SCAN"):  # one group with spikes per cycle, lowest first; an empty word ends the tap
                m.d.comb += rd_part.eq(rpart + 2)  # a prefetch reads the part after the next
                with m.If(any_set):
                    m.d.comb += consume.eq(1)
                    in_part = first[gbits:len(first_r)]  # the plane within the part (tp is a power of two)
                    plane = in_part if P == 1 else Cat(in_part, ~rpart[:pbits])  # part P - 1 - rpart
                    m.d.sync += [ev_valid.eq(1), ev_t.eq(plane), ev_bits.eq(word_at(word, first, M))]
                    if P > 1:  # the part's last add: the next part too, if its prefetch is in
                        with m.If(rest_empty & ~scan_last & ~pending):
                            next_part()
                with m.Elif(~scan_last):  # the pixel's next part, once the prefetch has it in nword
                    with m.If(~pending):
                        next_part()
                with m.Else():
                    m.d.sync += rpart.eq(0)
                    next_tap()
            # The last add passes the weight registers, the accumulator's second stage and the register stages
            # inside a wide adder tree.
            drain = WEIGHT_STAGES + acc.latency - 1
            for k in range(drain):
                with m.State("DRAIN" if k == 0 else f"DRAIN{k}"):
                    m.next = f"DRAIN{k + 1}" if k + 1 < drain else ("HAND" if neuron else "STORE")

            def next_block():
                """The pixel's next block: its bias is read for START."""
                m.d.comb += [p_en.eq(1), p_addr.eq(g + 1)]
                m.d.sync += g.eq(g + 1)
                m.next = "START"

            def next_pixel():
                """The output pixel is done (its codes may still be converting): on to the next one."""
                m.d.sync += [g.eq(0), ox.eq(ox + 1)]
                if ring and not self.transposed:  # the next output pixel's window: one input pixel on
                    m.d.sync += [o_lin.eq(o_lin + 1), pix.eq(wrap(pix, 1))]
                elif ring:  # an input column on every two output columns; the oldest row's in a pair's second
                    odd_x = (ox + p)[0]
                    with m.If(odd_x):
                        m.d.sync += pix.eq(wrap(pix, 1))
                        with m.If((oy + p)[0]):
                            m.d.sync += o_lin.eq(o_lin + 1)
                    with m.If(ox == self.w_out - 1):  # a new row: one input row on after a pair's second
                        with m.If((oy + p)[0]):
                            m.d.sync += [o_lin.eq(o_row + W), o_row.eq(o_row + W),
                                         pix.eq(wrap(p_row, W % depth)), p_row.eq(wrap(p_row, W % depth))]
                        with m.Else():
                            m.d.sync += [o_lin.eq(o_row), pix.eq(p_row)]
                m.d.comb += p_en.eq(ox != self.w_out - 1)  # block 0 of the next pixel of this row
                m.next = "START"
                with m.If(ox == self.w_out - 1):
                    m.d.sync += [ox.eq(0), oy.eq(oy + 1)]
                    m.next = "ROW"
                    with m.If(oy == self.h_out - 1):  # frame done: the next frame starts afresh
                        m.d.sync += [oy.eq(0), rows_in.eq(0)]
                        if ring:
                            m.d.sync += [o_lin.eq(start), o_row.eq(start), pix.eq(start_pix % depth),
                                         p_row.eq(start_pix % depth), n_in.eq(0), waddr.eq(0)]

            if neuron:
                with m.State("HAND"):  # the membranes to the converters, once they are free
                    with m.If(~conv_busy):
                        m.d.comb += handing.eq(1)
                        with m.If(g == G - 1):
                            next_pixel()
                        with m.Else():
                            next_block()
            else:
                with m.State("STORE"):  # the block's L membranes enter the output word from the top
                    new = acc.acc.as_value()
                    m.d.sync += out_reg.eq(Cat(out_reg[obits:], new) if G > 1 else new)
                    with m.If(g == G - 1):
                        m.d.sync += o_valid.eq(1)
                        m.next = "OUT"
                    with m.Else():
                        next_block()
                with m.State("OUT"):  # o_valid is high
                    with m.If(self.o.ready):
                        m.d.sync += o_valid.eq(0)
                        next_pixel()

        if neuron:
            # The converters: the load (sar_go, two cycles after HAND), K * T steps, then the codes enter the output
            # word from the top once it is free (the previous pixel taken), and a pixel's last block offers it.
            with m.FSM(name="converter"):
                with m.State("IDLE"):
                    with m.If(sar_go):
                        m.d.sync += [tt.eq(0), sar_step.eq(1)]
                        m.next = "SAR"
                with m.State("SAR"):  # sar.step is high (sar_step)
                    m.d.sync += tt.eq(tt + 1)
                    with m.If(tt == sar_steps - 1):
                        m.next = "STORE"
                    with m.Else():
                        m.d.sync += sar_step.eq(1)
                with m.State("STORE"):
                    with m.If(~o_valid):
                        m.d.comb += store.eq(1)
                        new = Cat(*[sar.q[lane] for lane in range(L)])
                        m.d.sync += [out_reg.eq(Cat(out_reg[obits:], new) if G > 1 else new), o_valid.eq(conv_last)]
                        m.next = "IDLE"
            with m.If(o_valid & self.o.ready):
                m.d.sync += o_valid.eq(0)
        return m
