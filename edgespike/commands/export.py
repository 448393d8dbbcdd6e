"""``edgespike export MODEL.esnn --to nir|onnx -o OUT``: hand an edgespike model to other tools."""

from __future__ import annotations

import re

from edgespike.errors import UserError
from edgespike.files import check_output
from edgespike.models import MODEL_HELP, resolve

HELP = "export a model as a NIR graph (for snnTorch, Norse, ...) or as its float ANN twin in ONNX"
DESCRIPTION = """--to nir writes the NIR graph of the model (HDF5). Weights, biases and thresholds are the real values
the integers stand for; neurons get r and tau so that NIR's forward Euler at --dt has unit gain and the same shift
leak. Before writing, every semantic that NIR (as --target reads it) cannot carry for this model is listed: soft
reset, the theta/2 initial membrane, MPRN, non-direct encoders, and for a framework target the Integrator read-out
and the decoder (none of their NIR importers has an I node) and what that importer changes (Sinabs: subtractive
MultiSpike neurons). The export is refused unless --lossy is given. Bit-plane layers, transposed convolutions and
concatenation have no NIR node and are refused even with --lossy.

--target nir (default) writes NIR's own reading plus edgespike metadata, so 'edgespike import' restores the model
exactly. --target snntorch|norse|sinabs|spikingjelly writes what that framework's NIR importer reads (its dt,
uniform thresholds folded into the convs, r, tau units). --nir-version 1.0.4 writes a file NIR 1.0.4 (pinned by
Sinabs and Rockpool) can read: no metadata, no v_reset.

--to onnx writes the float ANN twin (edgespike.profile.ann: clipped-ReLU rate network, input [1,1,H,W] on [0,1])."""


def add_arguments(p) -> None:
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--to", required=True, choices=("nir", "onnx"), help="target format")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="file to write")
    p.add_argument("--target", default="nir", choices=("nir", "snntorch", "norse", "sinabs", "spikingjelly"),
                   help="NIR reader to write for (default: nir, the spec's reading with exact edgespike metadata)")
    p.add_argument("--lossy", action="store_true",
                   help="write even though NIR (as --target reads it) loses parts of the model (they are listed)")
    p.add_argument("--nir-version", default="current", choices=("current", "1.0.4"),
                   help="NIR file version to write (default: that of the installed nir; 1.0.4 for Sinabs/Rockpool)")
    p.add_argument("--dt", type=float, default=None,
                   help="NIR time step in seconds (default: the target's: 1e-4 for nir, snntorch and spikingjelly, "
                        "1e-3 for norse; sinabs counts steps)")
    p.add_argument("--frame-size", default="64x64", metavar="WxH",
                   help="nominal frame size written into NIR's shapes (the model itself takes any size; 64x64)")
    p.add_argument("--activation", choices=("relu", "quant"), default="relu",
                   help="ONNX twin activation: clipped ReLU or the T-level quantiser (default: relu)")


def run(args) -> int:
    from edgespike.fileformat import load

    model = load(resolve(args.model))
    out = check_output(args.output)  # before the export's work, which can take a while for ONNX
    if args.to == "onnx":
        from edgespike.profile.ann import to_onnx, twin

        to_onnx(twin(model, args.activation), out)
        print(f"wrote {out}: float ANN twin ({args.activation}) of {args.model}")
        return 0
    m = re.fullmatch(r"(\d+)x(\d+)", args.frame_size)
    if not m:
        raise UserError(f"--frame-size {args.frame_size!r}: expected WxH, e.g. 64x64")
    w, h = int(m.group(1)), int(m.group(2))
    from edgespike.interchange import nir_export

    lost = nir_export.losses(model, args.target, args.nir_version)
    if lost and not args.lossy:
        raise UserError(f"{args.model} as NIR for {args.target} would lose {len(lost)} thing(s): "
                        + "; ".join(lost) + ". Nothing was written; pass --lossy to write it anyway")
    graph, warnings = nir_export.to_nir(model, dt=args.dt, frame_size=(h, w), target=args.target)
    try:
        nir_export.write(graph, out, args.nir_version)
    except OSError as exc:
        out.unlink(missing_ok=True)
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    for what in lost:
        print(f"lost: {what}")
    for wmsg in warnings:
        print(f"warning: {wmsg}")
    dt = args.dt if args.dt is not None else nir_export.TARGET_DT[args.target]
    version = "" if args.nir_version == "current" else f", NIR {args.nir_version}"
    print(f"wrote {out}: NIR graph of {args.model} for {args.target} ({len(graph.nodes)} nodes, "
          + ("tau in steps" if args.target == "sinabs" else f"dt = {dt:g}") + f"{version})")
    return 0
