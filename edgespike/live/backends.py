"""Where the spiking network runs: ``cpu`` (the runtime) and the FPGA hooks, plus the energy-estimate hook.

A backend has ``denoise(frame) -> (uint8 frame, stats)`` for one grey uint8 plane, a ``label`` and ``close()``.
``stats`` is the runtime's Stats object (fields ``spikes``, ``spike_rate``, ``synaptic_ops``, ``macs``,
``seconds``); :func:`stats_dict` reads it defensively so the FPGA backends may report a subset.
"""

from __future__ import annotations

import importlib

import numpy as np

from edgespike.errors import UserError

BACKENDS = ("cpu", "fpga", "fpga-sim")
VIDEO_HOLD = 1.0
"""How far (0..255 noise scale) a frame's noise estimate may stray past a model set's bound before ``run`` changes
networks: above the frame-to-frame spread of a still scene's estimate (docs/MODELS.md, "The blind set")."""



class CPUBackend:
    """The fast bit-exact runtime (:mod:`edgespike.runtime`) on this machine's CPU."""

    name = "cpu"

    def __init__(self, model_path: str | None) -> None:
        from edgespike.fileformat import load_any
        from edgespike.models import resolve
        from edgespike.modelset import ModelSet, SetRuntime
        from edgespike.runtime import Runtime

        model = load_any(resolve(model_path))
        # a model set (the blind model) keeps its member while a scene's noise estimate hovers at a bound
        self.runtime = SetRuntime(model, hold=VIDEO_HOLD) if isinstance(model, ModelSet) else Runtime(model)
        self.label = f"cpu (edgespike runtime, {self.runtime.backend} kernels)"
        self.model = self.runtime.model

    def denoise(self, frame: np.ndarray):
        return self.runtime.denoise(frame)

    def close(self) -> None:
        close = getattr(self.runtime, "close", None)
        if close:
            close()


def open_backend(name: str, model_path: str | None = None, port: str | None = None, simulator: str = "auto"):
    """Open the backend ``name``; the FPGA ones are hooks that the FPGA issue fills in.

    Contract for the FPGA side: ``edgespike.fpga.host.open_backend(model_path, port=...)`` (``fpga``, a board on a
    serial port) and ``edgespike.fpga.sim.open_backend(model_path)`` (``fpga-sim``, the Amaranth simulation) return
    an object with ``label``, ``denoise(frame) -> (frame, stats)`` and ``close()``.
    """
    if simulator != "auto" and name != "fpga-sim":
        raise UserError("--simulator is for --backend fpga-sim")
    if name == "cpu":
        if port:
            raise UserError("--port is for --backend fpga (a serial device); the cpu backend takes none")
        return CPUBackend(model_path)
    if name == "fpga":
        if not port:
            raise UserError("--backend fpga needs --port DEVICE (the board's serial port, e.g. /dev/ttyUSB0)")
        module = "edgespike.fpga.host"
        what = "the FPGA board link of issue 7"
    elif name == "fpga-sim":
        if port:
            raise UserError("--port is for --backend fpga; fpga-sim runs in this process")
        module = "edgespike.fpga.sim"
        what = "the simulated accelerator of issue 6"
    else:
        raise UserError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    try:
        mod = importlib.import_module(module)
        opener = mod.open_backend
    except ImportError as exc:
        if exc.name and not module.startswith(exc.name):  # the module exists but one of ITS imports is missing
            raise UserError(f"--backend {name}: {exc.name} is not installed: pip install 'edgespike[hw]'") from None
        raise UserError(f"--backend {name} is not available in this build: {what} ({module}.open_backend) "
                        "has not been written yet; use --backend cpu") from None
    except AttributeError:
        raise UserError(f"--backend {name} is not available in this build: {module} has no open_backend(); "
                        "use --backend cpu") from None
    if name == "fpga":
        return opener(model_path, port=port)
    return opener(model_path, simulator=simulator) if simulator != "auto" else opener(model_path)


def energy_estimator():
    """``edgespike.profile.energy.estimate`` when the profiler is in this build, else None."""
    try:
        mod = importlib.import_module("edgespike.profile.energy")
    except ImportError:
        return None
    return getattr(mod, "estimate", None)


def energy_joules(value) -> tuple[float | None, float | None]:
    """(SNN joules, ANN-twin joules) from the estimator's answer: ``{"snn_pJ", "ann_pJ", ...}`` or a number."""
    if value is None:
        return None, None
    if isinstance(value, (int, float)):
        return float(value), None
    get = value.get if isinstance(value, dict) else lambda k: getattr(value, k, None)
    snn, ann = get("snn_pJ"), get("ann_pJ")
    return (float(snn) * 1e-12 if isinstance(snn, (int, float)) else None,
            float(ann) * 1e-12 if isinstance(ann, (int, float)) else None)


# Stats field names, with the aliases a backend may use instead; the first name found wins.
STAT_FIELDS = {"spike_rate": ("spike_rate",), "synaptic_ops": ("synaptic_ops", "synops"), "macs": ("macs",),
               "seconds": ("seconds", "total_seconds"), "sigma_estimate": ("sigma_estimate",)}


def stats_dict(stats) -> dict:
    """The numeric fields of a Stats object (absent ones omitted), plus total spikes."""
    out = {}
    for key, names in STAT_FIELDS.items():
        for name in names:
            v = stats.get(name) if isinstance(stats, dict) else getattr(stats, name, None)
            if isinstance(v, (int, float, np.integer, np.floating)):
                out[key] = v.item() if isinstance(v, np.generic) else v
                break
    member = stats.get("member") if isinstance(stats, dict) else getattr(stats, "member", None)
    if isinstance(member, str):  # a model set: the network that ran
        out["member"] = member
    spikes = stats.get("spikes") if isinstance(stats, dict) else getattr(stats, "spikes", None)
    if isinstance(spikes, dict):
        out["spikes"] = int(sum(int(np.sum(v)) for v in spikes.values()))
    return out
