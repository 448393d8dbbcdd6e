"""``edgespike import MODEL.nir -o MODEL.esnn``: a spiking network from another framework, quantised to integers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from edgespike.errors import UserError

HELP = "import a NIR graph (snnTorch, Norse, Sinabs, ...) as an integer edgespike model"
DESCRIPTION = """Read a NIR file (the Neuromorphic Intermediate Representation, written by snnTorch, Norse, Sinabs,
Rockpool, Lava-dl, SpikingJelly...), map its nodes onto the edgespike semantics, quantise it to integers and save
a .esnn model. Prints, per layer, the quantisation chosen and its error on the calibration frames, and the PSNR of
the integer model's output against the float NIR model simulated in float (forward Euler at --dt).

Supported: Input, Output, Conv2d ('same' padding, stride 1/2, groups), Affine/Linear as 1x1 convs, Scale (folded),
IF, LIF (tau -> nearest shift leak 2^-k, reported), CubaLIF with tau_syn = dt, I and LI as the read-out,
SumPool2d/AvgPool2d 2x2 stride 2 (an exact stride-2 conv), several edges into one node (a sum). Anything else is
refused with the node's name and type. Conventions: the NIR input is input-scale * pixel at every step (direct
coding); the output frame is output-scale * (spike count of the read-out neuron, or the read-out membrane after the
last step), or the input minus that with --residual. A graph written by 'edgespike export' is restored exactly
(its integers are in the metadata) unless --requantise.

