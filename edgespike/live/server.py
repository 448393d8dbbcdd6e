"""The MJPEG-over-HTTP preview for headless boards: ``noisy | denoised`` with a stats overlay, in any browser.

``http.server.ThreadingHTTPServer`` on 127.0.0.1 by default (``--bind 0.0.0.0`` exposes it to the network).
Routes: ``/`` a page showing the stream and live stats, ``/stream.mjpg`` the ``multipart/x-mixed-replace``
stream (``?frames=N`` ends it after N frames: handy for scripts), ``/frame.jpg`` the latest frame, ``/stats.json``
the latest per-frame record. A frame is JPEG-encoded once, on the first request for it, and only while someone
is watching, so an idle server costs the pipeline one reference swap per frame.

A board's preview must survive its clients: every connection has a timeout (:data:`CLIENT_TIMEOUT` seconds to
send its request, and to take each write once the socket buffers are full, so a stream nobody reads is dropped),
at most :data:`MAX_CLIENTS` connections are served at once (the next ones get ``503`` at once, without a
thread), a client that leaves is not an error, and a request the server does not speak (HTTP/0.9) gets an answer.
"""

from __future__ import annotations

import collections
import errno
import json
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from edgespike.errors import UserError
from edgespike.live import imageio

BOUNDARY = "edgespikeframe"
CLIENT_TIMEOUT = 10.0
"""Seconds a client may take to send its request, or to take a write once the socket buffers are full."""
MAX_CLIENTS = 32
"""Connections served at once, each by one thread; more are answered 503 by the accepting thread."""
STREAM_SNDBUF = 256 * 1024
"""Send buffer of a stream connection: a stalled viewer holds at most a few frames before its timeout runs."""
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>edgespike run</title>
<style>body{background:#111;color:#ddd;font:14px monospace;margin:1em}img{max-width:100%;image-rendering:pixelated}
td{padding:0 1em 0 0}</style></head>
<body><h3>edgespike run: noisy | denoised</h3><img src="stream.mjpg" alt="stream">
<table id="s"></table>
<script>
async function tick(){try{const r=await fetch('stats.json',{cache:'no-store'});const s=await r.json();
document.getElementById('s').innerHTML=Object.entries(s).map(([k,v])=>`<tr><td>${k}</td><td>${v}</td></tr>`).join('');
}catch(e){}setTimeout(tick,1000)}tick();
</script></body></html>
"""


class _BoundedServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` with at most ``max_clients`` handler threads, quiet about clients that leave."""

    daemon_threads = True
    REFUSED_LINGER = 2.0  # seconds a refused connection may take to read its 503 before it is closed anyway
    REFUSED_MAX = 64  # refused connections waiting for their client to read; beyond that they are closed at once

    def __init__(self, address, handler, max_clients: int) -> None:
        self.slots = threading.BoundedSemaphore(max(1, max_clients))
        self.max_clients = max_clients
        self.active = 0  # connections being served now (for tests and the curious)
        self.active_lock = threading.Lock()
        self.refused: collections.deque = collections.deque()
        super().__init__(address, handler)

    def process_request(self, request, client_address) -> None:
        if not self.slots.acquire(blocking=False):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # the thread did not start: its slot is free again
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        with self.active_lock:
            self.active += 1
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.active_lock:
                self.active -= 1
            self.slots.release()

    def _refuse(self, request: socket.socket) -> None:
        """Answer 503 from the accepting thread without blocking it, then let the client read the answer."""
        body = f"too many preview clients (at most {self.max_clients}): close a viewer and retry\n".encode()
        head = (f"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                "Retry-After: 5\r\nConnection: close\r\n\r\n").encode()
        try:
            request.setblocking(False)
            request.send(head + body)  # a few hundred bytes: a fresh socket's buffer always takes them
            request.shutdown(socket.SHUT_WR)
        except OSError:
            request.close()
            return
        # Closing now, with the request unread, would send a reset that can destroy the 503 before the client
        # reads it: keep the socket until the client closes its side (see service_actions).
        if len(self.refused) >= self.REFUSED_MAX:
            self.refused.popleft()[0].close()
        self.refused.append((request, time.monotonic() + self.REFUSED_LINGER))

    def service_actions(self) -> None:
        """Called by ``serve_forever`` between polls: drain refused sockets and close those that are done."""
        keep: collections.deque = collections.deque()
        now = time.monotonic()
        for request, deadline in self.refused:
            try:
                done = request.recv(65536) == b""
            except BlockingIOError:
                done = False
            except OSError:
                done = True
            if done or now > deadline:
                request.close()
            else:
                keep.append((request, deadline))
        self.refused = keep

    def server_close(self) -> None:
        super().server_close()
        while self.refused:
            self.refused.popleft()[0].close()

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return  # a client that left or stalled: normal for a preview, not worth a line in the terminal
        # anything else is a bug of ours: one line, so the run's status line and summary stay readable
        print(f"edgespike: preview: serving {client_address[0]} failed: {type(exc).__name__}: {exc}",
              file=sys.stderr, flush=True)


class PreviewServer:
    """Serve the latest published frame to any number of browsers; :meth:`close` ends every stream."""

    def __init__(self, bind: str = "127.0.0.1", port: int = 8080, quality: int = 80,
                 client_timeout: float = CLIENT_TIMEOUT, max_clients: int = MAX_CLIENTS) -> None:
        encoder = imageio.can_encode_jpeg()
        if encoder is None:
            raise UserError("--serve needs OpenCV or Pillow to encode JPEG: pip install 'edgespike[camera]'")
        self.quality = quality
        self.cond = threading.Condition()
        self.version = 0
        self.image = None
        self.jpeg: tuple[int, bytes] | None = None
        self.record: dict = {}
        self.closing = False
        self.clients = 0
        self.frames_sent = 0
        owner = self

        class Handler(_Handler):
            server_owner = owner
            timeout = client_timeout  # StreamRequestHandler applies it to the connection's socket

        try:
            self.httpd = _BoundedServer((bind, port), Handler, max_clients)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(f"cannot serve on {bind}:{port}: the port is in use (another edgespike run?); "
                                "choose another with --serve-port PORT, or --serve-port 0 for any free port") from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise UserError(f"cannot serve on {bind}:{port}: {bind} is not an address of this machine") from None
            raise UserError(f"cannot serve on {bind}:{port}: {exc.strerror or exc}") from None
        self.bind, self.port = bind, self.httpd.server_address[1]
        host = "localhost" if bind in ("127.0.0.1", "::1") else bind
        self.url = f"http://{host}:{self.port}/"
        self.description = f"preview {self.url} (JPEG by {encoder})"
        if bind not in ("127.0.0.1", "localhost", "::1"):
            self.description += f" - exposed on {bind}, no authentication"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                       name="edgespike-preview", daemon=True)
        self.thread.start()

    # --------------------------------------------------------------------------------------------- pipeline side

    def write(self, result) -> None:
        """Publish a frame (the side-by-side view is composed only while a client is connected)."""
        with self.cond:
            self.record = result.record
            if self.clients == 0 and self.version > 0:
                self._pending = result  # nobody watching: remember it, compose when someone arrives
                self.image = None
                return
            self._pending = None
            self.image = result.view("side")
            self.version += 1
            self.cond.notify_all()

    def close(self) -> None:
        """End every stream, stop serving and free the port; safe to call twice."""
        with self.cond:
            if self.closing:
                return
            self.closing = True
            self.cond.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    # ---------------------------------------------------------------------------------------------- client side

    _pending = None

    def current_jpeg(self) -> tuple[int, bytes] | None:
        """The latest frame as (version, JPEG bytes), encoding it at most once. Call with ``cond`` held."""
        if self.image is None and self._pending is not None:
            self.image = self._pending.view("side")
            self._pending = None
            self.version += 1
        if self.image is None:
            return self.jpeg
        if self.jpeg is None or self.jpeg[0] != self.version:
            self.jpeg = (self.version, imageio.encode_image(self.image, ".jpg", self.quality))
        return self.jpeg


class _Handler(BaseHTTPRequestHandler):
    server_owner: PreviewServer
    protocol_version = "HTTP/1.0"  # one request per connection: a stream ends by closing it

    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        pass  # the status line is the run's log; access logs would scroll it away

    def parse_request(self) -> bool:
        """Refuse HTTP/0.9 with an HTTP/1.0 505 at once (``http.server`` would wait for headers that never come
        and then answer without a status line)."""
        self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = self.requestline.split()
        if len(words) == 2 or (len(words) == 3 and words[2] == "HTTP/0.9"):
            self.command, self.request_version, self.close_connection = words[0], "HTTP/1.0", True
            self.send_error(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, None, "HTTP/0.9 is not supported: use HTTP/1.0 "
                            "or 1.1")
            return False
        return super().parse_request()

    def _send(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlparse(self.path)
        owner = self.server_owner
        if url.path in ("/", "/index.html"):
            self._send(200, "text/html; charset=utf-8", PAGE.encode())
        elif url.path == "/stats.json":
            with owner.cond:
                body = json.dumps(owner.record).encode()
            self._send(200, "application/json", body)
        elif url.path == "/frame.jpg":
            with owner.cond:
                owner.clients += 1
                try:
                    jpeg = owner.current_jpeg()
                finally:
                    owner.clients -= 1
            if jpeg is None:
                self._send(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", b"no frame yet\n")
            else:
                self._send(200, "image/jpeg", jpeg[1])
        elif url.path == "/stream.mjpg":
            try:
                limit = int(parse_qs(url.query).get("frames", ["0"])[0])
            except ValueError:
                self._send(400, "text/plain", b"frames must be an integer\n")
                return
            self._stream(owner, limit)
        else:
            self._send(404, "text/plain", b"not found: try / or /stream.mjpg\n")

    def _stream(self, owner: PreviewServer, limit: int) -> None:
        # a small send buffer: a viewer that stops reading fills it within a few frames, and then the client
        # timeout drops it instead of the kernel queueing megabytes for it
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SNDBUF)
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        sent, last = 0, -1
        with owner.cond:
            owner.clients += 1
        try:
            while not limit or sent < limit:
                with owner.cond:
                    # Wake at least every second so a closing server ends the stream promptly.
                    while not owner.closing:
                        jpeg = owner.current_jpeg()
                        if jpeg is not None and jpeg[0] != last:
                            break
                        owner.cond.wait(1.0)
                    if owner.closing:
                        break
                last, data = jpeg
                head = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n").encode()
                self.wfile.write(head + data + b"\r\n")
                self.wfile.flush()
                sent += 1
                with owner.cond:
                    owner.frames_sent += 1
        except (ConnectionError, TimeoutError):
            pass  # the browser went away
        finally:
            with owner.cond:
                owner.clients -= 1
