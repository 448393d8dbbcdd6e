"""``edgespike profile``: the SNN against its quantised ANN twin on this device, estimated and measured."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from edgespike.errors import UserError
from edgespike.models import MODEL_HELP, resolve
from edgespike.models import label as model_label

HELP = "compare the SNN with its int8 ANN twins: PSNR, latency, op counts, estimated and measured energy"
DESCRIPTION = """Profile a model against its quantised ANN twin on this machine.

Quality: PSNR on an evaluation set (default Set12, sigma from the model or 25) of the SNN, the float ANN twin,
its ONNX QDQ int8 version (onnxruntime quantize_static, per-channel symmetric weights, calibrated on noisy
BSD400 patches) and its TFLite int8 version (written without TensorFlow, run by ai-edge-litert / tflite-runtime).
Speed: median and p95 latency at --size with the same thread count for every runtime, and peak memory.
Energy: the analytical model of Lemaire et al. (ICONIP 2022) as SPIDEN uses it, with spike counts from running
the SNN on a real frame, priced with the widths each executor stores and with SPIDEN's preset under every
memory model, each flagged when outside its validity range (docs/PROFILE.md); with --accelerator also the
accelerator's own counts; and measured energy where a sensor exists (INA2xx hwmon, RDTech UM meter via
--um-port, RAPL, Raspberry Pi 5 PMIC): gross and net (above idle) per frame over several trials;
"estimated only" otherwise, naming the sensors looked for.

