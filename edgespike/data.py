"""Datasets, image loading and the noise protocol shared by evaluation and training.

Named datasets (the standard grey denoising sets of the DnCNN paper, Zhang et al. 2017):

========  ======  ================================  ===========================================================
name      images  size                              source (public, in the DnCNN repository)
========  ======  ================================  ===========================================================
set12     12      256 x 256 and 512 x 512            ``cszn/DnCNN`` ``testsets/Set12/01.png .. 12.png``
bsd68     68      481 x 321 / 321 x 481              ``cszn/DnCNN`` ``testsets/BSD68/test001.png .. test068.png``
bsd400    400     180 x 180 (training set)           ``cszn/DnCNN``
                                                    ``TrainingCodes/DnCNN_TrainingCodes_v1.0/data/Train400/``
========  ======  ================================  ===========================================================

They are downloaded on first use into ``$EDGESPIKE_DATA/<name>/`` (default ``~/.cache/edgespike/<name>/``) and every
file is checked against its SHA-256 in :mod:`edgespike.data_checksums`, on download and on every use (hashing all
of BSD400 takes well under a second). ``EDGESPIKE_DATA_MIRROR`` replaces the base URL (any URL ``urllib`` opens,
``file://`` included, with the same layout below it); ``EDGESPIKE_OFFLINE=1`` forbids downloading. A folder or a
glob of images works everywhere a name does.

The noise protocol (shared with the training tools, so that numbers are comparable across the project): for the
image of index ``i`` in sorted file order, ``rng = numpy.random.default_rng(seed + i)``,
``n = rng.normal(0, sigma / 255, x.shape)`` and, with ``x`` on [0, 1],

- gaussian: ``y = x + n``
- speckle:  ``y = x + x * n``  (multiplicative, ``v ~ N(0, (sigma/255)^2)``)

then ``noisy = clip(rint(y * 255), 0, 255)`` as uint8 (``rint``: round half to even, numpy's default).
"""

from __future__ import annotations

import contextlib
import glob as globmod
import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgespike.data_checksums import CHECKSUMS
from edgespike.errors import UserError
from edgespike.frames import to_uint8

BASE_URL = "https://raw.githubusercontent.com/cszn/DnCNN/master/"
# Path of each named dataset below BASE_URL (or below a mirror with the same layout).
REMOTE_DIRS = {
    "set12": "testsets/Set12/",
    "bsd68": "testsets/BSD68/",
    "bsd400": "TrainingCodes/DnCNN_TrainingCodes_v1.0/data/Train400/",
}
DESCRIPTIONS = {
    "set12": "Set12, 12 grey test images (256x256, 512x512)",
    "bsd68": "BSD68, 68 grey test images (481x321)",
    "bsd400": "BSD400, 400 grey training images (180x180)",
}
NAMES = tuple(REMOTE_DIRS)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm", ".pnm", ".webp"}
NOISE_KINDS = ("gaussian", "speckle")
MAX_SIGMA = 255.0
DOWNLOAD_TIMEOUT = 30


# ------------------------------------------------------------------ where things are


