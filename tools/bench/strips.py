"""Benchmark of the runtime's strip height: the current choice against the budget-only rule it replaced.

The runtime cuts a frame into strips of rows and recomputes ``halo`` rows on each side of every strip. Until
2026-12 the strip height was whatever the working-set budget allowed, down to a single ``size_multiple`` of rows;
for a model with a large halo (the three-level CAE: 72 rows) that meant 8-row strips each recomputing 144 rows.
Now a strip is never shorter than twice the halo (:meth:`edgespike.runtime.Runtime._strip_rows`).

For each model the strip heights are timed **interleaved** in one process (auto, each ``--rows``, whole frame,
auto, ...), medians reported as ratios to ``auto``, and the outputs asserted identical. The runtime before the
change (commit 2cbe27b) chose 8-row strips for the CAE on a 321x481 frame (``Runtime(model)._strip_rows(322,
481)`` at that commit): ``--rows 8`` reproduces it.

Usage::

    python tools/bench/strips.py [--reps 3] [--size 321x481] [--rows 8] [--model PATH ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from edgespike import fileformat  # noqa: E402
from edgespike.runtime import Runtime  # noqa: E402

MODELS = ["runs/methods/cae_t8.esnn", "runs/methods/if_direct_t8.esnn", "edgespike/models/default_s25.esnn"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions (median reported)")
    p.add_argument("--size", default="321x481", help="frame HxW (default: a BSD68 frame, 321x481)")
    p.add_argument("--rows", type=int, action="append", help="fixed strip heights to compare (default: 8)")
    p.add_argument("--model", action="append", help="model file(s); default: the CAE, the 10x32 DnCNN, the shipped")
    a = p.parse_args(argv)
    H, W = (int(v) for v in a.size.split("x"))
    frame = np.random.default_rng(0).integers(0, 256, (H, W), dtype=np.uint8)
    fixed = a.rows or [8]
    print("| model | halo | auto rows | auto s | " + " | ".join(f"{r} rows s" for r in fixed) + " | whole frame s | "
          + " | ".join(f"{r} rows / auto" for r in fixed) + " | whole / auto |")
    print("| --- " * (5 + 2 * len(fixed)) + "| --- |")
    for path in a.model or MODELS:
        model = fileformat.load(ROOT / path)
        auto = Runtime(model)
        Hp = -(-H // auto.M) * auto.M
        rows = {"auto": auto._strip_rows(Hp, W), **{f"{r}": r for r in fixed}, "whole": Hp}
        runtimes = {name: Runtime(model, strip_rows=r) for name, r in rows.items()}
        times: dict[str, list[float]] = {name: [] for name in rows}
        first = None
        for _ in range(a.reps):
            for name, rt in runtimes.items():
                t0 = time.perf_counter()
                out, _ = rt.denoise(frame)
                times[name].append(time.perf_counter() - t0)
                if first is None:
                    first = out
                elif not np.array_equal(out, first):
                    raise SystemExit(f"{path}: strip height {rows[name]} changed the output")
        med = {name: statistics.median(v) for name, v in times.items()}
        others = [name for name in rows if name != "auto"]
        print(f"| `{Path(path).name}` | {auto.halo} | {rows['auto']} | {med['auto']:.2f} | "
              + " | ".join(f"{med[n]:.2f}" for n in others) + " | "
              + " | ".join(f"{med[n] / med['auto']:.2f}x" for n in others) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
