"""A bit-plane model's layer pipeline (:mod:`edgespike.rtl.pipeline`) in Amaranth's simulator, host side.

:func:`build_pipeline` makes the gateware for a frame size and folds; :func:`simulate_pipeline` streams one frame
through it and returns the output pixels, the cycles until the last output pixel, every engine's memory reads
and writes counted from its RAM enables and adds from its probes, and the pipeline's own counts (the residual
FIFO's writes and reads, the decoder's membranes and adds) from the pipeline's probes; :func:`expected_cycles`
and :func:`expected_pipeline` give the cycle model's cycles and pipeline counts to compare them with
(:mod:`edgespike.fpga.pipeline`). ``edgespike rtl sim`` and the tests use them.

:func:`simulate` runs the same frame on the simulator chosen by :func:`choose_simulator`: the design compiled by
Verilator (:mod:`edgespike.fpga.verilator`, the fastest on large models) when it is installed, else by yosys'
CXXRTL (:mod:`edgespike.fpga.cxxrtl`, about a thousand times faster than Amaranth's on small models) when a C++
compiler is there, else Amaranth's simulator (:func:`simulate_pipeline`), with one line saying why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgespike.fpga.pipeline import (
    LayerSpec,
    full_fold,
    layer_specs,
    linebuf_slice,
    pipeline_counts,
    pipeline_cycles,
    residual_depth,
    run_codes,
)

# Folds (lanes, group, parts) the simulation uses for the default model's shape when none are given: every
# output channel per cycle and two input channels per weight word in the body, as the planner's fastest body
# engines; the read-out one lane (one output channel) with 8 input channels per word.
BODY_FOLD = (64, 2, 2)
READOUT_FOLD = (1, 8, 2)


def default_folds(specs: list[LayerSpec]) -> list[tuple[int, int, int]]:
    """A fold per layer that divides its channels: ``BODY_FOLD`` (or less), the read-out ``READOUT_FOLD``."""
    folds = []
    for spec in specs:
        lanes, group, parts = READOUT_FOLD if spec.c_out == 1 else BODY_FOLD
        lanes = max(d for d in range(1, min(lanes, spec.c_out) + 1) if spec.c_out % d == 0)
        group = min(group, 1 << max(0, (spec.c_in - 1).bit_length()))
        folds.append((lanes, group, parts))
    return folds


def build_pipeline(model, height: int, width: int, folds: list | None = None, device: str | None = None):
    """The :class:`~edgespike.rtl.pipeline.LayerPipeline` of ``model`` for frames of ``height x width``, its layer
    specs and folds. With ``device`` (a bitstream's part) each line buffer is cut into that part's block-RAM slices
    (:func:`~edgespike.fpga.pipeline.linebuf_slice`); the simulators take one memory per line buffer, which has the
    same cycles and results."""
    from edgespike.rtl.pipeline import LayerPipeline

    specs = layer_specs(model)
    folds = default_folds(specs) if folds is None else [tuple(f) for f in folds]
    sizes = [(height, width)]
    for spec in specs:
        sizes.append(spec.out_size(*sizes[-1]))
    term = model.decoder.terms[0]

    def kwargs(spec, size, fold):
        fold = full_fold(fold)
        cut = linebuf_slice(spec, size[1], fold[2], fold[4], device) if device else 0
        return spec.gateware(*size, *fold, cut)

    dut = LayerPipeline([kwargs(s, size, fold) for s, size, fold in zip(specs, sizes[:-1], folds, strict=True)],
                        multiplier=int(term.multiplier[0]), shift=model.decoder.shift,
                        residual=model.decoder.residual, fifo_depth=residual_depth(specs, height, width))
    return dut, specs, folds


@dataclass
class PipelineRun:
    """One frame through the simulated pipeline."""

    out: np.ndarray
    cycles: int
    counts: list = field(default_factory=list)  # per engine: reads per memory, and ``writes``
    adds: list = field(default_factory=list)  # per engine: adds by use, counted from the gateware's probes
    # the pipeline's own: {"residual": {"reads", "writes"}, "decoder": {"pixels", "adds"}} (pixels: membranes the
    # decoder took, from its probe; adds: pixels x LayerPipeline.decoder_adds)
    pipeline: dict = field(default_factory=dict)
    simulator: str = "amaranth"
    seconds: float = 0.0  # wall time of the simulation itself
    build_seconds: float = 0.0  # wall time to find or build the compiled design (verilator, cxxrtl)


def simulate_pipeline(dut, x: np.ndarray, limit: int, progress=None) -> PipelineRun:
    """Stream frame ``x`` through ``dut`` (output always ready); stops after ``limit`` cycles.

    ``progress``, if given, is called with the cycles simulated so far every 1000 cycles.
    """
    from amaranth.sim import Simulator

    pixels = [int(v) for v in x.reshape(-1)]
    result = {}
    probes = [(e.lb_read, e.w_read, e.p_read, e.lb_write, e.add_spikes, e.bias_add, e.sar_step)
              for e in dut.engines]
    lanes = np.array([e.lanes for e in dut.engines], np.int64)
    own = (dut.res_write, dut.res_read, dut.dec_in)

    async def tb(ctx):
        outs, i, cycles = [], 0, 0
        counts = np.zeros((len(probes), 4), np.int64)
        adds = np.zeros((len(probes), 4), np.int64)  # synaptic, accumulate, bias, sar (times lanes at the end)
        pipe = np.zeros(3, np.int64)  # residual writes, residual reads, decoder membranes
        ctx.set(dut.o.ready, 1)
        while len(outs) < len(pixels) and cycles < limit:
            ctx.set(dut.i.valid, int(i < len(pixels)))
            ctx.set(dut.i.payload, pixels[i] if i < len(pixels) else 0)
            _, _, iready, ovalid, opay, *enables = await ctx.tick().sample(
                dut.i.ready, dut.o.valid, dut.o.payload, *own, *(p for group in probes for p in group))
            pipe += np.array(enables[:3], np.int64)
            sampled = np.array(enables[3:], np.int64).reshape(len(probes), 7)
            counts += sampled[:, :4]
            spikes = sampled[:, 4]
            adds += np.stack([[bin(int(v)).count("1") for v in spikes], spikes != 0, sampled[:, 5], sampled[:, 6]], 1)
            cycles += 1
            if progress is not None and cycles % 1000 == 0:
                progress(cycles)
            if iready and i < len(pixels):
                i += 1
            if ovalid:
                outs.append(opay)
        result.update(outs=outs, cycles=cycles, counts=[
            {"linebuf": int(c[0]), "weights": int(c[1]), "params": int(c[2]), "writes": {"linebuf": int(c[3])}}
            for c in counts], adds=[
            {"synaptic": int(a[0] * n), "accumulate": int(a[1] * n), "bias": int(a[2] * n), "sar": int(a[3] * n)}
            for a, n in zip(adds, lanes, strict=True)], pipeline=pipeline_stats(pipe, dut.decoder_adds))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    outs = result["outs"]
    if len(outs) != len(pixels):
        raise RuntimeError(f"the pipeline gave {len(outs)} of {len(pixels)} pixels in {result['cycles']} cycles")
    return PipelineRun(np.array(outs, np.uint8).reshape(x.shape), result["cycles"], result["counts"], result["adds"],
                       result["pipeline"])


def pipeline_stats(stats, decoder_adds: int) -> dict:
    """:attr:`PipelineRun.pipeline` from the pipeline's three probe counts (residual FIFO writes and reads, membranes
    the decoder took) and the decoder's adds per membrane (``LayerPipeline.decoder_adds``)."""
    writes, reads, pixels = (int(v) for v in stats)
    return {"residual": {"reads": reads, "writes": writes},
            "decoder": {"pixels": pixels, "adds": pixels * int(decoder_adds)}}


