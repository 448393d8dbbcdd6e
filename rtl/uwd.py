"""UWD, VTSNN's undistorted weighted decoder: spikes weighted by ``2**(n-1-t)`` summed into n-bit words.

In the paper it is a binary-weighted resistor DAC; digitally it is an accumulator per output word, here one word
of a single-port RAM per tag, updated read-modify-write. The weight ``2**(n-1-t)`` is a shift, so the datapath is
one adder. This is the reference's ``uwd`` read-out quantity (``uwd += s << (T - 1 - t)``) and the inverse of
:class:`~edgespike.rtl.uwe.UWEncoder`.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from edgespike.rtl.common import SinglePortRAM, bits_for


class UWDecoder(wiring.Component):
    """Accumulate spike events ``(tag, t)`` into words, then drain the words (clearing them) in tag order.

    Parameters
    ----------
    tag_bits : int
        Width of the tag; the decoder holds ``2**tag_bits`` words.
    n : int
        Bits per word (the number of timesteps, 8 for pixels).

    Attributes
    ----------
    events : In(stream.Signature({tag, t}))
        Spike events, in any order. Each costs 3 cycles (accept, read, write back: one RAM port).
    drain : In(1)
        Pulse: stream out words ``0 .. count-1`` on ``words``, zeroing each as it goes.
    count : In
        Number of words to drain.
    words : Out(stream.Signature({tag, value}))
    busy : Out(1)
    """

    def __init__(self, tag_bits: int, n: int = 8):
        self.n = n
        self.tag_bits = tag_bits
        super().__init__({
            "events": In(stream.Signature(data.StructLayout({"tag": tag_bits, "t": bits_for(n)}))),
            "words": Out(stream.Signature(data.StructLayout({"tag": tag_bits, "value": n}))),
            "drain": In(1),
            "count": In(tag_bits + 1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        n = self.n
        m.submodules.ram = ram = SinglePortRAM(n, 1 << self.tag_bits, init=[0] * (1 << self.tag_bits))
        tag = Signal(self.tag_bits)
        weight = Signal(n)
        idx = Signal(self.tag_bits + 1)

        m.d.comb += [self.words.payload.tag.eq(idx), self.words.payload.value.eq(ram.rdata)]
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.events.ready.eq(1)
                with m.If(self.events.valid):
                    m.d.sync += [
                        tag.eq(self.events.payload.tag),
                        weight.eq(Const(1 << (n - 1), n) >> self.events.payload.t),
                    ]
                    m.next = "READ"
                with m.Elif(self.drain):
                    m.d.sync += idx.eq(0)
                    m.next = "DRAIN_READ"
            with m.State("READ"):
                m.d.comb += [self.busy.eq(1), ram.addr.eq(tag), ram.re.eq(1)]
                m.next = "WRITE"
            with m.State("WRITE"):
                m.d.comb += [self.busy.eq(1), ram.addr.eq(tag), ram.we.eq(1), ram.wdata.eq(ram.rdata + weight)]
                m.next = "IDLE"
            with m.State("DRAIN_READ"):
                m.d.comb += self.busy.eq(1)
                with m.If(idx == self.count):
                    m.next = "IDLE"
                with m.Else():
                    m.d.comb += [ram.addr.eq(idx), ram.re.eq(1)]
                    m.next = "DRAIN_OFFER"
            with m.State("DRAIN_OFFER"):
                m.d.comb += [self.busy.eq(1), self.words.valid.eq(1)]
                with m.If(self.words.ready):
                    m.d.comb += [ram.addr.eq(idx), ram.we.eq(1), ram.wdata.eq(0)]
                    m.d.sync += idx.eq(idx + 1)
                    m.next = "DRAIN_READ"
        return m


# Adder levels of UWDAccumulator's tree between two registers: two levels of int8-wide adds after the weight RAM's
# output meet 75 MHz on the ECP5 (a 4-channel group: 81.6 MHz alone), four did not (59 MHz).
TREE_LEVELS_PER_STAGE = 2
# Lanes of UWDAccumulator driven by one copy of the membranes' control registers.
LANES_PER_COPY = 8


def tree_stages(group: int) -> int:
    """Register stages inside UWDAccumulator's adder tree of ``group`` terms (0 for a group of at most 4): the
    cycles an add takes beyond two (``edgespike.fpga.pipeline.tree_stages`` is the same function)."""
    levels = (group - 1).bit_length()
    return max(0, (levels - 1) // TREE_LEVELS_PER_STAGE)


class UWDAccumulator(wiring.Component):
    """The UWD as a layer's synapse: ``lanes`` membranes that decode bit-plane spikes by accumulation only.

    A bit-plane layer decodes its input ``sum_t 2**(T-1-t) * (W s_t)`` (SEMANTICS 5.5, step 1). Adding each input
    spike's weights shifted by ``T-1-t`` is the same sum in any order, so the engine can visit only the words
    that hold spikes (spike-free planes and words cost nothing here) and no doubling pass over the membranes is
    needed: the binary-weighted DAC of :class:`UWDecoder` with a weight per lane instead of a 1.

    Parameters
    ----------
    lanes : int
        Output channels updated in parallel.
    vbits : int
        Signed membrane width (the decoded sum plus the bias must fit).
    T : int
        Number of bit planes.
    group : int
        Input channels of one plane taken per add: each lane sums the weights of the spiking ones (an adder tree
        of ``group`` masked int8 values), then adds the sum, shifted, to its membrane. The tree has a register
        after every :data:`TREE_LEVELS_PER_STAGE` adder levels, so a group above 4 takes
        :func:`tree_stages` more cycles (:attr:`latency`).
    biased : bool
        ``clear`` starts the membranes at ``bias`` (True) or at 0 (False: no ``bias`` port). At 0 the clear is
        the flip-flops' synchronous reset, free on the ECP5 and the iCE40, where a start at the bias costs a
        multiplexer per membrane bit (23 LUTs of a lane's 86 in a 64-lane engine): a bit-plane neuron adds its
        bias in the converter instead (:class:`~edgespike.rtl.uwe.SARNeuron`), once per converter.

    Attributes
    ----------
    clear : In(1)
        Membranes to their ``bias`` (or 0) two cycles later (taking precedence over an add in that cycle): the
        bias is the decoding's starting value, so it needs no adder of its own.
    add : In(1)
        ``acc[l] += (sum_m spikes[m] * weights[l * group + m]) << (T - 1 - t)``, in ``acc`` :attr:`latency`
        cycles later.
    t : In
        Plane of the spikes being added (0 = MSB).
    spikes : In(group)
        Which of the group's input channels spike in plane ``t``, given **one cycle before** ``add``, ``t`` and
        ``weights``: they are registered here, one copy per LANES_PER_COPY lanes (one register drove every lane's
        spike masks; in a 32-lane engine of groups of 8 its 9 ns route set an ECP5-85F build's Fmax at 69.8 MHz).
    weights : In(array of signed 8, lanes * group)
        The group's int8 weights for each lane (lane-major).
    bias : In(array of signed vbits)
        Only when ``biased``.
    acc : Out(array of signed vbits)
    """

    def __init__(self, lanes: int, vbits: int, T: int, group: int = 1, biased: bool = True):
        self.lanes, self.vbits, self.T, self.group, self.biased = lanes, vbits, T, group, biased
        self.latency = 2 + tree_stages(group)
        ports = {
            "clear": In(1),
            "add": In(1),
            "t": In(bits_for(T)),
            "spikes": In(group),
            "weights": In(data.ArrayLayout(signed(8), lanes * group)),
            "acc": Out(data.ArrayLayout(signed(vbits), lanes)),
        }
        if biased:
            ports["bias"] = In(data.ArrayLayout(signed(vbits), lanes))
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        # Two stages: the adder tree's sum and the shift are registered, then added to the membrane (the tree
        # and the membrane's carry chain in one cycle set the iCE40 Fmax). A wide tree is cut by registers
        # every TREE_LEVELS_PER_STAGE levels (the read-out's 16-channel tree, four levels behind the weight RAM's
        # output, set the ECP5 pipeline's Fmax at 59 MHz), and ``shift`` and ``add`` are delayed with it. An add
        # reaches ``acc`` ``latency`` cycles after ``add``. The last registers of shift and add are copied once
        # per LANES_PER_COPY lanes, as is a register of clear: one register drove every lane's shifter and adder
        # (64 lanes of about 20 bits on the ECP5). The copies' names hold ``fanout_copy``, which the build keeps
        # apart; through them clear acts a cycle later.
        shift, add = self.T - 1 - self.t, self.add & ~self.clear
        for k in range(tree_stages(self.group)):
            shift_k, add_k = Signal(bits_for(self.T), name=f"shift{k}"), Signal(name=f"add{k}")
            m.d.sync += [shift_k.eq(shift), add_k.eq(add)]
            shift, add = shift_k, add_k
        spikes = []  # the spikes, registered once per LANES_PER_COPY lanes (they come a cycle ahead)
        for j in range(0, self.lanes, LANES_PER_COPY):
            s = Signal(self.group, name=f"spikes_fanout_copy{j}")
            m.d.sync += s.eq(self.spikes)
            spikes.append(s)
        copies = []
        for j in range(0, self.lanes, LANES_PER_COPY):
            c = (Signal(bits_for(self.T), name=f"shift_fanout_copy{j}"), Signal(name=f"add_fanout_copy{j}"),
                 Signal(name=f"clear_fanout_copy{j}"))
            m.d.sync += [c[0].eq(shift), c[1].eq(add), c[2].eq(self.clear)]
            copies.append(c)
        for lane in range(self.lanes):
            spk = spikes[lane // LANES_PER_COPY]
            terms = [Mux(spk[i], self.weights[lane * self.group + i], 0) for i in range(self.group)]
            level = 0
            while len(terms) > 1:  # a balanced adder tree
                terms = [a + b for a, b in zip(terms[::2], terms[1::2], strict=True)] + terms[len(terms) & ~1:]
                level += 1
                if level % TREE_LEVELS_PER_STAGE == 0 and len(terms) > 1:  # a register stage inside the tree
                    regs = [Signal(t.shape(), name=f"tree{lane}_{level}_{i}") for i, t in enumerate(terms)]
                    m.d.sync += [r.eq(t) for r, t in zip(regs, terms, strict=True)]
                    terms = regs
            total = Signal(signed(8 + bits_for(self.group) + 1), name=f"sum{lane}")
            m.d.sync += total.eq(terms[0])
            acc = self.acc[lane]
            shift_l, add_l, clear_l = copies[lane // LANES_PER_COPY]
            with m.If(clear_l):
                m.d.sync += acc.eq(self.bias[lane] if self.biased else 0)
            with m.Elif(add_l):
                m.d.sync += acc.eq(acc + (total << shift_l))  # a shifter and an adder per lane
        return m
