"""The whole path in simulation: firmware -> socket:// -> simulated board top (UART, link, accelerator) -> back.

Each test talks to :class:`edgespike.fpga.sim.Server` running :class:`edgespike.rtl.board.Board` in Amaranth's
simulator, through :class:`edgespike.firmware.Accelerator`. A 2-layer, 2-channel model on a 4x4 tile keeps a tile
at about 3k cycles (simulation runs at a few thousand cycles per second here). Faults are injected between the
firmware and the socket by :class:`FaultyPort`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("amaranth")
serial = pytest.importorskip("serial")

from edgespike import runtime  # noqa: E402
from edgespike.firmware import Accelerator, DeviceMismatch, LinkError  # noqa: E402
from edgespike.firmware import protocol as P  # noqa: E402
from edgespike.fpga.cycles import tile_cost  # noqa: E402
from edgespike.fpga.examples import chain_model, demo_image  # noqa: E402
from edgespike.fpga.params import plan  # noqa: E402
from edgespike.fpga.sim import Server  # noqa: E402

pytestmark = pytest.mark.hw

MODEL = chain_model(seed=0, channels=2, layers=2, timesteps=2)
PLAN = plan(MODEL, tile=(4, 4))
TILE = demo_image(4, 4, seed=0)
# generous: the simulated board is slow and the machine is shared; a fault makes the link retry at once anyway
TIMEOUTS = {"ack_timeout": 30.0, "result_timeout": 120.0}


class FaultyPort:
    """A serial port that damages the traffic: ``write_fault(frame_index, data)`` / ``read_fault(data)``.

    ``write_faults`` maps the index of a written frame (0 = the first write) to a function returning the bytes
    that really go out; ``flip_read_at`` flips one bit of the n-th byte read (counting every byte received);
    ``drop_read_at`` drops it.
    """

    def __init__(self, url: str, write_faults=None, flip_read_at: int | None = None,
                 drop_read_at: int | None = None):
        self.port = serial.serial_for_url(url, timeout=0.02)
        self.write_faults = dict(write_faults or {})
        self.writes = 0
        self.read_count = 0
        self.flip_read_at = flip_read_at
        self.drop_read_at = drop_read_at

    def write(self, data: bytes) -> None:
        fault = self.write_faults.pop(self.writes, None)
        self.writes += 1
        self.port.write(fault(bytes(data)) if fault else data)

    def read(self, n: int) -> bytes:
        data = bytearray(self.port.read(n))
        start, self.read_count = self.read_count, self.read_count + len(data)
        for at, action in ((self.flip_read_at, "flip"), (self.drop_read_at, "drop")):
            if at is not None and start <= at < self.read_count:
                if action == "flip":
                    data[at - start] ^= 0x04
                else:
                    del data[at - start]
        return bytes(data)

    def close(self) -> None:
        self.port.close()


def flip(offset: int):
    def fault(frame: bytes) -> bytes:
        b = bytearray(frame)
        b[offset] ^= 0x81
        return bytes(b)
    return fault


def drop(offset: int):
    return lambda frame: frame[:offset] + frame[offset + 1:]


@pytest.fixture(scope="module")
def server():
    srv = Server(PLAN).start()
    yield srv
    srv.close()


def expect_tile(res):
    """The tile's result equals the CPU runtime bit for bit, and the counters equal the cycle model."""
    assert np.array_equal(res.out, runtime.denoise(MODEL, TILE))
    cost = tile_cost(PLAN, TILE)
    assert (res.cycles, res.spikes, res.sops) == (cost.cycles, cost.spikes, cost.sops)
    assert res.spikes > 0  # the test model does spike on this tile


def test_end_to_end_tile_equals_the_cpu_runtime(server):
    with Accelerator(server.url, **TIMEOUTS) as acc:
        before = server.sim.tiles_run
        ident = acc.check_model(MODEL)
        assert (ident.tile, ident.halo, ident.timesteps) == ((4, 4), PLAN.halo, 2)
        assert ident.divisor == 4 and ident.gateware_version == P.GATEWARE_VERSION
        expect_tile(acc.run_tile(TILE))
        assert acc.stats.retries == 0 and acc.stats.bad_frames == 0
        assert server.sim.tiles_run - before == 1
        with pytest.raises(ValueError, match="does not fit the device's 4x4"):
            acc.run_tile(np.zeros((5, 4), np.uint8))


