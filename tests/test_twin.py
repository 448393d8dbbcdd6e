"""The float ANN twin: exact where the rate view is exact, and clear refusals elsewhere.

When every spiking layer is driven by a constant current (its inputs come from the frame through linear nodes
only), a soft-reset IF neuron's spike count is exactly the quant twin's ``clip(floor((T*I + v0) / theta), 0, T)``
and everything after it is linear in the counts, so the quant twin must equal the reference bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgespike import reference
from edgespike.frames import pad_to_multiple
from edgespike.model import (
    Add,
    Concat,
    Conv,
    ConvTranspose,
    Decoder,
    Encoder,
    Integrator,
    Model,
    ModelError,
    Neuron,
    ReadoutTerm,
)
from edgespike.twin import Twin, layers


def reference_readout(model: Model, frame: np.ndarray) -> np.ndarray:
    """The decoder sum R of the reference (before shift, rounding and clipping, which could hide differences)."""
    _, trace = reference.run(model, frame, trace=True)
    R = 0
    for t in model.decoder.terms:
        q = trace.membranes[t.node] if t.quantity == "membrane" else trace.counts[t.node]
        R = R + int(t.multiplier[0]) * q[0]
    return R


def i8(rng, lo, hi, shape):
    return rng.integers(lo, hi + 1, shape).astype(np.int8)


def i32(a):
    return np.asarray(a, np.int32)


def shallow(rng, v_init="half", T=6, C=4) -> Model:
    """conv -> IF -> conv -> Integrator: one spiking layer with constant drive."""
    return Model(
        nodes=[
            Conv("c0", "input", i8(rng, -20, 20, (C, 1, 3, 3)), i32(rng.integers(-500, 500, C))),
            Neuron("n0", "c0", i32(rng.integers(300, 2000, C)), v_init=v_init),
            Conv("c1", "n0", i8(rng, -40, 40, (1, C, 3, 3)), i32([7])),
            Integrator("out", "c1"),
        ],
        timesteps=T,
        decoder=Decoder([ReadoutTerm("out", "membrane", i32([5]))], shift=4),
    )


def branchy(rng, T=5) -> Model:
    """Both spiking layers see constant currents; stride 2, ConvTranspose, Concat, Add and a count read-out."""
    return Model(
        nodes=[
            Conv("a", "input", i8(rng, -10, 10, (3, 1, 3, 3)), i32(rng.integers(-300, 300, 3))),
            Neuron("na", "a", i32(rng.integers(200, 900, 3)), v_init="half"),
            Conv("down", "input", i8(rng, -10, 10, (2, 1, 3, 3)), i32(rng.integers(-300, 300, 2)), stride=2),
            Neuron("nd", "down", i32(rng.integers(200, 900, 2))),
            ConvTranspose("up", "nd", i8(rng, -30, 30, (2, 2, 4, 4)), i32([1, -2]), padding=1),
            Concat("cat", ("na", "up")),
            Conv("mix", "cat", i8(rng, -30, 30, (1, 5, 3, 3)), i32([-4])),
            Conv("skip", "input", i8(rng, -3, 3, (1, 1, 1, 1)), i32([2])),
            Add("sum", ("mix", "skip")),
            Integrator("out", "sum"),
            Conv("one", "input", i8(rng, -5, 5, (1, 1, 3, 3)), i32([40])),
            Neuron("n1", "one", i32([300]), v_init="half"),
        ],
        timesteps=T,
        decoder=Decoder([ReadoutTerm("out", "membrane", i32([3])), ReadoutTerm("n1", "count", i32([-2]))],
                        shift=3),
    )


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("v_init", ["half", "zero"])
def test_quant_twin_is_exact_for_a_shallow_net(seed, v_init):
    rng = np.random.default_rng(seed)
    model = shallow(rng, v_init)
    frame = rng.integers(0, 256, (11, 14)).astype(np.uint8)
    np.testing.assert_array_equal(Twin(model, "quant").denoise(frame), reference.run(model, frame))
    np.testing.assert_array_equal(Twin(model, "quant", np.float64).denoise(frame), reference.run(model, frame))
    np.testing.assert_array_equal(Twin(model, "quant").readout_value(frame), reference_readout(model, frame))


@pytest.mark.parametrize("seed", range(3))
def test_quant_twin_is_exact_across_branches_strides_and_sizes(seed):
    rng = np.random.default_rng(100 + seed)
    model = branchy(rng)
    frame = rng.integers(0, 256, (9, 13)).astype(np.uint8)  # odd sizes: edge padding to the multiple of 2
    twin = Twin(model, "quant")
    np.testing.assert_array_equal(twin.denoise(frame), reference.run(model, frame))
    np.testing.assert_array_equal(twin.readout_value(pad_to_multiple(frame, 2)), reference_readout(model, frame))


def test_relu_twin_is_the_large_T_limit():
    """With many steps the spike count per step tends to clip(I/theta, 0, 1): quant and relu twins converge."""
    rng = np.random.default_rng(5)
    model = shallow(rng, T=512)
    frame = rng.integers(0, 256, (12, 12)).astype(np.uint8)
    x = frame
    q = Twin(model, "quant", np.float64).values(x)["n0"]
    r = Twin(model, "relu", np.float64).values(x)["n0"]
    assert np.abs(q - r).max() <= 1 / 512 + 1e-12
    assert np.abs(r).max() <= 1 and r.min() >= 0


def test_values_are_rates_and_currents():
    rng = np.random.default_rng(9)
    model = shallow(rng, T=4)
    frame = rng.integers(0, 256, (8, 8)).astype(np.uint8)
    _, trace = reference.run(model, frame, trace=True)
    vals = Twin(model, "quant").values(frame)
    np.testing.assert_allclose(vals["n0"] * 4, trace.counts["n0"])  # rate = count / T
    np.testing.assert_allclose(vals["out"] * 4, trace.membranes["out"])  # Integrator membrane = T * I


def test_layers_description():
    rng = np.random.default_rng(0)
    desc = layers(branchy(rng))
    assert [d.op for d in desc] == ["conv", "rate", "conv", "rate", "conv_transpose", "concat", "conv", "conv",
                                    "add", "integrator", "conv", "rate"]
    down = desc[2]
    assert down.stride == 2 and down.padding == 1 and down.weight.dtype == np.float64
    up = desc[4]
    assert up.padding == 1 and up.weight.shape == (2, 2, 4, 4)
    assert desc[1].theta.shape == (3,) and desc[1].v_init == "half"


def _with(model: Model, **changes) -> Model:
    for name, fields in changes.items():
        for k, v in fields.items():
            setattr(model.node(name), k, v)
    return model


@pytest.mark.parametrize("change,match", [
    ({"n0": {"leak_shift": 2}}, "LIF"),
    ({"n0": {"mprn": (3, 4)}}, "MPRN"),
    ({"n0": {"reset": "hard"}}, "hard reset"),
])
def test_refuses_neurons_without_a_rate_twin(change, match):
    model = _with(shallow(np.random.default_rng(0)), **change)
    with pytest.raises(ModelError, match=f"ANN twin cannot model this: .*{match}"):
        Twin(model)


def test_refuses_other_encoders_and_read_outs():
    model = shallow(np.random.default_rng(0))
    model.encoder = Encoder("rate", seed=3)
    with pytest.raises(ModelError, match="encoder 'rate'"):
        Twin(model)
    model = Model(nodes=[Conv("c", "input", np.ones((1, 1, 1, 1), np.int8), i32([0])), Neuron("n", "c", i32([1]))],
                  timesteps=8, encoder=Encoder("uwe"), decoder=Decoder([ReadoutTerm("n", "uwd", i32([1]))]))
    with pytest.raises(ModelError, match="encoder 'uwe'"):
        Twin(model)
    model.encoder = Encoder("direct")
    with pytest.raises(ModelError, match=r"decoder term uwd\(n\)"):
        Twin(model)


def test_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        Twin(shallow(np.random.default_rng(0)), mode="tanh")


def test_quant_twin_equals_the_training_q_ann():
    """The twin read from the exported integers is the training side's q-ANN (``QSpikingDnCNN.qann``) exactly."""
    torch = pytest.importorskip("torch")
    qnet = pytest.importorskip("edgespike.train.qnet")
    torch.manual_seed(0)
    net = qnet.QSpikingDnCNN(depth=4, width=6, timesteps=4)
    frame = np.random.default_rng(0).integers(0, 256, (19, 23)).astype(np.uint8)
    net.calibrate(torch.from_numpy(frame.astype(np.float32))[None, None])
    want = qnet.predict_uint8(net, frame, "qann")
    assert np.unique(want).size > 50  # a real image, not a clipped constant
    np.testing.assert_array_equal(Twin(net.to_model(), "quant").denoise(frame), want)
