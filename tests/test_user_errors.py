"""What a new user hits (issue 19): every case ends in one line naming the problem and what to do, exit status 2,
no traceback and no file left behind; the conversions, the model and long steps are reported.

Read-only folders: CI runs as root, and root writes through ``chmod``. The tests that must hold as root simulate a
read-only mount (``tempfile.mkstemp`` raising ``EROFS`` in that folder, as the kernel does there) or use a path
whose parent is a regular file; the plain ``chmod`` test runs only as a normal user and says so when skipped.
"""

from __future__ import annotations

import errno
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from test_run import assert_one_line_error, need_cv2, tiny_model

from edgespike import png
from edgespike.cli import main
from edgespike.fileformat import save


@pytest.fixture()
def model_path(tmp_path) -> Path:
    path = tmp_path / "tiny.esnn"
    save(tiny_model(), path)
    return path


@pytest.fixture()
def image(tmp_path) -> Path:
    path = tmp_path / "in.png"
    png.write_png(path, np.random.default_rng(0).integers(0, 256, (12, 16), dtype=np.uint8))
    return path


def cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def leftovers(folder: Path) -> list[str]:
    """Hidden partial or probe files: nothing of the kind may stay behind after a refusal."""
    return sorted(p.name for p in folder.rglob(".*") if "partial" in p.name or "probe" in p.name)


