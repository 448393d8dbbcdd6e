"""The CPU runtime on 1 and 2 threads against an independent dense PyTorch simulation, each in its own process.

Why separate processes: threads of one contender (OpenMP workers, BLAS workers, torch's pool) must not wait,
spin or share a thread pool with another's; each contender is a worker process started with its thread count
and driven in turn by this script (one frame each per round, rounds interleaved so that a shared machine's load
hits them alike); medians of ``--rounds`` rounds.

Contenders, for each model and frame size:

* ``runtime``: :class:`edgespike.runtime.Runtime` (compiled kernel) with ``threads=1`` and ``threads=2``;
* ``dense torch``: :func:`dense_torch`, a dense multi-step PyTorch simulation written here from
  docs/SEMANTICS.md alone (it shares no code with ``edgespike.torchsim`` or the runtime): float32 ``conv2d`` on
  all T steps at once (the steps stacked into the batch, as SpikingJelly's multi-step mode does), int64
  membranes, with ``torch.set_num_threads`` 1 and 2. Its output is asserted identical to the runtime's.

Models: the IF model ``edgespike/models/if_s25.esnn`` (the previous default) and the shipped bit-plane default
``edgespike/models/default_s25.esnn`` (or ``--bitplane FILE``).

Usage (the whole benchmark of docs/BENCHMARKS.md, "Threads")::

    python tools/bench/threads.py --json threads.json

``--blas`` times numpy's BLAS alone on 1 and 2 threads for the runtime's GEMM shapes (why the runtime keeps it at
one thread).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SIZES = ["256x256", "320x240", "640x480", "1280x720", "1920x1080"]
MODELS = {"if": "edgespike/models/if_s25.esnn", "bitplane": "edgespike/models/default_s25.esnn"}


# ------------------------------------------------------------------------------------------------ workers


def frame(size: str):
    """A noisy (sigma 25) frame of ``size`` "WxH": a BSD68 image reflect-padded/cropped when the shared data is
    there, else a synthetic one. The same in every worker."""
    import numpy as np

    w, h = map(int, size.split("x"))
    src = ROOT.parent / "shared" / "data" / "bsd68" / "test001.png"
    if src.exists():
        from edgespike.png import read_png

        img = read_png(src)
        img = img[..., 0] if img.ndim == 3 else img
    else:
        from edgespike.testing import calibration_frame

        img = calibration_frame(max(h, w), 1)
    reps = (-(-h // img.shape[0]), -(-w // img.shape[1]))
    img = np.tile(np.concatenate([img, img[::-1]], 0), (reps[0], 1))
    img = np.tile(np.concatenate([img, img[:, ::-1]], 1), (1, reps[1]))[:h, :w]
    rng = np.random.default_rng(0)
    return np.clip(img + rng.normal(0, 25, img.shape), 0, 255).astype(np.uint8)


def load_model(name: str, bitplane: str | None):
    from edgespike import fileformat

    if name == "bitplane" and bitplane:
        return fileformat.load(bitplane)
    return fileformat.load(ROOT / MODELS[name])


def dense_torch(model, x):
    """The model on uint8 frame ``x`` by docs/SEMANTICS.md, densely: every convolution on every step.

    Supports what the benchmark models use: direct/uwe encoders, Conv, ConvTranspose, IF/LIF neurons (sections
    5.1-5.2), bit-plane neurons (5.5), Integrators (5.3, with ``uwd``), a membrane read-out (6). float32 convolution
    is exact here (every partial sum of these models is below 2^24), and so are float32 IF membranes; the bit-plane
    decoding and the read-out, which exceed 2^24, run in float64; the decoder in int64."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    T = model.timesteps
    M = model.size_multiple
    H, W = x.shape
    xp = np.pad(x, ((0, -H % M), (0, -W % M)), mode="edge").astype(np.int64)
    px = torch.from_numpy(xp)[None, None]  # [1, 1, H, W]
    if model.encoder.kind == "direct":
        val = {"input": px.expand(T, 1, *px.shape[2:]).to(torch.float32)}
    elif model.encoder.kind == "uwe":
        val = {"input": torch.cat([(px >> (7 - t)) & 1 for t in range(T)]).to(torch.float32)}
    else:
        raise NotImplementedError(model.encoder.kind)
    membrane = {}
    f32, f64 = torch.float32, torch.float64
    for node in model.nodes:
        kind = type(node).__name__
        if kind in ("Conv", "ConvTranspose"):
            inp = val[node.input].to(f32)
            w = torch.from_numpy(node.weight.astype(np.float32))
            b = torch.from_numpy(node.bias.astype(np.float32))
            if kind == "Conv":
                val[node.name] = F.conv2d(inp, w, b, stride=node.stride, padding=node.kernel // 2)
            else:  # stored [C_out, C_in, k, k]; torch wants [C_in, C_out, k, k]
                k = node.weight.shape[2]
                val[node.name] = F.conv_transpose2d(inp, w.permute(1, 0, 2, 3), b, stride=2, padding=node.padding,
                                                    output_padding=2 - k + 2 * node.padding)
        elif kind == "Neuron":  # float32 membranes: |v| stays below 2^24 in these models (exact)
            cur = val[node.input]
            th = node.threshold.astype(np.int64)
            theta = torch.from_numpy(th.astype(np.float32))[:, None, None]
            v0 = torch.from_numpy(((th >> 1) if node.v_init == "half" else 0 * th).astype(np.float32))[:, None, None]
            v = v0.expand(cur.shape[1:]).clone()
            spikes = torch.empty_like(cur)
            for t in range(T):
                if node.leak_shift:
                    v -= torch.floor(v / 2**node.leak_shift)
                v += cur[t]
                s = spikes[t]
                torch.ge(v, theta, out=s)
                if node.reset == "soft":
                    v -= theta * s
                else:
                    v *= 1 - s
            val[node.name] = spikes
            membrane[node.name] = v.to(torch.int64)
        elif kind == "BitPlaneNeuron":  # the decoded membrane reaches 2^24 and more: float64 (exact below 2^53)
            cur = val[node.input]
            v = torch.zeros(cur.shape[1:], dtype=f64)
            for t in range(T):
                v = 2 * v + cur[t]
            v += torch.from_numpy(node.bias.astype(np.float64))[:, None, None]
            theta = torch.from_numpy(node.threshold.astype(np.float64))[:, None, None]
            q = torch.clamp(torch.floor(v / theta), 0, 2**T - 1).to(torch.int64)
            val[node.name] = torch.stack([(q >> (T - 1 - t)) & 1 for t in range(T)]).to(f32)
            membrane[node.name] = (v - theta * q).to(torch.int64)
        elif kind == "Integrator":
            cur = val[node.input]
            v = torch.zeros(cur.shape[1:], dtype=f64)
            for t in range(T):
                v = 2 * v + cur[t] if node.uwd else v + cur[t]
            v = v.to(torch.int64)
            if node.bias is not None:
                v = v + torch.from_numpy(node.bias.astype(np.int64))[:, None, None]
            membrane[node.name] = v
            val[node.name] = torch.zeros_like(cur)
        else:
            raise NotImplementedError(kind)
    dec = model.decoder
    R = torch.zeros((1,) + xp.shape, dtype=torch.int64)
    for term in dec.terms:
        if term.quantity != "membrane":
            raise NotImplementedError(term.quantity)
        R += int(term.multiplier[0]) * membrane[term.node]
    r = (R + (1 << (dec.shift - 1))) >> dec.shift if dec.shift else R
    y = torch.from_numpy(xp)[None] - r if dec.residual else r
    return torch.clamp(y[0], 0, 255).to(torch.uint8).numpy()[:H, :W]


def worker(args) -> int:
    """One contender: load, run once (warm-up, output hash), then one frame per ``run`` line on stdin."""
    n = args.threads
    if args.worker == "torch":
        import torch  # first: its OpenMP starts with torch's own defaults, not edgespike's sleeping workers

        torch.set_num_threads(n)
        sys.path.insert(0, str(ROOT))
        model = load_model(args.model, args.bitplane)
        f = frame(args.size)
        with torch.inference_mode():
            run = lambda: dense_torch(model, f)  # noqa: E731
            out = run()
    else:
        sys.path.insert(0, str(ROOT))
        from edgespike.runtime import Runtime

        model = load_model(args.model, args.bitplane)
        f = frame(args.size)
        rt = Runtime(model, threads=n)
        assert rt.backend == "c", "the compiled kernel is unavailable"
        run = lambda: rt.denoise(f)[0]  # noqa: E731
        out = run()
    import hashlib

    print(json.dumps({"ready": True, "sha": hashlib.sha256(out.tobytes()).hexdigest()}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        t = time.perf_counter()
        run()
        print(json.dumps({"s": time.perf_counter() - t}), flush=True)
    return 0


def blas_table(rounds: int) -> None:
    """numpy's BLAS on 1 and 2 threads for the GEMM shapes the runtime runs (why it keeps BLAS at 1 thread)."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from edgespike import parallel

    if parallel.blas_control() is None:
        print("numpy's BLAS offers no thread control here")
        return
    shapes = {  # [pixels x inner] @ [inner x outputs]
        "IF read-out (ConvTranspose 64->1, 6x6), 256x256": (128 * 128, 64, 36),
        "IF read-out, 640x480": (320 * 240, 64, 36),
        "a tap of a 64->64 layer, 640x480 (half resolution)": (320 * 240, 64, 64),
        "a dense bit-plane layer 64->64 3x3 (one GEMM, all taps), 640x480": (320 * 240, 576, 64),
    }
    rng = np.random.default_rng(0)
    print("| GEMM | shape | BLAS 1 thread ms | BLAS 2 threads ms | 2 threads / 1 thread |")
    print("| --- | --- | --- | --- | --- |")
    for name, (m, k, n) in shapes.items():
        a = rng.integers(0, 255, (m, k)).astype(np.float32)
        b = rng.integers(-127, 128, (k, n)).astype(np.float32)
        ts = {1: [], 2: []}
        for _ in range(rounds):
            for nt in (1, 2):
                with parallel.blas_limit(nt):
                    a @ b
                    t = time.perf_counter()
                    a @ b
                    ts[nt].append(time.perf_counter() - t)
        t1, t2 = median(ts[1]) * 1e3, median(ts[2]) * 1e3
        print(f"| {name} | [{m} x {k}] @ [{k} x {n}] | {t1:.2f} | {t2:.2f} | {t2 / t1:.2f} |", flush=True)


# ------------------------------------------------------------------------------------------------- driver


class Contender:
    def __init__(self, kind: str, model: str, size: str, threads: int, bitplane: str | None):
        self.name = f"{kind} {threads}t"
        cmd = [sys.executable, __file__, "--worker", kind, "--model", model, "--size", size, "--threads",
               str(threads)] + (["--bitplane", bitplane] if bitplane else [])
        env = dict(os.environ)
        for var in ("EDGESPIKE_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY"):
            env.pop(var, None)  # each contender's own defaults: the runtime sets its threads, torch its own
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                     cwd=ROOT)
        self.sha = self._read()["sha"]
        self.times: list[float] = []

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} ended early (exit {self.proc.wait()})")
        return json.loads(line)

    def run(self) -> None:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        self.times.append(self._read()["s"])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def median(v: list[float]) -> float:
    v = sorted(v)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7, help="frames per contender (median reported; default 7)")
    ap.add_argument("--models", default="if,bitplane", help="comma-separated: if, bitplane (default both)")
    ap.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated WxH (default {','.join(SIZES)})")
    ap.add_argument("--torch-sizes", default="256x256,640x480",
                    help="sizes at which the dense torch simulation also runs (default 256x256,640x480: larger "
                    "frames take it minutes)")
    ap.add_argument("--bitplane", help=f"a bit-plane .esnn instead of {MODELS['bitplane']}")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--blas", action="store_true", help="only time numpy's BLAS on 1 and 2 threads for the "
                    "runtime's GEMM shapes")
    ap.add_argument("--worker", choices=("runtime", "torch"), help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--size", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.blas:
        blas_table(args.rounds)
        return 0
    start = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    torch_sizes = set(args.torch_sizes.split(",")) if args.torch_sizes else set()
    results = []
    for model in args.models.split(","):
        for size in args.sizes.split(","):
            kinds = ["runtime"] + (["torch"] if size in torch_sizes else [])
            cons = [Contender(k, model, size, n, args.bitplane) for k in kinds for n in (1, 2)]
            try:
                shas = {c.sha for c in cons}
                assert len(shas) == 1, f"{model} {size}: contenders' outputs differ"
                for _ in range(args.rounds):
                    for c in cons:
                        c.run()
            finally:
                for c in cons:
                    c.close()
            med = {c.name: median(c.times) for c in cons}
            row = {"model": model, "size": size, "identical": True,
                   "median_s": {k: round(v, 4) for k, v in med.items()},
                   "times": {c.name: [round(t, 4) for t in c.times] for c in cons},
                   "runtime_2t_over_1t": round(med["runtime 1t"] / med["runtime 2t"], 3)}
            if "torch 1t" in med:
                row["vs_torch_1t"] = round(med["torch 1t"] / med["runtime 1t"], 2)
                row["vs_torch_2t"] = round(med["torch 2t"] / med["runtime 2t"], 2)
            results.append(row)
            print(json.dumps(row), flush=True)
    load = os.getloadavg()
    print(f"\n{start} to {time.strftime('%H:%M UTC', time.gmtime())}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {load[0]:.1f} at the end; medians of {args.rounds} rounds\n")
    print("| model | frame | runtime 1 thread s | runtime 2 threads s | 2 threads speed-up | dense torch 1t s | "
          "dense torch 2t s | vs torch (1t) | vs torch (2t) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        m = r["median_s"]
        t1, t2 = m.get("torch 1t"), m.get("torch 2t")
        print(f"| {r['model']} | {r['size']} | {m['runtime 1t']:.3f} | {m['runtime 2t']:.3f} | "
              f"{r['runtime_2t_over_1t']:.2f}x | {'' if t1 is None else f'{t1:.3f}'} | "
              f"{'' if t2 is None else f'{t2:.3f}'} | {'' if t1 is None else str(r['vs_torch_1t']) + 'x'} | "
              f"{'' if t2 is None else str(r['vs_torch_2t']) + 'x'} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"start": start, "rounds": args.rounds, "load_end": load,
                                               "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
