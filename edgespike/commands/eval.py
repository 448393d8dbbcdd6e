"""``edgespike eval``: denoising quality and activity of a model on a dataset (PSNR, SSIM, spikes, ops, time)."""

from __future__ import annotations

import importlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from edgespike import data
from edgespike.errors import UserError
from edgespike.metrics import psnr, ssim
from edgespike.models import MODEL_HELP, resolve, shipped_for
from edgespike.models import label as model_label
from edgespike.parallel import add_threads_argument, apply_threads_argument
from edgespike.progress import prepare_kernel

HELP = "measure PSNR/SSIM, spikes and ops of a model on Set12, BSD68 or a folder"
DESCRIPTION = """Denoise every image of a dataset with simulated noise and report per-image and mean PSNR and SSIM
(noisy input and output), spikes per neuron per timestep, synaptic operations and wall time.

Datasets: set12, bsd68, bsd400 (downloaded once into $EDGESPIKE_DATA or ~/.cache/edgespike, SHA-256 checked),
or a folder / glob of images. Noise follows the project protocol: image i (sorted file order) gets
numpy.random.default_rng(seed + i), sigma on the 0..255 scale; gaussian y = x + n, speckle y = x + x*n.
Images that are not 8-bit grey are converted (colour -> BT.601 luma, 16-bit -> 8-bit) and a note says so.

--compare ann runs the model's float ANN twin (edgespike.twin) on the same noisy images; --compare bm3d runs BM3D
from the PyPI 'bm3d' package (pip install bm3d)."""


def add_arguments(p) -> None:
    p.add_argument("--model", metavar="M", help=MODEL_HELP + " (default: s25 for Gaussian noise of sigma 25, "
                   "else blind)")
    p.add_argument("--dataset", metavar="NAME|DIR", default="set12",
                   help="set12, bsd68, bsd400, a folder of images or a glob (default: set12)")
    p.add_argument("--sigma", type=float, default=25.0, help="noise level on the 0..255 scale (default: 25)")
    p.add_argument("--noise", choices=data.NOISE_KINDS, default="gaussian", help="noise model (default: gaussian)")
    p.add_argument("--seed", type=int, default=0, help="noise seed offset: image i uses default_rng(seed + i)")
    p.add_argument("--compare", choices=("none", "ann", "bm3d"), default="none",
                   help="also run the ANN twin or BM3D on the same noisy images")
    p.add_argument("--ann-mode", choices=("quant", "relu"), default="quant",
                   help="ANN twin activations: T+1-level rates (quant, default) or clipped ReLU (relu)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N images")
    add_threads_argument(p)
    p.add_argument("--json", action="store_true", help="print one JSON document instead of the table")


# ------------------------------------------------------------------ executors


def open_executor(path: Path):
    """The fast bit-exact runtime for the model file ``path``.

    Returns ``(executor, label)``; ``executor.denoise(frame) -> (uint8 frame, stats)``.
    """
    import edgespike

    return edgespike.load(str(path)), "edgespike runtime"


def _bm3d(noisy: np.ndarray, sigma: float, kind: str) -> np.ndarray:
    import bm3d

    z = noisy.astype(np.float64) / 255.0
    s = sigma / 255.0
    if kind == "speckle":  # BM3D assumes additive white noise: use the image's average noise std x*sigma
        s = s * float(np.sqrt(np.mean(z**2)))
    return np.clip(np.rint(bm3d.bm3d(z, sigma_psd=s) * 255.0), 0, 255).astype(np.uint8)


def open_comparison(kind: str, model, ann_mode: str):
    """``(label, denoise(noisy, sigma, noise_kind) -> uint8)`` for ``--compare``, or None for "none"."""
    if kind == "none":
        return None
    if kind == "bm3d":
        try:
            importlib.import_module("bm3d")
        except ImportError:
            raise UserError("--compare bm3d needs the BM3D package: pip install bm3d") from None
        return "BM3D", _bm3d
    from edgespike.modelset import ModelSet
    from edgespike.twin import Twin

    if isinstance(model, ModelSet):  # each member's twin, chosen by the same estimate as the member
        twins = [Twin(m.model, mode=ann_mode) for m in model.members]
        return f"ANN twin ({ann_mode})", lambda noisy, sigma, noise: twins[model.choose(noisy)[0]].denoise(noisy)
    twin = Twin(model, mode=ann_mode)
    return f"ANN twin ({ann_mode})", lambda noisy, sigma, noise: twin.denoise(noisy)


