"""The framed serial link between the board-side Python and the accelerator's gateware: constants, CRC, frames.

This module is the single source of truth for the link: the gateware (:mod:`edgespike.rtl.link`) takes its
constants from here, and the firmware re-exports it as :mod:`edgespike.firmware.protocol`. It sits beside the
gateware (which imports nothing from the host side) and needs nothing but the standard library, so the firmware
imports it on a Raspberry Pi without Amaranth.

Frame, in both directions::

    0xA5 0x5A | type (1) | seq (1) | length (2, LE) | payload (length bytes) | CRC-16 (2, big-endian)

The CRC is CRC-16/CCITT-FALSE (polynomial 0x1021, initial 0xFFFF, no reflection, no final XOR) over type, seq,
length and payload. It is sent most significant byte first, so that running the CRC over the whole frame after
the sync bytes, CRC included, leaves a residue of zero: that is how the gateware checks it
(``amaranth.lib.crc`` ``match_detected``).

Exchanges (the host always waits for the answer before sending again)::

    host IDENT (no payload)              -> device ACK, then IDENT_REPLY (IDENT_LAYOUT below)
    host TILE  (h, w, h*w pixels)        -> device ACK, then RESULT ('R', h*w pixels, cycles, spikes, sops u32 LE)
    host WLOAD_BEGIN (fingerprint u32)   -> device ACK (the accelerator starts taking a weight image)
    host WLOAD_DATA (1..max_chunk bytes) -> device ACK once the chunk is in the accelerator
    host WLOAD_END (no payload)          -> device ACK, then RESULT ('K') once every weight is stored
    a frame with a bad CRC, bad length,  -> device NAK (payload: one reason byte); the host sends it again
    unknown type, bad tile shape, a
    chunk beyond the image, a TILE
    during a load, or that stops
    arriving mid-way

The ACK says "received intact, working on it", so the host can wait long for a result without mistaking a lost
frame for a slow tile. A request with the same type and ``seq`` as the last completed one is not carried out
again: the device answers it as before (a TILE's or WLOAD_END's stored RESULT, a chunk's ACK). That is how the host
recovers from a damaged answer without running a tile twice or storing a chunk twice.

Weights (gateware with ``CAP_LOAD_WEIGHTS``): the image is :meth:`edgespike.rtl.params.Plan.weight_image` of the
model (its length must equal IDENT's ``weight_bytes``), sent in chunks; after WLOAD_END the device reports the
fingerprint sent with WLOAD_BEGIN as its model, and ``weights`` = 2. Until then it reports the model it was built
for (``weights`` = 0: built in; on an iCE40 UP5K the built-in weights are not in the bitstream, SPRAM cannot be
preloaded, so a load is required) or, mid-load, ``weights`` = 1.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SYNC = b"\xa5\x5a"
HEADER_BYTES = 4  # type, seq, length (2)
OVERHEAD = len(SYNC) + HEADER_BYTES + 2

# Version of this framing; bump when frames or exchanges change. The gateware reports it and the firmware refuses a
# device speaking another one. 2: IDENT announces the worst-case cycles of a tile (the host's result deadline), a
# RESULT echoes its request's CRC, a new frame abandons running work.
LINK_VERSION = 2
# Version of the board top level (UART + link + accelerator); reported by IDENT.
GATEWARE_VERSION = 1
# the serial line speed of the firmware and of the iCEBreaker and OrangeCrab bitstreams unless chosen otherwise:
# 12 MHz / 4 (the UART's smallest divisor), and what the iCEBreaker's FT2232H (12 MHz / 4) and a Pi's PL011 (48 MHz
# UART clock / 16) make exactly. A board whose design clock is no multiple of 3 MHz has its own (BOARDS in
# edgespike.rtl.board): the ULX3S's shared engine at 12.5 MHz runs at 500 kbaud (12.5 MHz / 25)
DEFAULT_BAUD = 3_000_000

# frame types, host -> device
IDENT = 0x01
TILE = 0x02
WLOAD_BEGIN = 0x03
WLOAD_DATA = 0x04
WLOAD_END = 0x05
# frame types, device -> host
ACK = 0x80
NAK = 0x81
IDENT_REPLY = 0x82
RESULT = 0x83

TYPE_NAMES = {IDENT: "IDENT", TILE: "TILE", WLOAD_BEGIN: "WLOAD_BEGIN", WLOAD_DATA: "WLOAD_DATA",
              WLOAD_END: "WLOAD_END", ACK: "ACK", NAK: "NAK", IDENT_REPLY: "IDENT_REPLY", RESULT: "RESULT"}

# NAK reasons
NAK_CRC = 1  # the CRC did not match
NAK_FORMAT = 2  # bad length or type, a tile shape the device cannot take, a load out of order or too long
NAK_TIMEOUT = 3  # the frame stopped arriving mid-way (dropped bytes)
NAK_UART = 4  # a UART framing error (a damaged start or stop bit) mid-frame
NAK_REASONS = {NAK_CRC: "CRC mismatch", NAK_FORMAT: "refused (length, type, tile shape or load order)",
               NAK_TIMEOUT: "frame incomplete (timeout)", NAK_UART: "UART framing error"}

MAGIC = b"ESNN"
# IDENT_REPLY payload: magic, link version, gateware version, accelerator byte-protocol version, capabilities,
# model fingerprint (u32), tile_h, tile_w, halo, T, clock (Hz, u32), UART divisor (u16), lanes, size multiple,
# weight image bytes (u32), largest WLOAD_DATA chunk (u16), weights state (WEIGHTS_*), device (the fit-check
# key, 8 bytes ASCII, NUL padded), structure key (u32, see edgespike.firmware.accelerator.structure_key), the
# worst-case cycles of a whole tile (u32, saturated: every neuron spiking at every step; the announced cost the
# host's result deadline follows)
IDENT_LAYOUT = struct.Struct("<4sBBBBIBBBBIHBBIHB8sII")
CAP_LOAD_WEIGHTS = 0x01  # the weights, biases and thresholds can be loaded at run time
# the layer pipeline (bit-plane models): a TILE must be exactly IDENT's tile (the one region size the gateware is
# built for; its halo is IDENT's); the weights are RAM initialisers (no CAP_LOAD_WEIGHTS); the RESULT's counters
# are cycles, then spikes and synaptic operations as 0 (not counted)
CAP_PIPELINE = 0x02
PIPELINE_PROTOCOL_VERSION = 1  # IDENT's accelerator protocol field of a pipeline board
# weights state: built into the bitstream, being loaded, loaded at run time, or none (an iCE40 UP5K bitstream:
# SPRAM cannot be preloaded; the device refuses tiles until a load)
WEIGHTS_BUILT_IN, WEIGHTS_LOADING, WEIGHTS_LOADED, WEIGHTS_NONE = 0, 1, 2, 3

COUNTER_BYTES = 12  # cycles, spikes, sops: u32 little-endian each
# A RESULT ends with the CRC of the request it answers (as received, big-endian): a RESULT of another request -- a
# stale one after the sequence numbers wrapped, or a forged one -- does not match the host's request (link 2)
ECHO_BYTES = 2


def request_crc(frame: bytes) -> bytes:
    """The two CRC bytes of an encoded request frame: what its RESULT echoes."""
    return bytes(frame[-2:])


def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE of ``data`` (the check value of ``b"123456789"`` is 0x29B1)."""
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def encode(kind: int, seq: int, payload: bytes = b"") -> bytes:
    """One frame, ready to send."""
    if len(payload) > 0xFFFF:
        raise ValueError(f"payload of {len(payload)} bytes: a frame carries at most 65535")
    body = bytes([kind, seq & 0xFF]) + len(payload).to_bytes(2, "little") + bytes(payload)
    return SYNC + body + crc16(body).to_bytes(2, "big")


