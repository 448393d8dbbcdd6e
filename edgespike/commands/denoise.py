"""``edgespike denoise IN [-o OUT] [--model M]``: denoise one image file with the fast CPU runtime."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from edgespike.errors import UserError
from edgespike.files import check_output
from edgespike.models import MODEL_HELP, resolve, shipped_for
from edgespike.parallel import add_threads_argument, apply_threads_argument

HELP = "denoise an image file (PNG out) with the CPU runtime"
DESCRIPTION = """Denoise one image with a spiking model on the CPU and write a PNG. Colour images are denoised on
their BT.601 luma plane with the chroma passed through; 16-bit, float, alpha, palette and CMYK images are
converted to 8-bit grey or RGB first, and a note says what was converted. Without --model the shipped blind model
(sigma 0..55) is used; the summary names the model that ran. Images over --max-pixels (default 40 megapixels) are
refused from their header, before decoding. The output is written to a temporary file and renamed into place, so
an error never leaves a partial file. Exits with status 2 and one line on any problem the user can fix."""


LARGE_PIXELS = 4_000_000
"""Images larger than this get a heartbeat line while they are denoised (they take several seconds or more)."""


def add_arguments(p) -> None:
    from edgespike.live.imageio import MAX_PIXELS_HELP

    p.add_argument("input", metavar="IN", help="image file (PNG; JPEG and others with Pillow or OpenCV)")
    p.add_argument("-o", "--output", metavar="OUT", help="output PNG (default: IN with suffix '.denoised.png')")
    p.add_argument("--model", metavar="M", help=MODEL_HELP + " (default: blind, as the noise of an image "
                   "is not known)")
    p.add_argument("--backend", choices=("auto", "c", "numpy"), default="auto",
                   help="runtime kernels (default: the compiled kernel when available)")
    add_threads_argument(p)
    p.add_argument("--max-pixels", type=int, metavar="N", help=MAX_PIXELS_HELP)
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")


def default_output(path: Path) -> Path:
    return path.with_name(path.stem + ".denoised.png")


def run(args) -> int:
    from edgespike import frames
    from edgespike.live.imageio import check_max_pixels, read_image, write_atomic
    from edgespike.models import label
    from edgespike.png import encode_png
    from edgespike.progress import heartbeat, prepare_kernel
    from edgespike.runtime import load

    apply_threads_argument(args)  # a bad count fails at once, before any work
    src = Path(args.input)
    out_path = Path(args.output) if args.output else default_output(src)
    if out_path.suffix.lower() != ".png":
        raise UserError(f"output {out_path} must be a .png file")
    max_pixels = check_max_pixels(args.max_pixels)
    check_output(out_path)  # before the model and the image: a bad output fails in a moment, not after the work
    notes: list[str] = []
    img = read_image(src, max_pixels, notes)  # the header's size is checked before anything is decoded
    prepare_kernel(args.backend, enabled=not args.quiet)
    model_path = resolve(args.model or shipped_for(None))
    runtime = load(model_path, backend=args.backend)
    h, w = img.shape[:2]
    # a large photo takes a minute or more (about 1.3 s per megapixel on a 2-core board): show it is working
    with heartbeat(f"denoising {src} ({w}x{h})", enabled=not args.quiet and h * w > LARGE_PIXELS):
        if img.ndim == 3:
            y, cb, cr = frames.to_luma(img)
            den, stats = runtime.denoise(y)
            result = frames.from_luma(den, cb, cr)
            colour = "colour: luma denoised, chroma passed through"
        else:
            result, stats = runtime.denoise(np.ascontiguousarray(img))
            colour = None
    write_atomic(out_path, encode_png(result))
    if not args.quiet:
        for note in notes:  # what was converted on the way in, as eval reports it
            print(f"edgespike: note: {src}: {note}", file=sys.stderr)
        print(f"{out_path}  ({w}x{h}, {stats.total_seconds:.2f} s, {stats.spike_rate:.3f} spikes/neuron/step, "
              f"{stats.backend} kernels{', ' + colour if colour else ''})")
        print(f"  model: {label(model_path, runtime.model.metadata)}")
        if stats.member is not None:  # a model set: say which of its networks ran, and why
            print(f"  noise: estimated sigma {stats.sigma_estimate:.1f}, so its member {stats.member} ran")
    return 0
