"""``edgespike run``: sources, sinks, the drop policy, clean stops and every error path, without camera or display.

Models are tiny (two 3x3 layers) and frames small so the reference runtime keeps these tests quick. Nothing here
asserts on timing: the drop test synchronises the fake camera and the fake slow model with events.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

from edgespike import png, reference
from edgespike.cli import main
from edgespike.errors import UserError
from edgespike.fileformat import load, save
from edgespike.live import sinks, sources
from edgespike.live.pipeline import FrameBuffer, Histogram, RunOptions, run_pipeline
from edgespike.live.sources import Frame, Source
from edgespike.model import Conv, Decoder, Model, Neuron, ReadoutTerm

ROOT = Path(__file__).resolve().parents[1]


def tiny_model() -> Model:
    """A denoiser-shaped toy: 3x3 conv -> IF -> 3x3 conv -> IF, read out as a residual on the spike count."""
    w1 = np.zeros((2, 1, 3, 3), np.int8)
    w1[0, 0] = 1
    w1[1, 0, 1, 1] = 8
    w2 = np.ones((1, 2, 3, 3), np.int8)
    return Model(
        nodes=[Conv("c1", "input", w1, np.array([0, -600], np.int32)),
               Neuron("n1", "c1", np.array([900, 700], np.int32)),
               Conv("c2", "n1", w2, np.zeros(1, np.int32)), Neuron("n2", "c2", np.array([3], np.int32))],
        timesteps=4,
        decoder=Decoder([ReadoutTerm("n2", "count", np.array([1], np.int32))], shift=0, residual=True),
    )


@pytest.fixture()
def model_path(tmp_path) -> Path:
    path = tmp_path / "tiny.esnn"
    save(tiny_model(), path)
    return path


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main(["run", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc: int, err: str, *words: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert "Traceback" not in err
    assert lines and lines[-1].startswith("edgespike: error: "), err
    for w in words:
        assert w in lines[-1], lines[-1]


def noisy_frames(n: int, h: int = 24, w: int = 32, rgb: bool = False, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (h, w, 3) if rgb else (h, w)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]


def read_png(path: Path) -> np.ndarray:
    return png.decode_png(path.read_bytes())


# ------------------------------------------------------------------------------------------------------ demo source


def test_no_arguments_runs_the_demo_through_the_default_model(tmp_path, capsys, monkeypatch, model_path):
    """The README's main job: `edgespike run` alone writes a result and prints the summary."""
    import edgespike.models

    monkeypatch.setattr(edgespike.models, "default_path", lambda kind="s25": model_path)
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_cli(capsys)
    assert rc == 0, err
    assert "edgespike run summary" in out and "16 denoised" in out and "PSNR" in out
    result = read_png(tmp_path / "edgespike-demo.png")
    h, w = read_png(edgespike.models.sample_path()).shape[:2] if edgespike.models.sample_path().exists() else (256, 256)
    assert result.ndim == 3 and result.shape[0] >= h and result.shape[1] == 2 * w + 4  # noisy | denoised + strip


@pytest.mark.parametrize(("argv", "kind"), [
    ([], "s25"),
    (["--sigma", "15"], "blind"),  # the sigma-25 model is trained for one noise level only
    (["--noise", "poisson-gaussian"], "blind"),
    (["--sigma", "15", "--model", "s25"], "s25"),  # a shipped model by name
    (["IMAGES"], "blind"),  # a real source: its noise is not known
    (["IMAGES", "--backend", "fpga-sim"], "None"),  # the simulated accelerator picks the shipped model that fits
])
def test_the_shipped_model_for_the_source_and_backend(tmp_path, capsys, monkeypatch, argv, kind):
    from edgespike.live import backends

    def opened(name, model, port, simulator="auto"):
        raise UserError(f"backend {name} asked for model {model}")

    monkeypatch.setattr(backends, "open_backend", opened)
    if argv[:1] == ["IMAGES"]:
        png.write_png(tmp_path / "a.png", np.zeros((30, 40), np.uint8))
        argv = [tmp_path / "a.png", *argv[1:]]
    rc, out, err = run_cli(capsys, *argv, "-q")
    assert_one_line_error(rc, err, f"asked for model {kind}")


def test_demo_frames_are_reproducible_and_denoised_exactly(tmp_path, capsys, model_path):
    out_dir = tmp_path / "frames"
    rc, out, err = run_cli(capsys, "--model", model_path, "--size", "40x30", "--frames", 3, "-o", f"{out_dir}/",
                           "--view", "denoised", "-q")
    assert rc == 0, err
    files = sorted(out_dir.glob("frame_*.png"))
    assert [f.name for f in files] == ["frame_000000.png", "frame_000001.png", "frame_000002.png"]
    # The same seed gives the same noisy frames; the output is the reference run of each of them.
    demo = sources.DemoSource(sources.SourceOptions(size=(40, 30)))
    demo.open()
    model = load(model_path)
    for f in files:
        frame = demo.read()
        assert frame.image.shape == (30, 40)
        np.testing.assert_array_equal(read_png(f), reference.run(model, frame.image))


