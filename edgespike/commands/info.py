"""``edgespike info MODEL``: print what a model file holds, readably."""

from __future__ import annotations

import json

import numpy as np

from edgespike.fileformat import format_version, load_any
from edgespike.model import BitPlaneNeuron, Conv, ConvTranspose, Integrator, Model, Neuron
from edgespike.models import MODEL_HELP, resolve
from edgespike.validate import analyse

HELP = "show a model file: graph, widths, bounds, metadata"
DESCRIPTION = """Show what a .esnn model file holds: the layer graph with shapes and neuron kinds (IF, LIF, MPRN,
bit-plane), timesteps, encoder and decoder, the proved worst-case integer widths, the parameter count and the
metadata (task, noise, provenance). For a model set (the shipped blind model): its members, the noise level each
was trained for and the estimates that choose it, then each member. Exits with status 2 and one line if the file
is damaged, foreign or from a newer edgespike."""


def add_arguments(p) -> None:
    p.add_argument("model", nargs="?", help=MODEL_HELP + " (default: s25)")
    p.add_argument("--json", action="store_true", help="print the header as JSON (for scripts)")


def describe(model: Model) -> str:
    """A human-readable summary of ``model``."""
    a = analyse(model)
    lines = [
        f"timesteps T = {model.timesteps}{' (+1 MPRN extra step)' if model.has_extra_step else ''}",
        f"encoder     = {model.encoder.kind}"
        + (f" (seed {model.encoder.seed})" if model.encoder.kind == "rate" else ""),
        "decoder     = " + " + ".join(f"{int(t.multiplier[0])}*{t.quantity}({t.node})" for t in model.decoder.terms)
        + f", >> {model.decoder.shift}, {'residual' if model.decoder.residual else 'direct'} output",
        f"membrane    = {model.membrane_bits}-bit declared, {a.worst_bits()}-bit proved worst case",
        f"frame size  = multiple of {model.size_multiple} (edge-padded)",
        "",
        f"{'node':<14}{'type':<17}{'in':<14}{'ch':>5}  {'detail':<34}{'max |value|':>12}",
    ]
    params = 0
    for node in model.nodes:
        info = a.nodes[node.name]
        detail = ""
        if isinstance(node, (Conv, ConvTranspose)):
            k = node.kernel
            params += node.weight.size + node.bias.size
            dil = f" d{node.dilation}" if getattr(node, "dilation", 1) > 1 else ""
            detail = f"{k}x{k} s{node.stride}{dil}, w in [{node.weight.min()},{node.weight.max()}]"
            kind = type(node).__name__
        elif isinstance(node, Neuron):
            params += node.threshold.size
            th = node.threshold
            theta = f"{th[0]}" if np.all(th == th[0]) else f"{th.min()}..{th.max()}"
            detail = f"{node.reset} reset, theta {theta}, v0 {node.v_init}"
            if node.leak_shift:
                detail += f", leak 2^-{node.leak_shift}"
            if node.mprn:
                detail += f", alpha {node.mprn[0]}/{node.mprn[1]}"
            kind = node.kind
        elif isinstance(node, BitPlaneNeuron):
            params += node.threshold.size + node.bias.size
            th = node.threshold
            theta = f"{th[0]}" if np.all(th == th[0]) else f"{th.min()}..{th.max()}"
            detail = f"UWD/UWE, {2**model.timesteps} levels, theta {theta}"
            kind = "bit-plane"
        elif isinstance(node, Integrator):
            kind = "Integrator (UWD)" if node.uwd else "Integrator"
            if node.bias is not None:
                params += node.bias.size
                detail = f"bias {int(node.bias[0])}" if node.bias.size == 1 else "bias per channel"
        else:
            kind = type(node).__name__
        bound = info.state.magnitude if info.state is not None else info.value.magnitude
        lines.append(f"{node.name:<14}{kind:<17}{','.join(node.inputs):<14}{info.channels:>5}  {detail:<34}{bound:>12}")
    lines += ["", f"parameters  = {params:,} integers"]
    if model.metadata:
        lines.append("metadata:")
        for k, v in model.metadata.items():
            lines.append(f"  {k}: {v if isinstance(v, str) else json.dumps(v)}")
    return "\n".join(lines)


def describe_set(mset) -> str:
    """A model set: its rule, a row per member, then each member as :func:`describe` shows it."""
    lines = [mset.describe(), "", f"{'estimated noise':<18}{'member':<12}{'trained for':<22}{'T':>3}"]
    for r, name in mset.band_ranges():
        m = mset.member_named(name)
        lines.append(f"{r:<18}{name:<12}{m.trained_for:<22}{m.model.timesteps:>3}")
    lines.append(f"bands: {mset.spec}")
    if mset.metadata:
        lines.append("metadata:")
        for k, v in mset.metadata.items():
            lines.append(f"  {k}: {v if isinstance(v, str) else json.dumps(v)}")
    for i, m in enumerate(mset.members):
        lines += ["", f"--- member {i}: {m.name} ({m.trained_for}) ---", describe(m.model)]
    return "\n".join(lines)


def run(args) -> int:
    from edgespike.modelset import ModelSet

    path = resolve(args.model)
    model = load_any(path)
    if isinstance(model, ModelSet):
        if args.json:
            from edgespike.fileformat import model_to_header_and_tensors

            members = []
            for m in model.members:
                header, tensors = model_to_header_and_tensors(m.model)
                header["tensors"] = {k: {"dtype": v.dtype.name, "shape": list(v.shape)} for k, v in tensors.items()}
                members.append({"name": m.name, "model": header})
            print(json.dumps({"format": "edgespike-snn-set", "estimator": model.estimator,
                              "bounds": list(model.bounds), "bands": list(model.bands), "metadata": model.metadata,
                              "members": members},
                             indent=2))
            return 0
        print(f"{path}  ({path.stat().st_size:,} bytes, edgespike-snn model set, format 1.2)")
        print(describe_set(model))
        return 0
    if args.json:
        from edgespike.fileformat import model_to_header_and_tensors

        header, tensors = model_to_header_and_tensors(model)
        header["tensors"] = {k: {"dtype": v.dtype.name, "shape": list(v.shape)} for k, v in tensors.items()}
        print(json.dumps(header, indent=2))
        return 0
    size = path.stat().st_size
    major, minor = format_version(model)
    print(f"{path}  ({size:,} bytes, edgespike-snn format {major}.{minor})")
    print(describe(model))
    return 0
