"""The MJPEG preview server: a real HTTP client on 127.0.0.1 reads JPEG frames from the multipart stream."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from edgespike.cli import main
from edgespike.errors import UserError
from edgespike.fileformat import save
from edgespike.live import imageio
from edgespike.live.server import BOUNDARY, PreviewServer
from edgespike.live.sinks import Result

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(imageio.can_encode_jpeg() is None, reason="needs OpenCV or Pillow for JPEG")


def decode_jpeg(data: bytes) -> np.ndarray:
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9", "not a complete JPEG"
    cv = imageio.cv2()
    if cv is not None:
        return cv.imdecode(np.frombuffer(data, np.uint8), cv.IMREAD_COLOR)[..., ::-1]
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def read_parts(resp, n: int) -> list[bytes]:
    """Read ``n`` parts of a multipart/x-mixed-replace body by their Content-Length."""
    parts = []
    for _ in range(n):
        line = resp.readline()
        while line in (b"\r\n", b"\n"):
            line = resp.readline()
        assert line.strip() == f"--{BOUNDARY}".encode(), line
        headers = {}
        while True:
            line = resp.readline().strip()
            if not line:
                break
            k, v = line.decode().split(":", 1)
            headers[k.strip().lower()] = v.strip()
        assert headers["content-type"] == "image/jpeg"
        parts.append(resp.read(int(headers["content-length"])))
    return parts


def result(i: int) -> Result:
    noisy = np.full((24, 32), 10 * i, np.uint8)
    return Result(noisy=noisy, denoised=255 - noisy, record={"frame": i, "spike_rate": 0.1},
                  status=[f"frame {i}"])


@pytest.fixture()
def server():
    s = PreviewServer("127.0.0.1", 0)
    yield s
    s.close()


def publish_until(server: PreviewServer, done: threading.Event) -> threading.Thread:
    def loop():
        i = 0
        while not done.is_set() and i < 2000:  # bounded even if the client never comes
            server.write(result(i % 20))
            i += 1
            time.sleep(0.01)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


def test_stream_serves_side_by_side_jpeg_frames(server):
    done = threading.Event()
    t = publish_until(server, done)
    try:
        base = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(f"{base}/stream.mjpg?frames=3", timeout=10) as resp:
            assert resp.headers["Content-Type"] == f"multipart/x-mixed-replace; boundary={BOUNDARY}"
            parts = read_parts(resp, 3)
        images = [decode_jpeg(p) for p in parts]
        for img in images:
            assert img.shape[1] == 2 * 32 + 4 and img.shape[0] >= 24  # noisy | gap | denoised (+ stats strip)
            left, right = img[:24, :32].astype(int), img[:24, 36:].astype(int)
            assert np.abs(left + right - 255).mean() < 8  # the right half is the "denoised" negative
        with urllib.request.urlopen(f"{base}/", timeout=10) as resp:
            page = resp.read().decode()
        assert "stream.mjpg" in page and "stats.json" in page
        with urllib.request.urlopen(f"{base}/stats.json", timeout=10) as resp:
            assert "spike_rate" in json.loads(resp.read())
        with urllib.request.urlopen(f"{base}/frame.jpg", timeout=10) as resp:
            decode_jpeg(resp.read())
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{base}/nope", timeout=10)
        assert e.value.code == 404
    finally:
        done.set()
        t.join()


def test_close_ends_open_streams(server):
    server.write(result(1))
    resp = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/stream.mjpg", timeout=10)
    read_parts(resp, 1)
    closer = threading.Thread(target=server.close)
    closer.start()
    closer.join(timeout=15)
    assert not closer.is_alive()
    assert resp.read().strip() == b""  # the stream ended rather than hanging
    resp.close()


def test_binds_localhost_by_default_and_reports_an_occupied_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(UserError, match="in use"):
            PreviewServer("127.0.0.1", port)
    srv = PreviewServer(port=0)
    try:
        assert srv.httpd.server_address[0] == "127.0.0.1"
    finally:
        srv.close()


def test_occupied_port_from_the_cli_is_one_line(tmp_path, capsys):
    from test_run import tiny_model

    save(tiny_model(), tmp_path / "m.esnn")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = str(s.getsockname()[1])
        rc = main(["run", "--serve", "--serve-port", port, "--model", str(tmp_path / "m.esnn"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.strip().count("\n") == 0 and "is in use" in err


def start_preview(tmp_path) -> subprocess.Popen:
    """`edgespike run --serve --serve-port 0` on a tiny model in its own process (its first stderr line names the
    port)."""
    from test_run import tiny_model

    save(tiny_model(), tmp_path / "m.esnn")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("DISPLAY", None)
    return subprocess.Popen([sys.executable, "-m", "edgespike.cli", "run", "--model", "m.esnn", "--size", "32x24",
                             "--fps", "30", "--serve", "--serve-port", "0", "-q"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_cli_preview_end_to_end(tmp_path):
    """`edgespike run --serve 0` in its own process; urllib reads two frames, then SIGTERM ends it cleanly."""
    proc = start_preview(tmp_path)
    try:
        line = proc.stderr.readline()  # "edgespike: preview at http://localhost:PORT/"
        m = re.search(r"localhost:(\d+)/", line)
        assert m, line
        with urllib.request.urlopen(f"http://127.0.0.1:{m.group(1)}/stream.mjpg?frames=2", timeout=30) as resp:
            parts = read_parts(resp, 2)
        assert all(decode_jpeg(p).shape[1] == 2 * 32 + 4 for p in parts)
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped by SIGTERM" in out


# -------------------------------------------------------------------------------------- clients that misbehave
# Every loop below is bounded by a count and a deadline; nothing asserts how fast the server is.


def wait_for(predicate, limit: float = 30.0) -> bool:
    """Poll ``predicate`` until it holds or ``limit`` seconds passed (a bound, not a timing assertion)."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def reset_close(sock: socket.socket) -> None:
    """Close with a TCP reset, as a browser tab that is closed mid-transfer often does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def read_all(sock: socket.socket, limit: int = 1 << 16) -> bytes:
    data = b""
    while len(data) < limit:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_clients_that_leave_early_print_nothing(server, capsys):
    server.write(result(1))
    for i in range(40):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as c:
            path = ("/", "/stream.mjpg", "/frame.jpg", "/stats.json")[i % 4]
            c.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            if i % 2:
                c.recv(1)  # some leave after the first byte of the answer, some before it
            reset_close(c)
    server.write(result(2))  # wakes the streams, whose next write finds the client gone
    assert wait_for(lambda: server.httpd.active == 0)
    err = capsys.readouterr().err
    assert "Traceback" not in err and err == ""


def test_a_stream_nobody_reads_is_dropped_while_others_keep_streaming():
    srv = PreviewServer("127.0.0.1", 0, client_timeout=1.0)
    done = threading.Event()
    big = np.random.default_rng(0).integers(0, 256, (240, 320), dtype=np.uint8)  # noise: ~100 KB JPEGs

    def publish():
        i = 0
        while not done.is_set() and i < 6000:
            srv.write(Result(noisy=np.roll(big, i, axis=1), denoised=big, record={"frame": i}))
            i += 1
            time.sleep(0.01)

    t = threading.Thread(target=publish, daemon=True)
    t.start()
    staller = socket.socket()
    staller.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills with the first frame
    try:
        staller.connect(("127.0.0.1", srv.port))
        staller.sendall(b"GET /stream.mjpg HTTP/1.1\r\n\r\n")  # ... and never reads a byte
        assert wait_for(lambda: srv.httpd.active == 1)
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/stream.mjpg", timeout=10) as resp:
            frames_while_stalled = 0
            for _ in range(3000):  # bounded: ~1 s of client timeout needs a few dozen frames at most
                read_parts(resp, 1)
                frames_while_stalled += 1
                if srv.httpd.active == 1 and frames_while_stalled > 1:
                    break  # only this client is left: the staller was dropped
            assert srv.httpd.active == 1, "the client that never reads is still being served"
            assert frames_while_stalled >= 2
            assert all(decode_jpeg(p).shape[1] == 2 * 320 + 4 for p in read_parts(resp, 3))  # still streaming
    finally:
        done.set()
        staller.close()
        t.join()
        srv.close()


def test_half_sent_requests_time_out_and_do_not_block_others():
    srv = PreviewServer("127.0.0.1", 0, client_timeout=0.5)
    srv.write(result(1))
    half = []
    try:
        for _ in range(20):
            c = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            c.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: loc")  # never finished
            half.append(c)
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/stats.json", timeout=10) as resp:
            assert json.loads(resp.read()) == {"frame": 1, "spike_rate": 0.1}
        for c in half:
            assert c.recv(100) == b""  # the server closed the connection after its timeout (recv bounded: 10 s)
        assert wait_for(lambda: srv.httpd.active == 0)
    finally:
        for c in half:
            c.close()
        srv.close()


def test_http_0_9_gets_an_answer_and_the_connection_closes(server):
    for request in (b"GET /\r\n", b"GET /stream.mjpg HTTP/0.9\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as c:
            c.sendall(request)
            answer = read_all(c)  # returns: the server closes the connection
        assert answer.startswith(b"HTTP/1.0 505 "), answer[:80]
        assert b"HTTP/0.9 is not supported" in answer


def test_more_clients_than_the_limit_get_503_without_a_thread():
    base = threading.active_count()
    srv = PreviewServer("127.0.0.1", 0, max_clients=3)
    srv.write(result(1))
    streams = []
    try:
        for _ in range(3):
            resp = urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/stream.mjpg", timeout=10)
            read_parts(resp, 1)
            streams.append(resp)
        assert srv.httpd.active == 3
        for _ in range(5):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/stats.json", timeout=10)
            assert e.value.code == 503 and b"too many preview clients (at most 3)" in e.value.read()
        assert srv.httpd.active == 3 and threading.active_count() <= base + 4  # serve_forever + 3 handlers
        streams.pop().close()  # a viewer leaves: its slot is free once a write to it fails

        def left() -> bool:
            srv.write(result(2))  # the first write after a close still succeeds; the next one fails
            return srv.httpd.active == 2

        assert wait_for(left)
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/stats.json", timeout=10) as resp:
            assert json.loads(resp.read())["frame"] == 2
    finally:
        for resp in streams:
            resp.close()
        srv.close()


def test_cli_preview_with_40_early_disconnects_prints_no_traceback(tmp_path):
    """`edgespike run --serve`: 40 clients reset their connection early; stderr holds the preview line only."""
    proc = start_preview(tmp_path)
    try:
        line = proc.stderr.readline()
        m = re.search(r"localhost:(\d+)/", line)
        assert m, line
        port = int(m.group(1))
        for i in range(40):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
                c.sendall(f"GET {('/', '/stream.mjpg')[i % 2]} HTTP/1.1\r\n\r\n".encode())
                c.recv(1)
                reset_close(c)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stream.mjpg?frames=2", timeout=30) as resp:
            read_parts(resp, 2)  # still serving, and every early stream has had a frame to fail on
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and err.strip() == "", err
