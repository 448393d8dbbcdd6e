"""The sequencer: one tile through the whole model, layer-major, on one shared engine.

Per tile::

    LOAD      h*w pixels from the ``pixels`` stream into the pixel RAM                (not counted: host-paced)
    for each layer l, for each block g of lanes output channels:
        PARAMS    the block's biases and thresholds into the engine's lane registers
        INIT      the block's membranes: v0, leaked once, plus the bias
        for t in 0 .. T-1:
            INPUT  l = 0: each pixel through the SAR encoder straight into the engine (direct coding: all 8 bit
                          planes, each event weighted 2**bit; UWE coding: plane t only);
                   l > 0: scan bitmap (l-1)%2 at step t, word by word, one event per set bit
            FIRE   the engine's fire pass; each word's spikes go to bitmap l%2 at step t
    READOUT   per pixel: read the last layer's word, R = sum of multiplier * quantity (shift-adds),
              round half up, residual, clip, one byte on ``out``

Layer-major is exact: a layer at step t needs only the previous layer's spikes at step t and its own state,
which is what the bitmaps and the membrane RAM hold. Everything is strictly sequential, so the cycle count is an
exact closed form of the spike maps (:mod:`edgespike.fpga.cycles`; the tests check it against ``cycles``).

``wload`` (after a ``start_wload`` pulse) takes the weight image (:meth:`Plan.weight_image`) byte by byte and
writes the engine's weight and params RAMs: the host loads or replaces the weights at run time.

A tile is a piece of a frame with a halo (:func:`edgespike.firmware.tiling.tiles`); the tile's own edges are zero
padding, exact at frame borders and wrong only inside the halo, which the host discards.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from edgespike.rtl.common import SinglePortRAM, bits_for, const_mul
from edgespike.rtl.engine import Engine
from edgespike.rtl.params import PARAM_BITS, Plan
from edgespike.rtl.uwe import UWEncoder


class Sequencer(wiring.Component):
    """A whole model on one tile: pixels in, denoised pixels out, with cycle / spike / synaptic-op counters.

    Parameters
    ----------
    plan : Plan
        From :func:`edgespike.fpga.params.plan` (already fit-checked).

    Attributes
    ----------
    start : In(1)
        Pulse while idle: latch ``h`` and ``w`` and take ``h*w`` pixels (raster order) from ``pixels``.
    h, w : In(8)
        Tile size, at most the plan's tile, multiples of the model's size multiple.
    pixels : In(stream.Signature(8))
    out : Out(stream.Signature(8))
        ``h*w`` output pixels, raster order.
    start_wload : In(1)
        Pulse while idle: take ``len(plan.weight_image())`` bytes from ``wload`` into the weight and params RAMs.
    wload : In(stream.Signature(8))
    busy : Out(1)
    cycles, spikes, sops : Out(32)
        Counters of the last tile: cycles from the first PARAMS to the end of READOUT, spikes produced by all
        layers, synaptic operations (membrane updates).
    """

    def __init__(self, plan: Plan):
        self.plan = plan
        super().__init__({
            "start": In(1),
            "h": In(8),
            "w": In(8),
            "pixels": In(stream.Signature(8)),
            "out": Out(stream.Signature(8)),
            "start_wload": In(1),
            "wload": In(stream.Signature(8)),
            "busy": Out(1),
            "cycles": Out(32),
            "spikes": Out(32),
            "sops": Out(32),
        })

    def elaborate(self, platform):
        p = self.plan
        m = Module()
        yb, xb, L = p.ybits, p.xbits, p.lanes
        T, nl = p.timesteps, len(p.layers)

        m.submodules.pixmem = pixmem = SinglePortRAM(8, 1 << (yb + xb))
        m.submodules.engine = eng = Engine(p)
        m.submodules.encoder = enc = UWEncoder(tag_bits=yb + xb, n=8)
        bitmaps = []
        if nl > 1:
            for b in (0, 1):
                bm = SinglePortRAM(L, p.bitmap_depth)
                m.submodules[f"bitmap{b}"] = bm
                bitmaps.append(bm)
        # handles for the simulation's access counters (edgespike.fpga.tilesim), no hardware of their own
        self.engine, self.rams = eng, {"pixels": pixmem} | {f"bitmap{b}": bm for b, bm in enumerate(bitmaps)}

        h, w = Signal(9), Signal(9)
        py, px = Signal(9), Signal(9)  # pixel counters (LOAD, ENC, READOUT); scan position in SCAN
        sg = Signal(max(1, p.gbits + 1))  # scan: block of the input word
        cy, cx, cg = Signal(9), Signal(9), Signal(max(1, p.gbits + 1))  # scan: position of the word in `mask`
        mask = Signal(L)
        t = Signal(bits_for(T + 1))
        layer = Signal(bits_for(nl))
        group = Signal(max(1, p.gbits + 1))
        pix_addr = Cat(px[:xb], py[:yb])

        # --- per-layer geometry and block counts
        h_in, w_in, h_out, w_out = (Signal(9, name=n) for n in ("h_in", "w_in", "h_out", "w_out"))
        last_group, in_last_group = Signal.like(group), Signal.like(sg)
        with m.Switch(layer):
            for lp in p.layers:
                with m.Case(lp.index):
                    prev_groups = p.layers[lp.index - 1].groups if lp.index else 1
                    m.d.comb += [h_in.eq(h >> lp.level_in), w_in.eq(w >> lp.level_in),
                                 h_out.eq(h >> lp.level_out), w_out.eq(w >> lp.level_out),
                                 last_group.eq(lp.groups - 1), in_last_group.eq(prev_groups - 1)]
        m.d.comb += [
            eng.layer.eq(layer), eng.group.eq(group), eng.h_out.eq(h_out), eng.w_out.eq(w_out),
            eng.step.eq(t), eng.last_step.eq(t == T - 1),
        ]
        if p.encoder == "uwe":
            m.d.comb += [enc.emit_from.eq(t), enc.stop_at.eq(t)]
        else:
            m.d.comb += [enc.emit_from.eq(0), enc.stop_at.eq(7)]

        # --- bitmaps: layer l reads bitmap (l-1)%2 and writes bitmap l%2, address {t, y, x, g}
        def bitmap_addr(y, x, g):
            parts = ([g[:p.gbits]] if p.gbits else []) + [x[:p.wide_xbits], y[:p.wide_ybits], t[:p.tbits]]
            return Cat(*parts)

        odd = layer[0]
        if bitmaps:
            with m.If(eng.fire_valid & (layer != nl - 1)):
                for b, bm in enumerate(bitmaps):
                    with m.If(odd == b):
                        m.d.comb += [bm.addr.eq(bitmap_addr(eng.fire_y, eng.fire_x, group)), bm.we.eq(1),
                                     bm.wdata.eq(eng.fire_bits)]
            scan_word = Mux(odd, bitmaps[0].rdata, bitmaps[1].rdata)
        with m.If(eng.fire_valid):
            m.d.sync += self.spikes.eq(self.spikes + eng.fire_count)
        m.d.sync += self.sops.eq(self.sops + eng.sops)

        # --- encoder events straight into the engine (layer 0); the encoder waits while the engine is busy
        from_encoder = Signal()
        m.d.comb += enc.hold.eq(eng.busy)
        with m.If(from_encoder):
            m.d.comb += [
                eng.events.valid.eq(enc.events.valid),
                eng.events.payload.y.eq(enc.events.payload.tag[xb:]),
                eng.events.payload.x.eq(enc.events.payload.tag[:xb]),
                eng.events.payload.c.eq(0),
                eng.events.payload.sh.eq(7 - enc.events.payload.t if p.encoder == "direct" else 0),
                enc.events.ready.eq(eng.events.ready),
            ]

        def advance_pixel():
            with m.If(px == w - 1):
                m.d.sync += [px.eq(0), py.eq(py + 1)]
            with m.Else():
                m.d.sync += px.eq(px + 1)

        def begin_input():
            """Start step t's input: the encoder (layer 0) or the scan of the previous layer's bitmap."""
            m.d.sync += [px.eq(0), py.eq(0), sg.eq(0)]
            m.next = "SCAN_READ" if nl > 1 else "ENC_FETCH"
            if nl > 1:
                with m.If(layer == 0):
                    m.next = "ENC_FETCH"

        counted = Signal()
        m.d.comb += self.busy.eq(counted)
        with m.If(counted):
            m.d.sync += self.cycles.eq(self.cycles + 1)

        # weight loading: bytes little-endian into words, the weight RAM then the params RAM
        wbytes, pbytes = L, PARAM_BITS // 8
        shreg = Signal(max(L * 8, PARAM_BITS))
        nbyte = Signal(bits_for(max(wbytes, pbytes) + 1))
        waddr = Signal(bits_for(max(p.weight_depth, p.params_depth) + 1))
        in_params = Signal()

        with m.FSM():
            with m.State("IDLE"):
                m.d.sync += [waddr.eq(0), nbyte.eq(0), in_params.eq(0)]
                with m.If(self.start):
                    m.d.sync += [h.eq(self.h), w.eq(self.w), px.eq(0), py.eq(0),
                                 self.cycles.eq(0), self.spikes.eq(0), self.sops.eq(0)]
                    m.next = "LOAD"
                with m.Elif(self.start_wload):
                    m.next = "WLOAD"

            with m.State("WLOAD"):
                m.d.comb += [self.busy.eq(1), self.wload.ready.eq(1)]
                width = Mux(in_params, pbytes, wbytes)
                new = Signal.like(shreg)
                # little-endian: each byte enters at the top of the word being assembled
                m.d.comb += new.eq(Mux(in_params, Cat(shreg[8:PARAM_BITS], self.wload.payload),
                                       Cat(shreg[8:L * 8], self.wload.payload)))
                with m.If(self.wload.valid):
                    m.d.sync += [shreg.eq(new), nbyte.eq(nbyte + 1)]
                    with m.If(nbyte == width - 1):
                        m.d.comb += [eng.load_en.eq(1), eng.load_params.eq(in_params), eng.load_addr.eq(waddr),
                                     eng.load_data.eq(new)]
                        m.d.sync += [nbyte.eq(0), waddr.eq(waddr + 1)]
                        with m.If(~in_params & (waddr == p.weight_depth - 1)):
                            m.d.sync += [in_params.eq(1), waddr.eq(0)]
                        with m.If(in_params & (waddr == p.params_depth - 1)):
                            m.next = "IDLE"

            with m.State("LOAD"):
                m.d.comb += self.pixels.ready.eq(1)
                with m.If(self.pixels.valid):
                    m.d.comb += [pixmem.addr.eq(pix_addr), pixmem.we.eq(1), pixmem.wdata.eq(self.pixels.payload)]
                    advance_pixel()
                    with m.If((px == w - 1) & (py == h - 1)):
                        m.d.sync += [layer.eq(0), group.eq(0)]
                        m.next = "PARAM_START"

            # --- one block of one layer: params, init, then T steps of input + fire
            with m.State("PARAM_START"):
                m.d.comb += [counted.eq(1), eng.start_params.eq(1)]
                m.next = "PARAM_WAIT"

            with m.State("PARAM_WAIT"):
                m.d.comb += counted.eq(1)
                with m.If(~eng.busy):
                    m.next = "INIT_START"

            with m.State("INIT_START"):
                m.d.comb += [counted.eq(1), eng.start_init.eq(1)]
                m.d.sync += t.eq(0)
                m.next = "INIT_WAIT"

            with m.State("INIT_WAIT"):
                m.d.comb += counted.eq(1)
                with m.If(~eng.busy):
                    begin_input()

            # --- layer 0: pixels through the SAR encoder into the engine
            with m.State("ENC_FETCH"):
                m.d.comb += [counted.eq(1), from_encoder.eq(1)]
                with m.If(py == h):
                    m.next = "ENC_WAIT"
                with m.Else():
                    m.d.comb += [pixmem.addr.eq(pix_addr), pixmem.re.eq(1)]
                    m.next = "ENC_OFFER"

            with m.State("ENC_OFFER"):
                m.d.comb += [counted.eq(1), from_encoder.eq(1), enc.pixels.valid.eq(1),
                             enc.pixels.payload.value.eq(pixmem.rdata), enc.pixels.payload.tag.eq(pix_addr)]
                with m.If(enc.pixels.ready):
                    advance_pixel()
                    m.next = "ENC_FETCH"

            with m.State("ENC_WAIT"):
                m.d.comb += [counted.eq(1), from_encoder.eq(1)]
                with m.If(~enc.busy & ~eng.busy):
                    m.next = "FIRE_START"

            # --- layer l > 0: the previous layer's spikes at step t, word by word
            if bitmaps:
                with m.State("SCAN_READ"):
                    m.d.comb += counted.eq(1)
                    with m.If(py == h_in):
                        m.next = "FIRE_START"
                    with m.Else():
                        for b, bm in enumerate(bitmaps):
                            with m.If(odd != b):
                                m.d.comb += [bm.addr.eq(bitmap_addr(py, px, sg)), bm.re.eq(1)]
                        m.d.sync += [cy.eq(py), cx.eq(px), cg.eq(sg)]
                        with m.If(sg != in_last_group):
                            m.d.sync += sg.eq(sg + 1)
                        with m.Else():
                            m.d.sync += sg.eq(0)
                            with m.If(px == w_in - 1):
                                m.d.sync += [px.eq(0), py.eq(py + 1)]
                            with m.Else():
                                m.d.sync += px.eq(px + 1)
                        m.next = "SCAN_TAKE"

                with m.State("SCAN_TAKE"):
                    m.d.comb += counted.eq(1)
                    m.d.sync += mask.eq(scan_word)
                    m.next = "SCAN_EMIT"

                with m.State("SCAN_EMIT"):
                    m.d.comb += counted.eq(1)
                    sel = Signal(bits_for(L))
                    for lane in reversed(range(L)):
                        with m.If(mask[lane]):
                            m.d.comb += sel.eq(lane)
                    with m.If(mask == 0):
                        with m.If(~eng.busy):
                            m.next = "SCAN_READ"
                    with m.Else():
                        m.d.comb += [eng.events.valid.eq(1), eng.events.payload.y.eq(cy),
                                     eng.events.payload.x.eq(cx),
                                     eng.events.payload.c.eq(const_mul(cg, L) + sel if p.gbits else sel)]
                        with m.If(eng.events.ready):
                            m.d.sync += mask.eq(mask & (mask - 1))  # clear the lowest set bit

            with m.State("FIRE_START"):
                m.d.comb += [counted.eq(1), eng.start_fire.eq(1)]
                m.next = "FIRE_WAIT"

            with m.State("FIRE_WAIT"):
                m.d.comb += counted.eq(1)
                with m.If(~eng.busy):
                    with m.If(t != T - 1):
                        m.d.sync += t.eq(t + 1)
                        begin_input()
                    with m.Elif(group != last_group):
                        m.d.sync += group.eq(group + 1)
                        m.next = "PARAM_START"
                    with m.Elif(layer != nl - 1):
                        m.d.sync += [layer.eq(layer + 1), group.eq(0)]
                        m.next = "PARAM_START"
                    with m.Else():
                        m.d.sync += [px.eq(0), py.eq(0)]
                        m.next = "RO_FETCH"

            # --- decoder: R = sum multiplier * quantity, r = round_half_up(R >> shift), residual, clip
            with m.State("RO_FETCH"):
                m.d.comb += counted.eq(1)
                with m.If(py == h):
                    m.next = "IDLE"
                with m.Else():
                    m.d.comb += [pixmem.addr.eq(pix_addr), pixmem.re.eq(1),
                                 eng.ro_en.eq(1), eng.ro_y.eq(py), eng.ro_x.eq(px)]
                    m.next = "RO_EMIT"

            with m.State("RO_EMIT"):
                m.d.comb += [counted.eq(1), self.out.valid.eq(1)]
                with m.If(self.out.ready):
                    advance_pixel()
                    m.next = "RO_FETCH"

        m.d.comb += self.out.payload.eq(self._decode(m, eng.ro_data, px, pixmem.rdata))
        return m

    def _decode(self, m, word, x, pixel):
        """Output pixel from the last layer's word holding (y, x): shift-adds only."""
        p = self.plan
        last = p.layers[-1]
        if last.narrow:
            lanes = [word[i * p.lane_bits:(i + 1) * p.lane_bits] for i in range(p.lanes)]
            field = Array(lanes)[x[:p.lane_shift]]
        else:
            field = word[:p.lane_bits]
        total = Const(0, 1)
        for term in p.terms:
            if term.quantity == "membrane":
                q = field[:p.mbits].as_signed()
            elif term.quantity == "count":
                q = Cat(field[p.mbits:p.mbits + p.count_bits], Const(0, 1)).as_signed()
            else:
                start = p.mbits + p.count_bits
                q = Cat(field[start:start + p.uwd_bits], Const(0, 1)).as_signed()
            total = total + const_mul(q, term.multiplier)
        Rs = Signal(signed(p.readout_bits + 1), name="readout_R")
        m.d.comb += Rs.eq(total)
        r = (Rs + (1 << (p.shift - 1))) >> p.shift if p.shift else Rs
        y = Signal(signed(p.readout_bits + 3), name="readout_y")
        m.d.comb += y.eq(Cat(pixel, Const(0, 1)).as_signed() - r if p.residual else r)
        return Mux(y < 0, 0, Mux(y > 255, 255, y[:8]))
