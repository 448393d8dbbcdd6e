"""Frame sources for ``edgespike run``: Raspberry Pi camera, V4L2/USB webcams, streams, video files, images, demo.

A source is opened once, then :meth:`Source.read` is called from the capture thread until it returns None (a file
ended) or the run stops. Live sources (cameras, streams, a paced demo) never end by themselves: a failed read
raises :class:`ReadFailed`, which the pipeline retries a bounded number of times (reopening the device between
tries) before it reports the camera as lost. Problems the user can fix (no camera, busy camera, unreadable file)
raise :class:`~edgespike.errors.UserError` with one line.

Frames are uint8 H x W (grey) or H x W x 3 (RGB).
"""

from __future__ import annotations

import glob as _glob
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgespike.errors import UserError
from edgespike.live import imageio

VIDEO_EXTS = {".avi", ".mp4", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".mjpg", ".mjpeg", ".h264",
              ".264", ".wmv", ".flv", ".ts", ".ogv", ".gif"}
STREAM_PREFIXES = ("rtsp://", "rtsps://", "http://", "https://", "udp://", "tcp://", "rtmp://")
DEFAULT_CAMERA_SIZE = (640, 480)
PICAMERA_HINT = ("on Raspberry Pi OS: sudo apt install python3-picamera2, and create the venv with "
                 "--system-site-packages")


class ReadFailed(Exception):
    """A live source delivered no frame this time (timeout, device error); the pipeline may retry."""


@dataclass
class Frame:
    """One captured frame. ``clean`` is the noise-free original when the source knows it (the demo)."""

    image: np.ndarray
    index: int
    t_capture: float
    clean: np.ndarray | None = None
    name: str | None = None


@dataclass
class SourceOptions:
    """What the user asked for; each source uses the fields that apply to it."""

    size: tuple[int, int] | None = None
    fps: float | None = None
    noise: str = "gaussian"
    sigma: float = 25.0
    gain: float = 1.0
    seed: int = 0
    loop: bool = False
    timeout: float = 5.0
    max_pixels: int | None = imageio.DEFAULT_MAX_PIXELS  # images only: larger ones are refused from their header


class Source:
    """Base class. ``live`` sources are paced by the world: the pipeline drops frames rather than queue them."""

    kind = "source"
    live = False
    fps: float | None = None

    def __init__(self) -> None:
        self.description = self.kind
        self._index = 0

    def open(self) -> None:
        """Acquire the device or file; raise UserError with one line if impossible."""

    def read(self) -> Frame | None:
        raise NotImplementedError

    def reopen(self) -> None:
        """Called between retries after a failed read: release and acquire the device again."""
        self.close()
        self.open()

    def close(self) -> None:
        """Release the device; safe to call twice."""

    def _frame(self, image: np.ndarray, **kw) -> Frame:
        f = Frame(image=image, index=self._index, t_capture=time.perf_counter(), **kw)
        self._index += 1
        return f


# ---------------------------------------------------------------------------------------------------------------- demo