# ------------------------------------------------------------------ progress


class _Bar:
    """tqdm when installed, else a one-line stderr bar; in a log (stderr not a terminal) a line every few seconds
    (:class:`edgespike.progress.Progress`), as BSD68 takes minutes; silent for --json."""

    def __init__(self, total: int, enabled: bool) -> None:
        from edgespike.progress import Progress

        self.total = total
        self.done = 0
        self.tqdm = None
        self.log = Progress("eval", total, "images", enabled=enabled and not sys.stderr.isatty())
        self.enabled = enabled and sys.stderr.isatty()
        if self.enabled:
            try:
                from tqdm import tqdm

                self.tqdm = tqdm(total=total, unit="img", file=sys.stderr, leave=False)
            except ImportError:
                pass

    def update(self, label: str) -> None:
        self.done += 1
        self.log.update(self.done)
        if not self.enabled:
            return
        if self.tqdm is not None:
            self.tqdm.set_postfix_str(label, refresh=False)
            self.tqdm.update(1)
            return
        width = 30
        fill = width * self.done // max(self.total, 1)
        sys.stderr.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {self.done}/{self.total} {label[:30]:<30}")
        sys.stderr.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self.tqdm is not None:
            self.tqdm.close()
        else:
            sys.stderr.write("\r" + " " * 80 + "\r")
            sys.stderr.flush()


# ------------------------------------------------------------------ the command


def _stat(stats, *names, default=0):
    """A Stats field by its contract name or an alias (the runtime calls synaptic ops ``synops``)."""
    for n in names:
        v = getattr(stats, n, None)
        if v is not None:
            return v
    return default


def _finite(x: float) -> float | None:
    """JSON has no infinity or NaN: an identical image's PSNR (or a figure the executor lacks) becomes null."""
    return x if math.isfinite(x) else None


def evaluate(executor, files: list[Path], sigma: float, noise: str, seed: int, comparison=None,
             progress: bool = False, notes=None) -> list[dict]:
    """Run ``executor`` (and ``comparison``) on every image; one record per image (see ``edgespike eval --json``)."""
    records = []
    bar = _Bar(len(files), progress)
    try:
        for s in data.samples(files, sigma, noise, seed):
            if s.note and notes is not None:
                notes(f"{s.path.name}: {s.note}")
            t0 = time.perf_counter()
            out, stats = executor.denoise(s.noisy)
            wall = time.perf_counter() - t0
            rec = {
                "index": s.index, "file": s.path.name, "width": int(s.clean.shape[1]),
                "height": int(s.clean.shape[0]), "note": s.note,
                "psnr_noisy": _finite(psnr(s.clean, s.noisy)), "ssim_noisy": ssim(s.clean, s.noisy),
                "psnr": _finite(psnr(s.clean, out)), "ssim": ssim(s.clean, out),
                "spike_rate": _finite(float(_stat(stats, "spike_rate", default=float("nan")))),
                "synaptic_ops": int(_stat(stats, "synaptic_ops", "synops")), "macs": int(_stat(stats, "macs")),
                "seconds": wall,
            }
            if getattr(stats, "member", None) is not None:  # a model set: what it estimated and chose
                rec["sigma_estimate"] = round(float(stats.sigma_estimate), 3)
                rec["member"] = stats.member
            if comparison is not None:
                label, fn = comparison
                t0 = time.perf_counter()
                other = fn(s.noisy, sigma, noise)
                rec["compare"] = {"method": label, "psnr": _finite(psnr(s.clean, other)),
                                  "ssim": ssim(s.clean, other), "seconds": time.perf_counter() - t0}
            records.append(rec)
            bar.update(s.path.name)
    finally:
        bar.close()
    return records


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def summary(records: list[dict]) -> dict:
    """Means over images of every per-image figure (PSNR means skip identical images, whose PSNR is infinite)."""
    keys = ("psnr_noisy", "ssim_noisy", "psnr", "ssim", "spike_rate", "synaptic_ops", "macs", "seconds")
    mean = {k: _mean(r[k] for r in records) for k in keys}
    if records and "member" in records[0]:
        mean["sigma_estimate"] = _mean(r["sigma_estimate"] for r in records)
        chosen: dict[str, int] = {}
        for r in records:
            chosen[r["member"]] = chosen.get(r["member"], 0) + 1
        mean["members_chosen"] = chosen
    if records and "compare" in records[0]:
        mean["compare"] = {"method": records[0]["compare"]["method"]} | {
            k: _mean(r["compare"][k] for r in records) for k in ("psnr", "ssim", "seconds")}
    return mean


