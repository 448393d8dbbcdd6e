"""NIR graph -> float network -> integer edgespike model, with a calibration report.

Three stages, each refusing what it cannot carry with one line that names the NIR node type and its path:

1. :func:`read_graph` reads a ``.nir`` file with ``nir.read`` (any failure becomes one line).
2. :func:`lower` maps the nodes a feed-forward conv SNN uses onto :mod:`edgespike.interchange.floatnet`,
   discretising NIR's continuous-time neurons with forward Euler at ``dt`` (NIR's own reading:
   ``v <- v + dt/tau * (v_leak - v + r*I)``) and choosing the nearest shift leak ``2**-k`` for ``1 - dt/tau``.
3. :func:`quantise` chooses per-output-channel integer scales from the weights and the calibration frames,
   aligns each scale so that the firing threshold is an exact integer, builds the :class:`Model`, and measures
   the error of the integer model against the float network (per layer and PSNR of the output).

If the graph was written by edgespike (:mod:`edgespike.interchange.nir_export`), :func:`restore` rebuilds the
exact integer model from the metadata instead (the round trip is the identity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgespike.interchange import InterchangeError, nir_module
from edgespike.interchange.floatnet import FAdd, FConv, FIntegrator, FloatNet, FNeuron, simulate
from edgespike.interchange.producers import NIR, PRODUCERS, Producer, guess
from edgespike.model import (
    INPUT,
    Add,
    Conv,
    Decoder,
    Encoder,
    Integrator,
    Model,
    ModelError,
    Neuron,
    ReadoutTerm,
)
from edgespike.validate import MAX_DILATION

DEFAULT_DT = 1e-4
"""snnTorch's exporter and importer hard-code dt = 1e-4 s; Norse users pass dt explicitly (see --dt)."""

MULT_MAX = 2**31 - 1
RESETS = ("hard", "soft", "soft-delayed")


def _refuse(key: str, node, why: str) -> InterchangeError:
    kind = type(node).__name__ if node is not None else "graph"
    return InterchangeError(f"NIR node {key!r} ({kind}): {why}")


# --------------------------------------------------------------------------- reading
def read_graph(path) -> object:
    """Read a NIR file. Every failure (missing, not HDF5, not NIR, malformed node) is one line."""
    nir = nir_module()
    path = Path(path)
    if not path.exists():
        raise InterchangeError(f"{path}: no such NIR file")
    if path.is_dir():
        raise InterchangeError(f"{path}: is a folder, not a NIR file")
    try:
        import h5py

        if not h5py.is_hdf5(path):
            raise InterchangeError(f"{path}: not a NIR file (NIR files are HDF5; this one has no HDF5 signature)")
        with h5py.File(path, "r") as f:
            if "node" not in f:
                raise InterchangeError(f"{path}: HDF5 but not NIR (no 'node' group)")
    except InterchangeError:
        raise
    except Exception as exc:  # h5py raises OSError subclasses with long messages
        raise InterchangeError(f"{path}: cannot be read as HDF5 ({type(exc).__name__})") from None
    try:
        # Type checking is ours (with node names in the message); NIR's own checker rejects graphs that are
        # valid for an image network of any size.
        graph = nir.read(path, type_check=False)
    except Exception as exc:
        where = _failing_node(path)
        msg = str(exc).splitlines()[0] if str(exc) else ""
        raise InterchangeError(f"{path}: malformed NIR graph{where} ({type(exc).__name__}{': ' + msg if msg else ''})"
                               ) from None
    if not isinstance(graph, nir.NIRGraph):
        raise InterchangeError(f"{path}: the top-level NIR node is a {type(graph).__name__}, not a NIRGraph")
    return graph


def _failing_node(path) -> str:
    """``" at node 'k' (Type)"`` for the first node NIR cannot build, to name it in the error ("" if unknown)."""
    try:
        import h5py
        from nir.serialization import hdf2dict

        nir = nir_module()
        with h5py.File(path, "r") as f:
            nodes = hdf2dict(f["node"]).get("nodes", {})
        for key, entry in nodes.items():
            try:
                nir.dict2NIRNode(dict(entry))
            except Exception:  # the node nir.read choked on
                kind = entry.get("type") if isinstance(entry, dict) else None
                return f" at node {key!r}" + (f" ({kind})" if isinstance(kind, str) else "")
    except Exception:  # diagnosing is best effort: the caller still reports the original error
        return ""
    return ""


# --------------------------------------------------------------------------- lowering
def _array(key, node, field_name) -> np.ndarray:
    try:
        a = np.asarray(getattr(node, field_name), dtype=np.float64)
    except (TypeError, ValueError):
        raise _refuse(key, node, f"{field_name} is not numeric") from None
    if not np.all(np.isfinite(a)):
        raise _refuse(key, node, f"{field_name} has non-finite values")
    return a


def per_channel(key, node, field_name: str, channels: int, value=None) -> np.ndarray:
    """A NIR per-neuron parameter as one value per channel (it must not vary across the image)."""
    a = _array(key, node, field_name) if value is None else np.asarray(value, np.float64)
    if a.ndim == 0 or a.size == 1:
        return np.full(channels, float(a.reshape(-1)[0]))
    if a.shape == (channels,):
        return a.copy()
    if a.ndim == 3 and a.shape[0] in (1, channels):
        flat = a.reshape(a.shape[0], -1)
        if not np.allclose(flat, flat[:, :1], rtol=1e-6, atol=0):
            raise _refuse(key, node, f"{field_name} varies across the image; edgespike parameters are per channel")
        return np.broadcast_to(flat[:, 0], (channels,)).copy()
    if a.ndim == 1 and a.shape[0] == channels:
        return a.copy()
    raise _refuse(key, node, f"{field_name} has shape {list(a.shape)}, expected one value, [C] or [C, H, W] "
                             f"with C = {channels}")


