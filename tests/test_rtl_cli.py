"""``edgespike rtl sim`` / ``rtl verilog`` (implemented in ``edgespike.fpga.cli``) on a small model and image."""

from __future__ import annotations

import pytest

from edgespike.errors import UserError
from edgespike.fileformat import save
from edgespike.fpga import cli
from edgespike.fpga.examples import chain_model, demo_image, down_model
from edgespike.fpga.params import FitError
from edgespike.png import write_png

pytestmark = pytest.mark.hw


@pytest.fixture
def files(tmp_path):
    model = tmp_path / "m.esnn"
    save(chain_model(seed=2, channels=4, layers=2, timesteps=2), model)
    image = tmp_path / "i.png"
    write_png(image, demo_image(10, 12, seed=4))
    return str(model), str(image), tmp_path


def test_rtl_sim_reports_equality_counters_and_frame_estimate(files, capsys):
    model, image, tmp = files
    vcd = tmp / "t.vcd"
    assert cli.run(cli.parse_args(["sim", "--model", model, "--image", image, "--tile", "6x6", "--vcd", str(vcd),
                          "--device", "up5k", "--frame-estimate"])) == 0
    out = capsys.readouterr().out
    assert "simulating a 4x4 tile: " in out and "equal to the CPU reference, pixel for pixel" in out
    assert "SOP/cycle" in out and "frames/s" in out
    assert vcd.stat().st_size > 0


def test_rtl_sim_on_a_half_resolution_model_file(tmp_path, capsys):
    """The default model's shape (Conv 5x5 stride 2, half-resolution 3x3 body, ConvTranspose read-out), from a
    file: the gateware built for a 24x24 tile, a 4x6 corner simulated."""
    path = tmp_path / "down.esnn"
    save(down_model(seed=0, width=4, depth=3, timesteps=2), path)
    image = tmp_path / "i.png"
    write_png(image, demo_image(30, 27, seed=4))
    assert cli.run(cli.parse_args(["sim", "--model", str(path), "--image", str(image), "--tile", "24x24",
                          "--sim-tile", "4x6"])) == 0
    out = capsys.readouterr().out
    assert "tile 4x6: equal to the CPU reference, pixel for pixel" in out
    assert "ECP5-85F, tile 24x24 (halo 8)" in out and "30x28 frame: 16 tiles of 24x24" in out
    with pytest.raises(UserError, match="multiple of 2"):
        cli.run(cli.parse_args(["sim", "--model", path, "--image", image, "--tile", "24x24", "--sim-tile", "3x4"]))


def test_rtl_verilog(files):
    model, _, tmp = files
    out = tmp / "top.v"
    assert cli.run(cli.parse_args(["verilog", "--model", model, "--tile", "8x8", "--out", str(out)])) == 0
    assert "module edgespike_top" in out.read_text()


def test_rtl_refuses_a_model_that_does_not_fit(files):
    model, image, _ = files
    with pytest.raises(FitError, match="does not fit"):
        cli.run(cli.parse_args(["sim", "--model", model, "--image", image, "--tile", "255x255", "--device", "up5k"]))