def test_demo_noise_levels():
    rng = np.random.default_rng(0)
    flat = np.full((200, 200), 100, np.uint8)
    g = sources.gaussian_noise(flat, 20, rng).astype(float)
    assert 19 < g.std() < 21 and abs(g.mean() - 100) < 1
    pg = sources.poisson_gaussian_noise(flat, 4.0, 5.0, rng).astype(float)
    # variance = gain * x + sigma^2 = 400 + 25
    assert 380 < pg.var() < 470 and abs(pg.mean() - 100) < 1.5
    with pytest.raises(UserError):
        sources.DemoSource(sources.SourceOptions(noise="speckle"))


def test_demo_poisson_gaussian_from_the_cli(tmp_path, capsys, model_path):
    log = tmp_path / "log.jsonl"
    rc, out, err = run_cli(capsys, "--model", model_path, "--size", "32x24", "--frames", 2, "--noise",
                           "poisson-gaussian", "--gain", 2, "--sigma", 3, "--json-log", log, "-q")
    assert rc == 0, err
    assert "Poisson-Gaussian gain 2, sigma 3" in out
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["frame"] for r in rows] == [0, 1]
    for key in ("latency_ms", "compute_ms", "fps", "spike_rate", "synaptic_ops", "macs", "psnr_noisy", "dropped"):
        assert key in rows[0]


def test_synthetic_pattern_when_no_sample(monkeypatch):
    import edgespike.models

    monkeypatch.setattr(edgespike.models, "sample_path", lambda: Path("/nonexistent/sample.png"))
    demo = sources.DemoSource(sources.SourceOptions(size=(64, 48)))
    demo.open()
    assert "synthetic test pattern" in demo.description
    f = demo.read()
    assert f.image.shape == (48, 64) and f.clean.std() > 20


# ----------------------------------------------------------------------------------------------------- image sources


def write_pngs(folder: Path, frames: list[np.ndarray], prefix: str = "img") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, f in enumerate(frames):
        p = folder / f"{prefix}{i}.png"  # img0, img1, ... img10: natural sort must order these
        p.write_bytes(png.encode_png(f))
        paths.append(p)
    return paths


def test_image_folder_in_natural_order_to_png_sequence(tmp_path, capsys, model_path):
    frames = noisy_frames(11)
    write_pngs(tmp_path / "in", frames)
    pattern = tmp_path / "out_%03d.png"
    rc, out, err = run_cli(capsys, tmp_path / "in", "--model", model_path, "-o", pattern, "-q")
    assert rc == 0, err
    assert "11 denoised, 11 captured, 0 dropped" in out and "end of source" in out
    model = load(model_path)
    for i, f in enumerate(frames):
        np.testing.assert_array_equal(read_png(tmp_path / f"out_{i:03d}.png"), reference.run(model, f))


def test_glob_source_and_single_image(tmp_path, capsys, model_path):
    frames = noisy_frames(3)
    write_pngs(tmp_path / "g", frames, prefix="a")
    (tmp_path / "g" / "notes.txt").write_text("not an image")
    rc, out, err = run_cli(capsys, "--source", f"{tmp_path}/g/a*.png", "--model", model_path, "-o",
                           tmp_path / "last.png", "-q")
    assert rc == 0, err
    assert "3 images from" in out
    np.testing.assert_array_equal(read_png(tmp_path / "last.png"), reference.run(load(model_path), frames[2]))
    rc, out, err = run_cli(capsys, tmp_path / "g" / "a1.png", "--model", model_path, "-q")
    assert rc == 0 and "1 denoised" in out


def test_colour_on_luma_and_per_channel(tmp_path, capsys, model_path):
    from edgespike.frames import to_luma

    (rgb,) = noisy_frames(1, rgb=True)
    (tmp_path / "c.png").write_bytes(png.encode_png(rgb))
    model = load(model_path)
    rc, _, err = run_cli(capsys, tmp_path / "c.png", "--model", model_path, "-o", tmp_path / "luma.png", "-q")
    assert rc == 0, err
    out = read_png(tmp_path / "luma.png")
    y, cb, cr = to_luma(rgb)
    y2, cb2, cr2 = to_luma(out)
    # Y is denoised; chroma survives the integer round trip to within rounding.
    assert np.abs(y2.astype(int) - reference.run(model, y).astype(int)).max() <= 2
    assert np.abs(cb2.astype(int) - cb.astype(int)).max() <= 3
    rc, _, err = run_cli(capsys, tmp_path / "c.png", "--model", model_path, "--color", "per-channel", "-o",
                         tmp_path / "pc.png", "-q")
    assert rc == 0, err
    pc = read_png(tmp_path / "pc.png")
    for c in range(3):
        np.testing.assert_array_equal(pc[..., c], reference.run(model, np.ascontiguousarray(rgb[..., c])))
    rc, _, err = run_cli(capsys, tmp_path / "c.png", "--model", model_path, "--color", "gray", "-o",
                         tmp_path / "g.png", "-q")
    assert rc == 0 and read_png(tmp_path / "g.png").ndim == 2


