"""Image reading, writing, JPEG encoding and text drawing, using OpenCV or Pillow when installed.

Images inside :mod:`edgespike.live` are numpy uint8 arrays: H x W for grey, H x W x 3 for colour in **RGB**
order (OpenCV's BGR is converted at the edges, here and in the sources). PNG works with numpy alone
(:mod:`edgespike.png`); JPEG and other formats need the ``[camera]`` extra (OpenCV) or Pillow.
"""

from __future__ import annotations

import importlib
import os
import struct
from pathlib import Path

import numpy as np

from edgespike import png
from edgespike.errors import UserError
from edgespike.files import write_atomic  # noqa: F401  (re-exported for the sinks)

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm", ".pnm", ".webp"}


def optional(name: str):
    """Import ``name`` or return None; a broken install (ImportError inside the package) also counts as absent."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def cv2():
    return optional("cv2")


def pil_image():
    return optional("PIL.Image")


DEFAULT_MAX_PIXELS = 40_000_000
"""Largest image (width x height) read by default: a 40-megapixel photo passes; a file that declares far more
(a decompression bomb, or a panorama that would take many minutes and gigabytes) is refused from its header."""

MAX_PIXELS_HELP = (f"largest image accepted, in pixels (default {DEFAULT_MAX_PIXELS:,}, i.e. 40 megapixels; "
                   "0 = no limit); checked from the file's header before it is decoded")


def check_max_pixels(value: int | None) -> int | None:
    """The ``--max-pixels`` value as a limit (None: no limit), or :class:`UserError` for a negative one."""
    if value is None:
        return DEFAULT_MAX_PIXELS
    if value < 0:
        raise UserError(f"--max-pixels {value}: give a pixel count, or 0 for no limit")
    return value or None


def header_info(path: Path) -> tuple[int, int, int | None] | None:
    """``(width, height, bits per sample)`` from a PNG or JPEG header without decoding it; None for others.

    Reads at most 64 KiB, so a file declaring an enormous size costs nothing to check.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(65536)
    except OSError:
        return None
    if head.startswith(png.SIGNATURE) and len(head) >= 26 and head[12:16] == b"IHDR":
        w, h, depth = struct.unpack(">IIB", head[16:25])
        return w, h, depth
    if head[:2] == b"\xff\xd8":  # JPEG: walk the markers to the first start-of-frame
        pos = 2
        while pos + 9 <= len(head):
            if head[pos] != 0xFF:
                return None
            marker = head[pos + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
                pos += 2
                continue
            (length,) = struct.unpack(">H", head[pos + 2:pos + 4])
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                depth, h, w = struct.unpack(">BHH", head[pos + 4:pos + 9])
                return w, h, depth
            pos += 2 + length
    return None


def _check_size(path: Path, w: int, h: int, max_pixels: int | None) -> None:
    if max_pixels and w * h > max_pixels:
        raise UserError(f"image {path} is {w}x{h} ({w * h / 1e6:.1f} megapixels), over the limit of "
                        f"{max_pixels / 1e6:g} megapixels: resize it, or raise the limit with --max-pixels "
                        f"{w * h} (0 = no limit) if you mean it")


def normalise(a: np.ndarray, notes: list[str] | None = None) -> np.ndarray:
    """Any decoded image to uint8 grey (H x W) or RGB (H x W x 3): alpha dropped, 16-bit and float scaled.

    Parameters
    ----------
    a
        The decoded image.
    notes
        When given, one short note per conversion is appended (what ``--help`` promises the user is told).
    """
    notes = [] if notes is None else notes
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[2] in (2, 4):  # grey or RGB with alpha: the network denoises intensities only
        alpha = a[..., -1]
        opaque = {np.dtype(np.uint16): 65535, np.dtype(bool): True}.get(a.dtype, 1.0 if a.dtype.kind == "f" else 255)
        notes.append("alpha channel dropped" + (" (transparent parts show their stored colour)"
                                                if alpha.size and alpha.min() < opaque else " (it was fully opaque)"))
        a = a[..., :-1]
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.dtype == np.uint16:
        a = ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        notes.append("16-bit scaled to 8-bit")
    elif a.dtype.kind == "f":
        a = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
        notes.append("floating-point [0, 1] scaled to 8-bit")
    elif a.dtype == bool:
        a = a.astype(np.uint8) * 255
        notes.append("1-bit scaled to 0/255")
    elif a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
        notes.append(f"{a.dtype} values clipped to 0..255")
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3):
        raise ValueError(f"unsupported image shape {a.shape}")
    if a.ndim == 3 and np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 1], a[..., 2]):
        a = a[..., 0]  # a grey image stored as RGB: denoise it once, not as colour
    return np.ascontiguousarray(a)


# Pillow modes converted before the array is taken, and what the user is told about each
PIL_CONVERT = {"P": ("RGB", "palette colours expanded to RGB"), "PA": ("RGBA", "palette colours expanded to RGB"),
               "CMYK": ("RGB", "CMYK converted to RGB"), "YCbCr": ("RGB", "YCbCr converted to RGB"),
               "LAB": ("RGB", "Lab converted to RGB"), "HSV": ("RGB", "HSV converted to RGB"),
               "1": ("L", "1-bit scaled to 0/255")}


