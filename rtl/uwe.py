"""UWE, VTSNN's undistorted weighted encoder, as the successive-approximation ADC that it is.

A SAR ADC holds the sample, keeps a register of the bits decided so far, and at each step tries the next bit
(MSB first): the trial value is the decided bits with the trial bit set, a DAC turns it into a level, and a
comparator says whether the sample reaches it. If it does, the bit is 1 (a spike) and stays in the register.
After ``n`` steps the register holds the sample and the spikes are its binary digits, MSB first: step ``t``
spikes iff bit ``n-1-t`` of the sample is set, which is exactly ``reference.encode``'s plane
``(x >> (7 - t)) & 1`` for ``n = 8``.

The digital "DAC" is the identity (the trial register already is the level), so one step costs one comparator
and one OR: no adder, no multiplier.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from edgespike.rtl.common import bits_for


class UWEncoder(wiring.Component):
    """Pixel stream in, spike-event stream out: one SAR decision per cycle, MSB first.

    Parameters
    ----------
    tag_bits : int
        Width of the tag that travels with a pixel to its spike events (e.g. its address in a tile).
    n : int
        Bits per sample (8 for uint8 pixels): the number of SAR steps and of spike planes.

    Attributes
    ----------
    pixels : In(stream.Signature({value, tag}))
        Samples to convert. Accepted only when the converter is idle.
    events : Out(stream.Signature({tag, t}))
        One event per spike: the sample's tag and the step ``t`` (0 = MSB plane).
    emit_from, stop_at : In
        The converter runs steps ``0 .. stop_at`` and emits the spikes of steps ``emit_from .. stop_at``.
        All planes: ``0, n-1``. Plane ``t`` alone (UWE coding at timestep ``t``): ``t, t``. A SAR must still
        decide the bits above ``t`` first: that is what makes it a converter rather than a bit picker.
    hold : In(1)
        While high the converter neither takes a pixel nor decides a bit (the consumer of its events is busy).
    busy : Out(1)
        High while converting; a pixel accepted in cycle ``c`` keeps it busy for ``stop_at + 1`` cycles after
        (plus every cycle held).
    """

    def __init__(self, tag_bits: int, n: int = 8):
        self.n = n
        self.tag_bits = tag_bits
        tbits = bits_for(n)
        super().__init__({
            "pixels": In(stream.Signature(data.StructLayout({"value": n, "tag": tag_bits}))),
            "events": Out(stream.Signature(data.StructLayout({"tag": tag_bits, "t": tbits}))),
            "emit_from": In(tbits),
            "stop_at": In(tbits, init=n - 1),
            "hold": In(1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        n = self.n
        sample = Signal(n)  # the "sample and hold"
        decided = Signal(n)  # the SAR register
        bit = Signal(n)  # one-hot: the bit under trial
        t = Signal(bits_for(n))
        tag = Signal(self.tag_bits)

        trial = decided | bit  # DAC input
        spike = sample >= trial  # comparator
        emit = spike & (t >= self.emit_from)

        m.d.comb += [
            self.events.payload.tag.eq(tag),
            self.events.payload.t.eq(t),
        ]
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.pixels.ready.eq(~self.hold)
                with m.If(self.pixels.valid & ~self.hold):
                    m.d.sync += [
                        sample.eq(self.pixels.payload.value),
                        tag.eq(self.pixels.payload.tag),
                        decided.eq(0),
                        bit.eq(1 << (n - 1)),
                        t.eq(0),
                    ]
                    m.next = "CONVERT"
            with m.State("CONVERT"):
                m.d.comb += [self.busy.eq(1), self.events.valid.eq(emit & ~self.hold)]
                with m.If(~self.hold & (~emit | self.events.ready)):  # a spike waits until it is taken
                    with m.If(spike):
                        m.d.sync += decided.eq(trial)
                    m.d.sync += [bit.eq(bit >> 1), t.eq(t + 1)]
                    with m.If(t == self.stop_at):
                        m.next = "IDLE"
        return m


def pick(values: list, sel):
    """``values[sel]`` as a tree of 2-to-1 multiplexers on ``sel``'s bits (a power-of-two list)."""
    level = 0
    while len(values) > 1:
        values = [Mux(sel[level], b, a) for a, b in zip(values[::2], values[1::2], strict=True)]
        level += 1
    return values[0]