@pytest.fixture()
def read_only(tmp_path, monkeypatch) -> Path:
    """A folder that behaves as on a read-only mount, also for root: creating a file in it fails with EROFS."""
    folder = tmp_path / "ro"
    folder.mkdir()
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):  # noqa: A002 - tempfile's keyword
        if dir is not None and Path(dir).resolve() == folder.resolve():
            raise OSError(errno.EROFS, "Read-only file system", str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    return folder


# ------------------------------------------------------------------------------------------------ output paths


def test_denoise_into_a_folder_is_refused(tmp_path, capsys, model_path, image):
    (tmp_path / "existing_dir.png").mkdir()
    rc, out, err = cli(capsys, "denoise", image, "--model", model_path, "-o", tmp_path / "existing_dir.png")
    assert_one_line_error(rc, err, "existing_dir.png: it is a folder", "name a file")
    assert list((tmp_path / "existing_dir.png").iterdir()) == [] and leftovers(tmp_path) == []


def test_denoise_into_a_missing_folder_or_under_a_file(tmp_path, capsys, model_path, image):
    rc, _, err = cli(capsys, "denoise", image, "--model", model_path, "-o", tmp_path / "no" / "x.png")
    assert_one_line_error(rc, err, "folder", "does not exist", "create it")
    (tmp_path / "afile").write_text("")
    rc, _, err = cli(capsys, "denoise", image, "--model", model_path, "-o", tmp_path / "afile" / "x.png")
    assert_one_line_error(rc, err, "afile is a file, not a folder")
    assert leftovers(tmp_path) == []


def test_denoise_into_a_read_only_folder(tmp_path, capsys, model_path, image, read_only):
    rc, _, err = cli(capsys, "denoise", image, "--model", model_path, "-o", read_only / "x.png")
    assert_one_line_error(rc, err, "ro is read-only", "choose a writable folder")
    assert list(read_only.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod 555; the read_only fixture covers root")
def test_denoise_into_a_chmod_read_only_folder(tmp_path, capsys, model_path, image):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o555)
    try:
        rc, _, err = cli(capsys, "denoise", image, "--model", model_path, "-o", folder / "x.png")
    finally:
        folder.chmod(0o755)
    assert_one_line_error(rc, err, "is read-only")
    assert list(folder.iterdir()) == []


def test_write_atomic_in_a_read_only_folder_is_an_oserror_for_library_users(read_only):
    from edgespike.files import OutputError, write_atomic

    with pytest.raises(OSError, match="read-only") as e:
        write_atomic(read_only / "x.bin", b"data")
    assert isinstance(e.value, OutputError)


@pytest.mark.parametrize("name", ["x.png", "x.avi"])
def test_run_into_a_read_only_folder(tmp_path, capsys, model_path, read_only, name):
    if name.endswith(".avi"):
        need_cv2()
    rc, out, err = cli(capsys, "run", "--model", model_path, "--size", "16x12", "--frames", 2, "-q",
                       "-o", read_only / name)
    assert_one_line_error(rc, err, "ro is read-only", "choose a writable folder")
    assert "encoder" not in err and out == ""  # refused before the first frame, not with the wrong advice
    assert list(read_only.iterdir()) == []


def test_run_video_into_a_folder_leaves_no_partial_file(tmp_path, capsys, model_path, monkeypatch):
    need_cv2()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dir.avi").mkdir()
    rc, out, err = cli(capsys, "run", "--model", model_path, "--size", "16x12", "--frames", 2, "-q", "-o", "dir.avi")
    assert_one_line_error(rc, err, "dir.avi: it is a folder", "name a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.avi", "tiny.esnn"]


def test_run_into_a_missing_folder_or_under_a_file(tmp_path, capsys, model_path):
    (tmp_path / "afile").write_text("")
    for target, words in [(tmp_path / "no" / "x.png", ["does not exist"]),
                          (tmp_path / "afile" / "x.png", ["is a file, not a folder"]),
                          (f"{tmp_path / 'afile' / 'frames'}/", ["is a file, not a folder"])]:
        rc, out, err = cli(capsys, "run", "--model", model_path, "--size", "16x12", "--frames", 1, "-q",
                           "-o", target)
        assert_one_line_error(rc, err, *words)
    assert leftovers(tmp_path) == [] and not (tmp_path / "no").exists()


def test_run_on_a_folder_names_outputs_after_the_sources(tmp_path, capsys, model_path):
    src = tmp_path / "shots"
    src.mkdir()
    for name in ("b.png", "a10.png", "a2.png"):
        png.write_png(src / name, np.full((12, 16), 100, np.uint8))
    rc, out, err = cli(capsys, "run", src, "--model", model_path, "-q", "-o", f"{tmp_path / 'out'}/")
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a10.png", "a2.png", "b.png"]
    # into the folder the images come from: refused, not overwritten
    before = (src / "b.png").read_bytes()
    rc, _, err = cli(capsys, "run", src, "--model", model_path, "-q", "-o", src)
    assert_one_line_error(rc, err, "would overwrite the source image")
    assert (src / "b.png").read_bytes() == before


# ------------------------------------------------------------------------------------------------- image size


def bomb_png(path: Path, side: int = 16000) -> Path:
    """A valid PNG declaring ``side`` x ``side`` grey pixels, all zero: ~250 KB on disk, 256 MB decoded."""
    comp = zlib.compressobj(9)
    row = b"\0" * (side + 1)
    data = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path.write_bytes(png.SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


@pytest.fixture()
def bomb(tmp_path) -> Path:
    return bomb_png(tmp_path / "bomb.png")


@pytest.fixture(params=["installed decoders", "numpy only"])
def decoders(request, monkeypatch):
    """Both installs: with Pillow/OpenCV (Pillow would warn about a decompression bomb), and numpy alone."""
    from edgespike.live import imageio

    if request.param == "numpy only":
        monkeypatch.setattr(imageio, "pil_image", lambda: None)
        monkeypatch.setattr(imageio, "cv2", lambda: None)
    return request.param


def test_denoise_refuses_an_image_over_the_pixel_limit_from_its_header(tmp_path, capsys, model_path, bomb,
                                                                      decoders, monkeypatch, recwarn):
    from edgespike import png as png_module

    def no_decode(*a, **k):
        raise AssertionError("the image was decoded before its size was checked")

    monkeypatch.setattr(png_module, "decode_png", no_decode)
    rc, out, err = cli(capsys, "denoise", bomb, "--model", model_path, "-o", tmp_path / "out.png")
    assert_one_line_error(rc, err, "bomb.png is 16000x16000", "over the limit of 40 megapixels", "--max-pixels")
    assert len(err.strip().splitlines()) == 1 and not recwarn.list  # no DecompressionBombWarning either
    assert not (tmp_path / "out.png").exists() and leftovers(tmp_path) == []


def test_run_refuses_an_image_over_a_lower_pixel_limit(tmp_path, capsys, model_path, image):
    rc, out, err = cli(capsys, "run", image, "--model", model_path, "-q", "--max-pixels", 100, "-o",
                       tmp_path / "out.png")
    assert_one_line_error(rc, err, "in.png is 16x12", "over the limit of 0.0001 megapixels")
    assert not (tmp_path / "out.png").exists()
    rc, _, err = cli(capsys, "run", image, "--model", model_path, "-q", "--max-pixels", 192, "-o",
                     tmp_path / "out.png")
    assert rc == 0 and (tmp_path / "out.png").exists()


def test_the_pixel_limit_is_stated_in_help(capsys):
    for command in ("denoise", "run"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--max-pixels N" in text and "40,000,000" in text and "0 = no limit" in text


def test_negative_pixel_limit_is_one_line(capsys, model_path, image):
    rc, _, err = cli(capsys, "denoise", image, "--model", model_path, "--max-pixels", -1)
    assert_one_line_error(rc, err, "--max-pixels -1")


# ------------------------------------------------------------------------------------------- conversion notes


def conversions(tmp_path) -> dict[str, tuple[Path, str]]:
    """Image files that need converting, and the note each must produce."""
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, (12, 16, 4), dtype=np.uint8)
    rgba[..., 3] = 128
    cases = {}
    p = tmp_path / "rgba.png"
    p.write_bytes(_png_bytes(rgba, 6, 8))
    cases["rgba"] = (p, "alpha channel dropped (transparent parts")
    g16 = (rng.integers(0, 65536, (12, 16))).astype(">u2")
    p = tmp_path / "g16.png"
    p.write_bytes(_png_bytes(g16.view(np.uint8).reshape(12, 32), 0, 16))
    cases["16-bit"] = (p, "16-bit scaled to 8-bit")
    p = tmp_path / "pal.png"
    p.write_bytes(_png_bytes(rng.integers(0, 4, (12, 16), dtype=np.uint8), 3, 8,
                             plte=bytes([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])))
    cases["palette"] = (p, "palette colours expanded to RGB")
    return cases


def _png_bytes(rows: np.ndarray, ctype: int, depth: int, plte: bytes | None = None) -> bytes:
    """A PNG of raw rows (filter 0) of colour type ``ctype`` and bit depth ``depth``: written by hand, so the
    16-bit and palette files do not depend on an imaging library."""
    h = rows.shape[0]
    w = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[ctype]
    width = rows.reshape(h, -1).shape[1] // (w * depth // 8)
    raw = b"".join(b"\0" + r.tobytes() for r in rows.reshape(h, -1))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    body = chunk(b"IHDR", struct.pack(">IIBBBBB", width, h, depth, ctype, 0, 0, 0))
    if plte:
        body += chunk(b"PLTE", plte)
    return png.SIGNATURE + body + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("kind", ["rgba", "16-bit", "palette"])
def test_denoise_notes_each_conversion(tmp_path, capsys, model_path, decoders, kind):
    path, note = conversions(tmp_path)[kind]
    rc, out, err = cli(capsys, "denoise", path, "--model", model_path, "-o", tmp_path / "out.png")
    assert rc == 0, err
    assert f"edgespike: note: {path}: {note}" in err
    assert (tmp_path / "out.png").exists()


def test_denoise_notes_a_jpeg(tmp_path, capsys, model_path):
    from edgespike.live import imageio

    if imageio.pil_image() is None:
        pytest.skip("reading JPEG here needs Pillow")
    Image = imageio.pil_image()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 16), dtype=np.uint8)).save(tmp_path / "a.jpg")
    rc, out, err = cli(capsys, "denoise", tmp_path / "a.jpg", "--model", model_path, "-o", tmp_path / "out.png")
    assert rc == 0 and "lossy JPEG" in err


