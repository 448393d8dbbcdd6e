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

from amaranth.hdl import Elaboratable, Module, Mux, Signal, signed
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from edgespike.rtl.bitplane import BitPlaneLayer, pow2_at_least
from edgespike.rtl.common import const_mul


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
    """

    LATENCY = 2  # register stages of the decoder: cycles from the last layer's handshake to the output's

    def __init__(self, layers: list[dict], multiplier: int, shift: int, residual: bool, fifo_depth: int):
        self.layer_args = layers
        self.multiplier, self.shift, self.residual = multiplier, shift, residual
        self.fifo_depth = pow2_at_least(fifo_depth)
        self.engines = [BitPlaneLayer(**args) for args in layers]
        super().__init__({"i": In(stream.Signature(8)), "o": Out(stream.Signature(8))})

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

        # Decoder, two register stages so that its carry chains do not meet the engines' or the link's:
        # stage 1 the membrane times the multiplier (shift-add) beside its pixel, stage 2 rounding, the residual
        # and the clip. Each stage takes a new value when it is empty or its value moves on.
        v = last.o.payload[0]
        v1, v2 = Signal(), Signal()
        prod = Signal(signed(len(v) + self.multiplier.bit_length() + 1))
        x1 = Signal(8)
        out = Signal(8)
        take2 = ~v2 | self.o.ready
        take1 = ~v1 | take2
        m.d.comb += [
            last.o.ready.eq(take1 & px.r_rdy),
            px.r_en.eq(take1 & last.o.valid),
            self.o.valid.eq(v2),
            self.o.payload.eq(out),
        ]
        with m.If(take1):
            m.d.sync += [v1.eq(last.o.valid & px.r_rdy), prod.eq(const_mul(v, self.multiplier)), x1.eq(px.r_data)]
        r = Signal(signed(len(prod) + 1))
        m.d.comb += r.eq((prod + (1 << (self.shift - 1))) >> self.shift if self.shift else prod)
        y = Signal(signed(len(r) + 2))
        m.d.comb += y.eq(x1 - r if self.residual else r)
        with m.If(take2):
            m.d.sync += [v2.eq(v1), out.eq(Mux(y < 0, 0, Mux(y > 255, 255, y[:8])))]
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
