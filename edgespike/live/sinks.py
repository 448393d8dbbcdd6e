"""Where denoised frames go: a local window, video/image files, a JSON-lines log (the HTTP preview is in
:mod:`edgespike.live.server`).

Every sink has ``write(result)`` and ``close()``; ``close()`` is always called, also after Ctrl-C, SIGTERM or a
failing camera, and leaves complete files behind: video is written to a hidden temporary file beside the target and
renamed into place when it is finalised, images are replaced atomically, the log is flushed line by line.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgespike.errors import UserError
from edgespike.files import OutputError, check_output, replace
from edgespike.live import imageio

VIEWS = ("denoised", "side", "noisy")
VIDEO_FOURCC = {".avi": "MJPG", ".mkv": "MJPG", ".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v"}


class StopRun(Exception):
    """Raised by a sink when the user asked to stop (q in the window)."""


@dataclass
class Result:
    """One processed frame as the sinks see it: images in RGB or grey, and the per-frame stats record."""

    noisy: np.ndarray
    denoised: np.ndarray
    record: dict
    status: list[str] = field(default_factory=list)
    _side: np.ndarray | None = None

    def view(self, name: str) -> np.ndarray:
        if name == "denoised":
            return self.denoised
        if name == "noisy":
            return self.noisy
        if self._side is None:  # composed once, shared by every sink that shows it
            self._side = side_by_side(self.noisy, self.denoised, self.status)
        return self._side


def side_by_side(noisy: np.ndarray, denoised: np.ndarray, lines: list[str], gap: int = 4) -> np.ndarray:
    """``noisy | denoised`` in RGB with a dark strip below carrying ``lines`` of text (if a renderer exists)."""
    a, b = imageio.to_rgb(noisy), imageio.to_rgb(denoised)
    h = max(a.shape[0], b.shape[0])
    lines = wrap(lines, max(20, (a.shape[1] + gap + b.shape[1] - 12) // 7))  # ~7 px per character of the font
    strip = 8 + 16 * len(lines) if lines else 0
    out = np.full((h + strip, a.shape[1] + gap + b.shape[1], 3), 24, np.uint8)
    out[:a.shape[0], :a.shape[1]] = a
    out[:b.shape[0], a.shape[1] + gap:] = b
    if lines and not imageio.draw_text(out, lines, (6, h + 2)):
        out = out[:h]  # no text renderer installed: a bare picture rather than an empty strip
    return out


def wrap(lines: list[str], width: int) -> list[str]:
    """Break lines longer than ``width`` characters at " | " or ", " separators (a word is never cut)."""
    out = []
    for line in lines:
        while len(line) > width:
            cut = max(line.rfind(" | ", 0, width), line.rfind(", ", 0, width))
            if cut <= 0:
                break
            out.append(line[:cut])
            line = line[cut + (3 if line.startswith(" | ", cut) else 2):]
        out.append(line)
    return out


# ----------------------------------------------------------------------------------------------------------- window


def window_problem() -> str | None:
    """Why a local window cannot open here, or None if it can."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return ("no display ($DISPLAY and $WAYLAND_DISPLAY are unset): use --serve for a browser preview "
                "(--serve-port PORT to choose its port)")
    cv = imageio.cv2()
    if cv is None:
        return "a window needs OpenCV: pip install opencv-python (the full build, with GUI)"
    info = cv.getBuildInformation()
    gui = re.search(r"GUI:\s*(\S+)", info)
    if gui and gui.group(1).upper() == "NONE":
        return ("this OpenCV has no GUI (opencv-python-headless): pip install opencv-python for a window, or use "
                "--serve")
    return None


class WindowSink:
    """An OpenCV highgui window showing ``noisy | denoised``; q or Esc in the window stops the run."""

    TITLE = "edgespike run (q to stop)"

    def __init__(self) -> None:
        problem = window_problem()
        if problem:
            raise UserError(f"cannot open a window: {problem}")
        self.cv = imageio.cv2()
        try:
            self.cv.namedWindow(self.TITLE, self.cv.WINDOW_NORMAL)
        except self.cv.error as exc:
            raise UserError(f"cannot open a window: {str(exc).strip().splitlines()[-1]}") from None
        self.description = "window"

    def write(self, result: Result) -> None:
        self.cv.imshow(self.TITLE, imageio.to_bgr(result.view("side")))
        if self.cv.waitKey(1) & 0xFF in (ord("q"), 27):
            raise StopRun("q pressed in the window")

    def close(self) -> None:
        try:
            self.cv.destroyWindow(self.TITLE)
            self.cv.waitKey(1)
        except Exception:  # the user may have closed it already
            pass