def data_root() -> Path:
    """The dataset cache: ``$EDGESPIKE_DATA`` if set, else ``~/.cache/edgespike``."""
    env = os.environ.get("EDGESPIKE_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgespike"


def base_url() -> str:
    """The download base: ``$EDGESPIKE_DATA_MIRROR`` if set, else the DnCNN repository on GitHub."""
    url = os.environ.get("EDGESPIKE_DATA_MIRROR") or BASE_URL
    return url if url.endswith("/") else url + "/"


def offline() -> bool:
    return os.environ.get("EDGESPIKE_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def source_url(name: str, filename: str = "") -> str:
    """The public URL of one file (or, without ``filename``, of the folder) of a named dataset."""
    return base_url() + REMOTE_DIRS[name] + filename


def page_url(name: str) -> str:
    """The human-readable page of a named dataset on GitHub (raw URLs of folders do not list anything)."""
    return "https://github.com/cszn/DnCNN/tree/master/" + REMOTE_DIRS[name]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------ named datasets


@dataclass
class Status:
    """State of a named dataset in the cache (what ``edgespike data list`` shows)."""

    name: str
    folder: Path
    expected: int
    present: int
    verified: int
    bad: list[str]

    @property
    def complete(self) -> bool:
        return self.verified == self.expected


def status(name: str, root: Path | None = None) -> Status:
    """Check which files of ``name`` are present in the cache and match their SHA-256."""
    folder = (root or data_root()) / name
    expected = CHECKSUMS[name]
    present = verified = 0
    bad = []
    for fname, digest in expected.items():
        path = folder / fname
        if path.is_file():
            present += 1
            if sha256(path) == digest:
                verified += 1
            else:
                bad.append(fname)
    return Status(name, folder, len(expected), present, verified, bad)


def _how_to_provide(name: str, folder: Path) -> str:
    return (f"put the {len(CHECKSUMS[name])} images of {name} ({page_url(name)}) in {folder}, "
            f"or set EDGESPIKE_DATA to a folder holding {name}/, or pass --dataset DIR")


def _download(url: str, dest: Path, digest: str) -> None:
    """Fetch ``url`` into ``dest`` through a temporary file; ``dest`` appears only if the SHA-256 matches."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as resp:
            h = hashlib.sha256()
            for block in iter(lambda: resp.read(1 << 16), b""):
                h.update(block)
                out.write(block)
        if h.hexdigest() != digest:
            raise UserError(f"{url} does not match its SHA-256 (got {h.hexdigest()[:12]}..., expected "
                            f"{digest[:12]}...): the source has changed or the download was altered; nothing saved")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fetch(name: str, root: Path | None = None, download: bool = True, progress=None) -> list[Path]:
    """Make sure every file of a named dataset is in the cache and verified; return the paths, sorted.

    Parameters
    ----------
    name : str
        One of :data:`NAMES`.
    root : Path, optional
        The cache folder (default :func:`data_root`).
    download : bool
        Whether missing or damaged files may be downloaded (also refused when ``EDGESPIKE_OFFLINE`` is set).
    progress : callable, optional
        Called as ``progress(done, total, filename)`` after each downloaded file.

    Raises
    ------
    UserError
        When files are missing or damaged and cannot be downloaded; the one-line message says how to provide them.
    """
    if name not in CHECKSUMS:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(NAMES)} or pass a folder")
    folder = (root or data_root()) / name
    expected = CHECKSUMS[name]
    todo = [f for f, d in expected.items() if not ((folder / f).is_file() and sha256(folder / f) == d)]
    if todo:
        damaged = [f for f in todo if (folder / f).exists()]
        if not download or offline():
            what = f"{len(todo)} of {len(expected)} files missing" if not damaged else (
                f"{len(damaged)} file(s) fail their SHA-256 check (e.g. {damaged[0]})")
            raise UserError(f"dataset {name}: {what} in {folder} and downloading is off; "
                            f"{_how_to_provide(name, folder)}")
        created = [p for p in (folder, folder.parent) if not p.exists()]  # deepest first, for the clean-up
        for k, fname in enumerate(todo):
            url = source_url(name, fname)
            try:
                _download(url, folder / fname, expected[fname])
            except (urllib.error.URLError, OSError, ValueError, UserError) as exc:
                # an empty dataset folder left behind would look like a fetched set to the next look at the cache
                for p in created:
                    with contextlib.suppress(OSError):
                        p.rmdir()  # only if still empty: files verified before the failure are kept
                if isinstance(exc, UserError):
                    raise
                reason = getattr(exc, "reason", None) or exc
                raise UserError(f"dataset {name}: cannot download {url} ({reason}); "
                                f"{_how_to_provide(name, folder)}") from None
            if progress:
                progress(k + 1, len(todo), fname)
    return [folder / f for f in sorted(expected)]


def checksum_source(root) -> str:
    """The text of :mod:`edgespike.data_checksums` for the named datasets found under ``root``."""
    root = Path(root)
    doc = Path(__file__).with_name("data_checksums.py").read_text().split('"""')[1]
    lines = [f'"""{doc}"""', "", "CHECKSUMS: dict[str, dict[str, str]] = {"]
    for name in NAMES:
        lines.append(f'    "{name}": {{')
        for f in sorted(p for p in (root / name).iterdir() if p.is_file()):
            lines.append(f'        "{f.name}": "{sha256(f)}",')
        lines.append("    },")
    return "\n".join(lines + ["}", ""])


# ------------------------------------------------------------------ any images


def _is_glob(spec: str) -> bool:
    return any(c in spec for c in "*?[")


def resolve(spec, root: Path | None = None, download: bool = True, progress=None) -> tuple[str, list[Path]]:
    """Turn a dataset name, a folder or a glob into ``(label, sorted image paths)``.

    A name of :data:`NAMES` is fetched (see :func:`fetch`); an existing folder gives its image files (by suffix,
    sorted by file name, not recursive); a pattern with ``* ? [`` is globbed. The sorted order is the image index
    of the noise protocol.
    """
    spec = str(spec)
    if spec.lower() in CHECKSUMS and not Path(spec).is_dir():
        name = spec.lower()
        return name, fetch(name, root=root, download=download, progress=progress)
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {path}")
        return str(path), files
    if _is_glob(spec):
        files = sorted(Path(p) for p in globmod.glob(os.path.expanduser(spec)) if Path(p).is_file())
        if not files:
            raise UserError(f"no files match {spec!r}")
        return spec, files
    if path.is_file():
        return str(path), [path]
    raise UserError(f"{spec!r} is neither a dataset ({', '.join(NAMES)}) nor an existing folder, file or glob")


# ------------------------------------------------------------------ reading images


def _read_raw(path: Path) -> np.ndarray:
    """Pixels of an image file as stored (uint8/uint16/bool/float; grey, grey+alpha, RGB or RGBA)."""
    try:
        from PIL import Image
    except ImportError:
        Image = None
    if Image is not None:
        try:
            with Image.open(path) as im:
                if im.mode == "P":  # palette: expand, keeping transparency when present
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                elif im.mode == "PA":
                    im = im.convert("RGBA")
                elif im.mode == "CMYK" or im.mode.startswith("YCbCr"):
                    im = im.convert("RGB")
                a = np.asarray(im)
                if im.mode.startswith("I;16"):
                    a = a.astype(np.uint16)
                return a
        except OSError as exc:
            raise UserError(f"cannot read image {path}: {exc}") from None
    if path.suffix.lower() != ".png":
        raise UserError(f"cannot read {path}: only PNG is built in; for other formats pip install pillow")
    from edgespike.png import PNGError, read_png

    try:
        return read_png(path)
    except PNGError as exc:
        raise UserError(str(exc)) from None


def read_image(path) -> tuple[np.ndarray, str | None]:
    """Read an image file as one uint8 grey plane.

    Returns
    -------
    frame : numpy.ndarray
        ``H x W`` uint8.
    note : str or None
        What was converted (e.g. "16-bit scaled to 8-bit; colour converted to BT.601 luma"), None if the file was
        already 8-bit grey. Callers show it to the user.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such image file: {path}")
    a = _read_raw(path)
    notes = []
    if a.ndim == 3 and a.shape[2] == 2:  # grey + alpha: frames.to_uint8 knows RGBA only
        a = a[..., 0]
        notes.append("alpha channel dropped")
    if a.dtype not in (np.uint8, np.uint16, np.float32, np.float64, bool):
        raise UserError(f"{path}: pixel type {a.dtype} is not supported; save it as 8- or 16-bit")
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        raise UserError(f"{path}: image of shape {a.shape} is not grey, RGB or RGBA")
    frame, note = to_uint8(a)
    if note:
        notes.append(note)
    return frame, ("; ".join(notes) or None)


# ------------------------------------------------------------------ noise


def check_sigma(sigma: float) -> float:
    """Return ``sigma`` as a float, or raise a one-line :class:`UserError` if it is not in 0..255."""
    try:
        s = float(sigma)
    except (TypeError, ValueError):
        raise UserError(f"sigma must be a number on the 0..255 pixel scale, got {sigma!r}") from None
    if not (0.0 <= s <= MAX_SIGMA):  # also refuses nan
        raise UserError(f"sigma must be between 0 and {MAX_SIGMA:g} (pixel scale), got {sigma}")
    return s


def add_noise(clean: np.ndarray, sigma: float, rng: np.random.Generator, kind: str = "gaussian") -> np.ndarray:
    """Noisy uint8 copy of a uint8 frame (see the module docstring for the exact formula)."""
    if kind not in NOISE_KINDS:
        raise UserError(f"unknown noise {kind!r}; choose one of {', '.join(NOISE_KINDS)}")
    sigma = check_sigma(sigma)
    x = clean.astype(np.float64) / 255.0
    n = rng.normal(0.0, sigma / 255.0, x.shape)
    y = x + n if kind == "gaussian" else x + x * n
    return np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)


def noisy_image(clean: np.ndarray, index: int, sigma: float, kind: str = "gaussian", seed: int = 0) -> np.ndarray:
    """The protocol's noisy version of the image of index ``index``: ``rng = default_rng(seed + index)``."""
    return add_noise(clean, sigma, np.random.default_rng(seed + index), kind)


@dataclass
class Sample:
    """One image of a dataset with its noisy version."""

    index: int
    path: Path
    clean: np.ndarray
    noisy: np.ndarray
    note: str | None


def samples(files: list[Path], sigma: float, kind: str = "gaussian", seed: int = 0,
            limit: int | None = None) -> Iterator[Sample]:
    """Yield every image of ``files`` (already in protocol order) with its noisy version."""
    for i, path in enumerate(files[:limit] if limit is not None else files):
        clean, note = read_image(path)
        yield Sample(i, Path(path), clean, noisy_image(clean, i, sigma, kind, seed), note)


def _main(argv: list[str]) -> int:  # pragma: no cover - maintenance helper
    if len(argv) == 2 and argv[0] == "--checksums":
        sys.stdout.write(checksum_source(argv[1]))
        return 0
    print("usage: python -m edgespike.data --checksums DIR", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main(sys.argv[1:]))
