"""A minimal PNG reader and writer in numpy + zlib, so the core package needs no imaging library.

The runtime and the bundled sample must work after a plain ``pip install .`` (numpy only), and the benchmark
sets are PNGs, so reading PNG is core. Pillow (in the ``[dev]`` extra) is used instead when it is installed and for
every other format (JPEG, BMP, TIFF ...); both paths are tested to give identical arrays.

Supported here: non-interlaced PNG, colour types grey / grey+alpha / RGB / RGBA / palette, bit depths 1..16, all
five row filters. Images come back as numpy arrays in their own dtype and channels (uint8 or uint16,
``H x W`` or ``H x W x C``); converting to an 8-bit grey frame is :func:`edgespike.frames.to_uint8`'s job, which
says what it changed.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Samples per pixel of each colour type (3 = palette index).
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
MAX_PIXELS = 2**28


class PNGError(ValueError):
    """A file this reader cannot decode; the message names the file and the reason."""


def _chunks(data: bytes, name: str):
    pos = len(SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if len(body) != length or pos + 12 + length > len(data):
            raise PNGError(f"{name}: truncated PNG chunk {kind!r}")
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        if zlib.crc32(kind + body) != crc:
            raise PNGError(f"{name}: PNG chunk {kind!r} fails its CRC (file damaged)")
        yield kind, body
        pos += 12 + length
        if kind == b"IEND":
            return
    raise PNGError(f"{name}: PNG ends without an IEND chunk (truncated)")


def _paeth_row(cur: np.ndarray, prev: np.ndarray, bpp: int) -> None:
    """Undo the Paeth filter in place (sequential along the row: each byte predicts from decoded neighbours)."""
    c_ = [int(v) for v in cur]
    p_ = [int(v) for v in prev]
    for i in range(len(c_)):
        a = c_[i - bpp] if i >= bpp else 0
        b = p_[i]
        c = p_[i - bpp] if i >= bpp else 0
        p = a + b - c
        pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
        pred = a if (pa <= pb and pa <= pc) else (b if pb <= pc else c)
        c_[i] = (c_[i] + pred) & 0xFF
    cur[:] = c_


def _average_row(cur: np.ndarray, prev: np.ndarray, bpp: int) -> None:
    c_ = [int(v) for v in cur]
    p_ = [int(v) for v in prev]
    for i in range(len(c_)):
        a = c_[i - bpp] if i >= bpp else 0
        c_[i] = (c_[i] + ((a + p_[i]) >> 1)) & 0xFF
    cur[:] = c_


def _unfilter(raw: np.ndarray, height: int, stride: int, bpp: int, name: str) -> np.ndarray:
    rows = raw.reshape(height, stride + 1)
    filters = rows[:, 0]
    out = rows[:, 1:].copy()
    prev = np.zeros(stride, np.uint8)
    for y in range(height):
        f = filters[y]
        cur = out[y]
        if f == 1:  # Sub: a running sum per byte lane, mod 256 (stride is a whole number of pixels here)
            cur[:] = np.cumsum(cur.reshape(-1, bpp), axis=0, dtype=np.uint32).astype(np.uint8).reshape(-1)
        elif f == 2:
            cur += prev
        elif f == 3:
            _average_row(cur, prev, bpp)
        elif f == 4:
            _paeth_row(cur, prev, bpp)
        elif f != 0:
            raise PNGError(f"{name}: unknown PNG row filter {int(f)}")
        prev = cur
    return out


def decode_png(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode PNG bytes into a uint8/uint16 array (``H x W`` or ``H x W x C``); see the module docstring."""
    if not data.startswith(SIGNATURE):
        raise PNGError(f"{name}: not a PNG file")
    header = None
    palette = None
    trns = None
    idat = []
    for kind, body in _chunks(data, name):
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            palette = np.frombuffer(body, np.uint8).reshape(-1, 3)
        elif kind == b"tRNS":
            trns = body
        elif kind == b"IDAT":
            idat.append(body)
    if header is None:
        raise PNGError(f"{name}: PNG without IHDR")
    width, height, depth, ctype, _comp, _filt, interlace = header
    if ctype not in CHANNELS or depth not in (1, 2, 4, 8, 16):
        raise PNGError(f"{name}: unsupported PNG colour type {ctype} / bit depth {depth}")
    if interlace:
        raise PNGError(f"{name}: interlaced PNG; install Pillow (pip install pillow) to read it")
    if not (0 < width and 0 < height and width * height <= MAX_PIXELS):
        raise PNGError(f"{name}: implausible PNG size {width}x{height}")
    channels = CHANNELS[ctype]
    bits = depth * channels
    stride = (width * bits + 7) // 8
    bpp = max(1, bits // 8)
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as exc:
        raise PNGError(f"{name}: PNG image data is corrupt ({exc})") from None
    if len(raw) < height * (stride + 1):
        raise PNGError(f"{name}: PNG image data is truncated")
    rows = _unfilter(np.frombuffer(raw[: height * (stride + 1)], np.uint8), height, stride, bpp, name)
    if depth == 16:
        img = rows.view(">u2").astype(np.uint16).reshape(height, width, channels)
    elif depth == 8:
        img = rows.reshape(height, width, channels)
    else:  # 1, 2 or 4 bits: unpack, and scale grey to 0..255 (palette indices stay indices)
        unpacked = np.unpackbits(rows, axis=1).reshape(height, -1, depth)
        weights = (1 << np.arange(depth - 1, -1, -1)).astype(np.uint8)
        img = (unpacked * weights).sum(axis=2, dtype=np.uint8)[:, :width]
        if ctype == 0:
            img = (img.astype(np.uint16) * 255 // ((1 << depth) - 1)).astype(np.uint8)
        img = img.reshape(height, width, 1)
    if ctype == 3:
        if palette is None:
            raise PNGError(f"{name}: palette PNG without a PLTE chunk")
        idx = img[..., 0]
        if idx.max(initial=0) >= len(palette):
            raise PNGError(f"{name}: palette index out of range")
        img = palette[idx]
        if trns is not None:  # palette transparency: one alpha byte per entry, 255 for the rest
            alpha = np.full(len(palette), 255, np.uint8)
            alpha[: len(trns)] = np.frombuffer(trns[: len(palette)], np.uint8)
            img = np.concatenate([img, alpha[idx][..., None]], axis=2)
    return img[..., 0] if img.shape[2] == 1 else img


def read_png(path) -> np.ndarray:
    """Read a PNG file with the pure-numpy decoder."""
    path = Path(path)
    return decode_png(path.read_bytes(), str(path))


def encode_png(img: np.ndarray, level: int = 9) -> bytes:
    """Encode a uint8 ``H x W`` (grey) or ``H x W x 3`` (RGB) array as PNG bytes (filter 'Up' on every row)."""
    a = np.ascontiguousarray(img)
    if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
        raise ValueError(f"encode_png takes uint8 H x W or H x W x 3, got {a.dtype} {a.shape}")
    h, w = a.shape[:2]
    ctype = 0 if a.ndim == 2 else 2
    rows = a.reshape(h, -1)
    # 'Up' (filter 2) compresses smooth natural images better than none, and is one vectorised subtraction.
    up = rows.copy()
    up[1:] -= rows[:-1]
    raw = np.concatenate([np.full((h, 1), 2, np.uint8), up], axis=1).tobytes()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, ctype, 0, 0, 0)
    return SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, level)) + chunk(b"IEND", b"")


def write_png(path, img: np.ndarray) -> None:
    """Write a uint8 grey or RGB image as PNG (see :func:`encode_png`)."""
    Path(path).write_bytes(encode_png(img))
