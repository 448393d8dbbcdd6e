"""The board's SPI link from the Raspberry Pi's side: a serial-port-like transport over spidev, and link timing.

The gateware (:mod:`edgespike.rtl.spi`) is an SPI peripheral whose transactions carry a 5-byte header each way:
the host says how many data bytes it sends (``n``), the board says how much room its receive FIFO has (``F``) and
how many bytes it has to send (``A``), both taken when chip select falls. The host learns ``F`` and ``A`` only
after a transaction, so it keeps, from the last header, a lower bound on the room (the board's FIFO only drains
between transactions) and sends at most that much; whatever the board did not keep (beyond ``F``) is sent again.
Nothing is lost either way: see the gateware's docstring.

:class:`SPILink` wraps that in ``read`` / ``write`` / ``close`` with pyserial's timeout semantics, so
:class:`edgespike.firmware.Accelerator` (and any script written for a serial port) drives an SPI board unchanged:
``Accelerator("/dev/spidev0.0")``. :func:`transaction` and :func:`reply` are the protocol itself, shared with the
gateware's tests. :func:`frame_seconds` is a link's time on the wire for a frame (UART or SPI).

Wiring (Pi SPI0; see docs/HARDWARE.md): GPIO11 SCLK (header pin 23), GPIO10 MOSI (19), GPIO9 MISO (21), GPIO8 CE0
(24), GND (20 or 25). Enable the controller with ``dtparam=spi=on`` in /boot/firmware/config.txt (older systems:
/boot/config.txt) and reboot; it appears as /dev/spidev0.0. Needs the ``spidev`` package (``pip install spidev``,
or ``apt install python3-spidev``).
"""

from __future__ import annotations

import math
import os
import time

from edgespike.firmware.accelerator import LinkError

MAGIC = 0xA5  # the board's first byte of every transaction (edgespike.rtl.spi.MAGIC)
HEADER = 5  # header bytes of a transaction, both ways
# The SCLK asked of the Pi: its SPI divides its core clock by an even number and rounds down, so 16 MHz gives
# 15.625 MHz on a Pi 3/4 (250 or 500 MHz core), about 15.4 MHz at 400 MHz, 14.3 MHz on a Pi 5 (RP1, 200 MHz) --
# under a quarter of the ULX3S's 75 MHz design clock (18.75 MHz), what the gateware's synchronisers allow
DEFAULT_HZ = 16_000_000
BUFSIZ = 4096  # spidev's default largest transfer (module parameter bufsiz)
# the BCM2835 SPI without DMA leaves one idle clock between bytes (with DMA none): count 9 clocks a byte
SPI_CLOCKS_PER_BYTE = 9
# host time per transaction outside the wire (a spidev ioctl, chip select): an estimate for a Pi 4, not measured
TRANSACTION_S = 100e-6
UART_BITS_PER_BYTE = 10  # 8N1: start, 8 data, stop


def pi_spi_hz(asked: float, core_hz: float = 250e6) -> float:
    """The SCLK a Raspberry Pi's SPI0 makes when asked for ``asked`` Hz: its core clock over the smallest even
    divisor that is not faster (the spi-bcm2835 driver; a Pi 4's 500 MHz core gives the same for 16 MHz)."""
    div = math.ceil(core_hz / asked)
    return core_hz / (div + div % 2)


def transaction(payload: bytes, read_room: int) -> bytes:
    """The MOSI bytes of one transaction: the header announcing ``len(payload)`` data bytes, the payload, and zeros
    to clock ``read_room`` bytes of the board's data in all (the longer of the two sets the length)."""
    n = len(payload)
    if n > 0xFFFF:
        raise ValueError(f"an SPI transaction carries at most 65535 data bytes, got {n}")
    return bytes([n & 0xFF, n >> 8, 0, 0, 0]) + bytes(payload) + bytes(max(0, read_room - n))


def reply(miso: bytes, sent: int) -> tuple[int, bytes, int, int]:
    """What a transaction's MISO bytes say: ``(kept, data, free, avail)``.

    ``kept`` of the ``sent`` data bytes were taken by the board (the first ones; send the rest again), ``data`` are
    the board's bytes, ``free`` and ``avail`` the header's room and bytes to send at the transaction's start.
    Raises :class:`LinkError` when the first byte is not the board's 0xA5 (no board, or the wiring).
    """
    if len(miso) < HEADER or miso[0] != MAGIC:
        first = f"{miso[0]:#04x}" if miso else "nothing"
        raise LinkError(f"no edgespike SPI board answered (read {first}, expected {MAGIC:#04x}): is the board "
                        "programmed with an SPI bitstream (edgespike fpga build --link spi) and wired as in "
                        "docs/HARDWARE.md (MISO to GPIO9, pin 21; GND)?")
    free = miso[1] | miso[2] << 8
    avail = miso[3] | miso[4] << 8
    return min(sent, free), bytes(miso[HEADER:HEADER + min(avail, len(miso) - HEADER)]), free, avail


