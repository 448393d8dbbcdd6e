"""The fast runtime equals the reference bit for bit: random models of every kind, strips, backends, Stats, CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edgespike
from edgespike import kernels, reference
from edgespike.cli import main as cli_main
from edgespike.fileformat import save
from edgespike.model import Conv, Decoder, Encoder, Integrator, Model, ModelError, Neuron, ReadoutTerm
from edgespike.png import read_png, write_png
from edgespike.runtime import Runtime, conv_nhwc
from edgespike.testing import dncnn_like, frames, models

HAVE_KERNEL = kernels.load() is not None
BACKENDS = ["numpy"] + (["c"] if HAVE_KERNEL else [])


def check_equal(model: Model, frame: np.ndarray, **kwargs) -> None:
    ref, trace = reference.run(model, frame, trace=True)
    rt = Runtime(model, **kwargs)
    out, stats = rt.denoise(frame)
    assert out.dtype == np.uint8 and out.shape == frame.shape
    np.testing.assert_array_equal(out, ref)
    assert {k: list(map(int, v)) for k, v in stats.spikes.items()} == trace.spikes
    for name, counts in trace.counts.items():
        assert stats.neurons[name] == counts.size


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(model=models(), frame=frames(max_side=10, large=False), strip=st.sampled_from([None, 1, 3]),
       backend=st.sampled_from(BACKENDS))
def test_runtime_equals_reference(model, frame, strip, backend):
    """>= 500 random models per run (hypothesis prints the count with --hypothesis-show-statistics), on a
    backend drawn per model, whole-frame or in thin strips (many frames are smaller than the halo)."""
    ref, trace = reference.run(model, frame, trace=True)
    out, stats = Runtime(model, backend=backend, strip_rows=strip).denoise(frame)
    np.testing.assert_array_equal(out, ref, err_msg=f"backend {backend}, strip_rows {strip}")
    assert {k: list(map(int, v)) for k, v in stats.spikes.items()} == trace.spikes, backend


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=models())
def test_runtime_equals_reference_large_frame(model):
    """257x255: odd sizes above one default strip, every backend."""
    frame = np.random.default_rng(0).integers(0, 256, (257, 255), dtype=np.uint8)
    ref = reference.run(model, frame)
    for backend in BACKENDS:
        np.testing.assert_array_equal(Runtime(model, backend=backend).denoise(frame)[0], ref)
        np.testing.assert_array_equal(Runtime(model, backend=backend, strip_rows=64).denoise(frame)[0], ref)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("strip", [1, 2, 5, 1000])
def test_strips_of_a_deep_model(backend, strip):
    """Strips of one row up to the whole frame; the frame (11x9) is smaller than the halo (14 rows)."""
    model = dncnn_like(depth=7, width=6, T=3, seed=2, calib_size=16)
    rt = Runtime(model, backend=backend, strip_rows=strip)
    assert rt.halo >= 6
    frame = np.random.default_rng(1).integers(0, 256, (11, 9), dtype=np.uint8)
    check_equal(model, frame, backend=backend, strip_rows=strip)
    frame = np.random.default_rng(2).integers(0, 256, (40, 13), dtype=np.uint8)
    check_equal(model, frame, backend=backend, strip_rows=strip)


def test_memory_budget_picks_strips():
    """The budget sets the strip height, but a strip never has fewer rows than twice the halo it recomputes."""
    model = dncnn_like(depth=4, width=8, T=2, seed=3, calib_size=16)
    small = Runtime(model, max_strip_bytes=1)
    assert small._strip_rows(64, 64) == 2 * small.halo < 64
    assert Runtime(model)._strip_rows(64, 64) == 64
    frame = np.random.default_rng(0).integers(0, 256, (30, 21), dtype=np.uint8)
    np.testing.assert_array_equal(small.denoise(frame)[0], reference.run(model, frame))


def test_dncnn_like_rates_are_realistic():
    model = dncnn_like(depth=5, width=16, T=4, seed=0)
    frame = np.random.default_rng(5).integers(0, 256, (32, 32), dtype=np.uint8)
    from edgespike.testing import calibration_frame

    _, stats = Runtime(model).denoise(calibration_frame(48, 7))
    for name, rate in stats.rates().items():
        assert 0.05 <= rate <= 0.4, (name, rate)
    check_equal(model, frame)


def test_stats_counts_match_hand_computation():
    """uwe input (binary) into a 3x3 stride-2 conv; a direct-coded 1x1 conv for the MACs (computed once)."""
    frame = np.random.default_rng(0).integers(0, 256, (6, 8), dtype=np.uint8)
    w = np.ones((2, 1, 3, 3), np.int8)
    up = Model(nodes=[Conv("c", "input", w, np.zeros(2, np.int32), stride=2),
                      Neuron("n", "c", np.array([2, 3], np.int32)),
                      Conv("d", "input", np.ones((1, 1, 1, 1), np.int8), np.zeros(1, np.int32)),
                      Neuron("m", "d", np.array([100], np.int32))],
               timesteps=8, encoder=Encoder("uwe"),
               decoder=Decoder([ReadoutTerm("m", "count", np.array([1], np.int32))], residual=False))
    _, trace = reference.run(up, frame, trace=True)
    out, stats = Runtime(up).denoise(frame)
    events = int(sum(np.unpackbits(frame.reshape(-1, 1), axis=1).sum(axis=0)))  # all set bits of the frame
    # c: ceil(3/2)^2 * 2 per event; d: 1 * 1 per event
    assert stats.synops == events * 4 * 2 + events * 1
    assert stats.macs == 0
    assert stats.total_spikes == sum(sum(v) for v in trace.spikes.values())
    assert stats.spike_rate == pytest.approx(stats.total_spikes / (sum(stats.neurons.values()) * 8))
    direct = Model(nodes=[Conv("c", "input", w, np.zeros(2, np.int32)), Neuron("n", "c", np.array([9, 9], np.int32)),
                          Conv("r", "n", np.ones((1, 2, 1, 1), np.int8), np.zeros(1, np.int32)), Integrator("i", "r")],
                   timesteps=3, decoder=Decoder([ReadoutTerm("i", "membrane", np.array([1], np.int32))]))
    out, stats = Runtime(direct).denoise(frame)
    np.testing.assert_array_equal(out, reference.run(direct, frame))
    assert stats.macs == 6 * 8 * 1 * 9 * 2  # once, not per step: the input is the same every step
    _, trace = reference.run(direct, frame, trace=True)
    assert stats.synops == sum(trace.spikes["n"]) * 1 * 1
    assert set(stats.node_seconds) == {"c", "n", "r", "i"} and stats.total_seconds > 0


def test_float32_is_used_only_when_exact():
    """Big biases push the partial-sum bound past 2**24: that layer must fall back to float64 and stay exact."""
    w = np.full((1, 1, 3, 3), 127, np.int8)
    model = Model(nodes=[Conv("c", "input", w, np.array([2**24 - 1], np.int32)), Integrator("i", "c")], timesteps=2,
                  decoder=Decoder([ReadoutTerm("i", "membrane", np.array([1], np.int32))], shift=20))
    rt = Runtime(model)
    assert rt.plans["c"].bound >= 2**24
    frame = np.random.default_rng(0).integers(0, 256, (5, 6), dtype=np.uint8)  # odd sums: float32 would round
    check_equal(model, frame)
    check_equal(model, frame, backend="numpy")
    x = np.full((1, 4, 4, 1), 2**20 + 1, np.int64)
    taps = np.full((3, 3, 1, 1), 127, np.int64)
    assert conv_nhwc(x, taps, 1)[0, 1, 1, 0] == 9 * 127 * (2**20 + 1)


@pytest.mark.skipif(not HAVE_KERNEL, reason="no C compiler: the compiled kernel is unavailable")
def test_backend_selection_and_fallback(monkeypatch):
    model = dncnn_like(depth=3, width=8, T=2, seed=1, calib_size=16)
    assert Runtime(model).backend == "c"
    assert Runtime(model).fused  # the binary Conv+IF pairs run in the kernel
    assert Runtime(model, backend="numpy").backend == "numpy"
    frame = np.random.default_rng(3).integers(0, 256, (19, 17), dtype=np.uint8)
    a = Runtime(model, backend="c").denoise(frame)
    b = Runtime(model, backend="numpy").denoise(frame)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1].synops == b[1].synops and a[1].macs == b[1].macs
    # A build without a compiler: auto falls back to numpy, "c" says why.
    monkeypatch.setattr(kernels, "_TRIED", True)
    monkeypatch.setattr(kernels, "_LIB", None)
    monkeypatch.setattr(kernels, "_ERROR", "no C compiler (cc) found")
    assert Runtime(model).backend == "numpy"
    with pytest.raises(ModelError, match="no C compiler"):
        Runtime(model, backend="c")


@pytest.mark.skipif(not HAVE_KERNEL, reason="no C compiler")
def test_kernel_int16_and_int32_accumulators_exact():
    """Weights whose |sum| exceeds int16 use the int32 table; both equal the reference."""
    rng = np.random.default_rng(4)
    for wmax in (127, 20):
        w1 = rng.integers(-wmax, wmax + 1, (40, 1, 3, 3)).astype(np.int8)
        w2 = np.full((3, 40, 5, 5), wmax, np.int8)
        model = Model(nodes=[Conv("c1", "input", w1, np.zeros(40, np.int32)),
                             Neuron("n1", "c1", np.full(40, 50, np.int32), leak_shift=2),
                             Conv("c2", "n1", w2, np.full(3, -7, np.int32)),
                             Neuron("n2", "c2", np.full(3, 99, np.int32), reset="hard", v_init="half"),
                             Conv("c3", "n2", np.ones((1, 3, 1, 1), np.int8), np.zeros(1, np.int32)),
                             Neuron("n3", "c3", np.array([1], np.int32))],
                      timesteps=2, encoder=Encoder("rate", seed=7),
                      decoder=Decoder([ReadoutTerm("n3", "count", np.array([9], np.int32))], residual=False))
        assert kernels.fits16(w2) == (wmax == 20)
        check_equal(model, rng.integers(0, 256, (9, 14), dtype=np.uint8), backend="c")


def test_load_default_and_errors(tmp_path):
    model = dncnn_like(depth=2, width=4, T=2, seed=0, calib_size=16)
    path = tmp_path / "m.esnn"
    save(model, path)
    rt = edgespike.load(path)
    frame = np.random.default_rng(0).integers(0, 256, (7, 5), dtype=np.uint8)
    np.testing.assert_array_equal(rt.denoise(frame)[0], reference.run(model, frame))
    assert edgespike.load().model.metadata["name"] == "default_s25"  # no path: the shipped sigma-25 model
    assert edgespike.load("blind").model.metadata["name"] == "default_blind"  # a shipped model by name
    with pytest.raises(FileNotFoundError, match="shipped model: s25, blind"):
        edgespike.load(tmp_path / "missing.esnn")


def test_cli_denoise(tmp_path, capsys):
    model = dncnn_like(depth=3, width=4, T=2, seed=0, calib_size=16)
    mpath = tmp_path / "m.esnn"
    save(model, mpath)
    img = np.random.default_rng(0).integers(0, 256, (13, 11), dtype=np.uint8)
    src = tmp_path / "in.png"
    write_png(src, img)
    assert cli_main(["denoise", str(src), "--model", str(mpath), "-o", str(tmp_path / "o.png")]) == 0
    np.testing.assert_array_equal(read_png(tmp_path / "o.png"), reference.run(model, img))
    # colour: luma denoised, chroma passed through
    rgb = np.random.default_rng(1).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    write_png(tmp_path / "c.png", rgb)
    assert cli_main(["denoise", str(tmp_path / "c.png"), "--model", str(mpath), "-q"]) == 0
    out = read_png(tmp_path / "c.denoised.png")
    assert out.shape == (6, 5, 3)
    # errors: one line, status 2, no output file left behind
    capsys.readouterr()
    assert cli_main(["denoise", str(tmp_path / "missing.png"), "--model", str(mpath), "-o",
                     str(tmp_path / "x.png")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
    (tmp_path / "bad.esnn").write_bytes(b"not a model")
    assert cli_main(["denoise", str(src), "--model", str(tmp_path / "bad.esnn"), "-o", str(tmp_path / "y.png")]) == 2
    assert not (tmp_path / "y.png").exists()
    assert cli_main(["denoise", str(src), "--model", str(mpath), "-o", str(tmp_path / "z.jpg")]) == 2
    assert not list(tmp_path.glob("*.partial"))


def test_cli_denoise_without_a_model_uses_the_blind_one(tmp_path):
    """An image's noise level is not known: the shipped blind model, not the one trained for sigma 25 only."""
    img = np.random.default_rng(0).integers(0, 256, (16, 12), dtype=np.uint8)
    write_png(tmp_path / "in.png", img)
    assert cli_main(["denoise", str(tmp_path / "in.png"), "-q"]) == 0
    blind = edgespike.load("blind")
    np.testing.assert_array_equal(read_png(tmp_path / "in.denoised.png"), blind.denoise(img)[0])