def test_run_notes_a_conversion_once_per_kind(tmp_path, capsys, model_path):
    folder = tmp_path / "in"
    folder.mkdir()
    path, note = conversions(tmp_path)["rgba"]
    for i in range(3):
        (folder / f"a{i}.png").write_bytes(path.read_bytes())
    rc, out, err = cli(capsys, "run", folder, "--model", model_path, "-q", "-o", f"{tmp_path / 'out'}/")
    assert rc == 0, err
    assert err.count(note) == 1 and "a0.png" in err


# --------------------------------------------------------------------------------------------- wrong-flag advice


def test_serve_with_a_value_says_what_was_meant(capsys, model_path):
    rc, _, err = cli(capsys, "run", "--serve", "8081", "--model", model_path, "-q")
    assert_one_line_error(rc, err, "--serve takes no value", "--serve --serve-port 8081")
    assert "/dev/video8081" in err  # says how the number was read


def test_advice_names_flags_that_exist(capsys, monkeypatch, model_path):
    """Every piece of advice in the messages names an option the command takes, with the value it takes."""
    from edgespike.live import sinks

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    rc, _, err = cli(capsys, "run", "--window", "--model", model_path, "-q")
    assert_one_line_error(rc, err, "--serve")
    assert "--serve PORT" not in err and "--serve 0" not in err
    assert "--serve PORT" not in sinks.window_problem()


def test_rtl_subcommands_have_their_own_help(capsys):
    pytest.importorskip("amaranth")
    texts = {}
    for name in ("sim", "verilog"):
        with pytest.raises(SystemExit):
            main(["rtl", name, "--help"])
        texts[name] = " ".join(capsys.readouterr().out.split())
    assert "Verilog" in texts["verilog"] and "simulate" not in texts["verilog"]
    assert "simulate a small frame" in texts["sim"] and "layer pipeline" in texts["sim"]
    with pytest.raises(SystemExit):
        main(["rtl", "--help"])
    out = capsys.readouterr().out
    assert "write the accelerator's top level as Verilog" in " ".join(out.split())


