"""The board top level (UART included) in Amaranth's simulator, behind a TCP socket: a board you can talk to.

:class:`BoardSim` runs :class:`~edgespike.rtl.board.Board` in the simulator and moves bytes in and out through its
serial pins, bit by bit at the UART's divisor: the host's bytes really go through the gateware UART. :func:`serve`
puts it behind a socket so the firmware reaches it as ``socket://127.0.0.1:PORT`` (``edgespike fpga serve-sim``);
:func:`open_backend` is ``edgespike run --backend fpga-sim`` (a server on a free local port, in this process).

The simulator only advances while there is something to do (bytes to feed, a frame being received, a tile being
computed, a reply being sent); when the board is idle it waits for the next byte instead of simulating an idle
clock. Speed here: a few thousand cycles per second, so keep tiles small (the UART alone costs
``10 * divisor`` cycles per byte).
"""

from __future__ import annotations

import queue
import socket
import threading

from amaranth.hdl import ResetInserter, Signal
from amaranth.sim import Simulator

from edgespike.fpga.params import Plan
from edgespike.rtl.board import Board

DEFAULT_DIVISOR = 4  # clock cycles per bit in simulation: the smallest the UART takes


class BoardSim:
    """A simulated board: bytes in (:meth:`feed`), bytes out (to ``sink``), a reset button.

    Parameters
    ----------
    plan : Plan or Board
        The accelerator's plan (the shared engine's :class:`Board` is built for it), or a board to run as it is
        (a :class:`~edgespike.rtl.board.PipelineBoard`: :func:`pipeline_server`; ``divisor``, ``gateware_version``
        and ``preloaded`` are then its own).
    sink : callable
        Called with each byte (an int) the board sends, from the simulation thread.
    divisor : int
        UART clock cycles per bit.
    gateware_version : int
        Passed to :class:`Board` (tests play other gateware with it).
    reset_after : int, optional
        Press the reset once, right after this many bytes have gone into the board (a device reset mid-frame).
    preloaded : bool
        False plays an iCE40 bitstream: no weights until the host loads them.
    """

    def __init__(self, plan: Plan | Board, sink, divisor: int = DEFAULT_DIVISOR, gateware_version: int | None = None,
                 reset_after: int | None = None, preloaded: bool = True):
        if isinstance(plan, Board):
            self.board, divisor = plan, plan.divisor
        else:
            kwargs = {} if gateware_version is None else {"gateware_version": gateware_version}
            self.board = Board(plan, divisor, preloaded=preloaded, **kwargs)
        self.divisor = divisor
        self.sink = sink
        self.inbox: queue.Queue[int] = queue.Queue()
        self.stop = threading.Event()
        self.reset_after = reset_after
        self.bytes_in = 0
        self.bytes_out = 0
        self.cycles = 0
        self.resets = 0
        self.tiles_run = 0  # tiles the accelerator ran (a RESULT sent again does not count)

    def feed(self, data: bytes) -> None:
        """Queue bytes for the board's RX pin (thread-safe)."""
        for b in data:
            self.inbox.put(b)

    def run(self) -> None:
        """Simulate until :attr:`stop` is set (blocks: run it in a thread)."""
        board, div = self.board, self.divisor
        rst = Signal()
        sim = Simulator(ResetInserter(rst)(board))
        sim.add_clock(1e-6)
        line_busy = [False]  # the board is sending a byte (the monitor is inside one)

        async def driver(ctx):
            idle_bits = 0
            while not self.stop.is_set():
                busy = ctx.get(board.leds) & 0b10 or line_busy[0]
                idle_bits = 0 if busy else idle_bits + 1
                try:
                    # block only once the board has been idle for a byte time: nothing would happen meanwhile
                    b = self.inbox.get(timeout=0.05) if idle_bits > 12 else self.inbox.get_nowait()
                except queue.Empty:
                    if idle_bits <= 12:
                        await ctx.tick().repeat(div)
                        self.cycles += div
                    continue
                idle_bits = 0
                for bit in [0] + [(b >> i) & 1 for i in range(8)] + [1]:  # start, data LSB first, stop
                    ctx.set(board.rx, bit)
                    await ctx.tick().repeat(div)
                    self.cycles += div
                self.bytes_in += 1
                if self.reset_after is not None and self.bytes_in == self.reset_after:
                    self.reset_after = None
                    self.resets += 1
                    ctx.set(rst, 1)
                    await ctx.tick()
                    ctx.set(rst, 0)

        async def monitor(ctx):
            while True:
                await ctx.negedge(board.tx)
                line_busy[0] = True
                await ctx.tick().repeat(div + div // 2)  # middle of data bit 0
                value = 0
                for i in range(8):
                    value |= ctx.get(board.tx) << i
                    await ctx.tick().repeat(div)
                if ctx.get(board.tx):  # stop bit
                    self.bytes_out += 1
                    self.sink(value)
                line_busy[0] = False

        async def count_tiles(ctx):
            while True:
                await ctx.posedge(board.link.started)
                self.tiles_run += 1

        sim.add_testbench(driver)
        sim.add_testbench(count_tiles, background=True)
        sim.add_testbench(monitor, background=True)
        sim.run()


class Server:
    """:class:`BoardSim` behind a TCP socket; one client at a time, the board's state survives reconnections.

    Parameters
    ----------
    plan : Plan or Board
        The accelerator's plan, or a board (see :class:`BoardSim`).
    host, port : str, int
        Where to listen (port 0: any free port; see :attr:`port`).
    **kwargs
        Passed to :class:`BoardSim`.
    """

    def __init__(self, plan: Plan | Board, host: str = "127.0.0.1", port: int = 0, **kwargs):
        self.listener = socket.create_server((host, port))
        self.host, self.port = self.listener.getsockname()[:2]
        self.conn: socket.socket | None = None
        self.lock = threading.Lock()
        self.sim = BoardSim(plan, self._send, **kwargs)
        self.threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"socket://{self.host}:{self.port}"

    def _send(self, byte: int) -> None:
        with self.lock:
            conn = self.conn
        if conn is not None:
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                pass  # the client left; a real board's bytes would fall on the floor too

    def _accept(self) -> None:
        while not self.sim.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.conn = conn
            while True:
                try:
                    data = conn.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    break
                self.sim.feed(data)
            with self.lock:
                self.conn = None
            conn.close()

    def start(self) -> Server:
        """Run the simulation and the socket in background threads."""
        for target in (self.sim.run, self._accept):
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def serve_forever(self) -> None:
        """Run in this thread until interrupted."""
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        try:
            self.sim.run()
        finally:
            self.close()

    def close(self) -> None:
        self.sim.stop.set()
        with self.lock:
            conn, self.conn = self.conn, None
        for s in (conn, self.listener):
            if s is not None:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
        for t in self.threads:
            t.join(timeout=5)


def pipeline_server(model, region: tuple[int, int], folds: list | None = None, host: str = "127.0.0.1",
                    port: int = 0, **kwargs) -> Server:
    """A simulated pipeline board (:class:`~edgespike.rtl.board.PipelineBoard`: UART, link, the layer pipeline of
    the bit-plane ``model`` for regions of ``region``) behind a socket, not started. ``kwargs`` go to
    :class:`BoardSim` (``reset_after``)."""
    from dataclasses import replace

    from edgespike.fpga.pipelink import pipeline_board
    from edgespike.rtl.board import PipelineBoard

    dut, ident = pipeline_board(model, region, folds)
    board = PipelineBoard(dut, replace(ident, divisor=DEFAULT_DIVISOR))
    return Server(board, host, port, **kwargs)


class SimBackend:
    """``edgespike run --backend fpga-sim``: the simulated board, reached through the firmware over a socket."""

    name = "fpga-sim"

    def __init__(self, model, plan: Plan):
        from edgespike.firmware import Accelerator

        self.model = model
        self.server = Server(plan).start()
        self.acc = Accelerator(self.server.url, ack_timeout=10.0, result_timeout=3600.0)
        self.acc.check_model(model)
        th, tw = plan.tile
        self.label = f"fpga-sim (board top level in Amaranth's simulator, {plan.device.name}, tile {th}x{tw})"

    def denoise(self, frame):
        from edgespike.fpga.host import denoise_frame

        out, stats = denoise_frame(self.acc, frame)
        return out, {"spikes": None, **stats}

    def close(self) -> None:
        self.acc.close()
        self.server.close()


class PipelineSimBackend:
    """``edgespike run --backend fpga-sim`` for a bit-plane model: each frame streamed through the layer pipeline
    (:mod:`edgespike.rtl.pipeline`, built for the frame's size) on the simulator that
    :func:`edgespike.fpga.pipesim.choose_simulator` picks: Verilator (:mod:`edgespike.fpga.verilator`: the first
    frame of a size builds it, about 1.5 minutes of CPU for the default model, then cached; about 195k cycles/s
    for it, so a 64x64 frame in about 12 s), else yosys' CXXRTL (:mod:`edgespike.fpga.cxxrtl`: about 700 cycles/s
    for the default model), else Amaranth's simulator (a few hundred cycles/s); one line says why when it is not
    the first choice (docs/RTL.md, "Three simulators").

    The pipeline has no framed link in front of it yet, so the frame goes into its stream port directly (no UART,
    no firmware). The cycle model's count for each frame is said before it starts; a progress line follows it.
    """

    name = "fpga-sim"

    def __init__(self, model, note: str | None = None, simulator: str = "auto"):
        import sys

        from edgespike.fpga.pipesim import choose_simulator

        self.model = model
        self.requested = simulator
        self.simulator, why = choose_simulator(simulator)
        if why:
            print(f"fpga-sim: {why}", file=sys.stderr, flush=True)
        engine = {"verilator": "compiled by Verilator", "cxxrtl": "compiled by CXXRTL"}.get(
            self.simulator, "in Amaranth's simulator")
        self.label = f"fpga-sim (the layer pipeline {engine}, no link)"
        self.note = note
        self._built: dict = {}

    def denoise(self, frame):
        import sys
        import time

        import numpy as np

        from edgespike.errors import UserError
        from edgespike.fpga.pipesim import (
            SPEED,
            build_pipeline,
            expected_cycles,
            prefer_for_frame,
            run_codes,
            simulate_with_progress,
        )

        h, w = frame.shape
        mult = self.model.size_multiple
        if h % mult or w % mult:
            raise UserError(f"fpga-sim: a {h}x{w} frame is not a multiple of {mult} (the model halves the "
                            f"resolution); crop or resize it (--size)")
        if (h, w) not in self._built:
            self._built[(h, w)] = build_pipeline(self.model, h, w)
        dut, specs, folds = self._built[(h, w)]
        x = np.ascontiguousarray(frame, dtype=np.uint8)
        cycles = expected_cycles(specs, run_codes(specs, x), folds)
        simulator, why = prefer_for_frame(self.simulator, self.requested, dut, cycles)
        if why:
            print(f"fpga-sim: {why}", file=sys.stderr, flush=True)
        print(f"fpga-sim: {h}x{w} frame through the layer pipeline: {cycles} cycles by the cycle model "
              f"({SPEED[simulator]})", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        res = simulate_with_progress(dut, x, 2 * cycles + 1000, simulator, f"fpga-sim: {h}x{w} frame", cycles)
        return res.out, {"spikes": None, "cycles": res.cycles, "seconds": time.perf_counter() - t0,
                         "simulator": simulator}

    def close(self) -> None:
        self._built.clear()


def open_backend(model_path: str | None, device: str | None = None, tile: tuple[int, int] | None = None,
                 simulator: str = "auto"):
    """The ``fpga-sim`` backend of ``edgespike run`` (see :mod:`edgespike.live.backends`).

    A bit-plane model (the default: the shipped model that fits the ECP5-85F, said on stderr) runs on the layer
    pipeline (``simulator``: ``auto``, ``cxxrtl`` or ``amaranth``, see :class:`PipelineSimBackend`); an IF model on
    the simulated board (shared engine, UART and link) with tiles for ``device``, in Amaranth's simulator.
    """
    import sys

    from edgespike.fileformat import load
    from edgespike.fpga.build import check_core, load_plan
    from edgespike.fpga.defaults import default_model
    from edgespike.fpga.pipeline import PipelineError, layer_specs
    from edgespike.models import resolve

    note = None
    if not model_path:
        model_path, note = default_model(device or "ecp5-85f")
        print(f"fpga-sim: {note}", file=sys.stderr, flush=True)
    model = load(resolve(model_path))
    try:
        layer_specs(model)
        backend = PipelineSimBackend(model, note, simulator)
    except PipelineError:
        if simulator != "auto":
            from edgespike.errors import UserError

            raise UserError("--simulator is for bit-plane models (the layer pipeline); an IF model runs on the "
                            "simulated board in Amaranth's simulator") from None
        model, plan = load_plan(model_path, device or "up5k", tile or (16, 16))
        check_core(model, plan)  # frames are cut into tiles: a tile must keep a core
        backend = SimBackend(model, plan)
    backend.model_name = model_path  # for the run's label
    return backend
