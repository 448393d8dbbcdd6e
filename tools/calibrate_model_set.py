#!/usr/bin/env python
"""Calibrate a noise-adaptive model set on training images: where each member should hand over to the next.

Every member denoises the same noisy training images at a grid of noise levels (the eval protocol: Gaussian noise,
clipped and rounded to uint8; the images are BSD400's, which the members were trained on, never the test sets).
Each frame's noise estimate is recorded with every member's PSNR. With the members' order along the estimate
fixed (``--order``), the bounds that maximise the mean PSNR over all frames and levels are found exactly (dynamic
programming over the frames sorted by their estimate), and the set is written with them. A level grid uniform over
0..55 is the blind model's promise: no level counts more than another.

    python tools/calibrate_model_set.py edgespike/models/default_blind.esnn --name default_blind \\
        --member blind-net=edgespike/models/blind_net.esnn --member s15=edgespike/models/default_s15.esnn \\
        --member s25=edgespike/models/default_s25.esnn --member s50=edgespike/models/default_s50.esnn \\
        --order blind-net,s15,s25,blind-net,s50 --log tools/train_logs/default_blind_set.calibration.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIGMAS = tuple(range(1, 56))
"""The calibration's noise levels: 1, 2, ..., 55, every level of the blind range alike. (A coarser grid, 2, 5, ...,
53, put a bound 1.7 above a member's own level, between two levels it never sampled.)"""


