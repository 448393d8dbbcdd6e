"""``edgespike rtl sim`` / ``rtl verilog`` (implemented in ``edgespike.rtl.cli``) on a small model and image."""

from __future__ import annotations

import argparse

import pytest

from edgespike.fileformat import save
from edgespike.png import write_png
from edgespike.rtl import cli
from edgespike.rtl.examples import chain_model, demo_image
from edgespike.rtl.params import FitError

pytestmark = pytest.mark.hw


def parse(argv):
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    return p.parse_args(argv)


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
    assert cli.run(parse(["sim", "--model", model, "--image", image, "--tile", "6x6", "--vcd", str(vcd)])) == 0
    out = capsys.readouterr().out
    assert "equal to the CPU reference, pixel for pixel" in out
    assert "SOP/cycle" in out and "frames/s" in out
    assert vcd.stat().st_size > 0


def test_rtl_verilog(files):
    model, _, tmp = files
    out = tmp / "top.v"
    assert cli.run(parse(["verilog", "--model", model, "--tile", "8x8", "--out", str(out)])) == 0
    assert "module edgespike_top" in out.read_text()


def test_rtl_refuses_a_model_that_does_not_fit(files):
    model, image, _ = files
    with pytest.raises(FitError, match="does not fit"):
        cli.run(parse(["sim", "--model", model, "--image", image, "--tile", "255x255", "--device", "up5k"]))
