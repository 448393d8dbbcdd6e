"""The accelerator's own energy per frame: its cycle model's counts of RAM reads and writes and of adds, times
per-access energies of a stated memory model (:mod:`edgespike.profile.memory`) and Horowitz's adds.

The counts come from :mod:`edgespike.fpga.cycles` (``FrameCost.accesses``, a plain
:class:`~edgespike.fpga.cycles.Accesses` record per RAM and per frame, which the tests check against the RAMs'
enables in the Amaranth simulation); any design that fills the same record (a future layer pipeline) is priced
the same way. Each RAM is priced as one memory of ``depth`` words of ``width`` bits: a read or write moves one
word. Adds are at the membrane width: one per synaptic update, three per lane of a fire word (threshold compare,
reset subtract, bias add), one per lane of an init word.
"""

from __future__ import annotations

import numpy as np

from edgespike.model import Model
from edgespike.profile import memory as M
from edgespike.profile.energy import add_pJ

DEVICES = ("up5k", "ecp5-85f")
TILES = ((32, 32), (48, 48), (64, 64), (96, 96), (128, 128))
FIRE_ADDS = 3


def energy(acc, memory_model: str | dict = "fpga-bram") -> dict:
    """Energy of the counts ``acc`` (an ``Accesses``) under ``memory_model``: total, adds, per RAM, and whether
    every RAM is inside the model's range."""
    m = M.model(memory_model)
    mems, inside = {}, True
    for name, r in acc.rams.items():
        n = r["reads"] + r["writes"]
        mems[name] = {"accesses": n, "pJ": n * m.access_pJ(r["depth"], r["width"]), "width": r["width"],
                      "depth": r["depth"], "range": m.where(r["depth"], r["width"])}
        inside &= mems[name]["range"] == "inside" or n == 0
    e_add = add_pJ(acc.add_bits)
    adds = (acc.adds.get("synaptic", 0) + FIRE_ADDS * acc.adds.get("fire", 0) + acc.adds.get("init", 0)) * e_add
    return {"memory": m.name, "memory_label": m.label, "range": m.range.text(), "inside": bool(inside),
            "adds_pJ": adds, "memories": mems, "total_pJ": adds + sum(v["pJ"] for v in mems.values())}


def plan_for(model: Model, tiles=TILES):
    """The first plan the model fits (smallest tile first, then ``DEVICES`` in order) whose tiles keep a core
    inside the model's halo; raises the last refusal."""
    from edgespike.fpga.params import FitError, plan

    err: Exception = FitError("no tile size tried")
    for tile in tiles:
        for dev in DEVICES:
            try:
                p = plan(model, device=dev, tile=tile)
            except FitError as exc:
                err = exc
                continue
            if min(tile) - 2 * p.halo >= p.multiple:  # a tile must leave a core inside the halo
                return p
            err = ValueError(f"{tile[0]}-pixel tiles leave no core inside the model's {p.halo}-pixel halo")
    raise err


def profile_entry(model: Model, frame: np.ndarray, tiles=TILES) -> dict:
    """The accelerator's counts and energy for ``frame`` under every memory model, or ``{"error": why}`` when
    the gateware cannot run the model (not installed, unsupported layers, does not fit any device)."""
    try:
        from edgespike.fpga.cycles import frame_cost
    except ModuleNotFoundError as exc:
        return {"error": f"not estimated: {exc.name} is not installed (pip install 'edgespike[hw]')"}
    try:
        p = plan_for(model, tiles)
    except Exception as exc:  # noqa: BLE001 - any refusal of the planner is reported, not fatal to the profile
        return {"error": f"not estimated: {exc}"}
    fc = frame_cost(p, frame)
    acc = fc.accesses
    return {"plan": f"{p.device.name}, {p.lanes} lanes, tile {p.tile[1]}x{p.tile[0]}", "tiles": fc.tiles,
            "cycles": fc.cycles, "sops": fc.sops, "counts": {"rams": acc.rams, "adds": acc.adds,
                                                              "add_bits": acc.add_bits},
            "energy": [energy(acc, name) for name in ("fpga-bram", "sram-fit", "packed-sram")]}


__all__ = ["energy", "plan_for", "profile_entry"]
