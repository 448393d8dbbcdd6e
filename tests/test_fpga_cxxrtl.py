"""The layer pipeline compiled by yosys' CXXRTL (``edgespike.fpga.cxxrtl``) against Amaranth's simulator and the
runtime; the fallback to Amaranth's simulator without a C++ compiler; the compiled library's cache.

The model is a small one of the shipped shape (5x5 stride 2, 3x3 body, 6x6 transposed read-out, T = 8). The
CXXRTL builds go to a cache of this module's own (two designs: two compiles, about 10 s of CPU each).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("amaranth")

from compiled_sim_checks import check_one_library_serves_two_models  # noqa: E402

from edgespike import runtime  # noqa: E402
from edgespike.errors import UserError  # noqa: E402
from edgespike.fileformat import save  # noqa: E402
from edgespike.fpga import cli, cxxrtl  # noqa: E402
from edgespike.fpga.examples import demo_image, pipeline_model, with_other_weights  # noqa: E402
from edgespike.fpga.pipesim import (  # noqa: E402
    AUTO_AMARANTH_CYCLES,
    build_pipeline,
    choose_simulator,
    expected_cycles,
    expected_pipeline,
    prefer_for_frame,
    run_codes,
    simulate,
)
from edgespike.live.backends import open_backend  # noqa: E402
from edgespike.png import write_png  # noqa: E402
from edgespike.testing import bitplane_dncnn  # noqa: E402

pytestmark = pytest.mark.hw

needs_cxxrtl = pytest.mark.skipif(cxxrtl.unavailable() is not None,
                                  reason=f"CXXRTL unavailable: {cxxrtl.unavailable()}")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    model = pipeline_model()
    tmp = tmp_path_factory.mktemp("model")
    path = tmp / "bp.esnn"
    save(model, path)
    image = tmp / "i.png"
    write_png(image, demo_image(28, 36, seed=5))
    return model, str(path), str(image)


def _counts(specs, x, folds):
    codes = run_codes(specs, x)
    costs = [spec.cost(q, *fold) for spec, q, fold in zip(specs, codes, folds, strict=False)]
    return (expected_cycles(specs, codes, folds), [c.reads | {"writes": c.writes} for c in costs],
            [c.adds for c in costs])


@needs_cxxrtl
def test_cxxrtl_equals_amaranths_simulator_pixels_cycles_and_counts(small, sim_cache):
    model, _, _ = small
    x = demo_image(6, 8, seed=6)
    dut, specs, folds = build_pipeline(model, 6, 8)
    fast = simulate(dut, x, 10**6, "cxxrtl")
    assert fast.simulator == "cxxrtl"
    dut, specs, folds = build_pipeline(model, 6, 8)  # a fresh design for the other simulator
    slow = simulate(dut, x, 10**6, "amaranth")
    assert np.array_equal(fast.out, slow.out)
    assert fast.cycles == slow.cycles
    assert fast.counts == slow.counts and fast.adds == slow.adds and fast.pipeline == slow.pipeline
    cycles, counts, adds = _counts(specs, x, folds)
    assert fast.cycles == cycles and fast.counts == counts and fast.adds == adds
    # the residual FIFO's writes and reads and the decoder's membranes and adds, from the pipeline's probes
    assert fast.pipeline == expected_pipeline(dut, specs, x) and fast.pipeline["decoder"]["adds"] > x.size
    assert np.array_equal(fast.out, runtime.denoise(model, x))
    # a cycle budget too small stops the simulation and says so
    with pytest.raises(RuntimeError, match="pixels in 100 cycles"):
        simulate(dut, x, 100, "cxxrtl")


@needs_cxxrtl
def test_cxxrtl_equals_the_runtime_on_a_larger_frame_and_runs_the_fpga_sim_backend(small, sim_cache):
    model, path, _ = small
    x = demo_image(24, 32, seed=7)
    dut, specs, folds = build_pipeline(model, 24, 32)
    res = simulate(dut, x, 10**7, "cxxrtl")
    want = runtime.denoise(model, x)
    assert np.array_equal(res.out, want) and (want != x).mean() > 0.5
    cycles, counts, adds = _counts(specs, x, folds)
    assert res.cycles == cycles and res.counts == counts and res.adds == adds
    assert res.pipeline == expected_pipeline(dut, specs, x)
    assert cycles > 50_000  # about 10x the frame Amaranth's simulator is compared on

    backend = open_backend("fpga-sim", path, simulator="cxxrtl")
    try:
        assert "CXXRTL" in backend.label
        out, stats = backend.denoise(x)  # the same design: from the cache
    finally:
        backend.close()
    assert np.array_equal(out, want) and stats["cycles"] == cycles and stats["simulator"] == "cxxrtl"


@needs_cxxrtl
def test_the_compiled_library_is_cached_and_reused(small, sim_cache):
    model, _, _ = small
    dut, _, _ = build_pipeline(model, 6, 8)  # built by the first test (or now)
    first = cxxrtl.build(dut)
    libs = sorted(sim_cache.glob("cxxrtl/pipeline-*.so"))
    stamp = os.stat(first["path"]).st_mtime_ns
    again = cxxrtl.build(build_pipeline(model, 6, 8)[0])
    assert not again["built"] and again["path"] == first["path"] and again["seconds"] < 5
    assert cxxrtl.cached(dut)
    # without the design index the RTLIL's hash still finds the library (converted again, not compiled)
    for index in sim_cache.glob("cxxrtl/design-*.json"):
        index.unlink()
    assert not cxxrtl.cached(dut)
    third = cxxrtl.build(dut)
    assert not third["built"] and third["path"] == first["path"] and cxxrtl.cached(dut)
    assert os.stat(first["path"]).st_mtime_ns == stamp and sorted(sim_cache.glob("cxxrtl/pipeline-*.so")) == libs
    # other weights: another design key but the same library (the contents are loaded at run time); another
    # frame size, another read-out scale (wired into the decoder) or other flags: another library
    other = with_other_weights(model)
    rtlil = cxxrtl.rtlil_text(dut)
    assert "attribute \\src" not in rtlil
    bare, inits = cxxrtl.split_inits(rtlil)
    assert "$meminit" in rtlil and "$meminit" not in bare and inits
    assert cxxrtl._library_path(bare) == Path(first["path"])
    assert cxxrtl._library_path(cxxrtl.split_inits(cxxrtl.rtlil_text(build_pipeline(other, 6, 8)[0]))[0]) == \
        Path(first["path"])
    assert cxxrtl._library_path(cxxrtl.split_inits(cxxrtl.rtlil_text(build_pipeline(other, 6, 10)[0]))[0]) != \
        Path(first["path"])
    scaled = bitplane_dncnn(depth=3, width=4, T=8, down=True, seed=4)
    assert scaled.decoder.terms[0].multiplier[0] != model.decoder.terms[0].multiplier[0]
    assert cxxrtl._library_path(cxxrtl.split_inits(cxxrtl.rtlil_text(build_pipeline(scaled, 6, 8)[0]))[0]) != \
        Path(first["path"])
    assert cxxrtl.design_key(build_pipeline(other, 6, 8)[0]) != cxxrtl.design_key(dut)
    os.environ["EDGESPIKE_CXXFLAGS"] = "-DEDGESPIKE_TEST"
    try:
        assert cxxrtl._library_path(bare) != Path(first["path"])
    finally:
        del os.environ["EDGESPIKE_CXXFLAGS"]


@needs_cxxrtl
def test_models_of_one_shape_share_a_library_with_their_own_weights_loaded_at_run_time(small, sim_cache):
    model, _, _ = small
    other = with_other_weights(model)
    x = demo_image(6, 8, seed=8)
    first = cxxrtl.build(build_pipeline(model, 6, 8)[0])  # built by the first test (or now)
    libs = sorted(sim_cache.glob("cxxrtl/pipeline-*.so"))
    dut = build_pipeline(other, 6, 8)[0]
    second = cxxrtl.build(dut)
    assert not second["built"] and second["path"] == first["path"] and second["key"] != first["key"]
    assert sorted(sim_cache.glob("cxxrtl/pipeline-*.so")) == libs and cxxrtl.cached(dut)
    # every memory with initial contents (line buffers, weights, the read-out's params, the residual FIFO) is loaded
    # by name (a neuron's biases and thresholds are the converters' constants: the same here)
    names = {m["name"].split("$")[0] for m in second["inits"]}  # Amaranth numbers some names ($82)
    assert {"pipeline layer0 weights", "pipeline layer2 params", "pipeline layer1 linebuf mem"} <= names
    assert any(not np.array_equal(a["data"], b["data"]) for a, b in zip(first["inits"], second["inits"],
                                                                        strict=True))
    check_one_library_serves_two_models(first, second, model, other, x)


def test_split_inits_keeps_what_is_not_constant_and_names_every_instance():
    data = "x" + format(7 << 3, "039b") + format(5, "040b")  # word 1 (its top bit x), word 0
    rtlil = f"""module \\top
  cell \\top.sub \\a
  end
  cell \\top.sub \\b
  end
