"""The sequencer: one tile through the whole model, timesteps inside, layers inside the timestep loop.

Per tile::

    LOAD      h*w pixels from the ``pixels`` stream into the pixel RAM               (not counted: host-paced)
    INIT      every layer engine writes its initial membranes (in parallel)
    for t in 0 .. T-1:
        ENC   each pixel through the SAR encoder (UWEncoder) into event buffer 0:
              direct coding: all 8 bit planes, each event weighted 2**bit (bit-serial first layer);
              UWE coding: plane t only (the SAR decides bits 7..7-t, emits the last)
        for each layer l:
            SCAT  replay event buffer l%2 into engine l (scatter, adders only)
            FIRE  engine l's fire pass writes its spike events into buffer (l+1)%2
    READOUT   per pixel: read the decoder's layers, R = sum of multiplier * quantity (shift-adds),
              round half up, residual, clip, one byte on ``out``

Step-major like ``reference.run``; a layer's state between steps is its own membrane RAM, so the two event
buffers (ping-pong, each sized for the worst step of any layer) are all the inter-layer storage there is.
Everything is strictly sequential, which makes the cycle count an exact closed form of the spike maps
(:mod:`edgespike.rtl.cycles` computes it and the tests check it against the ``cycles`` counter).

A tile is a piece of a frame with a halo (:func:`edgespike.rtl.cycles.tiles`); the tile's own edges are zero
padding, exact at frame borders and wrong only inside the halo, which the host discards.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from edgespike.rtl.common import SinglePortRAM, bits_for, const_mul, event_layout
from edgespike.rtl.layer import LayerEngine
from edgespike.rtl.params import Plan
from edgespike.rtl.uwe import UWEncoder


class Sequencer(wiring.Component):
    """A whole model on one tile: pixels in, denoised pixels out, with cycle / spike / synaptic-op counters.

    Parameters
    ----------
    plan : Plan
        From :func:`edgespike.rtl.params.plan` (already fit-checked).

    Attributes
    ----------
    start : In(1)
        Pulse while idle: latch ``h`` and ``w`` and take ``h*w`` pixels (raster order) from ``pixels``.
    h, w : In(8)
        Tile size, at most the plan's tile.
    pixels : In(stream.Signature(8))
    out : Out(stream.Signature(8))
        ``h*w`` output pixels, raster order.
    busy : Out(1)
    cycles, spikes, sops : Out(32)
        Counters of the last tile: cycles from INIT to the end of READOUT, spike events produced by all layers,
        synaptic operations (membrane updates).
    """

    def __init__(self, plan: Plan):
        self.plan = plan
        super().__init__({
            "start": In(1),
            "h": In(8),
            "w": In(8),
            "pixels": In(stream.Signature(8)),
            "out": Out(stream.Signature(8)),
            "busy": Out(1),
            "cycles": Out(32),
            "spikes": Out(32),
            "sops": Out(32),
        })

    def elaborate(self, platform):
        p = self.plan
        m = Module()
        yb, xb, cb = p.ybits, p.xbits, p.cbits
        layout = event_layout(yb, xb, cb)
        T = p.timesteps
        nl = len(p.layers)

        m.submodules.pixmem = pixmem = SinglePortRAM(8, 1 << (yb + xb))
        bufs = []
        for b in (0, 1):
            buf = SinglePortRAM(p.event_bits, p.buffer_depth)
            m.submodules[f"events{b}"] = buf
            bufs.append(buf)
        m.submodules.encoder = enc = UWEncoder(tag_bits=yb + xb, n=8)
        engines = []
        for lp in p.layers:
            eng = LayerEngine(lp, yb, xb, cb)
            m.submodules[f"layer{lp.index}_{lp.name}"] = eng
            engines.append(eng)

        h, w = Signal(9), Signal(9)
        py, px = Signal(9), Signal(9)
        t = Signal(bits_for(T + 1))
        layer = Signal(bits_for(nl))
        rd = Signal(bits_for(p.buffer_depth + 1))
        wptr = Signal(bits_for(p.buffer_depth + 1))
        count = [Signal(bits_for(p.buffer_depth + 1), name=f"count{b}") for b in (0, 1)]
        pix_addr = Cat(px[:xb], py[:yb])

        # --- static wiring: engine geometry and step, encoder configuration
        for lp, eng in zip(p.layers, engines, strict=True):
            lvl = lp.level
            m.d.comb += [
                eng.h_out.eq((h + (1 << lvl) - 1) >> lvl),
                eng.w_out.eq((w + (1 << lvl) - 1) >> lvl),
                eng.step.eq(t),
                eng.last_step.eq(t == T - 1),
            ]
        if p.encoder == "uwe":
            m.d.comb += [enc.emit_from.eq(t), enc.stop_at.eq(t)]
        else:
            m.d.comb += [enc.emit_from.eq(0), enc.stop_at.eq(7)]

        # --- event writer (always ready): from the encoder or from the firing engine into a buffer
        def write_event(buf, payload):
            m.d.comb += [buf.addr.eq(wptr), buf.we.eq(1), buf.wdata.eq(payload)]
            m.d.sync += wptr.eq(wptr + 1)

        enc_event = Signal(layout)
        m.d.comb += [
            enc_event.y.eq(enc.events.payload.tag[xb:]),
            enc_event.x.eq(enc.events.payload.tag[:xb]),
            enc_event.c.eq(0),
            enc_event.sh.eq(7 - enc.events.payload.t if p.encoder == "direct" else 0),
            enc.events.ready.eq(1),
        ]

        def encoder_writer():
            with m.If(enc.events.valid):
                write_event(bufs[0], enc_event)

        def begin_encode():
            m.d.sync += [px.eq(0), py.eq(0), wptr.eq(0)]
            m.next = "ENC_FETCH"

        def advance_pixel():
            with m.If(px == w - 1):
                m.d.sync += [px.eq(0), py.eq(py + 1)]
            with m.Else():
                m.d.sync += px.eq(px + 1)

        counted = Signal()
        m.d.comb += self.busy.eq(counted)
        with m.If(counted):
            m.d.sync += self.cycles.eq(self.cycles + 1)
        sop_sum = sum(Mux(eng.sop, lp.lanes, 0) for lp, eng in zip(p.layers, engines, strict=True))
        m.d.sync += self.sops.eq(self.sops + sop_sum)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [h.eq(self.h), w.eq(self.w), px.eq(0), py.eq(0),
                                 self.cycles.eq(0), self.spikes.eq(0), self.sops.eq(0)]
                    m.next = "LOAD"

            with m.State("LOAD"):
                m.d.comb += self.pixels.ready.eq(1)
                with m.If(self.pixels.valid):
                    m.d.comb += [pixmem.addr.eq(pix_addr), pixmem.we.eq(1), pixmem.wdata.eq(self.pixels.payload)]
                    advance_pixel()
                    with m.If((px == w - 1) & (py == h - 1)):
                        m.next = "INIT_START"

            with m.State("INIT_START"):
                m.d.comb += counted.eq(1)
                m.d.comb += [eng.start_init.eq(1) for eng in engines]
                m.d.sync += t.eq(0)
                m.next = "INIT_WAIT"

            with m.State("INIT_WAIT"):
                m.d.comb += counted.eq(1)
                with m.If(~Cat(*(eng.busy for eng in engines)).any()):
                    begin_encode()

            # --- input encoding of step t into buffer 0
            with m.State("ENC_FETCH"):
                m.d.comb += counted.eq(1)
                encoder_writer()
                with m.If(py == h):
                    m.next = "ENC_WAIT"
                with m.Else():
                    m.d.comb += [pixmem.addr.eq(pix_addr), pixmem.re.eq(1)]
                    m.next = "ENC_OFFER"

            with m.State("ENC_OFFER"):
                m.d.comb += [counted.eq(1), enc.pixels.valid.eq(1),
                             enc.pixels.payload.value.eq(pixmem.rdata), enc.pixels.payload.tag.eq(pix_addr)]
                encoder_writer()
                with m.If(enc.pixels.ready):
                    advance_pixel()
                    m.next = "ENC_FETCH"

            with m.State("ENC_WAIT"):
                m.d.comb += counted.eq(1)
                encoder_writer()
                with m.If(~enc.busy):
                    m.d.sync += [count[0].eq(wptr), layer.eq(0), rd.eq(0)]
                    m.next = "SCAT_FETCH"

            # --- layer `layer`: replay its input buffer into it, then fire into the other buffer
            with m.State("SCAT_FETCH"):
                m.d.comb += counted.eq(1)
                with m.Switch(layer):
                    for i in range(nl):
                        with m.Case(i):
                            src = bufs[i % 2]
                            with m.If(rd == count[i % 2]):
                                m.next = "SCAT_WAIT"
                            with m.Else():
                                m.d.comb += [src.addr.eq(rd), src.re.eq(1)]
                                m.next = "SCAT_OFFER"

            with m.State("SCAT_OFFER"):
                m.d.comb += counted.eq(1)
                with m.Switch(layer):
                    for i, eng in enumerate(engines):
                        with m.Case(i):
                            m.d.comb += [eng.events.valid.eq(1), eng.events.payload.eq(bufs[i % 2].rdata)]
                            with m.If(eng.events.ready):
                                m.d.sync += rd.eq(rd + 1)
                                m.next = "SCAT_FETCH"

            with m.State("SCAT_WAIT"):
                m.d.comb += counted.eq(1)
                with m.Switch(layer):
                    for i, eng in enumerate(engines):
                        with m.Case(i):
                            with m.If(~eng.busy):
                                m.next = "FIRE_START"

            with m.State("FIRE_START"):
                m.d.comb += counted.eq(1)
                m.d.sync += wptr.eq(0)
                with m.Switch(layer):
                    for i, eng in enumerate(engines):
                        with m.Case(i):
                            m.d.comb += eng.start_fire.eq(1)
                m.next = "FIRE_WAIT"

            with m.State("FIRE_WAIT"):
                m.d.comb += counted.eq(1)
                with m.Switch(layer):
                    for i, eng in enumerate(engines):
                        with m.Case(i):
                            m.d.comb += eng.spikes.ready.eq(1)
                            with m.If(eng.spikes.valid):
                                write_event(bufs[(i + 1) % 2], eng.spikes.payload)
                                m.d.sync += self.spikes.eq(self.spikes + 1)
                            with m.If(~eng.busy):
                                m.d.sync += [count[(i + 1) % 2].eq(wptr), rd.eq(0)]
                                if i < nl - 1:
                                    m.d.sync += layer.eq(i + 1)
                                    m.next = "SCAT_FETCH"
                                else:
                                    with m.If(t == T - 1):
                                        m.d.sync += [px.eq(0), py.eq(0)]
                                        m.next = "RO_FETCH"
                                    with m.Else():
                                        m.d.sync += t.eq(t + 1)
                                        begin_encode()

            # --- decoder: R = sum multiplier * quantity, r = round_half_up(R >> shift), residual, clip
            with m.State("RO_FETCH"):
                m.d.comb += counted.eq(1)
                with m.If(py == h):
                    m.next = "IDLE"
                with m.Else():
                    m.d.comb += [pixmem.addr.eq(pix_addr), pixmem.re.eq(1)]
                    for li in {term.layer for term in p.terms}:
                        eng = engines[li]
                        m.d.comb += [eng.ro_en.eq(1), eng.ro_y.eq(py), eng.ro_x.eq(px)]
                    m.next = "RO_EMIT"

            with m.State("RO_EMIT"):
                m.d.comb += [counted.eq(1), self.out.valid.eq(1)]
                with m.If(self.out.ready):
                    advance_pixel()
                    m.next = "RO_FETCH"

        m.d.comb += self.out.payload.eq(self._decode(m, engines, pixmem.rdata))
        return m

    def _decode(self, m, engines, pixel):
        """Output pixel from the read-out words of the decoder's layers: shift-adds only."""
        p = self.plan
        total = Const(0, 1)
        for term in p.terms:
            lp = p.layers[term.layer]
            word = engines[term.layer].ro_data
            if term.quantity == "membrane":
                q = word[:lp.mbits].as_signed()
            elif term.quantity == "count":
                q = Cat(word[lp.mbits:lp.mbits + lp.count_bits], Const(0, 1)).as_signed()
            else:
                start = lp.mbits + lp.count_bits
                q = Cat(word[start:start + lp.uwd_bits], Const(0, 1)).as_signed()
            total = total + const_mul(q, term.multiplier)
        Rs = Signal(signed(p.readout_bits + 1), name="readout_R")
        m.d.comb += Rs.eq(total)
        r = (Rs + (1 << (p.shift - 1))) >> p.shift if p.shift else Rs
        y = Signal(signed(p.readout_bits + 3), name="readout_y")
        m.d.comb += y.eq(Cat(pixel, Const(0, 1)).as_signed() - r if p.residual else r)
        return Mux(y < 0, 0, Mux(y > 255, 255, y[:8]))
