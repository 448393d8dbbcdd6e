"""How a frame is cut into the accelerator's halo'd tiles, and what one tile returns.

The board-side driver (:mod:`edgespike.firmware.accelerator`), the gateware simulation (:mod:`edgespike.fpga.tilesim`)
and the cycle model (:mod:`edgespike.fpga.cycles`) cut frames the same way, with this module. It needs numpy only,
so the edge board runs it without Amaranth.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

Region = tuple[int, int, int, int]
"""``(y0, y1, x0, x1)`` in frame coordinates, end exclusive."""


@dataclass
class TileResult:
    """One tile's output pixels and the hardware's counters for it."""

    out: np.ndarray
    cycles: int
    spikes: int
    sops: int


def tiles(shape: tuple[int, int], tile: tuple[int, int], halo: int,
          multiple: int = 1) -> Iterator[tuple[Region, Region]]:
    """Cut a frame into regions of at most ``tile`` with ``halo`` pixels of context around each core.

    Yields ``(region, core)``: the region to run and the core of it to keep. Regions are clipped to the frame, so
    the hardware's zero padding at a region edge is the frame's own padding wherever the region touches the frame
    border. With ``multiple`` > 1 (a model that halves the resolution), the frame, ``tile`` and ``halo`` must be
    multiples of it, and so is every region.

    Raises
    ------
    ValueError
        A tile side leaves no core inside the halo: the model needs larger tiles than the device has.
    """

    def spans(n: int, t: int) -> list[tuple[int, int, int, int]]:
        if n <= t:
            return [(0, n, 0, n)]
        core = t - 2 * halo
        if core < multiple:
            raise ValueError(f"{t}-pixel tiles leave no core inside this model's {halo}-pixel halo: the model needs "
                             f"tiles of at least {2 * halo + multiple} pixels (a larger device or a shallower model)")
        core -= core % multiple
        return [(max(0, c0 - halo), min(n, min(n, c0 + core) + halo), c0, min(n, c0 + core))
                for c0 in range(0, n, core)]

    rows, cols = spans(shape[0], tile[0]), spans(shape[1], tile[1])  # both checked before the first tile runs
    for y0, y1, cy0, cy1 in rows:
        for x0, x1, cx0, cx1 in cols:
            yield (y0, y1, x0, x1), (cy0, cy1, cx0, cx1)


def regions(shape: tuple[int, int], size: tuple[int, int], halo: int) -> Iterator[tuple[Region, Region]]:
    """Cut a frame into regions of exactly ``size`` (a layer pipeline built for one frame size), overlapping by
    at least ``halo`` pixels of context around each core.

    Yields ``(region, core)`` like :func:`tiles`. A region is never clipped: the last one in a row or column is
    moved back to end at the frame's edge (more overlap), so where a region touches the frame border it is the
    frame's own border and the model's zero padding there is the frame's. With a size multiple > 1 the frame,
    ``size`` and ``halo`` must be multiples of it; then so is every region's origin.

    Raises
    ------
    ValueError
        The frame is smaller than a region in some dimension, or a region leaves no core inside the halo.
    """

    def spans(n: int, t: int) -> list[tuple[int, int, int, int]]:
        if n < t:
            raise ValueError(f"regions of exactly {size[0]}x{size[1]} pixels do not fit a {shape[0]}x{shape[1]} "
                             "frame: the frame must be at least that large")
        if n > t and t <= 2 * halo:
            raise ValueError(f"{t}-pixel regions leave no core inside this model's {halo}-pixel halo")
        out, c0 = [], 0
        while c0 < n:
            x0 = min(max(0, c0 - halo), n - t)
            c1 = n if x0 + t == n else x0 + t - halo
            out.append((x0, x0 + t, c0, c1))
            c0 = c1
        return out

    rows, cols = spans(shape[0], size[0]), spans(shape[1], size[1])
    for y0, y1, cy0, cy1 in rows:
        for x0, x1, cx0, cx1 in cols:
            yield (y0, y1, x0, x1), (cy0, cy1, cx0, cx1)
