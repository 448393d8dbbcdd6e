"""Benchmark of the CPU runtime against a dense PyTorch SNN simulation and an int8 onnxruntime ANN.

Model: ``edgespike.testing.dncnn_like(10, 32, T)`` (10 convolutions, 32 channels, IF neurons at ~0.2 spikes per
neuron per step, membrane read-out), T = 4 and 8. Frames: Set12 ``01.png`` (256x256) and BSD68 ``test001.png``
reflect-padded to 640x480, with Gaussian noise sigma 25.

For each (T, size) the three contenders are timed **interleaved** (runtime, torch, ANN, runtime, ...) so a shared
machine's load hits them alike; medians are reported and the ratios come from the same run:

* ``runtime``: :class:`edgespike.runtime.Runtime` with the auto-selected backend (also the numpy fallback at the
  smallest setting);
* ``torch``: :class:`edgespike.torchsim.TorchSim` in its step-major dense mode (what snnTorch/SpikingJelly users
  run), 2 threads; the outputs are asserted identical to the runtime's;
* ``ANN``: the same convolution stack as a float ReLU network, quantised with onnxruntime ``quantize_static`` (QDQ,
  uint8 activations, int8 weights), 2 threads; the target is runtime latency <= 1.5 x T x ANN latency.

Both wall time and CPU time (all threads of the process, idle workers made to sleep rather than spin) are
recorded: on a shared machine the wall-clock share each contender gets fluctuates, CPU seconds measure the work.

Peak memory of a 1920x1080 frame (T = 8) is measured in a fresh subprocess (``ru_maxrss``, whole process, and
``tracemalloc`` peak of numpy allocations).

Usage::

    nice -n 10 python tools/bench/runtime.py [--reps 3] [--quick] [--json out.json]
"""

from __future__ import annotations

import os

# Idle OpenMP/onnxruntime workers sleep rather than spin, in every contender (set before torch loads its OpenMP):
# spinning threads would burn the shared machine's CPU and be billed to whichever contender runs next.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from edgespike import fileformat  # noqa: E402
from edgespike.png import read_png  # noqa: E402
from edgespike.runtime import Runtime  # noqa: E402
from edgespike.testing import dncnn_like  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
THREADS = 2


def frame(size: tuple[int, int]) -> np.ndarray:
    """A noisy (sigma 25) grayscale test frame of ``size`` = (H, W)."""
    h, w = size
    if (h, w) == (256, 256) and (SHARED / "set12" / "01.png").exists():
        img = read_png(SHARED / "set12" / "01.png")
    elif (SHARED / "bsd68" / "test001.png").exists():
        img = read_png(SHARED / "bsd68" / "test001.png")
    else:  # no shared data: a synthetic frame
        from edgespike.testing import calibration_frame

        img = calibration_frame(max(h, w), 1)
    if img.ndim == 3:
        img = img[..., 0]
    img = np.pad(img, ((0, max(0, h - img.shape[0])), (0, max(0, w - img.shape[1]))), mode="reflect")[:h, :w]
    rng = np.random.default_rng(0)
    return np.clip(img + rng.normal(0, 25, img.shape), 0, 255).astype(np.uint8)