@pytest.mark.skipif(not HAVE_KERNEL, reason="no C compiler")
def test_kernel_disabled_by_environment(tmp_path):
    code = ("import numpy as np; from edgespike.runtime import Runtime; from edgespike.testing import dncnn_like;"
            "print(Runtime(dncnn_like(2, 4, 2, 0, calib_size=16)).backend)")
    env = dict(os.environ, EDGESPIKE_NO_KERNEL="1")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                       cwd=Path(__file__).parents[1])
    assert r.stdout.strip() == "numpy"


@pytest.mark.parametrize("width", [8, 16, 32])
def test_kernel_specialised_shapes(width):
    """The kernel's compile-time fast paths (3x3 with 16 or 32 channels) against the reference."""
    from edgespike.testing import calibration_frame

    model = dncnn_like(depth=4, width=width, T=2, seed=0, calib_size=24)
    check_equal(model, calibration_frame(29, 3)[:29, :23])


def test_bench_model_equals_reference():
    """The benchmark's 10-layer 32-channel model (tools/bench/runtime.py) against the reference, bit for bit."""
    from edgespike import reference
    from edgespike.runtime import Runtime

    rng = np.random.default_rng(7)
    for T in (4, 8):
        model = dncnn_like(10, 32, T)  # exactly as tools/bench/runtime.py builds it
        frame = rng.integers(0, 256, (19, 23), dtype=np.uint8)
        out, _ = Runtime(model).denoise(frame)
        np.testing.assert_array_equal(out, reference.run(model, frame))
