"""Running the gateware in Amaranth's simulator: one tile, or a whole frame tile by tile.

These are the entry points the tests and the ``edgespike rtl sim`` command use. The simulator is slow
(1-4k cycles/s for the whole design here), so a frame is best simulated as one small tile, and whole frames
are costed with :mod:`edgespike.fpga.cycles` instead.
"""

from __future__ import annotations

import contextlib

import numpy as np
from amaranth.sim import Simulator

from edgespike.firmware.tiling import TileResult, tiles
from edgespike.fpga.params import Plan
from edgespike.rtl.sequencer import Sequencer


def run_tile(plan: Plan, tile: np.ndarray, vcd: str | None = None, accesses: dict | None = None) -> TileResult:
    """Simulate the sequencer on one uint8 tile (at most ``plan.tile``); optionally write a VCD.

    ``accesses`` (a dict) receives ``{ram: {"reads", "writes"}}``: the cycles each RAM's read and write enables
    were high during the run, LOAD included (what :class:`edgespike.fpga.cycles.Accesses` predicts). Sampling them
    every cycle slows the simulation, so it is off unless asked for.
    """
    tile = np.asarray(tile, dtype=np.uint8)
    h, w = tile.shape
    if h > plan.tile[0] or w > plan.tile[1]:
        raise ValueError(f"tile {h}x{w} is larger than the plan's {plan.tile[0]}x{plan.tile[1]}")
    dut = Sequencer(plan)
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    flat = [int(v) for v in tile.reshape(-1)]
    result: dict = {}

    async def testbench(ctx):
        ctx.set(dut.h, h)
        ctx.set(dut.w, w)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        ctx.set(dut.pixels.valid, 1)
        for v in flat:  # LOAD takes one pixel per cycle
            ctx.set(dut.pixels.payload, v)
            await ctx.tick()
        ctx.set(dut.pixels.valid, 0)
        ctx.set(dut.out.ready, 1)
        out = []
        for _ in range(h * w):
            (v,) = await ctx.tick().sample(dut.out.payload).until(dut.out.valid)
            out.append(v)
        await ctx.tick().until(~dut.busy)
        result.update(out=out, cycles=ctx.get(dut.cycles), spikes=ctx.get(dut.spikes), sops=ctx.get(dut.sops))

    sim.add_testbench(testbench)
    if accesses is not None:
        rams = dict(dut.rams) | dut.engine.rams
        accesses.update({k: {"reads": 0, "writes": 0} for k in rams})
        sigs = [s for ram in rams.values() for s in (ram.re, ram.we)]

        async def count(ctx):
            async for _, _, *vals in ctx.tick().sample(*sigs):
                for i, name in enumerate(rams):
                    accesses[name]["reads"] += int(vals[2 * i])
                    accesses[name]["writes"] += int(vals[2 * i + 1])

        sim.add_process(count)
    cm = sim.write_vcd(vcd) if vcd else contextlib.nullcontext()
    with cm:
        sim.run()
    return TileResult(np.array(result["out"], np.uint8).reshape(h, w), result["cycles"], result["spikes"],
                      result["sops"])


def run_frame(plan: Plan, frame: np.ndarray) -> tuple[np.ndarray, list[TileResult]]:
    """Simulate a whole frame as halo'd tiles and stitch the cores (slow: use small frames)."""
    frame = np.asarray(frame, dtype=np.uint8)
    out = np.zeros_like(frame)
    results = []
    for region, core in tiles(frame.shape, plan.tile, plan.halo, plan.multiple):
        (y0, y1, x0, x1), (cy0, cy1, cx0, cx1) = region, core
        res = run_tile(plan, frame[y0:y1, x0:x1])
        out[cy0:cy1, cx0:cx1] = res.out[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
        results.append(res)
    return out, results


class Mismatch(AssertionError):
    """The simulated hardware and the reference disagree; the message names the first difference."""


def check_tile(plan: Plan, tile: np.ndarray, vcd_dir: str | None = None, vcd: str | None = None) -> TileResult:
    """Simulate ``tile`` and compare it with ``reference.run`` and with the exact cycle model.

    ``vcd`` writes a VCD of the run in any case. On a difference, re-simulates with a VCD in ``vcd_dir`` (when
    given and ``vcd`` is not) and raises :class:`Mismatch` naming the first differing output pixel, the counter
    that differs, and the VCD path.
    """
    import os

    from edgespike import reference
    from edgespike.fpga.cycles import tile_cost

    tile = np.asarray(tile, dtype=np.uint8)
    want, trace = reference.run(plan.model, tile, trace=True)
    cost = tile_cost(plan, tile)
    res = run_tile(plan, tile, vcd=vcd)
    problems = []
    bad = np.argwhere(res.out != want)
    if len(bad):
        y, x = (int(v) for v in bad[0])
        problems.append(f"{len(bad)} output pixels differ, first at (y={y}, x={x}): rtl {res.out[y, x]}, "
                        f"reference {want[y, x]}")
    ref_spikes = sum(sum(v) for v in trace.spikes.values())
    for label, got, exp in (("spikes", res.spikes, ref_spikes), ("sops", res.sops, cost.sops),
                            ("cycles", res.cycles, cost.cycles)):
        if got != exp:
            problems.append(f"counter {label}: rtl {got}, model {exp}")
    if problems:
        if vcd:
            problems.append(f"VCD written to {vcd}")
        elif vcd_dir:
            os.makedirs(vcd_dir, exist_ok=True)
            path = os.path.join(vcd_dir, f"tile_{tile.shape[0]}x{tile.shape[1]}.vcd")
            run_tile(plan, tile, vcd=path)
            problems.append(f"VCD written to {path}")
        raise Mismatch("; ".join(problems))
    return res