def expected_pipeline(dut, specs, x: np.ndarray) -> dict:
    """The cycle model's :attr:`PipelineRun.pipeline` for frame ``x`` through ``dut``
    (:func:`edgespike.fpga.pipeline.pipeline_counts` with ``dut``'s decoder constants)."""
    h, w = x.shape
    return pipeline_counts(specs, h, w, (dut.multiplier, dut.shift, dut.residual))


SIMULATORS = ("auto", "verilator", "cxxrtl", "amaranth")
"""``--simulator`` choices: ``auto`` is Verilator when it can run here, else CXXRTL when it can, else Amaranth's
simulator."""

SPEED = {"verilator": "Verilator (the gateware compiled to C++) runs about 0.5 M cycles per second of CPU for a "
                      "small model, about 0.2 M for the default s25: a 64x64 frame in about 12 s of CPU (docs/RTL.md)",
         "cxxrtl": "CXXRTL (the gateware compiled to C++) runs about 0.4 M cycles per second for a small model, "
                   "about 700 for the default s25 (docs/RTL.md)",
         "amaranth": "Amaranth's simulator runs a few hundred cycles per second for a large model"}

COMPILED = ("verilator", "cxxrtl")
"""The simulators that compile the design (a build on a design's first use, then cached)."""


def _compiled(simulator: str):
    """The module of a compiled simulator (:data:`COMPILED`)."""
    if simulator == "verilator":
        from edgespike.fpga import verilator

        return verilator
    from edgespike.fpga import cxxrtl

    return cxxrtl


