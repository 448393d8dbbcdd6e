"""Link faults (issue 17, item 4): random damage both ways, forged frames, abandoned work, sequence wrap-around,
and a host wait that follows the board's announced cost.

Everything but the first two tests runs the board top level (UART, link, accelerator) in Amaranth's simulator
behind a socket, as ``tests/test_fpga_link.py`` does; the host is :class:`edgespike.firmware.Accelerator`.
"""

from __future__ import annotations

import queue
import random
import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("amaranth")
serial = pytest.importorskip("serial")

from edgespike import runtime  # noqa: E402
from edgespike.firmware import Accelerator, LinkError  # noqa: E402
from edgespike.firmware import accelerator as accelerator_module  # noqa: E402
from edgespike.firmware import protocol as P  # noqa: E402
from edgespike.firmware.spi import HEADER, MAGIC, SPILink  # noqa: E402
from edgespike.fpga.cycles import tile_cost, worst_tile_cycles  # noqa: E402
from edgespike.fpga.examples import chain_model, demo_image, down_model  # noqa: E402
from edgespike.fpga.params import plan  # noqa: E402
from edgespike.fpga.sim import Server  # noqa: E402
from edgespike.model import Conv, ConvTranspose, Neuron  # noqa: E402

pytestmark = pytest.mark.hw

MODEL = chain_model(seed=0, channels=2, layers=2, timesteps=2)
PLAN = plan(MODEL, tile=(4, 4))
TIMEOUTS = {"ack_timeout": 30.0, "result_timeout": 120.0}


def test_announced_worst_case_is_reached_when_every_neuron_fires():
    """IDENT's ``max_tile_cycles`` bounds every tile, and a tile of 255s through a model whose neurons all fire
    at every step takes exactly that many cycles (so the bound is the cycle model's own count, not a guess)."""
    for model in (chain_model(seed=0, channels=2, layers=3, timesteps=2),
                  down_model(seed=0, width=4, depth=3, timesteps=2)):
        p = plan(model, tile=(8, 8))
        assert p.max_tile_cycles == worst_tile_cycles(p) > 0
        for seed in range(3):
            assert tile_cost(p, demo_image(8, 8, seed=seed)).cycles <= p.max_tile_cycles
        for node in model.nodes:  # every neuron fires at every step: zero weights, bias above threshold
            if isinstance(node, (Conv, ConvTranspose)):
                node.weight[...] = 0
                node.bias[...] = 5
            if isinstance(node, Neuron):
                node.threshold[...] = 1
        p = plan(model, tile=(8, 8))
        for shape in ((8, 8), (4, 6)):
            cost = tile_cost(p, np.full(shape, 255, np.uint8))
            assert cost.cycles == worst_tile_cycles(p, shape) and cost.spikes > 0


class AckThenSilence:
    """A device that ACKs every request (IDENT is answered from ``ident``) and never sends a RESULT; the clock
    advances 20 ms per read, as the real port's read timeout would."""

    def __init__(self, ident: P.Ident, clock: list[float]):
        self.ident, self.clock, self.out = ident, clock, bytearray()
        self.parser = P.Parser(max_payload=1024)
        self.writes: list[tuple[float, int]] = []

    def write(self, data: bytes) -> None:
        for f in self.parser.feed(data):
            self.writes.append((self.clock[0], f.kind))
            self.out += P.encode(P.ACK, f.seq)
            if f.kind == P.IDENT:
                self.out += P.encode(P.IDENT_REPLY, f.seq, self.ident.encode())

    def read(self, n: int) -> bytes:
        self.clock[0] += 0.02
        data, self.out = bytes(self.out[:n]), self.out[n:]
        return data

    def close(self) -> None:
        pass


