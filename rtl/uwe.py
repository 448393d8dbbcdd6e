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

from amaranth.hdl import Cat, Module, Signal, signed, unsigned
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


class SARNeuron(wiring.Component):
    """The UWE as a layer's neuron: ``lanes`` successive-approximation converters of membranes into T-bit codes.

    SEMANTICS 5.5, step 3: for ``t = 0 .. T-1``, ``s[t] = v >= theta * 2**(T-1-t)``, and ``v -= theta *
    2**(T-1-t)`` when it spikes. This is :class:`UWEncoder` with a DAC of gain ``theta``: the level under trial
    is ``theta << (T-1-t)``, a register shifted right once per step (exact: its low ``T-1`` bits start at 0),
    one comparator and one subtractor per lane, no multiplier. The bits are those of
    ``clip(floor(v / theta), 0, 2**T - 1)`` MSB first, also for negative or saturating ``v``.

    Parameters
    ----------
    lanes : int
    vbits : int
        Signed width of the membranes loaded.
    theta_bits : int
        Unsigned width of the thresholds (``theta > 0``).
    T : int
        Bits per code.

    Attributes
    ----------
    load : In(1)
        Take ``v`` and ``theta`` (a new conversion; the code register is cleared).
    v : In(array of signed vbits)
    theta : In(array of unsigned theta_bits)
    step : In(1)
        Decide one bit in every lane (MSB first); after ``T`` steps ``q`` holds the codes.
    q : Out(array of unsigned T)
        The codes, shifted in MSB first.
    residue : Out(array of signed)
        The membranes left (``v - theta * q`` after ``T`` steps).
    """

    def __init__(self, lanes: int, vbits: int, theta_bits: int, T: int):
        self.lanes, self.vbits, self.theta_bits, self.T = lanes, vbits, theta_bits, T
        self.level_bits = theta_bits + T - 1
        self.rbits = max(vbits, self.level_bits + 1)
        super().__init__({
            "load": In(1),
            "v": In(data.ArrayLayout(signed(vbits), lanes)),
            "theta": In(data.ArrayLayout(unsigned(theta_bits), lanes)),
            "step": In(1),
            "q": Out(data.ArrayLayout(unsigned(T), lanes)),
            "residue": Out(data.ArrayLayout(signed(self.rbits), lanes)),
        })

    def elaborate(self, platform):
        m = Module()
        for lane in range(self.lanes):
            v = self.residue[lane]
            level = Signal(self.level_bits, name=f"level{lane}")
            q = self.q[lane]
            spike = v >= level  # the comparator (v signed, level unsigned: compared as integers)
            with m.If(self.load):
                m.d.sync += [v.eq(self.v[lane]), level.eq(self.theta[lane] << (self.T - 1)), q.eq(0)]
            with m.Elif(self.step):
                m.d.sync += [q.eq(Cat(spike, q[:-1])), level.eq(level >> 1)]
                with m.If(spike):
                    m.d.sync += v.eq(v - level)
        return m
