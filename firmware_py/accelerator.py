"""The accelerator on the other end of a serial line: identify it, check it runs our model, send tiles, get results.

Runs on the edge board (a Raspberry Pi) with numpy and pyserial only. The line is any pyserial URL: a real port
(``/dev/ttyUSB0``), ``socket://127.0.0.1:7007`` (the simulation server, ``edgespike fpga serve-sim``) or
``loop://``. Every answer is CRC-checked, length-checked and matched to its request's sequence number; a damaged,
missing or refused exchange is retried, and when the retries run out :class:`LinkError` says what went wrong. A
wrong image is never returned: either every byte of a result passed those checks or the call raises.
The device is the shared engine (IF models: halo'd tiles up to its tile size, weights loadable) or a layer pipeline
(bit-plane models, IDENT ``CAP_PIPELINE``: regions of exactly its size, weights built in); :meth:`Accelerator.denoise`
cuts frames for either.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field

import numpy as np

from edgespike.firmware import protocol as P
from edgespike.firmware.tiling import TileResult, regions, tiles


class LinkError(Exception):
    """The device did not give a valid answer (after retries), or answered something unusable."""


class DeviceMismatch(LinkError):
    """The device runs other gateware, another link version, or another model than the one asked for."""


def model_fingerprint(model) -> int:
    """CRC-32 of the model's ``.esnn`` serialisation: what a bitstream reports as the model it was built for."""
    from edgespike.fileformat import to_bytes

    return zlib.crc32(to_bytes(model))


# Plan fields built into the gateware (everything but the weights, biases and thresholds a load replaces)
_PLAN_KEYS = ("tile", "halo", "timesteps", "encoder", "lanes", "mbits", "count_bits", "uwd_bits", "readout_bits",
              "shift", "residual")
_LAYER_KEYS = ("kind", "op", "cin", "cout", "k", "stride", "pad", "reset", "leak", "v_init", "bit_serial",
               "level_in", "level_out", "narrow", "groups", "wbase", "pbase")


def structure_key(plan) -> int:
    """CRC-32 of what a bitstream fixes about a model: geometry, widths, neuron kinds, read-out, tile.

    Two models with the same key differ only in what a weight load replaces, so one can be loaded into a bitstream
    built for the other. ``plan`` is an :class:`edgespike.fpga.params.Plan` (read by attribute only).
    """
    parts = [repr([getattr(plan, k) for k in _PLAN_KEYS]),
             repr([(t.quantity, t.multiplier) for t in plan.terms])]
    parts += [repr([getattr(lp, k) for k in _LAYER_KEYS]) for lp in plan.layers]
    return zlib.crc32("|".join(parts).encode())


@dataclass
class LinkStats:
    """What the link went through: requests, retries and their causes."""

    requests: int = 0
    retries: int = 0
    naks: dict[str, int] = field(default_factory=dict)
    timeouts: int = 0
    bad_frames: int = 0  # answers whose CRC failed (counted by the parser) or whose content was unusable

    def note_nak(self, reason: int) -> None:
        name = P.NAK_REASONS.get(reason, f"reason {reason}")
        self.naks[name] = self.naks.get(name, 0) + 1