def measure(members: dict, files: list, sigmas, crop: int, progress: bool = True) -> dict:
    """Every member's PSNR and the noise estimate of every (level, image): ``{"sigma", "estimate", "psnr"}`` arrays
    (``psnr`` is frames x members, in ``members``' order)."""
    from edgespike import data
    from edgespike.metrics import psnr
    from edgespike.modelset import estimate_sigma
    from edgespike.runtime import Runtime

    runtimes = [Runtime(m, threads=1) for m in members.values()]
    rows_sigma, rows_est, rows_psnr = [], [], []
    t0 = time.perf_counter()
    for k, sigma in enumerate(sigmas):
        for s in data.samples(files, sigma):
            h, w = s.clean.shape
            y, x = (h - min(h, crop)) // 2, (w - min(w, crop)) // 2
            clean, noisy = (a[y:y + crop, x:x + crop] for a in (s.clean, s.noisy))
            rows_sigma.append(sigma)
            rows_est.append(estimate_sigma(noisy))
            rows_psnr.append([min(psnr(clean, rt.denoise(noisy)[0]), 99.0) for rt in runtimes])
        if progress:
            print(f"  sigma {sigma:>2}: {k + 1}/{len(sigmas)} levels, {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr, flush=True)
    return {"sigma": np.array(rows_sigma, float), "estimate": np.array(rows_est), "psnr": np.array(rows_psnr)}


def best_bounds(estimate: np.ndarray, gain: np.ndarray) -> tuple[list[float], float, list[int]]:
    """Bounds for bands whose per-frame scores are ``gain`` (frames x bands) that maximise the total score.

    Frames are sorted by ``estimate``; band ``j`` takes a contiguous run of them, the runs in band order (a band may
    be empty). Returns the ``bands - 1`` bounds (midway between the last frame of a band and the first of the next;
    an empty band's bound equals its neighbour's), the mean score and the frames in each band.
    """
    order = np.argsort(estimate, kind="stable")
    e, g = estimate[order], gain[order]
    n, k = g.shape
    prefix = np.vstack([np.zeros(k), np.cumsum(g, axis=0)])  # prefix[i, j]: frames 0..i-1 all in band j
    # best[j][i]: frames 0..i-1 placed in bands 0..j; cut[j][i]: where band j starts in that optimum
    best = np.full((k, n + 1), -np.inf)
    cut = np.zeros((k, n + 1), int)
    best[0] = prefix[:, 0]
    for j in range(1, k):
        # best[j][i] = max over s <= i of best[j-1][s] + (prefix[i, j] - prefix[s, j]): band j takes frames s..i-1
        run = best[j - 1] - prefix[:, j]
        top = 0
        for i in range(n + 1):
            if run[i] > run[top]:
                top = i
            best[j][i] = run[top] + prefix[i, j]
            cut[j][i] = top
    starts, i = [], n
    for j in range(k - 1, 0, -1):
        s = cut[j][i]
        starts.append(s)
        i = s
    starts.reverse()
    bounds = []
    for s in starts:
        lo = e[s - 1] if s > 0 else 0.0
        hi = e[s] if s < n else e[-1] + 1.0
        bounds.append(float((lo + hi) / 2))
    counts = np.diff([0, *starts, n]).tolist()
    return bounds, float(best[k - 1][n] / n), counts


def band_spec(order: list[str], bounds: list[float], counts: list[int]) -> str:
    """The set's band spec: empty bands dropped, and neighbours of one member merged."""
    names, cuts = [], []
    for j, (name, count) in enumerate(zip(order, counts, strict=True)):
        if not count:
            continue
        if names and names[-1] == name:
            continue
        if names:
            cuts.append(round(bounds[j - 1], 2))
        names.append(name)
    return ",".join(x for pair in zip(names, [f"{b:g}" for b in cuts] + [""], strict=True) for x in pair if x)


def plot(table: list[dict], names: list[str], path: str) -> None:
    """PSNR against the noise level: every member, the set's choice and the best member per frame (the oracle)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sig = [row["sigma"] for row in table]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for n in names:
        ax.plot(sig, [row["members"][n] for row in table], lw=1, label=n)
    ax.plot(sig, [row["set"] for row in table], "k-", lw=2.2, label="the set (chosen by the estimate)")
    ax.plot(sig, [row["oracle"] for row in table], "k:", lw=1, label="best member per frame")
    lo = min(row["set"] for row in table) - 2
    ax.set_ylim(lo, max(row["oracle"] for row in table) + 0.5)
    ax.set_xlabel("Gaussian noise sigma (0..255), uint8 clipped frames")
    ax.set_ylabel("PSNR (dB), mean over frames")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dest", help="the set's file")
    p.add_argument("--member", action="append", required=True, metavar="NAME=FILE", help="a network (two or more)")
    p.add_argument("--order", required=True, metavar="N1,N2,...",
                   help="the members along the estimated noise level, lowest first (a name may recur)")
    p.add_argument("--name", required=True, help="metadata name of the set")
    p.add_argument("--images", type=int, default=32, help="training images per level (default 32)")
    p.add_argument("--crop", type=int, default=160, help="centre crop side (default 160)")
    p.add_argument("--dataset", default="bsd400", help="calibration images (default bsd400, the training set)")
    p.add_argument("--log", metavar="JSON", help="write the measurements and the result here")
    p.add_argument("--from-log", metavar="JSON", help="take the measurements from this earlier --log (same members "
                   "by name) instead of measuring: another --order in seconds")
    p.add_argument("--plot", metavar="PNG", help="draw PSNR against sigma: each member, the set, the oracle "
                   "(needs matplotlib, the [profile] extra)")
    a = p.parse_args(argv)

    from edgespike import data, fileformat
    from edgespike.errors import UserError
    from edgespike.model import ModelError
    from edgespike.modelset import ModelSet

    try:
        members = {}
        for text in a.member:
            name, sep, path = text.partition("=")
            if not sep:
                raise ModelError(f"a member is NAME=FILE, got {text!r}")
            members[name] = fileformat.load(path)
        order = [n.strip() for n in a.order.split(",")]
        unknown = [n for n in order if n not in members]
        if unknown:
            raise ModelError(f"--order names {', '.join(unknown)}, not a member")
        _, files = data.resolve(a.dataset)
    except (ModelError, UserError) as exc:
        print(f"calibrate_model_set: {exc}", file=sys.stderr)
        return 2
    files = files[:a.images]
    names = list(members)
    if a.from_log:
        frames = json.loads(Path(a.from_log).read_text())["frames"]
        m = {"sigma": np.array(frames["sigma"]), "estimate": np.array(frames["estimate"]),
             "psnr": np.array([frames["psnr"][n] for n in names]).T}
    else:
        m = measure(members, files, SIGMAS, a.crop)
    if a.log:  # the measurements first: minutes of work are kept whatever happens next
        Path(a.log).write_text(json.dumps({"frames": _frames(m, names)}) + "\n")
    gain = m["psnr"][:, [names.index(n) for n in order]]
    bounds, score, counts = best_bounds(m["estimate"], gain)
    spec = band_spec(order, bounds, counts)
    used = {n: members[n] for n in names if n in spec.split(",")}
    dropped = [n for n in names if n not in used]
    if dropped:
        print(f"not in the set (no band where it is best): {', '.join(dropped)}")
    mset = ModelSet.from_spec(used, spec, {"name": a.name, "calibration": (
        f"tools/calibrate_model_set.py: {a.dataset}, {len(files)} images ({a.crop}x{a.crop} centre crops) at "
        f"sigma {SIGMAS[0]}..{SIGMAS[-1]} step {SIGMAS[1] - SIGMAS[0]}")})
    chosen = np.array([names.index(mset.member_for(e).name) for e in m["estimate"]])  # columns of m["psnr"]
    got = m["psnr"][np.arange(len(chosen)), chosen]
    print(f"bands {spec}: mean PSNR {got.mean():.3f} dB over {len(got)} frames (optimum {score:.3f})")
    print(f"{'sigma':>5}" + "".join(f"{n:>11}" for n in names) + f"{'set':>9}{'oracle':>9}  chosen")
    table = []
    for s in SIGMAS:
        rows = m["sigma"] == s
        per = m["psnr"][rows].mean(axis=0)
        picks = {names[i]: int(np.sum(chosen[rows] == i)) for i in range(len(names)) if np.any(chosen[rows] == i)}
        oracle = m["psnr"][rows].max(axis=1).mean()
        table.append({"sigma": s, "members": dict(zip(names, per.round(3).tolist(), strict=True)),
                      "set": round(float(got[rows].mean()), 3), "oracle": round(float(oracle), 3), "chosen": picks})
        print(f"{s:>5}" + "".join(f"{v:>11.2f}" for v in per) + f"{got[rows].mean():>9.2f}{oracle:>9.2f}  "
              + ", ".join(f"{k} {v}" for k, v in picks.items()))
    fileformat.save(mset, a.dest)
    print(f"{a.dest}: {a.name}")
    if a.plot:
        plot(table, names, a.plot)
    if a.log:
        Path(a.log).write_text(json.dumps({
            "command": "python tools/calibrate_model_set.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "bands": spec, "mean_psnr": round(float(got.mean()), 4), "levels": table, "frames": _frames(m, names),
        }, indent=1) + "\n")
    return 0


def _frames(m: dict, names: list[str]) -> dict:
    """The measurements as the log stores them (and ``--from-log`` reads them)."""
    return {"sigma": m["sigma"].tolist(), "estimate": m["estimate"].round(4).tolist(),
            "psnr": {n: m["psnr"][:, i].round(3).tolist() for i, n in enumerate(names)}}


if __name__ == "__main__":
    sys.exit(main())
