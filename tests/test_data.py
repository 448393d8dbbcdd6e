"""Datasets (resolution, checksums, fetching from a file:// mirror), image reading and the noise protocol.

Nothing here touches the network: the named sets are read from ../shared/data through EDGESPIKE_DATA, and
downloads go to a file:// mirror built in a temporary folder.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from edgespike import data
from edgespike.data_checksums import CHECKSUMS
from edgespike.errors import UserError
from edgespike.metrics import psnr
from edgespike.png import PNGError, decode_png, encode_png, read_png

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_env(monkeypatch):
    monkeypatch.setenv("EDGESPIKE_DATA", str(SHARED))
    monkeypatch.setenv("EDGESPIKE_OFFLINE", "1")
    monkeypatch.delenv("EDGESPIKE_DATA_MIRROR", raising=False)


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A file:// mirror with the DnCNN layout holding Set12, and an empty cache."""
    root = tmp_path / "mirror"
    dest = root / data.REMOTE_DIRS["set12"]
    dest.mkdir(parents=True)
    for f in CHECKSUMS["set12"]:
        shutil.copy(SHARED / "set12" / f, dest / f)
    monkeypatch.setenv("EDGESPIKE_DATA_MIRROR", root.as_uri())
    monkeypatch.setenv("EDGESPIKE_DATA", str(tmp_path / "cache"))
    monkeypatch.delenv("EDGESPIKE_OFFLINE", raising=False)
    return dest


# ------------------------------------------------------------------ named sets and checksums


def test_checksum_table_has_the_standard_sets():
    assert {k: len(v) for k, v in CHECKSUMS.items()} == {"set12": 12, "bsd68": 68, "bsd400": 400}
    assert list(CHECKSUMS["set12"]) == [f"{i:02d}.png" for i in range(1, 13)]
    assert list(CHECKSUMS["bsd68"])[-1] == "test068.png"
    assert all(len(h) == 64 and int(h, 16) >= 0 for v in CHECKSUMS.values() for h in v.values())


@pytest.mark.parametrize("name", data.NAMES)
def test_shared_copies_verify(shared_env, name):
    s = data.status(name)
    assert s.complete and s.bad == [] and s.folder == SHARED / name


def test_resolve_named_folder_and_glob(shared_env):
    label, files = data.resolve("set12")
    assert label == "set12" and [f.name for f in files] == sorted(CHECKSUMS["set12"])
    label, files = data.resolve(str(SHARED / "bsd68"))
    assert len(files) == 68 and files == sorted(files)
    label, files = data.resolve(str(SHARED / "set12" / "1*.png"))
    assert [f.name for f in files] == ["10.png", "11.png", "12.png"]


def test_resolve_errors(shared_env, tmp_path):
    with pytest.raises(UserError, match="neither a dataset"):
        data.resolve(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="no images"):
        data.resolve(str(tmp_path))
    with pytest.raises(UserError, match="no files match"):
        data.resolve(str(tmp_path / "*.png"))


