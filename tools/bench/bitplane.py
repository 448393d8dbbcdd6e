"""Benchmark of a bit-plane model on the CPU runtime: its two exact paths, today's IF model, its int8 ONNX twin.

Contenders, timed interleaved in one process (one round runs each once, so a shared machine's load hits them
alike), medians over the rounds, ratios from the same run:

* ``dense``: :class:`edgespike.runtime.Runtime` with ``bitplane_path="dense"`` (decode the input planes, one exact
  GEMM per layer);
* ``spikes``: ``bitplane_path="spikes"`` (plane by plane through the compiled lookup-table kernel, whose work
  follows the spikes: groups of four channels without a spike, and empty planes, are skipped);
* ``auto``: the runtime's choice per layer (what users get);
* ``if``: the rate-coded IF model of the same shape (``if-s25``, the previous default) on the runtime;
* ``blind-set``: the shipped ``blind`` model set (:mod:`edgespike.modelset`) on the same frame, whose estimate picks
  ``s25``: the set's overhead over ``auto`` is the noise estimate (asserted to give ``s25``'s pixels);
* ``onnx-int8``: the bit-plane model's ANN twin (:mod:`edgespike.profile.ann`), quantised by onnxruntime
  (QDQ, int8 weights per channel and int8 activations, calibrated on noisy BSD400-like frames), same threads.

The three bit-plane paths are asserted to give identical pixels. Per-layer times of ``dense`` and ``spikes`` are
printed as well: they are what the ``auto`` threshold (``runtime.SPIKE_PATH_MAX_RATE``) is chosen from.

Usage::

    python tools/bench/bitplane.py [--model s25] [--if-model if-s25] [--size 640x480] [--rounds 5] [--threads 2]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def test_frame(h: int, w: int, sigma: float = 25.0) -> np.ndarray:
    """The bundled sample, reflect-tiled to ``h x w``, with Gaussian noise (the eval protocol: uint8, clipped)."""
    from edgespike.models import sample_path
    from edgespike.png import read_png

    img = np.asarray(read_png(sample_path())).astype(np.float64)
    big = np.pad(img, ((0, max(0, h - img.shape[0])), (0, max(0, w - img.shape[1]))), mode="reflect")[:h, :w]
    noisy = big + np.random.default_rng(0).normal(0, sigma, big.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="s25", help="the bit-plane model (file or shipped name; default s25)")
    p.add_argument("--if-model", default="if-s25", help="the IF model to compare with (default if-s25)")
    p.add_argument("--size", default="640x480", help="frame WxH (default 640x480)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (default 5; medians are reported)")
    p.add_argument("--threads", type=int, default=2, help="threads of onnxruntime and the runtime's kernel")
    a = p.parse_args(argv)
    os.environ["EDGESPIKE_THREADS"] = str(a.threads)

    from edgespike import fileformat
    from edgespike.models import resolve
    from edgespike.profile import ann
    from edgespike.runtime import Runtime

    w, h = (int(v) for v in a.size.lower().split("x"))
    frame = test_frame(h, w)
    model = fileformat.load(resolve(a.model))
    if not model.has_bitplane:
        p.error(f"{a.model} has no bit-plane layers")
    contenders = {path: Runtime(model, bitplane_path=path) for path in ("dense", "spikes", "auto")}
    if_rt = Runtime(fileformat.load(resolve(a.if_model)))
    from edgespike.modelset import SetRuntime

    blind = SetRuntime(fileformat.load_any(resolve("blind")))

    with tempfile.TemporaryDirectory() as tmp:
        tw = ann.twin(model, "relu")
        f32 = Path(tmp) / "twin.onnx"
        ann.to_onnx(tw, f32)
        calib = [test_frame(96, 96, s).astype(np.float32) / 255 for s in (15, 25, 35, 50)]
        q8 = ann.quantize_onnx(f32, Path(tmp) / "twin.int8.onnx", calib)
        onnx = ann.OnnxRunner(q8, threads=a.threads)

    runs = {name: (lambda rt=rt: rt.denoise(frame)) for name, rt in contenders.items()}
    runs["if"] = lambda: if_rt.denoise(frame)
    runs["blind-set"] = lambda: blind.denoise(frame)
    runs["onnx-int8"] = lambda: (onnx(frame), None)
    times: dict[str, list[float]] = {k: [] for k in runs}
    layer_times: dict[str, dict[str, list[float]]] = {"dense": {}, "spikes": {}}
    outputs = {}
    for name, fn in runs.items():  # warm-up: kernels built, buffers allocated, sessions initialised
        outputs[name] = fn()[0]
    assert np.array_equal(outputs["dense"], outputs["spikes"]) and np.array_equal(outputs["dense"], outputs["auto"])
    if a.model == "s25":  # the set's estimate chose its s25 member on this sigma-25 frame (the set holds the s25
        # file itself since session 25, so the same work)
        assert blind.denoise(frame)[1].member == "s25", "the blind set did not run its s25 member on this frame"
    for r in range(a.rounds):
        for name, fn in runs.items():
            t = time.perf_counter()
            _, stats = fn()
            times[name].append(time.perf_counter() - t)
            if name in layer_times:
                for node, s in stats.node_seconds.items():
                    layer_times[name].setdefault(node, []).append(s)
        print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items()),
              file=sys.stderr)

    med = {k: float(np.median(v)) for k, v in times.items()}
    _, stats = contenders["dense"].denoise(frame)
    print(f"model {resolve(a.model)}: T={model.timesteps}, {w}x{h}, threads {a.threads}, "
          f"{stats.spike_rate:.3f} spikes per neuron per step; {a.rounds} rounds, medians")
    print(f"{'contender':<12}{'s/frame':>10}{'frames/s':>10}")
    for k, v in med.items():
        print(f"{k:<12}{v:>10.3f}{1 / v:>10.2f}")
    print(f"if / auto            = {med['if'] / med['auto']:.2f}  (speed-up over the IF model; target >= 2)")
    print(f"auto / onnx-int8     = {med['auto'] / med['onnx-int8']:.2f}  (target <= 3)")
    print(f"dense / spikes       = {med['dense'] / med['spikes']:.2f}")
    print(f"blind-set / auto     = {med['blind-set'] / med['auto']:.3f}  (the noise estimate's overhead)")
    print("per layer (median s): node, dense, spikes")
    for node in layer_times["dense"]:
        d, s = np.median(layer_times["dense"][node]), np.median(layer_times["spikes"][node])
        if max(d, s) > 1e-3:
            print(f"  {node:<10}{d:>8.3f}{s:>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
