"""The board top level: UART + framed link + accelerator + status LEDs, and its place on a real board.

:class:`Board` is what the simulation server runs and what a bitstream contains: a serial line in, a serial line
out, four status outputs. :class:`BoardTop` puts it on an ``amaranth-boards`` platform (pins, clock, LEDs);
:data:`BOARDS` lists the boards a bitstream can be built for.

Status outputs (``leds``): 0 heartbeat (about 1 Hz on a board; shows the clock runs and the bitstream loaded),
1 busy (a frame is being received, run or answered), 2 error (a NAK was sent, held about 0.2 s), 3 serial activity
(a byte received, held about 0.05 s).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from amaranth.hdl import ClockDomain, Elaboratable, Module, ResetInserter, Signal
from amaranth.lib import io, wiring
from amaranth.lib.wiring import In, Out

from edgespike.rtl import protocol as P
from edgespike.rtl.link import Link, engine_ident
from edgespike.rtl.params import Plan
from edgespike.rtl.pll import ECP5PLLDomain
from edgespike.rtl.top import PipelineTop, Top
from edgespike.rtl.uart import UARTRx, UARTTx


class Board(wiring.Component):
    """UART, link and accelerator between two serial pins.

    Parameters
    ----------
    plan : Plan
        What the accelerator runs.
    divisor : int
        UART clock cycles per bit (``clock_hz // baud`` on a board; a handful in simulation).
    clock_hz : int
        The board clock, reported by IDENT and used to time the LEDs (0: simulation; LEDs then blink fast).
    gateware_version : int
        Reported by IDENT; tests set another to play a device running other gateware.
    preloaded : bool
        The bitstream holds the model's weights (see :class:`~edgespike.rtl.link.Link`); False on iCE40, where the
        weight RAMs lose their initialisers (SPRAM cannot be preloaded) and the host must load weights first.

    Attributes
    ----------
    rx : In(1)
        Serial line from the host (idle high).
    tx : Out(1)
        Serial line to the host.
    leds : Out(4)
        Heartbeat, busy, error, activity.
    """

    def __init__(self, plan: Plan, divisor: int, clock_hz: int = 0, gateware_version: int = P.GATEWARE_VERSION,
                 preloaded: bool = True):
        self.plan = plan
        self.preloaded = preloaded
        self.divisor = divisor
        self.clock_hz = clock_hz
        self.gateware_version = gateware_version
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1), "leds": Out(4)})

    def parts(self) -> tuple[Link, wiring.Component]:
        """The link and the accelerator behind it (a byte-stream component, :class:`Top` here)."""
        ident = engine_ident(self.plan, self.divisor, self.clock_hz, self.gateware_version, self.preloaded)
        return Link(ident), Top(self.plan)

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart_rx = urx = UARTRx(self.divisor)
        m.submodules.uart_tx = utx = UARTTx(self.divisor)
        link, top = self.parts()
        m.submodules.link = link
        # the link resets the accelerator when the host abandons a tile (the RAMs keep the weights)
        m.submodules.top = ResetInserter({"sync": link.abort})(top)
        self.link = link  # the simulation server watches link.started to count tiles run
        wiring.connect(m, urx.out, link.rx)
        wiring.connect(m, link.tx, utx.inp)
        wiring.connect(m, link.acc_tx, top.rx)
        wiring.connect(m, top.tx, link.acc_rx)
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx), link.rx_error.eq(urx.error | urx.overrun)]

        # LED timing: in simulation (clock 0) short periods so a VCD shows them move
        clk = self.clock_hz or 1 << 12
        err_cycles, act_cycles = max(2, clk // 5), max(2, clk // 20)
        beat = Signal(range(max(2, clk // 2)))
        err_hold = Signal(range(err_cycles + 1))
        act_hold = Signal(range(act_cycles + 1))
        led_beat = Signal()
        m.d.sync += beat.eq(beat + 1)
        with m.If(beat == clk // 2 - 1):
            m.d.sync += [beat.eq(0), led_beat.eq(~led_beat)]
        with m.If(link.nak):
            m.d.sync += err_hold.eq(err_cycles)
        with m.Elif(err_hold != 0):
            m.d.sync += err_hold.eq(err_hold - 1)
        with m.If(urx.out.valid):
            m.d.sync += act_hold.eq(act_cycles)
        with m.Elif(act_hold != 0):
            m.d.sync += act_hold.eq(act_hold - 1)
        m.d.comb += self.leds.eq(led_beat | (link.busy << 1) | ((err_hold != 0) << 2) | ((act_hold != 0) << 3))
        return m



class PipelineBoard(Board):
    """UART, link and the layer pipeline between two serial pins: :class:`Board` with
    :class:`~edgespike.rtl.top.PipelineTop` behind the link, which takes only TILEs of exactly the region the
    pipeline is built for and refuses weight loads (the weights are RAM initialisers).

    Parameters
    ----------
    pipeline : LayerPipeline
        Built for frames of ``ident.tile``.
    ident : Ident
        What IDENT reports (:func:`~edgespike.rtl.link.pipeline_ident`), with the UART divisor and the clock.
    """

    def __init__(self, pipeline, ident: P.Ident):
        self.pipeline, self.ident = pipeline, ident
        super().__init__(None, ident.divisor, ident.clock_hz)

    def parts(self) -> tuple[Link, wiring.Component]:
        h, w = self.ident.tile
        return Link(self.ident, exact=True), PipelineTop(self.pipeline, h * w)


@dataclass(frozen=True)
class BoardInfo:
    """A board a bitstream can be built for."""

    name: str
    device: str  # key of edgespike.fpga.params.DEVICES for the fit check
    family: str  # ice40 or ecp5
    platform: str  # amaranth_boards module:class
    leds: tuple[str, ...]  # resource names for the four status outputs (fewer on small boards)
    flash: str  # how to program it, for the report and docs
    pll_hz: float | None = None  # design clock made by a PLL from the board's oscillator (None: the oscillator)
    baud: int = P.DEFAULT_BAUD  # the bitstream's serial line speed unless --baud says otherwise


BOARDS = {
    "icebreaker": BoardInfo("icebreaker", "up5k", "ice40", "amaranth_boards.icebreaker:ICEBreakerPlatform",
                            ("led_g", "led_r"), "iceprog {bin}   (or: openFPGALoader -b icebreaker {bin})"),
    "ulx3s-85f": BoardInfo("ulx3s-85f", "ecp5-85f", "ecp5", "amaranth_boards.ulx3s:ULX3S_85F_Platform",
                           ("led", "led", "led", "led"), "openFPGALoader -b ulx3s {bit}",
                           # the shared engine places at ~23 MHz, under the 25 MHz oscillator; from 25 MHz the PLL
                           # makes only multiples of 12.5 MHz, so 3 Mbaud (a multiple of 3 MHz) waits for the 75 MHz
                           # of the layer pipeline: 12.5 MHz / 25 = 500 kbaud, which the FT231X makes exactly
                           pll_hz=12.5e6, baud=500_000),
    "orangecrab": BoardInfo("orangecrab", "ecp5-25f", "ecp5",
                            "amaranth_boards.orangecrab_r0_2:OrangeCrabR0_2_25FPlatform", ("rgb_led",),
                            "dfu-util -D {bit}   (hold the button while plugging in)", pll_hz=12e6),
}


def design_clock_hz(board: str, platform) -> float:
    """The clock the design runs at on ``board``: its PLL's output, or the board's oscillator."""
    return BOARDS[board].pll_hz or platform.default_clk_frequency


def uart_divisor(clock_hz: float, baud: int) -> int:
    """UART clock cycles per bit at ``baud`` (at least 4: the receiver samples mid-bit)."""
    return max(4, round(clock_hz / baud))


def make_platform(board: str):
    """An ``amaranth-boards`` platform for ``board`` (a key of :data:`BOARDS`), with a UART where it has none."""
    import importlib

    info = BOARDS[board]
    mod, cls = info.platform.split(":")
    platform = getattr(importlib.import_module(mod), cls)()
    if board == "orangecrab":
        # the OrangeCrab has only USB: put the UART on the Feather header, RX on pin 0, TX on pin 1
        from amaranth.build import Attrs
        from amaranth_boards.resources import UARTResource

        platform.add_resources([UARTResource(0, rx="0", tx="1", conn=("io", 0),
                                             attrs=Attrs(IO_TYPE="LVCMOS33", PULLMODE="UP"))])
    return platform


class BoardTop(Elaboratable):
    """:class:`Board` wired to a platform's UART pins, clock and LEDs."""

    def __init__(self, plan: Plan, board: str, baud: int):
        self.plan = plan
        self.board = board
        self.baud = baud

    def divisor(self, clock_hz: int) -> int:
        return uart_divisor(clock_hz, self.baud)

    def elaborate(self, platform):
        m = Module()
        info = BOARDS[self.board]
        clock_hz = int(design_clock_hz(self.board, platform))
        if info.pll_hz:
            m.domains.sync = ClockDomain("sync")
            m.submodules.clocks = ECP5PLLDomain(info.pll_hz)
        preloaded = BOARDS[self.board].family != "ice40"  # the iCE40 build drops the weight RAMs' initialisers
        m.submodules.board = board = Board(self.plan, self.divisor(clock_hz), clock_hz, preloaded=preloaded)
        wire_pins(m, platform, self.board, board)
        return m


def wire_pins(m: Module, platform, name: str, board: Board) -> None:
    """``board``'s serial lines to the platform's UART pins and its status outputs to the LEDs of board ``name``."""
    info = BOARDS[name]
    uart = platform.request("uart", 0, dir="-")
    m.submodules.rx_pin = rx_pin = io.Buffer("i", uart.rx)
    m.submodules.tx_pin = tx_pin = io.Buffer("o", uart.tx)
    m.d.comb += [board.rx.eq(rx_pin.i), tx_pin.o.eq(board.tx)]
    if info.leds == ("rgb_led",):
        rgb = platform.request("rgb_led", 0, dir="-")
        outputs = [(rgb.g, board.leds[0]), (rgb.b, board.leds[1]), (rgb.r, board.leds[2])]  # beat, busy, error
    else:
        outputs = [(platform.request(led, i if len(set(info.leds)) == 1 else 0, dir="-"), board.leds[i])
                   for i, led in enumerate(info.leds)]
    if name == "ulx3s-85f":
        # the ULX3S routes the FTDI's TX through a buffer the FPGA must enable
        outputs.append((platform.request("uart_tx_enable", 0, dir="-"), 1))
    for i, (port, value) in enumerate(outputs):
        m.submodules[f"out_pin{i}"] = buf = io.Buffer("o", port)
        m.d.comb += buf.o.eq(value)


class PipelineLinkTop(Elaboratable):
    """:class:`PipelineBoard` wired to a platform's UART pins, clock (a PLL on ECP5) and LEDs.

    Parameters
    ----------
    pipeline : LayerPipeline
    ident : Ident
        The pipeline's IDENT (:func:`~edgespike.rtl.link.pipeline_ident`); its clock and UART divisor are filled in
        from the design clock and ``baud``.
    board : str
        A key of :data:`BOARDS`.
    baud : int
    pll_hz : float or None
        ECP5 only: the design clock made by the PLL (else the board's oscillator).
    """

    def __init__(self, pipeline, ident: P.Ident, board: str, baud: int, pll_hz: float | None = None):
        self.pipeline, self.ident, self.board, self.baud, self.pll_hz = pipeline, ident, board, baud, pll_hz

    def elaborate(self, platform):
        m = Module()
        clock_hz = self.pll_hz or platform.default_clk_frequency
        if self.pll_hz:
            m.domains.sync = ClockDomain("sync")
            m.submodules.clocks = ECP5PLLDomain(self.pll_hz)
        ident = replace(self.ident, clock_hz=int(clock_hz), divisor=uart_divisor(clock_hz, self.baud))
        m.submodules.board = board = PipelineBoard(self.pipeline, ident)
        wire_pins(m, platform, self.board, board)
        return m