# ------------------------------------------------------------------------------------------------------------ files


class VideoSink:
    """Video through OpenCV's ``VideoWriter`` (MJPEG AVI by default), finalised by rename on close.

    The frame rate is fixed when the file is opened. For files it is the source's (``fps()``, called at the
    first frame, when the source is open). For live sources, where a slow model drops frames, the first
    ``MEASURE`` frames are held back to measure the denoised rate, so the video plays at about real speed.
    """

    MEASURE = 10

    def __init__(self, path: Path, view: str, fps, measure: bool = False) -> None:
        self.cv = imageio.cv2()
        if self.cv is None:
            raise UserError(f"writing video {path} needs OpenCV: pip install 'edgespike[camera]' (or -o out.png)")
        self.path, self.view, self.nominal = path, view, fps if callable(fps) else (lambda: fps)
        self.measure = measure
        self.fourcc = VIDEO_FOURCC[path.suffix.lower()]
        self.tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
        self.writer = None
        self.size = None
        self.fps = None
        self.frames = 0
        self.pending: list[tuple[float, np.ndarray]] = []
        self.description = f"{path} ({self.fourcc} {path.suffix.lstrip('.').upper()}, {view})"

    def write(self, result: Result) -> None:
        img = imageio.to_bgr(result.view(self.view))
        if self.writer is None and self.measure:
            self.pending.append((time.perf_counter(), img))
            if len(self.pending) >= self.MEASURE:
                self._open_and_flush()
            return
        if self.writer is None:
            self._open(img)
        self._write(img)

    def _open(self, first: np.ndarray) -> None:
        fps = self.nominal() or 25.0
        if len(self.pending) > 1:  # live: the rate frames were actually denoised at, at most the nominal one
            span = self.pending[-1][0] - self.pending[0][0]
            if span > 0:
                fps = min(fps, max(0.5, (len(self.pending) - 1) / span))
        self.fps = round(fps, 3)
        self.size = (first.shape[1], first.shape[0])
        check_output(self.tmp)  # the folder may have gone read-only since the start: say so, not "no encoder"
        writer = self.cv.VideoWriter(str(self.tmp), self.cv.VideoWriter_fourcc(*self.fourcc), self.fps, self.size)
        if not writer.isOpened():
            self.tmp.unlink(missing_ok=True)
            other = ".mp4" if self.path.suffix.lower() in (".avi", ".mkv") else ".avi"
            raise UserError(f"cannot write video {self.path}: OpenCV has no {self.fourcc} encoder for "
                            f"{self.path.suffix} here; try {other} or -o out.png")
        self.writer = writer

    def _open_and_flush(self) -> None:
        self._open(self.pending[0][1])
        held, self.pending = self.pending, []
        for _, img in held:
            self._write(img)

    def _write(self, img: np.ndarray) -> None:
        if (img.shape[1], img.shape[0]) != self.size:  # a folder of mixed sizes: a video has one size
            img = imageio.resize(img, self.size)
        self.writer.write(img)
        self.frames += 1

    def close(self) -> None:
        if self.writer is None and self.pending:  # a live run shorter than MEASURE frames
            self._open_and_flush()
        if self.writer is not None:
            self.writer.release()  # writes the AVI index: only now is the file playable
            self.writer = None
            replace(self.tmp, self.path)  # on failure the partial file is removed and the error names the target
        elif self.tmp.exists():
            self.tmp.unlink()