def _uniform(key, node, field_name: str, values: np.ndarray) -> float:
    if not np.allclose(values, values[0], rtol=1e-6, atol=0):
        raise _refuse(key, node, f"{field_name} differs between channels; edgespike has one leak per layer")
    return float(values[0])


def leak_for(key, node, tau: float, dt: float) -> tuple[float, int]:
    """Euler factor ``a = 1 - dt/tau`` and the edgespike shift leak ``k`` whose ``2**-k`` is nearest ``dt/tau``."""
    if not tau > 0:
        raise _refuse(key, node, f"tau = {tau} must be positive")
    ratio = tau / dt
    if ratio < 1:
        raise _refuse(key, node, f"tau = {tau:g} is shorter than dt = {dt:g}: forward Euler is unstable "
                                 "(pass the framework's dt with --dt)")
    a = 1.0 - 1.0 / ratio
    return a, shift_for(1.0 / ratio)


def shift_for(decay: float) -> int:
    """The edgespike shift leak ``k`` whose ``2**-k`` is nearest the per-step decay ``1 - a`` (0: no leak)."""
    if decay < 2.0**-30:  # a leak smaller than 2^-30 per step never moves an integer membrane of this size
        return 0
    # The shift leak multiplies by 1 - 2^-k where the neuron multiplies by a: pick the nearest 2^-k to 1 - a.
    return min(range(1, 31), key=lambda k: abs(decay - 2.0**-k))


@dataclass
class _Lowering:
    graph: object
    dt: float
    producer: Producer = NIR
    nodes: list = field(default_factory=list)
    out_of: dict = field(default_factory=dict)  # NIR key -> float-net node name whose value it is
    channels: dict = field(default_factory=dict)  # float-net name -> channels
    pending_scale: dict = field(default_factory=dict)  # NIR key -> per-channel factor to fold into consumers
    kind: dict = field(default_factory=dict)  # float-net name -> "input" | "spikes" | "current" | "readout"
    names: set = field(default_factory=set)

    def fresh(self, base: str) -> str:
        name = base if base != INPUT else f"{base}_"
        while name in self.names or name == INPUT:
            name += "_"
        self.names.add(name)
        return name


def _topological(graph) -> tuple[list[str], dict[str, list[str]], dict[str, list[str]]]:
    preds: dict[str, list[str]] = {k: [] for k in graph.nodes}
    succs: dict[str, list[str]] = {k: [] for k in graph.nodes}
    for edge in graph.edges:
        try:
            a, b = (str(x) for x in edge)
        except (TypeError, ValueError):
            raise InterchangeError(f"malformed NIR edge {edge!r}") from None
        for end in (a, b):
            if end not in graph.nodes:
                raise InterchangeError(f"NIR edge ({a!r}, {b!r}) names a node {end!r} the graph does not have")
        preds[b].append(a)
        succs[a].append(b)
    indeg = {k: len(v) for k, v in preds.items()}
    ready = [k for k in graph.nodes if indeg[k] == 0]
    order = []
    while ready:
        k = ready.pop(0)
        order.append(k)
        for s in succs[k]:
            indeg[s] -= 1
            if indeg[s] == 0:
                ready.append(s)
    if len(order) != len(graph.nodes):
        stuck = next(k for k in graph.nodes if k not in order)
        raise _refuse(stuck, graph.nodes[stuck], "is on a cycle (recurrent connection); edgespike runs "
                                                  "feed-forward networks")
    return order, preds, succs


