"""The shared layer engine: every layer of the model, one block of ``lanes`` output channels at a time, adders only.

The sequencer selects a layer (``layer``) and a block (``group``); the engine reads that layer's constants (kernel,
stride or transposition, reset, leak, where its weights and parameters start) from small multiplexers, and its
weights, biases and thresholds from two run-time loadable RAMs. Per block:

* **params** pass: the ``lanes`` biases and thresholds of the block into registers (``lanes + 1`` cycles);
* **init** pass: every membrane word of the block gets ``v0`` leaked once plus the bias (one cycle per word);
* per step, **scatter**: one input event ``(y, x, c, sh)`` at a time, for each kernel tap ``(i, j)`` the target
  is ``o = (y + pad - i) / stride`` (Conv; skipped outside the tile) or ``o = 2*y - pad + i`` (ConvTranspose);
  there: read the membrane word, add the int8 weights (shifted left by the event's bit weight in the
  bit-serial first layer), write back: 2 cycles; a skipped tap costs 1. At stride 2 the engine visits only the
  taps of the event's parity (``i = y + pad mod 2``): the others never land on an output;
* per step, **fire** pass, per word: ``s = v >= theta``; soft ``v -= theta`` or hard ``v = 0``; unless last step,
  leak ``v -= v >> k`` and add the bias; the word's spikes leave on ``fire_bits`` (2 cycles per word).

An Integrator only adds its bias. The spike count and the UWD word (``+= s << (T-1-t)``) ride in each lane when
the decoder reads them. A *narrow* layer (the one-channel read-out layer when ``lanes > 1``) packs ``lanes``
positions of a row in a word: its scatter adds the weight in one lane only (the others add 0).

Since additions commute, "leak, add bias, then scatter the synaptic terms" equals the reference's
``v -= v >> k; v += I``. All memories are :class:`~edgespike.rtl.common.SinglePortRAM` (SPRAM-mappable).
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from edgespike.rtl.common import SinglePortRAM, bits_for, const_mul, event_layout
from edgespike.rtl.params import PARAM_BITS, Plan

MODE_S1, MODE_S2, MODE_T = 0, 1, 2  # Conv stride 1, Conv stride 2, ConvTranspose (stride 2)


class Engine(wiring.Component):
    """One event-driven Conv/ConvTranspose + Neuron/Integrator engine shared by every layer of a plan.

    Parameters
    ----------
    plan : Plan
        From :func:`edgespike.fpga.params.plan`.

    Attributes
    ----------
    events : In(stream)
        Input spike events at the layer's input resolution. Accepted only when idle; each then keeps the engine
        busy ``sum over visited taps (2 if the tap lands in the tile else 1)`` cycles.
    layer, group : In
        The layer and the block of ``lanes`` output channels being run.
    h_out, w_out : In
        The tile's size at the layer's output resolution.
    step, last_step : In
        Timestep of the fire pass (for the UWD word) and whether it is the last (no next-step preparation).
    start_params, start_init, start_fire : In(1)
        Pulses (while idle) starting the params, init or fire pass of the selected layer and block.
    fire_valid, fire_y, fire_x, fire_bits, fire_count : Out
        During a fire pass: the word just fired (position, or word index ``x >> log2(lanes)`` in a narrow layer),
        its spikes (lanes inside the tile only) and how many there are.
    ro_en, ro_y, ro_x, ro_data : read-out port
        While idle, ``ro_en`` reads the membrane word holding ``(ro_y, ro_x)`` of the selected layer (block 0)
        into ``ro_data`` on the next cycle.
    load_en, load_params, load_addr, load_data : In
        While idle, write one word of the weight RAM (or of the params RAM when ``load_params``).
    busy : Out(1)
    sops : Out
        Synaptic operations of this cycle (``lanes`` per scatter write, 1 in a narrow layer).
    """

    def __init__(self, plan: Plan):
        p = self.plan = plan
        ev = stream.Signature(event_layout(p.ybits, p.xbits, p.cbits))
        self.addr_bits = bits_for(p.mem_depth)
        super().__init__({
            "events": In(ev),
            "layer": In(bits_for(len(p.layers))),
            "group": In(max(1, p.gbits)),
            "h_out": In(p.ybits + 1),
            "w_out": In(p.xbits + 1),
            "step": In(p.tbits),
            "last_step": In(1),
            "start_params": In(1),
            "start_init": In(1),
            "start_fire": In(1),
            "fire_valid": Out(1),
            "fire_y": Out(p.ybits + 1),
            "fire_x": Out(p.xbits + 1),
            "fire_bits": Out(p.lanes),
            "fire_count": Out(bits_for(p.lanes + 1)),
            "ro_en": In(1),
            "ro_y": In(p.ybits),
            "ro_x": In(p.xbits),
            "ro_data": Out(p.word_bits),
            "load_en": In(1),
            "load_params": In(1),
            "load_addr": In(bits_for(max(p.weight_depth, p.params_depth))),
            "load_data": In(max(p.lanes * 8, PARAM_BITS)),
            "busy": Out(1),
            "sops": Out(bits_for(p.lanes + 1)),
        })

    def _config(self, m):
        """Per-layer constants, selected by ``layer``."""
        p = self.plan
        kmax = max(lp.k for lp in p.layers)
        wb = bits_for((p.weight_depth + 1) * p.lanes)
        cfg = {
            "k": Signal(bits_for(kmax + 1), name="cfg_k"),
            "s2": Signal(name="cfg_s2"),
            "row_step": Signal(bits_for(kmax * max(lp.groups for lp in p.layers) + 1), name="cfg_row_step"),
            "pad": Signal(bits_for(kmax + 1), name="cfg_pad"),
            "mode": Signal(2, name="cfg_mode"),
            "leak": Signal(6, name="cfg_leak"),
            "soft": Signal(name="cfg_soft"),
            "half": Signal(name="cfg_half"),
            "integrator": Signal(name="cfg_integrator"),
            "bit_serial": Signal(name="cfg_bit_serial"),
            "narrow": Signal(name="cfg_narrow"),
            "tap_step": Signal(bits_for(max(lp.groups for lp in p.layers) + 1), name="cfg_tap_step"),
            "pstart": Signal(bits_for(p.params_depth + 1), name="cfg_pstart"),
            "wstart": Signal(wb, name="cfg_wstart"),
        }
        c = self.events.payload.c
        with m.Switch(self.layer):
            for lp in p.layers:
                with m.Case(lp.index):
                    mode = MODE_T if lp.op == "convT" else (MODE_S2 if lp.stride == 2 else MODE_S1)
                    m.d.comb += [
                        cfg["k"].eq(lp.k), cfg["s2"].eq(mode == MODE_S2), cfg["pad"].eq(lp.pad),
                        cfg["row_step"].eq(lp.k * (1 if lp.narrow else lp.groups)),
                        cfg["mode"].eq(mode), cfg["leak"].eq(lp.leak), cfg["soft"].eq(lp.reset == "soft"),
                        cfg["half"].eq(lp.v_init == "half"), cfg["integrator"].eq(lp.kind == "integrator"),
                        cfg["bit_serial"].eq(lp.bit_serial), cfg["narrow"].eq(lp.narrow),
                        cfg["tap_step"].eq(1 if lp.narrow else lp.groups),
                    ]
                    # where this event's weights start: word (wide) or byte (narrow) address, c*const by shift-adds
                    if lp.narrow:
                        m.d.comb += [cfg["wstart"].eq(lp.wbase * p.lanes + const_mul(c, lp.taps)),
                                     cfg["pstart"].eq(lp.pbase)]
                    else:
                        m.d.comb += [cfg["wstart"].eq(lp.wbase + self.group + const_mul(c, lp.taps * lp.groups)),
                                     cfg["pstart"].eq(lp.pbase + const_mul(self.group, p.lanes))]
        return cfg

    def elaborate(self, platform):
        p = self.plan
        m = Module()
        L, mb, lb = p.lanes, p.mbits, p.lane_shift
        m.submodules.mem = mem = SinglePortRAM(p.word_bits, p.mem_depth, init=[0] * p.mem_depth)
        m.submodules.wmem = wmem = SinglePortRAM(L * 8, p.weight_depth, init=p.weight_words())
        m.submodules.pmem = pmem = SinglePortRAM(PARAM_BITS, p.params_depth, init=p.param_words())
        # handles for the simulation's access counters (edgespike.fpga.tilesim), no hardware of their own
        self.rams = {"membranes": mem, "weights": wmem, "params": pmem}
        cfg = self._config(m)
        narrow = cfg["narrow"]

        def addr(x, y, word_index=False):
            """Membrane word of position (y, x): ``{y, x}`` (wide) or ``{y, x >> log2(lanes)}`` (narrow; with
            ``word_index`` x already is ``x >> log2(lanes)``, as in the init and fire passes)."""
            wide_a = Cat(x[:p.wide_xbits], y[:p.wide_ybits])
            if not any(lp.narrow for lp in p.layers):
                return wide_a
            xw = x if word_index else x[lb:]
            narrow_a = Cat(xw[:p.narrow_xbits], y[:p.ybits]) if p.narrow_xbits else y[:p.ybits]
            return Mux(narrow, narrow_a, wide_a)

        # --- scatter state
        ey, ex = Signal(p.ybits), Signal(p.xbits)
        esh = Signal(3)
        ti, tj = Signal(bits_for(max(lp.k for lp in p.layers))), Signal(bits_for(max(lp.k for lp in p.layers)))
        j0 = Signal()  # first column visited in each row: the event's parity at stride 2, else 0
        wrow = Signal(cfg["wstart"].shape())  # weight pointer at (ti, j0)
        wptr = Signal(cfg["wstart"].shape())
        target = Signal(self.addr_bits)
        tlane = Signal(max(1, lb))  # narrow: lane of the target position
        wlane = Signal(max(1, lb))  # narrow: lane of the weight byte

        # target coordinate: Conv y + pad - i (then halved at stride 2), ConvTranspose 2*y - pad + i
        span = p.ybits + bits_for(max(lp.k for lp in p.layers) + 1) + 3
        ny, nx = Signal(signed(span)), Signal(signed(span))
        transposed = cfg["mode"] == MODE_T
        halved = cfg["s2"]
        m.d.comb += [
            ny.eq(Mux(transposed, (ey << 1) + ti - cfg["pad"], ey + cfg["pad"] - ti)),
            nx.eq(Mux(transposed, (ex << 1) + tj - cfg["pad"], ex + cfg["pad"] - tj)),
        ]
        oy, ox = Mux(halved, ny >> 1, ny), Mux(halved, nx >> 1, nx)
        in_tile = ((ny >= 0) & ~(halved & ny[0]) & (oy < self.h_out)
                   & (nx >= 0) & ~(halved & nx[0]) & (ox < self.w_out))
        oyu, oxu = oy.as_unsigned()[:p.ybits + 1], ox.as_unsigned()[:p.xbits + 1]

        # --- init / fire / params state
        py, px = Signal(p.ybits + 1), Signal(p.xbits + 1)
        w_words = Signal(p.xbits + 1)
        m.d.comb += w_words.eq(Mux(narrow, (self.w_out + (L - 1)) >> lb, self.w_out) if lb else self.w_out)
        last_pos = (py == self.h_out - 1) & (px == w_words - 1)
        pos_addr = addr(px, py, word_index=True)
        j = Signal(bits_for(L + 1))
        paddr = Signal(cfg["pstart"].shape())
        bias = [Signal(signed(32), name=f"bias{lane}") for lane in range(L)]
        theta = [Signal(signed(32), name=f"theta{lane}") for lane in range(L)]

        def next_pos(again):
            with m.If(px != w_words - 1):
                m.d.sync += px.eq(px + 1)
            with m.Else():
                m.d.sync += [px.eq(0), py.eq(py + 1)]
            m.next = again
            with m.If(last_pos):
                m.next = "IDLE"

        # taps in raster order, every other one at stride 2; the weight pointer follows with shift-adds only
        step = Mux(cfg["s2"], 2, 1)
        next_j, next_i = tj + step, ti + step
        col_w = Mux(cfg["s2"], cfg["tap_step"] << 1, cfg["tap_step"])
        row_w = Mux(cfg["s2"], cfg["row_step"] << 1, cfg["row_step"])

        def next_tap():
            with m.If(next_j < cfg["k"]):
                m.d.sync += [tj.eq(next_j), wptr.eq(wptr + col_w)]
                m.next = "SCAT_A"
            with m.Elif(next_i < cfg["k"]):
                m.d.sync += [ti.eq(next_i), tj.eq(j0), wrow.eq(wrow + row_w), wptr.eq(wrow + row_w)]
                m.next = "SCAT_A"
            with m.Else():
                m.next = "IDLE"

        # --- datapaths, one per lane
        def lane_field(word, lane, offset, bits):
            start = lane * p.lane_bits + offset
            return word[start:start + bits]

        weights = [wmem.rdata[lane * 8:(lane + 1) * 8].as_signed() for lane in range(L)]
        narrow_w = Array(weights)[wlane] if L > 1 else weights[0]
        scat_lanes, fire_lanes, init_lanes, spikes = [], [], [], []
        step_weight = Const(1 << (p.timesteps - 1), p.timesteps) >> self.step if p.uwd_bits else None
        for lane in range(L):
            v = lane_field(mem.rdata, lane, 0, mb).as_signed()
            rest_bits = p.count_bits + p.uwd_bits
            rest = lane_field(mem.rdata, lane, mb, rest_bits) if rest_bits else None
            w = Mux(narrow, Mux(tlane == lane, narrow_w, 0), weights[lane]) if lb else weights[lane]
            add = Mux(cfg["bit_serial"], w << esh, w) if p.layers[0].bit_serial else w
            new_v = Signal(signed(mb), name=f"scat_v{lane}")
            m.d.comb += new_v.eq(v + add)
            scat_lanes.append(Cat(new_v, rest) if rest is not None else new_v)

            s = Signal(name=f"s{lane}")
            m.d.comb += s.eq(~cfg["integrator"] & (v >= theta[lane]))
            vr = Signal(signed(mb), name=f"reset_v{lane}")
            m.d.comb += vr.eq(Mux(s, Mux(cfg["soft"], v - theta[lane], 0), v))
            leaked = Signal(signed(mb), name=f"leak_v{lane}")
            m.d.comb += leaked.eq(Mux(cfg["leak"] == 0, vr, vr - (vr >> cfg["leak"])))
            fired_v = Signal(signed(mb), name=f"fire_v{lane}")
            m.d.comb += fired_v.eq(Mux(self.last_step, vr, leaked + bias[lane]))
            parts = [fired_v]
            if p.count_bits:
                cnt = lane_field(mem.rdata, lane, mb, p.count_bits)
                parts.append((cnt + s)[:p.count_bits])
            if p.uwd_bits:
                uwd = lane_field(mem.rdata, lane, mb + p.count_bits, p.uwd_bits)
                parts.append(uwd | Mux(s, step_weight, 0))
            fire_lanes.append(Cat(*parts))
            valid = ((Cat(Const(lane, lb), px) < self.w_out) | ~narrow) if lb else Const(1, 1)
            spikes.append(s & valid)

            v0 = Signal(signed(33), name=f"v0_{lane}")
            m.d.comb += v0.eq(Mux(cfg["half"] & ~cfg["integrator"], theta[lane] >> 1, 0))
            v0l = Mux(cfg["leak"] == 0, v0, v0 - (v0 >> cfg["leak"]))
            init_v = Signal(signed(mb), name=f"init_v{lane}")
            m.d.comb += init_v.eq(v0l + bias[lane])
            init_lanes.append(Cat(init_v, Const(0, rest_bits)) if rest_bits else init_v)

        fired = Cat(*spikes)
        m.d.comb += [
            self.fire_y.eq(py),
            self.fire_x.eq(px),
            self.fire_bits.eq(fired),
            self.fire_count.eq(sum(spikes)),
            self.ro_data.eq(mem.rdata),
        ]

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.events.ready.eq(1)
                with m.If(self.ro_en):
                    m.d.comb += [mem.addr.eq(addr(self.ro_x, self.ro_y)), mem.re.eq(1)]
                with m.If(self.load_en):
                    ram = Mux(self.load_params, 1, 0)
                    m.d.comb += [wmem.addr.eq(self.load_addr), wmem.wdata.eq(self.load_data),
                                 pmem.addr.eq(self.load_addr), pmem.wdata.eq(self.load_data),
                                 wmem.we.eq(~ram), pmem.we.eq(ram)]
                m.d.sync += [px.eq(0), py.eq(0), j.eq(0), paddr.eq(cfg["pstart"])]
                with m.If(self.events.valid):
                    ev = self.events.payload
                    pi = cfg["s2"] & (ev.y[0] ^ cfg["pad"][0])  # parity of y + pad
                    pj = cfg["s2"] & (ev.x[0] ^ cfg["pad"][0])
                    first = cfg["wstart"] + Mux(pi, cfg["row_step"], 0) + Mux(pj, cfg["tap_step"], 0)
                    m.d.sync += [ey.eq(ev.y), ex.eq(ev.x), esh.eq(ev.sh), ti.eq(pi), tj.eq(pj), j0.eq(pj),
                                 wptr.eq(first), wrow.eq(first)]
                    m.next = "SCAT_A"
                with m.Elif(self.start_params):
                    m.next = "PARAMS"
                with m.Elif(self.start_init):
                    m.next = "INIT"
                with m.Elif(self.start_fire):
                    m.next = "FIRE_A"

            with m.State("PARAMS"):
                # cycle j reads the parameters of lane j and latches those of lane j - 1
                m.d.comb += [self.busy.eq(1), pmem.addr.eq(paddr), pmem.re.eq(j < L)]
                m.d.sync += [j.eq(j + 1), paddr.eq(paddr + ~narrow)]
                with m.Switch(j):
                    for lane in range(L):
                        with m.Case(lane + 1):
                            m.d.sync += [bias[lane].eq(pmem.rdata[:32]), theta[lane].eq(pmem.rdata[32:64])]
                with m.If(j == L):
                    m.next = "IDLE"

            with m.State("SCAT_A"):
                m.d.comb += self.busy.eq(1)
                with m.If(in_tile):
                    m.d.comb += [mem.addr.eq(addr(oxu, oyu)), mem.re.eq(1), wmem.re.eq(1),
                                 wmem.addr.eq(Mux(narrow, wptr >> lb, wptr) if lb else wptr)]
                    m.d.sync += [target.eq(addr(oxu, oyu)), tlane.eq(oxu[:max(1, lb)]),
                                 wlane.eq(wptr[:max(1, lb)])]
                    m.next = "SCAT_B"
                with m.Else():
                    next_tap()

            with m.State("SCAT_B"):
                m.d.comb += [self.busy.eq(1), self.sops.eq(Mux(narrow, 1, L)),
                             mem.addr.eq(target), mem.we.eq(1), mem.wdata.eq(Cat(*scat_lanes))]
                next_tap()

            with m.State("INIT"):
                m.d.comb += [self.busy.eq(1), mem.addr.eq(pos_addr), mem.we.eq(1), mem.wdata.eq(Cat(*init_lanes))]
                next_pos("INIT")

            with m.State("FIRE_A"):
                m.d.comb += [self.busy.eq(1), mem.addr.eq(pos_addr), mem.re.eq(1)]
                m.next = "FIRE_B"

            with m.State("FIRE_B"):
                m.d.comb += [self.busy.eq(1), self.fire_valid.eq(1),
                             mem.addr.eq(pos_addr), mem.we.eq(1), mem.wdata.eq(Cat(*fire_lanes))]
                next_pos("FIRE_A")
        return m


__all__ = ["Engine"]