def test_flipped_byte_to_the_device_is_nakked_and_sent_again(server):
    # writes: 0 = IDENT, 1 = the TILE; flip a pixel byte (sync 2 + header 4 + h, w = offset 8)
    port = FaultyPort(server.url, write_faults={1: flip(9)})
    with Accelerator(port, **TIMEOUTS) as acc:
        acc.check_versions()
        expect_tile(acc.run_tile(TILE))
        assert acc.stats.naks == {"CRC mismatch": 1} and acc.stats.retries == 1


def test_dropped_byte_to_the_device_times_out_on_the_device_and_is_sent_again(server):
    port = FaultyPort(server.url, write_faults={1: drop(10)})
    with Accelerator(port, **TIMEOUTS) as acc:
        acc.check_versions()
        expect_tile(acc.run_tile(TILE))
        assert acc.stats.naks == {"frame incomplete (timeout)": 1} and acc.stats.retries == 1


def test_damaged_result_is_sent_again_by_the_device_without_running_the_tile_again(server):
    # bytes read: IDENT's ACK (8) + IDENT_REPLY (8 + 22), then the TILE's ACK (8), then RESULT: flip a pixel
    first_result_byte = 8 + 8 + P.IDENT_LAYOUT.size + 8 + 7
    port = FaultyPort(server.url, flip_read_at=first_result_byte + 3)
    with Accelerator(port, **TIMEOUTS) as acc:
        acc.check_versions()
        before = server.sim.tiles_run
        expect_tile(acc.run_tile(TILE))
        assert acc.stats.bad_frames == 1 and acc.stats.retries == 1
        assert server.sim.tiles_run - before == 1  # the second RESULT was the stored one


def test_dropped_byte_from_the_device_is_recovered(server):
    first_result_byte = 8 + 8 + P.IDENT_LAYOUT.size + 8 + 7
    port = FaultyPort(server.url, drop_read_at=first_result_byte + 3)
    with Accelerator(port, ack_timeout=30.0, result_timeout=8.0) as acc:
        acc.check_versions()
        expect_tile(acc.run_tile(TILE))
        assert acc.stats.timeouts >= 1 and acc.stats.retries >= 1  # the half frame waits for bytes that never come


def test_device_reset_mid_frame_is_recovered():
    # reset after the IDENT (8 bytes) and 10 bytes of the TILE frame: the device forgets the half frame
    srv = Server(PLAN, reset_after=8 + 10).start()
    try:
        with Accelerator(srv.url, ack_timeout=8.0, result_timeout=120.0) as acc:
            acc.check_versions()
            expect_tile(acc.run_tile(TILE))
            assert srv.sim.resets == 1 and srv.sim.tiles_run == 1  # the half frame never reached the accelerator
            assert acc.stats.timeouts >= 1 and acc.stats.retries >= 1
    finally:
        srv.close()


def test_wrong_gateware_version_is_refused():
    srv = Server(PLAN, gateware_version=P.GATEWARE_VERSION + 1).start()
    try:
        with Accelerator(srv.url, **TIMEOUTS) as acc:
            with pytest.raises(DeviceMismatch, match=f"gateware version {P.GATEWARE_VERSION + 1}, this firmware "
                                                     f"expects {P.GATEWARE_VERSION}: rebuild"):
                acc.check_model(MODEL)
    finally:
        srv.close()


def test_a_model_of_another_structure_is_refused(server):
    other = chain_model(seed=1, channels=4, layers=2, timesteps=2)  # 4 channels: not loadable into this bitstream
    with Accelerator(server.url, **TIMEOUTS) as acc:
        with pytest.raises(DeviceMismatch, match="structure .* differs from the one the bitstream was built for"):
            acc.check_model(other)


