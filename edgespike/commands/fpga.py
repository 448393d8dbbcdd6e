"""``edgespike fpga build`` and ``edgespike fpga serve-sim``: the accelerator on a board, or a simulated one."""

from __future__ import annotations

import sys

from edgespike.errors import UserError
from edgespike.firmware.protocol import DEFAULT_BAUD
from edgespike.fpga.cli import _tile_arg  # the same HxW option as `edgespike rtl`
from edgespike.models import MODEL_HELP

HELP = "build a bitstream for a board, or serve a simulated board on a TCP port"
DESCRIPTION = """fpga build: check that the model fits the board's FPGA, synthesise, place and route, and pack a
bitstream with the open toolchain (amaranth-boards + YoWASP yosys/nextpnr, offline), then report LUTs, logic cells,
flip-flops, block RAM, SPRAM, DSPs, Fmax against the design clock, build time and throughput at Fmax (cycle model);
the report is also written as DIR/report.json. A bit-plane model (the shipped defaults) builds as the layer pipeline
(one engine per layer; the ULX3S at 75 MHz and the OrangeCrab at 72 MHz from their PLL, the iCEBreaker at 12 MHz;
behind the framed link when its region fits the link's buffers, else a raw UART, said on stderr); a rate-coded
IF model builds as the shared engine behind the framed link that `edgespike run --backend fpga` speaks (the ULX3S
and OrangeCrab at 12.5 / 12 MHz). A shipped model with a plan that met the clock on the board (s25 on the ulx3s-85f:
79 MHz behind the UART, 77.5 behind --link spi) is built with that plan and nextpnr seed, said on stderr
(--replan plans afresh); a build that misses its clock by under a tenth is placed and routed again with the next
seeds (--tries).
Boards: icebreaker (iCE40UP5K), ulx3s-85f (ECP5-85F), orangecrab (ECP5-25F; UART on Feather pins 0/1).
fpga serve-sim: run the board top level (UART included) in Amaranth's simulator behind a TCP socket; the firmware
reaches it as socket://127.0.0.1:PORT (e.g. edgespike run --backend fpga --port socket://127.0.0.1:7007). A
bit-plane model is served as a layer pipeline board (framed link; regions of exactly --tile, default the
smallest that keeps a core of 8 pixels inside the model's halo); an IF model as the shared engine."""


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="fpga_command", metavar="{build,serve-sim}", required=True)
    b = sub.add_parser("build", help="bitstream + resource/Fmax/throughput report")
    b.add_argument("--board", required=True, help="icebreaker, ulx3s-85f or orangecrab")
    b.add_argument("--model", metavar="M", help=MODEL_HELP + " (default: the shipped bit-plane model that "
                   "fits the board, and it says which: s25 on the ulx3s-85f, the small 3x4 model "
                   "small_bitplane_3x4_s25.esnn on the icebreaker and orangecrab)")
    b.add_argument("--out", help="build directory (default build/fpga-BOARD)")
    b.add_argument("--tile", type=_tile_arg, help="IF models (shared engine): largest tile HxW, halo included "
                   "(default 16x16; 64x64 on ECP5-85F). Bit-plane models (layer pipeline): the region HxW the "
                   "pipeline is built for, exactly; at most 255x255 gets the framed link that run --backend fpga "
                   "needs (default: 480-row stripes of a 640x480 frame behind a raw UART top)")
    b.add_argument("--lanes", type=int, help="IF models (shared engine): output channels per membrane word "
                   "(default 1 on iCE40, else all)")
    b.add_argument("--baud", type=int, help=f"UART baud rate (default {DEFAULT_BAUD} for bit-plane models, the "
                   "layer pipeline: from the PLL at 75 MHz on the ULX3S and 72 MHz on the OrangeCrab, from the 12 MHz "
                   f"oscillator on the iCEBreaker; for IF models, the shared engine: {DEFAULT_BAUD} on the iCEBreaker "
                   "and OrangeCrab at 12 MHz, 500000 on the ULX3S at 12.5 MHz; must divide the design clock within "
                   "3%%)")
    b.add_argument("--link", choices=("uart", "spi"), default="uart",
                   help="the host link: uart (default; the board's USB serial port at --baud) or spi (a Raspberry "
                   "Pi as the SPI master on the ULX3S's GPIO header GP0-GP3 or the iCEBreaker's PMOD1A; wiring in "
                   "docs/HARDWARE.md; at the Pi's 15.6 MHz on the ULX3S a 640x480 frame in and out takes about "
                   "0.4-0.6 s, with the overlapping stripes of the plan, against 2-3 s at 3 Mbaud: the build prints "
                   "the plan's figure beside its compute time)")
    b.add_argument("--clock", type=float, metavar="MHZ", help="bit-plane models on the ULX3S / OrangeCrab: the "
                   "PLL's design clock in MHz (default 75 / 72); one the PLL makes from the oscillator (the ULX3S's "
                   "25 MHz x m / d, d up to 8: 62.5, 70, 75, ...; others are refused with the nearest two). A build "
                   "that misses its clock names the one to rebuild with")
    b.add_argument("--logic-budget", type=float, metavar="SHARE", help="bit-plane models: the share of the part's "
                   "logic cells the planner may fill (by its estimate), 0.5..1 (default 0.8: timing closes with room; "
                   "more buys lanes, so frames per second, and risks the clock: the build reports Fmax)")
    b.add_argument("--seed", type=int, metavar="N", help="nextpnr's placement seed (default: the closed plan's, "
                   "see --replan, else nextpnr's own). The routed clock of a nearly full part varies by a few MHz "
                   "from seed to seed; a build that misses its clock by a little tries the next ones (--tries)")
    b.add_argument("--tries", type=int, metavar="N", help="bit-plane models: place-and-route runs at most (default "
                   "3): a routed design that misses its clock by under a tenth is placed and routed again with the "
                   "next seed, on the same netlist (about 25 min a run on the ECP5-85F)")
    b.add_argument("--replan", action="store_true", help="bit-plane models: let the planner choose even when the "
                   "model has a plan that closed timing on the board (the default s25 on the ulx3s-85f: the build "
                   "says which plan and seed it takes; --tile, --lanes or --logic-budget also replan)")
    b.add_argument("--plan", metavar="REPORT", dest="plan_from", help="bit-plane models: build with the plan, "
                   "frame and nextpnr seed of an earlier build of the same model file on the same board (its "
                   "report.json, written beside each bitstream): e.g. to rebuild a plan that met its clock with "
                   "another --link")
    b.add_argument("--plan-only", action="store_true", help="plan and fit-check only: print the plan's line "
                   "(folds, stripes, block RAM, logic estimate, frame time; on stderr, as every build does before its "
                   "tools run) and run no tool: seconds instead of the build's minutes to hours")
    b.add_argument("--json", action="store_true", help="print the report as JSON instead of text")
    s = sub.add_parser("serve-sim", help="a simulated board on a TCP port")
    s.add_argument("--model", metavar="M", help=MODEL_HELP + " (default: the shipped IF model that fits "
                   "--device: if-s25 on the ecp5-85f)")
    s.add_argument("--port", type=int, default=7007, help="TCP port on 127.0.0.1 (default 7007)")
    s.add_argument("--device", default="up5k", help="fit-check target: up5k, ecp5-85f or ecp5-25f (default up5k)")
    s.add_argument("--tile", type=_tile_arg, help="largest tile HxW (default 16x16); for a bit-plane model the "
                   "pipeline's region, exactly (default: 2 x halo + 8 on each side)")


