"""What each SNN framework's NIR exporter really writes, and how to read it (``edgespike import --from``).

NIR defines its neurons as ODEs in seconds (LIF ``tau dv/dt = v_leak - v + r I``), but the exporters of the
frameworks that write it do not all follow that reading, and none of them says in the file who wrote it or at
which ``dt`` (checked on snnTorch 1.0.0, Norse 1.1.0, Sinabs 3.1.3, SpikingJelly 2.0.0, Rockpool 3.1.0):

- **snnTorch** follows the spec at its fixed ``dt = 1e-4`` (LIF ``tau = dt / (1 - beta)``, ``r = tau / dt``), but
  cannot say its reset: the default ``Leaky`` subtracts the threshold *one step late* (``reset_delay=True``:
  ``v_t = beta v_(t-1) + I_t - thr s_(t-1)``), ``reset_mechanism="zero"`` resets to zero (with or without the
  delay, the same spikes), and both are written as ``v_reset = 0``.
- **Norse** writes ``tau = dt / tau_mem_inv`` (``dt`` times the true time constant, not it) and ``r = 1``; its
  ``IAFCell`` adds its input once per step whatever ``dt`` (``v <- v + I``), while NIR's IF integrates ``dt r I``.
  Its default ``dt`` is 1e-3.
- **Sinabs** writes ``tau`` in *steps* and ``r = 1``: ``IAF`` is ``v <- v + I``, ``LIF`` is
  ``v <- a v + (1 - a) I`` with ``a = exp(-1 / tau)`` (``norm_input=True``), fires on ``v >= thr`` and by
  default subtracts the threshold (``MembraneSubtract``; its default ``MultiSpike`` may emit several spikes per
  step, which no NIR reader or edgespike neuron can).
- **SpikingJelly** follows the spec at ``dt = 1e-4`` (IF ``r = 1 / dt``, LIF ``tau = tau_steps * dt``), fires on
  ``v >= thr`` and refuses to export a soft reset.
- **Rockpool** writes ``tau`` in seconds at its ``dt = 1e-3`` with an exact exponential decay
  ``a = exp(-dt / tau)``; its networks are dense (``LinearTorch``), which edgespike refuses (no convolution).

A :class:`Producer` states these conventions; :func:`lower <edgespike.interchange.nir_import.lower>` applies
them. ``"nir"`` is the spec's own reading.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Producer:
    """How one framework's exporter writes time, gains, compare and reset.

    ``time``: ``"spec"`` (tau in seconds, NIR's Euler reading at ``dt``), ``"norse"`` (tau written as ``dt``
    times the time constant; IF adds ``r * I`` per step) or ``"steps"`` (tau in steps; IF adds ``r * I`` per
    step; ``dt`` plays no part). ``leak``: ``"euler"`` (``a = 1 - dt / tau``) or ``"exp"``
    (``a = exp(-dt / tau)``). ``norm_input``: the input gain of a LIF is ``1 - a`` (Sinabs) instead of
    ``dt r / tau``. ``compare``: ``"gt"`` (NIR's ``v > thr``) or ``"ge"``. ``reset``: the framework's default
    reset, ``"hard"``, ``"soft"`` or ``"soft-delayed"`` (snnTorch's subtraction one step late).
    """

    name: str
    dt: float | None
    time: str = "spec"
    leak: str = "euler"
    norm_input: bool = False
    compare: str = "gt"
    reset: str = "hard"
    reset_note: str = ""

    def describe(self, dt: float) -> str:
        t = "tau in steps" if self.time == "steps" else f"dt = {dt:g} s"
        return (f"conventions of {self.name}: {t}, fire on v {'>=' if self.compare == 'ge' else '>'} thr, "
                f"{self.leak} leak, default reset {self.reset}")

    def coefficients(self, kind: str, tau: float | None, r: np.ndarray, dt: float) -> tuple[float, np.ndarray, float]:
        """``(a, g, tau_steps)``: the per-step decay, the per-channel input gain and tau in steps, so that the
        framework's neuron is ``v <- a v + g I``. ``kind`` is ``"IF"``, ``"I"`` or a leaky kind."""
        if kind in ("IF", "I"):
            g = r if self.time in ("norse", "steps") and kind == "IF" else dt * r
            return 1.0, g, math.inf
        if self.time == "norse":
            tau = tau / dt  # Norse wrote dt / tau_mem_inv = dt * tau
        steps = tau if self.time == "steps" else tau / dt
        a = math.exp(-1.0 / steps) if self.leak == "exp" or self.time == "steps" else 1.0 - 1.0 / steps
        g = (1.0 - a) * r if self.norm_input else r / steps
        return a, g, steps


NIR = Producer("nir", None, reset_note="NIR's reading: reset to v_reset")
PRODUCERS: dict[str, Producer] = {
    "nir": NIR,
    "snntorch": Producer("snntorch", 1e-4, reset="soft-delayed",
                         reset_note="snnTorch's default Leaky (reset_mechanism='subtract', reset_delay=True); pass "
                                    "--reset hard for reset_mechanism='zero', --reset soft for 'subtract' with "
                                    "reset_delay=False"),
    "norse": Producer("norse", 1e-3, time="norse", reset_note="Norse resets to v_reset"),
    "sinabs": Producer("sinabs", None, time="steps", leak="exp", norm_input=True, compare="ge", reset="soft",
                       reset_note="Sinabs's default MembraneSubtract (one spike per step: MultiSpike's extra "
                                  "spikes are lost); pass --reset hard for MembraneReset"),
    "spikingjelly": Producer("spikingjelly", 1e-4, compare="ge",
                             reset_note="SpikingJelly exports only hard resets"),
    "rockpool": Producer("rockpool", 1e-3, leak="exp", reset="soft",
                         reset_note="Rockpool's LIF subtracts the threshold"),
}

_METADATA_KEYS = ("producer", "framework", "source", "generator", "exporter", "software", "library", "created_by")


def detect(graph) -> str | None:
    """The framework a graph says wrote it (graph metadata such as ``producer`` or ``framework``), else None.

    None of the five exporters above writes such a field today; a file that says so is believed, nothing is
    guessed from parameter values (that is :func:`guess`, used only for hints).
    """
    meta = getattr(graph, "metadata", None) or {}
    for key in _METADATA_KEYS:
        v = meta.get(key)
        if isinstance(v, bytes):
            v = v.decode(errors="replace")
        if isinstance(v, np.ndarray) and v.dtype.kind in "SUO" and v.size == 1:
            v = v.reshape(-1)[0]
            v = v.decode(errors="replace") if isinstance(v, bytes) else str(v)
        if isinstance(v, str):
            low = v.lower().replace("-", "").replace(" ", "")
            for name in PRODUCERS:
                if name != "nir" and name in low:
                    return name
    return None


def guess(graph, dt: float) -> list[str]:
    """Frameworks whose exporter fingerprints the graph shows (for the hint of a dead import, never applied).

    ``r = 1`` on IF nodes or ``tau < dt`` on LIF nodes cannot be NIR's reading of a network that fires at ``dt``.
    """
    import nir

    hints = []
    taus, ifr = [], []
    for node in graph.nodes.values():
        if isinstance(node, (nir.LIF, nir.LI)):
            taus.append(float(np.asarray(node.tau, np.float64).reshape(-1)[0]))
        elif isinstance(node, nir.CubaLIF):
            taus.append(float(np.asarray(node.tau_mem, np.float64).reshape(-1)[0]))
        elif isinstance(node, nir.IF):
            ifr.append(float(np.asarray(node.r, np.float64).reshape(-1)[0]))
    if taus and max(taus) < dt:
        hints.append("norse")
    if taus and min(taus) >= 1.0:
        hints.append("sinabs")
    if ifr and all(r == 1.0 for r in ifr) and not (taus and max(taus) < dt) and "sinabs" not in hints:
        hints += ["norse", "sinabs"]
    return hints


def writable(graph, frame_shape: tuple[int, int]):
    """Make a Norse or Sinabs graph writable by ``nir.write`` (in place; returns it).

    Their exporters leave ``Conv2d.input_shape = None`` and 0-d parameter arrays, which ``nir.write`` cannot
    store. ``frame_shape`` (H, W) is the input frame; each conv's input shape is derived along the edges.
    """
    import nir

    preds: dict[str, list[str]] = {}
    for a, b in graph.edges:
        preds.setdefault(b, []).append(a)
    size: dict[str, tuple[int, int]] = {}

    def hw(key: str) -> tuple[int, int]:
        if key in size:
            return size[key]
        node = graph.nodes[key]
        if isinstance(node, nir.Input) or not preds.get(key):
            out = tuple(frame_shape)
        else:
            h, w = hw(preds[key][0])
            if isinstance(node, nir.Conv2d):
                node.input_shape = np.array([h, w])
                k = np.asarray(node.weight).shape[-2:]
                s, p, d = (np.broadcast_to(np.asarray(x).reshape(-1), (2,)) for x in
                           (node.stride, node.padding, node.dilation))
                out = tuple(int((n + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1) for i, n in enumerate((h, w)))
            elif isinstance(node, (nir.SumPool2d, nir.AvgPool2d)):
                s = np.broadcast_to(np.asarray(node.stride).reshape(-1), (2,))
                out = (h // int(s[0]), w // int(s[1]))
            else:
                out = (h, w)
        size[key] = out
        return out

    for key, node in graph.nodes.items():
        hw(key)
        for field_name, value in list(vars(node).items()):
            if hasattr(value, "detach"):
                value = value.detach().cpu().numpy()
                setattr(node, field_name, value)
            if isinstance(value, np.ndarray) and value.ndim == 0:
                setattr(node, field_name, value.reshape(1))
    return graph