def test_the_host_waits_the_announced_cost_plus_a_bounded_margin(monkeypatch):
    """After a TILE's ACK the host waits for the RESULT exactly as long as the board announced (worst-case
    cycles at its clock, the RESULT's transfer, a margin), then asks again; ``result_timeout`` does not apply."""
    clock = [0.0]
    monkeypatch.setattr(accelerator_module.time, "monotonic", lambda: clock[0])
    worst, clock_hz, baud = 30_000_000, 12_000_000, 3_000_000  # 2.5 s of work at 12 MHz
    ident = P.Ident(P.LINK_VERSION, P.GATEWARE_VERSION, 1, 0, 0, (16, 16), 2, 2, clock_hz, 4, 1, 1, 100, 256,
                    P.WEIGHTS_BUILT_IN, "up5k", 0, worst)
    port = AckThenSilence(ident, clock)
    acc = Accelerator(port, baud=baud, ack_timeout=0.5, result_timeout=10_000.0, retries=2)
    acc.check_versions()
    deadline = acc.result_deadline(P.TILE)
    transfer = (P.OVERHEAD + 1 + 256 + P.COUNTER_BYTES + P.ECHO_BYTES) * 10 / baud
    assert deadline == pytest.approx((worst / clock_hz + transfer) * (1 + acc.MARGIN_FRACTION) + acc.MARGIN_S)
    assert deadline < 3.0
    with pytest.raises(LinkError, match="no RESULT, no RESULT, no RESULT"):
        acc.run_tile(np.zeros((16, 16), np.uint8))
    sent = [t for t, kind in port.writes if kind == P.TILE]
    assert len(sent) == 3
    gaps = np.diff(sent + [clock[0]])
    # each attempt waited the announced deadline (to within one 20 ms read), never result_timeout
    assert np.all(gaps >= deadline) and np.all(gaps <= deadline + 0.1)
    # without an announced clock (a simulation) the fallback applies
    acc.ident = P.Ident(**{**ident.__dict__, "clock_hz": 0})
    assert acc.result_deadline(P.TILE) == 10_000.0


class Faults:
    """The damage of the fault injectors below (serial port and SPI): bit flips, dropped and inserted bytes, forged
    frames (valid CRC: to the host, RESULTs / ACKs / NAKs with random sequence numbers and lengths; to the device,
    a request the host never made, put before the real one). Each direction's faults take the kinds in turn;
    ``faults`` counts them by ``"direction kind"``."""

    KINDS = ("flip", "drop", "insert", "forge")

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.faults: dict[str, int] = {}

    def _turn(self, direction: str) -> int:
        """Faults so far in ``direction``."""
        return sum(v for k, v in self.faults.items() if k.startswith(direction))

    def _note(self, direction: str, what: str) -> None:
        self.faults[f"{direction} {what}"] = self.faults.get(f"{direction} {what}", 0) + 1

    def _damage(self, b: bytearray, at: int, direction: str) -> None:
        what = self.KINDS[self._turn(direction) % len(self.KINDS)]
        self._note(direction, what)
        if what == "flip":
            b[at] ^= 1 << self.rng.randrange(8)
        elif what == "drop":
            del b[at]
        elif what == "insert":
            b.insert(at, self.rng.randrange(256))
        elif direction == "to device":
            b[at:at] = P.encode(self.rng.choice([P.IDENT, P.WLOAD_END]), self.rng.randrange(256))
        else:
            seq = self.rng.randrange(256)
            b[at:at] = self.rng.choice([P.encode(P.RESULT, seq, b"R" + bytes(30)), P.encode(P.ACK, seq),
                                        P.encode(P.NAK, seq, bytes([P.NAK_CRC])),
                                        P.encode(P.RESULT, seq, b"R" + bytes(5))])