def run(args) -> int:
    try:
        import amaranth  # noqa: F401
    except ImportError:
        raise UserError("amaranth is not installed: pip install 'edgespike[hw]'") from None
    if args.fpga_command == "build":
        from edgespike.fpga.build import build

        # progress to stderr also when it is a log: a build takes minutes, and a CI log should show each stage
        report = build(args.board, args.model, args.out, tile=args.tile, lanes=args.lanes, baud=args.baud,
                       progress=sys.stderr, link=args.link, dry_run=args.plan_only, clock_mhz=args.clock,
                       logic_budget=args.logic_budget, seed=args.seed, tries=args.tries, replan=args.replan,
                       plan_from=args.plan_from)
        if not isinstance(report, str):  # --plan-only returns the plan's line, already on stderr
            print(report.to_json() if args.json else report.text())
        return 0

    from edgespike.fpga.build import load_plan
    from edgespike.fpga.sim import Server, pipeline_server

    pipeline = _pipeline_model(args.model)
    try:
        if pipeline is not None:
            model, halo = pipeline
            region = args.tile or (2 * halo + 8, 2 * halo + 8)
            try:
                server = pipeline_server(model, region, port=args.port)
            except ValueError as exc:
                raise UserError(f"--tile: {exc}") from None
            h, w = region
            print(f"layer pipeline of {args.model} for regions of {h}x{w} (halo {halo}), framed link")
        else:
            _, plan = load_plan(args.model, args.device, args.tile)
            server = Server(plan, port=args.port)
            print(plan.summary())
    except OSError as exc:
        raise UserError(f"cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}") from None
    print(f"simulated board listening on {server.url} (Ctrl-C to stop)", flush=True)
    server.serve_forever()
    return 0


def _pipeline_model(model_path: str | None):
    """``(model, halo)`` when ``model_path`` names a bit-plane model (the layer pipeline), else None."""
    if not model_path:
        return None
    from edgespike.fileformat import load
    from edgespike.fpga.pipeline import PipelineError, layer_specs, receptive_radius
    from edgespike.models import resolve

    model = load(resolve(model_path))
    try:
        return model, receptive_radius(layer_specs(model))
    except PipelineError:
        return None
