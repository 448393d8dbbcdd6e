"""Where the spiking network runs: ``cpu`` (the runtime) and the FPGA hooks, plus the energy-estimate hook.

A backend has ``denoise(frame) -> (uint8 frame, stats)`` for one grey uint8 plane, a ``label`` and ``close()``.
``stats`` is the runtime's Stats object (fields ``spikes``, ``spike_rate``, ``synaptic_ops``, ``macs``,
``seconds``); :func:`stats_dict` reads it defensively so the FPGA backends may report a subset.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgespike.errors import UserError

BACKENDS = ("cpu", "fpga", "fpga-sim")


@dataclass
class ReferenceStats:
    """The runtime's Stats fields, computed from a reference trace (see :class:`ReferenceRuntime`)."""

    spikes: dict[str, list[int]] = field(default_factory=dict)
    spike_rate: float = 0.0
    synaptic_ops: int = 0
    macs: int = 0
    seconds: float = 0.0


class ReferenceRuntime:
    """Stand-in for ``edgespike.load()`` while the fast runtime is not in this build: slow but exact.

    Counts: ``spike_rate`` = spikes / (neurons x steps); ``synaptic_ops`` = for every conv fed by a spiking layer,
    input spikes x ``C_out * ceil(k/s)^2`` (the accumulates an event-driven engine does); ``macs`` = the dense
    multiply-accumulates of convs fed by non-spike values (the encoded frame, sums), per executed step.
    """

    label = "cpu (reference semantics; the fast runtime is not in this build)"

    def __init__(self, path: Path | None) -> None:
        from edgespike.fileformat import load

        if path is None:
            from edgespike.models import default_path

            path = default_path()
        self.model = load(path)
        self.path = Path(path)

    def denoise(self, frame: np.ndarray):
        from edgespike import reference
        from edgespike.model import Conv, ConvTranspose, Neuron

        t0 = time.perf_counter()
        out, trace = reference.run(self.model, frame, trace=True)
        seconds = time.perf_counter() - t0
        neurons = sum(c.size * len(trace.spikes[n]) for n, c in trace.counts.items())
        total = sum(sum(s) for s in trace.spikes.values())
        spiking = {n.name for n in self.model.nodes if isinstance(n, Neuron)}
        pad = (-np.array(frame.shape)) % self.model.size_multiple
        h, w = frame.shape[0] + pad[0], frame.shape[1] + pad[1]
        steps = self.model.timesteps + (1 if self.model.has_extra_step else 0)
        # Spatial size of every node, to count dense MACs (walk the graph like size_multiple does).
        scale = {"input": 1.0}
        chans = {"input": 1}
        synops = macs = 0
        for node in self.model.nodes:
            s = max(scale[i] for i in node.inputs)
            if isinstance(node, (Conv, ConvTranspose)):
                k, cout, cin = node.kernel, node.out_channels, chans[node.input]
                s = s * 2 if (isinstance(node, Conv) and node.stride == 2) else s / 2 if isinstance(
                    node, ConvTranspose) else s
                fan = cout * (-(-k // node.stride)) ** 2
                if node.input in spiking:
                    synops += sum(trace.spikes[node.input]) * fan
                else:
                    macs += int(cout * cin * k * k * (h / s) * (w / s)) * steps
                chans[node.name] = cout
            elif hasattr(node, "input"):
                chans[node.name] = chans[node.input]
            else:  # Add keeps channels, Concat sums them
                ins = [chans[i] for i in node.inputs]
                chans[node.name] = sum(ins) if type(node).__name__ == "Concat" else ins[0]
            scale[node.name] = s
        stats = ReferenceStats(spikes=trace.spikes, spike_rate=total / neurons if neurons else 0.0,
                               synaptic_ops=int(synops), macs=int(macs), seconds=seconds)
        return out, stats

    def close(self) -> None:
        pass


class CPUBackend:
    """The runtime on this machine's CPU.

    Uses ``edgespike.load`` when the package exports it, else :class:`edgespike.runtime.Runtime`, else (a build
    without the fast runtime) :class:`ReferenceRuntime`; the label says which, and the summary prints it.
    """

    name = "cpu"

    def __init__(self, model_path: str | None) -> None:
        from edgespike.models import default_path

        path = Path(model_path) if model_path else default_path()  # one message for a missing shipped model
        if not path.exists():
            raise UserError(f"model file {path} not found")
        import edgespike

        load = getattr(edgespike, "load", None)
        if load is not None:
            self.runtime = load(path)
            kernels = getattr(self.runtime, "backend", None)
            self.label = "cpu (edgespike runtime" + (f", {kernels} kernels)" if isinstance(kernels, str) else ")")
        else:
            try:
                Runtime = importlib.import_module("edgespike.runtime").Runtime
            except (ImportError, AttributeError):
                Runtime = None
            if Runtime is None:
                self.runtime = ReferenceRuntime(path)
                self.label = ReferenceRuntime.label
            else:
                from edgespike.fileformat import load as load_model

                self.runtime = Runtime(load_model(path))
                self.label = f"cpu (edgespike runtime, {getattr(self.runtime, 'backend', 'numpy')} kernels)"
        self.model = getattr(self.runtime, "model", None)

    def denoise(self, frame: np.ndarray):
        return self.runtime.denoise(frame)

    def close(self) -> None:
        close = getattr(self.runtime, "close", None)
        if close:
            close()


def open_backend(name: str, model_path: str | None = None, port: str | None = None):
    """Open the backend ``name``; the FPGA ones are hooks that the FPGA issue fills in.

    Contract for the FPGA side: ``edgespike.fpga.host.open_backend(model_path, port=...)`` (``fpga``, a board on a
    serial port) and ``edgespike.fpga.sim.open_backend(model_path)`` (``fpga-sim``, the Amaranth simulation) return
    an object with ``label``, ``denoise(frame) -> (frame, stats)`` and ``close()``.
    """
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
    return opener(model_path, port=port) if name == "fpga" else opener(model_path)


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


# The runtime's Stats and the reference adapter name two fields differently; the first name found wins.
STAT_FIELDS = {"spike_rate": ("spike_rate",), "synaptic_ops": ("synaptic_ops", "synops"), "macs": ("macs",),
               "seconds": ("seconds", "total_seconds")}


def stats_dict(stats) -> dict:
    """The numeric fields of a Stats object (absent ones omitted), plus total spikes."""
    out = {}
    for key, names in STAT_FIELDS.items():
        for name in names:
            v = stats.get(name) if isinstance(stats, dict) else getattr(stats, name, None)
            if isinstance(v, (int, float, np.integer, np.floating)):
                out[key] = v.item() if isinstance(v, np.generic) else v
                break
    spikes = stats.get("spikes") if isinstance(stats, dict) else getattr(stats, "spikes", None)
    if isinstance(spikes, dict):
        out["spikes"] = int(sum(int(np.sum(v)) for v in spikes.values()))
    return out
