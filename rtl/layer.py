"""The layer engine: one Conv and the Neuron (or Integrator) it feeds, event-driven and adders-only.

Per tile the engine is started once (``start_init``); then, for each timestep, it takes the step's input spike
events and, when the sequencer says the step's input is complete, runs one fire pass (``start_fire``).

Scatter (one input event ``(y, x, c)``): for each kernel tap ``(i, j)`` the target position is
``o = (y + k//2 - i) / stride`` (skipped when outside the tile or, at stride 2, not an integer), and for each
word of ``lanes`` output channels there: read the membrane word, add the int8 weights ``w[o_c, c, i, j]``
(shifted left by the event's bit weight in the bit-serial first layer), write back. Two cycles per word (one RAM
port), one cycle per skipped tap. This is the reference's ``conv2d`` turned inside out: the same sum, the zero
padding being the taps that are skipped.

Fire pass (per word of each position): ``s = v >= theta``; soft reset ``v -= theta`` or hard ``v = 0``; then,
unless this was the last step, prepare the next step: leak ``v -= v >> k`` and add the bias. The init pass wrote
``v0`` leaked once plus the bias, so the membrane a scatter adds to is always "leak, then bias" of the
reference's ``v -= v >> k; v += I``. Spikes leave as events ``(y, x, c)`` one per cycle. An Integrator only adds
its bias. The spike count and the UWD word (``+= s << (T-1-t)``) ride in the same word when the decoder reads them.

All memories are :class:`~edgespike.rtl.common.SinglePortRAM` (SPRAM-mappable); weights are a ROM.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from edgespike.rtl.common import SinglePortRAM, bits_for, const_mul, event_layout
from edgespike.rtl.params import LayerParams


class LayerEngine(wiring.Component):
    """Event-driven Conv + Neuron/Integrator engine with its own membrane RAM and weight ROM.

    Parameters
    ----------
    lp : LayerParams
        The layer, from :func:`edgespike.rtl.params.plan`.
    ybits, xbits, cbits : int
        Field widths of the design-wide event record (:func:`~edgespike.rtl.common.event_layout`).

    Attributes
    ----------
    events : In(stream)
        Input spike events. Accepted only when idle; each keeps the engine busy ``sum over taps (2 * groups if
        the tap lands in the tile else 1)`` cycles.
    spikes : Out(stream)
        Output spike events of the fire pass.
    h_out, w_out : In
        This tile's output size at the layer's resolution.
    start_init, start_fire : In(1)
        Pulses (while idle) starting the init pass (one cycle per word) or the fire pass (two cycles per word
        plus one per spike).
    step, last_step : In
        Timestep of the fire pass (for the UWD word) and whether it is the last one (no next-step preparation).
    ro_en, ro_y, ro_x, ro_g, ro_data : read-out port
        While idle, ``ro_en`` reads the word of group ``ro_g`` at ``(ro_y, ro_x)`` into ``ro_data`` on the next
        cycle (the decoder reads group 0 of a one-channel layer; tests read every membrane).
    busy : Out(1)
    sop : Out(1)
        High in each cycle that writes a scatter result: ``lanes`` synaptic operations.
    """

    def __init__(self, lp: LayerParams, ybits: int, xbits: int, cbits: int):
        self.lp = lp
        self.ybits, self.xbits, self.cbits = ybits, xbits, cbits
        ev = stream.Signature(event_layout(ybits, xbits, cbits))
        super().__init__({
            "events": In(ev),
            "spikes": Out(ev),
            "h_out": In(lp.ybits + 1),
            "w_out": In(lp.xbits + 1),
            "start_init": In(1),
            "start_fire": In(1),
            "step": In(bits_for(lp.timesteps)),
            "last_step": In(1),
            "ro_en": In(1),
            "ro_y": In(lp.ybits),
            "ro_x": In(lp.xbits),
            "ro_g": In(bits_for(lp.groups)),
            "ro_data": Out(lp.word_bits),
            "busy": Out(1),
            "sop": Out(1),
        })

    def _addr(self, g, x, y):
        lp = self.lp
        parts = ([g[:lp.gbits]] if lp.gbits else []) + [x[:lp.xbits], y[:lp.ybits]]
        return Cat(*parts)

    def elaborate(self, platform):
        lp = self.lp
        m = Module()
        m.submodules.mem = mem = SinglePortRAM(lp.word_bits, lp.mem_depth, init=[0] * lp.mem_depth)
        m.submodules.wrom = wrom = SinglePortRAM(lp.lanes * 8, lp.weight_depth, init=lp.weight_words())
        k, taps, G, L, mb = lp.k, lp.taps, lp.groups, lp.lanes, lp.mbits
        pad = k // 2

        # --- scatter state
        ey, ex = Signal(self.ybits), Signal(self.xbits)
        esh = Signal(3)
        base = Signal(bits_for(lp.cin * taps + 1))
        ti, tj = Signal(bits_for(k)), Signal(bits_for(k))
        tap = Signal(bits_for(taps))
        g = Signal(bits_for(G))
        target = Signal(lp.mem_depth.bit_length())

        # y + pad - i for any kernel: coordinate bits, the pad's bits, a carry and the sign
        ny = Signal(signed(self.ybits + bits_for(k) + 2))
        nx = Signal(signed(self.xbits + bits_for(k) + 2))
        m.d.comb += [ny.eq(ey + pad - ti), nx.eq(ex + pad - tj)]
        if lp.stride == 1:
            oy, ox = ny, nx
            in_tile = (ny >= 0) & (ny < self.h_out) & (nx >= 0) & (nx < self.w_out)
        else:
            oy, ox = ny >> 1, nx >> 1
            in_tile = ((ny >= 0) & ~ny[0] & (oy < self.h_out) & (nx >= 0) & ~nx[0] & (ox < self.w_out))
        scatter_addr = self._addr(g, ox.as_unsigned(), oy.as_unsigned())
        weight_addr = Cat(*(([g[:lp.gbits]] if lp.gbits else []) + [base + tap]))

        # --- init / fire state: position counters
        py, px = Signal(lp.ybits + 1), Signal(lp.xbits + 1)
        pos_addr = self._addr(g, px, py)
        last_pos = (py == self.h_out - 1) & (px == self.w_out - 1) & (g == G - 1)
        mask = Signal(L)

        def next_pos(again):
            with m.If(g != G - 1):
                m.d.sync += g.eq(g + 1)
            with m.Else():
                m.d.sync += g.eq(0)
                with m.If(px != self.w_out - 1):
                    m.d.sync += px.eq(px + 1)
                with m.Else():
                    m.d.sync += [px.eq(0), py.eq(py + 1)]
            m.next = again
            with m.If(last_pos):
                m.next = "IDLE"

        def next_tap():
            with m.If(tap == taps - 1):
                m.next = "IDLE"
            with m.Else():
                m.d.sync += tap.eq(tap + 1)
                with m.If(tj == k - 1):
                    m.d.sync += [tj.eq(0), ti.eq(ti + 1)]
                with m.Else():
                    m.d.sync += tj.eq(tj + 1)
                m.next = "SCAT_A"

        # --- datapaths, one per lane
        def lane_field(word, lane, offset, bits):
            start = lane * lp.lane_bits + offset
            return word[start:start + bits]

        scat_lanes, fire_lanes, spikes = [], [], []
        for lane in range(L):
            v = lane_field(mem.rdata, lane, 0, mb).as_signed()
            rest = lane_field(mem.rdata, lane, mb, lp.count_bits + lp.uwd_bits) if lp.count_bits + lp.uwd_bits \
                else None
            w = wrom.rdata[lane * 8:(lane + 1) * 8].as_signed()
            add = (w << esh) if lp.bit_serial else w
            new_v = Signal(signed(mb), name=f"scat_v{lane}")
            m.d.comb += new_v.eq(v + add)
            scat_lanes.append(Cat(new_v, rest) if rest is not None else new_v)

            chans = [gg * L + lane for gg in range(G)]
            bias = Array([Const(lp.bias[c], signed(33)) for c in chans])[g] if G > 1 else Const(lp.bias[chans[0]],
                                                                                                signed(33))
            fired_v = Signal(signed(mb), name=f"fire_v{lane}")
            if lp.kind == "integrator":
                s = Const(0, 1)
                m.d.comb += fired_v.eq(Mux(self.last_step, v, v + bias))
            else:
                theta = Array([Const(lp.theta[c], signed(33)) for c in chans])[g] if G > 1 else \
                    Const(lp.theta[chans[0]], signed(33))
                s = Signal(name=f"s{lane}")
                m.d.comb += s.eq(v >= theta)
                reset_v = Mux(s, v - theta, v) if lp.reset == "soft" else Mux(s, 0, v)
                vr = Signal(signed(mb), name=f"reset_v{lane}")
                m.d.comb += vr.eq(reset_v)
                leaked = vr - (vr >> lp.leak) if lp.leak else vr
                m.d.comb += fired_v.eq(Mux(self.last_step, vr, leaked + bias))
            parts = [fired_v]
            if lp.count_bits:
                cnt = lane_field(mem.rdata, lane, mb, lp.count_bits)
                parts.append((cnt + s)[:lp.count_bits])
            if lp.uwd_bits:
                uwd = lane_field(mem.rdata, lane, mb + lp.count_bits, lp.uwd_bits)
                weight = Const(1 << (lp.timesteps - 1), lp.timesteps) >> self.step
                parts.append(uwd | Mux(s, weight, 0))
            fire_lanes.append(Cat(*parts))
            spikes.append(s)

        init_word = Array([Const(lp.init_word(gg), lp.word_bits) for gg in range(G)])[g] if G > 1 else \
            Const(lp.init_word(0), lp.word_bits)

        # lowest set bit of the pending spike mask
        sel = Signal(bits_for(L))
        for lane in reversed(range(L)):
            with m.If(mask[lane]):
                m.d.comb += sel.eq(lane)
        m.d.comb += [
            self.spikes.payload.y.eq(py),
            self.spikes.payload.x.eq(px),
            self.spikes.payload.c.eq(const_mul(g, L) + sel if G > 1 else sel),
            self.spikes.payload.sh.eq(0),
            self.ro_data.eq(mem.rdata),
        ]

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.events.ready.eq(1)
                with m.If(self.ro_en):
                    m.d.comb += [mem.addr.eq(self._addr(self.ro_g, self.ro_x, self.ro_y)), mem.re.eq(1)]
                m.d.sync += [g.eq(0), px.eq(0), py.eq(0), ti.eq(0), tj.eq(0), tap.eq(0)]
                with m.If(self.events.valid):
                    ev = self.events.payload
                    m.d.sync += [ey.eq(ev.y), ex.eq(ev.x), esh.eq(ev.sh),
                                 base.eq(const_mul(ev.c, taps) if lp.cin > 1 else 0)]
                    m.next = "SCAT_A"
                with m.Elif(self.start_init):
                    m.next = "INIT"
                with m.Elif(self.start_fire):
                    m.next = "FIRE_A"

            with m.State("SCAT_A"):
                m.d.comb += self.busy.eq(1)
                with m.If(in_tile):
                    m.d.comb += [mem.addr.eq(scatter_addr), mem.re.eq(1), wrom.addr.eq(weight_addr), wrom.re.eq(1)]
                    m.d.sync += target.eq(scatter_addr)
                    m.next = "SCAT_B"
                with m.Else():
                    next_tap()

            with m.State("SCAT_B"):
                m.d.comb += [self.busy.eq(1), self.sop.eq(1),
                             mem.addr.eq(target), mem.we.eq(1), mem.wdata.eq(Cat(*scat_lanes))]
                with m.If(g != G - 1):
                    m.d.sync += g.eq(g + 1)
                    m.next = "SCAT_A"
                with m.Else():
                    m.d.sync += g.eq(0)
                    next_tap()

            with m.State("INIT"):
                m.d.comb += [self.busy.eq(1), mem.addr.eq(pos_addr), mem.we.eq(1), mem.wdata.eq(init_word)]
                next_pos("INIT")

            with m.State("FIRE_A"):
                m.d.comb += [self.busy.eq(1), mem.addr.eq(pos_addr), mem.re.eq(1)]
                m.next = "FIRE_B"

            with m.State("FIRE_B"):
                fired = Cat(*spikes)
                m.d.comb += [self.busy.eq(1), mem.addr.eq(pos_addr), mem.we.eq(1), mem.wdata.eq(Cat(*fire_lanes))]
                m.d.sync += mask.eq(fired)
                with m.If(fired.any()):
                    m.next = "EMIT"
                with m.Else():
                    next_pos("FIRE_A")

            with m.State("EMIT"):
                m.d.comb += [self.busy.eq(1), self.spikes.valid.eq(1)]
                with m.If(self.spikes.ready):
                    rest = mask & (mask - 1)  # clear the lowest set bit
                    m.d.sync += mask.eq(rest)
                    with m.If(rest == 0):
                        next_pos("FIRE_A")
        return m