def lower(graph, dt: float | None = None, timesteps: int = 8, input_scale: float = 1 / 255,
          output_scale: float | None = None, residual: bool = False, reset: str | None = None,
          producer: str | Producer = "nir") -> FloatNet:
    """Map a NIR graph onto a :class:`FloatNet`, refusing (one line, node path and type) what edgespike lacks.

    ``producer`` names the framework whose exporter wrote the graph (:mod:`edgespike.interchange.producers`):
    its time, gain, compare and reset conventions are applied. ``dt`` defaults to that framework's (1e-4 for
    NIR's own reading, snnTorch's). ``reset`` overrides the framework's default reset: NIR 1.0 can only say
    "reset to v_reset", so frameworks whose neurons subtract (snnTorch's default ``reset_mechanism="subtract"``)
    still write ``v_reset = 0``; ``"soft"`` reads every spiking layer as resetting by subtraction,
    ``"soft-delayed"`` as snnTorch's subtraction one step late.
    """
    nir = nir_module()
    prod = PRODUCERS[producer] if isinstance(producer, str) else producer
    if dt is None:
        dt = prod.dt or DEFAULT_DT
    if not dt > 0:
        raise InterchangeError(f"dt must be positive, got {dt}")
    reset = reset or prod.reset
    if reset not in RESETS:
        raise InterchangeError(f"reset must be one of {', '.join(RESETS)}, got {reset!r}")
    order, preds, succs = _topological(graph)
    low = _Lowering(graph, dt, prod)
    inputs = [k for k in order if isinstance(graph.nodes[k], nir.Input)]
    outputs = [k for k in order if isinstance(graph.nodes[k], nir.Output)]
    if len(inputs) != 1:
        raise InterchangeError(f"the NIR graph has {len(inputs)} Input nodes; edgespike takes exactly one frame")
    if len(outputs) != 1:
        raise InterchangeError(f"the NIR graph has {len(outputs)} Output nodes; edgespike produces exactly one "
                               "frame")
    readout_key = None
    for key in order:
        node = graph.nodes[key]
        src = preds[key]
        if isinstance(node, nir.Input):
            shape = np.asarray((node.input_type or {}).get("input") if isinstance(node.input_type, dict) else None)
            if shape.ndim == 1 and shape.size == 4 and int(shape[0]) == 1:
                shape = shape[1:]  # Norse and Sinabs (nirtorch) keep the batch dimension of their sample input
            if shape.ndim == 1 and shape.size == 3 and int(shape[0]) != 1:
                raise _refuse(key, node, f"input has {int(shape[0])} channels; edgespike models take one "
                                         "grayscale plane")
            if shape.ndim == 1 and shape.size not in (2, 3):
                raise _refuse(key, node, f"input shape {shape.tolist()} is not an image ([1, H, W])")
            low.out_of[key] = INPUT
            low.channels[INPUT] = 1
            low.kind[INPUT] = "input"
            continue
        if not src:
            raise _refuse(key, node, "has no incoming edge (unconnected node)")
        if isinstance(node, nir.Output):
            if len(src) != 1:
                raise _refuse(key, node, "has several incoming edges; the read-out must be one neuron layer")
            readout_key = src[0]
            continue
        for s in src:
            if low.kind.get(low.out_of.get(s)) == "readout":
                raise _refuse(s, graph.nodes[s], f"feeds {key!r}; an integrator (I, LI) can only be the "
                                                  "read-out feeding the Output")
        if isinstance(node, nir.NIRGraph):
            raise _refuse(key, node, "nested subgraphs (snnTorch writes recurrent layers this way) are not "
                                     "supported; edgespike runs feed-forward networks")
        if isinstance(node, nir.Scale):
            _lower_scale(low, key, node, src, succs)
            continue
        # NIR sums all edges arriving at a node.
        if len(src) > 1:
            if any(s in low.pending_scale for s in src):
                raise _refuse(key, node, "sums an input that passes through a Scale node; fold the Scale into "
                                         "the producing layer")
            ins = [low.out_of[s] for s in src]
            kinds = {low.kind[i] for i in ins}
            chans = {low.channels[i] for i in ins}
            if len(chans) != 1:
                raise _refuse(key, node, f"sums inputs with different channel counts {sorted(chans)}")
            name = low.fresh(f"{key}.sum")
            low.nodes.append(FAdd(name, tuple(ins)))
            low.channels[name] = chans.pop()
            low.kind[name] = kinds.pop() if len(kinds) == 1 else "mixed"
            inp = name
        else:
            inp = low.out_of[src[0]]
        scale_in = low.pending_scale.get(src[0]) if len(src) == 1 else None
        C = low.channels[inp]
        if scale_in is not None and not isinstance(node, (nir.Conv2d, nir.Affine, nir.Linear)):
            raise _refuse(key, node, "follows a Scale node that cannot be folded into a convolution")
        _lower_node(low, key, node, inp, C, scale_in)
    if readout_key is None:
        raise InterchangeError("the NIR Output node is not connected")
    readout = low.out_of[readout_key]
    rnode = next((n for n in low.nodes if n.name == readout), None)
    if not isinstance(rnode, (FNeuron, FIntegrator)):
        what = type(graph.nodes[readout_key]).__name__
        raise _refuse(readout_key, graph.nodes[readout_key],
                      f"feeds the Output, but edgespike reads a frame out of a spiking neuron layer (IF, LIF: "
                      f"spike count) or an integrator (I, LI: membrane), not a {what}")
    if low.channels[readout] != 1:
        raise _refuse(readout_key, graph.nodes[readout_key],
                      f"the read-out has {low.channels[readout]} channels; the output frame is grayscale (1)")
    net = FloatNet(nodes=low.nodes, readout=readout, input_scale=input_scale, residual=residual,
                   timesteps=timesteps, dt=dt, hints=[p for p in guess(graph, dt) if p != prod.name])
    for n in net.nodes:
        if isinstance(n, FNeuron) and n.spiking:
            n.reset = reset
            n.compare = prod.compare
    if prod.name != "nir":
        net.notes.append(prod.describe(dt) + (f" ({prod.reset_note})" if reset == prod.reset and prod.reset_note
                                              else f"; reset {reset} as asked"))
    depth = {INPUT: 0}
    for n in net.nodes:
        depth[n.name] = max(depth[i] for i in n.inputs) + (isinstance(n, FConv) and n.stride == 2)
    if depth[readout]:
        raise _refuse(readout_key, graph.nodes[readout_key],
                      f"the read-out is at 1/{2 ** depth[readout]} of the input resolution; a denoiser's output "
                      "must be full size (NIR has no up-sampling node)")
    net.output_scale = output_scale if output_scale is not None else 1.0 / (input_scale * timesteps)
    return net


