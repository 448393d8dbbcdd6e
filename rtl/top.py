"""Top level: the sequencer behind a byte stream, for the firmware issue to put on a UART.

Byte protocol (host <-> device), little-endian, no framing beyond the command byte::

    host:   'I'                                  -> device: 'I', version, tile_h, tile_w, halo, T
    host:   'T', h, w, h*w pixels (raster)       -> device: 'R', h*w output pixels (raster),
                                                            cycles (u32), spikes (u32), sops (u32)
    host:   'W', the weight image                -> device: 'K' once every byte is stored

``1 <= h <= tile_h`` and ``1 <= w <= tile_w``, both multiples of the model's size multiple (2 for a model with a
half-resolution body), else the device answers ``'E'`` and returns to idle without reading pixels (the host must
then not send them). The weight image is :meth:`~edgespike.rtl.params.Plan.weight_image` of the same model
shape (its length follows from the plan): it replaces the weight, bias and threshold RAMs, which otherwise hold
the model the gateware was built from (an FPGA that cannot preload its RAMs, like the UP5K's SPRAM, must get a
'W' before the first tile). Version 2 of the protocol added 'W'; 'I' and 'T' are unchanged.

A tile is a region of the frame with its halo (see
:func:`edgespike.firmware.tiling.tiles`); the host keeps the core of each reply. Any other byte while idle is
ignored, so a host can resynchronise by sending a few zero bytes and an 'I'. The counters are those of
:class:`~edgespike.rtl.sequencer.Sequencer` for this tile.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from edgespike.rtl.params import Plan
from edgespike.rtl.sequencer import Sequencer

PROTOCOL_VERSION = 2
CMD_INFO = ord("I")
CMD_TILE = ord("T")
CMD_WEIGHTS = ord("W")
REPLY_WEIGHTS = ord("K")
REPLY_TILE = ord("R")
REPLY_ERROR = ord("E")


def _send_counters(m: Module, tx, counter_bytes: Array, idx: Signal) -> None:
    """The COUNTERS state of a reply: the 12 counter bytes (cycles, spikes, synaptic ops; u32 each, little-endian)
    one per accepted transfer on ``tx``, then back to IDLE."""
    m.d.comb += [tx.valid.eq(1), tx.payload.eq(counter_bytes[idx])]
    with m.If(tx.ready):
        m.d.sync += idx.eq(idx + 1)
        with m.If(idx == 11):
            m.next = "IDLE"


class Top(wiring.Component):
    """The accelerator with a byte-stream port.

    Attributes
    ----------
    rx : In(stream.Signature(8))
        Bytes from the host.
    tx : Out(stream.Signature(8))
        Bytes to the host.
    """

    def __init__(self, plan: Plan):
        self.plan = plan
        super().__init__({"rx": In(stream.Signature(8)), "tx": Out(stream.Signature(8))})

    def info_bytes(self) -> list[int]:
        p = self.plan
        return [CMD_INFO, PROTOCOL_VERSION, p.tile[0], p.tile[1], p.halo, p.timesteps]

    def elaborate(self, platform):
        p = self.plan
        m = Module()
        m.submodules.seq = seq = Sequencer(p)
        h, w = Signal(8), Signal(8)
        left = Signal(17)  # output pixels still to forward
        idx = Signal(4)
        row = Signal(8)
        info = Array(Const(b, 8) for b in self.info_bytes())
        counters = Signal(96)
        m.d.comb += counters.eq(Cat(seq.cycles, seq.spikes, seq.sops))
        counter_bytes = Array(counters[8 * i:8 * i + 8] for i in range(12))

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.rx.ready.eq(1)
                with m.If(self.rx.valid):
                    with m.If(self.rx.payload == CMD_INFO):
                        m.d.sync += idx.eq(0)
                        m.next = "INFO"
                    with m.Elif(self.rx.payload == CMD_TILE):
                        m.next = "HEADER_H"
                    with m.Elif(self.rx.payload == CMD_WEIGHTS):
                        m.next = "WEIGHTS_START"
            with m.State("WEIGHTS_START"):
                m.d.comb += seq.start_wload.eq(1)
                m.next = "WEIGHTS"
            with m.State("WEIGHTS"):
                m.d.comb += [seq.wload.valid.eq(self.rx.valid), seq.wload.payload.eq(self.rx.payload),
                             self.rx.ready.eq(seq.wload.ready)]
                with m.If(~seq.busy):
                    m.next = "WEIGHTS_DONE"
            with m.State("WEIGHTS_DONE"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(REPLY_WEIGHTS)]
                with m.If(self.tx.ready):
                    m.next = "IDLE"
            with m.State("INFO"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(info[idx])]
                with m.If(self.tx.ready):
                    m.d.sync += idx.eq(idx + 1)
                    with m.If(idx == len(self.info_bytes()) - 1):
                        m.next = "IDLE"
            with m.State("HEADER_H"):
                m.d.comb += self.rx.ready.eq(1)
                with m.If(self.rx.valid):
                    m.d.sync += h.eq(self.rx.payload)
                    m.next = "HEADER_W"
            with m.State("HEADER_W"):
                m.d.comb += self.rx.ready.eq(1)
                with m.If(self.rx.valid):
                    m.d.sync += w.eq(self.rx.payload)
                    bad = ((h == 0) | (h > p.tile[0]) | (self.rx.payload == 0) | (self.rx.payload > p.tile[1]))
                    if p.multiple > 1:  # the half-resolution layers need whole pixel pairs
                        odd = p.multiple - 1
                        bad |= ((h & odd) != 0) | ((self.rx.payload & odd) != 0)
                    m.next = "START"
                    with m.If(bad):
                        m.next = "ERROR"
            with m.State("ERROR"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(REPLY_ERROR)]
                with m.If(self.tx.ready):
                    m.next = "IDLE"
            with m.State("START"):
                m.d.comb += [seq.start.eq(1), seq.h.eq(h), seq.w.eq(w)]
                m.d.sync += [left.eq(0), row.eq(0)]
                m.next = "COUNT"
            with m.State("COUNT"):
                # h*w without a multiplier: the sequencer is loading pixels meanwhile, so there is time to add
                m.d.sync += [left.eq(left + w), row.eq(row + 1)]
                with m.If(row + 1 == h):
                    m.next = "REPLY"
                m.d.comb += [self.rx.ready.eq(seq.pixels.ready), seq.pixels.valid.eq(self.rx.valid),
                             seq.pixels.payload.eq(self.rx.payload)]
            with m.State("REPLY"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(REPLY_TILE)]
                m.d.comb += [self.rx.ready.eq(seq.pixels.ready), seq.pixels.valid.eq(self.rx.valid),
                             seq.pixels.payload.eq(self.rx.payload)]
                with m.If(self.tx.ready):
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += [self.rx.ready.eq(seq.pixels.ready), seq.pixels.valid.eq(self.rx.valid),
                             seq.pixels.payload.eq(self.rx.payload)]
                m.d.comb += [self.tx.valid.eq(seq.out.valid), self.tx.payload.eq(seq.out.payload),
                             seq.out.ready.eq(self.tx.ready)]
                with m.If(seq.out.valid & self.tx.ready):
                    m.d.sync += left.eq(left - 1)
                with m.If(left == 0):
                    m.d.sync += idx.eq(0)
                    m.next = "WAIT"
            with m.State("WAIT"):
                with m.If(~seq.busy):
                    m.next = "COUNTERS"
            with m.State("COUNTERS"):
                _send_counters(m, self.tx, counter_bytes, idx)
        return m


class PipelineTop(wiring.Component):
    """The layer pipeline (:class:`~edgespike.rtl.pipeline.LayerPipeline`) behind :class:`Top`'s tile protocol.

    What the link sends for a TILE, ``'T', h, w`` and the pixels, goes in; ``'R'``, the output pixels and the
    counters come out, as from :class:`Top`, so :class:`~edgespike.rtl.link.Link` serves either. The pipeline is
    built for one region size, so the link (``exact``) passes only tiles of exactly ``pixels`` pixels and ``h``,
    ``w`` are not read. There is no ``'W'``: the weights are RAM initialisers of the bitstream.

    Counters: cycles from the first pixel offered to the last output pixel taken; spikes and synaptic operations
    are not counted by this top (0).

    Parameters
    ----------
    pipeline : LayerPipeline
        Built for frames of ``pixels`` pixels.
    pixels : int
        Pixels of a region (the pipeline's ``height * width``).
    """

    def __init__(self, pipeline, pixels: int):
        self.pipeline = pipeline
        self.pixels = pixels
        super().__init__({"rx": In(stream.Signature(8)), "tx": Out(stream.Signature(8))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.pipeline = pipe = self.pipeline
        fed, sent = Signal(range(self.pixels + 1)), Signal(range(self.pixels + 1))
        prefix = Signal(2)  # bytes of 'T', h, w still to drop
        tagged = Signal()  # 'R' sent
        cycles = Signal(32)
        idx = Signal(4)
        counter_bytes = Array([cycles[8 * i:8 * i + 8] for i in range(4)] + [Const(0, 8)] * 8)
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.rx.ready.eq(1)
                with m.If(self.rx.valid & (self.rx.payload == CMD_TILE)):
                    m.d.sync += [prefix.eq(2), fed.eq(0), sent.eq(0), tagged.eq(0), cycles.eq(0)]
                    m.next = "HEADER"
            with m.State("HEADER"):  # h and w: the link passed only the region's own shape
                m.d.comb += self.rx.ready.eq(1)
                with m.If(self.rx.valid):
                    m.d.sync += prefix.eq(prefix - 1)
                    with m.If(prefix == 1):
                        m.next = "RUN"
            with m.State("RUN"):
                m.d.sync += cycles.eq(cycles + 1)
                more = fed != self.pixels
                m.d.comb += [pipe.i.payload.eq(self.rx.payload), pipe.i.valid.eq(self.rx.valid & more),
                             self.rx.ready.eq(pipe.i.ready & more)]
                with m.If(self.rx.valid & pipe.i.ready & more):
                    m.d.sync += fed.eq(fed + 1)
                # 'R' first, then the output pixels as they come
                m.d.comb += [self.tx.valid.eq(~tagged | pipe.o.valid),
                             self.tx.payload.eq(Mux(tagged, pipe.o.payload, REPLY_TILE)),
                             pipe.o.ready.eq(tagged & self.tx.ready)]
                with m.If(self.tx.ready):
                    m.d.sync += tagged.eq(1)
                with m.If(tagged & pipe.o.valid & self.tx.ready):
                    m.d.sync += sent.eq(sent + 1)
                    with m.If(sent == self.pixels - 1):
                        m.d.sync += idx.eq(0)
                        m.next = "COUNTERS"
            with m.State("COUNTERS"):
                _send_counters(m, self.tx, counter_bytes, idx)
        return m
