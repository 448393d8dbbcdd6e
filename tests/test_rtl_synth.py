"""Yosys synthesis of a layer engine for iCE40 and ECP5: no multiplier cells (the engine is adders-only), and
the single-port membrane RAM lands in iCE40 SPRAM. Synthesis only: no place-and-route, no bitstream."""

from __future__ import annotations

import numpy as np
import pytest

from edgespike.rtl.layer import LayerEngine
from edgespike.rtl.params import LayerParams
from edgespike.rtl.synth import MULTIPLIER_CELLS, synth_stats

pytestmark = pytest.mark.hw


def feature_rich_engine() -> LayerEngine:
    """Every datapath option at once: bit-serial shifts, 2 lanes x 2 groups, 3x3, LIF, count and UWD fields,
    on a 64x64 tile so that the membranes (16384 words) want SPRAM."""
    rng = np.random.default_rng(0)
    lp = LayerParams(
        index=0, name="n", conv="c", kind="neuron", cin=3, cout=4, k=3, stride=1, lanes=1,
        weight=rng.integers(-128, 128, size=(4, 3, 3, 3)).astype(np.int8), bias=[5, -7, 100, 0],
        theta=[300, 17, 4000, 9], reset="soft", leak=2, v_init="half", bit_serial=True, timesteps=4, mbits=11,
        keep_count=True, keep_uwd=False, level=0, max_h=64, max_w=64)
    return LayerEngine(lp, 6, 6, 2)


@pytest.mark.parametrize("family", ["ice40", "ecp5"])
def test_layer_engine_synthesises_without_multipliers(family):
    cells = synth_stats(feature_rich_engine(), family, name="engine")
    luts = cells.get("SB_LUT4", 0) + cells.get("LUT4", 0)
    assert cells.get("coarse:$add", 0) + cells.get("coarse:$sub", 0) > 0, f"no coarse netlist parsed: {cells}"
    assert luts > 100, f"implausibly small netlist: {cells}"
    found = {c: n for c, n in cells.items() if c.removeprefix("coarse:") in MULTIPLIER_CELLS}
    assert not found, f"multiplier cells in the layer engine: {found}"
    if family == "ice40":
        assert cells.get("SB_SPRAM256KA", 0) >= 1, f"membranes did not map to SPRAM: {cells}"
