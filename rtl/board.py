"""The board top level: UART or SPI + framed link + accelerator + status LEDs, and its place on a real board.

:class:`Board` is what the simulation server runs and what a bitstream contains: a serial line in, a serial line
out, four status outputs; or, with ``link="spi"``, the four pins of an SPI peripheral (:mod:`edgespike.rtl.spi`)
that a Raspberry Pi drives as the master. :class:`BoardTop` puts it on an ``amaranth-boards`` platform (pins, clock,
LEDs); :data:`BOARDS` lists the boards a bitstream can be built for, :data:`SPI_PINS` where the SPI link's pins are.

Status outputs (``leds``): 0 heartbeat (about 1 Hz on a board; shows the clock runs and the bitstream loaded),
1 busy (a frame is being received, run or answered), 2 error (a NAK was sent, held about 0.2 s), 3 serial activity
(a byte received, held about 0.05 s).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from amaranth.build import Attrs
from amaranth.hdl import ClockDomain, Elaboratable, Module, ResetInserter, Signal
from amaranth.lib import io, wiring
from amaranth.lib.wiring import In, Out

from edgespike.rtl import protocol as P
from edgespike.rtl.link import Link, engine_ident
from edgespike.rtl.params import Plan
from edgespike.rtl.pll import ECP5PLLDomain
from edgespike.rtl.spi import SPIPeripheral
from edgespike.rtl.top import PipelineTop, Top
from edgespike.rtl.uart import UARTRx, UARTTx

LINKS = ("uart", "spi")
# The SPI link's FIFOs: (bytes each way, where): one block RAM each (an ECP5 DP16KD holds 2 KB, an iCE40 EBR 512
# bytes); on an ECP5 whose block RAM the pipeline takes whole, 1 KB of LUT RAM each (yosys: 128 DPR16X4 and about
# 520 LUT4 each; 256 bytes would cost a quarter but make four times the transactions, 0.87 s per default frame
# against 0.60 s, the host's time per transaction dominating)
SPI_FIFO = {"ecp5": (2048, "block"), "ice40": (512, "block")}
SPI_FIFO_LUTRAM = (1024, "distributed")
SPI_FIFO_BLOCKS = 2


def spi_fifo(family: str, free_blocks: int | None = None) -> tuple[int, str] | None:
    """The SPI FIFOs for a design on ``family`` that leaves ``free_blocks`` block RAMs (None: unknown, assume
    enough): block RAM when two are free, else LUT RAM on ECP5, else None (an iCE40 has no LUT RAM)."""
    if free_blocks is None or free_blocks >= SPI_FIFO_BLOCKS:
        return SPI_FIFO[family]
    return SPI_FIFO_LUTRAM if family == "ecp5" else None
# SPI link timeout: a frame the host stops sending mid-way is abandoned after this long without a byte (the
# Pi's transactions come microseconds apart; a descheduled host process pauses for milliseconds)
SPI_TIMEOUT_S = 0.2


class Board(wiring.Component):
    """UART (or SPI peripheral), link and accelerator between two serial pins (or four SPI pins).

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
    link : str
        ``uart`` (``rx`` / ``tx`` pins) or ``spi`` (``sclk``, ``mosi``, ``cs``, ``miso``, ``miso_oe``: an
        :class:`~edgespike.rtl.spi.SPIPeripheral`; ``divisor`` is then 0 and unused).
    spi_fifo : (int, str)
        Bytes of each of the SPI peripheral's FIFOs and their RAM (:data:`SPI_FIFO`).

    Attributes
    ----------
    rx : In(1)
        Serial line from the host (idle high).
    tx : Out(1)
        Serial line to the host.
    sclk, mosi, cs, miso, miso_oe
        SPI only, instead of ``rx`` and ``tx``: see :class:`~edgespike.rtl.spi.SPIPeripheral`.
    leds : Out(4)
        Heartbeat, busy, error, activity.
    """

    def __init__(self, plan: Plan, divisor: int, clock_hz: int = 0, gateware_version: int = P.GATEWARE_VERSION,
                 preloaded: bool = True, link: str = "uart", spi_fifo: tuple[int, str] = SPI_FIFO["ecp5"]):
        if link not in LINKS:
            self._MustUse__silence = True
            raise ValueError(f"link must be one of {LINKS}, got {link!r}")
        self.plan = plan
        self.preloaded = preloaded
        self.divisor = divisor
        self.clock_hz = clock_hz
        self.gateware_version = gateware_version
        self.link_kind, self.spi_fifo = link, spi_fifo
        pins = {"rx": In(1, init=1), "tx": Out(1, init=1)} if link == "uart" else \
            {"sclk": In(1), "mosi": In(1), "cs": In(1), "miso": Out(1), "miso_oe": Out(1)}
        super().__init__({**pins, "leds": Out(4)})

    def link_timeout(self) -> int | None:
        """Cycles without a byte after which the link abandons a partly received frame: the UART's default (40
        byte times), or :data:`SPI_TIMEOUT_S` of the clock over SPI (a simulation's clock 0: 2**16 cycles)."""
        if self.link_kind == "uart":
            return None
        return int(self.clock_hz * SPI_TIMEOUT_S) if self.clock_hz else 1 << 16

    def parts(self) -> tuple[Link, wiring.Component]:
        """The link and the accelerator behind it (a byte-stream component, :class:`Top` here)."""
        ident = engine_ident(self.plan, self.divisor, self.clock_hz, self.gateware_version, self.preloaded)
        return Link(ident, timeout=self.link_timeout()), Top(self.plan)

    def phy(self, m: Module):
        """The byte pipe to the host on this board's pins: ``(rx stream, tx stream, error pulse)``."""
        if self.link_kind == "spi":
            depth, ram = self.spi_fifo
            m.submodules.spi = spi = SPIPeripheral(depth, depth, ram)
            m.d.comb += [spi.sclk.eq(self.sclk), spi.mosi.eq(self.mosi), spi.cs.eq(self.cs),
                         self.miso.eq(spi.miso), self.miso_oe.eq(spi.miso_oe)]
            return spi.rx, spi.tx, spi.refused  # SPI loses no byte: a refused one is sent again by the host
        m.submodules.uart_rx = urx = UARTRx(self.divisor)
        m.submodules.uart_tx = utx = UARTTx(self.divisor)
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx)]
        return urx.out, utx.inp, urx.error | urx.overrun

    def elaborate(self, platform):
        m = Module()
        rx, tx, error = self.phy(m)
        link, top = self.parts()
        m.submodules.link = link
        # the link resets the accelerator when the host abandons a tile (the RAMs keep the weights)
        m.submodules.top = ResetInserter({"sync": link.abort})(top)
        self.link = link  # the simulation server watches link.started to count tiles run
        wiring.connect(m, rx, link.rx)
        wiring.connect(m, link.tx, tx)
        wiring.connect(m, link.acc_tx, top.rx)
        wiring.connect(m, top.tx, link.acc_rx)
        m.d.comb += link.rx_error.eq(0 if self.link_kind == "spi" else error)

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
        with m.If(rx.valid):
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
    link, spi_fifo
        As :class:`Board`'s.
    """

    def __init__(self, pipeline, ident: P.Ident, link: str = "uart", spi_fifo: tuple[int, str] = SPI_FIFO["ecp5"]):
        self.pipeline, self.ident = pipeline, ident
        super().__init__(None, ident.divisor, ident.clock_hz, link=link, spi_fifo=spi_fifo)

    def parts(self) -> tuple[Link, wiring.Component]:
        h, w = self.ident.tile
        return Link(self.ident, timeout=self.link_timeout(), exact=True), PipelineTop(self.pipeline, h * w)


class SPIPipeline(wiring.Component):
    """The layer pipeline between SPI pins, no framing: the raw pipeline top's SPI twin (pixels in, pixels out).

    Unlike the raw UART top, nothing is lost when the host sends faster than the pipeline takes pixels: the SPI
    peripheral's header flow control holds the host back (:mod:`edgespike.rtl.spi`). The host sends a region's
    pixels row by row and reads as many back (:class:`edgespike.firmware.spi.SPILink` ``write`` / ``read``).

    Parameters
    ----------
    pipeline : LayerPipeline
    fifo : (int, str)
        Bytes of each SPI FIFO and their RAM (:data:`SPI_FIFO`).

    Attributes
    ----------
    sclk, mosi, cs, miso, miso_oe
        See :class:`~edgespike.rtl.spi.SPIPeripheral`.
    """

    def __init__(self, pipeline, fifo: tuple[int, str] = SPI_FIFO["ecp5"]):
        self.pipeline, self.fifo = pipeline, fifo
        super().__init__({"sclk": In(1), "mosi": In(1), "cs": In(1), "miso": Out(1), "miso_oe": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.pipeline = pipe = self.pipeline
        depth, ram = self.fifo
        m.submodules.spi = spi = SPIPeripheral(depth, depth, ram)
        wiring.connect(m, spi.rx, pipe.i)
        wiring.connect(m, pipe.o, spi.tx)
        m.d.comb += [spi.sclk.eq(self.sclk), spi.mosi.eq(self.mosi), spi.cs.eq(self.cs),
                     self.miso.eq(spi.miso), self.miso_oe.eq(spi.miso_oe)]
        return m


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


# The SPI link's pins (--link spi), for a Raspberry Pi as the master: (connector, CS, MOSI, MISO, SCLK, I/O attributes)
# in amaranth-boards connector pin names. ULX3S: GP0..GP3 of the 2x20 GPIO header (connector "gpio" pins "0+" ..
# "3+"); iCEBreaker: PMOD1A pins 1-4 in the Digilent SPI order (CS, MOSI, MISO, SCLK). CS is pulled up, so an
# unconnected header leaves the link deselected. Wiring to the Pi: docs/HARDWARE.md, "The SPI link".
SPI_PINS = {
    "ulx3s-85f": (("gpio", 0), "0+", "1+", "2+", "3+", Attrs(IO_TYPE="LVCMOS33", PULLMODE="UP")),
    "icebreaker": (("pmod", 0), "1", "2", "3", "4", Attrs(IO_STANDARD="SB_LVCMOS", PULLUP=1)),
}


def spi_resource(board: str):
    """The SPI link's pins on ``board`` as an ``amaranth-boards`` resource ``pi_spi`` 0 (the board a peripheral)."""
    from amaranth_boards.resources import SPIResource

    conn, cs, mosi, miso, sclk, attrs = SPI_PINS[board]
    return SPIResource("pi_spi", 0, cs_n=cs, clk=sclk, copi=mosi, cipo=miso, conn=conn, attrs=attrs,
                       role="peripheral")


