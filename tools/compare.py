#!/usr/bin/env python
"""Run trained method models side by side on one dataset and noise level; write the table and a PSNR-vs-T plot
into docs/METHODS.md.

The manifest (TOML or JSON) lists the models and the command that made each:

    [[model]]
    name = "VTSNN ITBP"              # the row label
    method = "vtsnn"                 # the plot groups rows by method (one line per method, PSNR vs T)
    path = "runs/methods/vtsnn_itbp.esnn"
    command = "python tools/train_method.py vtsnn --loss itbp --minutes 60 --out runs/methods/vtsnn_itbp.esnn"
    noise = "gaussian"               # optional: this row's noise kind and sigma (default: --noise, --sigma)
    curve = true                     # optional: plot its validation PSNR against training minutes
    limit = 12                       # optional: this row on the first 12 images only (e.g. rate coding at T = 64)

A relative ``path`` is taken from the manifest's folder when the file is there, else from the current directory
(run from the repository root for the default manifest, whose paths are ``runs/methods/...``).

Every model runs through the fast bit-exact runtime with the code paths of ``edgespike eval`` (the project's
noise protocol, PSNR and SSIM of :mod:`edgespike.metrics`); per frame the energy of
:func:`edgespike.profile.energy.estimate` is added. A model file that does not exist yet gets a row saying so.

With ``--cache DIR`` each row is kept as JSON under the SHA-256 of its model file and the evaluation settings, so
a second run (after one more model has been trained) evaluates only what changed; ``--only`` restricts a run to
the rows whose name contains a string (the doc's table is still written from every cached row).

Example
-------
    python tools/compare.py --dataset bsd68 --sigma 25          # the manifest of docs/METHODS.md
    python tools/compare.py --manifest mine.toml --dataset set12 --limit 3 --doc /tmp/M.md
    python tools/compare.py --cache runs/compare-cache          # re-run: only new or retrained models
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"
MANIFEST = Path(__file__).resolve().parents[1] / "edgespike" / "train" / "methods" / "manifest.toml"


class CompareError(Exception):
    """A problem the user can fix; printed as one line."""


@dataclass
class Entry:
    name: str
    method: str
    path: Path
    command: str
    noise: str
    sigma: float
    curve: bool = False  # plot this run's validation PSNR against training time (from its .train.log)
    limit: int | None = None  # this row on the first N images only (a long-T model costs T times more per image)


def read_manifest(path: Path, noise: str, sigma: float) -> list[Entry]:
    """The entries of a TOML (``[[model]]`` tables) or JSON (``{"model": [...]}``) manifest."""
    try:
        text = path.read_bytes()
    except OSError as e:
        raise CompareError(f"cannot read manifest {path}: {e.strerror}") from None
    try:
        doc = json.loads(text) if path.suffix == ".json" else tomllib.loads(text.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CompareError(f"manifest {path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: "
                           f"{str(e).splitlines()[0]}") from None
    rows = doc.get("model") if isinstance(doc, dict) else None
    if not isinstance(rows, list) or not rows:
        raise CompareError(f"manifest {path} lists no models (expected [[model]] entries)")
    out = []
    for i, r in enumerate(rows, start=1):
        if not isinstance(r, dict) or not all(isinstance(r.get(k), str) for k in ("name", "path", "command")):
            raise CompareError(f"manifest {path}: model {i} needs string fields name, path and command")
        p = Path(r["path"])
        if not p.is_absolute():
            p = (path.parent / p) if (path.parent / p).exists() else p
        kind = r.get("noise", noise)
        if kind not in ("gaussian", "speckle"):
            raise CompareError(f"manifest {path}: model {r['name']!r} has unknown noise {kind!r}")
        limit = r.get("limit")
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise CompareError(f"manifest {path}: model {r['name']!r} has limit {limit!r}, not a positive integer")
        out.append(Entry(r["name"], str(r.get("method", r["name"])), p, r["command"], kind,
                         float(r.get("sigma", sigma)), bool(r.get("curve", False)), limit))
    return out


class EnergyExecutor:
    """The runtime of one model, adding the estimated energy of every frame to a running list."""

    def __init__(self, model):
        import edgespike

        self.model = model
        self.rt = edgespike.load(model)
        self.energy: list[dict] = []

    def denoise(self, frame):
        from edgespike.profile.energy import estimate

        out, stats = self.rt.denoise(frame)
        self.energy.append(estimate(stats, self.model, frame.shape))
        return out, stats


def evaluate_entry(entry: Entry, files: list[Path], ann_twin: bool = True) -> dict:
    """One table row: means over ``files`` of PSNR, SSIM, spikes/neuron/step, synaptic ops, MACs, energy, and
    (``ann_twin``) the PSNR of the model's float ANN twin (``edgespike eval --compare ann --ann-mode relu``) where
    the model has one (direct input, soft-reset IF, no MPRN, no neuron-membrane read-out; else ``None``)."""
    import numpy as np

    from edgespike.commands.eval import evaluate, open_comparison, summary
    from edgespike.fileformat import load
    from edgespike.model import ModelError

    row = {"name": entry.name, "method": entry.method, "path": str(entry.path), "command": entry.command,
           "noise": entry.noise, "sigma": entry.sigma}
    if not entry.path.is_file():
        return row | {"missing": True}
    model = load(entry.path)
    ex = EnergyExecutor(model)
    comparison = None
    if ann_twin:
        try:
            comparison = open_comparison("ann", model, "relu")
        except ModelError:  # this model's spikes carry timing a rate network does not have
            comparison = None
    mean = summary(evaluate(ex, files, entry.sigma, entry.noise, 0, comparison))
    ann = mean.pop("compare", {}).get("psnr")
    return row | {"missing": False, "T": model.timesteps, "extra_step": model.has_extra_step,
                  "architecture": model.metadata.get("architecture", ""), **mean, "ann_psnr": ann,
                  "snn_uJ": float(np.mean([e["snn_pJ"] for e in ex.energy])) / 1e6,
                  "ann_uJ": float(np.mean([e["ann_pJ"] for e in ex.energy])) / 1e6}


def cached_row(entry: Entry, files: list[Path], ann_twin: bool, cache: Path | None, run: bool) -> dict | None:
    """The row of ``entry``: from ``cache`` when its model file and settings were evaluated before, else evaluated
    (when ``run``; else None) and stored there. A missing model file is never cached."""
    if cache is None or not entry.path.is_file():
        return evaluate_entry(entry, files, ann_twin) if run or not entry.path.is_file() else None
    digest = hashlib.sha256(entry.path.read_bytes())
    digest.update(json.dumps([entry.noise, entry.sigma, ann_twin, [f.name for f in files]]).encode())
    path = cache / f"{digest.hexdigest()[:24]}.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        # name, path and command are the manifest's, not the cache's (a renamed row keeps its figures)
        return stored | {"name": entry.name, "method": entry.method, "path": str(entry.path),
                         "command": entry.command}
    if not run:
        return None
    row = evaluate_entry(entry, files, ann_twin)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(row, default=str))
    tmp.replace(path)  # never a half-written cache file
    return row


def _f(x, fmt):
    return "-" if x is None else format(x, fmt)


def _mj(uj):
    """Energy per image in mJ to three significant figures."""
    return "-" if uj is None else f"{uj / 1e3:.3g}"


def _si(n):
    if n is None:
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f}"


def markdown(rows: list[dict], dataset: str, n_images: int, plot: str | None, curves: str | None = None) -> str:
    """The generated section of docs/METHODS.md."""
    lines = [BEGIN, "", f"Dataset **{dataset}** ({n_images} images), noise protocol of `edgespike eval` (seed 0); "
             "all figures are means per image, measured by the fast runtime (bit-exact). ANN twin: the float ReLU twin "
             "of the model's integers (`edgespike eval --compare ann --ann-mode relu`; '-' where the model has none: "
             "UWE/rate input, LIF, MPRN, membrane recycling). Energy: `edgespike.profile.energy.estimate` (SNN vs "
             "its ANN twin on the same layers).", "",
             "| method | noise | T | PSNR dB | SSIM | ANN twin PSNR dB | spikes/neuron/step | synaptic ops | MACs "
             "| SNN energy mJ | ANN energy mJ | command |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        noise = f"{r['noise']} {r['sigma']:g}"
        if r["missing"]:
            lines.append(f"| {r['name']} | {noise} | - | not trained yet (`{r['path']}` missing) | | | | | | | "
                         f"| `{r['command']}` |")
            continue
        T = f"{r['T']}+1" if r["extra_step"] else str(r["T"])
        part = r.get("images", n_images) < n_images
        name = r["name"] + (f" (first {r['images']} of {n_images} images)" if part else "")
        lines.append(f"| {name} | {noise} | {T} | {_f(r['psnr'], '.2f')} | {_f(r['ssim'], '.4f')} "
                     f"| {_f(r['ann_psnr'], '.2f')} | {_f(r['spike_rate'], '.3f')} | {_si(r['synaptic_ops'])} "
                     f"| {_si(r['macs'])} "
                     f"| {_mj(r['snn_uJ'])} | {_mj(r['ann_uJ'])} | `{r['command']}` |")
    if plot:
        lines += ["", f"![PSNR vs T per method]({plot})"]
    if curves:
        lines += ["", f"![validation PSNR vs training time]({curves})"]
    lines += ["", END]
    return "\n".join(lines)


def write_section(doc: Path, section: str) -> None:
    """Replace the text between the markers of ``doc`` (or append the section when there are none)."""
    text = doc.read_text() if doc.exists() else "# Methods of the founding papers\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.write_text(text)


def plot_psnr_vs_t(rows: list[dict], path: Path, title: str) -> None:
    """One line per method: PSNR against T."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    methods: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        if not r["missing"] and r["psnr"] is not None:
            methods.setdefault(r["method"], []).append((r["T"], r["psnr"]))
    for m, pts in sorted(methods.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
    ax.set_xlabel("timesteps T")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if methods:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


LOG_LINE = re.compile(r"(\S+) it (\d+) ([\d.]+) min loss \S+ val ([\d.]+) dB")


def read_curve(log: Path) -> dict[str, list[tuple[float, float]]]:
    """``{phase: [(minutes, validation PSNR), ...]}`` from a ``tools/train_method.py`` log (its last run, with the
    ``--resume`` continuations of that run: their minutes carry on)."""
    curves: dict[str, list[tuple[float, float]]] = {}
    if not log.is_file():
        return curves
    for line in log.read_text(errors="replace").splitlines():
        if "command: " in line and "--resume" not in line:  # a fresh run into the same log: keep only it
            curves = {}
        m = LOG_LINE.search(line)
        if m:
            curves.setdefault(m.group(1), []).append((float(m.group(3)), float(m.group(4))))
    return curves


def plot_curves(entries: list[Entry], path: Path) -> bool:
    """Validation PSNR against training minutes of the entries marked ``curve``; False if none has a log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for e in entries:
        if not e.curve:
            continue
        for phase, pts in read_curve(e.path.with_suffix(".train.log")).items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=f"{e.name} ({phase})")
            drawn = True
    if drawn:
        ax.set_xlabel("training minutes (2 cores)")
        ax.set_ylabel("validation PSNR (dB), exact integer output")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", default=str(MANIFEST), help="TOML or JSON list of models (default: the proposed "
                   "runs of docs/METHODS.md, edgespike/train/methods/manifest.toml)")
    p.add_argument("--dataset", default="bsd68", help="set12, bsd68 or a folder of images (default bsd68)")
    p.add_argument("--sigma", type=float, default=25.0, help="noise level, 0..255 scale (default 25)")
    p.add_argument("--noise", choices=("gaussian", "speckle"), default="gaussian", help="default noise kind")
    p.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--doc", default="docs/METHODS.md", help="markdown file whose compare section is rewritten")
    p.add_argument("--plot", default="docs/methods_psnr_vs_t.png", help="PSNR-vs-T figure ('' for none)")
    p.add_argument("--json", help="also write the rows as JSON here")
    p.add_argument("--no-ann-twin", action="store_true", help="skip the float ANN twin column (faster)")
    p.add_argument("--cache", help="keep each row here (JSON, keyed by the model file's SHA-256 and the settings) and "
                   "evaluate only models not seen before")
    p.add_argument("--only", help="evaluate only rows whose name contains this; the others come from --cache or "
                   "are left out")
    p.add_argument("--curves", default="docs/methods_curves.png",
                   help="validation PSNR vs training minutes of the manifest's 'curve' rows ('' for none)")
    a = p.parse_args(argv)
    try:
        from edgespike import data
        from edgespike.errors import UserError

        try:
            data.check_sigma(a.sigma)
            entries = read_manifest(Path(a.manifest), a.noise, a.sigma)
            # The project's copy of the benchmark sets (../shared/data) when the user has not chosen a cache.
            shared = Path(__file__).resolve().parents[2] / "shared" / "data"
            root = shared if shared.is_dir() and not os.environ.get("EDGESPIKE_DATA") else None
            label, files = data.resolve(a.dataset, root)
        except UserError as e:
            raise CompareError(str(e)) from None
        if a.limit is not None:
            if a.limit < 1:
                raise CompareError(f"--limit must be at least 1, got {a.limit}")
            files = files[: a.limit]
        cache = Path(a.cache) if a.cache else None
        rows = []
        for e in entries:
            run = a.only is None or a.only in e.name
            if run:
                print(f"compare: {e.name} ({e.path}) on {label}, {e.noise} {e.sigma:g} ...", file=sys.stderr)
            row = cached_row(e, files[: e.limit] if e.limit else files, not a.no_ann_twin, cache, run)
            if row is not None:
                rows.append(row | {"images": min(len(files), e.limit or len(files))})
        doc = Path(a.doc)
        plot_rel = None
        if a.plot:
            plot_path = Path(a.plot)
            plot_psnr_vs_t(rows, plot_path, f"{label}, sigma {a.sigma:g}")
            try:
                plot_rel = str(plot_path.resolve().relative_to(doc.resolve().parent))
            except ValueError:
                plot_rel = str(plot_path.resolve())
        curves_rel = None
        if a.curves and plot_curves(entries, Path(a.curves)):
            try:
                curves_rel = str(Path(a.curves).resolve().relative_to(doc.resolve().parent))
            except ValueError:
                curves_rel = str(Path(a.curves).resolve())
        write_section(doc, markdown(rows, label, len(files), plot_rel, curves_rel))
        if a.json:
            Path(a.json).write_text(json.dumps(rows, indent=2, default=str))
    except CompareError as e:
        print(f"compare: error: {e}", file=sys.stderr)
        return 2
    for r in rows:
        psnr = "missing" if r["missing"] else f"{r['psnr']:.2f} dB"
        print(f"{r['name']:<28} {psnr}")
    print(f"wrote {a.doc}" + (f" and {a.plot}" if a.plot else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
