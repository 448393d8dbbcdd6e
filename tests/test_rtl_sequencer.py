"""Whole models through the sequencer in simulation, against ``reference.run`` pixel for pixel, and the RTL's
cycle / spike / synaptic-op counters against the exact cycle model and the reference trace: chains at full
resolution and the default model's shape (half-resolution body, ConvTranspose read-out)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from edgespike import reference
from edgespike.firmware.tiling import tiles
from edgespike.fpga.cycles import frame_cost, tile_cost
from edgespike.fpga.examples import chain_model, demo_image, down_model
from edgespike.fpga.params import plan
from edgespike.fpga.tilesim import Mismatch, check_tile, run_frame

pytestmark = pytest.mark.hw


@pytest.mark.parametrize("encoder,timesteps,readout,lanes,size", [
    ("direct", 3, "membrane", None, (8, 8)),  # bit-serial first layer, Integrator read-out
    ("direct", 2, "count", 1, (6, 7)),        # one lane per word, spike-count read-out
    ("uwe", 8, "uwd", None, (6, 6)),          # SAR encoder plane by plane, UWD read-out
])
def test_sequencer_matches_reference(tmp_path, encoder, timesteps, readout, lanes, size):
    model = chain_model(seed=7, channels=4, layers=3, timesteps=timesteps, encoder=encoder, readout=readout)
    p = plan(model, tile=size, lanes=lanes)
    img = demo_image(*size, seed=3)
    res = check_tile(p, img, vcd_dir=str(tmp_path))
    assert res.spikes > 0


# no shrinking: each example is a gateware simulation, and the failure message already names the first difference
@settings(max_examples=4, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(seed=st.integers(0, 2**31), channels=st.sampled_from([2, 4]), layers=st.integers(2, 3),
       one_lane=st.booleans(), readout=st.sampled_from(["membrane", "count"]),
       neurons=st.lists(st.tuples(st.sampled_from(["soft", "hard"]), st.integers(0, 3)), min_size=1, max_size=2),
       h=st.integers(3, 6), w=st.integers(3, 6), v_init=st.sampled_from(["zero", "half"]))
def test_sequencer_hypothesis(seed, channels, layers, one_lane, readout, neurons, h, w, v_init):
    model = chain_model(seed=seed % 1000, channels=channels, layers=layers, timesteps=2, readout=readout,
                        neurons=tuple(neurons), v_init=v_init)
    p = plan(model, tile=(6, 6), lanes=1 if one_lane else None)
    check_tile(p, demo_image(h, w, seed=seed % 7))


def test_dncnn_shaped_model_from_the_shared_generator():
    """``edgespike.testing.dncnn_like``: thresholds calibrated to ~20% firing, v_init half, residual read-out."""
    from edgespike.testing import calibration_frame, dncnn_like

    model = dncnn_like(depth=3, width=4, T=2, seed=4, calib_size=16)
    p = plan(model, tile=(8, 8), device="ecp5-85f")
    res = check_tile(p, calibration_frame(8, seed=2))
    assert res.spikes > 0


def test_three_layers_eight_channels():
    """Issue 6's acceptance model (3 layers, 8 channels) on a 12x12 tile: what fits the CI time budget."""
    model = chain_model(seed=11, channels=8, layers=3, timesteps=2, encoder="direct")
    p = plan(model, tile=(12, 12), device="ecp5-85f")
    res = check_tile(p, demo_image(12, 12, seed=5))
    assert res.spikes > 0


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("EDGESPIKE_RTL_LONG"),
                    reason="~360k simulated cycles (several CPU-minutes): set EDGESPIKE_RTL_LONG=1")
def test_acceptance_three_layers_eight_channels_32x32():
    """Issue 6 acceptance at full size: 3 layers, 8 channels, a 32x32 tile, pixel for pixel (passed once
    by hand, see docs/RTL.md; too slow for every CI run with Amaranth's Python simulator)."""
    model = chain_model(seed=11, channels=8, layers=3, timesteps=2, encoder="direct")
    p = plan(model, tile=(32, 32), device="ecp5-85f")  # 8 lanes of membranes per word: too wide for UP5K SPRAM
    res = check_tile(p, demo_image(32, 32, seed=5))
    assert res.spikes > 0