@dataclass(frozen=True)
class Frame:
    """A received frame whose CRC matched."""

    kind: int
    seq: int
    payload: bytes

    @property
    def name(self) -> str:
        return TYPE_NAMES.get(self.kind, f"0x{self.kind:02x}")


@dataclass(frozen=True)
class Ident:
    """What a device says it is (the IDENT_REPLY payload, decoded)."""

    link_version: int
    gateware_version: int
    protocol_version: int
    capabilities: int
    fingerprint: int
    tile: tuple[int, int]
    halo: int
    timesteps: int
    clock_hz: int
    divisor: int
    lanes: int
    multiple: int
    weight_bytes: int
    max_chunk: int
    weights: int
    device: str
    structure: int
    max_tile_cycles: int = 0

    @classmethod
    def decode(cls, payload: bytes) -> Ident:
        if len(payload) != IDENT_LAYOUT.size:
            raise ValueError(f"IDENT_REPLY of {len(payload)} bytes, expected {IDENT_LAYOUT.size}")
        (magic, link, gw, proto, caps, fp, th, tw, halo, t, clk, div, lanes, mult, wbytes, chunk, state,
         dev, structure, worst) = IDENT_LAYOUT.unpack(payload)
        if magic != MAGIC:
            raise ValueError(f"IDENT_REPLY magic {magic!r}, expected {MAGIC!r}")
        return cls(link, gw, proto, caps, fp, (th, tw), halo, t, clk, div, lanes, mult, wbytes, chunk, state,
                   dev.rstrip(b"\0").decode("ascii", "replace"), structure, worst)

    def encode(self) -> bytes:
        return IDENT_LAYOUT.pack(MAGIC, self.link_version, self.gateware_version, self.protocol_version,
                                 self.capabilities, self.fingerprint, self.tile[0], self.tile[1], self.halo,
                                 self.timesteps, self.clock_hz, self.divisor, self.lanes, self.multiple,
                                 self.weight_bytes, self.max_chunk, self.weights, self.device.encode("ascii"),
                                 self.structure, min(self.max_tile_cycles, 0xFFFFFFFF))