def read_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               notes: list[str] | None = None) -> np.ndarray:
    """Read an image file as uint8 grey or RGB; raises :class:`UserError` naming the file if it cannot.

    Parameters
    ----------
    path
        The image file.
    max_pixels
        Refuse, from the header and before decoding, an image of more pixels (None: no limit).
    notes
        When given, a note is appended for every conversion (16-bit, alpha, palette, CMYK...).
    """
    path = Path(path)
    notes = [] if notes is None else notes
    if not path.is_file():
        raise UserError(f"cannot read image {path}: no such file")
    info = header_info(path)
    if info is not None:
        _check_size(path, info[0], info[1], max_pixels)
    Image = pil_image()
    if Image is not None:
        import warnings

        try:
            with warnings.catch_warnings():
                # our limit is checked below from the same header; Pillow's own warning would be a second,
                # two-line message about the same thing
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im_ctx = Image.open(path)
        except Image.DecompressionBombError:
            raise UserError(f"image {path} is too large to decode (Pillow refuses it as a decompression bomb); "
                            "resize it") from None
        except Exception as exc:  # Pillow raises many types for bad files; all mean "cannot read"
            raise UserError(f"cannot read image {path}: {exc}") from None
        try:
            with im_ctx as im:
                _check_size(path, im.width, im.height, max_pixels)
                if info is not None and info[2] == 16 and im.mode in ("RGB", "RGBA"):
                    notes.append("16-bit scaled to 8-bit")  # Pillow reduces 16-bit colour PNG to 8 bits itself
                if im.format == "JPEG":
                    notes.append("lossy JPEG: its block artefacts are not the noise the models were trained on")
                if im.mode in PIL_CONVERT:
                    mode, note = PIL_CONVERT[im.mode]
                    im = im.convert(mode)
                    notes.append(note)
                elif im.mode == "LA":
                    im = im.convert("L")
                    notes.append("alpha channel dropped")
                return normalise(np.asarray(im), notes)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"cannot read image {path}: {exc}") from None
    cv = cv2()
    if cv is not None:
        a = cv.imread(str(path), cv.IMREAD_UNCHANGED)
        if a is None:
            raise UserError(f"cannot read image {path}: OpenCV could not decode it")
        if a.ndim == 3:
            a = a[..., [2, 1, 0]] if a.shape[2] == 3 else a[..., [2, 1, 0, 3]]
        return normalise(a, notes)
    if path.suffix.lower() != ".png":
        raise UserError(f"cannot read image {path}: only PNG is readable without Pillow or OpenCV; "
                        "pip install 'edgespike[camera]'")
    try:
        a = png.decode_png(path.read_bytes(), str(path))
    except (png.PNGError, ValueError) as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None
    if info is not None and a.ndim == 3 and info[2] < 16 and _is_palette_png(path):
        notes.append("palette colours expanded to RGB")
    return normalise(a, notes)


def _is_palette_png(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(26)
    return len(head) == 26 and head[25] == 3


def to_bgr(img: np.ndarray) -> np.ndarray:
    """RGB or grey to OpenCV's 3-channel BGR."""
    if img.ndim == 2:
        return np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., ::-1])


def to_rgb(img: np.ndarray) -> np.ndarray:
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img


def encode_image(img: np.ndarray, ext: str, quality: int = 85) -> bytes:
    """Encode to the format named by ``ext`` (".png", ".jpg"...); PNG needs nothing, others OpenCV or Pillow."""
    ext = ext.lower()
    cv = cv2()
    if cv is not None:
        params = [cv.IMWRITE_JPEG_QUALITY, quality] if ext in (".jpg", ".jpeg") else []
        ok, buf = cv.imencode(ext, img if img.ndim == 2 else to_bgr(img), params)
        if ok:
            return buf.tobytes()
    Image = pil_image()
    if Image is not None:
        import io

        fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}.get(ext, ext.lstrip(".").upper())
        out = io.BytesIO()
        kwargs = {"quality": quality} if fmt == "JPEG" else {}
        Image.fromarray(img).save(out, format=fmt, **kwargs)
        return out.getvalue()
    if ext == ".png":
        return png.encode_png(img, level=1)  # per-frame output: speed over the last few percent of size
    raise UserError(f"writing {ext} images needs OpenCV or Pillow: pip install 'edgespike[camera]' (or use .png)")


def can_encode_jpeg() -> str | None:
    """Name of the JPEG encoder that will be used, or None."""
    if cv2() is not None:
        return "OpenCV"
    if pil_image() is not None:
        return "Pillow"
    return None


def draw_text(img: np.ndarray, lines: list[str], origin: tuple[int, int], line_height: int = 16) -> bool:
    """Draw white text lines on an RGB image in place. Returns False when no text renderer is installed."""
    cv = cv2()
    x, y = origin
    if cv is not None:
        for i, line in enumerate(lines):
            cv.putText(img, line, (x, y + 12 + i * line_height), cv.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
                       cv.LINE_AA)
        return True
    Image = pil_image()
    if Image is not None:
        from PIL import ImageDraw

        im = Image.fromarray(img)
        d = ImageDraw.Draw(im)
        for i, line in enumerate(lines):
            d.text((x, y + i * line_height), line, fill=(255, 255, 255))
        img[...] = np.asarray(im)
        return True
    return False


def resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-average resize to ``(width, height)`` (OpenCV, else Pillow, else nearest neighbour in numpy)."""
    w, h = size
    if img.shape[1] == w and img.shape[0] == h:
        return img
    cv = cv2()
    if cv is not None:
        return cv.resize(img, (w, h), interpolation=cv.INTER_AREA)
    Image = pil_image()
    if Image is not None:
        return np.asarray(Image.fromarray(img).resize((w, h), Image.BOX))
    ys = (np.arange(h) * img.shape[0]) // h
    xs = (np.arange(w) * img.shape[1]) // w
    return img[ys][:, xs]
