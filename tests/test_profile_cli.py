"""``edgespike profile`` end to end on a tiny random model and two tiny images (a few seconds)."""

import json

import numpy as np
import pytest

from edgespike.cli import main
from edgespike.fileformat import save
from edgespike.png import write_png
from edgespike.profile import run as prun
from edgespike.profile import sensors
from edgespike.profile.testmodels import random_dncnn


@pytest.fixture
def setup(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(2):
        base = rng.integers(40, 216, (5, 5)).astype(float)
        write_png(imgs / f"{i:02d}.png", np.clip(np.kron(base, np.ones((8, 8))), 0, 255).astype(np.uint8))
    m = random_dncnn(depth=3, width=4, timesteps=2, seed=0)
    save(m, tmp_path / "m.esnn")
    # no sensor, whatever this machine has: the report must then say "estimated only"
    monkeypatch.setattr(sensors, "discover", lambda *a, **k: ([], ["no sensor (test)"]))
    return tmp_path, imgs


def test_profile_json_report_and_plot(setup, capsys):
    pytest.importorskip("matplotlib")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("ai_edge_litert")
    tmp, imgs = setup
    rc = main(["profile", "--model", str(tmp / "m.esnn"), "--eval", str(imgs), "--calib", str(imgs),
               "--size", "24x16", "--frames", "1", "--warmup", "0", "--sweep", "T=1,2", "--calib-count", "2",
               "--report", str(tmp / "rep"), "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "estimated only" in text and "SNN / ANN estimated energy" in text
    # ratios lead; both width presets under every memory model, each with its range verdict
    assert text.splitlines()[1].startswith("SNN / ANN estimated energy")
    for preset in ("stored", "spiden"):
        for mm in ("sram-fit", "packed-sram", "fpga-bram"):
            assert any(preset in ln and mm in ln and ("range" in ln or "OUT" in ln) for ln in text.splitlines())
    assert "SNN memory accesses by kind: weight" in text and "membrane" in text and "spike" in text
    assert "ANN memory accesses by kind: weight" in text and "activation" in text
    res = json.loads((tmp / "rep" / "profile.json").read_text())
    assert {(e["table"], e["memory"]) for e in res["estimates"]} >= {
        (t, m) for t in ("stored", "spiden") for m in ("sram-fit", "packed-sram", "fpga-bram")}
    assert res["estimate"]["range"]["snn"]["inside"] in (True, False)
    assert res["measured"] == "estimated only"
    assert set(res["quality"]) >= {"snn", "float", "onnx", "tflite", "noisy"}
    assert set(res["latency"]) == {"snn", "float", "onnx", "tflite"}
    assert res["size"] == [16, 24]
    assert [p["T"] for p in res["sweep"]["points"]] == [1, 2]
    assert res["estimate"]["energy_pJ"]["snn"] > 0 and res["estimate"]["counts"]["ann"]["macs"] > 0
    assert (tmp / "rep" / "profile.png").stat().st_size > 1000
    assert "![profile](profile.png)" in (tmp / "rep" / "report.md").read_text()
    assert (tmp / "rep" / "twin.int8.tflite").exists() and (tmp / "rep" / "twin.int8.onnx").exists()


def test_profile_snn_only_json_to_stdout(setup, capsys):
    tmp, imgs = setup
    rc = main(["profile", "--model", str(tmp / "m.esnn"), "--eval", str(imgs), "--ann", "none",
               "--size", "16x16", "--frames", "1", "--json", "--quiet", "--table", "opcount-vtsnn"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["latency"]) == {"snn"} and res["estimate"]["table"]["name"] == "opcount-vtsnn"


@pytest.mark.parametrize("argv,msg", [
    (["--size", "big"], "--size must be WIDTHxHEIGHT"),
    (["--sweep", "T=0"], "--sweep timesteps"),
    (["--ann", "caffe"], "--ann takes"),
    (["--table", "nope"], "no energy table"),
])
def test_profile_user_errors_are_one_line(setup, capsys, argv, msg):
    tmp, imgs = setup
    rc = main(["profile", "--model", str(tmp / "m.esnn"), "--eval", str(imgs), "--quiet"] + argv)
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1


def test_with_timesteps_rescales_the_decoder():
    m = random_dncnn(depth=3, width=4, timesteps=4, seed=0)
    m2 = prun.with_timesteps(m, 2)
    g = lambda mm: mm.decoder.terms[0].multiplier[0] / 2.0**mm.decoder.shift * mm.timesteps  # noqa: E731
    assert m2.timesteps == 2 and g(m2) == pytest.approx(g(m), rel=1e-6)


def test_profile_of_a_half_resolution_model_on_odd_frames(tmp_path, monkeypatch, capsys):
    """The default model's new shape (stride-2 5x5 conv, transposed 6x6 read-out) end to end: odd evaluation
    images and an odd profile size, so every runtime pads to even sizes and crops back."""
    pytest.importorskip("matplotlib")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("ai_edge_litert")
    rng = np.random.default_rng(1)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i, (h, w) in enumerate([(41, 35), (40, 40)]):
        base = rng.integers(40, 216, (6, 6)).astype(float)
        write_png(imgs / f"{i:02d}.png", np.clip(np.kron(base, np.ones((8, 8)))[:h, :w], 0, 255).astype(np.uint8))
    save(random_dncnn(depth=4, width=4, timesteps=2, seed=0, down=True), tmp_path / "down.esnn")
    monkeypatch.setattr(sensors, "discover", lambda *a, **k: ([], ["no sensor (test)"]))
    rc = main(["profile", "--model", str(tmp_path / "down.esnn"), "--eval", str(imgs), "--calib", str(imgs),
               "--size", "23x17", "--frames", "1", "--warmup", "0", "--calib-count", "2", "--sweep", "T=1",
               "--report", str(tmp_path / "rep"), "--quiet"])
    assert rc == 0
    assert "ANN twins: not built" not in capsys.readouterr().out
    res = json.loads((tmp_path / "rep" / "profile.json").read_text())
    assert res["twin"]["error"] is None
    assert set(res["latency"]) == {"snn", "float", "onnx", "tflite"}
    q = res["quality"]
    assert all(abs(q[k]["loss_vs_float_db"]) < 1 for k in ("onnx", "tflite"))
    assert abs(q["float"]["psnr_db"] - q["snn"]["psnr_db"]) < 3  # the twin models the same network
    layers = res["estimate"]["layers"]
    assert [(la["name"], la["kind"], la["hybrid"]) for la in layers] == [
        ("conv1", "conv", True), ("conv2", "conv", False), ("conv3", "conv", False), ("conv4", "convT", False)]
    # 23x17 is padded to 24x18: the ANN's transposed read-out does 4 x 12 x 9 x 6*6 MACs (4 input channels)
    assert layers[-1]["ann"]["macs"] == 4 * 12 * 9 * 36
    for f in ("report.md", "profile.png", "twin.onnx", "twin.int8.onnx", "twin.int8.tflite"):
        assert (tmp_path / "rep" / f).stat().st_size > 0


def test_profile_measured_branch_with_a_fake_hwmon_tree(setup, tmp_path, monkeypatch, capsys):
    """The measured branch end to end: a fake INA226 hwmon tree (4 W, idle and busy alike) instead of stubbing
    the sensors away: gross = 4 W x time per frame, net = 0, three trials, the sample count as taken."""
    tmp, imgs = setup
    monkeypatch.undo()  # the fixture's "no sensor" stub
    hw = tmp_path / "hwmon"
    (hw / "hwmon1").mkdir(parents=True)
    (hw / "hwmon1/name").write_text("ina226\n")
    (hw / "hwmon1/power1_input").write_text("4000000\n")
    (hw / "hwmon1/update_interval").write_text("5\n")
    monkeypatch.setattr(sensors, "HWMON_ROOT", str(hw))
    monkeypatch.setattr(sensors, "POWERCAP_ROOT", str(tmp_path / "none"))
    monkeypatch.setattr(sensors, "PMIC_COMMAND", ("false",))
    monkeypatch.setattr(prun.Options, "energy_seconds", 0.05)
    rc = main(["profile", "--model", str(tmp / "m.esnn"), "--eval", str(imgs), "--ann", "none", "--size", "16x16",
               "--frames", "1", "--warmup", "0", "--energy-trials", "3", "--json", str(tmp_path / "p.json"),
               "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    m = json.loads((tmp_path / "p.json").read_text())["measured"]["snn"]
    assert m["method"] == "power samples" and len(m["trials"]) == 3
    assert m["samples"] == sum(t["samples"] for t in m["trials"]) >= 3
    for t in m["trials"]:
        assert t["gross_j"] == pytest.approx(4.0 * t["seconds"] / t["frames"]) and t["net_j"] == 0
    assert m["gross_range_j"][0] <= m["gross_j_per_frame"] <= m["gross_range_j"][1]
    assert "gross" in text and "net" in text and "3 trials" in text and f"{m['samples']} samples" in text


def test_profile_without_sensors_names_what_it_looked_for(setup, tmp_path, monkeypatch, capsys):
    tmp, imgs = setup
    monkeypatch.undo()
    monkeypatch.setattr(sensors, "HWMON_ROOT", str(tmp_path / "hwmon"))
    monkeypatch.setattr(sensors, "POWERCAP_ROOT", str(tmp_path / "powercap"))
    monkeypatch.setattr(sensors, "PMIC_COMMAND", ("false",))
    rc = main(["profile", "--model", str(tmp / "m.esnn"), "--eval", str(imgs), "--ann", "none", "--size", "16x16",
               "--frames", "1", "--warmup", "0", "--quiet"])
    assert rc == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("measured energy")][0]
    assert "estimated only" in line and "UM meter" in line and "INA2xx" in line and "PMIC" in line
    assert "RAPL" in line and str(tmp_path / "powercap") in line


def test_profile_of_a_model_set_profiles_the_member_for_sigma(setup, capsys):
    """The profile compares one network with its twins: for the blind set, the member whose band holds --sigma."""
    from edgespike.modelset import ModelSet

    tmp, imgs = setup
    lo, hi = random_dncnn(depth=3, width=4, timesteps=2, seed=1), random_dncnn(depth=2, width=4, timesteps=2, seed=2)
    save(ModelSet.from_spec({"lo": lo, "hi": hi}, "lo,20,hi"), tmp / "set.esnn")
    rc = main(["profile", "--model", str(tmp / "set.esnn"), "--eval", str(imgs), "--ann", "none", "--size", "16x16",
               "--frames", "1", "--json", "--sigma", "30"])
    out, err = capsys.readouterr()
    assert rc == 0 and "profiling hi, its member for sigma 30" in err

    def layers(net) -> int:
        save(net, tmp / "one.esnn")
        assert main(["profile", "--model", str(tmp / "one.esnn"), "--eval", str(imgs), "--ann", "none",
                     "--size", "16x16", "--frames", "1", "--json", "--quiet"]) == 0
        return len(json.loads(capsys.readouterr().out)["estimate"]["layers"])

    assert len(json.loads(out)["estimate"]["layers"]) == layers(hi) != layers(lo)
