"""A small 8N1 UART (receiver and transmitter) with ``lib.wiring`` stream ports.

Why our own: no maintained Amaranth 0.5 UART installs from PyPI here (``amaranth-stdio``, which has
``AsyncSerial``, is a name-only placeholder on PyPI; LUNA's UART would bring in a USB framework). This one is
8 data bits, no parity, one stop bit, LSB first, with the bit time ``divisor`` clock cycles as a parameter, so a
board runs ``clk / baud`` and a simulation a few cycles per bit.

The receiver synchronises the pin through two flip-flops, finds the start bit's falling edge, samples every bit in
its middle, and checks the stop bit: a byte whose stop bit is low is dropped and ``error`` pulses (a framing
error: noise, a wrong baud rate, or a break). A byte that arrives while the previous one has not been taken is
dropped too, with ``overrun`` pulsing: the link layer above sees the gap as a damaged frame and asks again.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out


def _check_divisor(component, divisor: int) -> int:
    if int(divisor) != divisor or divisor < 4:
        component._MustUse__silence = True  # a refused component is not an unused one: no warning at collection
        raise ValueError(f"UART divisor must be an integer >= 4 clock cycles per bit, got {divisor!r}")
    return int(divisor)


class UARTRx(wiring.Component):
    """UART receiver: a pin in, a byte stream out.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (``clk_hz // baud``), at least 4.

    Attributes
    ----------
    rx : In(1)
        The serial line (idle high).
    out : Out(stream.Signature(8))
        Received bytes; a byte stays valid until taken.
    error : Out(1)
        Pulses for one cycle on a framing error (stop bit low); the byte is dropped.
    overrun : Out(1)
        Pulses for one cycle when a byte is dropped because the previous one was not taken.
    """

    def __init__(self, divisor: int):
        self.divisor = _check_divisor(self, divisor)
        super().__init__({"rx": In(1, init=1), "out": Out(stream.Signature(8)), "error": Out(1),
                          "overrun": Out(1)})

    def elaborate(self, platform):
        m = Module()
        line = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rx, line, init=1)
        timer = Signal(range(self.divisor * 3 // 2 + 1))
        shift = Signal(8)
        bit = Signal(range(9))

        with m.If(self.out.ready):
            m.d.sync += self.out.valid.eq(0)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    # wait half a bit to check the start bit in its middle
                    m.d.sync += timer.eq(self.divisor // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    with m.If(line):
                        m.next = "IDLE"  # a glitch, not a start bit
                    with m.Else():
                        m.d.sync += [timer.eq(self.divisor - 1), bit.eq(0)]
                        m.next = "DATA"
            with m.State("DATA"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    m.d.sync += [shift.eq((shift >> 1) | (line << 7)), bit.eq(bit + 1),
                                 timer.eq(self.divisor - 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    with m.If(~line):
                        m.d.comb += self.error.eq(1)
                        m.next = "BREAK"
                    with m.Elif(self.out.valid & ~self.out.ready):
                        m.d.comb += self.overrun.eq(1)
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += [self.out.payload.eq(shift), self.out.valid.eq(1)]
                        m.next = "IDLE"
            with m.State("BREAK"):
                # a framing error: wait for the line to return high before looking for a start bit again
                with m.If(line):
                    m.next = "IDLE"
        return m


class UARTTx(wiring.Component):
    """UART transmitter: a byte stream in, a pin out.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit, at least 4.

    Attributes
    ----------
    inp : In(stream.Signature(8))
        Bytes to send; one is taken when the line is idle.
    tx : Out(1)
        The serial line (idle high).
    busy : Out(1)
        A byte is being sent.
    """

    def __init__(self, divisor: int):
        self.divisor = _check_divisor(self, divisor)
        super().__init__({"inp": In(stream.Signature(8)), "tx": Out(1, init=1), "busy": Out(1)})

    def elaborate(self, platform):
        m = Module()
        timer = Signal(range(self.divisor))
        frame = Signal(10, init=0x3FF)  # stop bit, 8 data bits, start bit; shifted out LSB first
        left = Signal(range(11))

        m.d.comb += [self.tx.eq(frame[0]), self.busy.eq(left != 0)]
        with m.If(left == 0):
            m.d.comb += self.inp.ready.eq(1)
            with m.If(self.inp.valid):
                m.d.sync += [frame.eq((1 << 9) | (self.inp.payload << 1)), left.eq(10),
                             timer.eq(self.divisor - 1)]
        with m.Else():
            m.d.sync += timer.eq(timer - 1)
            with m.If(timer == 0):
                m.d.sync += [frame.eq((frame >> 1) | (1 << 9)), left.eq(left - 1), timer.eq(self.divisor - 1)]
        return m