def gaussian_noise(clean: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive white Gaussian noise of standard deviation ``sigma`` (0..255 scale), rounded and clipped."""
    noisy = clean.astype(np.float32) + rng.standard_normal(clean.shape, dtype=np.float32) * np.float32(sigma)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def poisson_gaussian_noise(clean: np.ndarray, gain: float, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Sensor noise ``z = gain * Poisson(x / gain) + N(0, sigma^2)`` (Foi et al. 2008), rounded and clipped.

    ``gain`` is digital numbers per photo-electron: larger means fewer photons, so stronger shot noise (its
    variance at level x is ``gain * x``); ``sigma`` is the signal-independent read noise.
    """
    x = clean.astype(np.float64)
    shot = rng.poisson(x / gain) * gain if gain > 0 else x
    noisy = shot + rng.standard_normal(clean.shape) * sigma
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def synthetic_pattern(size: tuple[int, int] = (256, 256)) -> np.ndarray:
    """A synthetic grey scene with flat areas, edges, gradients and fine texture (used if no sample is bundled)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 40 + 150 * xx / max(w - 1, 1)  # horizontal ramp
    img = np.where((yy // 32 + xx // 32) % 2 == 0, img, 255 - img)  # checkerboard of ramps: edges everywhere
    cx, cy, r = w * 0.5, h * 0.5, min(w, h) * 0.3
    ring = np.hypot(xx - cx, yy - cy)
    img = np.where(ring < r, 128 + 100 * np.cos(ring * 0.35), img)  # zone plate: fine texture
    img[: h // 8] = np.linspace(0, 255, w, dtype=np.float32)[None]  # a grey scale strip
    return np.clip(img, 0, 255).astype(np.uint8)


class DemoSource(Source):
    """The bundled sample image panned slowly (a "clip"), with fresh simulated sensor noise on every frame.

    Without ``fps`` frames are made on demand (every frame is denoised, nothing is dropped: reproducible). With
    ``fps`` the demo behaves like a camera: it is paced and the pipeline drops frames when the model is slower.
    """

    kind = "demo"
    PAN = 16  # pixels of pan each way: enough to see motion, small enough to stay inside the sample

    def __init__(self, opts: SourceOptions) -> None:
        super().__init__()
        self.opts = opts
        self.live = opts.fps is not None
        self.fps = opts.fps
        if opts.noise not in ("gaussian", "poisson-gaussian"):
            raise UserError(f"unknown noise {opts.noise!r}: choose gaussian or poisson-gaussian")
        if opts.sigma < 0 or opts.gain < 0:
            raise UserError("--sigma and --gain must be >= 0")

    def open(self) -> None:
        from edgespike.models import sample_path

        path = sample_path()
        if path.exists():
            base = imageio.read_image(path)
            origin = f"bundled {path.name}"
        else:  # the sample ships with the package; a trimmed install still gets a demo
            base = synthetic_pattern()
            origin = "synthetic test pattern"
        if base.ndim == 3:
            base = imageio.normalise(base)
        w, h = self.opts.size or (base.shape[1], base.shape[0])
        # Mirror-pad the sample so any requested size plus the pan margin can be cut from it.
        need_h, need_w = h + 2 * self.PAN, w + 2 * self.PAN
        while base.shape[0] < need_h or base.shape[1] < need_w:
            ph = max(0, min(need_h - base.shape[0], base.shape[0] - 1))
            pw = max(0, min(need_w - base.shape[1], base.shape[1] - 1))
            pad = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)) + ((0, 0),) * (base.ndim - 2)
            base = np.pad(base, pad, mode="reflect")
        self.base, self.size = base, (w, h)
        self.rng = np.random.default_rng(self.opts.seed)
        noise = (f"Gaussian sigma {self.opts.sigma:g}" if self.opts.noise == "gaussian"
                 else f"Poisson-Gaussian gain {self.opts.gain:g}, sigma {self.opts.sigma:g}")
        pace = f", paced at {self.fps:g} fps" if self.fps else ""
        self.description = f"demo: {origin}, {w}x{h}, {noise}{pace}"
        self._next = time.perf_counter()

    def read(self) -> Frame:
        if self.fps:
            self._next += 1.0 / self.fps
            delay = self._next - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            else:
                self._next = time.perf_counter()  # we are late: do not try to catch up with a burst
        i = self._index
        bh, bw = self.base.shape[:2]
        w, h = self.size
        my, mx = (bh - h) // 2, (bw - w) // 2
        y0 = int(round(my + min(my, self.PAN) * np.sin(2 * np.pi * i / 150)))
        x0 = int(round(mx + min(mx, self.PAN) * np.sin(2 * np.pi * i / 97)))
        clean = np.ascontiguousarray(self.base[y0:y0 + h, x0:x0 + w])
        if self.opts.noise == "gaussian":
            noisy = gaussian_noise(clean, self.opts.sigma, self.rng)
        else:
            noisy = poisson_gaussian_noise(clean, self.opts.gain, self.opts.sigma, self.rng)
        return self._frame(noisy, clean=clean)


# ------------------------------------------------------------------------------------------------------------ images


class ImageSource(Source):
    """One image, a folder of images (sorted by name) or a glob pattern; ``loop`` repeats them."""

    kind = "images"

    def __init__(self, paths: list[Path], label: str, opts: SourceOptions) -> None:
        super().__init__()
        if not paths:
            raise UserError(f"no images found for {label} (readable: {', '.join(sorted(imageio.IMAGE_EXTS))})")
        self.paths, self.opts = paths, opts
        n = len(paths)
        self.description = f"{'image' if n == 1 else f'{n} images'} from {label}" + (" (looped)" if opts.loop else "")
        self._pos = 0
        self._noted: set[str] = set()

    def read(self) -> Frame | None:
        if self._pos >= len(self.paths):
            if not self.opts.loop:
                return None
            self._pos = 0
        path = self.paths[self._pos]
        self._pos += 1
        notes: list[str] = []
        img = imageio.read_image(path, self.opts.max_pixels, notes)
        for note in notes:  # each kind of conversion once: a folder of RGBA images should not print a line each
            if note not in self._noted:
                self._noted.add(note)
                more = " (and any further image like it)" if len(self.paths) > 1 else ""
                print(f"edgespike: note: {path}: {note}{more}", file=sys.stderr, flush=True)
        if self.opts.size:
            img = imageio.resize(img, self.opts.size)
        return self._frame(img, name=path.name)


# ------------------------------------------------------------------------------------------------------------ OpenCV


def _need_cv2(what: str):
    cv = imageio.cv2()
    if cv is None:
        raise UserError(f"{what} needs OpenCV, which is not installed: pip install 'edgespike[camera]'")
    return cv


class OpenCVSource(Source):
    """OpenCV ``VideoCapture``: V4L2/USB cameras (live), network streams (live) and video files (not live)."""

    def __init__(self, target: str | int, kind: str, opts: SourceOptions) -> None:
        super().__init__()
        self.target, self.kind, self.opts = target, kind, opts
        self.live = kind in ("v4l2", "stream")
        self.cap = None
        self._first: np.ndarray | None = None
        self._passes = 0

    def open(self) -> None:
        cv = _need_cv2({"v4l2": "a V4L2/USB camera", "stream": "a network stream"}.get(self.kind, "a video file"))
        t = self.target
        if self.kind == "v4l2":
            dev = f"/dev/video{t}" if isinstance(t, int) else str(t)
            if not os.path.exists(dev):
                found = ", ".join(sorted(_glob.glob("/dev/video*"), key=_natural)) or "none"
                raise UserError(f"no camera at {dev} (V4L2 devices here: {found}); see --list-sources")
            cap = cv.VideoCapture(t if isinstance(t, int) else dev, cv.CAP_V4L2)
            if not cap.isOpened():
                cap.release()
                raise UserError(f"cannot open camera {dev}: it is busy (another program has it open) or not a "
                                "capture device")
            w, h = self.opts.size or DEFAULT_CAMERA_SIZE
            cap.set(cv.CAP_PROP_FRAME_WIDTH, w)
            cap.set(cv.CAP_PROP_FRAME_HEIGHT, h)
            if self.opts.fps:
                cap.set(cv.CAP_PROP_FPS, self.opts.fps)
            cap.set(cv.CAP_PROP_BUFFERSIZE, 1)  # keep latency low: do not let the driver queue stale frames
            label = f"V4L2 camera {dev}"
        else:
            cap = cv.VideoCapture(str(t))
            if not cap.isOpened():
                cap.release()
                what = "stream" if self.kind == "stream" else "video"
                raise UserError(f"cannot read {what} {t}: OpenCV could not open it (missing file, unsupported "
                                "codec or not a video)")
            label = f"stream {t}" if self.kind == "stream" else f"video {t}"
        ok, first = cap.read()
        if not ok or first is None:
            cap.release()
            if self.kind == "v4l2":
                raise UserError(f"camera {dev} opened but delivered no frame: if it is a Raspberry Pi camera module "
                                "(libcamera), OpenCV cannot read it; use --source picamera")
            raise UserError(f"cannot read {t}: no decodable frame (empty, truncated or unsupported codec)")
        self.cap = cap
        self._first = first
        fps = cap.get(cv.CAP_PROP_FPS)
        self.fps = fps if fps and 0 < fps < 1000 else None
        h, w = first.shape[:2]
        self.description = f"{label}, {w}x{h}" + (f" at {self.fps:g} fps" if self.fps else "")

    def read(self) -> Frame | None:
        if self._first is not None:
            bgr, self._first = self._first, None
        else:
            ok, bgr = self.cap.read()
            if not ok or bgr is None:
                if self.live:
                    raise ReadFailed("the device returned no frame")
                if self.opts.loop and self._index > 0:
                    self.cap.set(imageio.cv2().CAP_PROP_POS_FRAMES, 0)
                    ok, bgr = self.cap.read()
                if not ok or bgr is None:
                    return None
        img = bgr[..., ::-1] if bgr.ndim == 3 else bgr
        img = imageio.normalise(img) if img.dtype != np.uint8 or img.ndim == 3 else img
        if self.opts.size and not self.live:
            img = imageio.resize(img, self.opts.size)
        return self._frame(np.ascontiguousarray(img))

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


# ---------------------------------------------------------------------------------------------------------- picamera2


def import_picamera2():
    """The ``Picamera2`` class, or raise UserError saying how to get it."""
    try:
        from picamera2 import Picamera2
    except ImportError as exc:
        raise UserError(f"picamera2 is not importable ({exc}): {PICAMERA_HINT}") from None
    return Picamera2


class PicameraSource(Source):
    """A Raspberry Pi camera through picamera2: grey from the YUV420 Y plane, ISP noise reduction off.

    The denoiser must see the sensor's noise, so ``NoiseReductionMode`` is 0 (the default video configuration
    turns it on). ``capture_array`` returns the whole YUV420 buffer with rows padded to the stride; the Y plane is
    its first ``H`` rows and ``W`` columns.
    """

    kind = "picamera"
    live = True

    def __init__(self, number: int, opts: SourceOptions) -> None:
        super().__init__()
        self.number, self.opts = number, opts
        self.cam = None

    def open(self) -> None:
        Picamera2 = import_picamera2()
        try:
            cams = Picamera2.global_camera_info()
        except Exception as exc:  # libcamera errors are not typed
            raise UserError(f"libcamera could not list cameras: {exc}") from None
        if not cams:
            raise UserError("no Raspberry Pi camera detected (libcamera lists none): check the ribbon cable and "
                            "run 'rpicam-hello --list-cameras'")
        if self.number >= len(cams):
            raise UserError(f"no Raspberry Pi camera {self.number}: libcamera lists {len(cams)} "
                            f"(0..{len(cams) - 1})")
        try:
            cam = Picamera2(self.number)
        except RuntimeError as exc:
            if "did not complete" in str(exc):
                raise UserError(f"Raspberry Pi camera {self.number} is busy: another process holds it "
                                "(close it, e.g. another edgespike run or rpicam-*)") from None
            raise UserError(f"cannot open Raspberry Pi camera {self.number}: {exc}") from None
        w, h = self.opts.size or DEFAULT_CAMERA_SIZE
        controls = {"NoiseReductionMode": 0}
        if self.opts.fps:  # libcamera's own control (picamera2's "FrameRate" shortcut is missing in older releases)
            period = int(round(1e6 / self.opts.fps))
            controls["FrameDurationLimits"] = (period, period)
        try:
            config = cam.create_video_configuration(main={"format": "YUV420", "size": (w, h)}, controls=controls)
            cam.configure(config)
            actual = config.get("main", {}).get("size", (w, h)) if isinstance(config, dict) else (w, h)
            cam.start()
        except Exception as exc:
            cam.close()
            raise UserError(f"cannot start Raspberry Pi camera {self.number} at {w}x{h}: {exc}") from None
        self.cam, self.size = cam, tuple(actual)
        self.fps = self.opts.fps
        model = cams[self.number].get("Model", "camera") if isinstance(cams[self.number], dict) else "camera"
        self.description = (f"Raspberry Pi camera {self.number} ({model}) via picamera2, {self.size[0]}x{self.size[1]}"
                            " grey (Y plane), ISP noise reduction off")

    def read(self) -> Frame:
        cam, (w, h) = self.cam, self.size
        try:
            job = cam.capture_array("main", wait=False)
            a = cam.wait(job, timeout=self.opts.timeout)
        except TimeoutError:
            raise ReadFailed(f"no frame within {self.opts.timeout:g} s") from None
        except Exception as exc:  # libcamera reports a lost camera with assorted exception types
            raise ReadFailed(str(exc) or type(exc).__name__) from None
        a = np.asarray(a)
        if a.ndim != 2 or a.shape[0] < h or a.shape[1] < w:
            raise ReadFailed(f"unexpected YUV420 buffer shape {a.shape} for {w}x{h}")
        return self._frame(np.ascontiguousarray(a[:h, :w]))  # drop stride padding and the chroma rows

    def close(self) -> None:
        if self.cam is not None:
            cam, self.cam = self.cam, None
            for step in (cam.stop, cam.close):
                try:
                    step()
                except Exception:  # closing a lost camera may fail again; nothing more to release
                    pass


# ----------------------------------------------------------------------------------------------------------- factory


def _natural(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(s))]


def open_source(spec: str | None, opts: SourceOptions) -> Source:
    """Build (not yet open) the source named by ``spec``; see ``docs/RUN.md`` for the forms accepted."""
    spec = "demo" if spec in (None, "") else spec
    low = spec.lower()
    if low == "demo":
        return DemoSource(opts)
    m = re.fullmatch(r"(?:picamera2?|picam|libcamera)(?::(\d+))?", low)
    if m:
        return PicameraSource(int(m.group(1) or 0), opts)
    if re.fullmatch(r"\d+", spec):
        return OpenCVSource(int(spec), "v4l2", opts)
    if spec.startswith("/dev/"):
        return OpenCVSource(spec, "v4l2", opts)
    if low.startswith(STREAM_PREFIXES):
        return OpenCVSource(spec, "stream", opts)
    path = Path(spec).expanduser()
    if any(c in spec for c in "*?["):
        paths = sorted((Path(p) for p in _glob.glob(str(path), recursive=True)
                        if Path(p).suffix.lower() in imageio.IMAGE_EXTS), key=_natural)
        return ImageSource(paths, spec, opts)
    if path.is_dir():
        paths = sorted((p for p in path.iterdir() if p.suffix.lower() in imageio.IMAGE_EXTS and p.is_file()),
                       key=_natural)
        return ImageSource(paths, f"folder {path}", opts)
    if not path.exists():
        raise UserError(f"source {spec!r} not found: not a file, folder, glob, camera or 'demo' (see --list-sources)")
    ext = path.suffix.lower()
    if ext in imageio.IMAGE_EXTS:
        return ImageSource([path], str(path), opts)
    if ext in VIDEO_EXTS:
        return OpenCVSource(str(path), "video", opts)
    if not os.access(path, os.R_OK):
        raise UserError(f"cannot read {path}: permission denied")
    return OpenCVSource(str(path), "video", opts)  # unknown extension: let OpenCV try, it fails with one line


# ------------------------------------------------------------------------------------------------------ --list-sources


def _v4l2_devices() -> list[tuple[str, str]]:
    out = []
    for dev in sorted(_glob.glob("/dev/video*"), key=_natural):
        name_file = Path("/sys/class/video4linux") / Path(dev).name / "name"
        try:
            name = name_file.read_text().strip()
        except OSError:
            name = "?"
        out.append((dev, name))
    return out


# Names of the Pi's own V4L2 nodes (CSI receiver, ISP, codecs): OpenCV cannot read a camera through these.
PI_NODES = ("unicam", "rp1-cfe", "bcm2835", "pispbe", "rpi-hevc", "rpivid")


def list_sources() -> list[str]:
    """Lines saying which sources and sinks are usable on this machine, and why not the others."""
    lines = ["sources:"]
    try:
        Picamera2 = import_picamera2()
        try:
            cams = Picamera2.global_camera_info()
        except Exception as exc:
            cams, err = [], f"libcamera could not list cameras ({exc})"
        else:
            err = "picamera2 imports but libcamera lists no camera (check the ribbon cable)"
        if cams:
            for i, c in enumerate(cams):
                model = c.get("Model", "?") if isinstance(c, dict) else "?"
                lines.append(f"  yes  picamera:{i}        Raspberry Pi camera {model} (picamera2)")
        else:
            lines.append(f"  no   picamera          {err}")
    except UserError as exc:
        lines.append(f"  no   picamera          {exc}")
    cv = imageio.cv2()
    devices = _v4l2_devices()
    if cv is None:
        lines.append("  no   /dev/videoN       OpenCV not installed: pip install 'edgespike[camera]'")
    elif not devices:
        lines.append("  no   /dev/videoN       no V4L2 devices on this machine (/dev/video* absent)")
    for dev, name in devices:
        if cv is None:
            break
        if any(name.lower().startswith(p) for p in PI_NODES):
            lines.append(f"  no   {dev:<17} {name}: a Raspberry Pi camera/ISP node; use --source picamera")
        else:
            lines.append(f"  yes  {dev:<17} {name} (OpenCV V4L2; may still be busy or not a capture node)")
    if cv is not None:
        ffmpeg = "FFMPEG:                      YES" in cv.getBuildInformation()
        lines.append(f"  yes  FILE.mp4/.avi...  video files and rtsp:// or http:// streams (OpenCV {cv.__version__}"
                     + ("" if ffmpeg else ", without FFmpeg: few codecs") + ")")
    else:
        lines.append("  no   FILE.mp4/.avi...  video files need OpenCV: pip install 'edgespike[camera]'")
    reader = "Pillow" if imageio.pil_image() else "OpenCV" if cv is not None else None
    if reader:
        lines.append(f"  yes  IMAGE, FOLDER, 'GLOB'  image files ({reader})")
    else:
        lines.append("  yes  IMAGE, FOLDER, 'GLOB'  PNG only (built in); other formats need Pillow or OpenCV")
    from edgespike.models import sample_path

    sample = sample_path()
    what = f"bundled {sample.name}" if sample.exists() else "synthetic test pattern (sample image not bundled)"
    lines.append(f"  yes  demo              {what} + simulated Gaussian or Poisson-Gaussian noise (default)")
    lines.append("sinks:")
    from edgespike.live.sinks import window_problem

    problem = window_problem()
    lines.append("  yes  --window          local window (OpenCV highgui)" if problem is None
                 else f"  no   --window          {problem}")
    jpeg = imageio.can_encode_jpeg()
    lines.append(f"  yes  --serve           MJPEG preview in a browser (JPEG by {jpeg})" if jpeg
                 else "  no   --serve           needs OpenCV or Pillow to encode JPEG: pip install 'edgespike[camera]'")
    if cv is not None:
        lines.append("  yes  -o FILE.avi       MJPEG AVI video (OpenCV)")
    else:
        lines.append("  no   -o FILE.avi       video output needs OpenCV: pip install 'edgespike[camera]'")
    lines.append("  yes  -o FILE.png, -o DIR/, -o 'out_%05d.png'   last frame / PNG sequence")
    lines.append("  yes  --json-log FILE   one line of stats per frame")
    return lines