def _lower_scale(low: _Lowering, key, node, src, succs):
    if len(src) != 1:
        raise _refuse(key, node, "sums several inputs; only a single-input Scale can be folded")
    s = src[0]
    prod = low.out_of[s]
    C = low.channels[prod]
    factor = per_channel(key, node, "scale", C)
    conv = next((n for n in low.nodes if n.name == prod), None)
    if isinstance(conv, FConv) and len(succs[s]) == 1:
        # The scaled conv feeds nothing else: fold into its output channels.
        conv.weight = conv.weight * factor[:, None, None, None]
        conv.bias = conv.bias * factor
        low.out_of[key] = prod
        return
    if not succs[key]:
        raise _refuse(key, node, "is not followed by anything")
    low.pending_scale[key] = factor * low.pending_scale.get(s, 1.0)
    low.out_of[key] = prod


def _lower_node(low: _Lowering, key, node, inp: str, C: int, scale_in):
    nir = nir_module()
    dt = low.dt
    if isinstance(node, nir.Conv2d):
        w = _array(key, node, "weight")
        if w.ndim != 4:
            raise _refuse(key, node, f"weight has shape {list(w.shape)}, expected [C_out, C_in, k, k]")
        cout, cin_g, kh, kw = w.shape
        groups = int(np.asarray(node.groups).reshape(-1)[0])
        if groups < 1 or cin_g * groups != C or cout % groups:
            raise _refuse(key, node, f"weight expects {cin_g * groups} input channels in {groups} group(s) but its "
                                     f"input has {C}")
        if groups > 1:  # grouped/depthwise: exact as a dense kernel with zero blocks
            dense = np.zeros((cout, C, kh, kw))
            per = cout // groups
            for g in range(groups):
                dense[g * per:(g + 1) * per, g * cin_g:(g + 1) * cin_g] = w[g * per:(g + 1) * per]
            w = dense
        if kh != kw or kh % 2 == 0:
            raise _refuse(key, node, f"kernel {kh}x{kw}: edgespike convs have odd square kernels")
        stride = np.asarray(node.stride).reshape(-1)
        if len(set(stride.tolist())) != 1 or int(stride[0]) not in (1, 2):
            raise _refuse(key, node, f"stride {stride.tolist()} is not supported (1 or 2, equal in both axes)")
        dil = np.broadcast_to(np.asarray(node.dilation).reshape(-1), (2,))
        d = int(dil[0])
        if dil[0] != dil[1] or not 1 <= d <= MAX_DILATION or (d > 1 and int(stride[0]) != 1):
            raise _refuse(key, node, f"dilation {dil.tolist()} with stride {stride.tolist()} is not supported "
                                     f"(equal in both axes, 1..{MAX_DILATION}, stride 1 when dilated)")
        pad = node.padding
        if isinstance(pad, bytes):
            pad = pad.decode()
        if isinstance(pad, str):
            ok = pad == "same" and int(stride[0]) == 1 or pad == "valid" and kh == 1
        else:
            p = np.asarray(pad).reshape(-1)
            ok = bool(np.all(p == d * (kh // 2)))
        if not ok:
            shown = pad if isinstance(pad, str) else np.asarray(pad).reshape(-1).tolist()
            raise _refuse(key, node, f"padding {shown} with a {kh}x{kw} kernel and dilation {d}: edgespike convs "
                                     f"use zero padding dilation * (k // 2) = {d * (kh // 2)} ('same')")
        bias = _array(key, node, "bias") if getattr(node, "bias", None) is not None else np.zeros(cout)
        bias = per_channel(key, node, "bias", cout, bias)
        if scale_in is not None:
            w = w * scale_in[None, :, None, None]
        name = low.fresh(key)
        low.nodes.append(FConv(name, inp, w, bias, int(stride[0]), path=key, dilation=d))
        low.channels[name], low.kind[name], low.out_of[key] = cout, "current", name
    elif isinstance(node, (nir.Affine, nir.Linear)):
        w = _array(key, node, "weight")
        if w.ndim != 2 or w.shape[1] != C:
            raise _refuse(key, node, f"weight {list(w.shape)} is not a 1x1 convolution over the {C} channels of "
                                     "its input; a fully connected layer needs a Flatten, which conv nets cannot use")
        cout = w.shape[0]
        bias = _array(key, node, "bias") if isinstance(node, nir.Affine) else np.zeros(cout)
        bias = per_channel(key, node, "bias", cout, bias)
        w = w[:, :, None, None]
        if scale_in is not None:
            w = w * scale_in[None, :, None, None]
        name = low.fresh(key)
        low.nodes.append(FConv(name, inp, w, bias, 1, path=key, origin=type(node).__name__))
        low.channels[name], low.kind[name], low.out_of[key] = cout, "current", name
    elif isinstance(node, (nir.SumPool2d, nir.AvgPool2d)):
        k = np.asarray(node.kernel_size).reshape(-1)
        s = np.asarray(node.stride).reshape(-1)
        p = np.asarray(node.padding).reshape(-1)
        if not (np.all(k == 2) and np.all(s == 2) and np.all(p == 0)):
            raise _refuse(key, node, f"kernel {k.tolist()}, stride {s.tolist()}, padding {p.tolist()}: only 2x2 "
                                     "pooling with stride 2 and no padding maps exactly onto a stride-2 conv")
        # out[y] pools rows 2y and 2y+1 = taps 1 and 2 of a 3x3 stride-2 conv with padding 1.
        w = np.zeros((C, C, 3, 3))
        v = 1.0 if isinstance(node, nir.SumPool2d) else 0.25
        for c in range(C):
            w[c, c, 1:, 1:] = v
        name = low.fresh(key)
        low.nodes.append(FConv(name, inp, w, np.zeros(C), 2, path=key, origin=type(node).__name__))
        low.channels[name], low.kind[name], low.out_of[key] = C, "current", name
    elif isinstance(node, (nir.IF, nir.LIF, nir.CubaLIF, nir.LI, nir.I)):
        _lower_neuron(low, key, node, inp, C, dt)
    elif isinstance(node, nir.Flatten):
        raise _refuse(key, node, "edgespike runs convolutional image-to-image networks on frames of any size; "
                                 "a flattened (fully connected) network cannot be mapped")
    elif isinstance(node, nir.Delay):
        raise _refuse(key, node, "synaptic delays are not part of the edgespike semantics")
    elif isinstance(node, nir.Threshold):
        raise _refuse(key, node, "a stateless threshold has no edgespike equivalent (neurons keep a membrane)")
    elif isinstance(node, nir.Conv1d):
        raise _refuse(key, node, "1-D convolutions are not supported; edgespike takes 2-D frames")
    elif isinstance(node, nir.CubaLI):
        raise _refuse(key, node, "a current-based leaky integrator filters its input current; edgespike "
                                 "read-outs are I or LI")
    else:
        raise _refuse(key, node, "node type not supported by edgespike")


def _lower_neuron(low: _Lowering, key, node, inp: str, C: int, dt: float):
    nir = nir_module()
    if low.kind.get(inp) == "mixed":
        raise _refuse(key, node, "sums currents and spikes; edgespike sums values of one kind")
    if hasattr(node, "v_reset"):
        v_reset = per_channel(key, node, "v_reset", C)
        if np.any(v_reset != 0):
            raise _refuse(key, node, f"v_reset = {v_reset[np.nonzero(v_reset)[0][0]]:g}: edgespike resets to 0")
    if hasattr(node, "v_leak"):
        v_leak = per_channel(key, node, "v_leak", C)
        if np.any(v_leak != 0):
            raise _refuse(key, node, f"v_leak = {v_leak[np.nonzero(v_leak)[0][0]]:g}: edgespike leaks towards 0")
    r = per_channel(key, node, "r", C)
    name = low.fresh(key)
    spiking = not isinstance(node, (nir.LI, nir.I))
    prod = low.producer
    if isinstance(node, nir.I):
        _, gain, _ = prod.coefficients("I", None, r, dt)
        low.nodes.append(FIntegrator(name, inp, _uniform(key, node, "gain dt*r", gain), path=key))
        low.channels[name], low.kind[name], low.out_of[key] = C, "readout", name
        return
    if isinstance(node, nir.IF):
        a, gain, _ = prod.coefficients("IF", None, r, dt)
        k, tau_steps = 0, None
    else:
        tau_field = "tau_mem" if isinstance(node, nir.CubaLIF) else "tau"
        tau = _uniform(key, node, tau_field, per_channel(key, node, tau_field, C))
        if not tau > 0:
            raise _refuse(key, node, f"{tau_field} = {tau} must be positive")
        a, gain, tau_steps = prod.coefficients(type(node).__name__, tau, r, dt)
        if tau_steps < 1:
            hint = [p for p in guess(low.graph, dt) if p != prod.name]
            raise _refuse(key, node, f"tau = {tau:g} is shorter than dt = {dt:g}: forward Euler is unstable ("
                                     + (f"the file looks written by {' or '.join(hint)}: try --from {hint[0]}"
                                        if hint else "pass the framework's dt with --dt, or its name with --from")
                                     + ")")
        k = shift_for(1.0 - a)
        if isinstance(node, nir.CubaLIF):
            tau_syn = _uniform(key, node, "tau_syn", per_channel(key, node, "tau_syn", C))
            _, _, syn_steps = prod.coefficients("CubaLIF", tau_syn, np.ones(1), dt)
            if not math.isclose(syn_steps, 1.0, rel_tol=1e-6):
                alpha = 1 - 1 / syn_steps
                raise _refuse(key, node, f"synaptic current filter tau_syn = {tau_syn:g} (alpha = {alpha:.4g}) "
                                         "is not representable; only tau_syn = dt (alpha = 0, a plain LIF) is")
            gain = gain * per_channel(key, node, "w_in", C)
    if np.any(gain <= 0):
        raise _refuse(key, node, "input gain (r, dt/tau) must be positive")
    if not spiking:
        low.nodes.append(FNeuron(name, inp, np.full(C, np.inf), a, k, _uniform(key, node, "gain", gain),
                                 spiking=False, path=key, origin="LI", tau_steps=tau_steps))
        low.channels[name], low.kind[name], low.out_of[key] = C, "readout", name
        return
    thr = per_channel(key, node, "v_threshold", C)
    if np.any(thr < 0):
        raise _refuse(key, node, "negative thresholds are not supported (edgespike thresholds are positive)")
    low.nodes.append(FNeuron(name, inp, thr / gain, a, k, 1.0, path=key, origin=type(node).__name__,
                             tau_steps=tau_steps))
    low.channels[name], low.kind[name], low.out_of[key] = C, "spikes", name


# --------------------------------------------------------------------------- quantisation
CLIP_RATIOS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)


@dataclass
class LayerReport:
    name: str
    kind: str
    detail: str
    error: str


@dataclass
class ImportReport:
    """What the import measured: per-layer errors and the output PSNR on each calibration frame."""

    layers: list[LayerReport]
    psnr: list[float]
    max_abs: list[float]
    notes: list[str]
    frames: int
    size: tuple[int, int]
    warnings: list[str] = field(default_factory=list)

    @property
    def psnr_min(self) -> float:
        return min(self.psnr) if self.psnr else math.inf

    def text(self) -> str:
        width = max([46] + [len(r.detail) + 2 for r in self.layers])
        lines = [f"{'layer':<16}{'kind':<12}{'quantisation':<{width}}error (calibration)"]
        for r in self.layers:
            lines.append(f"{r.name:<16}{r.kind:<12}{r.detail:<{width}}{r.error}")
        lines.append("")
        mean = sum(self.psnr) / len(self.psnr) if self.psnr else math.inf
        lines.append(f"output vs the float NIR model on {self.frames} calibration frame(s) of "
                     f"{self.size[1]}x{self.size[0]}: PSNR min {self.psnr_min:.2f} dB, mean {mean:.2f} dB, "
                     f"max |error| {max(self.max_abs, default=0):.1f} levels"
                     + (" (meaningless: see the warnings)" if self.warnings else ""))
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _int_conv(x: np.ndarray, w: np.ndarray, stride: int, dilation: int = 1) -> np.ndarray:
    from edgespike.twin import conv2d

    return conv2d(x, w.astype(np.float64), stride, dilation)


def multiplier_shift(x: float) -> tuple[int, int]:
    """``(m, s)`` with ``m / 2**s`` closest to ``x``, ``|m| < 2**31``, ``s <= 30``."""
    if x == 0 or not math.isfinite(x):
        raise InterchangeError(f"read-out scale {x} cannot be an integer decoder multiplier")
    for s in range(30, -1, -1):
        m = int(round(x * 2**s))
        if abs(m) <= MULT_MAX:
            if m == 0:
                break
            return m, s
    raise InterchangeError(f"read-out scale {x:g} is outside what a 32-bit decoder multiplier can express")


def quantise(net: FloatNet, frames: list[np.ndarray], weight_bits: int = 8, membrane_bits: int = 32,
             source: str = "") -> tuple[Model, ImportReport]:
    """Integer model of ``net`` (per-channel scales chosen on ``frames``) and the error report."""
    from edgespike import reference
    from edgespike.validate import analyse

    if not 2 <= weight_bits <= 8:
        raise InterchangeError(f"--weight-bits must be in 2..8, got {weight_bits}")
    wmax = 2 ** (weight_bits - 1) - 1
    runs = [simulate(net, f, record=True) for f in frames]
    sample = runs[: min(4, len(runs))]
    steps = sorted(set(np.linspace(0, net.timesteps - 1, min(4, net.timesteps)).round().astype(int).tolist()))
    consumers: dict[str, list] = {}
    for n in net.nodes:
        for i in n.inputs:
            consumers.setdefault(i, []).append(n)

    # Convs summed by one Add share the scale of their output (their integers are added).
    group_of: dict[str, list[FConv]] = {}
    for n in net.nodes:
        if isinstance(n, FAdd):
            members = [net.node(i) for i in n.inputs]
            if any(isinstance(m, FConv) for m in members):
                if not all(isinstance(m, FConv) for m in members):
                    raise InterchangeError(f"node {n.name!r}: sums a current and a non-current value; edgespike "
                                           "cannot scale them to one unit")
                merged = []
                for m in members:
                    for x in group_of.get(m.name, [m]):
                        if x not in merged:
                            merged.append(x)
                for x in merged:
                    group_of[x.name] = merged

    def sink_threshold(conv: FConv) -> np.ndarray | None:
        todo = list(consumers.get(conv.name, []))
        while todo:
            c = todo.pop(0)
            if isinstance(c, FNeuron) and c.spiking:
                # Only a subtractive reset needs thr to be a whole number of units (it subtracts theta); a hard
                # reset's strict compare v*q > thr is exactly v >= floor(thr/q) + 1 for any q.
                return c.thr if c.reset.startswith("soft") else None
            if isinstance(c, FAdd):
                todo += consumers.get(c.name, [])
        return None

    unit: dict[str, np.ndarray] = {INPUT: np.array([net.input_scale])}
    q_of: dict[str, np.ndarray] = {}
    ints: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    layers: list[LayerReport] = []
    notes = list(net.notes)
    nodes: list = []

    for n in net.nodes:
        if isinstance(n, FConv):
            if n.name not in q_of:
                members = group_of.get(n.name, [n])
                for m in members:
                    if m.input not in unit:
                        raise InterchangeError(f"node {m.name!r}: its input is computed after a conv it is summed "
                                               "with; edgespike cannot give them one scale")
                eff = {m.name: m.weight * unit[m.input][None, :, None, None] for m in members}
                cout = n.weight.shape[0]
                qmax = np.zeros(cout)
                for m in members:
                    qmax = np.maximum(qmax, np.abs(eff[m.name]).reshape(cout, -1).max(axis=1) / wmax)
                thr = sink_threshold(n)
                best = None
                for ratio in CLIP_RATIOS:
                    q = np.where(qmax > 0, qmax * ratio, 1.0)
                    if thr is not None:
                        # Make thr an exact integer number N of units: q = thr / N with N = floor(thr / q) keeps
                        # q >= the max-abs scale (no weight overflows) and is at most (N+1)/N coarser. A threshold
                        # below one unit (N = 0) cannot be aligned: theta = 1 then.
                        mult = np.floor(thr / q + 1e-9)
                        q = np.where(mult >= 1, thr / np.maximum(mult, 1), q)
                    wint = {m.name: np.clip(np.rint(eff[m.name] / q[:, None, None, None]), -wmax, wmax)
                            for m in members}
                    err = _current_error(members, wint, q, sample, steps, unit)
                    if best is None or err < best[0] - 1e-12:
                        best = (err, ratio, q, wint)
                err, ratio, q, wint = best
                for m in members:
                    q_of[m.name] = q
                    b = np.rint(m.bias / q)
                    ints[m.name] = (wint[m.name], np.clip(b, -(2**31), 2**31 - 1))
                    werr = _rel(eff[m.name], wint[m.name] * q[:, None, None, None])
                    layers.append(LayerReport(
                        m.name, m.origin,
                        f"int{weight_bits} per-channel, clip {ratio:.1f}, q {q.min():.3g}..{q.max():.3g}",
                        f"weights {werr:.2%} rms, current {err ** 0.5:.2%} rms"))
            w, b = ints[n.name]
            unit[n.name] = q_of[n.name]
            nodes.append(Conv(n.name, n.input, w.astype(np.int8), b.astype(np.int32), n.stride,
                              scale=q_of[n.name].astype(np.float32), dilation=n.dilation))
        elif isinstance(n, FAdd):
            units = [unit[i] for i in n.inputs]
            if not all(u.shape == units[0].shape and np.allclose(u, units[0]) for u in units):
                raise InterchangeError(f"node {n.name!r}: sums values of different scales")
            unit[n.name] = units[0]
            nodes.append(Add(n.name, tuple(n.inputs)))
        elif isinstance(n, FIntegrator):
            unit[n.name] = unit[n.input]
            nodes.append(Integrator(n.name, n.input))
        else:  # FNeuron
            q = unit[n.input]
            C = len(n.thr)
            q = np.broadcast_to(q, (C,))
            if n.spiking:
                x = n.thr / q
                near = np.rint(x)
                exact = np.abs(x - near) < 1e-6 * np.maximum(1, near)
                if n.reset.startswith("soft") or n.compare == "ge":
                    # Subtract exactly thr (an integer number of units thanks to the aligned scale); the compare
                    # then differs from NIR's strict one only when v lands exactly on it. v >= thr (Sinabs,
                    # SpikingJelly) on integer membranes is exactly v >= ceil(thr/q).
                    theta = np.where(exact, near, np.floor(x) + 1)
                else:
                    # strict v > thr on integer membranes is v >= floor(thr/q) + 1
                    theta = np.where(exact, near, np.floor(x)) + 1
                theta = np.maximum(theta, 1)
                if np.any(theta >= 2 ** (membrane_bits - 1)):
                    raise InterchangeError(f"node {n.name!r}: threshold {n.thr.max():g} is {x.max():.3g} current "
                                           "units: too large for the membrane; check --dt and the graph's r")
                unit[n.name] = np.ones(C)
                tau = "IF" if n.a == 1 else (f"tau {n.tau_steps:.3g} dt -> leak 2^-{n.leak_shift} "
                                             f"(a {n.a:.4f} vs {1 - 2.0 ** -n.leak_shift:.4f})"
                                             if n.leak_shift else f"tau {n.tau_steps:.3g} dt -> no leak")
                # snnTorch's delayed subtraction becomes edgespike's soft reset (exact for IF; the measured
                # error of the report covers LIF).
                reset = "soft" if n.reset.startswith("soft") else "hard"
                nodes.append(Neuron(n.name, n.input, theta.astype(np.int32), reset=reset,
                                    leak_shift=n.leak_shift, scale=np.asarray(q, np.float32).copy()))
                th = f"theta {int(theta.min())}" + (f"..{int(theta.max())}" if theta.max() != theta.min() else "")
                layers.append(LayerReport(n.name, n.origin, f"{th}, {tau}", ""))
            else:
                theta = np.full(C, 2 ** (membrane_bits - 1) - 1)
                unit[n.name] = q
                nodes.append(Neuron(n.name, n.input, theta.astype(np.int32), reset="hard", leak_shift=n.leak_shift,
                                    scale=np.asarray(q, np.float32).copy()))
                layers.append(LayerReport(n.name, "LI", f"read-out, tau {n.tau_steps:.3g} dt -> leak "
                                                        f"2^-{n.leak_shift} (a {n.a:.4f})", ""))

    r = net.node(net.readout)
    if isinstance(r, FNeuron) and r.spiking:
        quantity, per_unit = "count", net.output_scale
    else:
        quantity, per_unit = "membrane", net.output_scale * r.gain * float(unit[r.input][0])
    _, s = multiplier_shift(per_unit)
    model = None
    for shift_drop in range(0, s + 1):
        mm, ss = (int(round(per_unit * 2 ** (s - shift_drop))), s - shift_drop)
        if mm == 0:
            break
        model = Model(nodes=nodes, timesteps=net.timesteps, encoder=Encoder("direct"),
                      decoder=Decoder([ReadoutTerm(net.readout, quantity, np.array([mm], np.int32))], shift=ss,
                                      residual=net.residual),
                      membrane_bits=membrane_bits,
                      metadata={"source": "nir", "nir_file": source, "dt": net.dt,
                                "input_scale": net.input_scale, "output_scale": net.output_scale})
        try:
            analysis = analyse(model)
            break
        except ModelError as exc:
            if str(exc).startswith("decoder"):  # the read-out sum is too wide: a smaller shift
                continue
            raise InterchangeError(f"the quantised model does not fit: {exc}") from None
    else:  # pragma: no cover - only reached if every shift fails
        raise InterchangeError("the read-out does not fit a 64-bit decoder sum")
    if model is None:
        raise InterchangeError("the read-out scale is too small for the decoder")
    for n in net.nodes:
        if isinstance(n, FNeuron) and not n.spiking:
            cur = analysis.nodes[n.input].value
            if max(cur.hi) * net.timesteps >= 2 ** (membrane_bits - 1) - 1:
                raise InterchangeError(f"node {n.name!r}: the LI read-out membrane could reach the never-fire "
                                       "threshold; use fewer timesteps or smaller weights")

    # Run both models on every calibration frame: output PSNR, and spike-rate error per neuron layer.
    psnrs, maxabs = [], []
    dcount: dict[str, list[float]] = {}
    rates: dict[str, list[tuple[float, float]]] = {}
    for f, fr in zip(frames, runs, strict=True):
        out, trace = reference.run(model, f, trace=True)
        psnrs.append(_psnr(out, fr.output))
        maxabs.append(float(np.abs(out.astype(np.float64) - fr.output).max()))
        for name, cnt in trace.counts.items():
            if name in fr.counts:
                fc = fr.counts[name]
                dcount.setdefault(name, []).append(float(np.mean(np.abs(cnt - fc))) / net.timesteps)
                rates.setdefault(name, []).append((float(fc.mean()) / net.timesteps,
                                                   float(cnt.mean()) / net.timesteps))
    for lr in layers:
        if lr.name in dcount:
            fr_, ir_ = np.mean(rates[lr.name], axis=0)
            lr.error = (f"rate {fr_:.3f} float / {ir_:.3f} int, |d count|/T {np.mean(dcount[lr.name]):.4f}")
    size = frames[0].shape if frames else (0, 0)
    warnings = diagnose(net, runs, dcount, rates, psnrs, {lr.name: lr for lr in layers})
    return model, ImportReport(layers, psnrs, maxabs, notes, len(frames), size, warnings)


PSNR_WARN_DB = 20.0
"""Below this PSNR of the integer output against the float model, the import is flagged: at 8 bits the
quantisation of a network read the right way costs far less (measured 25..64 dB on 16x16 frames where a single
spike-count step is 16 levels; docs/INTERCHANGE.md)."""


def diagnose(net: FloatNet, runs, dcount, rates, psnrs, layers) -> list[str]:
    """Warnings about an import that measured well but cannot be right: dead or saturated layers, a constant
    output, an integer output far from the float one. Each names the layer and what to try."""
    out = []
    n_frames = len(runs)
    if net.hints:
        conv = f"the file looks written by {' or '.join(net.hints)}: try --from {net.hints[0]}"
    else:
        conv = "try --from with the framework that wrote the file"
    conv += ", or check --dt and --input-scale"
    for n in net.nodes:
        if not (isinstance(n, FNeuron) and n.spiking) or n.name not in rates:
            continue
        f_rate, i_rate = np.mean(rates[n.name], axis=0)
        where = f"layer {n.name!r} (NIR node {n.path!r}, {n.origin})"
        if i_rate == 0:
            both = "; so does the float model" if f_rate == 0 else f" (the float model fires at rate {f_rate:.3g})"
            out.append(f"{where} never fires on the {n_frames} calibration frame(s){both}: every later layer and "
                       f"the output are then meaningless; {conv}")
        elif i_rate > 0.99 and f_rate > 0.99:
            out.append(f"{where} fires at every step on the calibration frames (saturated): it carries no "
                       f"information; {conv}")
    ys = [r.y for r in runs]
    if ys and all(np.all(y == ys[0].reshape(-1)[0]) for y in ys):
        out.append(f"the read-out {net.readout!r} is constant ({float(ys[0].reshape(-1)[0]):g}) on every calibration "
                   "frame: the output frame does not depend on the input, so its PSNR against the float model says "
                   f"nothing; {conv}")
    finite = [p for p in psnrs if math.isfinite(p)]
    if finite and min(finite) < PSNR_WARN_DB:
        worst = max(dcount, key=lambda k: np.mean(dcount[k]), default=None)
        which = (f"; the largest spike-count difference is in layer {worst!r} (|d count|/T "
                 f"{np.mean(dcount[worst]):.3f})" if worst else "")
        out.append(f"the integer output differs from the float model by more than quantisation should cost "
                   f"(PSNR min {min(finite):.1f} dB < {PSNR_WARN_DB:g} dB){which}: try --weight-bits 8, a "
                   "calibration set like the real input (--calibrate), or check --reset")
    return out


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    den = float(np.sqrt(np.mean(a**2)))
    return float(np.sqrt(np.mean((a - b) ** 2))) / den if den else 0.0


def _current_error(members, wint, q, runs, steps, unit) -> float:
    """Relative mean-square error of the group's summed current, integer vs float, on recorded float inputs."""
    num = den = 0.0
    for run in runs:
        for t in steps:
            f = 0.0
            z = 0.0
            for m in members:
                x = run.values[m.input][t]
                f = f + run.values[m.name][t] - m.bias[:, None, None]
                z = z + _int_conv(x / unit[m.input][:, None, None], wint[m.name], m.stride, m.dilation)
            bias = sum(m.bias for m in members)[:, None, None]
            bint = sum(np.rint(m.bias / q) for m in members)[:, None, None]
            f = f + bias
            z = (z + bint) * q[:, None, None]
            num += float(np.sum((f - z) ** 2))
            den += float(np.sum(f**2))
    return num / den if den else 0.0