def ann_session(model, size: tuple[int, int]):
    """The model's convolution stack as an int8 QDQ onnxruntime session (ReLU in place of the neurons)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from edgespike.model import Conv

    convs = [n for n in model.nodes if isinstance(n, Conv)]
    nodes, inits = [], []
    prev = "x"
    for i, c in enumerate(convs):
        w = c.weight.astype(np.float32) / 64.0
        b = c.bias.astype(np.float32) / 64.0
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], pads=[c.kernel // 2] * 4,
                                      strides=[c.stride] * 2))
        prev = f"c{i}"
        if i < len(convs) - 1:
            nodes.append(helper.make_node("Relu", [prev], [f"r{i}"]))
            prev = f"r{i}"
    g = helper.make_graph(nodes, "ann", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, *size])],
                          [helper.make_tensor_value_info(prev, TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    calib = [frame(size)[None, None].astype(np.float32) / 255.0]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": c} for c in calib])

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp:
        f32, q8 = Path(tmp) / "f32.onnx", Path(tmp) / "q8.onnx"
        onnx.save(m, f32)
        quantize_static(str(f32), str(q8), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)
        so = ort.SessionOptions()
        so.intra_op_num_threads = THREADS
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(str(q8), so, providers=["CPUExecutionProvider"])
    x = calib[0]
    return lambda: sess.run(None, {"x": x})


def median_times(fns: dict, reps: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU (all threads of this process) seconds per call, contenders interleaved."""
    for fn in fns.values():  # warm-up (kernel build, BLAS/oneDNN init, ORT arena)
        fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            c, t = time.process_time(), time.perf_counter()
            fn()
            wall[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
    return wall, cpu


def memory_1080p(T: int) -> dict:
    """Peak memory of denoising a 1920x1080 frame, measured in a fresh process."""
    code = f"""
import json, resource, sys, tracemalloc
sys.path.insert(0, {str(ROOT)!r})
import numpy as np
from edgespike.runtime import Runtime
from edgespike.testing import dncnn_like
m = dncnn_like(10, 32, {T}, 0)
rt = Runtime(m)
f = np.random.default_rng(0).integers(0, 256, (1080, 1920), dtype=np.uint8)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
out, st = rt.denoise(f)
cur, peak = tracemalloc.get_traced_memory()
print(json.dumps({{"ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_before_mib": base / 1024, "tracemalloc_peak_mib": peak / 2**20,
                  "strip_rows": rt._strip_rows(1080, 1920), "halo": rt.halo, "backend": st.backend,
                  "seconds": st.total_seconds}}))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def twin_session(model, size: tuple[int, int]):
    """Any model's int8 QDQ ANN twin, as ``edgespike profile`` builds it (strided and transposed convs included)."""
    from edgespike.profile.ann import OnnxRunner, quantize_onnx, to_onnx, twin

    f = frame(size)
    with tempfile.TemporaryDirectory() as tmp:
        f32, q8 = Path(tmp) / "f32.onnx", Path(tmp) / "q8.onnx"
        to_onnx(twin(model), f32)
        quantize_onnx(f32, q8, [f.astype(np.float32) / 255.0])
        run = OnnxRunner(q8, THREADS)
    return lambda: run(f)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="only T=4 at 256x256, no memory run")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--setting", action="append", metavar="T:WxH",
                    help="run only this setting (repeatable), e.g. --setting 8:640x480; no memory run")
    ap.add_argument("--model", help="benchmark this .esnn instead of dncnn_like(10, 32, T) (T from the file; "
                    "the int8 ANN is its profile twin); default settings 640x480 and 256x256")
    args = ap.parse_args(argv)

    import torch

    from edgespike.torchsim import TorchSim

    torch.set_num_threads(THREADS)
    os.environ.setdefault("EDGESPIKE_THREADS", str(THREADS))
    settings = [(4, (256, 256))] if args.quick else [(4, (256, 256)), (8, (256, 256)), (4, (480, 640)),
                                                      (8, (480, 640))]
    given = fileformat.load(args.model) if args.model else None
    if given is not None:
        settings = [(given.timesteps, (480, 640)), (given.timesteps, (256, 256))]
    if args.setting:
        settings = []
        for spec in args.setting:
            t, wh = spec.split(":")
            w, h = wh.split("x")
            settings.append((given.timesteps if given else int(t), (int(h), int(w))))
    results = []
    for T, size in settings:
        model = given if given is not None else dncnn_like(10, 32, T, 0)
        f = frame(size)
        rt = Runtime(model)
        sim = TorchSim(model)
        out, stats = rt.denoise(f)
        same = bool(np.array_equal(out, sim.run(f)))
        assert same, "runtime and torch simulation differ"
        fns = {"runtime": lambda rt=rt, f=f: rt.denoise(f), "torch": lambda sim=sim, f=f: sim.run(f),
               "ann_int8": (twin_session if given else ann_session)(model, size)}
        if T == 4 and size == (256, 256) and given is None:
            npy = Runtime(model, backend="numpy")
            assert np.array_equal(npy.denoise(f)[0], out)
            fns["runtime_numpy"] = lambda npy=npy, f=f: npy.denoise(f)
        wall, cpu = median_times(fns, args.reps)
        med = {k: float(np.median(v)) for k, v in wall.items()}
        mcpu = {k: float(np.median(v)) for k, v in cpu.items()}
        row = {"T": T, "size": f"{size[1]}x{size[0]}", "backend": stats.backend, "identical": same,
               "spike_rate": round(stats.spike_rate, 4), "synops": stats.synops, "macs": stats.macs,
               "median_wall_s": {k: round(v, 4) for k, v in med.items()},
               "median_cpu_s": {k: round(v, 4) for k, v in mcpu.items()},
               "speedup_vs_torch": round(med["torch"] / med["runtime"], 2),
               "runtime_over_T_x_ann": round(med["runtime"] / (T * med["ann_int8"]), 2),
               "cpu_speedup_vs_torch": round(mcpu["torch"] / mcpu["runtime"], 2),
               "cpu_runtime_over_T_x_ann": round(mcpu["runtime"] / (T * mcpu["ann_int8"]), 2)}
        if "runtime_numpy" in med:
            row["numpy_speedup_vs_torch"] = round(med["torch"] / med["runtime_numpy"], 2)
            row["cpu_numpy_speedup_vs_torch"] = round(mcpu["torch"] / mcpu["runtime_numpy"], 2)
        results.append(row)
        print(json.dumps(row), flush=True)
    mem = None if (args.quick or args.setting or given) else memory_1080p(8)
    if mem:
        print(json.dumps({"memory_1920x1080_T8": mem}), flush=True)
    load = os.getloadavg()
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{load[0]:.1f} at the end (shared machine), {THREADS} threads each\n")
    print("| T | frame | runtime s | torch sim s | int8 ANN s | vs torch (wall) | / (T x ANN) (wall) | "
          "vs torch (CPU) | / (T x ANN) (CPU) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        m = r["median_wall_s"]
        print(f"| {r['T']} | {r['size']} | {m['runtime']:.3f} | {m['torch']:.3f} | {m['ann_int8']:.4f} | "
              f"{r['speedup_vs_torch']:.2f}x | {r['runtime_over_T_x_ann']:.2f} | {r['cpu_speedup_vs_torch']:.2f}x | "
              f"{r['cpu_runtime_over_T_x_ann']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "memory": mem, "load": load}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