class ImageSink:
    """PNG (or other image) output: one file replaced by the latest frame, or one file per frame.

    ``out.png`` always holds the latest frame; ``out_%05d.png`` (printf pattern) numbers every frame; a folder
    (``frames/``) keeps every frame under its source's name (``img7.png`` from ``img7.jpg``), or as
    ``frame_000000.png``... when the frames have no names (cameras, video, the demo). Each file is written whole
    and renamed into place.
    """

    def __init__(self, target: str, view: str) -> None:
        self.view = view
        self.frames = 0
        self.folder: Path | None = None
        self.written: set[str] = set()
        p = Path(target)
        if target.endswith(("/", os.sep)) or p.is_dir():
            if not p.is_dir():
                check_output(p)  # the folder it goes in must exist and be writable before mkdir is tried
                try:
                    p.mkdir()
                except OSError as exc:
                    raise OutputError(f"cannot create folder {p}: {exc.strerror}; choose another -o") from None
            check_output(p, folder_ok=True)
            self.folder, self.pattern, self.ext = p, str(p / "frame_%06d.png"), ".png"
        elif "%" in p.name:
            try:
                p.name % 0
            except (TypeError, ValueError):
                raise UserError(f"bad output pattern {p.name!r}: use one printf number, e.g. out_%05d.png") from None
            self.pattern, self.ext = str(p), p.suffix.lower()
        else:
            self.pattern, self.ext = None, p.suffix.lower()
        if self.ext not in imageio.IMAGE_EXTS:
            raise UserError(f"cannot write {target}: unknown image type {self.ext!r} (use .png)")
        if self.folder is None:
            check_output(Path(self.pattern % 0) if self.pattern else p)
        if self.ext != ".png" and imageio.can_encode_jpeg() is None:
            raise UserError(f"writing {self.ext} needs OpenCV or Pillow: pip install 'edgespike[camera]' (or .png)")
        self.path = p
        kind = "one PNG per frame" if self.folder else "PNG sequence" if self.pattern else "latest frame"
        self.description = f"{p if self.folder else self.pattern or p} ({kind}, {view})"

    def target(self, result: Result) -> Path:
        """Where ``result`` goes: a folder names a file after its source image, once (a looped list numbers
        the repeats), else the pattern numbers it."""
        name = result.record.get("name")
        if self.folder is not None and name:
            stem = Path(name).stem
            file = f"{stem}.png" if stem + ".png" not in self.written else f"{stem}_{self.frames:06d}.png"
            self.written.add(file)
            return self.folder / file
        return Path(self.pattern % self.frames) if self.pattern else self.path

    def write(self, result: Result) -> None:
        data = imageio.encode_image(result.view(self.view), self.ext)
        imageio.write_atomic(self.target(result), data)
        self.frames += 1

    def close(self) -> None:
        pass


def open_output(target: str, view: str, fps, live: bool = False):
    """A :class:`VideoSink` or :class:`ImageSink` chosen by the target's extension.

    ``fps`` is a number or a function returning the source's nominal rate once it is open; ``live`` makes a
    video measure the denoised rate first (see :class:`VideoSink`). A target that cannot be written (a folder in
    a file's place, a missing or read-only folder) is refused here, before any frame is denoised.
    """
    if view not in VIEWS:
        raise UserError(f"unknown view {view!r}: choose one of {', '.join(VIEWS)}")
    p = Path(target)
    ext = p.suffix.lower()
    if ext in VIDEO_FOURCC:
        check_output(p)
        return VideoSink(p, view, fps, measure=live)
    if ext in imageio.IMAGE_EXTS or target.endswith(("/", os.sep)) or p.is_dir():
        return ImageSink(target, view)
    raise UserError(f"cannot write {target}: unknown output type {ext or '(no extension)'}; use .avi, .mp4, .png, "
                    "a pattern like out_%05d.png or a folder/")


class JsonLogSink:
    """One JSON object per processed frame (the stats record), flushed line by line."""

    def __init__(self, path: str) -> None:
        try:
            self.f = open(path, "w", encoding="utf-8", buffering=1)
        except OSError as exc:
            raise UserError(f"cannot write --json-log {path}: {exc.strerror}") from None
        self.description = f"{path} (JSON lines)"

    def write(self, result: Result) -> None:
        self.f.write(json.dumps(result.record, separators=(",", ":")) + "\n")

    def close(self) -> None:
        if not self.f.closed:
            self.f.close()
