"""The whole profile of one model: quality, speed, estimated and measured energy of the SNN and its int8 twins.

:func:`profile` returns one JSON-ready dict; :func:`table` renders it for the terminal, :func:`plot` draws it
with matplotlib and :func:`markdown` writes a report around the plot. ``edgespike profile`` is a thin wrapper.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import math
import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgespike.errors import UserError
from edgespike.metrics import psnr
from edgespike.model import Model
from edgespike.profile import energy as E
from edgespike.profile import measure, sensors
from edgespike.profile import memory as M


@dataclass
class Options:
    """What to profile and how (the command's flags)."""

    anns: tuple[str, ...] = ("onnx", "tflite")
    size: tuple[int, int] = (256, 256)  # (height, width)
    frames: int = 5
    warmup: int = 1
    threads: int = 1
    sweep: tuple[int, ...] = ()
    eval_files: list = field(default_factory=list)
    eval_label: str = ""
    sigma: float = 25.0
    calib_files: list = field(default_factory=list)
    calib_count: int = 16
    twin_mode: str = "relu"
    table: str = E.DEFAULT_TABLE
    memory: str | None = None  # memory model of the headline estimate (None: the table's)
    extra_tables: str | None = None
    accelerator: bool = False  # the accelerator's own counts and energy (its cycle model: minutes per 256x256)
    addressing: str = "code"
    um_port: str | None = None
    um_model: str = "UM24C"
    energy_seconds: float = 3.0
    energy_trials: int = 3
    log: object = None  # callable(str) for progress lines, or None


def set_blas_threads(n: int) -> bool:
    """Limit numpy's OpenBLAS to ``n`` threads (so the SNN and the ANN runtimes use the same count)."""
    try:
        libs = sorted({line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
                       if "openblas" in line and line.split()[-1].startswith("/")})
    except OSError:
        return False
    for path in libs:
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_", "openblas_set_num_threads"):
            if hasattr(lib, name):
                getattr(lib, name)(int(n))
                return True
    return False


class SnnRunner:
    """The SNN executor: the fast bit-exact runtime, returning the output and the spikes per node per step."""

    def __init__(self, model: Model, threads: int | None = None):
        from edgespike.runtime import Runtime

        self.model = model
        self.rt = Runtime(model, threads=threads)  # the same thread count as the ANN runtimes
        self.label = f"edgespike.runtime ({self.rt.backend})"

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        return self.run(frame)[0]

    def run(self, frame: np.ndarray) -> tuple[np.ndarray, dict[str, list[int]]]:
        out, stats = self.rt.denoise(frame)
        return out, {k: [int(x) for x in v] for k, v in stats.spikes.items()}


def with_timesteps(model: Model, T: int) -> Model:
    """The same integers run for ``T`` steps, decoder multipliers rescaled by ``T0 / T`` (a what-if, not
    retrained: the rate-domain network is the same, only its quantisation to T + 1 levels changes)."""
    if T == model.timesteps or not model.decoder.terms:
        return dataclasses.replace(model, timesteps=T)
    dec = model.decoder
    vals = [t.multiplier.astype(np.float64) / 2.0**dec.shift * model.timesteps / T for t in dec.terms]
    peak = max(float(np.abs(v).max()) for v in vals)
    shift = max(0, min(62, int(math.floor(math.log2((2**31 - 1) / peak)))))
    terms = [dataclasses.replace(t, multiplier=np.round(v * 2.0**shift).astype(np.int32))
             for t, v in zip(dec.terms, vals, strict=True)]
    return dataclasses.replace(model, timesteps=T, decoder=dataclasses.replace(dec, terms=terms, shift=shift))


def _fit(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """``img`` tiled by mirroring and cropped to ``h`` x ``w`` (real image content at any profile size)."""
    reps = (math.ceil(h / img.shape[0]), math.ceil(w / img.shape[1]))
    rows = [img if i % 2 == 0 else img[::-1] for i in range(reps[0])]
    col = np.concatenate(rows, 0)
    tiles = [col if j % 2 == 0 else col[:, ::-1] for j in range(reps[1])]
    return np.ascontiguousarray(np.concatenate(tiles, 1)[:h, :w])


def _calibration(opts: Options, eval_noisy: list[np.ndarray]) -> list[np.ndarray]:
    """Noisy 64x64 patches (frames in [0, 1]) from the calibration images, noise as in the eval protocol."""
    from edgespike import data

    rng = np.random.default_rng(1234)
    imgs = []
    for i, p in enumerate(opts.calib_files[:opts.calib_count]):
        clean, _ = data.read_image(p)
        imgs.append(data.noisy_image(clean, i, opts.sigma))
    if not imgs:
        imgs = eval_noisy
    out = []
    for k in range(opts.calib_count):
        im = imgs[k % len(imgs)]
        if min(im.shape) < 64:
            out.append(im / 255.0)
            continue
        y, x = rng.integers(0, im.shape[0] - 63), rng.integers(0, im.shape[1] - 63)
        out.append(im[y:y + 64, x:x + 64] / 255.0)
    return out


def _say(opts: Options, msg: str) -> None:
    if opts.log:
        opts.log(msg)


def profile(model: Model, opts: Options, model_label: str = "") -> dict:
    """Profile ``model``; see the module docstring. Returns the JSON-ready result."""
    from edgespike import data

    h, w = opts.size
    threads_set = set_blas_threads(opts.threads)
    res: dict = {
        "model": model_label, "timesteps": model.timesteps, "size": [h, w], "threads": opts.threads,
        "blas_threads_set": threads_set,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "eval": {"dataset": opts.eval_label, "sigma": opts.sigma, "images": len(opts.eval_files)},
    }
    # ---------------------------------------------------------------- evaluation set
    samples = list(data.samples(opts.eval_files, opts.sigma)) if opts.eval_files else []
    if not samples:
        raise UserError("no evaluation images: pass --eval set12 (or a folder)")
    snn = SnnRunner(model, opts.threads)
    runners: dict[str, object] = {"snn": snn}
    labels = {"snn": snn.label}
    quality: dict[str, dict] = {}

    def score(name, fn):
        ps = [psnr(s.clean, fn(s.noisy)) for s in samples]
        quality[name] = {"psnr_db": float(np.mean(ps)), "per_image": [float(p) for p in ps]}

    _say(opts, f"SNN on {len(samples)} evaluation images ({snn.label})")
    rates = []
    for s in samples:
        _, sp = snn.run(s.noisy)
        n = sum(layer.n_out for layer in E.layers(model, *s.noisy.shape) if layer.neuron)
        rates.append(sum(sum(v) for v in sp.values()) / max(n * model.timesteps, 1))
    score("snn", snn)
    res["spike_rate_eval"] = float(np.mean(rates))
    quality["noisy"] = {"psnr_db": float(np.mean([psnr(s.clean, s.noisy) for s in samples]))}

    twin_err = None
    makers: dict[str, object] = {}
    tmp = Path(tempfile.mkdtemp(prefix="edgespike-profile-"))
    if opts.anns:
        from edgespike.profile import ann

        try:
            tw = ann.twin(model, opts.twin_mode)
        except UserError as exc:
            twin_err = str(exc)
            tw = None
        if tw is not None:
            calib = _calibration(opts, [s.noisy for s in samples])
            _say(opts, f"ANN twins from {len(calib)} calibration patches")
            ann.to_onnx(tw, tmp / "twin.onnx")
            makers["float"] = lambda: ann.OnnxRunner(tmp / "twin.onnx", opts.threads)
            if "onnx" in opts.anns:
                ann.quantize_onnx(tmp / "twin.onnx", tmp / "twin.int8.onnx", calib)
                makers["onnx"] = lambda: ann.OnnxRunner(tmp / "twin.int8.onnx", opts.threads)
            if "tflite" in opts.anns or "tflite-builtin" in opts.anns:
                # One flatbuffer per frame size (a transposed conv's output shape is a constant); the int8 ranges
                # are calibrated once and every size's file is built from them.
                ranges = ann.calibrate_ranges(tw, calib)
                build = functools.lru_cache(maxsize=8)(functools.partial(ann.to_tflite, tw, calib, ranges=ranges))
                (tmp / "twin.int8.tflite").write_bytes(build(h, w))
                if "tflite" in opts.anns:
                    makers["tflite"] = lambda: ann.TfliteRunner(build, opts.threads, size=(h, w))
                if "tflite-builtin" in opts.anns:  # XNNPACK off: TFLite's reference int8 kernels
                    makers["tflite-builtin"] = lambda: ann.TfliteRunner(build, opts.threads, xnnpack=False,
                                                                        size=(h, w))

    # ---------------------------------------------------------------- speed and memory at the profile size
    # Each ANN runtime is created inside its measurement, before it has seen any other frame size, so that its
    # arena (allocated at load or first run, then kept) counts as its memory.
    frame = _fit(samples[0].noisy, h, w)
    speed = {}
    _say(opts, f"latency of snn at {w}x{h}")
    # a fresh runtime, like the ANNs: the one that scored the eval set keeps its buffers, and showed 0 MiB
    speed["snn"] = dataclasses.asdict(measure.latency(None, frame, opts.frames, opts.warmup,
                                                      make=lambda: SnnRunner(model, opts.threads))[0])
    for name, make in makers.items():
        _say(opts, f"latency of {name} at {w}x{h}")
        lat, runners[name] = measure.latency(None, frame, opts.frames, opts.warmup, make=make)
        speed[name] = dataclasses.asdict(lat)
    res["latency"] = speed
    suffix = {"float": " (float32 twin)", "onnx": " (QDQ int8)", "tflite": " (int8)", "tflite-builtin": " (int8)"}
    for name in makers:
        labels[name] = runners[name].label + suffix[name]
        _say(opts, f"PSNR of {name}")
        score(name, runners[name])
    for name in ("onnx", "tflite", "tflite-builtin"):
        if name in quality:
            quality[name]["loss_vs_float_db"] = quality["float"]["psnr_db"] - quality[name]["psnr_db"]
    res["twin"] = {"mode": opts.twin_mode, "error": twin_err, "artifacts": str(tmp)}
    res["quality"] = quality
    res["runtimes"] = labels

    # ---------------------------------------------------------------- estimated energy (spikes from this frame)
    _, spikes = snn.run(frame)
    est = E.analyse(model, h, w, spikes, frame, E.pricing(opts.table, model, opts.memory, opts.extra_tables),
                    opts.addressing)
    res["estimate"] = est.to_dict()
    res["estimate"]["spike_rate"] = (sum(sum(v) for v in spikes.values())
                                     / max(1, sum(la.n_out for la in E.layers(model, h, w) if la.neuron)
                                           * model.timesteps))
    res["estimates"] = estimate_matrix(model, h, w, spikes, frame, opts)
    if opts.accelerator:
        from edgespike.profile import accel

        _say(opts, "accelerator counts (edgespike.fpga.cycles over the frame's tiles)")
        res["accelerator"] = accel.profile_entry(model, frame)
        res["accelerator"].update(lemaire_snn_pJ=est.total("snn"), lemaire_table=f"{opts.table} widths, "
                                  f"{res['estimates'][0]['memory']}")

    # ---------------------------------------------------------------- measured energy
    found, absent = sensors.discover(opts.um_port, opts.um_model)
    res["sensors"] = {"found": [s.name for s in found], "absent": absent}
    if not found:
        res["measured"] = "estimated only"
    else:
        s = found[0]
        meas = {}
        for name, fn in runners.items():
            _say(opts, f"energy of {name} with {s.name} ({opts.energy_trials} trials)")
            try:
                meas[name] = dataclasses.asdict(measure.energy(fn, frame, s, opts.energy_seconds,
                                                               opts.energy_seconds, opts.energy_trials))
            except sensors.SensorError as exc:
                meas[name] = {"error": str(exc)}
        res["measured"] = meas

    # ---------------------------------------------------------------- T sweep
    if opts.sweep:
        sweep = []
        for T in opts.sweep:
            mT = with_timesteps(model, T)
            runner = SnnRunner(mT, opts.threads)
            _say(opts, f"sweep T={T}")
            ps = [psnr(s.clean, runner(s.noisy)) for s in samples]
            _, spT = runner.run(frame)
            r = E.analyse(mT, h, w, spT, frame, E.pricing(opts.table, mT, opts.memory, opts.extra_tables),
                          opts.addressing)
            n = sum(la.n_out for la in E.layers(mT, h, w) if la.neuron) * T
            entry = {"T": T, "snn_psnr_db": float(np.mean(ps)), "spike_rate": sum(sum(v) for v in spT.values()) / n,
                     "snn_pJ": r.total("snn"), "ann_pJ": r.total("ann"), "snn_over_ann": r.ratio}
            if opts.anns and twin_err is None:
                from edgespike.profile import ann

                qt = ann.twin(mT, "quant")
                entry["quant_twin_psnr_db"] = float(np.mean([
                    psnr(s.clean, np.clip(np.rint(qt.forward(s.noisy / 255.0) * 255), 0, 255).astype(np.uint8))
                    for s in samples]))
            sweep.append(entry)
        res["sweep"] = {"note": "same integers run for T steps with the decoder rescaled (not retrained)",
                        "points": sweep}
    return res


PRESETS = (E.DEFAULT_TABLE, E.PAPER_TABLE)


def estimate_matrix(model: Model, h: int, w: int, spikes: dict, frame: np.ndarray, opts: Options) -> list[dict]:
    """The estimate under each width preset (stored, SPIDEN's) and each memory model, plus the other tables:
    per frame, SNN and ANN energy, their ratio and whether each stays inside its memory model's range."""
    out = []
    tables = list(E.load_tables(opts.extra_tables))
    combos = [(t, m) for t in PRESETS for m in M.MODELS]
    combos += [(t, None) for t in tables if t not in PRESETS]
    for t, m in combos:
        r = E.analyse(model, h, w, spikes, frame, E.pricing(t, model, m, opts.extra_tables), opts.addressing)
        mem = sorted({x.name for x in r.pricing.memory.values()}) if r.pricing.memory else []
        out.append({"table": t, "memory": ",".join(mem) or "none", "label": r.table.get("label", ""),
                    "snn_pJ": r.total("snn"), "ann_pJ": r.total("ann"), "snn_over_ann": r.ratio,
                    "range": {net: r.verdict(net) for net in ("snn", "ann")}})
    return out


# --------------------------------------------------------------------------- rendering
def fmt_energy(pj: float) -> str:
    """Energy with three significant figures in the unit that reads naturally (pJ ... J)."""
    if pj == 0:
        return "0 J"
    for unit, k in (("J", 1e12), ("mJ", 1e9), ("uJ", 1e6), ("nJ", 1e3), ("pJ", 1.0)):
        if abs(pj) >= k or unit == "pJ":
            return f"{pj / k:#.3g}".rstrip(".") + f" {unit}"
    raise AssertionError("unreachable")


_fmt_e = fmt_energy


def _range_short(v: dict) -> str:
    if v["inside"]:
        return "in range" if v["below_share"] <= 0.01 else f"in range ({v['below_share']:.0%} below)"
    return f"OUT ({v['above_share']:.0%} above)"


def _accesses_line(acc: dict) -> str:
    order = ("weight", "bias", "membrane", "spike", "activation", "pixel")
    return ", ".join(f"{k} {acc[k]:.3g}" for k in order if acc.get(k))


def energy_lines(res: dict) -> list[str]:
    """The estimated-energy part of the report: ratios first, then per-frame energies, counts and ranges."""
    est = res["estimate"]
    c = est["counts"]
    lines = ["", f"estimated energy per frame ({res['size'][1]}x{res['size'][0]}, spikes of the profiled frame: "
             f"{est['spike_rate']:.3f} spikes/neuron/step; {res['spike_rate_eval']:.3f} on the evaluation set)",
             f"{'SNN/ANN':>9}{'SNN':>12}{'ANN':>12}  {'widths':<18}{'memory model':<14}range SNN | ANN"]
    for e in res["estimates"]:
        lines.append(f"{e['snn_over_ann']:>9.3g}{fmt_energy(e['snn_pJ']):>12}{fmt_energy(e['ann_pJ']):>12}  "
                     f"{e['table']:<18}{e['memory']:<14}"
                     + ("-" if e["memory"] == "none" else
                        f"{_range_short(e['range']['snn'])} | {_range_short(e['range']['ann'])}"))
    lines.append("  widths: stored = SNN int8 weights, int32 biases, "
                 f"{est['pricing']['widths']['snn']['membrane'] if est.get('pricing') else '?'}-bit membranes, "
                 "1-bit spike maps; twins int8 weights/activations, int32 accumulators. spiden = every memory "
                 "16 bits, int32 ops (the paper's setting). Memory models and ranges: docs/PROFILE.md")
    for net in ("snn", "ann"):
        v = est["range"][net]
        if not v["inside"]:
            lines.append(f"  {net.upper()} under {est['table']['name']}/"
                         f"{','.join(sorted({m['model'] for m in est['pricing']['memory'].values()}))}: {v['text']}")
    lines += [f"  counts per frame{'':>4}{'MACs':>10}{'ACs':>10}{'addr ops':>10}{'mem acc.':>10}"]
    for net in ("snn", "ann"):
        lines.append(f"  {net.upper():<20}{c[net]['macs']:>10.3g}{c[net]['accs']:>10.3g}"
                     f"{c[net]['addr_macs'] + c[net]['addr_accs']:>10.3g}{c[net]['mem_accesses']:>10.3g}")
    for net in ("snn", "ann"):
        lines.append(f"  {net.upper()} memory accesses by kind: {_accesses_line(est['accesses'][net])}")
    b = est["breakdown_pJ"]
    lines.append(f"  breakdown under {est['table']['name']} (SNN | ANN): " + ", ".join(
        f"{k} {fmt_energy(b['snn'][k])} | {fmt_energy(b['ann'][k])}" for k in b["snn"]
        if k != "total" and (b["snn"][k] or b["ann"][k])))
    return lines


def accelerator_lines(acc: dict | None) -> list[str]:
    if not acc:
        return []
    if "error" in acc:
        return ["", f"accelerator: {acc['error']}"]
    lines = ["", f"accelerator's own energy per frame ({acc['plan']}; counts from edgespike.fpga.cycles, "
             f"{acc['tiles']} tiles, {acc['cycles']:.3g} cycles):"]
    for e in acc["energy"]:
        lines.append(f"  {fmt_energy(e['total_pJ']):>10}  memory model {e['memory']:<12}"
                     f"{'in range' if e['inside'] else 'OUT of range'}; adds {fmt_energy(e['adds_pJ'])}")
    head = acc["energy"][0]
    lines.append("  by memory (" + head["memory"] + "): " + ", ".join(
        f"{k} {v['accesses']:.3g} acc. {fmt_energy(v['pJ'])}" for k, v in head["memories"].items()))
    lines.append(f"  beside the Lemaire estimate of the same frame: SNN {fmt_energy(acc['lemaire_snn_pJ'])} "
                 f"({acc['lemaire_table']})")
    return lines


def measured_lines(res: dict) -> list[str]:
    if res["measured"] == "estimated only":
        return ["", "measured energy: estimated only; sensors looked for: " + "; ".join(res["sensors"]["absent"])]
    lines = ["", f"measured energy per frame ({res['sensors']['found'][0]}), median of trials [min, max]:"]
    for k, v in res["measured"].items():
        if "error" in v:
            lines.append(f"  {k:<8}{v['error']}")
            continue
        g, n = v["gross_range_j"], v["net_range_j"]
        count = (f"{v['samples']} samples" if v["method"] == "power samples"
                 else f"{v['counter_reads']} counter reads")
        lines.append(f"  {k:<8}gross {fmt_energy(v['gross_j_per_frame'] * 1e12)} [{fmt_energy(g[0] * 1e12)}, "
                     f"{fmt_energy(g[1] * 1e12)}], net {fmt_energy(v['net_j_per_frame'] * 1e12)} "
                     f"[{fmt_energy(n[0] * 1e12)}, {fmt_energy(n[1] * 1e12)}], "
                     f"{v['seconds_per_frame'] * 1e3:.3g} ms/frame, idle {v['idle_w']:.3g} W, "
                     f"{len(v['trials'])} trials, {count} ({v['resolution']})")
    return lines


def table(res: dict) -> str:
    """The terminal report: the ratios and per-frame energies first, then quality and speed."""
    h, w = res["size"]
    q, lat = res["quality"], res["latency"]
    head = res["estimates"][0]
    lines = [f"model {res['model']}  T={res['timesteps']}  frame {w}x{h}  threads {res['threads']}  "
             f"({res['machine']['processor']})",
             f"SNN / ANN estimated energy {head['snn_over_ann']:.3g} ({fmt_energy(head['snn_pJ'])} vs "
             f"{fmt_energy(head['ann_pJ'])} per frame; widths {head['table']}, memory {head['memory']}, "
             f"{'inside' if head['range']['snn']['inside'] and head['range']['ann']['inside'] else 'OUTSIDE'}"
             " the memory model's range)",
             f"eval: {res['eval']['dataset']} ({res['eval']['images']} images), sigma {res['eval']['sigma']:g}; "
             f"noisy input {q['noisy']['psnr_db']:.2f} dB",
             "", f"{'net':<15}{'PSNR dB':>9}{'vs float':>10}{'median ms':>11}{'p95 ms':>9}{'peak MiB':>10}  runtime"]
    for name in ("snn", "float", "onnx", "tflite", "tflite-builtin"):
        if name not in lat:
            continue
        qq = q.get(name, {})
        loss = qq.get("loss_vs_float_db")
        mem = lat[name]["peak_mem_mib"]
        lines.append(f"{name:<15}{qq.get('psnr_db', float('nan')):>9.2f}"
                     f"{(f'{-loss:+.2f}' if loss is not None else ''):>10}"
                     f"{lat[name]['median_s'] * 1e3:>11.1f}{lat[name]['p95_s'] * 1e3:>9.1f}"
                     f"{(f'{mem:.0f}' if mem is not None else 'n/a'):>10}  {res['runtimes'][name]}")
    if res["twin"]["error"]:
        lines.append(f"ANN twins: not built ({res['twin']['error']})")
    lines += energy_lines(res)
    lines += accelerator_lines(res.get("accelerator"))
    lines += measured_lines(res)
    if "sweep" in res:
        lines += ["", f"T sweep ({res['sweep']['note']}):",
                  f"{'T':>4}{'SNN dB':>9}{'quant-twin dB':>15}{'rate':>8}{'SNN':>12}{'ANN':>12}{'SNN/ANN':>9}"]
        for p in res["sweep"]["points"]:
            lines.append(f"{p['T']:>4}{p['snn_psnr_db']:>9.2f}{p.get('quant_twin_psnr_db', float('nan')):>15.2f}"
                         f"{p['spike_rate']:>8.3f}{fmt_energy(p['snn_pJ']):>12}{fmt_energy(p['ann_pJ']):>12}"
                         f"{p['snn_over_ann']:>9.3f}")
    return "\n".join(lines)


def plot(res: dict, path: str | Path) -> Path:
    """Energy breakdown per layer (SNN vs ANN), latency, and energy / PSNR vs T when swept."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError as exc:
        from edgespike.errors import need_extra

        raise need_extra("matplotlib", "profile") from exc
    panels = 3 if "sweep" in res else 2
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.5))
    layers = res["estimate"]["layers"]
    kinds = [k for k in layers[0]["snn_energy_pJ"] if k != "total"]
    x = np.arange(len(layers))
    ax = axes[0]
    for off, net, hatch in ((-0.2, "snn", ""), (0.2, "ann", "//")):
        bottom = np.zeros(len(layers))
        for i, k in enumerate(kinds):
            vals = np.array([la[f"{net}_energy_pJ"][k] for la in layers]) * 1e-6
            ax.bar(x + off, vals, 0.38, bottom=bottom, color=f"C{i}", hatch=hatch,
                   label=k if net == "snn" else None, edgecolor="k", linewidth=0.3)
            bottom += vals
    ax.set_xticks(x, [la["name"] for la in layers], rotation=60, fontsize=7)
    ax.set_ylabel("estimated energy per frame (uJ)")
    ax.set_title(f"per layer: SNN (plain) vs ANN (hatched)\n{res['estimate']['table']['name']} table", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1]
    names = list(res["latency"])
    ax.bar(names, [res["latency"][n]["median_s"] * 1e3 for n in names], color="C0")
    ax.errorbar(names, [res["latency"][n]["median_s"] * 1e3 for n in names],
                yerr=[[0] * len(names), [(res["latency"][n]["p95_s"] - res["latency"][n]["median_s"]) * 1e3
                                         for n in names]], fmt="none", ecolor="k", capsize=3)
    ax.set_ylabel("latency per frame (ms, median; bar to p95)")
    meds = [res["latency"][n]["median_s"] for n in names]
    if max(meds) > 20 * max(min(meds), 1e-9):  # an SNN 100x slower than XNNPACK flattens the rest otherwise
        ax.set_yscale("log")
    h, w = res["size"]
    ax.set_title(f"{w}x{h}, {res['threads']} thread(s)", fontsize=9)
    if "sweep" in res:
        ax = axes[2]
        pts = res["sweep"]["points"]
        Ts = [p["T"] for p in pts]
        ax.plot(Ts, [p["snn_pJ"] * 1e-6 for p in pts], "o-", label="SNN energy")
        ax.plot(Ts, [p["ann_pJ"] * 1e-6 for p in pts], "s--", label="ANN energy")
        ax.set_xlabel("timesteps T")
        ax.set_ylabel("estimated energy per frame (uJ)")
        ax2 = ax.twinx()
        ax2.plot(Ts, [p["snn_psnr_db"] for p in pts], "^-", color="C3", label="SNN PSNR")
        ax2.set_ylabel("PSNR (dB)")
        ax.legend(loc="upper left", fontsize=7)
        ax2.legend(loc="lower right", fontsize=7)
        ax.set_title("energy and PSNR vs T (same integers)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(res: dict, plot_name: str | None) -> str:
    """A Markdown report: the terminal table, the plot, and where the numbers come from."""
    out = [f"# edgespike profile: {res['model']}", "", "```", table(res), "```", ""]
    if plot_name:
        out += [f"![profile]({plot_name})", ""]
    out += ["Energy estimates: the counts of Lemaire et al. (ICONIP 2022) as SPIDEN uses them, priced with the "
            "widths each executor stores (and SPIDEN's 16-bit preset) under each memory model; a figure marked "
            "OUT lies outside its memory model's range and is extrapolated (docs/PROFILE.md). "
            "Latencies: median and p95 over the timed runs after warm-up, same thread count for every runtime. "
            + ("Measured energy: none (no sensor on this machine): estimated only."
               if res["measured"] == "estimated only"
               else "Measured energy: gross (the whole device) and net (above idle) per frame, median of the "
               "trials with min and max."), ""]
    return "\n".join(out)