def test_missing_dataset_offline_says_how_to_provide(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESPIKE_DATA", str(tmp_path))
    monkeypatch.setenv("EDGESPIKE_OFFLINE", "1")
    with pytest.raises(UserError) as e:
        data.resolve("bsd68")
    msg = str(e.value)
    assert "\n" not in msg
    assert str(tmp_path / "bsd68") in msg and "--dataset DIR" in msg and "EDGESPIKE_DATA" in msg
    assert "68 of 68 files missing" in msg


def test_unreachable_source_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESPIKE_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("EDGESPIKE_DATA_MIRROR", (tmp_path / "no-mirror").as_uri())
    monkeypatch.delenv("EDGESPIKE_OFFLINE", raising=False)
    with pytest.raises(UserError, match="cannot download .*--dataset DIR") as e:
        data.fetch("set12")
    assert "\n" not in str(e.value)
    assert not any((tmp_path / "cache" / "set12").glob("*.png"))


def test_fetch_from_mirror_verifies_and_repairs(mirror):
    seen = []
    files = data.fetch("set12", progress=lambda done, total, name: seen.append((done, total, name)))
    assert len(files) == 12 and data.status("set12").complete
    assert seen[-1] == (12, 12, "12.png")
    # A damaged cached file is noticed and fetched again.
    files[3].write_bytes(b"garbage")
    st = data.status("set12")
    assert st.bad == ["04.png"] and not st.complete
    data.fetch("set12")
    assert data.status("set12").complete


def test_fetch_refuses_a_changed_source_and_saves_nothing(mirror):
    (mirror / "05.png").write_bytes((mirror / "05.png").read_bytes()[:-1] + b"\x00")
    with pytest.raises(UserError, match="05.png does not match its SHA-256"):
        data.fetch("set12")
    cache = data.data_root() / "set12"
    assert not (cache / "05.png").exists()
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_damaged_file_offline_is_reported(mirror, monkeypatch):
    data.fetch("set12")
    (data.data_root() / "set12" / "02.png").write_bytes(b"x")
    monkeypatch.setenv("EDGESPIKE_OFFLINE", "1")
    with pytest.raises(UserError, match="fail their SHA-256 check .e.g. 02.png"):
        data.fetch("set12")


def test_checksum_source_reproduces_the_table():
    text = data.checksum_source(SHARED)
    assert text == (Path(data.__file__).with_name("data_checksums.py")).read_text()


# ------------------------------------------------------------------ noise protocol


def test_gaussian_protocol_by_hand(shared_env):
    _, files = data.resolve("set12")
    s = list(data.samples(files, 25, limit=3))
    for i, sample in enumerate(s):
        x = read_png(files[i])
        n = np.random.default_rng(i).normal(0, 25 / 255, x.shape)
        want = np.clip(np.rint((x / 255 + n) * 255), 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(sample.noisy, want)
        np.testing.assert_array_equal(sample.clean, x)
    # The seed offsets the per-image generator: seed 1 for image 0 is image 1's generator of seed 0.
    x0 = read_png(files[0])
    n = np.random.default_rng(1).normal(0, 25 / 255, x0.shape)
    np.testing.assert_array_equal(data.noisy_image(x0, 0, 25, seed=1),
                                  np.clip(np.rint((x0 / 255 + n) * 255), 0, 255).astype(np.uint8))


def test_speckle_protocol_by_hand():
    x = np.arange(256, dtype=np.uint8).reshape(16, 16)
    n = np.random.default_rng(7).normal(0, 50 / 255, x.shape)
    xf = x / 255
    want = np.clip(np.rint((xf + xf * n) * 255), 0, 255).astype(np.uint8)
    got = data.noisy_image(x, 7, 50, "speckle")
    np.testing.assert_array_equal(got, want)
    assert got[0, 0] == 0  # multiplicative: black stays black


def test_noisy_set12_psnr_matches_the_shared_readme(shared_env):
    # ../shared/README.md: noisy input at sigma 25 measures 20.35 dB on Set12 with this protocol.
    _, files = data.resolve("set12")
    mean = np.mean([psnr(s.clean, s.noisy) for s in data.samples(files, 25)])
    assert mean == pytest.approx(20.35, abs=0.005)


@pytest.mark.parametrize("bad", [-1, 256, float("nan"), "abc", None])
def test_bad_sigma(bad):
    with pytest.raises(UserError, match="sigma"):
        data.check_sigma(bad)


def test_zero_sigma_is_clean():
    x = np.arange(64, dtype=np.uint8).reshape(8, 8)
    np.testing.assert_array_equal(data.noisy_image(x, 0, 0), x)


def test_unknown_noise():
    with pytest.raises(UserError, match="unknown noise"):
        data.noisy_image(np.zeros((4, 4), np.uint8), 0, 10, "poisson")


# ------------------------------------------------------------------ reading images


def _pillow_images(tmp_path) -> dict[str, tuple[Path, str | None]]:
    """PNG files of several kinds written by Pillow, with the conversion note each must produce."""
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (13, 17)).astype(np.uint8)
    rgb = rng.integers(0, 256, (13, 17, 3)).astype(np.uint8)
    files = {}

    def save(name, im, note):
        p = tmp_path / f"{name}.png"
        im.save(p)
        files[name] = (p, note)

    save("grey", Image.fromarray(grey), None)
    save("rgb", Image.fromarray(rgb), "colour converted to BT.601 luma")
    save("rgba", Image.fromarray(np.dstack([rgb, grey])), "alpha channel dropped; colour converted to BT.601 luma")
    save("la", Image.fromarray(np.dstack([grey, grey])), "alpha channel dropped")
    save("grey16", Image.fromarray(grey.astype(np.uint16) * 257 + 3), "16-bit scaled to 8-bit")
    save("palette", Image.fromarray(rgb).quantize(16), "colour converted to BT.601 luma")
    save("bits", Image.fromarray(grey > 128), "binary image scaled to 0/255")
    return files


def test_read_image_conversions_and_both_decoders_agree(tmp_path, monkeypatch):
    files = _pillow_images(tmp_path)
    with_pillow = {k: data.read_image(p) for k, (p, _) in files.items()}
    for k, (_, note) in files.items():
        frame, got = with_pillow[k]
        assert frame.dtype == np.uint8 and frame.shape == (13, 17), k
        if k != "bits":  # Pillow reads 1-bit as bool; the built-in decoder scales grey 1-bit to 0/255 itself
            assert got == note, k
    monkeypatch.setitem(sys.modules, "PIL", None)  # make "from PIL import Image" fail
    for k, (p, _) in files.items():
        frame, _note = data.read_image(p)
        np.testing.assert_array_equal(frame, with_pillow[k][0], err_msg=k)


def test_builtin_png_decoder_matches_pillow_on_set12():
    Image = pytest.importorskip("PIL.Image")
    for f in sorted((SHARED / "set12").glob("*.png"))[:4]:
        np.testing.assert_array_equal(read_png(f), np.asarray(Image.open(f)))


def test_png_round_trip_and_damage():
    rng = np.random.default_rng(2)
    for img in (rng.integers(0, 256, (5, 7)).astype(np.uint8), rng.integers(0, 256, (4, 3, 3)).astype(np.uint8)):
        np.testing.assert_array_equal(decode_png(encode_png(img)), img)
    blob = bytearray(encode_png(np.zeros((4, 4), np.uint8)))
    blob[-20] ^= 0xFF
    with pytest.raises(PNGError, match="CRC|corrupt|truncated"):
        decode_png(bytes(blob))
    with pytest.raises(PNGError, match="not a PNG"):
        decode_png(b"GIF89a")


def test_non_png_without_pillow_says_what_to_install(tmp_path, monkeypatch):
    p = tmp_path / "x.jpg"
    p.write_bytes(b"\xff\xd8\xff")
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(UserError, match="pip install pillow"):
        data.read_image(p)


def test_failed_fetch_leaves_no_empty_dataset_folder(tmp_path, monkeypatch, capsys):
    """Without network: one line, exit 2, and no empty set12/ that would look like a fetched dataset."""
    from edgespike.cli import main

    monkeypatch.setenv("EDGESPIKE_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("EDGESPIKE_DATA_MIRROR", (tmp_path / "no-mirror").as_uri())
    monkeypatch.delenv("EDGESPIKE_OFFLINE", raising=False)
    assert main(["data", "fetch", "set12"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgespike: error: dataset set12: cannot download") and err.count("\n") == 1
    assert not (tmp_path / "cache").exists()
