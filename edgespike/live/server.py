"""The MJPEG-over-HTTP preview for headless boards: ``noisy | denoised`` with a stats overlay, in any browser.

``http.server.ThreadingHTTPServer`` on 127.0.0.1 by default (``--bind 0.0.0.0`` exposes it to the network).
Routes: ``/`` a page showing the stream and live stats, ``/stream.mjpg`` the ``multipart/x-mixed-replace``
stream (``?frames=N`` ends it after N frames: handy for scripts), ``/frame.jpg`` the latest frame, ``/stats.json``
the latest per-frame record. A frame is JPEG-encoded once, on the first request for it, and only while someone
is watching, so an idle server costs the pipeline one reference swap per frame.
"""

from __future__ import annotations

import errno
import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from edgespike.errors import UserError
from edgespike.live import imageio

BOUNDARY = "edgespikeframe"
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


class PreviewServer:
    """Serve the latest published frame to any number of browsers; :meth:`close` ends every stream."""

    def __init__(self, bind: str = "127.0.0.1", port: int = 8080, quality: int = 80) -> None:
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

        try:
            self.httpd = ThreadingHTTPServer((bind, port), Handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(f"cannot serve on {bind}:{port}: the port is in use (another edgespike run?); "
                                "choose another with --serve PORT, or --serve 0 for any free port") from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise UserError(f"cannot serve on {bind}:{port}: {bind} is not an address of this machine") from None
            raise UserError(f"cannot serve on {bind}:{port}: {exc.strerror or exc}") from None
        self.httpd.daemon_threads = True
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
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the browser went away
        finally:
            with owner.cond:
                owner.clients -= 1
