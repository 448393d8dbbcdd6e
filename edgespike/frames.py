"""Frames as the semantics see them: checking, size padding, and the colour policy.

A model computes on one uint8 grayscale plane. Colour frames are denoised on luma (BT.601 Y, integer), the chroma
planes passed through; see ``docs/SEMANTICS.md`` section "Frames".
"""

from __future__ import annotations

import numpy as np


class FrameError(ValueError):
    """A frame the model cannot take (wrong dtype, rank or size). The message says what to do."""


MAX_SIDE = 16384


def check_frame(frame) -> np.ndarray:
    """Return ``frame`` as a 2-D uint8 array, or raise :class:`FrameError` naming the problem."""
    if not isinstance(frame, np.ndarray):
        raise FrameError(f"a frame must be a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise FrameError(f"a frame must be uint8 (0..255), got {frame.dtype}; convert it, e.g. with to_uint8()")
    if frame.ndim != 2:
        raise FrameError(f"a frame must be one grayscale plane (H x W), got shape {frame.shape}; use to_luma()")
    h, w = frame.shape
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise FrameError(f"frame size {w}x{h} is outside 1..{MAX_SIDE} pixels per side")
    return frame


def pad_to_multiple(frame: np.ndarray, multiple: int) -> np.ndarray:
    """Edge-replicate the bottom rows and right columns up to a multiple of ``multiple``."""
    h, w = frame.shape
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return frame
    return np.pad(frame, ((0, ph), (0, pw)), mode="edge")


def to_luma(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split an H x W x 3 uint8 RGB frame into integer BT.601 full-range Y, Cb, Cr planes (uint8)."""
    x = rgb.astype(np.int32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = (77 * r + 150 * g + 29 * b + 128) >> 8
    cb = ((-43 * r - 85 * g + 128 * b + 128) >> 8) + 128
    cr = ((128 * r - 107 * g - 21 * b + 128) >> 8) + 128
    return tuple(np.clip(p, 0, 255).astype(np.uint8) for p in (y, cb, cr))


def from_luma(y: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_luma` (integer, clipped)."""
    yy = y.astype(np.int32)
    u = cb.astype(np.int32) - 128
    v = cr.astype(np.int32) - 128
    r = yy + ((359 * v + 128) >> 8)
    g = yy - ((88 * u + 183 * v + 128) >> 8)
    b = yy + ((454 * u + 128) >> 8)
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


def to_uint8(img: np.ndarray) -> tuple[np.ndarray, str | None]:
    """Convert an image of any common dtype/rank to 8-bit grayscale; returns the frame and a note of what changed."""
    note = []
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[2] == 4:
        a = a[..., :3]
        note.append("alpha channel dropped")
    if a.dtype == np.uint16:
        a = (a.astype(np.uint32) * 255 + 32767) // 65535
        note.append("16-bit scaled to 8-bit")
    elif a.dtype in (np.float32, np.float64):
        a = np.clip(np.rint(a * 255.0), 0, 255)
        note.append("float [0,1] scaled to 8-bit")
    elif a.dtype == bool:
        a = a.astype(np.uint8) * 255
        note.append("binary image scaled to 0/255")
    a = a.astype(np.uint8)
    if a.ndim == 3 and a.shape[2] == 3:
        a = to_luma(a)[0]
        note.append("colour converted to BT.601 luma")
    elif a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    return a, ("; ".join(note) or None)
