"""What a new user hits (issue 19): every case ends in one line naming the problem and what to do, exit status 2,
no traceback and no file left behind; the conversions, the model and long steps are reported.

Read-only folders: CI runs as root, and root writes through ``chmod``. The tests that must hold as root simulate a
read-only mount (``tempfile.mkstemp`` raising ``EROFS`` in that folder, as the kernel does there) or use a path
whose parent is a regular file; the plain ``chmod`` test runs only as a normal user and says so when skipped.
"""

from __future__ import annotations

import errno
import os
import tempfile
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