@pytest.mark.parametrize("seed,lanes,size", [
    (0, None, (6, 6)),  # one block of 4 lanes; the read-out layer packs 4 positions per word
    (1, 2, (4, 6)),     # two blocks of 2 lanes: the previous layer's bitmap is replayed once per block
])
def test_half_resolution_model_matches_reference(tmp_path, seed, lanes, size):
    """The default model's shape: Conv 5x5 stride 2 on direct pixels, 3x3 body at half resolution,
    ConvTranspose 6x6 stride 2 into an Integrator, residual decoder."""
    model = down_model(seed=seed, width=4, depth=4, timesteps=2)
    p = plan(model, tile=size, device="ecp5-85f", lanes=lanes)
    assert [lp.op for lp in p.layers] == ["conv", "conv", "conv", "convT"] and p.layers[-1].narrow == (p.lanes > 1)
    res = check_tile(p, demo_image(*size, seed=3), vcd_dir=str(tmp_path))
    assert res.spikes > 0


def test_half_resolution_frame_as_halo_tiles_equals_reference():
    """The default shape's halo (8 layers: 5x5 stride 2, six 3x3 at half resolution, ConvTranspose 6x6) is wide
    enough: the hardware arithmetic (the cycle model, equal to the gateware tile by tile in the tests above) on
    halo'd tiles, stitched, equals the reference on the whole frame; tiles start on even coordinates."""
    model = down_model(seed=3, width=4, depth=8, timesteps=2)
    p = plan(model, tile=(48, 40), device="ecp5-85f")
    frame = demo_image(70, 58, seed=1)
    out = np.zeros_like(frame)
    regions = list(tiles(frame.shape, p.tile, p.halo, p.multiple))
    assert p.halo == 18 and len(regions) > 4
    for (y0, y1, x0, x1), (cy0, cy1, cx0, cx1) in regions:
        assert all(v % 2 == 0 for v in (y0, x0, cy0, cx0))
        c = tile_cost(p, frame[y0:y1, x0:x1])
        out[cy0:cy1, cx0:cx1] = c.out[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    want = reference.run(model, frame)
    bad = np.argwhere(out != want)
    assert not len(bad), f"first difference at {tuple(bad[0])}: tiles {out[tuple(bad[0])]} ref {want[tuple(bad[0])]}"


def test_frame_as_halo_tiles_equals_reference():
    """A frame larger than the tile: halo'd tiles, stitched cores, equal to the reference on the whole frame."""
    model = chain_model(seed=5, channels=4, layers=2, timesteps=2, encoder="direct")
    p = plan(model, tile=(8, 9))
    frame = demo_image(13, 9, seed=1)
    assert len(list(tiles(frame.shape, p.tile, p.halo))) == 4
    out, results = run_frame(p, frame)
    want = reference.run(model, frame)
    bad = np.argwhere(out != want)
    assert not len(bad), f"first difference at {tuple(bad[0])}: rtl {out[tuple(bad[0])]} ref {want[tuple(bad[0])]}"
    assert frame_cost(p, frame).cycles == sum(r.cycles for r in results)


def test_a_wrong_model_is_reported_with_the_first_difference(tmp_path):
    """The comparison can fail: hardware built from a different model than the reference checks."""
    model = chain_model(seed=7, channels=4, layers=2, timesteps=2)
    p = plan(model, tile=(6, 6))
    p.model = chain_model(seed=8, channels=4, layers=2, timesteps=2)
    with pytest.raises(Mismatch, match=r"first at \(y=\d+, x=\d+\).*VCD written"):
        check_tile(p, demo_image(6, 6), vcd_dir=str(tmp_path))
    assert list(tmp_path.glob("*.vcd"))


def test_cycle_model_counts_every_phase():
    model = chain_model(seed=7, channels=4, layers=3, timesteps=3)
    p = plan(model, tile=(16, 16))
    c = tile_cost(p, demo_image(16, 16))
    assert c.cycles == c.params + c.init + sum(c.input) + sum(c.fire) + c.readout
    assert np.array_equal(c.out, reference.run(model, demo_image(16, 16)))


def test_cycle_model_of_the_default_shape_equals_the_reference():
    """The full-size default shape (8 layers, 64 channels, T = 8) costed on a 64x64 tile by the cycle model,
    whose arithmetic equals the reference pixel for pixel (the gateware itself is simulated on small instances)."""
    model = down_model(seed=0, width=64, depth=8, timesteps=8)
    p = plan(model, tile=(64, 64), device="ecp5-85f")
    img = demo_image(64, 64, seed=2)
    c = tile_cost(p, img)
    assert np.array_equal(c.out, reference.run(model, img))
    assert c.sops > c.cycles, "the 16-lane engine should average more than one synaptic op per cycle"