def test_odd_frame_size_is_padded_internally_and_cropped_back(tmp_path, capsys, model_path):
    """A size that is not a multiple of the model's stride product comes back at its own size."""
    from edgespike.model import ConvTranspose

    m = tiny_model()
    # A stride-2 down and up pair makes size_multiple 2; a 31x23 frame must still work and keep its size.
    m.nodes = [Conv("d", "input", np.ones((1, 1, 3, 3), np.int8), np.zeros(1, np.int32), stride=2),
               Neuron("nd", "d", np.array([1000], np.int32)),
               ConvTranspose("u", "nd", np.ones((1, 1, 2, 2), np.int8), np.zeros(1, np.int32)),
               Neuron("nu", "u", np.array([1], np.int32))]
    m.decoder = Decoder([ReadoutTerm("nu", "count", np.array([1], np.int32))], residual=True)
    assert m.size_multiple == 2
    save(m, tmp_path / "s2.esnn")
    (frame,) = noisy_frames(1, h=23, w=31)
    (tmp_path / "odd.png").write_bytes(png.encode_png(frame))
    rc, _, err = run_cli(capsys, tmp_path / "odd.png", "--model", tmp_path / "s2.esnn", "-o", tmp_path / "o.png",
                         "-q")
    assert rc == 0, err
    out = read_png(tmp_path / "o.png")
    assert out.shape == (23, 31)
    np.testing.assert_array_equal(out, reference.run(m, frame))


# ----------------------------------------------------------------------------------------------------- OpenCV video