class RandomFaults(Faults):
    """A serial port that damages traffic in both directions at random (:class:`Faults`).

    The schedule is drawn up front from ``seed``, so it does not depend on how the bytes are chunked by the reads:
    ``to_device`` faults hit those indices of written frames, ``to_host`` faults those byte positions of the
    received stream.
    """

    def __init__(self, url: str, seed: int, to_device: int, to_host: int, frames: int, host_bytes: int):
        super().__init__(seed)
        self.port = serial.serial_for_url(url, timeout=0.02)
        self.write_at = set(self.rng.sample(range(frames), to_device))
        self.read_at = set(self.rng.sample(range(host_bytes), to_host))
        self.writes = self.read_count = 0

    def write(self, data: bytes) -> None:
        b = bytearray(data)
        if self.writes in self.write_at:
            self._damage(b, 0 if self.rng.random() < 0.3 else self.rng.randrange(len(b)), "to device")
        self.writes += 1
        self.port.write(bytes(b))

    def read(self, n: int) -> bytes:
        b = bytearray(self.port.read(n))
        start, self.read_count = self.read_count, self.read_count + len(b)
        for at in sorted((i - start for i in self.read_at if start <= i < self.read_count), reverse=True):
            self._damage(b, at, "to host")
        return bytes(b)

    def close(self) -> None:
        self.port.close()


@pytest.fixture(scope="module")
def server():
    srv = Server(PLAN).start()
    yield srv
    srv.close()


def test_random_faults_both_ways_never_give_a_wrong_image(server):
    """Repeated random flips, drops, insertions and forged frames in both directions: every tile the host
    returns equals the CPU runtime; a tile may fail with LinkError, never with a wrong image."""
    # every lost frame costs a timeout (the simulated board announces no clock, so the host falls back to fixed
    # ones): a handful of faults, at random places of the exchanges (IDENT and three tiles: at least 4 frames
    # written, 4 more for the retries, and about 200 bytes read). Without faults an answer takes under 0.5 s and a
    # 4x4 tile under 1 s here, with the other core busy; the timeouts leave 15x that for a slower machine.
    tiles = [demo_image(4, 4, seed=s) for s in range(3)]
    port = RandomFaults(server.url, seed=17, to_device=4, to_host=4, frames=6, host_bytes=190)
    done = 0
    with Accelerator(port, retries=8, ack_timeout=8.0, result_timeout=15.0) as acc:
        acc.check_model(MODEL)
        for tile in tiles:
            res = acc.run_tile(tile)  # a LinkError fails the test: 8 retries cover a handful of faults
            assert np.array_equal(res.out, runtime.denoise(MODEL, tile))
            done += 1
    assert done == len(tiles)
    # every kind of fault, once each way
    assert port.faults == {f"{d} {k}": 1 for d in ("to device", "to host") for k in RandomFaults.KINDS}, port.faults


def test_sequence_numbers_wrap_around(server):
    """Requests with sequence numbers 253 .. 255, 0 .. 2: each answer is its own tile's (the device's memory of
    the last request is by sequence number and kind, so a wrap must not make it replay an old answer)."""
    tiles = [demo_image(4, 4, seed=10 + s) for s in range(6)]
    with Accelerator(server.url, **TIMEOUTS) as acc:
        acc.check_model(MODEL)
        acc._seq = 252
        for tile in tiles:
            assert np.array_equal(acc.run_tile(tile).out, runtime.denoise(MODEL, tile))
        assert acc._seq == 2 and acc.stats.retries == 0


