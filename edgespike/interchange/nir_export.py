"""edgespike model -> NIR graph, and the exact way back (:func:`restore`).

Real values. NIR is a float, continuous-time format, so every integer tensor is written as the real value it
stands for: a Conv weight ``w[o, c]`` becomes ``w * scale[o] / unit_in[c]`` (``scale`` is the node's float
``scale`` metadata, 1 when absent; ``unit_in`` is the real value of one integer unit of its input: the NIR input
is ``input_scale * pixel``, a spike is 1, a current is its conv's scale), biases ``b * scale``, thresholds
``(theta - 1/2) * unit_in`` (integer membranes: ``v >= theta`` is NIR's strict ``v > theta - 1/2``).
Neurons get ``r`` so that NIR's forward Euler at ``dt`` has unit input gain: IF ``r = 1/dt``; LIF
``tau = dt * 2**k`` and ``r = 2**k`` (``1 - dt/tau = 1 - 2**-k``, the shift leak). Another framework then
simulates the same network in float, up to the floor in the shift leak and the reset (below).

What NIR 1.0 cannot say is kept in node metadata (``metadata["edgespike"]``, a JSON string, plus the integer
unit arrays): soft reset (NIR neurons reset to ``v_reset``), ``v_init = "half"``, MPRN, ``weight_extra``, the
decoder, the encoder and the node order. :func:`restore` reads the integers back as ``rint(real / unit)`` and
checks that each lands within 1e-3 of an integer, so edgespike -> NIR -> edgespike is the identity while an
edited graph is noticed (and can be re-quantised instead). Transposed convolutions and channel concatenation
have no NIR node: such models are refused by name.
"""

from __future__ import annotations

import json

import numpy as np

from edgespike.interchange import InterchangeError, nir_module
from edgespike.model import (
    INPUT,
    Add,
    BitPlaneNeuron,
    Concat,
    Conv,
    ConvTranspose,
    Decoder,
    Encoder,
    Integrator,
    Model,
    ModelError,
    Neuron,
    ReadoutTerm,
)

FORMAT = "edgespike-nir"
VERSION = 1
DEFAULT_DT = 1e-4  # snnTorch's fixed dt: its importer then reads tau and r as intended

TARGETS = ("nir", "snntorch", "norse", "sinabs", "spikingjelly")
"""``nir``: NIR's own reading plus edgespike metadata (exact round trip). The others write what that framework's
NIR importer reads (snnTorch 1.0.0, Norse 1.1.0, Sinabs 3.1.3, SpikingJelly 2.0.0; docs/INTERCHANGE.md)."""
TARGET_DT = {"nir": 1e-4, "snntorch": 1e-4, "norse": 1e-3, "sinabs": 1.0, "spikingjelly": 1e-4}
"""The dt each importer assumes (snnTorch hard-codes 1e-4; Norse's and SpikingJelly's ``from_nir`` default to
1e-3 and 1e-4; Sinabs reads tau in steps)."""
NIR_VERSIONS = ("1.0.4", "current")
"""``1.0.4`` (pinned by Sinabs 3.1.3 and Rockpool 3.1.0) cannot read node ``metadata`` nor IF/LIF ``v_reset``."""
IF_TAU = 2.0**40
"""snnTorch imports NIR IF as a Leaky with beta 0.9: IF layers are written for it as LIF with tau = 2^40 dt
(beta = 1 - 2^-40, 1.0 in float32)."""


def _refuse(node, why: str) -> InterchangeError:
    return InterchangeError(f"node {node.name!r} ({type(node).__name__}): {why}")


def check_expressible(model: Model) -> None:
    """Refuse, naming the node, what no NIR node expresses even approximately (``--lossy`` does not help)."""
    nir = nir_module()
    for node in model.nodes:
        if isinstance(node, BitPlaneNeuron):
            raise _refuse(node, "a bit-plane layer (UWD decode of the whole input, then UWE encode) has no NIR node "
                                "and nothing in NIR approximates it, so even --lossy cannot export it; export an "
                                "IF model (e.g. if-s25)")
        if isinstance(node, Integrator) and (node.uwd or node.bias is not None):
            raise _refuse(node, "a bit-plane (uwd) read-out, v = 2 v + I, has no NIR node (NIR's I integrates "
                                "v + I); even --lossy cannot export it")
        if isinstance(node, ConvTranspose) and not hasattr(nir, "ConvTranspose2d"):
            raise _refuse(node, f"NIR {_nir_version()} has no transposed convolution (no up-sampling node); this "
                                "model cannot be written as NIR")
        if isinstance(node, Concat):
            raise _refuse(node, "NIR has no channel concatenation node; this model cannot be written as NIR")
        if "/" in node.name:
            raise _refuse(node, "NIR (HDF5) node names cannot contain '/'")