def test_export_takes_a_shipped_model_name(tmp_path, capsys):
    pytest.importorskip("onnx")
    rc, out, err = cli(capsys, "export", "s25", "--to", "onnx", "-o", tmp_path / "s25.onnx")
    assert rc == 0, err
    assert (tmp_path / "s25.onnx").stat().st_size > 0
    rc, _, err = cli(capsys, "export", "s25", "--to", "onnx", "-o", tmp_path / "no" / "x.onnx")
    assert_one_line_error(rc, err, "does not exist")


# ----------------------------------------------------------------------------------------- the model that ran


def test_run_and_denoise_summaries_name_the_model(tmp_path, capsys, model_path, image):
    rc, out, err = cli(capsys, "denoise", image, "--model", model_path, "-o", tmp_path / "o.png")
    assert rc == 0 and f"model: {model_path} (no name in its metadata)" in out
    rc, out, err = cli(capsys, "run", image, "-q", "-o", tmp_path / "o.png")  # an image file: the blind model
    assert rc == 0, err
    (line,) = [ln for ln in out.splitlines() if ln.strip().startswith("model")]
    assert "default_blind.esnn (shipped 'blind', name default_blind)" in line


def test_profile_summary_names_the_model(tmp_path, capsys, monkeypatch):
    from edgespike.profile import sensors
    from edgespike.profile.testmodels import random_dncnn

    monkeypatch.setattr(sensors, "discover", lambda *a, **k: ([], ["no sensor (test)"]))
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(2):
        png.write_png(imgs / f"{i}.png", np.full((16, 16), 60 + 40 * i, np.uint8))
    save(random_dncnn(depth=3, width=4, timesteps=2, seed=0), tmp_path / "m.esnn")
    rc, out, err = cli(capsys, "profile", "--model", tmp_path / "m.esnn", "--eval", imgs, "--ann", "none",
                       "--size", "16x16", "--frames", 1, "--quiet")
    assert rc == 0, err
    assert out.splitlines()[0].startswith(f"model {tmp_path / 'm.esnn'} (")


def test_profile_measures_the_snn_memory_with_a_fresh_runtime(tmp_path, monkeypatch):
    """The SNN that scored the eval set keeps its buffers: measured as it was, its peak showed 0 MiB. It is now
    built inside its measurement, as the ANN runtimes are."""
    from edgespike.profile import measure
    from edgespike.profile import run as prun

    calls = []
    real = measure.latency

    def spy(fn, frame, *a, make=None, **k):
        calls.append(make)
        return real(fn, frame, *a, make=make, **k)

    monkeypatch.setattr(measure, "latency", spy)
    from edgespike.profile.testmodels import random_dncnn

    rng = np.random.default_rng(0)
    model = random_dncnn(depth=3, width=4, timesteps=2, seed=0)
    files = []
    for i in range(2):
        path = tmp_path / f"{i}.png"
        png.write_png(path, rng.integers(0, 256, (16, 16), dtype=np.uint8))
        files.append(path)
    opts = prun.Options(anns=(), size=(16, 16), frames=1, warmup=0, eval_files=files, eval_label="t", sigma=25.0)
    res = prun.profile(model, opts, "m")
    assert calls and calls[0] is not None and isinstance(calls[0](), prun.SnnRunner)
    assert "snn" in res["latency"]


def test_tflite_prints_no_info_line(capfd):
    pytest.importorskip("ai_edge_litert")
    from edgespike.profile.ann import TfliteRunner, to_tflite, twin
    from edgespike.profile.testmodels import random_dncnn

    frames = [np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8)]
    content = to_tflite(twin(random_dncnn(depth=3, width=4, timesteps=2, seed=0)), frames, 16, 16)
    capfd.readouterr()
    TfliteRunner(content, 1)(frames[0])
    assert "INFO:" not in capfd.readouterr().err


def test_denoise_of_a_large_image_shows_a_heartbeat(tmp_path, capsys, model_path, image, monkeypatch):
    import contextlib

    from edgespike import progress
    from edgespike.commands import denoise

    seen = []

    @contextlib.contextmanager
    def beat(what, expected=None, every=5.0, enabled=True, stream=None):
        seen.append((what, enabled))
        yield

    monkeypatch.setattr(progress, "heartbeat", beat)
    monkeypatch.setattr(denoise, "LARGE_PIXELS", 100)  # the 16x12 test image counts as large
    rc, _, err = cli(capsys, "denoise", image, "--model", model_path, "-o", tmp_path / "o.png")
    assert rc == 0, err
    assert seen == [(f"denoising {image} (16x12)", True)]
    monkeypatch.setattr(denoise, "LARGE_PIXELS", 10**6)
    cli(capsys, "denoise", image, "--model", model_path, "-o", tmp_path / "o.png")
    assert seen[-1][1] is False
