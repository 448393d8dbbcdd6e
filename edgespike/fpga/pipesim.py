"""A bit-plane model's layer pipeline (:mod:`edgespike.rtl.pipeline`) in Amaranth's simulator, host side.

:func:`build_pipeline` makes the gateware for a frame size and folds; :func:`simulate_pipeline` streams one frame
through it and returns the output pixels, the cycles until the last output pixel and every engine's memory reads
and writes counted from its RAM enables; :func:`check_frame` compares the output with the CPU runtime and the
cycles and counts with the cycle model of :mod:`edgespike.fpga.pipeline`. ``edgespike rtl sim`` and the tests
use them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgespike.fpga.pipeline import LayerSpec, layer_specs, pipeline_cycles, residual_depth, run_codes

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


def build_pipeline(model, height: int, width: int, folds: list | None = None):
    """The :class:`~edgespike.rtl.pipeline.LayerPipeline` of ``model`` for frames of ``height x width``, its layer
    specs and folds."""
    from edgespike.rtl.pipeline import LayerPipeline

    specs = layer_specs(model)
    folds = default_folds(specs) if folds is None else [tuple(f) for f in folds]
    sizes = [(height, width)]
    for spec in specs:
        sizes.append(spec.out_size(*sizes[-1]))
    term = model.decoder.terms[0]
    dut = LayerPipeline([s.gateware(*size, *fold) for s, size, fold in zip(specs, sizes[:-1], folds, strict=True)],
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

    async def tb(ctx):
        outs, i, cycles = [], 0, 0
        counts = np.zeros((len(probes), 4), np.int64)
        adds = np.zeros((len(probes), 4), np.int64)  # synaptic, accumulate, bias, sar (times lanes at the end)
        ctx.set(dut.o.ready, 1)
        while len(outs) < len(pixels) and cycles < limit:
            ctx.set(dut.i.valid, int(i < len(pixels)))
            ctx.set(dut.i.payload, pixels[i] if i < len(pixels) else 0)
            _, _, iready, ovalid, opay, *enables = await ctx.tick().sample(
                dut.i.ready, dut.o.valid, dut.o.payload, *(p for group in probes for p in group))
            sampled = np.array(enables, np.int64).reshape(len(probes), 7)
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
            for a, n in zip(adds, lanes, strict=True)])

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    outs = result["outs"]
    if len(outs) != len(pixels):
        raise RuntimeError(f"the pipeline gave {len(outs)} of {len(pixels)} pixels in {result['cycles']} cycles")
    return PipelineRun(np.array(outs, np.uint8).reshape(x.shape), result["cycles"], result["counts"], result["adds"])


def expected_cycles(specs, codes, folds) -> int:
    """The cycle model's count for the whole pipeline, the decoder's register stages included."""
    from edgespike.rtl.pipeline import LayerPipeline

    return pipeline_cycles(specs, codes[:-1], folds) + LayerPipeline.LATENCY


__all__ = ["PipelineRun", "build_pipeline", "default_folds", "expected_cycles", "run_codes", "simulate_pipeline"]
