"""A bit-plane model as a layer pipeline: one :class:`~edgespike.rtl.bitplane.BitPlaneLayer` per layer, all at work.

Pixels stream in raster order; each layer keeps only the input rows its kernel needs (its line buffer) and
passes its output pixels, all channels at once, to the next layer over a ``lib.stream`` handshake, so every
layer computes a different part of the frame at the same time and no pixel is computed twice. The first layer's
input codes are the pixels themselves: with the ``uwe`` encoder (T = 8) the spikes of step ``t`` are bit
``7 - t`` of the pixel, which is what the line buffer stores plane by plane.

The last layer (a ConvTranspose into a ``uwd`` Integrator) produces membranes at full resolution in raster order;
the **decoder** (SEMANTICS 6: ``r = (m * v + 2**(shift-1)) >> shift``, output ``clip(x - r, 0, 255)`` for a
residual model) needs the pixel ``x`` of the same position, which a FIFO keeps from the input (as deep as the
rows the pipeline holds back, plus two). The multiplier is a constant product (shift-add), no multiplier cell.

The host-side plan and cycle model are :mod:`edgespike.fpga.pipeline`; the frame is padded to the model's size
multiple by the host, as for every executor.
"""

from __future__ import annotations

from amaranth.hdl import Const, Elaboratable, Module, Mux, Signal, signed
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from edgespike.rtl.bitplane import BitPlaneLayer, pow2_at_least


def non_adjacent_form(n: int) -> list[tuple[int, int]]:
    """The signed binary digits of ``n`` with no two adjacent nonzero (the fewest nonzero digits): ``(bit, +1 or
    -1)`` pairs, ``n = sum d * 2**bit``."""
    digits, bit = [], 0
    while n:
        if n & 1:
            d = 2 - (n & 3)  # +1 when n = 1 mod 4, -1 when n = 3 mod 4
            digits.append((bit, d))
            n -= d
        n >>= 1
        bit += 1
    return digits