class Parser:
    """Finds frames in a byte stream: hunts for the sync bytes, checks length and CRC, skips garbage.

    Feed it bytes as they arrive; :meth:`feed` returns the complete frames found. Bytes that are not part of a
    valid frame are skipped (counted in :attr:`skipped`); a frame whose CRC fails is dropped (counted in
    :attr:`bad_crc`) and the hunt restarts one byte after its sync, so a sync pattern inside a damaged frame's
    payload is still found.

    Parameters
    ----------
    max_payload : int
        Longest payload accepted; a header announcing more is treated as garbage (a damaged length byte must not
        make the parser wait for 64 kB).
    """

    def __init__(self, max_payload: int):
        self.max_payload = max_payload
        self.buf = bytearray()
        self.skipped = 0
        self.bad_crc = 0

    def feed(self, data: bytes) -> list[Frame]:
        self.buf += data
        frames = []
        while True:
            start = self.buf.find(SYNC)
            if start < 0:
                keep = 1 if self.buf.endswith(SYNC[:1]) else 0  # a sync split across two reads
                self.skipped += len(self.buf) - keep
                del self.buf[:len(self.buf) - keep]
                return frames
            self.skipped += start
            del self.buf[:start]
            if len(self.buf) < len(SYNC) + HEADER_BYTES:
                return frames
            length = int.from_bytes(self.buf[4:6], "little")
            if length > self.max_payload:
                self.skipped += 1
                del self.buf[:1]
                continue
            end = len(SYNC) + HEADER_BYTES + length + 2
            if len(self.buf) < end:
                return frames
            body = bytes(self.buf[2:end - 2])
            if crc16(body) != int.from_bytes(self.buf[end - 2:end], "big"):
                self.bad_crc += 1
                del self.buf[:1]
                continue
            frames.append(Frame(body[0], body[1], body[HEADER_BYTES:]))
            del self.buf[:end]


# what ``edgespike.firmware.protocol`` re-exports: every public name of this module
__all__ = [name for name in dir() if not name.startswith("_") and name not in ("annotations", "dataclass", "struct")]