def _nir_version() -> str:
    try:
        from importlib.metadata import version

        return version("nir")
    except Exception:  # the name is only for the message
        return "1.0"


def _consumers(model: Model) -> dict[str, list]:
    out: dict[str, list] = {}
    for n in model.nodes:
        for i in n.inputs:
            out.setdefault(i, []).append(n)
    return out


def _foldable(model: Model, neuron: Neuron) -> bool:
    """A neuron's per-channel threshold can be folded into the conv feeding it (that conv feeds nothing else)."""
    try:
        src = model.node(neuron.input)
    except ModelError:
        return False
    return isinstance(src, Conv) and len(_consumers(model).get(src.name, [])) == 1


def losses(model: Model, target: str = "nir", nir_version: str = "current") -> list[str]:
    """What NIR (as ``target`` reads it) cannot carry for this model, one ``what: where (consequence)`` each.

    Empty when the export is faithful up to float rounding and the shift leak's floor. What NIR carries exactly
    is not listed: edgespike's ``v >= theta`` on integer membranes is NIR's ``v > theta - 1/2``.
    """
    check_expressible(model)
    out: list[str] = []
    neurons = [n for n in model.nodes if isinstance(n, Neuron)]
    soft = [n.name for n in neurons if n.reset == "soft"]
    if soft and target == "sinabs":
        out.append(f"one spike per step of {', '.join(soft)}: Sinabs's importer builds MultiSpike neurons, which "
                   "emit floor(v / theta) spikes at once where v >= 2 theta (its MembraneSubtract is edgespike's "
                   "soft reset)")
    elif soft:
        out.append(f"soft reset (subtract theta) of {', '.join(soft)}: NIR neurons reset to v_reset, so readers "
                   "simulate a reset to zero")
    half = [n.name for n in neurons if n.v_init == "half"]
    if half:
        out.append(f"initial membrane theta/2 (v_init 'half') of {', '.join(half)}: NIR neurons start at 0")
    mprn = [n.name for n in neurons if n.mprn]
    if mprn:
        out.append(f"the MPRN extra step of {', '.join(mprn)} (and weight_extra): NIR has no extra step")
    if model.encoder.kind != "direct":
        out.append(f"the {model.encoder.kind!r} encoder: the NIR input is the encoded value per step, not the pixel")
    if target != "nir":
        integ = [n.name for n in model.nodes if isinstance(n, Integrator)]
        if integ:
            out.append(f"the Integrator read-out {', '.join(integ)}: {target}'s NIR importer has no I node; the "
                       "graph's output is the current feeding it, to be summed over the T steps")
        out.append(f"the decoder (output = {'x - ' if model.decoder.residual else ''}scaled "
                   f"{'/'.join(t.quantity for t in model.decoder.terms)} of "
                   f"{', '.join(t.node for t in model.decoder.terms)}): {target} gets the raw NIR output")
    if target == "sinabs":
        lif = [n for n in neurons if n.leak_shift]
        if lif:
            to_nir(model, frame_size=(model.size_multiple,) * 2, target=target)  # raises its one-line reason
        hard = [n.name for n in neurons if n.reset == "hard"]
        if hard:
            out.append(f"hard reset of {', '.join(hard)}: Sinabs's NIR importer builds MembraneSubtract neurons "
                       "with MultiSpike")
        ifs = [n.name for n in neurons if not n.leak_shift]
        if ifs:
            out.append(f"the unbounded membrane of {', '.join(ifs)}: Sinabs's NIR importer clamps IF membranes at "
                       "-v_threshold")
    if target in ("snntorch", "spikingjelly", "sinabs"):
        varied = [n.name for n in neurons if len(set(n.threshold.tolist())) > 1 and not _foldable(model, n)]
        if varied:
            out.append(f"per-channel thresholds of {', '.join(varied)} (fed by a sum, so not folded into one conv): "
                       f"{target} requires one threshold per layer")
    if nir_version == "1.0.4" and target == "nir":
        out.append("the edgespike metadata (exact round trip): NIR 1.0.4 cannot read node metadata")
    return out