--sweep T=1,2,4,8 reruns the same integers for other timesteps (decoder rescaled; not retrained)."""


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--size must be WIDTHxHEIGHT, e.g. 640x480, got {text!r}") from None
    if not (8 <= w <= 8192 and 8 <= h <= 8192):
        raise UserError(f"--size {text}: each side must be 8..8192 pixels")
    return h, w


def _sweep(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    body = text.split("=", 1)[1] if "=" in text else text
    try:
        Ts = tuple(int(v) for v in body.split(",") if v.strip())
    except ValueError:
        raise UserError(f"--sweep must look like T=1,2,4,8, got {text!r}") from None
    if not Ts or any(t < 1 or t > 64 for t in Ts):
        raise UserError(f"--sweep timesteps must be 1..64, got {text!r}")
    return Ts


def add_arguments(p) -> None:
    p.add_argument("--model", metavar="M", help=MODEL_HELP + " (default: s25)")
    p.add_argument("--ann", default="onnx,tflite", metavar="LIST",
                   help="int8 twins: onnx, tflite (XNNPACK), tflite-builtin (XNNPACK off); default onnx,tflite; "
                        "none for the SNN alone")
    p.add_argument("--twin", choices=("relu", "quant"), default="relu",
                   help="twin activation: clipped ReLU (default) or SPIDEN's T-level quantised ReLU")
    p.add_argument("--size", default="256x256", metavar="WxH", help="frame size for latency and energy (256x256)")
    p.add_argument("--frames", type=int, default=5, metavar="N", help="timed runs per runtime (default 5)")
    p.add_argument("--warmup", type=int, default=1, metavar="N", help="untimed warm-up runs (default 1)")
    p.add_argument("--threads", type=int, default=1, metavar="N", help="threads for every runtime (default 1)")
    p.add_argument("--sweep", metavar="T=1,2,4,8", help="also estimate energy and PSNR for these timesteps")
    p.add_argument("--eval", default="set12", metavar="NAME|DIR", help="evaluation images (default set12)")
    p.add_argument("--eval-limit", type=int, metavar="N", help="only the first N evaluation images")
    p.add_argument("--sigma", type=float, help="noise level (default: the model's metadata, else 25); for a model "
                   "set (blind) also the member profiled")
    p.add_argument("--calib", default="bsd400", metavar="NAME|DIR", help="calibration images (default bsd400)")
    p.add_argument("--calib-count", type=int, default=16, metavar="N", help="calibration patches (default 16)")
    p.add_argument("--table", default=None,
                   help="energy table: stored (default: the widths each executor stores), spiden (the paper's "
                        "16-bit preset), horowitz45-int32, opcount-vtsnn; see docs/PROFILE.md")
    p.add_argument("--memory", choices=("sram-fit", "packed-sram", "fpga-bram"),
                   help="memory model of the headline estimate (default: the table's, sram-fit); every model is "
                        "reported with its validity range")
    p.add_argument("--accelerator", action="store_true",
                   help="also the accelerator's own energy from its cycle model's counts (slow: minutes per "
                        "256x256 frame)")
    p.add_argument("--energy-trials", type=int, default=3, metavar="N",
                   help="measured-energy trials per runtime (default 3; needs a sensor)")
    p.add_argument("--energy-table", metavar="FILE", help="JSON file with more energy tables")
    p.add_argument("--addressing", choices=("code", "paper"), default="code",
                   help="SNN conv addressing count: the authors' code (default) or the paper")
    p.add_argument("--um-port", metavar="PORT", help="RDTech UM meter serial port or pyserial URL")
    p.add_argument("--um-model", default="UM24C", choices=("UM24C", "UM25C", "UM34C"))
    p.add_argument("--json", metavar="FILE", nargs="?", const="-", help="write the JSON result (stdout with no FILE)")
    p.add_argument("--plot", metavar="PNG", help="write the plot here")
    p.add_argument("--report", metavar="DIR",
                   help="write profile.json, profile.png, report.md and the twin models into DIR")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def run(args) -> int:
    from edgespike import data
    from edgespike.fileformat import load_any
    from edgespike.modelset import ModelSet
    from edgespike.profile import energy as E
    from edgespike.profile.run import Options, markdown, plot, profile, table

    path = resolve(args.model)
    model = load_any(path)
    if isinstance(model, ModelSet):  # the profile compares one network with its twins: the member for --sigma
        member = model.member_for(args.sigma if args.sigma is not None else 25.0)
        if not args.quiet:
            print(f"edgespike profile: {path} is {model.describe()}; profiling {member.name}, its member for "
                  f"sigma {args.sigma if args.sigma is not None else 25.0:g} (--sigma chooses)", file=sys.stderr)
        model = member.model
    anns = tuple(a.strip() for a in args.ann.split(",") if a.strip() and a.strip() != "none")
    bad = [a for a in anns if a not in ("onnx", "tflite", "tflite-builtin")]
    if bad:
        raise UserError(f"--ann takes onnx, tflite, tflite-builtin or none, got {', '.join(bad)}")
    if anns:
        for mod, extra in (("onnx", "profile"), ("onnxruntime", "profile"), ("ai_edge_litert", "profile")):
            try:
                __import__(mod)
            except ModuleNotFoundError:
                if mod == "ai_edge_litert" and not any(a.startswith("tflite") for a in anns):
                    continue
                raise UserError(f"{mod} is not installed: pip install 'edgespike[{extra}]' (or --ann none)") from None
    table_name = args.table or E.DEFAULT_TABLE
    try:
        E.get_table(table_name, args.energy_table)
    except KeyError as exc:
        raise UserError(str(exc).strip("'\"")) from None
    except (OSError, ValueError) as exc:
        raise UserError(f"--energy-table {args.energy_table}: {exc}") from None
    if args.frames < 1 or args.warmup < 0 or args.threads < 1:
        raise UserError("--frames and --threads must be at least 1, --warmup at least 0")
    sigma = args.sigma if args.sigma is not None else float(model.metadata.get("sigma", 25.0) or 25.0)
    label, files = data.resolve(args.eval)
    if args.eval_limit:
        files = files[:args.eval_limit]
    try:
        _, calib = data.resolve(args.calib)
    except UserError:
        calib = []  # fall back to patches of the evaluation images (said in the JSON)
    log = None if args.quiet else (lambda m: print(f"edgespike profile: {m}", file=sys.stderr, flush=True))
    opts = Options(anns=anns, size=_size(args.size), frames=args.frames, warmup=args.warmup, threads=args.threads,
                   sweep=_sweep(args.sweep), eval_files=files, eval_label=label, sigma=sigma, calib_files=calib,
                   calib_count=args.calib_count, twin_mode=args.twin, table=table_name, memory=args.memory,
                   accelerator=args.accelerator, energy_trials=max(1, args.energy_trials),
                   extra_tables=args.energy_table, addressing=args.addressing, um_port=args.um_port,
                   um_model=args.um_model, log=log)
    res = profile(model, opts, model_label(path, model.metadata))  # the summary names the file and the model
    res["calibration"] = (f"{args.calib_count} noisy 64x64 patches from {min(len(calib), args.calib_count)} of "
                          f"{len(calib)} images ({args.calib})" if calib else "patches of the evaluation images")
    if args.report:  # keep the twins next to the report so that they can be inspected or deployed
        import shutil

        out = Path(args.report)
        out.mkdir(parents=True, exist_ok=True)
        for f in Path(res["twin"]["artifacts"]).glob("twin*"):
            shutil.copy(f, out / f.name)
        res["twin"]["artifacts"] = str(out)
    text = json.dumps(res, indent=1, default=float)
    if args.json == "-":
        print(text)
    else:
        print(table(res))
        if args.json:
            Path(args.json).write_text(text)
    if args.plot:
        plot(res, args.plot)
    if args.report:
        out = Path(args.report)
        out.mkdir(parents=True, exist_ok=True)
        (out / "profile.json").write_text(text)
        plot(res, out / "profile.png")
        (out / "report.md").write_text(markdown(res, "profile.png"))
    return 0