def open_spidev(device: str, hz: int):
    """An open ``spidev.SpiDev`` for ``device`` (``/dev/spidevB.C``) in mode 0 at ``hz``; :class:`LinkError` saying
    what to do when the package or the device is missing."""
    name = os.path.basename(device)
    try:
        bus, cs = (int(v) for v in name.removeprefix("spidev").split("."))
    except ValueError:
        raise LinkError(f"{device}: an SPI device is /dev/spidevBUS.CS, e.g. /dev/spidev0.0") from None
    if not os.path.exists(device):
        raise LinkError(f"{device} does not exist: enable the Pi's SPI with dtparam=spi=on in "
                        "/boot/firmware/config.txt (or /boot/config.txt) and reboot, or run sudo raspi-config "
                        "(Interface Options, SPI)")
    try:
        import spidev
    except ImportError:
        raise LinkError("the spidev package is not installed: pip install spidev (or apt install python3-spidev)") \
            from None
    dev = spidev.SpiDev()
    try:
        dev.open(bus, cs)
    except OSError as exc:
        raise LinkError(f"cannot open {device}: {exc.strerror or exc} (is your user in the spi group?)") from None
    dev.mode = 0
    dev.bits_per_word = 8
    dev.max_speed_hz = int(hz)
    return dev


class SPILink:
    """A board's SPI link as a serial-port-like object: ``read``, ``write``, ``close``, timeouts like pyserial's.

    Every ``read`` and ``write`` runs transactions: each one sends what the board has room for and reads what it
    has to send, so bytes coming back while the host writes (a pipeline answers while it is fed) are kept for the
    next ``read``, and a board whose FIFO is full never blocks the other direction.

    Parameters
    ----------
    device : str or spidev-like
        ``/dev/spidev0.0``, or an open object with ``xfer2(list) -> list`` and ``close()`` (tests pass a fake).
    hz : int
        SCLK asked of the Pi (it rounds down: :data:`DEFAULT_HZ`).
    timeout : float
        Seconds a ``read`` waits for the bytes asked for before returning what it has (pyserial's ``timeout``).
    write_timeout : float
        Seconds a ``write`` may wait for the board to take all of its bytes before :class:`LinkError`.
    chunk : int
        Largest transaction in bytes, header included (spidev's ``bufsiz``, 4096 unless the module was loaded with
        another).
    poll : int
        Bytes of the board's data a transaction clocks when the last header announced none (a guess: the
        next header says how many there are).
    idle_sleep : float
        Seconds slept after a transaction that moved nothing, so waiting for a board's answer does not hold a core.
    dead_after : int
        Transactions in a row without the board's 0xA5 after which :class:`LinkError` says no board answers. One
        such transaction is a damaged header (a glitch on MISO or chip select): its data is dropped and nothing
        it sent counts as kept; the framed link's CRC, NAKs and retries repair what that did to the byte stream.
    """

    def __init__(self, device="/dev/spidev0.0", hz: int = DEFAULT_HZ, timeout: float = 0.02,
                 write_timeout: float = 10.0, chunk: int = BUFSIZ, poll: int = 256, idle_sleep: float = 100e-6,
                 dead_after: int = 3):
        if chunk <= HEADER:
            raise ValueError(f"chunk must be more than the {HEADER}-byte header, got {chunk}")
        self.dev = open_spidev(device, hz) if isinstance(device, str) else device
        self.name = device if isinstance(device, str) else type(device).__name__
        self.hz = hz
        self.timeout = timeout
        self.write_timeout = write_timeout
        self.chunk = chunk
        self.poll = poll
        self.idle_sleep = idle_sleep
        self._in = bytearray()  # the board's bytes not yet read
        self._room = 0  # a lower bound on the board's free receive FIFO (0 until a header says)
        self._pending = 0  # bytes the board had beyond what the last transaction read
        self.dead_after = dead_after
        self._bad = 0  # transactions in a row without the board's magic byte
        self.transactions = 0
        self.bad_headers = 0  # transactions whose header was not the board's (all time)

    @property
    def seconds_per_byte(self) -> float:
        """Wire time of a byte (for the host's deadlines)."""
        return SPI_CLOCKS_PER_BYTE / self.hz

    @property
    def in_waiting(self) -> int:
        return len(self._in)

    def _transact(self, out: bytes | memoryview) -> int:
        """One transaction sending ``out`` (at most a chunk's data); returns how many of its bytes the board kept."""
        room = self.chunk - HEADER
        out = bytes(out[:room])
        read_room = min(room, max(self._pending, self.poll))
        miso = bytes(self.dev.xfer2(list(transaction(out, read_room))))
        self.transactions += 1
        try:
            kept, data, free, avail = reply(miso, len(out))
        except LinkError:
            # a damaged header, or no board: what the board kept and sent is unknown, so count nothing kept (it is
            # sent again: at worst a duplicate) and drop the data (at worst a loss); either is a damaged frame
            # that the framed link's CRC and retries handle. Only a run of them means the board is gone.
            self._bad += 1
            self.bad_headers += 1
            self._room = self._pending = 0  # the next transaction is a poll that learns them again
            if self._bad >= self.dead_after:
                raise
            return 0
        self._bad = 0
        self._in += data
        self._room = free - kept
        self._pending = avail - len(data)
        if not kept and not data:
            time.sleep(self.idle_sleep)
        return kept

    def write(self, data: bytes) -> int:
        """Send all of ``data``, reading the board's bytes meanwhile; :class:`LinkError` when the board has not taken
        them within ``write_timeout``."""
        view = memoryview(bytes(data))
        deadline = time.monotonic() + self.write_timeout
        while len(view):
            if time.monotonic() >= deadline:
                raise LinkError(f"{self.name}: the board took no SPI data for {self.write_timeout:g} s "
                                f"({len(view)} of {len(data)} bytes left): is it running?")
            # send what the last header leaves room for; with none known, a header-only poll learns it
            view = view[self._transact(view[:self._room]):]
        return len(data)

    def read(self, size: int = 1) -> bytes:
        """Up to ``size`` bytes of the board's: as soon as there are ``size``, or what came within ``timeout``."""
        deadline = time.monotonic() + self.timeout
        # past the deadline only to settle a damaged header: the next transactions answer, or show the board gone
        while len(self._in) < size and (time.monotonic() < deadline or self._bad):
            self._transact(b"")
        out = bytes(self._in[:size])
        del self._in[:size]
        return out

    def reset_input_buffer(self) -> None:
        self._in.clear()

    def close(self) -> None:
        self.dev.close()

    def __enter__(self) -> SPILink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def is_spi_port(port) -> bool:
    """``port`` names an SPI device (``/dev/spidevB.C`` or ``spi:/dev/spidevB.C``) rather than a serial port."""
    return isinstance(port, str) and (port.startswith("spi:") or os.path.basename(port).startswith("spidev"))