BOARDS = {
    "icebreaker": BoardInfo("icebreaker", "up5k", "ice40", "amaranth_boards.icebreaker:ICEBreakerPlatform",
                            ("led_g", "led_r"), "iceprog {bin}   (or: openFPGALoader -b icebreaker {bin})"),
    "ulx3s-85f": BoardInfo("ulx3s-85f", "ecp5-85f", "ecp5", "amaranth_boards.ulx3s:ULX3S_85F_Platform",
                           ("led", "led", "led", "led"), "openFPGALoader -b ulx3s {bit}",
                           # the shared engine places at ~23 MHz, under the 25 MHz oscillator: 12.5 MHz / 25 =
                           # 500 kbaud, which the FT231X makes exactly (15 MHz / 5 = 3 Mbaud is a PLL clock too since
                           # the PLL's 3.125 MHz phase-detector floor, rtl/pll.py: not built yet)
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
        from amaranth_boards.resources import UARTResource

        platform.add_resources([UARTResource(0, rx="0", tx="1", conn=("io", 0),
                                             attrs=Attrs(IO_TYPE="LVCMOS33", PULLMODE="UP"))])
    if board in SPI_PINS:
        platform.add_resources([spi_resource(board)])  # only constrained when a top requests it (--link spi)
    return platform


class BoardTop(Elaboratable):
    """:class:`Board` wired to a platform's UART (or, ``link="spi"``, SPI) pins, clock and LEDs."""

    def __init__(self, plan: Plan, board: str, baud: int, link: str = "uart"):
        self.plan = plan
        self.board = board
        self.baud = baud
        self.link = link

    def divisor(self, clock_hz: int) -> int:
        return uart_divisor(clock_hz, self.baud) if self.link == "uart" else 0

    def elaborate(self, platform):
        m = Module()
        info = BOARDS[self.board]
        clock_hz = int(design_clock_hz(self.board, platform))
        if info.pll_hz:
            m.domains.sync = ClockDomain("sync")
            m.submodules.clocks = ECP5PLLDomain(info.pll_hz)
        preloaded = BOARDS[self.board].family != "ice40"  # the iCE40 build drops the weight RAMs' initialisers
        m.submodules.board = board = Board(self.plan, self.divisor(clock_hz), clock_hz, preloaded=preloaded,
                                           link=self.link, spi_fifo=SPI_FIFO[info.family])
        wire_pins(m, platform, self.board, board)
        return m


def wire_spi(m: Module, platform, name: str, dut) -> None:
    """``dut``'s SPI peripheral pins (``sclk``, ``mosi``, ``cs``, ``miso``, ``miso_oe``) to :data:`SPI_PINS` of
    board ``name`` (added to the platform by :func:`make_platform`)."""
    if name not in SPI_PINS:
        raise ValueError(f"no SPI link pins are defined for {name}: use one of {', '.join(SPI_PINS)}, or the UART")
    spi = platform.request("pi_spi", 0, dir="-")
    m.submodules.spi_cs = cs = io.Buffer("i", spi.cs)  # PinsN: cs.i is 1 when the Pi selects the board
    m.submodules.spi_clk = clk = io.Buffer("i", spi.clk)
    m.submodules.spi_copi = copi = io.Buffer("i", spi.copi)
    m.submodules.spi_cipo = cipo = io.Buffer("o", spi.cipo)
    m.d.comb += [dut.cs.eq(cs.i), dut.sclk.eq(clk.i), dut.mosi.eq(copi.i), cipo.o.eq(dut.miso),
                 cipo.oe.eq(dut.miso_oe)]


def wire_pins(m: Module, platform, name: str, board: Board) -> None:
    """``board``'s serial lines to the platform's UART pins (or its SPI pins to :data:`SPI_PINS`) and its status
    outputs to the LEDs of board ``name``."""
    info = BOARDS[name]
    if board.link_kind == "spi":
        wire_spi(m, platform, name, board)
    else:
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
    if name == "ulx3s-85f" and board.link_kind == "uart":
        # the ULX3S routes the FTDI's TX through a buffer the FPGA must enable
        outputs.append((platform.request("uart_tx_enable", 0, dir="-"), 1))
    for i, (port, value) in enumerate(outputs):
        m.submodules[f"out_pin{i}"] = buf = io.Buffer("o", port)
        m.d.comb += buf.o.eq(value)


class PipelineLinkTop(Elaboratable):
    """:class:`PipelineBoard` wired to a platform's UART (or SPI) pins, clock (a PLL on ECP5) and LEDs.

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
    link : str
        ``uart`` or ``spi`` (IDENT's UART divisor is then 0).
    spi_fifo : (int, str), optional
        The SPI FIFOs (default: the board family's :data:`SPI_FIFO`).
    """

    def __init__(self, pipeline, ident: P.Ident, board: str, baud: int, pll_hz: float | None = None,
                 link: str = "uart", spi_fifo: tuple[int, str] | None = None):
        self.pipeline, self.ident, self.board, self.baud, self.pll_hz = pipeline, ident, board, baud, pll_hz
        self.link = link
        self.spi_fifo = spi_fifo or SPI_FIFO[BOARDS[board].family]

    def elaborate(self, platform):
        m = Module()
        clock_hz = self.pll_hz or platform.default_clk_frequency
        if self.pll_hz:
            m.domains.sync = ClockDomain("sync")
            m.submodules.clocks = ECP5PLLDomain(self.pll_hz)
        divisor = uart_divisor(clock_hz, self.baud) if self.link == "uart" else 0
        ident = replace(self.ident, clock_hz=int(clock_hz), divisor=divisor)
        m.submodules.board = board = PipelineBoard(self.pipeline, ident, link=self.link, spi_fifo=self.spi_fifo)
        wire_pins(m, platform, self.board, board)
        return m


class PipelineSPITop(Elaboratable):
    """:class:`SPIPipeline` (the layer pipeline between SPI pins, no framing) on a platform: the raw pipeline top
    over SPI, clocked by the PLL on ECP5.

    Parameters
    ----------
    pipeline : LayerPipeline
    board : str
        A key of :data:`SPI_PINS`.
    pll_hz : float or None
        ECP5 only: the design clock made by the PLL.
    fifo : (int, str), optional
        The SPI FIFOs (default: the board family's :data:`SPI_FIFO`).
    """

    def __init__(self, pipeline, board: str, pll_hz: float | None = None, fifo: tuple[int, str] | None = None):
        self.pipeline, self.board, self.pll_hz = pipeline, board, pll_hz
        self.fifo = fifo or SPI_FIFO[BOARDS[board].family]

    def elaborate(self, platform):
        m = Module()
        if self.pll_hz:
            m.domains.sync = ClockDomain("sync")
            m.submodules.clocks = ECP5PLLDomain(self.pll_hz)
        m.submodules.top = top = SPIPipeline(self.pipeline, self.fifo)
        wire_spi(m, platform, self.board, top)
        return m


def spi_top(top, board: str, fifo: tuple[int, str]):
    """The SPI version of a pipeline bitstream's top level (:func:`edgespike.fpga.pipelink.board_top` makes the UART
    one), with SPI FIFOs ``fifo`` (:func:`spi_fifo`): the framed :class:`PipelineLinkTop` with ``link="spi"``, or a
    raw UART top (:class:`~edgespike.rtl.pipeline.PipelineBoardTop`) as :class:`PipelineSPITop`."""
    if isinstance(top, PipelineLinkTop):
        top.link, top.spi_fifo = "spi", fifo
        return top
    top._MustUse__silence = True  # replaced, not forgotten: no "created but never used" warning
    return PipelineSPITop(top.pipeline, board, top.pll_hz, fifo)
