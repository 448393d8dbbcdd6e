"""Acceptance of issue 8: every method's model file runs bit-exactly on the runtime against its PyTorch integer
simulations (the training-side :class:`QGraph` simulation and :mod:`edgespike.torchsim`) and the reference.

Small randomly initialised instances, thresholds set by threshold balancing on the test frame so that the layers
really spike (checked), MPRN spike values moved away from 1 so that ``weight_extra`` really differs.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgespike import fileformat, reference, runtime, torchsim  # noqa: E402
from edgespike.frames import pad_to_multiple  # noqa: E402
from edgespike.train.methods import cae, coding, dncnn, spikingir, vtsnn  # noqa: E402


def _frame(h=12, w=16, seed=0):
    rng = np.random.default_rng(seed)
    # a smooth ramp plus noise: realistic enough that layers neither stay silent nor saturate everywhere
    yy, xx = np.mgrid[0:h, 0:w]
    return np.clip(8 * xx + 5 * yy + rng.normal(0, 25, (h, w)), 0, 255).astype(np.uint8)


BUILDERS = {
    "vtsnn": lambda: vtsnn.unet(4),
    "spikingir": lambda: spikingir.spikingir(4, 6, 5, (3, 4), True),
    "spikingir-no-mprn": lambda: spikingir.spikingir(4, 6, 5, None, True),
    "spikerir-student": lambda: dncnn.dncnn(3, 4, 4),
    "lif-direct": lambda: dncnn.dncnn(4, 6, 6, "direct", coding.neuron_kwargs("lif", 2)),
    "lif-rate": lambda: dncnn.dncnn(4, 6, 6, "rate", coding.neuron_kwargs("lif", 1), seed=1234),
    "if-rate": lambda: dncnn.dncnn(4, 6, 6, "rate", coding.neuron_kwargs("if", 0), seed=7),
    "cae": lambda: cae.cae(4, 5),
}


def _instance(name):
    torch.manual_seed(0)
    g = BUILDERS[name]()
    frame = _frame()
    if g.encoder != "uwe":  # the ANN runs on the padded frame, as the SNN does
        padded = pad_to_multiple(frame, g.size_multiple)
        g.balance_thresholds(torch.from_numpy(padded.astype(np.float32))[None, None], 0.9)
    for k in g.beta:
        g.beta[k].data.fill_(1.3)
    return g, frame


@pytest.mark.parametrize("name", list(BUILDERS))
def test_model_file_runs_bit_exactly(name, tmp_path):
    g, frame = _instance(name)
    path = tmp_path / f"{name}.esnn"
    fileformat.save(g.to_model({"name": name}), path)
    model = fileformat.load(path)

    out_runtime, stats = runtime.load(str(path)).denoise(frame)
    out_ref, trace = reference.run(model, frame, trace=True)
    assert np.array_equal(out_runtime, out_ref)
    assert np.array_equal(g.predict_uint8(frame), out_ref)  # the training-side simulation, float64
    for mode in ("step", "layer"):
        assert np.array_equal(torchsim.run(model, frame, mode, extra_step=True), out_ref)

    # The instance is not degenerate: every spiking layer fires, none fires everywhere at every step.
    for node, per_step in trace.spikes.items():
        n = trace.counts[node].size
        assert 0 < sum(per_step) < n * len(per_step), node
    assert stats.total_spikes == sum(sum(s) for s in trace.spikes.values())


def test_spikingir_extra_step_fires_and_uses_weight_extra():
    g, frame = _instance("spikingir")
    model = g.to_model()
    assert model.has_extra_step
    convs = [n for n in model.nodes if type(n).__name__ == "Conv" and n.input != "input"]
    assert convs and all(c.weight_extra is not None and not np.array_equal(c.weight_extra, c.weight)
                         for c in convs)
    _, trace = reference.run(model, frame, trace=True)
    assert sum(s[-1] for s in trace.spikes.values()) > 0  # some MPRN neuron fired at the extra step
    assert [t.quantity for t in model.decoder.terms] == ["membrane", "membrane"]  # mapper + recycling


def test_vtsnn_model_is_uwe_uwd_without_biases():
    g, _ = _instance("vtsnn")
    model = g.to_model()
    assert model.encoder.kind == "uwe" and model.timesteps == 8 and not model.decoder.residual
    assert [(t.quantity, int(t.multiplier[0])) for t in model.decoder.terms] == [("uwd", 1)]
    assert model.decoder.shift == 0
    for n in model.nodes:
        if hasattr(n, "bias"):
            assert not n.bias.any(), n.name
        if type(n).__name__ == "Neuron":
            assert n.reset == "soft" and n.leak_shift == 0 and n.v_init == "zero"


def test_lif_model_has_shift_leak_and_hard_reset():
    g, _ = _instance("lif-rate")
    model = g.to_model()
    neurons = [n for n in model.nodes if type(n).__name__ == "Neuron"]
    assert all(n.leak_shift == 1 and n.reset == "hard" and n.v_init == "zero" for n in neurons)
    assert model.encoder.kind == "rate" and model.encoder.seed == 1234
    assert not list(g.log_theta)  # fixed thresholds: nothing to learn


def test_cae_shape_and_padding():
    g, _ = _instance("cae")
    model = g.to_model()
    kinds = [type(n).__name__ for n in model.nodes if type(n).__name__ in ("Conv", "ConvTranspose")]
    assert kinds == ["Conv"] * 4 + ["ConvTranspose"] * 3 + ["Conv"]  # SPIDEN's CAE: 3 down, 3 up, 8 layers
    assert [n.stride for n in model.nodes if type(n).__name__ == "Conv"] == [1, 2, 2, 2, 1]
    assert model.size_multiple == 8
    frame = _frame(13, 11, seed=3)  # not a multiple of 8: padded, run and cropped the same way everywhere
    out = runtime.denoise(model, frame)
    assert out.shape == frame.shape
    assert np.array_equal(out, reference.run(model, frame))
    assert np.array_equal(out, g.predict_uint8(frame))


def test_spikerir_default_student_is_thin_direct_t4():
    g = dncnn.dncnn(8, 16, 4)  # the defaults of `train_method.py spikerir`
    assert sum(p.numel() for p in g.parameters()) < 70_000  # the paper's student has 0.07 M parameters
    model = g.to_model()
    assert model.encoder.kind == "direct" and model.timesteps == 4
