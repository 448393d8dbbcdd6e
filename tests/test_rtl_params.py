"""The fit check: widths and depths from the model, and refusals that name what does not fit and by how much,
raised before any gateware is built; the default model's shape at full size on the ECP5-85F."""

from __future__ import annotations

import numpy as np
import pytest

from edgespike.fpga.examples import chain_model, down_model
from edgespike.fpga.params import FitError, plan
from edgespike.model import Add, Conv, Encoder, Neuron
from edgespike.validate import analyse, signed_bits

pytestmark = pytest.mark.hw


def test_widths_come_from_the_bounds_analysis():
    model = chain_model(seed=1, channels=4, layers=3, timesteps=3)
    p = plan(model, tile=(16, 16))
    a = analyse(model)
    for lp in p.layers:
        want = signed_bits(a.nodes[lp.name].state.magnitude + a.nodes[lp.conv].value.magnitude)
        assert lp.mbits == want
    assert p.mbits == max(lp.mbits for lp in p.layers)
    assert p.lanes == 4 and p.layers[-1].narrow and not p.layers[0].narrow
    assert p.mem_depth == 16 * 16  # one block of a full-resolution layer; the read-out layer packs 4 per word
    assert p.halo == 3
    assert p.layers[0].bit_serial and not p.layers[1].bit_serial


def test_too_big_for_up5k_names_the_excess_and_fits_ecp5():
    model = chain_model(seed=1, channels=16, layers=3, timesteps=2)
    with pytest.raises(FitError, match=r"does not fit iCE40UP5K at tile 32x32 with 16 lanes: needs (\d+) EBR .* "
                                       r"has 30 \((\d+) over; largest: \S+ \d+ EBR"):
        plan(model, tile=(32, 32), device="up5k", lanes=16)
    p = plan(model, tile=(32, 32), device="ecp5-85f")
    assert p.usage["bram"] <= 208


def test_logic_excess_is_refused(monkeypatch):
    from edgespike.fpga import params

    tiny = params.Device("tiny", 1000, 10_000, ((36, 512),), "DP16KD (18 kbit)")
    monkeypatch.setitem(params.DEVICES, "tiny", tiny)
    model = chain_model(seed=1, channels=8, layers=3, timesteps=2)
    with pytest.raises(FitError, match=r"does not fit tiny: needs about (\d+) LUT4 .* has 1000 \((\d+) over\)"):
        plan(model, tile=(8, 8), device="tiny")


def test_fewer_lanes_fit_where_wide_words_do_not_and_are_chosen_by_default():
    model = chain_model(seed=1, channels=8, layers=3, timesteps=2)
    with pytest.raises(FitError):
        plan(model, tile=(32, 32), device="up5k", lanes=8)
    p = plan(model, tile=(32, 32), device="up5k")
    assert p.lanes < 8 and p.usage["spram"] > 0


def test_the_default_shape_at_full_size_fits_the_ecp5_85f():
    """8 layers, 64 channels, T = 8, half-resolution body: accepted on the ULX3S's ECP5-85F at a 64x64 tile
    (16 lanes: weights, one block of membranes, two spike bitmaps); refused on the UP5K, naming the excess."""
    model = down_model(seed=0, width=64, depth=8, timesteps=8)
    p = plan(model, tile=(64, 64), device="ecp5-85f")
    assert p.lanes == 16 and p.usage["bram"] <= 208 and p.halo == 18
    assert [lp.groups for lp in p.layers] == [4] * 7 + [1] and p.layers[-1].op == "convT"
    assert {r.name: r.depth for r in p.rams}["membranes"] == 32 * 32  # one block, half resolution
    with pytest.raises(FitError, match=r"64 lanes: needs \d+ DP16KD .* \((\d+) over; largest: weights"):
        plan(model, tile=(64, 64), device="ecp5-85f", lanes=64)
    with pytest.raises(FitError, match=r"does not fit iCE40UP5K at tile 64x64 with \d+ lanes: needs \d+ EBR"):
        plan(model, tile=(64, 64), device="up5k")


@pytest.mark.parametrize("mutate,message", [
    (lambda m: setattr(m.encoder, "kind", "rate"), "encoder 'rate' is not supported"),
    (lambda m: m.nodes.insert(2, Add("sum", ("lif0", "lif0"))), "'sum' .*Add.* is not supported"),
    (lambda m: setattr(m.nodes[1], "mprn", (1, 2)), "MPRN"),
])
def test_unsupported_models_are_refused(mutate, message):
    model = chain_model(seed=1, channels=4, layers=2, timesteps=2)
    mutate(model)
    with pytest.raises(FitError, match=message):
        plan(model, tile=(8, 8))


def test_lanes_must_divide_channels():
    with pytest.raises(FitError, match="not a multiple of lanes = 3"):
        plan(chain_model(channels=4, layers=2), tile=(8, 8), lanes=3)


def test_a_decoder_reading_an_earlier_layer_is_refused():
    model = chain_model(seed=1, channels=1, layers=2, timesteps=2, readout="count")
    model.decoder.terms[0].node = "lif0"
    with pytest.raises(FitError, match="decoder reads 'lif0'.* keeps only the last layer \\('lif1'\\)"):
        plan(model, tile=(8, 8))


def test_tile_sides_must_be_multiples_of_the_models_resolution_steps():
    model = down_model(seed=1, width=2, depth=3, timesteps=1)
    with pytest.raises(FitError, match="tile 9x8 is not a multiple of 2"):
        plan(model, tile=(9, 8), device="ecp5-85f")
    assert plan(model, tile=(8, 8), device="ecp5-85f").multiple == 2


def test_tile_larger_than_the_protocol_is_refused():
    with pytest.raises(FitError, match="255"):
        plan(chain_model(), tile=(256, 16), device="ecp5-85f")


def test_branching_graph_is_refused():
    model = chain_model(seed=1, channels=4, layers=2, timesteps=2)
    w = np.ones((1, 1, 3, 3), np.int8)
    model.nodes[2] = Conv("conv1", "input", np.ones((1, 1, 3, 3), np.int8), np.zeros(1, np.int32))
    del w
    with pytest.raises(FitError, match="single chain"):
        plan(model, tile=(8, 8))


def test_uwe_and_direct_both_plan():
    assert plan(chain_model(encoder="uwe", timesteps=8), tile=(8, 8)).encoder == "uwe"
    m = chain_model()
    m.encoder = Encoder("direct")
    assert plan(m, tile=(8, 8)).layers[0].bit_serial
    assert isinstance(m.nodes[1], Neuron)