end
module \\top.sub
  memory width 40 size 3 \\m$1
  attribute \\keep 1
  cell $meminit_v2 $1
    parameter \\MEMID "\\\\m$1"
    parameter \\ABITS 2
    parameter \\WIDTH 40
    parameter \\WORDS 2
    parameter \\PRIORITY 0
    connect \\ADDR 2'01
    connect \\DATA 80'{data}
    connect \\EN 40'1111111111111111111111111111111111111111
  end
  cell $meminit_v2 $2
    parameter \\MEMID "\\\\m$1"
    parameter \\ABITS 0
    parameter \\WIDTH 40
    parameter \\WORDS 1
    parameter \\PRIORITY 1
    connect \\ADDR {{  }}
    connect \\DATA 40'0000000000000000000000000000000000000001
    connect \\EN 40'0000000000000000000000000000000000000001
  end
end
"""
    bare, inits = cxxrtl.split_inits(rtlil)
    assert [m["name"] for m in inits] == ["a m$1", "b m$1"]
    assert all(m["addr"] == 1 and m["width"] == 40 and m["words"] == 2 for m in inits)
    # word 0 = 5, word 1 = 7 << 3 and the x bit 0 (top bit of word 1); 40 bits are two chunks a word
    assert inits[0]["data"].tolist() == [[5, 0], [7 << 3, 0]]
    assert "$1" not in bare.replace("m$1", "") and "attribute \\keep" not in bare  # the cell and its attribute
    assert "cell $meminit_v2 $2" in bare  # partly enabled: stays compiled in


def test_without_a_compiler_falls_back_to_amaranth_with_one_line(small, monkeypatch, capsys):
    model, path, image = small
    monkeypatch.setenv("CXX", "no-such-c++")
    assert "no-such-c++" in cxxrtl.unavailable()
    simulator, note = choose_simulator("auto")
    assert simulator == "amaranth" and "CXXRTL unavailable" in note and "Amaranth's simulator" in note
    with pytest.raises(UserError, match="--simulator cxxrtl: the C\\+\\+ compiler 'no-such-c\\+\\+'"):
        choose_simulator("cxxrtl")
    monkeypatch.delenv("CXX")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert cxxrtl.unavailable().startswith("no C++ compiler found")
    monkeypatch.undo()

    monkeypatch.setenv("CXX", "no-such-c++")
    assert cli.run(cli.parse_args(["sim", "--model", path, "--image", image, "--frame", "4x4"])) == 0
    captured = capsys.readouterr()
    notes = [ln for ln in captured.err.splitlines() if "CXXRTL unavailable" in ln]
    assert len(notes) == 1 and "the C++ compiler 'no-such-c++' (CXX) was not found" in notes[0]
    assert "frame 4x4: equal to the CPU runtime" in captured.out and "simulated by amaranth" in captured.out
    assert "DIFFERENT" not in captured.out
    # asking for the Amaranth simulator explicitly says nothing
    assert choose_simulator("amaranth") == ("amaranth", None)
    with pytest.raises(UserError, match="--simulator is for bit-plane models"):
        cli.run(cli.parse_args(["sim", "--model", "if-s25", "--simulator", "amaranth"]))
    with pytest.raises(UserError, match="--simulator is for --backend fpga-sim"):
        open_backend("cpu", path, simulator="cxxrtl")


def test_auto_takes_amaranth_for_a_small_frame_whose_build_is_not_cached(small, monkeypatch):
    dut = build_pipeline(small[0], 6, 8)[0]
    cxxrtl._mark_used(dut)  # never elaborated here
    monkeypatch.setattr(cxxrtl, "cached", lambda d: False)
    simulator, note = prefer_for_frame("cxxrtl", "auto", dut, 1000)
    assert simulator == "amaranth" and "not cached" in note
    assert prefer_for_frame("cxxrtl", "cxxrtl", dut, 1000) == ("cxxrtl", None)  # asked for: kept
    assert prefer_for_frame("cxxrtl", "auto", dut, AUTO_AMARANTH_CYCLES) == ("cxxrtl", None)
    monkeypatch.setattr(cxxrtl, "cached", lambda d: True)
    assert prefer_for_frame("cxxrtl", "auto", dut, 1000) == ("cxxrtl", None)
