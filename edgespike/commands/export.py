"""``edgespike export MODEL.esnn --to nir|onnx -o OUT``: hand an edgespike model to other tools."""

from __future__ import annotations

import re

from edgespike.errors import UserError
from edgespike.files import check_output
from edgespike.models import MODEL_HELP, resolve

HELP = "export a model as a NIR graph (for snnTorch, Norse, ...) or as its float ANN twin in ONNX"
DESCRIPTION = """--to nir writes the NIR graph of the model (HDF5, readable by nir.read and by the NIR importers of
snnTorch, Norse, Sinabs...). Weights, biases and thresholds are the real values the integers stand for; neurons
get r and tau so that NIR's forward Euler at --dt has unit gain and the same shift leak. What NIR 1.0 cannot say
(subtractive reset, v_init, MPRN, the decoder) is kept in node metadata, so 'edgespike import' restores the model
exactly; other frameworks simulate those parts as NIR defines them (a warning lists them). Models with transposed
convolutions or concatenation are refused: NIR 1.0 has no such nodes.

--to onnx writes the float ANN twin (edgespike.profile.ann: clipped-ReLU rate network, input [1,1,H,W] on [0,1])."""


def add_arguments(p) -> None:
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--to", required=True, choices=("nir", "onnx"), help="target format")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="file to write")
    p.add_argument("--dt", type=float, default=1e-4,
                   help="NIR time step in seconds (default: 1e-4, the dt snnTorch's importer assumes)")
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
    from edgespike.interchange import nir_module
    from edgespike.interchange.nir_export import to_nir

    nir = nir_module()
    graph, warnings = to_nir(model, dt=args.dt, frame_size=(h, w))
    try:
        nir.write(out, graph)
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    for wmsg in warnings:
        print(f"warning: {wmsg}")
    print(f"wrote {out}: NIR graph of {args.model} ({len(graph.nodes)} nodes, dt = {args.dt:g})")
    return 0