def flipped_kernels(model):
    """The same structure and bounds (kernels mirrored), other outputs: a model loadable into MODEL's bitstream."""
    import copy

    other = copy.deepcopy(model)
    for node in other.nodes:
        if hasattr(node, "weight"):
            node.weight = np.ascontiguousarray(node.weight[:, :, ::-1, ::-1])
    return other


def test_weights_load_at_run_time_and_a_board_without_weights_refuses_tiles():
    # plays an iCE40 bitstream: the weight RAMs are not preloaded, so the board refuses tiles until a load
    srv = Server(PLAN, preloaded=False).start()
    try:
        with Accelerator(srv.url, **TIMEOUTS) as acc:
            ident = acc.check_versions()
            assert ident.weights == P.WEIGHTS_NONE and ident.capabilities & P.CAP_LOAD_WEIGHTS
            with pytest.raises(LinkError, match="no complete weights"):
                acc.run_tile(TILE)
            # the gateware itself refuses too (the firmware check above is only the polite first line)
            acc.ident = P.Ident(**{**ident.__dict__, "weights": P.WEIGHTS_LOADED})
            acc.retries = 0
            with pytest.raises(LinkError, match="refused"):
                acc.run_tile(TILE)
            assert srv.sim.tiles_run == 0
            other = flipped_kernels(MODEL)
            want = runtime.denoise(other, TILE)
            assert not np.array_equal(want, runtime.denoise(MODEL, TILE))
            ident = acc.check_model(other)  # loads the weight image in chunks
            assert ident.weights == P.WEIGHTS_LOADED
            res = acc.run_tile(TILE)
            assert np.array_equal(res.out, want)
            assert acc.stats.naks == {"refused (length, type, tile shape or load order)": 1}
    finally:
        srv.close()


def test_a_silent_socket_is_a_link_error():
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    try:
        url = f"socket://127.0.0.1:{listener.getsockname()[1]}"
        with Accelerator(url, ack_timeout=0.2, retries=1) as acc:
            with pytest.raises(LinkError, match="no valid answer to IDENT after 2 attempts"):
                acc.identify()
    finally:
        listener.close()


@contextlib.contextmanager
def serve_sim(*args: str):
    """``edgespike fpga serve-sim ARGS`` on a free port in a subprocess, until its banner says it listens; yields
    the port and the banner's lines, and stops the server on leaving."""
    with socket.socket() as s:  # a free port (released again for the server)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "edgespike.cli", "fpga", "serve-sim", *args, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "listening on" in line:
                break
        yield port, lines
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_sim_command_serves_a_board_the_firmware_can_identify(tmp_path):
    from edgespike.fileformat import save

    save(MODEL, tmp_path / "m.esnn")
    with serve_sim("--model", str(tmp_path / "m.esnn"), "--tile", "4x4") as (port, lines):
        assert f"simulated board listening on socket://127.0.0.1:{port}" in lines[-1], "".join(lines)
        with Accelerator(f"socket://127.0.0.1:{port}", **TIMEOUTS) as acc:
            assert acc.check_model(MODEL).tile == (4, 4)


def test_run_backends_fpga_and_fpga_sim_denoise_a_frame_like_the_runtime(server, tmp_path):
    from edgespike.fileformat import save
    from edgespike.live.backends import open_backend, stats_dict

    path = tmp_path / "m.esnn"
    save(MODEL, path)
    want = runtime.denoise(MODEL, TILE)
    board = open_backend("fpga", str(path), port=server.url)  # a "real" board: the firmware over socket://
    try:
        assert board.label.startswith(f"fpga ({server.url} at 3000000 baud, tile 4x4")
        out, stats = board.denoise(TILE)
        assert np.array_equal(out, want)
        assert stats_dict(stats)["synaptic_ops"] == tile_cost(PLAN, TILE).sops
    finally:
        board.close()
    sim = open_backend("fpga-sim", str(path))  # its own simulated board (16x16 tile, UP5K settings)
    try:
        assert sim.label.startswith("fpga-sim (board top level in Amaranth's simulator, iCE40UP5K, tile 16x16")
        out, _ = sim.denoise(TILE)
        assert np.array_equal(out, want)
    finally:
        sim.close()