def choose_simulator(requested: str = "auto") -> tuple[str, str | None]:
    """The simulator to use for ``requested`` (one of :data:`SIMULATORS`) and, when ``auto`` cannot take the
    fastest, the one line that says why. ``verilator`` or ``cxxrtl`` when it cannot run is refused
    (:class:`UserError`, saying what to install)."""
    from edgespike.errors import UserError
    from edgespike.fpga import cxxrtl, verilator

    if requested not in SIMULATORS:
        raise UserError(f"--simulator must be one of {', '.join(SIMULATORS)}, got {requested!r}")
    if requested == "amaranth":
        return "amaranth", None
    if requested in ("auto", "verilator"):
        why_v = verilator.unavailable()
        if why_v is None:
            return "verilator", None
        if requested == "verilator":
            raise UserError(f"--simulator verilator: {why_v}")
    why = cxxrtl.unavailable()
    if requested == "cxxrtl":
        if why is None:
            return "cxxrtl", None
        raise UserError(f"--simulator cxxrtl: {why}")
    if why is None:
        return "cxxrtl", (f"Verilator unavailable ({why_v}): using CXXRTL, far slower on large models (about 700 "
                          f"cycles/s for the default s25)")
    return "amaranth", (f"Verilator unavailable ({why_v}) and CXXRTL unavailable ({why}): using Amaranth's "
                        f"simulator (a few hundred cycles/s)")


def simulate(dut, x: np.ndarray, limit: int, simulator: str = "cxxrtl", progress=None, notice=None,
             building=None) -> PipelineRun:
    """Stream frame ``x`` through ``dut`` on ``simulator`` (``verilator``, ``cxxrtl`` or ``amaranth``; see
    :func:`choose_simulator`): the same stimulus and the same :class:`PipelineRun` either way.
    ``progress(cycles)`` is called as the simulation moves; ``notice(text)`` before a slow build step of a compiled
    route (the first use of a design compiles it, minutes for the default model; cached afterwards);
    ``building``, a context manager, is entered around that build (a heartbeat)."""
    import contextlib
    import time

    if simulator == "amaranth":
        t0 = time.monotonic()
        res = simulate_pipeline(dut, x, limit, progress)
        res.seconds = time.monotonic() - t0
        return res
    if simulator not in COMPILED:
        raise ValueError(f"simulator must be one of {', '.join(COMPILED)} or 'amaranth', got {simulator!r}")
    t0 = time.monotonic()
    with building if building is not None else contextlib.nullcontext():
        try:
            sim = _compiled(simulator).simulation(dut, notice)
        except RuntimeError as exc:  # the tools were there but the build failed: say what to do instead
            from edgespike.errors import UserError
            from edgespike.fpga import verilator

            if simulator != "verilator" or not isinstance(exc, verilator.Unavailable):
                raise
            raise UserError(f"{exc}; --simulator cxxrtl or amaranth runs the pipeline without Verilator "
                            f"(EDGESPIKE_NO_VERILATOR=1 makes auto skip it)") from None
    t1 = time.monotonic()
    try:
        res = sim.run(x, limit, progress)
    finally:
        sim.close()
    res.simulator, res.seconds, res.build_seconds = simulator, time.monotonic() - t1, t1 - t0
    return res


