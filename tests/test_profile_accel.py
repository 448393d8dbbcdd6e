"""The accelerator's own energy: its cycle model's RAM reads and writes against the Amaranth simulation's RAM
enables on a small tile, and `edgespike profile --accelerator` reporting energy per frame by memory."""

import json

import numpy as np
import pytest

pytest.importorskip("amaranth")

from edgespike.cli import main  # noqa: E402
from edgespike.fileformat import save  # noqa: E402
from edgespike.fpga.cycles import Accesses, frame_cost, tile_cost  # noqa: E402
from edgespike.fpga.examples import demo_image, down_model  # noqa: E402
from edgespike.fpga.params import plan  # noqa: E402
from edgespike.fpga.tilesim import run_tile  # noqa: E402
from edgespike.png import write_png  # noqa: E402
from edgespike.profile import accel, sensors  # noqa: E402
from edgespike.profile import memory as M  # noqa: E402
from edgespike.profile.testmodels import random_dncnn  # noqa: E402


def test_cycle_model_counts_equal_the_simulated_ram_enables():
    # the half-resolution shape (stride-2 conv, transposed read-out), two bitmaps, bit-serial first layer
    p = plan(down_model(seed=0, width=4, depth=3, timesteps=2), tile=(8, 8), device="ecp5-85f")
    img = demo_image(8, 8, seed=3)
    seen: dict = {}
    res = run_tile(p, img, accesses=seen)
    model = tile_cost(p, img).accesses
    assert set(seen) == set(model.rams) == {"pixels", "membranes", "weights", "params", "bitmap0", "bitmap1"}
    for name, r in model.rams.items():
        assert (seen[name]["reads"], seen[name]["writes"]) == (r["reads"], r["writes"]), name
    assert model.rams["membranes"]["reads"] > 0 and model.rams["bitmap1"]["writes"] > 0
    assert model.adds["synaptic"] == res.sops  # the gateware's own synaptic-op counter


def test_frame_counts_add_up_over_tiles_and_are_priced_per_memory():
    p = plan(down_model(seed=1, width=4, depth=3, timesteps=2), tile=(20, 20), device="ecp5-85f")
    frame = demo_image(24, 22, seed=1)
    fc = frame_cost(p, frame)
    assert fc.tiles > 1 and fc.accesses.adds["synaptic"] == fc.sops
    e = accel.energy(fc.accesses, "fpga-bram")
    bram = M.model("fpga-bram")
    for name, r in fc.accesses.rams.items():
        n = r["reads"] + r["writes"]
        assert e["memories"][name]["pJ"] == pytest.approx(n * bram.access_pJ(r["depth"], r["width"]))
    assert e["total_pJ"] == pytest.approx(e["adds_pJ"] + sum(v["pJ"] for v in e["memories"].values()))
    assert e["inside"]  # a 20x20 tile's RAMs fit an ECP5's block RAM
    # any design can fill the record: a hand-made one is priced the same way
    hand = Accesses({"ram": {"reads": 3, "writes": 1, "width": 8, "depth": 100}}, {"synaptic": 10}, 16)
    assert accel.energy(hand, "packed-sram")["total_pJ"] == pytest.approx(4 * 10 / 8 + 10 * 0.05)


def test_profile_reports_the_accelerators_energy(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    write_png(imgs / "a.png", rng.integers(40, 216, (16, 16)).astype(np.uint8))
    save(random_dncnn(depth=3, width=4, timesteps=2, seed=0), tmp_path / "m.esnn")
    monkeypatch.setattr(sensors, "discover", lambda *a, **k: ([], ["no sensor (test)"]))
    rc = main(["profile", "--model", str(tmp_path / "m.esnn"), "--eval", str(imgs), "--ann", "none",
               "--size", "16x16", "--frames", "1", "--warmup", "0", "--accelerator", "--quiet",
               "--json", str(tmp_path / "p.json")])
    assert rc == 0
    text = capsys.readouterr().out
    acc = json.loads((tmp_path / "p.json").read_text())["accelerator"]
    assert "error" not in acc, acc
    assert [e["memory"] for e in acc["energy"]] == ["fpga-bram", "sram-fit", "packed-sram"]
    assert set(acc["energy"][0]["memories"]) >= {"membranes", "weights", "pixels"}
    assert acc["lemaire_snn_pJ"] > 0
    assert "accelerator's own energy per frame" in text and "by memory (fpga-bram): pixels" in text
    assert "membranes" in text and "beside the Lemaire estimate" in text
