"""Small building blocks shared by the accelerator's components.

* :class:`SinglePortRAM`: a synchronous RAM with ONE address shared by its read and its write port. Yosys merges
  such a pair into a single read/write port, which is the only kind of memory it maps to iCE40 UP5K SPRAM
  (``../shared/notes/hardware.md``); ECP5 block RAM takes it as well.
* :class:`RegisteredRAM`: a RAM whose read data passes a register per block of its depth before the multiplexer
  that picks the block: a read's word arrives two cycles later, with no block RAM's clock-to-output and no route
  across the part on one path.
* :func:`const_mul`: multiplication by an integer constant written as a sum of shifted copies, so that no
  multiplier cell is ever inferred (the accelerator is adders-only).
* :func:`event_layout`: the spike-event record passed between the encoder, the layer engines and the event buffers.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Signal, unsigned
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out


def bits_for(n: int) -> int:
    """Bits of an unsigned counter able to hold ``0 .. n - 1`` (at least 1)."""
    return max(1, (n - 1).bit_length())


def event_layout(ybits: int, xbits: int, cbits: int) -> data.StructLayout:
    """A spike event: position ``(y, x)`` at the producing layer's resolution, channel ``c``, and ``sh``.

    ``sh`` is the bit weight of a bit-serial event (direct coding's first layer: the event stands for
    ``2**sh`` units of input); it is 0 everywhere else.
    """
    return data.StructLayout({"y": unsigned(ybits), "x": unsigned(xbits), "c": unsigned(cbits), "sh": unsigned(3)})


def const_mul(value, constant: int):
    """``value * constant`` as a sum of shifted copies of ``value`` (adders only).

    ``value`` is an Amaranth value; its signedness is kept. A zero constant gives a 1-bit zero.
    """
    if constant == 0:
        return Const(0, 1)
    magnitude = abs(constant)
    terms = [value << b for b in range(magnitude.bit_length()) if (magnitude >> b) & 1]
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return -total if constant < 0 else total


class SinglePortRAM(wiring.Component):
    """Synchronous RAM with one shared address: a read returns ``rdata`` on the next cycle; a write stores ``wdata``.

    Parameters
    ----------
    width, depth : int
        Word size in bits and number of words.
    init : list of int, optional
        Initial contents (a ROM when ``we`` is never driven). SPRAM cannot be preloaded; yosys then uses EBR.

    Notes
    -----
    ``re`` and ``we`` must not be asserted together (the single physical port either reads or writes);
    ``rdata`` holds its value while ``re`` is low, so a consumer may wait on it.
    """

    def __init__(self, width: int, depth: int, init=()):
        self.width = width
        self.depth = depth
        self.init = list(init)
        super().__init__({
            "addr": In(bits_for(depth)),
            "re": In(1),
            "we": In(1),
            "wdata": In(width),
            "rdata": Out(width),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = memory.Memory(shape=unsigned(self.width), depth=self.depth, init=self.init)
        rd = mem.read_port()
        wr = mem.write_port()
        m.d.comb += [
            rd.addr.eq(self.addr),
            wr.addr.eq(self.addr),
            rd.en.eq(self.re),
            wr.en.eq(self.we),
            wr.data.eq(self.wdata),
            self.rdata.eq(rd.data),
        ]
        return m


class RegisteredRAM(wiring.Component):
    """A simple dual-port RAM (one write, one read port) whose read data is registered before it leaves: the word
    read in cycle ``k`` is on ``r_data`` in cycle ``k + 2``.

    With ``slice_depth`` the words are kept in slices of that many (the depth of one block RAM in the aspect ratio
    the memory takes), each slice's read data has a register of its own, and ``r_data`` is the multiplexer over
    those registers. Yosys maps a RAM deeper than one block to several blocks with a multiplexer behind them and
    never uses the ECP5 DP16KD's own output register, so a read was a block's 5.8 ns clock-to-output, a route to
    wherever the placer put the multiplexer (up to 7 ns across an 80 %-full ECP5-85F) and the multiplexer: the
    critical path of the layer pipeline's ECP5 builds (line buffer into the scan's word register, 65.7 and 71.9
    MHz). A register per slice sits beside its block; the route across the part then starts from a flip-flop.

    Parameters
    ----------
    width, depth : int
        Word size in bits and number of words.
    slice_depth : int
        Words per slice, a power of two (0: one memory, its read data registered once).

    Attributes
    ----------
    w_addr, w_data, w_en : In
        Write port: ``w_data`` is stored at ``w_addr`` at the end of a cycle with ``w_en``.
    r_addr, r_en : In
        Read port: a cycle with ``r_en`` reads ``r_addr``.
    r_data : Out(width)
        The word read two cycles before.
    """

    LATENCY = 2  # cycles from a read to its word on r_data

    def __init__(self, width: int, depth: int, slice_depth: int = 0):
        self.width, self.depth = width, depth
        assert slice_depth >= 0 and slice_depth & (slice_depth - 1) == 0, "slice_depth: a power of two (or 0)"
        self.slice_depth = slice_depth if 0 < slice_depth < depth else depth
        super().__init__({
            "w_addr": In(bits_for(depth)), "w_data": In(width), "w_en": In(1),
            "r_addr": In(bits_for(depth)), "r_en": In(1),
            "r_data": Out(width),
        })

    def elaborate(self, platform):
        m = Module()
        S = self.slice_depth
        n = -(-self.depth // S)
        sbits = (S - 1).bit_length()
        regs = []
        for i in range(n):
            mem = memory.Memory(shape=unsigned(self.width), depth=min(S, self.depth - i * S), init=[])
            m.submodules[f"slice{i}" if n > 1 else "mem"] = mem
            wr, rd = mem.write_port(), mem.read_port()
            here_w = (self.w_addr >> sbits) == i if n > 1 else 1
            here_r = (self.r_addr >> sbits) == i if n > 1 else 1
            q = Signal(self.width, name=f"q{i}")
            m.d.comb += [wr.addr.eq(self.w_addr[:max(1, sbits)] if n > 1 else self.w_addr), wr.data.eq(self.w_data),
                         wr.en.eq(self.w_en & here_w),
                         rd.addr.eq(self.r_addr[:max(1, sbits)] if n > 1 else self.r_addr),
                         rd.en.eq(self.r_en & here_r)]
            m.d.sync += q.eq(rd.data)
            regs.append(q)
        if n == 1:
            m.d.comb += self.r_data.eq(regs[0])
            return m
        # the slice of a read, aligned with its word in the slice registers
        sel, sel_q = Signal(range(n)), Signal(range(n))
        with m.If(self.r_en):
            m.d.sync += sel.eq(self.r_addr >> sbits)
        m.d.sync += sel_q.eq(sel)
        with m.Switch(sel_q):
            for i, q in enumerate(regs):
                with m.Case(i):
                    m.d.comb += self.r_data.eq(q)
        return m


def pack(fields: list[tuple[int, int]]) -> int:
    """Pack ``[(value, bits), ...]`` (least significant first, two's complement) into one integer word."""
    word, shift = 0, 0
    for value, bits in fields:
        word |= (int(value) & ((1 << bits) - 1)) << shift
        shift += bits
    return word


def field_of(word: int, shift: int, bits: int, signed: bool) -> int:
    """The inverse of :func:`pack` for one field."""
    v = (int(word) >> shift) & ((1 << bits) - 1)
    if signed and v >> (bits - 1):
        v -= 1 << bits
    return v


__all__ = ["RegisteredRAM", "SinglePortRAM", "bits_for", "const_mul", "event_layout", "field_of", "pack"]