DEFAULT_FRAME = {"verilator": (4, 4), "cxxrtl": (4, 4), "amaranth": (4, 4)}
"""``rtl sim``'s default frame on each simulator. Not larger on the compiled ones: each frame size is a design of its
own, and the first build of the default model's takes longer than Amaranth's simulator on 4x4 (docs/RTL.md)."""

AUTO_AMARANTH_CYCLES = 100_000
"""``auto`` takes Amaranth's simulator for a frame of fewer cycles than this whose compiled build is not cached:
minutes of Python against a first compile that takes longer for large models (:func:`prefer_for_frame`)."""


def prefer_for_frame(simulator: str, requested: str, dut, cycles: int) -> tuple[str, str | None]:
    """``auto``'s choice for one frame: the compiled simulator :func:`choose_simulator` chose unless the design is
    not built for it yet and the frame is small (:data:`AUTO_AMARANTH_CYCLES`); then Amaranth's simulator and the
    line that says so. An explicit ``--simulator`` is kept."""
    if requested != "auto" or simulator not in COMPILED or cycles >= AUTO_AMARANTH_CYCLES:
        return simulator, None
    if _compiled(simulator).cached(dut):
        return simulator, None
    return "amaranth", (f"a small frame ({cycles} cycles) whose {simulator} build is not cached: Amaranth's "
                        f"simulator (--simulator {simulator} compiles it once: minutes for large models)")


def simulate_with_progress(dut, x: np.ndarray, limit: int, simulator: str, what: str, total: int | None = None,
                           enabled: bool = True) -> PipelineRun:
    """:func:`simulate` with a progress line on stderr (``what``: ``done / total cycles``, time left) and, on a
    compiled route, a line before each slow build step (only the first use of a design compiles)."""
    import contextlib
    import sys
    import time

    from edgespike.progress import Progress, heartbeat

    def notice(text: str) -> None:
        if enabled:
            print(f"edgespike: {text} (first use of this design only; cached) ...", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def building():
        with heartbeat(f"{what}: finding or building the compiled simulation", enabled=enabled):
            yield
        bar.start = time.monotonic()  # the time left follows the simulation, not the build

    bar = Progress(what, total, "cycles", enabled=enabled)
    try:
        res = simulate(dut, x, limit, simulator, progress=bar.update, notice=notice, building=building())
        bar.update(res.cycles, force=True)
    finally:
        bar.close()
    return res


def expected_cycles(specs, codes, folds) -> int:
    """The cycle model's count for the whole pipeline, the decoder's register stages included."""
    from edgespike.rtl.pipeline import LayerPipeline

    return pipeline_cycles(specs, codes[:-1], folds) + LayerPipeline.LATENCY


__all__ = ["AUTO_AMARANTH_CYCLES", "COMPILED", "DEFAULT_FRAME", "SIMULATORS", "SPEED", "PipelineRun", "build_pipeline",
           "choose_simulator", "default_folds", "expected_cycles", "expected_pipeline", "pipeline_stats",
           "prefer_for_frame", "run_codes", "simulate", "simulate_pipeline", "simulate_with_progress"]
