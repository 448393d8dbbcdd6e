"""``edgespike eval`` and ``edgespike data`` end to end on two Set12 images from ../shared with a tiny model.

Figures are recomputed independently (noise protocol by hand, the reference, the metrics) so that the command's
plumbing (image order, seeds, which image is compared with which) is what is tested.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from edgespike import reference
from edgespike.cli import main
from edgespike.commands import eval as eval_cmd
from edgespike.data import read_image
from edgespike.fileformat import save
from edgespike.metrics import psnr, ssim
from edgespike.model import Conv, Decoder, Integrator, Model, Neuron, ReadoutTerm
from edgespike.png import read_png
from edgespike.twin import Twin

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def tiny_model() -> Model:
    """conv 3x3 (1 -> 4) -> IF -> conv 3x3 (4 -> 1) -> Integrator, T = 4, residual read-out."""
    rng = np.random.default_rng(11)
    w1 = rng.integers(-12, 13, (4, 1, 3, 3)).astype(np.int8)
    w1[:, 0, 1, 1] = [20, -20, 15, -15]
    return Model(
        nodes=[
            Conv("c1", "input", w1, np.array([0, 2550, -600, 1800], np.int32)),
            Neuron("n1", "c1", np.array([900, 700, 800, 1000], np.int32), v_init="half"),
            Conv("c2", "n1", rng.integers(-9, 10, (1, 4, 3, 3)).astype(np.int8), np.array([-3], np.int32)),
            Integrator("out", "c2"),
        ],
        timesteps=4,
        decoder=Decoder([ReadoutTerm("out", "membrane", np.array([3], np.int32))], shift=3),
        metadata={"task": "test"},
    )


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("model") / "tiny.esnn"
    save(tiny_model(), p)
    return p


@pytest.fixture
def two_images(tmp_path) -> Path:
    d = tmp_path / "two"
    d.mkdir()
    for f in ("01.png", "02.png"):
        shutil.copy(SHARED / "set12" / f, d / f)
    return d


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("EDGESPIKE_DATA", str(SHARED))
    monkeypatch.setenv("EDGESPIKE_OFFLINE", "1")


def run_json(capsys, *argv) -> dict:
    assert main(["eval", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def noisy(clean: np.ndarray, i: int, sigma: float, seed: int = 0) -> np.ndarray:
    n = np.random.default_rng(seed + i).normal(0, sigma / 255, clean.shape)
    return np.clip(np.rint((clean / 255 + n) * 255), 0, 255).astype(np.uint8)


def test_json_figures_are_the_reference_run_on_the_protocol_noise(capsys, model_file):
    doc = run_json(capsys, "--model", str(model_file), "--dataset", "set12", "--limit", "2", "--sigma", "30",
                   "--seed", "5")
    assert doc["dataset"] == "set12" and doc["sigma"] == 30 and doc["seed"] == 5 and doc["noise"] == "gaussian"
    assert doc["timesteps"] == 4 and doc["model_metadata"] == {"task": "test"}
    assert [r["file"] for r in doc["images"]] == ["01.png", "02.png"]
    model = tiny_model()
    for i, rec in enumerate(doc["images"]):
        clean = read_png(SHARED / "set12" / rec["file"])
        y = noisy(clean, i, 30, seed=5)
        out, trace = reference.run(model, y, trace=True)
        assert rec["psnr_noisy"] == pytest.approx(psnr(clean, y))
        assert rec["ssim_noisy"] == pytest.approx(ssim(clean, y))
        assert rec["psnr"] == pytest.approx(psnr(clean, out))
        assert rec["ssim"] == pytest.approx(ssim(clean, out))
        rate = sum(trace.spikes["n1"]) / (trace.counts["n1"].size * 4)
        assert rec["spike_rate"] == pytest.approx(rate)
        assert rec["synaptic_ops"] == sum(trace.spikes["n1"]) * 1 * 9  # C_out * k^2 per input spike
        assert rec["width"] == rec["height"] == 256 and rec["note"] is None and rec["seconds"] > 0
        assert "compare" not in rec
    for k in ("psnr", "ssim", "psnr_noisy", "spike_rate", "synaptic_ops", "seconds"):
        assert doc["mean"][k] == pytest.approx(np.mean([r[k] for r in doc["images"]]))
    assert doc["images"][0]["psnr"] != doc["images"][1]["psnr"]


def test_compare_ann_runs_the_twin_on_the_same_noisy_image(capsys, model_file, two_images):
    doc = run_json(capsys, "--model", str(model_file), "--dataset", str(two_images), "--compare", "ann")
    twin = Twin(tiny_model(), "quant")
    for i, rec in enumerate(doc["images"]):
        clean = read_png(two_images / rec["file"])
        want = twin.denoise(noisy(clean, i, 25))
        assert rec["compare"]["method"] == "ANN twin (quant)"
        assert rec["compare"]["psnr"] == pytest.approx(psnr(clean, want))
        # One spiking layer under constant drive: the quant twin is exact, so it scores like the SNN.
        assert rec["compare"]["psnr"] == pytest.approx(rec["psnr"])
    assert doc["mean"]["compare"]["method"] == "ANN twin (quant)"
    doc = run_json(capsys, "--model", str(model_file), "--dataset", str(two_images), "--compare", "ann",
                   "--ann-mode", "relu", "--limit", "1")
    assert doc["images"][0]["compare"]["method"] == "ANN twin (relu)"


def test_speckle_noise_is_used(capsys, model_file, two_images):
    g = run_json(capsys, "--model", str(model_file), "--dataset", str(two_images), "--limit", "1")
    s = run_json(capsys, "--model", str(model_file), "--dataset", str(two_images), "--limit", "1",
                 "--noise", "speckle")
    assert s["noise"] == "speckle"
    assert s["images"][0]["psnr_noisy"] > g["images"][0]["psnr_noisy"]  # speckle is weaker in dark regions


def test_table_output(capsys, model_file, two_images):
    assert main(["eval", "--model", str(model_file), "--dataset", str(two_images), "--compare", "ann"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "executor:" in lines[0] and "2 images" in lines[1] and "sigma 25" in lines[1]
    assert "ANN twin" in lines[1]
    assert "PSNR" in lines[2] and "SSIM" in lines[2] and "spk/n/t" in lines[2] and "ANN PSNR" in lines[2]
    assert lines[4].startswith("01.png") and lines[5].startswith("02.png") and lines[-1].startswith("mean")


def test_converted_images_get_a_note(capsys, model_file, tmp_path):
    Image = pytest.importorskip("PIL.Image")
    clean = read_png(SHARED / "set12" / "01.png")[:64, :64]
    d = tmp_path / "mixed"
    d.mkdir()
    Image.fromarray(np.dstack([clean, clean // 2, clean])).save(d / "a_rgb.png")
    Image.fromarray(clean.astype(np.uint16) * 257).save(d / "b_grey16.png")
    Image.fromarray(clean).save(d / "c_grey.png")
    assert main(["eval", "--model", str(model_file), "--dataset", str(d)]) == 0
    err = capsys.readouterr().err
    assert "note: a_rgb.png: colour converted to BT.601 luma" in err
    assert "note: b_grey16.png: 16-bit scaled to 8-bit" in err
    assert "c_grey.png" not in err
    doc = run_json(capsys, "--model", str(model_file), "--dataset", str(d))
    assert [r["note"] for r in doc["images"]] == ["colour converted to BT.601 luma", "16-bit scaled to 8-bit", None]
    # 16-bit x 257 scales back to exactly the 8-bit image.
    np.testing.assert_array_equal(read_image(d / "b_grey16.png")[0], clean)
    assert capsys.readouterr().err == ""  # --json: notes only in the document


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err
    assert err.startswith("edgespike: error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_missing_dataset_without_network(capsys, model_file, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESPIKE_DATA", str(tmp_path))
    err = one_line_error(capsys, ["eval", "--model", str(model_file), "--dataset", "bsd68"])
    assert str(tmp_path / "bsd68") in err and "--dataset DIR" in err
    err = one_line_error(capsys, ["eval", "--model", str(model_file), "--dataset", str(tmp_path / "nowhere")])
    assert "neither a dataset" in err


@pytest.mark.parametrize("sigma", ["-1", "256", "nan"])
def test_bad_sigma(capsys, model_file, sigma):
    err = one_line_error(capsys, ["eval", "--model", str(model_file), "--sigma", sigma])
    assert "sigma must be between 0 and 255" in err


def test_other_user_errors(capsys, model_file, tmp_path):
    assert "not found" in one_line_error(capsys, ["eval", "--model", str(tmp_path / "x.esnn")])
    assert "--limit" in one_line_error(capsys, ["eval", "--model", str(model_file), "--limit", "0"])
    bad = tmp_path / "bad.esnn"
    bad.write_bytes(b"not a model")
    one_line_error(capsys, ["eval", "--model", str(bad), "--limit", "1"])


def test_compare_bm3d_without_the_package(capsys, model_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "bm3d", None)
    err = one_line_error(capsys, ["eval", "--model", str(model_file), "--compare", "bm3d", "--limit", "1"])
    assert "pip install bm3d" in err


def test_fallback_progress_bar(monkeypatch, capsys):
    class TTY:
        def __init__(self):
            self.text = ""

        def isatty(self):
            return True

        def write(self, s):
            self.text += s

        def flush(self):
            pass

    tty = TTY()
    monkeypatch.setattr("sys.stderr", tty)
    monkeypatch.setitem(sys.modules, "tqdm", None)
    bar = eval_cmd._Bar(4, enabled=True)
    bar.update("01.png")
    bar.update("02.png")
    bar.close()
    assert "2/4 02.png" in tty.text and "[###############" in tty.text
    quiet = TTY()
    monkeypatch.setattr("sys.stderr", quiet)
    b = eval_cmd._Bar(4, enabled=False)  # --json
    b.update("x")
    b.close()
    assert quiet.text == ""


def test_data_list_and_fetch(capsys, tmp_path, monkeypatch):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "12/12 verified" in out and "68/68 verified" in out and "400/400 verified" in out
    assert "github.com/cszn/DnCNN" in out
    assert main(["data", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["set12", "bsd68", "bsd400"] and all(r["complete"] for r in rows)
    assert main(["data", "fetch", "set12"]) == 0  # already verified: nothing to download
    assert "12 files verified" in capsys.readouterr().out
    monkeypatch.setenv("EDGESPIKE_DATA", str(tmp_path))
    assert main(["data", "list"]) == 0
    assert "not fetched (edgespike data fetch set12)" in capsys.readouterr().out
    err = one_line_error(capsys, ["data", "fetch", "set12"])
    assert "downloading is off" in err and str(tmp_path / "set12") in err


def test_compare_bm3d_calls_the_package_with_the_noise_std(capsys, model_file, two_images, monkeypatch):
    """A stand-in ``bm3d`` module records what eval passes (the real package is optional and slow)."""
    import types

    calls = []

    def fake_bm3d(z, sigma_psd):
        calls.append((z.dtype, float(z.max()), sigma_psd))
        return z  # "denoised" = noisy: the compare PSNR must then equal the noisy PSNR

    monkeypatch.setitem(sys.modules, "bm3d", types.SimpleNamespace(bm3d=fake_bm3d))
    doc = run_json(capsys, "--model", str(model_file), "--dataset", str(two_images), "--compare", "bm3d",
                   "--sigma", "15", "--limit", "1")
    rec = doc["images"][0]
    assert rec["compare"]["method"] == "BM3D"
    assert rec["compare"]["psnr"] == pytest.approx(rec["psnr_noisy"])
    assert calls[0][0] == np.float64 and calls[0][1] <= 1.0 and calls[0][2] == pytest.approx(15 / 255)


@pytest.mark.parametrize(("args", "shipped"), [
    (["--sigma", "25"], "default_s25"),
    (["--sigma", "50"], "default_blind"),  # the sigma-25 model is trained for one noise level
    (["--noise", "speckle", "--sigma", "25"], "default_blind"),
    (["--sigma", "50", "--model", "s25"], "default_s25"),  # a shipped model by name
    (["--model", "blind"], "default_blind"),
])
def test_without_a_model_the_shipped_one_for_the_noise_runs(capsys, two_images, args, shipped):
    assert main(["eval", "--dataset", str(two_images), "--limit", "1", "--json", *args]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["model_metadata"]["name"] == shipped
    assert Path(doc["model"]).name == f"{shipped}.esnn"


def test_a_missing_model_file_names_the_shipped_alternatives(capsys, tmp_path):
    err = one_line_error(capsys, ["eval", "--model", str(tmp_path / "x.esnn")])
    assert "x.esnn not found" in err and "shipped model: s25, blind" in err


def test_the_summary_names_the_model_file_and_its_name(capsys, two_images, model_file):
    """eval may choose the model itself (s25 or blind by the noise): the table and the JSON say which one ran."""
    assert main(["eval", "--dataset", str(two_images), "--limit", "1", "--sigma", "50"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("model ") and "default_blind.esnn (shipped 'blind', name default_blind)" in out
    assert main(["eval", "--model", str(model_file), "--dataset", str(two_images), "--limit", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model_label"] == f"{model_file} (no name in its metadata)"