Frameworks' exporters do not all write NIR's reading (Norse writes dt * tau and a per-step IF, Sinabs tau in steps,
snnTorch cannot say its delayed subtractive reset): --from names the framework and applies its conventions, without
a --dt. After quantising, a layer that never fires (or always fires), a constant read-out or an output far from
the float model is reported as a warning naming the layer and what to try. See docs/INTERCHANGE.md."""


def add_arguments(p) -> None:
    p.add_argument("model", help="NIR file (.nir, HDF5)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.esnn", help="model file to write")
    p.add_argument("--calibrate", metavar="DIR", help="folder of calibration images (PNG, or .npy uint8 frames); "
                                                      "default: crops of the bundled sample frame")
    p.add_argument("--weight-bits", type=int, default=8, help="integer weight width, 2..8 (default: 8)")
    p.add_argument("--timesteps", type=int, default=None, help="timesteps T (default: from the graph, else 8)")
    p.add_argument("--dt", type=float, default=None,
                   help="Euler step of the NIR neurons in seconds (default: from the graph, else the framework's: "
                        "1e-4 for nir, snnTorch and SpikingJelly, 1e-3 for Norse and Rockpool; unused for Sinabs, "
                        "which writes tau in steps)")
    p.add_argument("--input-scale", type=float, default=None,
                   help="NIR input value per pixel level (default: 1/255, i.e. frames on [0, 1])")
    p.add_argument("--output-scale", type=float, default=None,
                   help="pixel levels per unit of the read-out (default: 1 / (input-scale * T): the read-out "
                        "averaged over T steps, in input units)")
    p.add_argument("--residual", action="store_true", help="the network predicts the noise: output = input - it")
    p.add_argument("--from", dest="producer", default="auto",
                   choices=("auto", "nir", "snntorch", "norse", "sinabs", "spikingjelly", "rockpool"),
                   help="the framework that wrote the file: apply its exporter's time, gain, compare and reset "
                        "conventions (docs/INTERCHANGE.md). auto (default): the one the file names in its metadata, "
                        "else nir (the NIR spec's reading)")
    p.add_argument("--reset", choices=("hard", "soft", "soft-delayed"), default=None,
                   help="reset of the spiking layers (default: the framework's, hard for nir): hard = reset to "
                        "v_reset; soft = subtract the threshold, for frameworks that subtract but cannot say so in "
                        "NIR; soft-delayed = snnTorch's default (subtract one step late, reset_delay=True)")
    p.add_argument("--membrane-bits", type=int, default=32, help="declared membrane width, 8..32 (default: 32)")
    p.add_argument("--frames", type=int, default=8, help="at most this many calibration frames (default: 8)")
    p.add_argument("--crop", type=int, default=64, help="calibration frames are centre crops of this size (64)")
    p.add_argument("--requantise", action="store_true",
                   help="ignore edgespike metadata in the graph and quantise its float values afresh")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")


def calibration_frames(folder: str | None, count: int, crop: int, multiple: int) -> tuple[list[np.ndarray], str]:
    """Calibration frames: centre crops (a multiple of the model's size multiple) of images in ``folder``, or of
    the bundled sample frame."""
    from edgespike.data import read_image

    if count < 1 or crop < 1:
        raise UserError("--frames and --crop must be positive")
    side = max(multiple, crop - crop % multiple)
    images = []
    if folder is None:
        from edgespike.models import sample_path

        path = sample_path()
        if not path.exists():
            raise UserError("the bundled sample frame is missing; pass --calibrate DIR")
        img, _ = read_image(path)
        h, w = img.shape
        # Several crops of the one sample frame, spread over it.
        for i in range(count):
            y = (h - side) * ((i * 5) % count) // max(count - 1, 1) if h > side else 0
            x = (w - side) * i // max(count - 1, 1) if w > side else 0
            images.append(img[y:y + side, x:x + side])
        return images, f"{count} crop(s) of the bundled sample frame"
    d = Path(folder)
    if not d.is_dir():
        raise UserError(f"--calibrate {folder}: not a folder")
    files = sorted(p for p in d.iterdir() if p.suffix.lower() in (".png", ".npy", ".jpg", ".jpeg", ".bmp", ".tif",
                                                                    ".tiff"))
    if not files:
        raise UserError(f"--calibrate {folder}: no images (PNG, .npy) in the folder")
    for p in files[:count]:
        if p.suffix.lower() == ".npy":
            try:
                img = np.load(p, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise UserError(f"{p}: cannot be read as a .npy array ({exc})") from None
            if img.dtype != np.uint8 or img.ndim != 2:
                raise UserError(f"{p}: a .npy calibration frame must be a 2-D uint8 array, got {img.dtype} "
                                f"{list(img.shape)}")
        else:
            img, _ = read_image(p)
        h, w = img.shape
        s = min(side, h - h % multiple, w - w % multiple)
        if s < multiple:
            raise UserError(f"{p}: {w}x{h} is smaller than the model's size multiple {multiple}")
        y, x = (h - s) // 2, (w - s) // 2
        images.append(np.ascontiguousarray(img[y:y + s, x:x + s]))
    return images, f"{len(images)} image(s) from {folder}"


def run(args) -> int:
    from edgespike.fileformat import save
    from edgespike.interchange import nir_export, nir_import

    graph = nir_import.read_graph(args.model)
    header = None if args.requantise else nir_export.header_of(graph)
    if header is not None:
        model = nir_export.restore(graph, header)
        save(model, args.output)
        print(f"{args.output}: restored the edgespike model carried in {args.model} exactly "
              f"({len(model.nodes)} nodes, T = {model.timesteps}); no quantisation was needed")
        return 0
    meta = graph.metadata if isinstance(getattr(graph, "metadata", None), dict) else {}
    # A graph exported by edgespike and re-quantised keeps its own conventions unless the options say otherwise.
    hd = nir_export.header_defaults(graph, nir_export.header_of(graph)) if "edgespike" in meta else {}
    from edgespike.interchange.producers import PRODUCERS, detect

    producer = args.producer if args.producer != "auto" else (detect(graph) or "nir")
    default_dt = PRODUCERS[producer].dt or nir_import.DEFAULT_DT
    dt = args.dt if args.dt is not None else hd.get("dt", _meta_float(meta, "dt", default_dt))
    T = args.timesteps if args.timesteps is not None else int(hd.get("timesteps", _meta_float(meta, "timesteps", 8)))
    input_scale = args.input_scale if args.input_scale is not None else hd.get("input_scale", 1 / 255)
    output_scale = args.output_scale if args.output_scale is not None else hd.get("output_scale")
    residual = args.residual or hd.get("residual", False)
    if not 1 <= T <= 1024:
        raise UserError(f"--timesteps must be in 1..1024, got {T}")
    if not (input_scale > 0 and math.isfinite(input_scale)):
        raise UserError("--input-scale must be positive")
    try:
        net = nir_import.lower(graph, dt=dt, timesteps=T, input_scale=input_scale,
                               output_scale=output_scale, residual=residual, reset=args.reset,
                               producer=producer)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
        # A node whose fields nir.read accepted but whose values make no sense (wrong types, missing arrays).
        raise UserError(f"{args.model}: malformed NIR graph ({type(exc).__name__}: {exc})") from None
    frames, what = calibration_frames(args.calibrate, args.frames, args.crop, net.size_multiple)
    model, report = nir_import.quantise(net, frames, weight_bits=args.weight_bits, membrane_bits=args.membrane_bits,
                                        source=Path(args.model).name)
    model.metadata["calibration"] = what
    model.metadata["producer"] = producer
    model.metadata["psnr_vs_float_min_db"] = None if math.isinf(report.psnr_min) else round(report.psnr_min, 3)
    save(model, args.output)
    how = f"read as written by {producer}" + (" (named in the file)" if args.producer == "auto" and producer != "nir"
                                              else "")
    print(f"{args.model}: {len(net.nodes)} nodes, T = {T}, dt = {dt:g}, {how}, calibration: {what}")
    print(report.text())
    print(f"wrote {args.output}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "psnr_db": [None if math.isinf(p) else p for p in report.psnr], "max_abs_error": report.max_abs,
            "layers": [vars(r) for r in report.layers], "notes": report.notes, "warnings": report.warnings,
            "producer": producer, "calibration": what,
        }, indent=2))
    return 0


def _meta_float(meta: dict, key: str, default: float) -> float:
    v = meta.get(key)
    try:
        return float(np.asarray(v).reshape(-1)[0]) if v is not None else default
    except (TypeError, ValueError, IndexError):
        return default
