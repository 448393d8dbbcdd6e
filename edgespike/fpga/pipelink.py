"""The layer pipeline behind the framed link, host side: what its IDENT announces, and its gateware.

A pipeline board (:class:`edgespike.rtl.board.PipelineBoard`) runs regions of exactly one size, the frame size
its :class:`~edgespike.rtl.pipeline.LayerPipeline` is built for. Its IDENT (:func:`edgespike.rtl.link.pipeline_ident`)
carries what the host needs to cut a frame into such regions and to wait for each: the model fingerprint, the
region, the halo (the model's receptive radius) and the worst-case cycles of a region, which come from the cycle
model of :mod:`edgespike.fpga.pipeline` here (the gateware imports nothing from the host side).
"""

from __future__ import annotations

import zlib

import numpy as np

from edgespike.fpga.pipeline import LayerSpec, pipeline_cycles, receptive_radius

# Cycles a region may take beyond the cycle model's worst case of the pipeline alone (input always valid): the
# link offers the buffered pixels one every second cycle (its buffer's read is synchronous), the decoder's
# register stages (LayerPipeline.LATENCY) and PipelineTop's first and last cycles
FEED_CYCLES_PER_PIXEL = 1
TOP_CYCLES = 4


def worst_region_cycles(specs: list[LayerSpec], folds: list, height: int, width: int, latency: int) -> int:
    """The most cycles :class:`~edgespike.rtl.top.PipelineTop` can count for a ``height x width`` region.

    The cycle model (:func:`~edgespike.fpga.pipeline.pipeline_cycles`) with every input code at ``2**T - 1`` in
    every layer (every bit plane of every channel spiking: the most adds per tap), plus one cycle per pixel for the
    link's feed, ``latency`` (the decoder's stages) and ``TOP_CYCLES``. Cycles only grow with the adds and with
    later input, so no region takes more.
    """
    codes, size = [], (height, width)
    for spec in specs:
        codes.append(np.full((spec.c_in, *size), 2**spec.T - 1, np.int64))
        size = spec.out_size(*size)
    return (pipeline_cycles(specs, codes, folds) + FEED_CYCLES_PER_PIXEL * height * width + latency
            + TOP_CYCLES)


def structure_key(specs: list[LayerSpec], folds: list, region: tuple[int, int]) -> int:
    """CRC-32 of what the pipeline's gateware fixes besides the weights: layers, folds, region."""
    parts = [(type(s.conv).__name__, s.c_in, s.c_out, s.k, s.stride, s.padding, s.T) for s in specs]
    return zlib.crc32(repr((parts, [tuple(f) for f in folds], tuple(region))).encode())


def pipeline_board(model, region: tuple[int, int], folds: list | None = None, device: str = "sim"):
    """The layer pipeline of a bit-plane ``model`` for regions of ``region`` (height, width), and its IDENT
    (clock and UART divisor 0: :class:`~edgespike.rtl.board.PipelineLinkTop` fills them in for a board, the
    simulation server sets the divisor).

    Raises
    ------
    PipelineError
        The model does not run on the layer pipeline.
    ValueError
        A region side is not a multiple of the model's size multiple or over 255 (the TILE header's bytes).
    """
    from edgespike.fpga.pipesim import build_pipeline

    h, w = region
    mult = model.size_multiple
    if not (0 < h <= 255 and 0 < w <= 255) or h % mult or w % mult:
        raise ValueError(f"a pipeline region of {h}x{w}: its sides must be 1..255 and multiples of {mult}")
    dut, specs, folds = build_pipeline(model, h, w, folds)
    return dut, region_ident(model, specs, folds, region, dut.LATENCY, device)


def region_ident(model, specs: list[LayerSpec], folds: list, region: tuple[int, int], latency: int,
                 device: str):
    """The IDENT of ``model``'s pipeline with ``folds`` for ``region``, whose decoder has ``latency`` stages."""
    from edgespike.firmware.accelerator import model_fingerprint
    from edgespike.rtl.link import pipeline_ident

    worst = worst_region_cycles(specs, folds, *region, latency)
    return pipeline_ident(model_fingerprint(model), tuple(region), receptive_radius(specs), model.timesteps,
                          model.size_multiple, device, structure_key(specs, folds, region), worst)



# What the framed link adds to a pipeline bitstream over the raw UART top (PipelineBoardTop): its two buffers (a
# region in, a region and 13 bytes out) in block RAM, and LINK_CELLS logic cells: the link, PipelineTop and the
# LEDs, measured on the iCE40UP5K (yosys + nextpnr --pack-only, the small shipped model, 64x64 regions: 4633 LC
# framed against 3415 raw; docs/HARDWARE.md, "The link for the layer pipeline on the iCEBreaker")
LINK_CELLS = 1220


def link_blocks(region: tuple[int, int], device: str) -> int:
    """Block RAMs of the link's request and reply buffers for ``region``."""
    from edgespike.fpga.pipeline import ram_blocks

    n = region[0] * region[1]
    return ram_blocks(8, n, device) + ram_blocks(8, n + 13, device)


def board_top(board: str, model, dut, specs: list[LayerSpec], plan, region: tuple[int, int], baud: int,
              divisor: int, pll_hz: float | None):
    """The top level of a pipeline bitstream and one line saying which: the framed link
    (:class:`~edgespike.rtl.board.PipelineLinkTop`, what ``edgespike run --backend fpga`` talks to) when the
    region fits its TILE header (at most 255 x 255) and the part has the block RAM and logic for its buffers and
    ``LINK_CELLS`` beside the plan's, else the raw UART top (:class:`~edgespike.rtl.pipeline.PipelineBoardTop`)."""
    from edgespike.fpga.pipeline import PARTS
    from edgespike.rtl.pipeline import PipelineBoardTop

    _, _, blocks, cells = PARTS[plan.device]
    h, w = region
    need = plan.total_blocks + link_blocks(region, plan.device)
    why = None
    if h > 255 or w > 255:
        why = f"regions of {h}x{w} are over the link's 255x255"
    elif need > blocks:
        why = f"the link's buffers for {h}x{w} regions need {need} of {blocks} block RAMs with the pipeline"
    elif plan.logic + LINK_CELLS > cells:
        why = f"the link's ~{LINK_CELLS} cells with the pipeline's ~{plan.logic} are over {cells}"
    if why:
        return (PipelineBoardTop(dut, divisor, pll_hz=pll_hz),
                f"raw UART top (no framed link: {why}; --tile HxW plans a smaller frame, e.g. 64x64)")
    from edgespike.rtl.board import PipelineLinkTop

    ident = region_ident(model, specs, plan.folds, region, dut.LATENCY, plan.device)
    return (PipelineLinkTop(dut, ident, board, baud, pll_hz),
            f"framed link: regions of exactly {h}x{w}, halo {ident.halo}, {need} of {blocks} block RAMs")