def _si(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def _f(x: float | None, fmt: str) -> str:
    return "inf" if x is None else format(x, fmt)


def table(records: list[dict], mean: dict) -> str:
    """The terminal table: one row per image and a mean row."""
    cmp = "compare" in mean
    head = f"{'image':<16}{'size':>10}{'noisy dB':>10}{'PSNR':>8}{'SSIM':>8}{'spk/n/t':>9}{'syn.ops':>10}{'MACs':>10}"
    head += f"{'time s':>8}"
    chose = bool(records) and "member" in records[0]  # a model set: the noise estimate and the member
    if chose:
        head += f"{'noise~':>8}  {'net':<10}"
    short = mean["compare"]["method"].split()[0] if cmp else ""  # "ANN" or "BM3D"
    if cmp:
        head += f"  |{short + ' PSNR':>10}{short + ' SSIM':>10}"
    lines = [head, "-" * len(head)]

    def row(name, size, r, c):
        line = (f"{name[:15]:<16}{size:>10}{_f(r['psnr_noisy'], '.2f'):>10}{_f(r['psnr'], '.2f'):>8}"
                f"{_f(r['ssim'], '.4f'):>8}{_f(r['spike_rate'], '.3f'):>9}{_si(r['synaptic_ops']):>10}"
                f"{_si(r['macs']):>10}{_f(r['seconds'], '.2f'):>8}")
        if chose:
            line += (f"{r['sigma_estimate']:>8.1f}  {r['member'][:10]:<10}" if "member" in r
                     else f"{_f(r.get('sigma_estimate'), '.1f'):>8}  {'':<10}")
        if c is not None:
            line += f"  |{_f(c['psnr'], '.2f'):>10}{_f(c['ssim'], '.4f'):>10}"
        return line

    for r in records:
        lines.append(row(r["file"], f"{r['width']}x{r['height']}", r, r.get("compare")))
    lines.append("-" * len(head))
    lines.append(row("mean", f"{len(records)} img", mean, mean.get("compare")))
    return "\n".join(lines)


def run(args) -> int:
    sigma = data.check_sigma(args.sigma)
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1, got {args.limit}")
    path = resolve(args.model or shipped_for(args.noise, sigma))
    # Resolve the data first: a missing dataset should fail before a slow model load.
    label, files = data.resolve(args.dataset)
    if args.limit is not None:
        files = files[: args.limit]
    apply_threads_argument(args)
    prepare_kernel(enabled=not args.json)  # the first use builds the C kernel: say so rather than pause
    executor, executor_label = open_executor(path)
    model = executor.model
    comparison = open_comparison(args.compare, model, args.ann_mode)

    def note(msg: str) -> None:
        print(f"edgespike: note: {msg}", file=sys.stderr)

    records = evaluate(executor, files, sigma, args.noise, args.seed, comparison,
                       progress=not args.json, notes=None if args.json else note)
    mean = summary(records)
    if args.json:
        doc = {
            "model": str(path), "model_label": model_label(path, model.metadata), "executor": executor_label,
            "model_metadata": model.metadata, "timesteps": model.timesteps,
            "dataset": label, "noise": args.noise, "sigma": sigma, "seed": args.seed,
            "compare": args.compare, "images": records, "mean": mean,
        }
        print(json.dumps(doc, indent=2, default=str))
        return 0
    print(f"model {model_label(path, model.metadata)}  T={model.timesteps}  executor: {executor_label}")
    if "members_chosen" in mean:
        chosen = ", ".join(f"{k} on {n}" for k, n in mean["members_chosen"].items())
        print(f"{model.describe()}: {chosen} (mean estimate {mean['sigma_estimate']:.1f})")
    print(f"dataset {label} ({len(files)} images), {args.noise} noise sigma {sigma:g}, seed {args.seed}"
          + (f", compared with {comparison[0]}" if comparison else ""))
    print(table(records, mean))
    return 0