def raw_exchange(url: str):
    """A raw socket to the board and a function that sends a frame and returns the frames received until
    ``until(frames)`` holds."""
    host, port = url.removeprefix("socket://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.settimeout(0.05)
    parser = P.Parser(max_payload=1024)

    def exchange(frame: bytes, until, limit: float = 300.0):
        sock.sendall(frame)
        got: list[P.Frame] = []
        t0 = time.monotonic()
        while not until(got) and time.monotonic() - t0 < limit:
            try:
                got += parser.feed(sock.recv(4096))
            except TimeoutError:
                pass
        return got

    return sock, exchange


def test_the_board_abandons_a_tile_the_host_gave_up_on():
    """A TILE is ACKed and running; the host gives up and sends IDENT: the board resets the accelerator, answers
    the IDENT (no RESULT of the abandoned tile ever comes) and then runs the next tile correctly."""
    srv = Server(PLAN).start()
    sock, exchange = raw_exchange(srv.url)
    try:
        tile = demo_image(4, 4, seed=3)
        got = exchange(P.encode(P.TILE, 7, bytes([4, 4]) + tile.tobytes()), lambda fs: any(f.kind == P.ACK for f in fs))
        assert [f.kind for f in got] == [P.ACK]
        got = exchange(P.encode(P.IDENT, 8), lambda fs: any(f.kind == P.IDENT_REPLY for f in fs))
        assert [f.kind for f in got] == [P.ACK, P.IDENT_REPLY] and all(f.seq == 8 for f in got)
        assert srv.sim.tiles_run == 1
        sock.close()  # the simulated board serves one connection at a time
        with Accelerator(srv.url, **TIMEOUTS) as acc:
            acc.check_model(MODEL)
            assert np.array_equal(acc.run_tile(tile).out, runtime.denoise(MODEL, tile))
    finally:
        sock.close()
        srv.close()


def test_a_weight_load_abandoned_midway_is_restarted_and_faults_during_loading():
    """A board without weights; the host sends part of an image, gives up, and loads again from the start with a
    damaged chunk on the way: the gateware restarts the accelerator's load, and the model computes right."""
    srv = Server(PLAN, preloaded=False).start()
    sock, exchange = raw_exchange(srv.url)
    try:
        image = PLAN.weight_image()
        acked = lambda fs: any(f.kind in (P.ACK, P.NAK) for f in fs)  # noqa: E731
        fp = accelerator_module.model_fingerprint(MODEL).to_bytes(4, "little")
        assert [f.kind for f in exchange(P.encode(P.WLOAD_BEGIN, 1, fp), acked)] == [P.ACK]
        assert [f.kind for f in exchange(P.encode(P.WLOAD_DATA, 2, image[:5]), acked)] == [P.ACK]
        sock.close()
        port = FlipOneChunk(srv.url)
        with Accelerator(port, **TIMEOUTS) as acc:
            ident = acc.check_versions()
            assert ident.weights == P.WEIGHTS_LOADING
            ident = acc.load_weights(MODEL)  # begins again: the gateware resets the half-loaded accelerator
            assert ident.weights == P.WEIGHTS_LOADED and acc.stats.naks and port.flipped
            tile = demo_image(4, 4, seed=4)
            assert np.array_equal(acc.run_tile(tile).out, runtime.denoise(MODEL, tile))
    finally:
        sock.close()
        srv.close()


class FlipOneChunk:
    """Flips a payload bit of the second WLOAD_DATA frame written."""

    def __init__(self, url: str):
        self.port = serial.serial_for_url(url, timeout=0.02)
        self.chunks = 0
        self.flipped = False

    def write(self, data: bytes) -> None:
        if data[2] == P.WLOAD_DATA:
            self.chunks += 1
            if self.chunks == 2:
                b = bytearray(data)
                b[7] ^= 0x10
                data, self.flipped = bytes(b), True
        self.port.write(data)

    def read(self, n: int) -> bytes:
        return self.port.read(n)

    def close(self) -> None:
        self.port.close()


# --- the same over SPI (rtl/spi.py, firmware_py/spi.py): what differs is the transaction ---
#
# SPI moves the link's bytes in transactions whose 5-byte headers (the host's count, the board's room and bytes to
# send) have no CRC of their own, and chip select frames them. So the faults are put inside transactions: the kinds
# of :class:`Faults` in MOSI and MISO, alternately in the header and in the data slots, and chip select released
# early or for a moment; and a board that stops answering. The framed link above them is the same.


class SPIFaults(Faults):
    """A spidev between :class:`~edgespike.firmware.spi.SPILink` and a board (``board.xfer2(data, **chip_select)``)
    that damages transactions which carry something, so that every fault hits the link's bytes (most transactions
    are header-only polls). The schedule is drawn from ``seed``: ``to_device + chip_select`` of the first ``writes``
    transactions that carry host data (``n > 0``) and ``to_host`` of the first ``reads`` that carry board data
    (``A > 0``) get one fault each:

    * ``to device`` / ``to host``: a fault of :class:`Faults` in MOSI / MISO, in the SPI header (bytes 0-4) and in
      the data slots by turns (each kind gets both). The clock fixes a transaction's length, so a dropped or
      inserted byte shifts the rest of it: the last byte falls off, or an idle 0x00 comes in.
    * ``chip select``: a cut (released after a random bit; the rest is clocked with the board deselected, MISO
      reading the pull-up's 0xFF) or a glitch (released for a few cycles and asserted again, the transfer going on:
      the board starts a new transaction in the middle of the host's and reads its data as a header).
    """

    CS_KINDS = ("cut", "glitch")

    def __init__(self, board, seed: int, writes: int, reads: int, to_device: int, to_host: int, chip_select: int):
        super().__init__(seed)
        self.board = board
        at = self.rng.sample(range(writes), to_device + chip_select)
        self.write_faults = {i: "to device" for i in at[:to_device]} | {i: "chip select" for i in at[to_device:]}
        self.read_faults = set(self.rng.sample(range(reads), to_host))
        self.count = self.writes = self.reads = 0
        self.places: dict[str, set[str]] = {"to device": set(), "to host": set()}  # "kind header" / "kind data"

    def _hit(self, b: bytearray, direction: str) -> None:
        n, turn = len(b), self._turn(direction)
        # header and data by turns, shifted every round of the kinds so that each kind gets both
        in_header = (turn + turn // len(self.KINDS)) % 2 == 0 or n <= HEADER
        self.places[direction].add(f"{self.KINDS[turn % len(self.KINDS)]} {'header' if in_header else 'data'}")
        self._damage(b, self.rng.randrange(HEADER) if in_header else self.rng.randrange(HEADER, n), direction)
        del b[n:]
        b += bytes(n - len(b))

    def xfer2(self, data) -> list[int]:
        self.count += 1
        mosi, chip_select, direction = bytearray(data), {}, None
        if mosi[0] | mosi[1]:  # the host sends data in this one
            direction = self.write_faults.get(self.writes)
            self.writes += 1
        if direction == "to device":
            self._hit(mosi, direction)
        elif direction == "chip select":
            what = self.CS_KINDS[self._turn(direction) % len(self.CS_KINDS)]
            self._note(direction, what)
            chip_select = {f"{what}_bits": self.rng.randrange(8, 8 * len(mosi) - 1)}
        miso = bytearray(self.board.xfer2(bytes(mosi), **chip_select))
        if miso[0] == MAGIC and miso[3] | miso[4] and len(miso) > HEADER:  # the board sends data in this one
            if self.reads in self.read_faults:
                self._hit(miso, "to host")
            self.reads += 1
        return list(miso)

    def close(self) -> None:
        self.board.close()


class SimSPIBoard:
    """A board with the SPI link (:class:`~edgespike.rtl.board.Board` ``link="spi"``) in Amaranth's simulator on
    its own thread: ``xfer2`` carries a transaction out bit by bit (the master of ``tests/test_fpga_spi.py``, SCLK
    a quarter of the clock) and returns its MISO bytes, 0xFF for those clocked while deselected. ``tiles`` counts
    the tiles the link handed to the accelerator."""

    def __init__(self, board):
        from test_fpga_spi import Master

        self.board, self.master = board, Master
        self.requests, self.replies = queue.Queue(), queue.Queue()
        self.tiles = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from amaranth.sim import Simulator

        sim = Simulator(self.board)
        sim.add_clock(1e-6)
        link = self.board.link  # made when the simulator elaborated the board

        async def bench(ctx):
            master = self.master(ctx, self.board, half=2)
            while (req := self.requests.get()) is not None:
                data, chip_select = req
                miso = await master.transfer(data, **chip_select)
                self.replies.put(miso + b"\xff" * (len(data) - len(miso)))

        async def count(ctx):
            async for _, _, started in ctx.tick().sample(link.started):
                self.tiles += started

        sim.add_testbench(bench)
        sim.add_testbench(count, background=True)
        sim.run()

    def xfer2(self, data, **chip_select) -> list[int]:
        self.requests.put((bytes(data), chip_select))
        while self.thread.is_alive():
            try:
                return list(self.replies.get(timeout=1))
            except queue.Empty:
                pass
        raise RuntimeError("the simulated SPI board stopped (its thread's exception is above)")

    def close(self) -> None:
        self.requests.put(None)
        self.thread.join(timeout=60)


class QuickTimeoutBoard:
    """:class:`~edgespike.rtl.board.Board` over SPI whose link abandons a frame after 4096 cycles without a byte
    (a simulation's default is 2**16 cycles, minutes of this simulator; a board's is 0.2 s of its clock)."""

    def __new__(cls, plan, **kwargs):
        from edgespike.rtl.board import Board

        class _Board(Board):
            def link_timeout(self):
                return 4096

        return _Board(plan, 0, link="spi", spi_fifo=(64, "block"), **kwargs)


def test_spi_faults_inside_transactions_never_give_a_wrong_image():
    """A board without weights behind SPI: the host loads them and runs three tiles while transactions are
    damaged in MOSI and MISO (flips, drops, insertions, forged frames; in the SPI headers and in the data slots),
    cut short and glitched on chip select. Every tile equals the CPU runtime; each tile ran on the accelerator
    once per request that reached it intact."""
    board = SimSPIBoard(QuickTimeoutBoard(PLAN, preloaded=False))
    # the weight load and three tiles are 11 requests and about 20 answers (SPILink of 64-byte transactions, 16-byte
    # polls): 8 faults to the device and 4 on chip select among the first 16 transactions with host data, 8 to the
    # host among the first 20 with board data
    port = SPIFaults(board, seed=5, writes=16, reads=20, to_device=8, to_host=8, chip_select=4)
    link = SPILink(port, timeout=0.05, chunk=64, poll=16, idle_sleep=0)
    tiles = [demo_image(4, 4, seed=20 + s) for s in range(3)]
    try:
        # an answer lost whole costs a timeout: without faults the simulated board answers a request in under
        # 0.5 s and a 4x4 tile in under 1 s here (the IDENT and the weight load in 2 s), with the other core busy;
        # the timeouts leave more than 10x that for a slower machine
        with Accelerator(link, retries=8, ack_timeout=6.0, result_timeout=12.0) as acc:
            ident = acc.check_model(MODEL)
            assert ident.weights == P.WEIGHTS_LOADED
            for tile in tiles:
                assert np.array_equal(acc.run_tile(tile).out, runtime.denoise(MODEL, tile))
    finally:
        board.close()
    # every kind twice each way (once in the SPI header, once in the data slots), two cuts and two glitches
    assert port.faults == {**{f"{d} {k}": 2 for d in ("to device", "to host") for k in Faults.KINDS},
                           "chip select cut": 2, "chip select glitch": 2}, (port.faults, port.writes, port.reads)
    assert port.places == {d: {f"{k} {p}" for k in Faults.KINDS for p in ("header", "data")}
                           for d in ("to device", "to host")}
    assert acc.stats.retries >= 4 and acc.stats.naks and link.bad_headers  # they did damage, and it was repaired
    assert len(tiles) <= board.tiles <= len(tiles) + acc.stats.retries


class SPIPort:
    """A spidev-like board made from a serial-like device (``write`` / ``read``): each transaction gives the device
    the data bytes the header announced (its FIFO always has room) and returns what it has to send; from
    transaction ``dead_from`` on, MISO reads 0x00 (a board that stopped answering: reconfigured, unpowered,
    unplugged)."""

    def __init__(self, device, dead_from: int | None = None):
        self.device, self.dead_from, self.count = device, dead_from, 0

    def xfer2(self, data) -> list[int]:
        self.count += 1
        if self.dead_from is not None and self.count > self.dead_from:
            return [0] * len(data)
        n = data[0] | data[1] << 8
        if n:
            self.device.write(bytes(data[HEADER:HEADER + n]))
        out = self.device.read(len(data) - HEADER)
        free, filler = 4096, bytes(len(data) - HEADER - len(out))
        return [0xA5, free & 0xFF, free >> 8, len(out) & 0xFF, len(out) >> 8, *out, *filler]

    def close(self) -> None:
        pass


def test_spi_host_waits_the_announced_cost_and_gives_up_at_once_on_a_board_that_stops_answering(monkeypatch):
    """Over SPI the host waits for a RESULT exactly the announced deadline (the work at the board's clock, the
    RESULT at the SPI clock's 9 cycles a byte, the margin), as over the UART; a board that stops answering (MISO
    without the 0xA5 header) ends the wait within three transactions with a LinkError that says so, never
    waiting out the deadline; and one damaged header alone is not taken for a missing board."""
    clock = [0.0]
    monkeypatch.setattr(accelerator_module.time, "monotonic", lambda: clock[0])
    worst, clock_hz = 150_000_000, 75_000_000  # 2 s of work at the ULX3S pipeline's 75 MHz
    ident = P.Ident(P.LINK_VERSION, P.GATEWARE_VERSION, 1, 0, 0, (16, 16), 2, 2, clock_hz, 0, 1, 1, 100, 256,
                    P.WEIGHTS_BUILT_IN, "ecp5-85f", 0, worst)
    device = AckThenSilence(ident, clock)
    link = SPILink(SPIPort(device), hz=15_625_000, idle_sleep=0)
    acc = Accelerator(link, ack_timeout=0.5, result_timeout=10_000.0, retries=2)
    acc.check_versions()
    deadline = acc.result_deadline(P.TILE)
    transfer = (P.OVERHEAD + 1 + 256 + P.COUNTER_BYTES + P.ECHO_BYTES) * 9 / 15_625_000
    assert deadline == pytest.approx((worst / clock_hz + transfer) * (1 + acc.MARGIN_FRACTION) + acc.MARGIN_S)
    with pytest.raises(LinkError, match="no RESULT, no RESULT, no RESULT"):
        acc.run_tile(np.zeros((16, 16), np.uint8))
    sent = [t for t, kind in device.writes if kind == P.TILE]
    gaps = np.diff(sent + [clock[0]])
    assert len(sent) == 3 and np.all(gaps >= deadline) and np.all(gaps <= deadline + 0.1)

    # the board goes silent while the host waits for a RESULT: LinkError after three transactions, not the deadline
    device = AckThenSilence(ident, clock)
    port = SPIPort(device)
    acc = Accelerator(SPILink(port, hz=15_625_000, idle_sleep=0), ack_timeout=0.5, result_timeout=10_000.0)
    acc.check_versions()
    port.dead_from = port.count + 3  # the TILE's write and its ACK's read still get through
    start = clock[0]
    with pytest.raises(LinkError, match=r"no edgespike SPI board answered \(read 0x00, expected 0xa5\)"):
        acc.run_tile(np.zeros((16, 16), np.uint8))
    assert port.count - port.dead_from == 3 and clock[0] - start < 0.2 < deadline

    # a single damaged header (MISO's first byte flipped: the IDENT's answer in it is lost) is a damaged
    # transaction, not a missing board: the host sends IDENT again and goes on
    link = SPILink(FlipMagic(SPIPort(AckThenSilence(ident, clock)), at=2), hz=15_625_000, idle_sleep=0)
    acc = Accelerator(link, ack_timeout=0.5, result_timeout=10_000.0)
    assert acc.check_versions().clock_hz == clock_hz and link.bad_headers == 1


class FlipMagic:
    """Flips a bit of MISO's first byte (the board's 0xA5) in transaction ``at`` (counted from 1)."""

    def __init__(self, board, at: int):
        self.board, self.at, self.count = board, at, 0

    def xfer2(self, data) -> list[int]:
        self.count += 1
        miso = self.board.xfer2(data)
        if self.count == self.at:
            miso[0] ^= 0x40
        return miso

    def close(self) -> None:
        pass
