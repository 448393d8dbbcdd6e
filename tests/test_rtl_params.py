"""The fit check: widths and depths from the model, and refusals that name what does not fit and by how much,
raised before any gateware is built."""

from __future__ import annotations

import numpy as np
import pytest

from edgespike.model import Add, Conv, ConvTranspose, Encoder, Neuron
from edgespike.rtl.examples import chain_model
from edgespike.rtl.params import FitError, plan
from edgespike.validate import analyse, signed_bits

pytestmark = pytest.mark.hw


def test_widths_come_from_the_bounds_analysis():
    model = chain_model(seed=1, channels=4, layers=3, timesteps=3)
    p = plan(model, tile=(16, 16))
    a = analyse(model)
    for lp in p.layers:
        want = signed_bits(a.nodes[lp.name].state.magnitude + a.nodes[lp.conv].value.magnitude)
        assert lp.mbits == want
        assert lp.mem_depth == 16 * 16 * lp.groups
    assert p.halo == 3
    assert p.layers[0].bit_serial and not p.layers[1].bit_serial


def test_too_big_for_up5k_names_the_excess_and_fits_ecp5():
    model = chain_model(seed=1, channels=16, layers=3, timesteps=2)
    with pytest.raises(FitError, match=r"does not fit iCE40UP5K at tile 32x32: needs (\d+) EBR .* has 30 \((\d+) over"
                                       r"; largest: \S+ \d+ EBR"):
        plan(model, tile=(32, 32), device="up5k")
    p = plan(model, tile=(32, 32), device="ecp5-85f")
    assert p.usage["bram"] <= 208


def test_logic_excess_is_refused(monkeypatch):
    from edgespike.rtl import params

    tiny = params.Device("tiny", 1000, 10_000, ((36, 512),), "DP16KD (18 kbit)")
    monkeypatch.setitem(params.DEVICES, "tiny", tiny)
    model = chain_model(seed=1, channels=8, layers=3, timesteps=2)
    with pytest.raises(FitError, match=r"does not fit tiny: needs about (\d+) LUT4 .* has 1000 \((\d+) over\)"):
        plan(model, tile=(8, 8), device="tiny")


def test_one_lane_fits_where_wide_words_do_not():
    model = chain_model(seed=1, channels=8, layers=3, timesteps=2)
    with pytest.raises(FitError):
        plan(model, tile=(32, 32), device="up5k")
    p = plan(model, tile=(32, 32), device="up5k", lanes=1)
    assert p.usage["spram"] > 0


@pytest.mark.parametrize("mutate,message", [
    (lambda m: setattr(m.encoder, "kind", "rate"), "encoder 'rate' is not supported"),
    (lambda m: m.nodes.insert(2, Add("sum", ("lif0", "lif0"))), "'sum' .*Add.* is not supported"),
    (lambda m: setattr(m.nodes[1], "mprn", (1, 2)), "MPRN"),
    (lambda m: m.nodes.__setitem__(0, ConvTranspose("conv0", "input", np.ones((4, 1, 2, 2), np.int8),
                                                    np.zeros(4, np.int32))), "ConvTranspose"),
])
def test_unsupported_models_are_refused(mutate, message):
    model = chain_model(seed=1, channels=4, layers=2, timesteps=2)
    mutate(model)
    with pytest.raises(FitError, match=message):
        plan(model, tile=(8, 8))


def test_lanes_must_divide_channels():
    with pytest.raises(FitError, match="not a multiple of lanes = 3"):
        plan(chain_model(channels=4, layers=2), tile=(8, 8), lanes=3)


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