def to_nir(model: Model, dt: float | None = None, frame_size: tuple[int, int] = (64, 64), target: str = "nir"):
    """The NIR graph of ``model`` as ``target`` reads it, and a list of warnings.

    ``frame_size`` (H, W) fixes the shapes NIR's type checker wants; the network itself is fully convolutional.
    ``target="nir"`` writes NIR's own reading (real values, unit-gain Euler at ``dt``) and the edgespike metadata
    that makes the round trip exact. A framework target writes what its importer reads, in the same real units:
    thresholds folded into the feeding conv so that they are uniform (snnTorch, SpikingJelly), ``r = 1`` with the
    gain moved into the threshold (Norse, whose importer ignores ``r``), ``tau`` in steps (Sinabs), IF as a LIF
    with ``beta = 1`` (snnTorch), no Integrator (none of them reads ``I``). What is lost is :func:`losses`.
    """
    from edgespike.validate import analyse

    nir = nir_module()
    if target not in TARGETS:
        raise InterchangeError(f"unknown target {target!r}; one of {', '.join(TARGETS)}")
    check_expressible(model)
    analysis = analyse(model)
    if dt is None:
        dt = TARGET_DT[target]
    if not dt > 0:
        raise InterchangeError(f"dt must be positive, got {dt}")
    with_meta = target == "nir"
    offset = 0.5
    fold: dict[str, np.ndarray] = {}  # conv name -> per-channel divisor (the real threshold it is folded into)
    if target in ("snntorch", "spikingjelly", "sinabs"):
        for n in model.nodes:
            if isinstance(n, Neuron) and _foldable(model, n) and len(set(n.threshold.tolist())) > 1:
                fold[n.input] = np.ones(len(n.threshold))  # filled below, once the input unit is known
    H, W = frame_size
    M = model.size_multiple
    if H % M or W % M or H < 1 or W < 1:
        raise InterchangeError(f"--frame-size {W}x{H} must be a positive multiple of {M} for this model")
    input_scale = 1 / 255 if model.encoder.kind == "direct" else 1.0
    warnings: list[str] = []
    unit: dict[str, np.ndarray] = {INPUT: np.array([input_scale])}
    nodes: dict = {INPUT: nir.Input(input_type={"input": np.array([1, H, W])})}
    edges: list[tuple[str, str]] = []

    def shape(name: str) -> tuple[int, int, int]:
        info = analysis.nodes[name]
        return (info.channels, H >> info.level, W >> info.level)

    def meta(node, **arrays) -> dict:
        if not with_meta:
            return {}
        d = {k: v for k, v in vars(node).items() if not isinstance(v, np.ndarray) and v is not None}
        d["type"] = type(node).__name__
        if "inputs" in d:
            d["inputs"] = list(d["inputs"])
        if isinstance(node, Neuron) and node.mprn:
            d["mprn"] = list(node.mprn)
        out = {"edgespike": json.dumps(d, sort_keys=True)}
        for k, v in arrays.items():
            if v is not None:
                out[k] = np.asarray(v)
        return out

    # Folding a per-channel threshold into the conv that feeds it divides that conv's output channel by the real
    # threshold: exact, since v_leak = v_reset = 0 makes the neuron homogeneous in its input.
    for n in model.nodes:
        if isinstance(n, Neuron) and n.input in fold:
            src = model.node(n.input)
            s_src = src.scale.astype(np.float64) if src.scale is not None else np.ones(len(n.threshold))
            fold[n.input] = (n.threshold.astype(np.float64) - offset) * np.broadcast_to(s_src, (len(n.threshold),))
    skip = {n.name for n in model.nodes if isinstance(n, Integrator)} if target != "nir" else set()
    for node in model.nodes:
        if node.name in skip:
            continue
        C, h, w = shape(node.name)
        if isinstance(node, Conv):
            u_in = np.broadcast_to(unit[node.input], (node.weight.shape[1],)).astype(np.float64)
            s_out = (node.scale.astype(np.float64) if node.scale is not None else np.ones(C))
            if node.name in fold:
                s_out = s_out / fold[node.name]
            wr = node.weight.astype(np.float64) * s_out[:, None, None, None] / u_in[None, :, None, None]
            k = node.kernel
            hi, wi = shape(node.input)[1:]
            nodes[node.name] = nir.Conv2d(
                input_shape=(hi, wi), weight=wr.astype(np.float32), stride=(node.stride, node.stride),
                padding=(node.dilation * (k // 2),) * 2, dilation=(node.dilation,) * 2, groups=1,
                bias=node.bias.astype(np.float64) * s_out,  # float64: int32 biases stay exact
                metadata=meta(node, es_out_scale=s_out, es_in_unit=u_in, es_scale=node.scale,
                              es_weight_extra=node.weight_extra))
            edges.append((node.input, node.name))
            unit[node.name] = s_out
        elif isinstance(node, Neuron):
            u_in = np.broadcast_to(unit[node.input], (C,)).astype(np.float64)
            # v >= theta on integers is NIR's strict v > theta - 1/2, and also v >= theta - 1/2 (Sinabs,
            # SpikingJelly), with half a unit of margin against float rounding at ties (measured: theta itself
            # loses it in SpikingJelly)
            thr = (node.threshold.astype(np.float64) - offset) * u_in
            full = (C, h, w)
            thr_full = np.broadcast_to(thr[:, None, None], full).astype(np.float64)  # exact for int32 theta
            md = meta(node, es_in_unit=u_in, es_scale=node.scale)
            k = node.leak_shift
            if node.input in fold:  # folded: the unit of the input is the threshold itself
                thr_full = np.ones(full)
            zeros = np.zeros(full, np.float32)
            if target == "norse" and k:
                # Norse's importer ignores r (gain dt / tau): r = 1, and the threshold in those units
                nodes[node.name] = nir.LIF(tau=np.full(full, dt * 2.0**k, np.float32), r=np.ones(full, np.float32),
                                           v_leak=zeros, v_threshold=thr_full * 2.0**-k, v_reset=zeros, metadata=md)
            elif target == "sinabs":
                # Sinabs adds its input once per step (IAF), r = 1; its LIF would read tau in steps
                if k:
                    raise _refuse(node, "Sinabs 3.1.3's NIR importer cannot read a LIF layer of an image network "
                                        "(it tests v_leak with Python's any(), which needs a 1-d array, while NIR "
                                        "requires LIF parameters of one shape); export it for norse or nir")
                else:
                    nodes[node.name] = nir.IF(r=np.ones(full, np.float32), v_threshold=thr_full, v_reset=zeros,
                                              metadata=md)
            elif k or target == "snntorch":
                kk = 2.0**k if k else IF_TAU
                nodes[node.name] = nir.LIF(tau=np.full(full, dt * kk, np.float32), r=np.full(full, kk, np.float32),
                                           v_leak=zeros, v_threshold=thr_full, v_reset=zeros, metadata=md)
            else:
                nodes[node.name] = nir.IF(r=np.full(full, 1 / dt, np.float32), v_threshold=thr_full,
                                          v_reset=zeros, metadata=md)
            edges.append((node.input, node.name))
            unit[node.name] = np.ones(C)
        elif isinstance(node, Integrator):
            nodes[node.name] = nir.I(r=np.full((C, h, w), 1 / dt, np.float32), metadata=meta(node))
            edges.append((node.input, node.name))
            unit[node.name] = unit[node.input]
        elif isinstance(node, Add):
            units = [np.broadcast_to(unit[i], (C,)) for i in node.inputs]
            if not all(np.allclose(u, units[0]) for u in units):
                warnings.append(f"{node.name}: sums values of different real scales; NIR's real values for it are "
                                "approximate (the integers are exact in metadata)")
            # NIR sums every edge arriving at a node: an all-ones Scale is an explicit, named sum.
            nodes[node.name] = nir.Scale(scale=np.ones((C, h, w), np.float32), metadata=meta(node))
            edges += [(i, node.name) for i in node.inputs]
            unit[node.name] = units[0]
        else:  # pragma: no cover - analyse() refuses unknown node types
            raise _refuse(node, "unknown node type")
    taken = set(nodes)
    for i, term in enumerate(model.decoder.terms):
        key = "output" if i == 0 else f"output_{term.node}"
        while key in taken:
            key += "_"
        taken.add(key)
        src = model.node(term.node).input if term.node in skip else term.node
        nodes[key] = nir.Output(output_type={"output": np.array(shape(src))})
        edges.append((src, key))
    header = {
        "format": FORMAT, "version": VERSION, "timesteps": model.timesteps,
        "encoder": {"kind": model.encoder.kind, "seed": model.encoder.seed},
        "decoder": {"terms": [{"node": t.node, "quantity": t.quantity, "multiplier": int(t.multiplier[0])}
                              for t in model.decoder.terms],
                    "shift": model.decoder.shift, "residual": model.decoder.residual},
        "membrane_bits": model.membrane_bits, "metadata": model.metadata,
        "order": [n.name for n in model.nodes], "dt": dt, "input_scale": input_scale,
    }
    graph = nir.NIRGraph(nodes=nodes, edges=edges,
                         metadata={"edgespike": json.dumps(header, sort_keys=True)} if with_meta else {},
                         type_check=True)
    return graph, warnings


def write(graph, path, nir_version: str = "current") -> None:
    """``nir.write`` the graph; for ``nir_version="1.0.4"`` then drop what NIR 1.0.4's reader cannot take (node and
    graph ``metadata`` groups, IF/LIF ``v_reset``: its reader passes every stored field to the node's constructor).
    Dropping ``v_reset = 0`` changes nothing (1.0.4's neurons reset to 0)."""
    nir = nir_module()
    if nir_version not in NIR_VERSIONS:
        raise InterchangeError(f"NIR version {nir_version!r}: one of {', '.join(NIR_VERSIONS)}")
    nir.write(path, graph)
    if nir_version == "1.0.4":
        import h5py

        def strip(group) -> None:
            for key in list(group.keys()):
                item = group[key]
                if key in ("metadata", "v_reset"):
                    del group[key]
                elif isinstance(item, h5py.Group):
                    strip(item)

        with h5py.File(path, "a") as f:
            strip(f)


def header_of(graph) -> dict | None:
    """The edgespike header a graph carries, or None for a graph from another framework."""
    raw = (getattr(graph, "metadata", None) or {}).get("edgespike")
    if raw is None:
        return None
    try:
        header = json.loads(raw)
    except (TypeError, ValueError):
        raise InterchangeError("the graph's edgespike metadata is not valid JSON") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise InterchangeError("the graph's edgespike metadata is not an edgespike-nir header")
    if header.get("version") != VERSION:
        raise InterchangeError(f"edgespike-nir metadata version {header.get('version')} is not readable by this "
                               f"edgespike (reads {VERSION}); upgrade edgespike or pass --requantise")
    return header


def header_defaults(graph, header: dict) -> dict:
    """Import conventions implied by an edgespike header, for re-quantising an exported (maybe edited) graph.

    Returns ``timesteps``, ``dt``, ``input_scale``, ``residual`` and, when the read-out is a single term whose
    real unit is recorded, ``output_scale`` (pixel levels per real unit of the NIR read-out).
    """
    out = {k: header[k] for k in ("timesteps", "dt", "input_scale") if k in header}
    dec = header.get("decoder") or {}
    if "residual" in dec:
        out["residual"] = bool(dec["residual"])
    terms = dec.get("terms") or []
    if len(terms) == 1 and "shift" in dec:
        t = terms[0]
        per_int = t["multiplier"] / 2.0 ** dec["shift"]  # pixel levels per integer unit of the quantity
        node = graph.nodes.get(t["node"])
        if t["quantity"] == "count":
            out["output_scale"] = per_int
        elif t["quantity"] == "membrane" and isinstance(node, nir_module().I):
            src = [str(a) for a, b in graph.edges if str(b) == t["node"]]
            md = (graph.nodes[src[0]].metadata or {}) if len(src) == 1 else {}
            if "es_out_scale" in md:
                out["output_scale"] = per_int / float(np.asarray(md["es_out_scale"]).reshape(-1)[0])
    return out


class EditedGraph(InterchangeError):
    """The graph carries edgespike metadata but its values no longer match it (edited in another tool)."""


def _exact_int(key: str, what: str, real: np.ndarray, unit: np.ndarray, offset: float = 0.0) -> np.ndarray:
    x = np.asarray(real, np.float64) / unit + offset
    r = np.rint(x)
    if x.size and np.max(np.abs(x - r)) > 1e-3:
        raise EditedGraph(f"NIR node {key!r}: {what} no longer matches its edgespike metadata (the graph was "
                          "edited?); pass --requantise to quantise it afresh")
    return r


def restore(graph, header: dict) -> Model:
    """The exact integer model of a graph written by :func:`to_nir` (raises :class:`EditedGraph` if edited)."""
    from edgespike.interchange.nir_import import per_channel
    from edgespike.validate import analyse

    order = header.get("order")
    if not isinstance(order, list):
        raise InterchangeError("edgespike metadata has no node order")
    preds: dict[str, list[str]] = {}
    for a, b in graph.edges:
        preds.setdefault(str(b), []).append(str(a))
    nodes = []
    for name in order:
        if name not in graph.nodes:
            raise EditedGraph(f"NIR node {name!r} named in the edgespike metadata is missing; pass --requantise")
        nn = graph.nodes[name]
        md = nn.metadata or {}
        try:
            d = json.loads(md["edgespike"])
            kind = d.pop("type")
        except (KeyError, TypeError, ValueError):
            raise EditedGraph(f"NIR node {name!r} has no edgespike metadata; pass --requantise") from None
        ins = d["inputs"] if "inputs" in d else [d.get("input")]
        if sorted(preds.get(name, [])) != sorted(ins):
            raise EditedGraph(f"NIR node {name!r}: its edges no longer match the edgespike metadata; "
                              "pass --requantise")
        scale = np.asarray(md["es_scale"], np.float32) if "es_scale" in md else None
        try:
            if kind == "Conv":
                s_out = np.asarray(md["es_out_scale"], np.float64)
                u_in = np.asarray(md["es_in_unit"], np.float64)
                w = _exact_int(name, "weight", nn.weight, s_out[:, None, None, None] / u_in[None, :, None, None])
                b = _exact_int(name, "bias", nn.bias, s_out)
                extra = md.get("es_weight_extra")
                nodes.append(Conv(name, d["input"], w.astype(np.int8), b.astype(np.int32), int(d["stride"]),
                                  weight_extra=None if extra is None else np.asarray(extra, np.int8), scale=scale,
                                  dilation=int(d.get("dilation", 1))))
            elif kind == "Neuron":
                u_in = np.asarray(md["es_in_unit"], np.float64)
                thr = per_channel(name, nn, "v_threshold", len(u_in))
                theta = _exact_int(name, "v_threshold", thr, u_in, 0.5)
                mprn = tuple(d["mprn"]) if d.get("mprn") else None
                nodes.append(Neuron(name, d["input"], theta.astype(np.int32), reset=d["reset"],
                                    leak_shift=int(d["leak_shift"]), v_init=d["v_init"], mprn=mprn, scale=scale))
            elif kind == "Integrator":
                nodes.append(Integrator(name, d["input"]))
            elif kind == "Add":
                nodes.append(Add(name, tuple(d["inputs"])))
            else:
                raise EditedGraph(f"NIR node {name!r}: unknown edgespike node type {kind!r}")
        except KeyError as exc:
            raise EditedGraph(f"NIR node {name!r}: edgespike metadata lacks {exc}; pass --requantise") from None
    try:
        dec = header["decoder"]
        model = Model(
            nodes=nodes, timesteps=header["timesteps"],
            encoder=Encoder(header["encoder"]["kind"], header["encoder"].get("seed", 0)),
            decoder=Decoder([ReadoutTerm(t["node"], t["quantity"], np.array([t["multiplier"]], np.int32))
                             for t in dec["terms"]], shift=dec["shift"], residual=dec["residual"]),
            membrane_bits=header["membrane_bits"], metadata=header.get("metadata") or {})
    except (KeyError, TypeError) as exc:
        raise InterchangeError(f"edgespike metadata is missing or mistypes field {exc}") from None
    try:
        analyse(model)
    except ModelError as exc:
        raise InterchangeError(f"the restored model is invalid: {exc}") from None
    return model
