"""Small building blocks shared by the accelerator's components.

* :class:`SinglePortRAM`: a synchronous RAM with ONE address shared by its read and its write port. Yosys merges
  such a pair into a single read/write port, which is the only kind of memory it maps to iCE40 UP5K SPRAM
  (``../shared/notes/hardware.md``); ECP5 block RAM takes it as well.
* :func:`const_mul`: multiplication by an integer constant written as a sum of shifted copies, so that no
  multiplier cell is ever inferred (the accelerator is adders-only).
* :func:`event_layout`: the spike-event record passed between the encoder, the layer engines and the event buffers.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, unsigned
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


__all__ = ["SinglePortRAM", "bits_for", "const_mul", "event_layout", "field_of", "pack"]
