"""The layer pipeline from the command line and the ``fpga-sim`` backend: defaults and a whole small frame.

``edgespike rtl sim`` without ``--model`` takes the shipped model that fits ``--device`` (the bit-plane ``s25-half`` on
the ECP5-85F) and says so; a bit-plane model runs on the layer pipeline, a whole frame, compared with the CPU
runtime. The default model itself is too slow to simulate in a test (about 15 k cycles for a 4x4 frame at a few
hundred cycles per second of CPU): a small model of the same shape stands in for it here.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("amaranth")

from edgespike import runtime  # noqa: E402
from edgespike.errors import UserError  # noqa: E402
from edgespike.fileformat import save  # noqa: E402
from edgespike.fpga import cli  # noqa: E402
from edgespike.fpga.defaults import SMALL_MODEL, default_model  # noqa: E402
from edgespike.fpga.examples import demo_image  # noqa: E402
from edgespike.live.backends import open_backend  # noqa: E402
from edgespike.png import write_png  # noqa: E402
from edgespike.testing import bitplane_dncnn  # noqa: E402

pytestmark = pytest.mark.hw


@pytest.fixture
def small(tmp_path):
    """A bit-plane model of the shipped shape (5x5 stride 2, 3x3 body, 6x6 transposed read-out), width 4."""
    model = bitplane_dncnn(depth=3, width=4, T=8, down=True, seed=3)
    model.decoder.shift = 15  # the random read-out scale would saturate most pixels
    path = tmp_path / "bp.esnn"
    save(model, path)
    image = tmp_path / "i.png"
    write_png(image, demo_image(12, 14, seed=5))
    return model, str(path), str(image)


def test_defaults_choose_the_model_that_fits_and_say_so(capsys):
    assert default_model("ecp5-85f")[0] == "s25-half"
    assert default_model("ecp5-85f", engine="shared")[0] == "if-s25"
    small, note = default_model("up5k")
    assert small.endswith(SMALL_MODEL) and "the one whose layer pipeline fits the iCE40UP5K" in note
    assert default_model("ecp5-25f")[0] == small
    with pytest.raises(UserError, match="no shipped model fits the iCE40UP5K"):
        default_model("up5k", engine="shared")
    model, pipelined = cli._load(cli.parse_args(["sim"]))
    assert pipelined and model.timesteps == 8
    assert "model s25-half (no --model given" in capsys.readouterr().out
    model, pipelined = cli._load(cli.parse_args(["sim", "--model", "if-s25"]))
    assert not pipelined and capsys.readouterr().out == ""
    model, pipelined = cli._load(cli.parse_args(["sim", "--device", "up5k"]))
    assert pipelined and "model small_bitplane_3x4_s25.esnn (no --model given" in capsys.readouterr().out


def test_the_shipped_small_model_fits_the_up5k_pipeline_and_fpga_build_chooses_it(capsys):
    """``fpga build --board icebreaker`` without ``--model`` builds the small bit-plane model on the layer pipeline,
    says so, and plans it inside the UP5K's block RAM and logic budget (the bitstream itself:
    tests/test_fpga_build.py, slow); an IF model still goes to the shared engine."""
    from edgespike.fileformat import load
    from edgespike.fpga.build import build, is_bitplane
    from edgespike.fpga.defaults import board_default, small_model_path
    from edgespike.fpga.pipeline import LOGIC_BUDGET, layer_specs

    path, _ = board_default("up5k")
    specs = layer_specs(load(path))
    assert [(s.c_in, s.c_out) for s in specs] == [(1, 4), (4, 4), (4, 1)] and path == small_model_path()
    assert is_bitplane(path) and not is_bitplane("if-s25")
    line = build("icebreaker", dry_run=True, cpu=False)
    err = capsys.readouterr().err
    assert "model small_bitplane_3x4_s25.esnn (no --model given" in err and line in err
    assert line.startswith("layer pipeline on iCE40UP5K: folds (lanes, group, parts, ROM words, ring) [")
    blocks = int(line.split(" of 30 EBR")[0].rsplit(" ", 1)[1])
    logic = int(line.split("logic about ")[1].split(" ")[0])
    assert blocks <= 30 and logic <= LOGIC_BUDGET * 5280 and "s per 640x480 frame at 12 MHz" in line


def test_fpga_build_on_the_ulx3s_plans_the_default_model_before_any_tool_runs(capsys):
    """``fpga build --board ulx3s-85f`` without ``--model`` takes ``s25-half`` and prints its layer-pipeline plan
    (folds, stripes, block RAM, logic estimate, seconds per frame at the 75 MHz PLL clock) before the toolchain
    starts."""
    from edgespike.fpga.build import build

    line = build("ulx3s-85f", dry_run=True, cpu=False)
    err = capsys.readouterr().err
    assert "model s25-half (no --model given" in err and line in err
    assert line.startswith("layer pipeline on ECP5-85F: folds (lanes, group, parts, ROM words, ring) [")
    assert " of 208 DP16KD" in line and "s per 640x480 frame at 75 MHz (cycle model)" in line


def test_rtl_sim_streams_a_whole_frame_through_the_layer_pipeline(small, capsys):
    model, path, image = small
    assert cli.run(cli.parse_args(["sim", "--model", path, "--image", image, "--frame", "6x8"])) == 0
    out = capsys.readouterr().out
    assert "simulating a whole 6x8 frame" in out
    assert "frame 6x8: equal to the CPU runtime (edgespike.runtime), pixel for pixel" in out
    assert "equal to the cycle model's" in out and "DIFFERENT" not in out
    assert "residual FIFO reads and writes, decoder pixels and adds: equal to the cycle model's" in out
    with pytest.raises(UserError, match="--tile is for IF models"):
        cli.run(cli.parse_args(["sim", "--model", path, "--tile", "16x16"]))
    with pytest.raises(UserError, match="multiple of 2"):
        cli.run(cli.parse_args(["sim", "--model", path, "--frame", "5x8"]))


def test_fpga_sim_backend_runs_a_bitplane_model_on_the_pipeline(small):
    model, path, _ = small
    frame = demo_image(8, 10, seed=6)
    backend = open_backend("fpga-sim", path)
    try:
        assert "layer pipeline" in backend.label
        out, stats = backend.denoise(frame)
    finally:
        backend.close()
    want = runtime.denoise(model, frame)
    assert np.array_equal(out, want) and (want != frame).mean() > 0.5
    assert stats["cycles"] > 0


def test_residual_fifo_and_decoder_counts_equal_the_model(small):
    """Amaranth's simulator counts the residual FIFO's writes (the input pixels) and reads (the output pixels) and
    the decoder's membranes and adds from the pipeline's probes; they equal the model's
    (:func:`edgespike.fpga.pipeline.pipeline_counts`), which :func:`frame_accesses` records as the ``residual`` RAM
    and ``decoder`` adds, and the profiler's energy takes that record."""
    from edgespike.fpga.pipeline import decoder_adds, frame_accesses
    from edgespike.fpga.pipesim import build_pipeline, expected_cycles, expected_pipeline, run_codes, simulate_pipeline
    from edgespike.profile.accel import energy
    from edgespike.rtl.pipeline import non_adjacent_form

    model, _, _ = small
    x = demo_image(6, 8, seed=6)
    dut, specs, folds = build_pipeline(model, 6, 8)
    codes = run_codes(specs, x)
    run = simulate_pipeline(dut, x, limit=2 * expected_cycles(specs, codes, folds) + 1000)
    dec = (dut.multiplier, dut.shift, dut.residual)
    per_pixel = len(non_adjacent_form(dut.multiplier)) - 1 + 1 + 1  # the tree, the rounding add, the subtraction
    assert dut.decoder_adds == decoder_adds(*dec) == per_pixel >= 2
    assert run.pipeline == expected_pipeline(dut, specs, x) == {
        "residual": {"reads": x.size, "writes": x.size}, "decoder": {"pixels": x.size, "adds": x.size * per_pixel}}
    acc = frame_accesses(specs, codes[:-1], folds, decoder=dec)
    assert (acc.rams["residual"]["reads"], acc.rams["residual"]["writes"]) == (x.size, x.size)
    assert acc.rams["residual"]["depth"] == dut.fifo_depth and acc.adds["decoder"] == x.size * per_pixel
    e = energy(acc)
    assert e["memories"]["residual"]["pJ"] > 0 and e["total_pJ"] > e["adds_pJ"]