def frame_seconds(pixels: int, link: str = "uart", rate: float | None = None, overlap: bool = False,
                  payload: int = 2048, transaction_s: float = TRANSACTION_S) -> float:
    """Seconds on the wire to move ``pixels`` bytes to the board and as many back.

    Parameters
    ----------
    pixels : int
        Bytes each way (one per pixel: 640x480 is 307,200).
    link : str
        ``uart`` (8N1, 10 bits a byte at ``rate`` baud, default 3 Mbaud) or ``spi`` (``rate`` the SCLK, default
        15.625 MHz: :data:`DEFAULT_HZ` as a Pi 3/4 makes it; :data:`SPI_CLOCKS_PER_BYTE` clocks a byte, a 5-byte
        header and ``transaction_s`` of host time per transaction of at most ``payload`` data bytes, the board's
        FIFO).
    overlap : bool
        Both directions at once: the raw pipeline top answers while it is fed, and both links are full duplex.
        False (the framed link: a region in, then its result out) adds the two directions.
    """
    if link == "uart":
        baud = rate or 3_000_000
        one_way = pixels * UART_BITS_PER_BYTE / baud
    elif link == "spi":
        hz = rate or 15_625_000
        n = math.ceil(pixels / payload)
        one_way = (pixels + n * HEADER) * SPI_CLOCKS_PER_BYTE / hz + n * transaction_s
    else:
        raise ValueError(f"link must be uart or spi, got {link!r}")
    return one_way if overlap else 2 * one_way