class SARNeuron(wiring.Component):
    """The UWE as a layer's neuron: successive-approximation converters of ``lanes`` membranes into T-bit codes,
    each converter shared by ``share`` lanes.

    SEMANTICS 5.5, step 3, on the residue ``r = v + bias``: for ``t = 0 .. T-1``, ``s[t] = r >= theta *
    2**(T-1-t)``, and ``r -= theta * 2**(T-1-t)`` when it spikes. This is :class:`UWEncoder` with a DAC of gain
    ``theta``: the level under trial is ``theta << (T-1-t)``, a register shifted right once per step (exact: its
    low ``T-1`` bits start at 0), one comparator and one subtractor (one carry chain: yosys shares it), no
    multiplier. The bits are those of ``clip(floor((v + bias) / theta), 0, 2**T - 1)`` MSB first, also for
    negative or saturating sums.

    A converter (residue and level registers, the carry chain) was about 60 of a lane's 145 ECP5 cells while it
    works ``T + 1`` cycles of a block's hundreds, so ``share`` lanes take turns on one: it loads a lane's membrane
    and threshold through a ``share``-to-1 multiplexer, makes its ``T`` steps (loading the next lane in the last
    one, whose residue is not needed) and shifts the spikes into a code register of ``share * T`` flip-flops
    (no logic: the flip-flops' enable). A conversion then takes ``share * T`` steps instead of ``T``.

    The converter adds the lane's ``bias`` to the membrane as it loads it (SEMANTICS 5.5, step 2: the bias is
    added once, after the decoding), one adder per converter instead of a start value multiplexed into every
    lane's membrane. The sum is registered (``staged``) from the lane that is loaded next, so ``v`` and ``bias``
    must be steady from the cycle before ``load``.

    Parameters
    ----------
    lanes : int
    vbits : int
        Signed width of the membranes loaded.
    bias_bits : int
        Signed width of the biases (``v + bias`` must fit ``vbits``: the membrane's bound covers it).
    theta_bits : int
        Unsigned width of the thresholds (``theta > 0``).
    T : int
        Bits per code.
    share : int
        Lanes per converter (a power of two dividing ``lanes``).

    Attributes
    ----------
    load : In(1)
        Start a conversion of every lane: ``v``, ``bias`` and ``theta`` must be steady from the cycle before until
        it ends.
    v : In(array of signed vbits)
    bias : In(array of signed bias_bits)
    theta : In(array of unsigned theta_bits)
    step : In(1)
        One step in every converter; after ``share * T`` steps ``q`` holds the codes.
    q : Out(array of unsigned T)
        The codes (valid after the conversion's last step, until the next ``load``'s steps).
    first : Out(1)
        The converters are on their first lane (a step then stands for one step of ``share`` lanes: counting the
        steps while ``first`` counts one per lane and step, as with a converter per lane).
    """

    def __init__(self, lanes: int, vbits: int, bias_bits: int, theta_bits: int, T: int, share: int = 1):
        assert share >= 1 and share & (share - 1) == 0 and lanes % share == 0, "share: a power of two dividing lanes"
        self.lanes, self.vbits, self.theta_bits, self.T, self.share = lanes, vbits, theta_bits, T, share
        self.level_bits = theta_bits + T - 1
        super().__init__({
            "load": In(1),
            "v": In(data.ArrayLayout(signed(vbits), lanes)),
            "bias": In(data.ArrayLayout(signed(bias_bits), lanes)),
            "theta": In(data.ArrayLayout(unsigned(theta_bits), lanes)),
            "step": In(1),
            "q": Out(data.ArrayLayout(unsigned(T), lanes)),
            "first": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        K, T = self.share, self.T
        # Shared control: which of its lanes each converter loads next (counting up modulo K, for lanes K - 1 down
        # to 0: back at 0 when a conversion ends) and the step within the lane.
        sel = Signal(range(K))
        tt = Signal(range(T))
        lane_end = self.step & (tt == T - 1)
        take = self.load | (lane_end & (sel != 0))  # the last lane's end loads nothing
        with m.If(self.load):
            m.d.sync += tt.eq(0)
        with m.Elif(self.step):
            m.d.sync += tt.eq(Mux(tt == T - 1, 0, tt + 1))
        with m.If(take):
            m.d.sync += sel.eq(sel + 1)
        m.d.comb += self.first.eq(1 if K == 1 else sel == 1)
        for u in range(self.lanes // K):
            r = Signal(signed(self.vbits), name=f"residue{u}")
            level = Signal(self.level_bits, name=f"level{u}")
            codes = Signal(K * T, name=f"codes{u}")
            # Each converter has its own copy of ``sel`` (always equal to it) and its own ``take``: one ``sel``
            # drove the input multiplexers of every converter, and its route was the ECP5 default plan's
            # critical path (14.8 ns of 17.3). The copies' names hold ``fanout_copy``: the build keeps them.
            sel_u = Signal(range(K), name=f"sel_fanout_copy{u}")
            take_u = self.load | (lane_end & (sel_u != 0))
            with m.If(take_u):
                m.d.sync += sel_u.eq(sel_u + 1)
            lanes_u = list(reversed(range(u * K, (u + 1) * K)))
            v_sel = pick([self.v[j] for j in lanes_u], sel_u)
            bias_sel = pick([self.bias[j] for j in lanes_u], sel_u)
            theta_sel = pick([self.theta[j] for j in lanes_u], sel_u)
            # the membrane plus its bias, of the lane loaded next (``sel_u`` moves on only at a load)
            staged = Signal(signed(self.vbits), name=f"staged{u}")
            m.d.sync += staged.eq(v_sel + bias_sel)
            spike = r >= level  # the comparator (r signed, level unsigned: compared as integers)
            with m.If(take_u):
                m.d.sync += [r.eq(staged), level.eq(theta_sel << (T - 1))]
            with m.Elif(self.step):
                m.d.sync += level.eq(level >> 1)
                with m.If(spike):
                    m.d.sync += r.eq(r - level)
            # Lanes are converted K - 1 first, so the spikes shifted in from the bottom end as lane j's code at
            # bits j * T .. (MSB first: step t's spike at bit T - 1 - t).
            with m.If(self.step):
                m.d.sync += codes.eq(Cat(spike, codes[:-1]))
            for j in range(K):
                m.d.comb += self.q[u * K + j].eq(codes[j * T:(j + 1) * T])
        return m