def need_cv2():
    """OpenCV is imported per test: the rest of this file must run without the [camera] extra."""
    return pytest.importorskip("cv2", reason="the [camera] extra (opencv-python-headless) is not installed")


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10) -> None:
    cv = need_cv2()
    h, w = frames[0].shape[:2]
    vw = cv.VideoWriter(str(path), cv.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert vw.isOpened()
    for f in frames:
        vw.write(np.repeat(f[..., None], 3, axis=2) if f.ndim == 2 else f)
    vw.release()


def read_video(path: Path) -> list[np.ndarray]:
    cv = need_cv2()
    cap = cv.VideoCapture(str(path))
    out = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        out.append(f)
    cap.release()
    return out


def test_video_file_to_video_file(tmp_path, capsys, model_path):
    need_cv2()
    frames = [np.full((24, 32), 40 * i + 20, np.uint8) for i in range(6)]
    write_video(tmp_path / "in.avi", frames)
    log = tmp_path / "log.jsonl"
    rc, out, err = run_cli(capsys, tmp_path / "in.avi", "--model", model_path, "-o", tmp_path / "out.avi",
                           "--json-log", log, "-q")
    assert rc == 0, err
    assert "video " in out and "6 denoised" in out and "0 dropped" in out
    back = read_video(tmp_path / "out.avi")
    assert len(back) == 6 and back[0].shape == (24, 32, 3)
    assert len(log.read_text().splitlines()) == 6
    # Each written frame is the denoised version of what OpenCV decoded (MJPEG is lossy: compare loosely).
    model = load(model_path)
    src = read_video(tmp_path / "in.avi")
    for a, b in zip(src, back, strict=True):
        ref = reference.run(model, np.ascontiguousarray(a[..., 1]))
        assert np.abs(b[..., 1].astype(int) - ref.astype(int)).mean() < 4
    assert not list(tmp_path.glob(".*partial*"))


def test_side_by_side_video_with_overlay(tmp_path, capsys, model_path):
    need_cv2()
    rc, out, err = run_cli(capsys, "--model", model_path, "--size", "32x24", "--frames", 3, "-o",
                           tmp_path / "side.avi", "--view", "side", "-q")
    assert rc == 0, err
    back = read_video(tmp_path / "side.avi")
    assert len(back) == 3 and back[0].shape[1] == 2 * 32 + 4 and back[0].shape[0] > 24  # the stats strip


# ------------------------------------------------------------------------------------------------- fake picamera2


class FakePicamera2:
    """picamera2's API as edgespike uses it; frames are YUV420 buffers with rows padded to a stride."""

    cameras = [{"Model": "imx708", "Num": 0}]
    plan: list = []  # per open: frames before failing for good, None for forever, or an exception to raise
    opened: list = []
    stride_pad = 32

    def __init__(self, num=0):
        step = self.plan.pop(0) if self.plan else None
        if isinstance(step, BaseException):
            raise step
        self.num, self.left, self.n = num, step, 0
        self.config = self.controls = None
        self.started = self.closed = False
        FakePicamera2.opened.append(self)

    @staticmethod
    def global_camera_info():
        return list(FakePicamera2.cameras)

    def create_video_configuration(self, main=None, controls=None, **kw):
        return {"main": dict(main), "controls": dict(controls or {})}

    def configure(self, config):
        self.config = config

    def start(self):
        self.started = True

    def y_plane(self, n):
        w, h = self.config["main"]["size"]
        return ((np.arange(h)[:, None] * 3 + np.arange(w)[None, :] * 5 + n * 7) % 256).astype(np.uint8)

    def capture_array(self, name="main", wait=None):
        assert name == "main" and wait is False
        return "job"

    def wait(self, job, timeout=None):
        if self.left is not None and self.n >= self.left:
            time.sleep(min(timeout or 0, 0.01))
            raise TimeoutError("Picamera2 job timed out")
        w, h = self.config["main"]["size"]
        buf = np.full((h * 3 // 2, w + self.stride_pad), 255, np.uint8)  # padding and chroma: not the picture
        buf[:h, :w] = self.y_plane(self.n)
        self.n += 1
        return buf

    def stop(self):
        self.started = False

    def close(self):
        self.closed = True


@pytest.fixture()
def fake_picamera(monkeypatch):
    module = types.ModuleType("picamera2")
    module.Picamera2 = FakePicamera2
    monkeypatch.setitem(sys.modules, "picamera2", module)
    FakePicamera2.cameras = [{"Model": "imx708", "Num": 0}]
    FakePicamera2.plan = []
    FakePicamera2.opened = []
    return FakePicamera2


def test_picamera_gray_y_plane_stride_and_noise_reduction_off(tmp_path, capsys, model_path, fake_picamera):
    rc, out, err = run_cli(capsys, "--source", "picamera", "--model", model_path, "--size", "40x30", "--fps", 30,
                           "--frames", 3, "-o", f"{tmp_path}/raw/", "--view", "noisy", "-q")
    assert rc == 0, err
    cam = fake_picamera.opened[0]
    assert cam.config["main"] == {"format": "YUV420", "size": (40, 30)}
    controls = cam.config["controls"]
    assert controls["NoiseReductionMode"] == 0 and controls["FrameDurationLimits"] == (33333, 33333)
    assert cam.closed and "Raspberry Pi camera 0 (imx708)" in out
    files = sorted((tmp_path / "raw").glob("*.png"))
    assert len(files) == 3
    got = read_png(files[0])
    assert got.shape == (30, 40)  # no stride columns, no chroma rows
    # The live source may have dropped frames: each output is one of the Y planes, never padding.
    assert any(np.array_equal(got, cam.y_plane(n)) for n in range(cam.n))


def test_picamera_busy_missing_and_not_importable(capsys, model_path, fake_picamera, monkeypatch):
    fake_picamera.plan = [RuntimeError("Camera __init__ sequence did not complete.")]
    rc, _, err = run_cli(capsys, "picamera", "--model", model_path, "-q")
    assert_one_line_error(rc, err, "busy")
    fake_picamera.cameras = []
    rc, _, err = run_cli(capsys, "picamera", "--model", model_path, "-q")
    assert_one_line_error(rc, err, "no Raspberry Pi camera detected")
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import fails, as on a machine without it
    rc, _, err = run_cli(capsys, "picamera", "--model", model_path, "-q")
    assert_one_line_error(rc, err, "--system-site-packages")


def test_camera_failing_mid_stream_is_retried_then_reported(tmp_path, capsys, model_path, fake_picamera):
    """5 frames, then nothing, also after reopening: bounded retries, one line, exit 2, outputs complete."""
    fake_picamera.plan = [5, 0, 0, 0]
    log = tmp_path / "log.jsonl"
    rc, out, err = run_cli(capsys, "picamera", "--model", model_path, "--size", "32x24", "--retries", 2, "--timeout",
                           0.05, "--frames", 100, "-o", f"{tmp_path}/seq/", "--json-log", log, "-q")
    assert_one_line_error(rc, err, "stopped delivering frames", "2 retries")
    assert len(fake_picamera.opened) == 3  # the first open and one reopen per retry
    assert all(c.closed for c in fake_picamera.opened)
    assert "edgespike run summary" in out and "failed reads" in out
    n = len(log.read_text().splitlines())
    assert 1 <= n <= 5
    assert len(list((tmp_path / "seq").glob("frame_*.png"))) == n
    for line in log.read_text().splitlines():
        json.loads(line)  # every line complete


def test_live_video_rate_is_measured(tmp_path, capsys, model_path, fake_picamera):
    """A live source's video is opened after MEASURE frames at the denoised rate (at most the camera's)."""
    cv = need_cv2()
    rc, out, err = run_cli(capsys, "picamera", "--model", model_path, "--size", "32x24", "--fps", 30, "--frames", 12,
                           "-o", tmp_path / "live.avi", "-q", "--no-window")
    assert rc == 0, err
    assert len(read_video(tmp_path / "live.avi")) == 12
    cap = cv.VideoCapture(str(tmp_path / "live.avi"))
    assert 0.5 <= cap.get(cv.CAP_PROP_FPS) <= 30.0
    cap.release()


def test_camera_that_recovers_keeps_going(capsys, model_path, fake_picamera):
    fake_picamera.plan = [2, None]  # two frames, a failure, then a good camera after the reopen
    rc, out, err = run_cli(capsys, "picamera", "--model", model_path, "--size", "32x24", "--timeout", 0.05,
                           "--frames", 6, "-q")
    assert rc == 0, err
    assert "6 denoised" in out and "1 failed reads" in out


def test_camera_failing_mid_stream_leaves_a_playable_video(tmp_path, capsys, model_path, fake_picamera):
    need_cv2()
    fake_picamera.plan = [4, 0]
    rc, out, err = run_cli(capsys, "picamera", "--model", model_path, "--size", "32x24", "--retries", 1,
                           "--timeout", 0.05, "-o", tmp_path / "cam.avi", "-q", "--no-window")
    assert_one_line_error(rc, err, "stopped delivering frames")
    frames = read_video(tmp_path / "cam.avi")
    assert 1 <= len(frames) <= 4
    assert not list(tmp_path.glob(".*partial*"))


# ------------------------------------------------------------------------------------------------------ drop policy


class CountingLiveSource(Source):
    """A camera that makes frames as fast as it is read; ``made`` counts them."""

    kind = "fake camera"
    live = True

    def __init__(self):
        super().__init__()
        self.made = 0
        self.cond = threading.Condition()

    def open(self):
        self.description = "fake live camera"

    def read(self):
        with self.cond:
            self.made += 1
            self.cond.notify_all()
        time.sleep(0.001)
        return self._frame(np.full((8, 8), self.made % 256, np.uint8))


class SlowBackend:
    """Takes as long as the camera needs to make 5 more frames: slower than the camera, without a clock."""

    label = "slow fake"

    def __init__(self, source):
        self.source, self.seen = source, []

    def denoise(self, frame):
        self.seen.append(int(frame[0, 0]))
        with self.source.cond:
            target = self.source.made + 5
            self.source.cond.wait_for(lambda: self.source.made >= target, timeout=10)
        return frame, {"spike_rate": 0.1, "synaptic_ops": 10, "macs": 0, "seconds": 0.0}

    def close(self):
        pass


@pytest.mark.parametrize("queue", [1, 2])
def test_slow_model_drops_frames_from_a_live_source(queue):
    src = CountingLiveSource()
    backend = SlowBackend(src)
    summary = run_pipeline(src, backend, [], RunOptions(frames=6, queue=queue, status="off"))
    assert summary.error is None and summary.processed == 6
    assert summary.dropped >= 6  # at least 4 of every 5 new frames had no room
    # Accounting: every captured frame was denoised, dropped, or is still in the buffer (or being put).
    assert summary.processed + summary.dropped <= summary.captured <= summary.processed + summary.dropped + queue + 1
    # Frames are processed in capture order and the buffer never held more than `queue` frames.
    assert backend.seen == sorted(backend.seen)


def test_files_are_never_dropped(tmp_path):
    write_pngs(tmp_path, noisy_frames(5, h=8, w=8))
    src = sources.open_source(str(tmp_path), sources.SourceOptions())

    class Slow:
        label = "slow"

        def denoise(self, frame):
            time.sleep(0.02)
            return frame, {}

        def close(self):
            pass

    summary = run_pipeline(src, Slow(), [], RunOptions(status="off"))
    assert summary.processed == 5 and summary.dropped == 0 and summary.error is None


def test_frame_buffer_bounds():
    buf = FrameBuffer(2)
    stop = threading.Event()
    for i in range(5):
        buf.put(Frame(np.zeros((1, 1), np.uint8), i, 0.0), drop=True, stop=stop)
    assert buf.dropped == 3 and [f.index for f in buf.items] == [3, 4]
    stop.set()
    assert buf.put(Frame(np.zeros((1, 1), np.uint8), 9, 0.0), drop=False, stop=stop) is False


def test_histogram_percentiles():
    h = Histogram()
    for x in np.linspace(0.001, 0.1, 1000):
        h.add(float(x))
    assert abs(h.percentile(50) - 0.0505) / 0.0505 < 0.02
    assert abs(h.percentile(95) - 0.095) / 0.095 < 0.02
    assert h.max == pytest.approx(0.1)


# ---------------------------------------------------------------------------------------------- clean stop (signals)


def _spawn(tmp_path, *argv):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    return subprocess.Popen([sys.executable, "-m", "edgespike.cli", "run", *map(str, argv)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_lines(path: Path, n: int, proc, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.communicate()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("no frames within the time limit")


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_signal_ends_cleanly_with_a_complete_output(tmp_path, model_path, sig):
    """Ctrl-C or SIGTERM mid-run: exit 0, the summary, and a video with every logged frame in it."""
    import signal

    need_cv2()
    log = tmp_path / "log.jsonl"
    proc = _spawn(tmp_path, "--model", model_path, "--size", "32x24", "--fps", 50, "--frames", 100000, "-o",
                  "out.avi", "--json-log", log)
    _wait_for_lines(log, 3, proc)
    proc.send_signal(getattr(signal, sig))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"stopped by {sig}" in out and "Traceback" not in err
    n = len(log.read_text().splitlines())
    assert len(read_video(tmp_path / "out.avi")) == n
    assert not list(tmp_path.glob(".*partial*"))


# ---------------------------------------------------------------------------------------------------------- --list


def test_list_sources_says_what_works_and_why_not(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    rc, out, err = run_cli(capsys, "--list-sources")
    assert rc == 0, err
    assert "picamera2 is not importable" in out and "--system-site-packages" in out
    assert "demo" in out and "IMAGE, FOLDER" in out
    assert "no   --window" in out and "no display" in out
    assert ("yes  --serve" in out) == (sinks.imageio.can_encode_jpeg() is not None)


def test_list_sources_with_a_fake_pi_camera(capsys, fake_picamera):
    rc, out, _ = run_cli(capsys, "--list-sources")
    assert rc == 0 and "yes  picamera:0" in out and "imx708" in out


# ------------------------------------------------------------------------------------------------------ error paths


def test_error_paths_are_one_line_exit_2(tmp_path, capsys, model_path, monkeypatch):
    m = ["--model", model_path, "-q"]
    cases = [
        (["/dev/video99", *m], ["no camera at /dev/video99"]),
        (["--source", "7", *m], ["no camera at /dev/video7"]),
        ([tmp_path / "missing.mp4", *m], ["not found"]),
        ([f"{tmp_path}/*.png", *m], ["no images found"]),
        (["--backend", "tpu", *m], ["unknown backend 'tpu'"]),
        (["--backend", "fpga", *m], ["needs --port"]),
        (["--backend", "fpga", "--port", "/dev/nonexistent-tty", *m], ["cannot open /dev/nonexistent-tty"]),
        (["--size", "big", *m], ["--size"]),
        (["--color", "sepia", *m], ["--color"]),
        (["-o", tmp_path / "no" / "dir" / "x.png", *m], ["does not exist"]),
        (["-o", tmp_path / "x.xyz", *m], ["unknown output type"]),
        (["--model", tmp_path / "nope.esnn", "-q"], ["not found"]),
        (["--frames", "0", *m], ["--frames"]),
    ]
    for argv, words in cases:
        rc, _, err = run_cli(capsys, *argv)
        assert_one_line_error(rc, err, *words)
        assert len(err.strip().splitlines()) == 1, (argv, err)


def test_unreadable_files(tmp_path, capsys, model_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    rc, _, err = run_cli(capsys, tmp_path / "bad.png", "--model", model_path, "-q")
    assert_one_line_error(rc, err, "cannot read image", "bad.png")


def test_unreadable_video(tmp_path, capsys, model_path):
    need_cv2()
    (tmp_path / "bad.mp4").write_bytes(b"\0" * 1000)
    rc, _, err = run_cli(capsys, tmp_path / "bad.mp4", "--model", model_path, "-q")
    assert_one_line_error(rc, err, "cannot read", "bad.mp4")


def test_unreadable_image_mid_folder_keeps_what_was_written(tmp_path, capsys, model_path):
    frames = noisy_frames(3)
    write_pngs(tmp_path / "in", frames)
    (tmp_path / "in" / "img1.png").write_bytes(b"not a png")
    rc, out, err = run_cli(capsys, tmp_path / "in", "--model", model_path, "-o", f"{tmp_path}/out/", "-q")
    assert_one_line_error(rc, err, "img1.png")
    assert "1 denoised" in out
    (only,) = sorted((tmp_path / "out").glob("*.png"))
    np.testing.assert_array_equal(read_png(only), reference.run(load(model_path), frames[0]))


def test_window_without_display(capsys, model_path, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    rc, _, err = run_cli(capsys, "--window", "--model", model_path, "-q")
    assert_one_line_error(rc, err, "cannot open a window", "--serve")


def test_headless_opencv_window_is_refused(capsys, model_path, monkeypatch):
    need_cv2()
    monkeypatch.setenv("DISPLAY", ":99")
    monkeypatch.setattr(sinks.imageio.cv2(), "getBuildInformation", lambda: "GUI:  NONE\n")
    rc, _, err = run_cli(capsys, "--window", "--model", model_path, "-q")
    assert_one_line_error(rc, err, "no GUI")


def test_demo_source_fails_cleanly_without_default_model(capsys, monkeypatch, tmp_path):
    import edgespike.models

    monkeypatch.setattr(edgespike.models, "HERE", tmp_path)
    rc, _, err = run_cli(capsys, "-q")
    assert_one_line_error(rc, err, "--model FILE")


# ------------------------------------------------------------------------------------------------------------- misc


def test_cpu_backend_stats_and_exact_output(model_path):
    """The cpu backend gives the reference's pixels and a per-frame record with every stats field."""
    from edgespike.live.backends import CPUBackend, stats_dict

    b = CPUBackend(str(model_path))
    (frame,) = noisy_frames(1)
    out, st = b.denoise(frame)
    np.testing.assert_array_equal(out, reference.run(load(model_path), frame))
    d = stats_dict(st)
    assert set(d) >= {"spike_rate", "synaptic_ops", "macs", "seconds", "spikes"}
    _, trace = reference.run(load(model_path), frame, trace=True)
    assert d["spikes"] == sum(sum(v) for v in trace.spikes.values())


def test_energy_estimate_in_the_log_when_the_profiler_is_present(tmp_path, capsys, model_path):
    from edgespike.live.backends import energy_estimator

    log = tmp_path / "log.jsonl"
    rc, out, err = run_cli(capsys, "--model", model_path, "--size", "32x24", "--frames", 2, "--json-log", log, "-q")
    assert rc == 0, err
    row = json.loads(log.read_text().splitlines()[0])
    if energy_estimator() is None:
        assert "energy_uj" not in row and "energy" not in out
    else:
        assert row["energy_uj"] > 0 and row["ann_energy_uj"] > 0 and re.search(r"[0-9.]+ [mun]?J per frame", out)


def test_bare_install_without_opencv_or_pillow(tmp_path, capsys, model_path, monkeypatch):
    """numpy only (a fresh `pip install .`): the demo reads the sample and writes PNG through edgespike.png."""
    from edgespike.live import imageio

    monkeypatch.setattr(imageio, "optional", lambda name: None)
    rc, out, err = run_cli(capsys, "--model", model_path, "--size", "32x24", "--frames", 2, "-o",
                           tmp_path / "d.png", "--view", "side", "-q")
    assert rc == 0, err
    assert read_png(tmp_path / "d.png").shape == (24, 2 * 32 + 4, 3)  # no text renderer: no stats strip
    rc, _, err = run_cli(capsys, "--model", model_path, "--frames", 1, "-o", tmp_path / "d.avi", "-q")
    assert_one_line_error(rc, err, "needs OpenCV")
    rc, _, err = run_cli(capsys, "--model", model_path, "--frames", 1, "--serve", "--serve-port", 0, "-q")
    assert_one_line_error(rc, err, "JPEG")


def test_status_strip_wraps_at_separators():
    lines = sinks.wrap(["frame 8 | 485.5 ms latency | 1.3 fps | 0.700 spk/neuron/step | 54 dropped", "short"], 40)
    assert lines == ["frame 8 | 485.5 ms latency | 1.3 fps", "0.700 spk/neuron/step | 54 dropped", "short"]
    assert sinks.wrap(["x" * 50], 10) == ["x" * 50]  # nothing to break at: left whole, never cut mid-word


def test_window_shows_frames_and_q_stops_the_run(capsys, model_path, monkeypatch):
    """A GUI OpenCV stand-in: frames reach imshow as BGR side-by-side views; q ends the run cleanly."""
    from edgespike.live import imageio

    shown = []

    class FakeCV:
        error = RuntimeError
        WINDOW_NORMAL = FONT_HERSHEY_SIMPLEX = LINE_AA = 0

        @staticmethod
        def getBuildInformation():
            return "  GUI:                           GTK3\n"

        def namedWindow(self, *a):  # noqa: N802 - OpenCV's names
            pass

        def imshow(self, title, img):
            shown.append(img.copy())

        def waitKey(self, ms):  # noqa: N802
            return ord("q") if len(shown) >= 3 else -1

        def destroyWindow(self, *a):  # noqa: N802
            shown.append("closed")

        def putText(self, *a):  # noqa: N802
            pass

    fake = FakeCV()
    monkeypatch.setattr(imageio, "cv2", lambda: fake)
    monkeypatch.setenv("DISPLAY", ":0")
    rc, out, err = run_cli(capsys, "--model", model_path, "--size", "32x24", "--frames", 50, "--window", "-q")
    assert rc == 0, err
    assert "3 denoised" in out and "q pressed" in out
    assert shown[-1] == "closed" and shown[0].shape[1] == 2 * 32 + 4 and shown[0].shape[2] == 3


class FakeCapture:
    """cv2.VideoCapture stand-in for a V4L2 device: ``script`` decides what opening and reading do."""

    script = {"opened": True, "frames": 0}
    made: list = []

    def __init__(self, target, api=None):
        self.target, self.api, self.props, self.n = target, api, {}, 0
        FakeCapture.made.append(self)

    def isOpened(self):  # noqa: N802 - OpenCV's names
        return self.script["opened"]

    def set(self, prop, value):
        self.props[prop] = value
        return True

    def get(self, prop):
        return 30.0

    def read(self):
        if self.n >= self.script["frames"]:
            return False, None
        self.n += 1
        return True, np.full((24, 32, 3), (10, 20, 30), np.uint8)  # BGR

    def release(self):
        pass


@pytest.fixture()
def fake_v4l2(monkeypatch):
    from edgespike.live import imageio

    cv = need_cv2()
    fake = types.SimpleNamespace(**{k: getattr(cv, k) for k in dir(cv) if k.startswith(("CAP_", "IMWRITE_"))})
    fake.VideoCapture = FakeCapture
    fake.imencode, fake.resize, fake.putText = cv.imencode, cv.resize, cv.putText
    fake.FONT_HERSHEY_SIMPLEX, fake.LINE_AA = cv.FONT_HERSHEY_SIMPLEX, cv.LINE_AA
    monkeypatch.setattr(imageio, "cv2", lambda: fake)
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: p == "/dev/video0" or real_exists(p))
    FakeCapture.made = []
    return FakeCapture


def test_v4l2_camera_frames_are_rgb_and_settings_applied(tmp_path, capsys, model_path, fake_v4l2):
    fake_v4l2.script = {"opened": True, "frames": 1000}
    rc, out, err = run_cli(capsys, "/dev/video0", "--model", model_path, "--size", "32x24", "--fps", 15, "--frames",
                           2, "-o", tmp_path / "n.png", "--view", "noisy", "-q", "--no-window")
    assert rc == 0, err
    cap = fake_v4l2.made[0]
    cv = need_cv2()
    assert cap.api == cv.CAP_V4L2 and cap.props[cv.CAP_PROP_FRAME_WIDTH] == 32 and cap.props[cv.CAP_PROP_FPS] == 15
    assert cap.props[cv.CAP_PROP_BUFFERSIZE] == 1
    assert read_png(tmp_path / "n.png")[0, 0].tolist() == [30, 20, 10]  # BGR from OpenCV became RGB


def test_v4l2_busy_and_silent_cameras(capsys, model_path, fake_v4l2):
    fake_v4l2.script = {"opened": False, "frames": 0}
    rc, _, err = run_cli(capsys, "/dev/video0", "--model", model_path, "-q", "--no-window")
    assert_one_line_error(rc, err, "busy")
    fake_v4l2.script = {"opened": True, "frames": 0}  # what a Pi camera's libcamera node does under OpenCV
    rc, _, err = run_cli(capsys, "/dev/video0", "--model", model_path, "-q", "--no-window")
    assert_one_line_error(rc, err, "delivered no frame", "--source picamera")


def test_a_camera_that_hangs_is_reported_after_the_stall_timeout():
    release = threading.Event()

    class Hanging(Source):
        kind, live = "hanging camera", True

        def open(self):
            self.description = "hanging camera"

        def read(self):
            if self._index == 0:
                return self._frame(np.zeros((4, 4), np.uint8))
            release.wait(30)  # a driver that never returns
            return None

    class Echo:
        label = "echo"

        def denoise(self, f):
            return f, {}

        def close(self):
            pass

    try:
        summary = run_pipeline(Hanging(), Echo(), [], RunOptions(stall_timeout=0.3, status="off"))
    finally:
        release.set()
    assert isinstance(summary.error, UserError) and "no frame for 0.3 s" in str(summary.error)
    assert summary.processed == 1


def test_energy_is_printed_with_an_si_prefix():
    from edgespike.live.pipeline import joules

    assert joules(51.18) == "51.2 J" and joules(5.12e-5) == "51.2 uJ" and joules(3e-13) == "0.3 pJ"


def test_a_model_set_logs_the_noise_estimate_and_the_member_of_every_frame(tmp_path, capsys):
    """The blind set in run: each frame's record says which network ran and why; the energy prices that network."""
    import json

    from edgespike.modelset import ModelSet
    from edgespike.testing import bitplane_dncnn

    nets = {"quiet": bitplane_dncnn(depth=2, width=4, seed=0), "noisy": bitplane_dncnn(depth=3, width=4, seed=1)}
    save(ModelSet.from_spec(nets, "quiet,20,noisy"), tmp_path / "set.esnn")
    rng = np.random.default_rng(0)
    for i, sigma in enumerate((3, 40)):
        frame = np.clip(np.rint(120 + rng.normal(0, sigma, (24, 32))), 0, 255).astype(np.uint8)
        png.write_png(tmp_path / f"{i}.png", frame)
    log = tmp_path / "log.jsonl"
    rc, out, err = run_cli(capsys, f"{tmp_path}/*.png", "--model", tmp_path / "set.esnn", "-o", f"{tmp_path}/out/",
                           "--json-log", log, "-q")
    assert rc == 0, err
    assert "quiet on 1 frame(s), noisy on 1 frame(s)" in out  # the summary's networks row
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["member"] for r in records] == ["quiet", "noisy"]
    assert records[0]["sigma_estimate"] < 20 <= records[1]["sigma_estimate"]
    from edgespike.live.backends import energy_estimator

    if energy_estimator() is not None:  # priced as the member that ran: the deeper one costs more
        assert 0 < records[0]["energy_uj"] < records[1]["energy_uj"]
