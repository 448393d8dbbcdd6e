"""Image reading, writing, JPEG encoding and text drawing, using OpenCV or Pillow when installed.

Images inside :mod:`edgespike.live` are numpy uint8 arrays: H x W for grey, H x W x 3 for colour in **RGB**
order (OpenCV's BGR is converted at the edges, here and in the sources). PNG works with numpy alone
(:mod:`edgespike.png`); JPEG and other formats need the ``[camera]`` extra (OpenCV) or Pillow.
"""

from __future__ import annotations

import importlib
import os
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


def normalise(a: np.ndarray) -> np.ndarray:
    """Any decoded image to uint8 grey (H x W) or RGB (H x W x 3): alpha dropped, 16-bit and float scaled."""
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[2] == 4:
        a = a[..., :3]
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.dtype == np.uint16:
        a = ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif a.dtype.kind == "f":
        a = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
    elif a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3):
        raise ValueError(f"unsupported image shape {a.shape}")
    if a.ndim == 3 and np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 1], a[..., 2]):
        a = a[..., 0]  # a grey image stored as RGB: denoise it once, not as colour
    return np.ascontiguousarray(a)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as uint8 grey or RGB; raises :class:`UserError` naming the file if it cannot."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"cannot read image {path}: no such file")
    Image = pil_image()
    if Image is not None:
        try:
            with Image.open(path) as im:
                if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
                    im = im.convert("RGB")
                elif im.mode == "LA":
                    im = im.convert("L")
                return normalise(np.asarray(im))
        except Exception as exc:  # Pillow raises many types for bad files; all mean "cannot read"
            raise UserError(f"cannot read image {path}: {exc}") from None
    cv = cv2()
    if cv is not None:
        a = cv.imread(str(path), cv.IMREAD_UNCHANGED)
        if a is None:
            raise UserError(f"cannot read image {path}: OpenCV could not decode it")
        if a.ndim == 3:
            a = a[..., [2, 1, 0]] if a.shape[2] == 3 else a[..., [2, 1, 0, 3]]
        return normalise(a)
    if path.suffix.lower() != ".png":
        raise UserError(f"cannot read image {path}: only PNG is readable without Pillow or OpenCV; "
                        "pip install 'edgespike[camera]'")
    try:
        return normalise(png.decode_png(path.read_bytes(), str(path)))
    except (png.PNGError, ValueError) as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None


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