class LayerPipeline(wiring.Component):
    """The whole bit-plane model, pixels in, denoised pixels out, for frames of ``height x width``.

    Parameters
    ----------
    layers : list of dict
        Each layer's :class:`BitPlaneLayer` arguments (``LayerSpec.gateware``), in order.
    multiplier, shift : int
        The decoder's constants; ``residual`` whether the output is ``x - r``.
    fifo_depth : int
        Pixels the residual FIFO holds (``edgespike.fpga.pipeline.residual_depth``).

    Attributes
    ----------
    i : In(stream.Signature(8))
        Input pixels, raster order.
    o : Out(stream.Signature(8))
        Output pixels, raster order.
    res_write, res_read, dec_in : Out(1)
        Probes for the simulators' counts (as the engines' ``lb_read`` etc.): the residual FIFO takes a pixel
        (``w_en & w_rdy``), gives one (``r_en & r_rdy``), and the decoder takes a membrane in (one output pixel's
        multiply-add, :attr:`decoder_adds` adds; the same cycles as ``res_read``, as the decoder takes the pixel
        and the membrane together).
    decoder_adds : int
        Adds the decoder does per output pixel: the product's adder tree (a balanced tree of the multiplier's
        signed digits: each node adds or subtracts two, so ``digits - 1`` of them), the rounding constant's add
        (when ``shift > 0``) and the residual's subtraction (when ``residual``). The clip's two compares are not
        counted, nor a negation of the product when ``shift`` is 0 and every digit is negative.
    """

    TREE_LEVELS = 5  # adder levels of the decoder's constant product: up to 32 signed digits (a 32-bit multiplier)
    LATENCY = TREE_LEVELS + 2  # register stages of the decoder: cycles from the last layer's handshake to the output's

    def __init__(self, layers: list[dict], multiplier: int, shift: int, residual: bool, fifo_depth: int):
        self.layer_args = layers
        self.multiplier, self.shift, self.residual = multiplier, shift, residual
        self.fifo_depth = pow2_at_least(fifo_depth)
        self.engines = [BitPlaneLayer(**args) for args in layers]
        self.decoder_adds = max(len(non_adjacent_form(multiplier)) - 1, 0) + (shift > 0) + bool(residual)
        super().__init__({"i": In(stream.Signature(8)), "o": Out(stream.Signature(8)),
                          "res_write": Out(1), "res_read": Out(1), "dec_in": Out(1)})

    def elaborate(self, platform):
        m = Module()
        for n, engine in enumerate(self.engines):
            m.submodules[f"layer{n}"] = engine
        for a, b in zip(self.engines, self.engines[1:], strict=False):
            wiring.connect(m, a.o, b.i)
        first, last = self.engines[0], self.engines[-1]

        # The input goes to the first layer and, for the residual, into the FIFO: both must take it.
        m.submodules.pixels = px = fifo.SyncFIFOBuffered(width=8, depth=self.fifo_depth)
        m.d.comb += [
            first.i.payload.eq(self.i.payload),
            first.i.valid.eq(self.i.valid & px.w_rdy),
            px.w_data.eq(self.i.payload),
            px.w_en.eq(self.i.valid & first.i.ready),
            self.i.ready.eq(first.i.ready & px.w_rdy),
        ]

        # Decoder, LATENCY register stages so that no carry chain of it meets another (a trained model's multiplier
        # has 30 bits and more: as a chain of shifted adds in one cycle it set the iCE40 Fmax at 15.6 MHz). The
        # product is a balanced tree of the multiplier's signed digits (non-adjacent form), one adder level per
        # stage (TREE_LEVELS, registers passing through when the tree is shallower); then rounding and the shift;
        # then the residual and the clip. Each stage takes a new value when it is empty or its value moves on.
        v = last.o.payload[0]
        digits = non_adjacent_form(self.multiplier)
        assert len(digits) <= 1 << self.TREE_LEVELS, "decoder multiplier too long for the adder tree"
        nodes = [(v << b, d < 0) for b, d in digits] or [(Const(0, 1), False)]
        stages = self.TREE_LEVELS + 2
        valid = [Signal(name=f"dec_v{k}") for k in range(stages)]
        xs = [Signal(8, name=f"dec_x{k}") for k in range(stages - 1)]
        # ``take`` as expressions, not named signals: with named signals yosys 0.70's synth_ecp5 (abc9) stops on an
        # internal assertion (``GetSize(conn.first) == GetSize(conn.second)`` in abc_ops_reintegrate)
        take = [None] * stages
        take[-1] = ~valid[-1] | self.o.ready
        for k in reversed(range(stages - 1)):
            take[k] = ~valid[k] | take[k + 1]
        m.d.comb += [
            last.o.ready.eq(take[0] & px.r_rdy),
            px.r_en.eq(take[0] & last.o.valid),
            self.o.valid.eq(valid[-1]),
            # the probes: a pixel into / out of the FIFO, a membrane into the decoder (when the pixel leaves)
            self.res_write.eq(px.w_en & px.w_rdy),
            self.res_read.eq(px.r_en & px.r_rdy),
            self.dec_in.eq(take[0] & last.o.valid & px.r_rdy),
        ]
        with m.If(take[0]):
            m.d.sync += [valid[0].eq(last.o.valid & px.r_rdy), xs[0].eq(px.r_data)]
        for k in range(1, stages):
            with m.If(take[k]):
                m.d.sync += valid[k].eq(valid[k - 1])
                if k < stages - 1:
                    m.d.sync += xs[k].eq(xs[k - 1])
        for level in range(self.TREE_LEVELS):  # stage ``level``: one adder level of the product
            pairs = []
            for i in range(0, len(nodes), 2):
                if i + 1 == len(nodes):
                    pairs.append(nodes[i])
                    continue
                (a, na), (b, nb) = nodes[i], nodes[i + 1]
                if na == nb:
                    pairs.append((a + b, na))
                else:
                    pairs.append((b - a, False) if na else (a - b, False))
            regs = []
            for i, (expr, neg) in enumerate(pairs):
                reg = Signal(signed(len(expr) + 1), name=f"dec_p{level}_{i}")
                with m.If(take[level]):
                    m.d.sync += reg.eq(expr)
                regs.append((reg, neg))
            nodes = regs
        (prod, neg), = nodes
        half = (1 << (self.shift - 1)) if self.shift else 0
        r = Signal(signed(len(prod) + 2), name="dec_r")
        rounded = (half - prod) if neg else (prod + half)
        with m.If(take[self.TREE_LEVELS]):
            m.d.sync += r.eq(rounded >> self.shift if self.shift else rounded)
        # The last stage stays narrow (its wide subtraction and compares set the iCE40 Fmax next): r is taken as
        # 10 bits when it lies in -512 .. 511 (its top bits all equal its sign: a LUT tree, no carry chain), else
        # its sign alone decides the clip.
        x = xs[self.TREE_LEVELS]
        sign = r[-1]
        fits = (r[9:] == 0) | (r[9:] == (1 << (len(r) - 9)) - 1)
        y = Signal(signed(12))
        m.d.comb += y.eq(x - r[:10].as_signed() if self.residual else r[:10].as_signed())
        huge = Mux(sign, 255 if self.residual else 0, 0 if self.residual else 255)
        out = Signal(8)
        with m.If(take[-1]):
            m.d.sync += out.eq(Mux(~fits, huge, Mux(y < 0, 0, Mux(y > 255, 255, y[:8]))))
        m.d.comb += self.o.payload.eq(out)
        return m


class PipelineBoardTop(Elaboratable):
    """The pipeline between a board's UART pins: raw pixels in, denoised pixels out (no framing yet).

    A measuring top level for place-and-route (resources and Fmax of the layer pipeline on a real part); the
    framed, fault-tolerant link of :mod:`~edgespike.rtl.link` is still to be put in front of it. On ECP5 the
    ``sync`` domain comes from the PLL at ``clock_hz``; on iCE40 it is the board's oscillator.

    Parameters
    ----------
    pipeline : LayerPipeline
    divisor : int
        UART clock cycles per bit.
    pll_hz : float or None
        ECP5 only: the design clock made by the PLL.
    """

    def __init__(self, pipeline: LayerPipeline, divisor: int, pll_hz: float | None = None):
        self.pipeline, self.divisor, self.pll_hz = pipeline, divisor, pll_hz

    def elaborate(self, platform):
        from amaranth.hdl import ClockDomain
        from amaranth.lib import io

        from edgespike.rtl.pll import ECP5PLLDomain
        from edgespike.rtl.uart import UARTRx, UARTTx

        m = Module()
        if self.pll_hz:
            m.domains.sync = ClockDomain("sync")
            m.submodules.clocks = ECP5PLLDomain(self.pll_hz)
        m.submodules.pipeline = pipe = self.pipeline
        m.submodules.uart_rx = urx = UARTRx(self.divisor)
        m.submodules.uart_tx = utx = UARTTx(self.divisor)
        wiring.connect(m, urx.out, pipe.i)
        wiring.connect(m, pipe.o, utx.inp)
        uart = platform.request("uart", 0, dir="-")
        m.submodules.rx_pin = rx_pin = io.Buffer("i", uart.rx)
        m.submodules.tx_pin = tx_pin = io.Buffer("o", uart.tx)
        m.d.comb += [urx.rx.eq(rx_pin.i), tx_pin.o.eq(utx.tx)]
        return m