class Accelerator:
    """A board (or a simulated one) running the edgespike gateware, behind a serial line.

    Parameters
    ----------
    port : str or serial-like
        A pyserial URL or device path, an SPI device (``/dev/spidev0.0``: the board's SPI link,
        :class:`~edgespike.firmware.spi.SPILink`), or an open object with ``read``, ``write`` and ``close``.
    baud : int
        Line speed for a real serial port (ignored by ``socket://``, ``loop://`` and SPI).
    ack_timeout : float
        Seconds to wait for the ACK (or NAK) of a request before sending it again.
    result_timeout : float
        Seconds to wait for a RESULT after its ACK when the device announces no cost (a simulated device, whose
        IDENT clock is 0: minutes per tile). A real board announces the worst case of a tile (IDENT
        ``max_tile_cycles`` at ``clock_hz``): the wait is then :meth:`result_deadline`, that cost plus the RESULT's
        transfer plus a bounded margin, whatever ``result_timeout`` says.
    retries : int
        Times a request is sent again before :class:`LinkError`.
    spi_hz : int, optional
        SCLK of an SPI port (default :data:`edgespike.firmware.spi.DEFAULT_HZ`, 16 MHz asked, 15.625 MHz on a Pi 4).

    Examples
    --------
    >>> with Accelerator("/dev/ttyUSB0", baud=500_000) as acc:   # doctest: +SKIP
    ...     acc.check_model(model)
    ...     out = acc.denoise(frame)
    """

    def __init__(self, port, baud: int = P.DEFAULT_BAUD, ack_timeout: float = 1.0, result_timeout: float = 30.0,
                 retries: int = 4, spi_hz: int | None = None):
        from edgespike.firmware.spi import DEFAULT_HZ, SPILink, is_spi_port

        if is_spi_port(port):
            self.port = SPILink(port.removeprefix("spi:"), hz=spi_hz or DEFAULT_HZ)
        elif isinstance(port, str):
            try:
                import serial
            except ImportError:
                raise LinkError("pyserial is not installed: pip install 'edgespike[hw]'") from None
            try:
                self.port = serial.serial_for_url(port, baudrate=baud, timeout=0.02)
            except (serial.SerialException, ValueError, OSError) as exc:
                raise LinkError(f"cannot open {port}: {exc}") from None
        else:
            self.port = port
        self.name = port if isinstance(port, str) else type(port).__name__
        self.baud = baud
        self.ack_timeout = ack_timeout
        self.result_timeout = result_timeout
        self.retries = retries
        self.stats = LinkStats()
        self.ident: P.Ident | None = None
        self._seq = 0
        # until IDENT tells the tile size, accept the largest answer any tile could have
        self.parser = P.Parser(max_payload=1 + 255 * 255 + P.COUNTER_BYTES + P.ECHO_BYTES)

    def __enter__(self) -> Accelerator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.port.close()

    # --- exchanges ---

    def _read_frames(self) -> list[P.Frame]:
        data = self.port.read(4096)  # returns after the port's short timeout when nothing comes
        if not data:
            return []
        crc_before = self.parser.bad_crc
        frames = self.parser.feed(data)
        self.stats.bad_frames += self.parser.bad_crc - crc_before
        return frames

    # the margin on top of the announced work: the host's and the line's own delays (scheduling, USB frames)
    MARGIN_S = 0.25
    MARGIN_FRACTION = 0.05

    def result_deadline(self, kind: int) -> float:
        """Seconds to wait for the answer after a request's ACK: the device's announced worst case for the work
        (a TILE: IDENT ``max_tile_cycles`` / ``clock_hz``; a weight load's end: nothing to compute) plus the
        longest answer's transfer at the line's baud rate, plus ``MARGIN_FRACTION`` of that and ``MARGIN_S``.
        Falls back to ``result_timeout`` when the device announces no clock (a simulation)."""
        ident = self.ident
        if ident is None or not ident.clock_hz:
            return self.result_timeout
        work = ident.max_tile_cycles / ident.clock_hz if kind == P.TILE else 0.0
        th, tw = ident.tile
        from edgespike.firmware.spi import SPILink

        per_byte = self.port.seconds_per_byte if isinstance(self.port, SPILink) else 10 / self.baud
        transfer = (P.OVERHEAD + 1 + th * tw + P.COUNTER_BYTES + P.ECHO_BYTES) * per_byte
        return (work + transfer) * (1 + self.MARGIN_FRACTION) + self.MARGIN_S

    def _longest_answer(self, kind: int, payload: bytes) -> int:
        """The longest payload an answer to this request can have (a NAK's 1 byte at least)."""
        if kind == P.IDENT:
            return P.IDENT_LAYOUT.size
        if kind == P.TILE:
            return 1 + payload[0] * payload[1] + P.COUNTER_BYTES + P.ECHO_BYTES
        return 1 + P.ECHO_BYTES  # WLOAD_*: ACK, NAK, or RESULT 'K'

    def _request(self, kind: int, payload: bytes, answer: int, check) -> P.Frame:
        """Send a request until a checked answer comes back; ``check(frame)`` returns a problem or None."""
        # a header whose damaged length is longer than any answer to this request is garbage at once, so the
        # parser never waits for the bytes of a frame that cannot be (it would be deaf until they came)
        self.parser.max_payload = self._longest_answer(kind, payload)
        self._seq = (self._seq + 1) & 0xFF
        seq = self._seq
        frame = P.encode(kind, seq, payload)
        self.stats.requests += 1
        problems: list[str] = []
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats.retries += 1
            self.port.write(frame)
            acked = False
            deadline = time.monotonic() + self.ack_timeout
            outcome = None
            while outcome is None:
                if time.monotonic() >= deadline:
                    self.stats.timeouts += 1
                    outcome = "no RESULT" if acked else "no ACK"
                    break
                damaged = self.parser.bad_crc
                frames = self._read_frames()
                if self.parser.bad_crc != damaged and not frames:
                    # an answer arrived damaged: ask again now (a TILE with the same seq is not run twice)
                    outcome = "damaged answer (CRC)"
                    break
                for f in frames:
                    if f.kind == P.NAK:  # a NAK's seq may itself be damaged: any NAK means "send it again"
                        reason = f.payload[0] if f.payload else 0
                        self.stats.note_nak(reason)
                        outcome = f"NAK ({P.NAK_REASONS.get(reason, reason)})"
                        break
                    if f.seq != seq:
                        continue  # a late answer to an earlier request, or our own echo
                    if f.kind == P.ACK and answer == P.ACK:
                        return f
                    if f.kind == P.ACK and not acked:
                        acked = True
                        deadline = time.monotonic() + self.result_deadline(kind)
                    elif f.kind == answer:
                        if answer == P.RESULT and f.payload[-P.ECHO_BYTES:] != P.request_crc(frame):
                            # a RESULT of another request (stale after a wrap of the sequence numbers, or forged):
                            # the device's own answer to this one may still come
                            self.stats.bad_frames += 1
                            continue
                        problem = check(f)
                        if problem is None:
                            return f
                        self.stats.bad_frames += 1
                        outcome = problem
                        break
            problems.append(outcome)
        tried = self.retries + 1
        raise LinkError(f"{self.name}: no valid answer to {P.TYPE_NAMES[kind]} after {tried} attempts "
                        f"({', '.join(problems)}); is the board programmed and the wiring/baud right?")

    def identify(self) -> P.Ident:
        """Ask the device what it is (this also makes it forget any stored result)."""

        def check(f: P.Frame):
            try:
                P.Ident.decode(f.payload)
            except ValueError as exc:
                return str(exc)
            return None

        f = self._request(P.IDENT, b"", P.IDENT_REPLY, check)
        self.ident = P.Ident.decode(f.payload)
        return self.ident

    def check_versions(self) -> P.Ident:
        """Identify the device and refuse one speaking another link version or running other gateware."""
        ident = self.identify()
        if ident.link_version != P.LINK_VERSION:
            raise DeviceMismatch(f"{self.name}: the device speaks link version {ident.link_version}, this firmware "
                                 f"speaks {P.LINK_VERSION}: update edgespike on one side")
        if ident.gateware_version != P.GATEWARE_VERSION:
            raise DeviceMismatch(f"{self.name}: the device runs gateware version {ident.gateware_version}, this "
                                 f"firmware expects {P.GATEWARE_VERSION}: rebuild and flash the bitstream "
                                 "(edgespike fpga build)")
        return ident

    def check_model(self, model) -> P.Ident:
        """Make sure the device computes ``model``, loading its weights if the device can and must.

        Nothing is sent when the device already runs this model (built in or loaded earlier: same fingerprint).
        Otherwise, gateware with ``CAP_LOAD_WEIGHTS`` gets the model's weight image (:meth:`load_weights`), which
        needs the model to have the structure the bitstream was built for; gateware without it is refused with
        :class:`DeviceMismatch`.
        """
        ident = self.check_versions()
        want = model_fingerprint(model)
        if ident.timesteps != model.timesteps:
            raise DeviceMismatch(f"{self.name}: the device runs T={ident.timesteps}, the model T={model.timesteps}")
        if ident.fingerprint == want and ident.weights in (P.WEIGHTS_BUILT_IN, P.WEIGHTS_LOADED):
            return ident
        if not ident.capabilities & P.CAP_LOAD_WEIGHTS:
            raise DeviceMismatch(f"{self.name}: the bitstream was built for model {ident.fingerprint:08x}, this model "
                                 f"is {want:08x}: build one for it (edgespike fpga build --model M) and flash it")
        return self.load_weights(model)

    def load_weights(self, model) -> P.Ident:
        """Send ``model``'s weights, biases and thresholds; the device then reports its fingerprint as its model.

        Needs :mod:`edgespike.fpga.params` (the ``[hw]`` extra) to lay out the weight image as the gateware reads
        it. Refuses, with :class:`DeviceMismatch`, a model whose structure (layers, channels, widths, read-out)
        differs from the one the bitstream was built for.
        """
        ident = self.ident or self.check_versions()
        if not ident.capabilities & P.CAP_LOAD_WEIGHTS:
            raise DeviceMismatch(f"{self.name}: the device's weights are built into its bitstream (no run-time "
                                 "loading): build one for this model (edgespike fpga build --model M) and flash it")
        try:
            from edgespike.fpga.params import FitError, plan
        except ImportError:
            raise LinkError("loading weights needs edgespike.rtl: pip install 'edgespike[hw]'") from None
        try:
            p = plan(model, device=ident.device, tile=ident.tile, lanes=ident.lanes)
        except (FitError, KeyError, ValueError) as exc:
            raise DeviceMismatch(f"{self.name}: this model cannot run on the device's gateware: {exc}") from None
        if structure_key(p) != ident.structure:
            raise DeviceMismatch(f"{self.name}: this model's structure (layers, channels, membrane widths, read-out) "
                                 "differs from the one the bitstream was built for, so its weights cannot be loaded: "
                                 "build a bitstream for it (edgespike fpga build --model M)")
        image = p.weight_image()
        if len(image) != ident.weight_bytes:
            raise DeviceMismatch(f"{self.name}: weight image of {len(image)} bytes, the device takes "
                                 f"{ident.weight_bytes}")
        fp = model_fingerprint(model)
        self._request(P.WLOAD_BEGIN, fp.to_bytes(4, "little"), P.ACK, lambda f: None)
        for i in range(0, len(image), ident.max_chunk):
            self._request(P.WLOAD_DATA, image[i:i + ident.max_chunk], P.ACK, lambda f: None)

        def stored(f: P.Frame):
            return None if f.payload[:1] == b"K" and len(f.payload) == 1 + P.ECHO_BYTES else \
                f"weight load answered {f.payload[:4]!r}, expected b'K'"

        self._request(P.WLOAD_END, b"", P.RESULT, stored)
        ident = self.identify()
        if ident.fingerprint != fp or ident.weights != P.WEIGHTS_LOADED:
            raise LinkError(f"{self.name}: after the weight load the device reports model {ident.fingerprint:08x} "
                            f"(state {ident.weights}), expected {fp:08x} loaded")
        return ident

    @property
    def pipeline(self) -> bool:
        """The device is a layer pipeline (IDENT ``CAP_PIPELINE``): it runs regions of exactly its tile size."""
        return bool(self.ident and self.ident.capabilities & P.CAP_PIPELINE)

    def run_tile(self, tile: np.ndarray) -> TileResult:
        """Run one uint8 tile (at most the device's tile size; exactly it on a layer pipeline) and return its
        output and counters (a layer pipeline counts cycles only: spikes and synaptic operations are 0)."""
        if self.ident is None:
            self.check_versions()
        if self.ident.weights in (P.WEIGHTS_NONE, P.WEIGHTS_LOADING):
            raise LinkError(f"{self.name}: the device has no complete weights (state {self.ident.weights}): "
                            "call check_model(model) first, which loads them")
        tile = np.asarray(tile)
        if tile.dtype != np.uint8 or tile.ndim != 2:
            raise ValueError(f"a tile is a 2-D uint8 array, got {tile.dtype} with shape {tile.shape}")
        h, w = tile.shape
        th, tw = self.ident.tile
        if not (1 <= h <= th and 1 <= w <= tw):
            raise ValueError(f"tile {h}x{w} does not fit the device's {th}x{tw}")
        if self.pipeline and (h, w) != (th, tw):
            raise ValueError(f"tile {h}x{w}: the device's layer pipeline runs regions of exactly {th}x{tw}")
        if h % self.ident.multiple or w % self.ident.multiple:
            raise ValueError(f"tile {h}x{w}: sides must be multiples of {self.ident.multiple} for this model")
        n = h * w
        want = 1 + n + P.COUNTER_BYTES + P.ECHO_BYTES

        def check(f: P.Frame):
            if len(f.payload) != want:
                return f"RESULT of {len(f.payload)} bytes, expected {want}"
            if f.payload[0] != ord("R"):
                return f"RESULT tagged {f.payload[0]:#x}, expected 'R'"
            return None

        f = self._request(P.TILE, bytes([h, w]) + tile.tobytes(), P.RESULT, check)
        out = np.frombuffer(f.payload, np.uint8, n, 1).reshape(h, w).copy()
        cycles, spikes, sops = (int.from_bytes(f.payload[1 + n + 4 * i:5 + n + 4 * i], "little") for i in range(3))
        return TileResult(out, cycles, spikes, sops)

    def denoise(self, frame: np.ndarray) -> tuple[np.ndarray, list[TileResult]]:
        """A whole uint8 frame as halo'd tiles, stitched; returns the frame and each tile's result.

        A layer pipeline (IDENT ``CAP_PIPELINE``) gets regions of exactly its size with the announced halo
        (:func:`~edgespike.firmware.tiling.regions`: vertical stripes when the frame is wider than the region,
        bands when it is taller); a frame smaller than a region is refused with :class:`DeviceMismatch`. Its
        frame is first padded to the model's size multiple by repeating the last row and column, and the result
        cropped back, as the runtime does (``edgespike.frames.pad_to_multiple``).
        """
        if self.ident is None:
            self.check_versions()
        frame = np.asarray(frame, np.uint8)
        if self.pipeline:
            h, w = frame.shape
            mult = self.ident.multiple
            out, results = self._stitch(np.pad(frame, ((0, -h % mult), (0, -w % mult)), mode="edge"))
            return out[:h, :w], results
        return self._stitch(frame)

    def _stitch(self, frame: np.ndarray) -> tuple[np.ndarray, list[TileResult]]:
        out = np.zeros_like(frame)
        results = []
        try:
            if self.pipeline:
                cuts = list(regions(frame.shape, self.ident.tile, self.ident.halo))
            else:
                cuts = list(tiles(frame.shape, self.ident.tile, self.ident.halo, self.ident.multiple))
        except ValueError as exc:
            raise DeviceMismatch(f"{self.name}: the device's {exc}") from None
        for (y0, y1, x0, x1), (cy0, cy1, cx0, cx1) in cuts:
            res = self.run_tile(np.ascontiguousarray(frame[y0:y1, x0:x1]))
            out[cy0:cy1, cx0:cx1] = res.out[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
            results.append(res)
        return out, results
