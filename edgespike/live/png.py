"""A minimal PNG reader and writer on numpy + zlib, so the demo and PNG output work on a bare install.

Pillow or OpenCV are used when present (see :mod:`edgespike.live.imageio`); this module is the fallback that keeps
``edgespike run`` with no arguments working with numpy alone. It reads non-interlaced 8- and 16-bit grey, grey +
alpha, RGB, RGBA and 8-bit palette images, and writes 8-bit grey or RGB.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


class PNGError(ValueError):
    """A file this reader cannot decode; the message says why in one line."""


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode(img: np.ndarray, level: int = 1) -> bytes:
    """PNG bytes of an H x W (grey) or H x W x 3 (RGB) uint8 image; filter 0 on every row (fast, larger)."""
    a = np.ascontiguousarray(img, dtype=np.uint8)
    if a.ndim == 2:
        ctype, rows = 0, a
    elif a.ndim == 3 and a.shape[2] == 3:
        ctype, rows = 2, a.reshape(a.shape[0], -1)
    else:
        raise PNGError(f"cannot write an image of shape {a.shape} as PNG")
    h, w = a.shape[:2]
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()
    ihdr = struct.pack(">IIBBBBB", w, h, 8, ctype, 0, 0, 0)
    return SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw, level)) + _chunk(b"IEND", b"")


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _unfilter(data: bytes, h: int, stride: int, bpp: int) -> np.ndarray:
    if len(data) < h * (stride + 1):
        raise PNGError("image data is truncated")
    rows = np.frombuffer(data, np.uint8, h * (stride + 1)).reshape(h, stride + 1)
    out = np.zeros((h, stride), np.uint8)
    prev = np.zeros(stride, np.uint8)
    for y in range(h):
        f, line = rows[y, 0], rows[y, 1:]
        if f == 0:
            cur = line.copy()
        elif f == 1:  # Sub: a running sum per byte lane, modulo 256
            cur = (np.cumsum(line.reshape(-1, bpp).astype(np.int64), axis=0) % 256).astype(np.uint8).ravel()
        elif f == 2:
            cur = line + prev
        elif f in (3, 4):  # Average and Paeth depend on the byte just decoded: sequential by nature
            cur = bytearray(stride)
            ln, pv = line.tolist(), prev.tolist()
            for i in range(stride):
                left = cur[i - bpp] if i >= bpp else 0
                if f == 3:
                    cur[i] = (ln[i] + ((left + pv[i]) >> 1)) & 255
                else:
                    ul = pv[i - bpp] if i >= bpp else 0
                    cur[i] = (ln[i] + _paeth(left, pv[i], ul)) & 255
            cur = np.frombuffer(bytes(cur), np.uint8)
        else:
            raise PNGError(f"unknown row filter {f}")
        out[y] = cur
        prev = out[y]
    return out


def decode(data: bytes) -> np.ndarray:
    """Decode PNG bytes to uint8: H x W (grey), H x W x 3 (RGB) or H x W x 4 (RGBA)."""
    if not data.startswith(SIGNATURE):
        raise PNGError("not a PNG file")
    pos, idat, palette, hdr = 8, [], None, None
    while pos + 8 <= len(data):
        (n,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            hdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            palette = np.frombuffer(body, np.uint8).reshape(-1, 3)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if hdr is None or not idat:
        raise PNGError("PNG without header or image data (truncated?)")
    w, h, depth, ctype, _, _, interlace = hdr
    if interlace:
        raise PNGError("interlaced PNG is not supported without Pillow or OpenCV")
    if ctype not in _CHANNELS or depth not in (8, 16) or (ctype == 3 and depth != 8):
        raise PNGError(f"PNG colour type {ctype} at {depth} bits is not supported without Pillow or OpenCV")
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as exc:
        raise PNGError(f"corrupt image data ({exc})") from None
    ch = _CHANNELS[ctype]
    bpp = ch * depth // 8
    a = _unfilter(raw, h, w * bpp, bpp)
    if depth == 16:
        a16 = a.reshape(h, w * ch, 2).astype(np.uint32)
        a = (((a16[..., 0] << 8) | a16[..., 1]) * 255 + 32767) // 65535
        a = a.astype(np.uint8)
    a = a.reshape(h, w, ch)
    if ctype == 3:
        if palette is None:
            raise PNGError("palette image without a palette")
        return palette[a[..., 0]]
    if ctype == 4:  # grey + alpha: drop alpha
        return a[..., 0]
    return a[..., 0] if ch == 1 else a
