"""The methods' losses, codings and folds on cases small enough to check by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgespike import reference  # noqa: E402
from edgespike.model import Encoder, Model  # noqa: E402
from edgespike.train.methods import common, spikerir, spikingir, vtsnn  # noqa: E402
from edgespike.train.methods.graph import (  # noqa: E402
    ConvSpec,
    IntegratorSpec,
    NeuronSpec,
    QGraph,
    Term,
    decoder_constants,
    rate_planes,
    uwe_planes,
)

# ------------------------------------------------------------------ VTSNN


def test_uwe_label_encoding_is_the_format_encoder_and_uwd_inverts_it():
    x = np.arange(256, dtype=np.uint8).reshape(16, 16)
    planes = uwe_planes(torch.from_numpy(x.astype(np.float32)))
    model = Model(nodes=[], timesteps=8, encoder=Encoder("uwe"))
    for t in range(8):
        assert np.array_equal(planes[t].numpy(), reference.encode(model, x, t)[0])
    assert np.array_equal(vtsnn.uwd(planes).numpy(), x)
    # 200 = 0b11001000, MSB first
    assert uwe_planes(torch.tensor([200.0]))[:, 0].tolist() == [1, 1, 0, 0, 1, 0, 0, 0]


def test_itbp_weights_are_powers_of_two_msb_first():
    assert vtsnn.bit_weights().tolist() == [128, 64, 32, 16, 8, 4, 2, 1]
    label = torch.zeros(8, 1, 1, 1, 2)  # T x B x C x H x W, two pixels
    for t, weight in enumerate([128, 64, 32, 16, 8, 4, 2, 1]):
        out = label.clone()
        out[t, 0, 0, 0, 0] = 1  # one wrong spike of one of two pixels at step t: mean error 1/2
        assert vtsnn.itbp_loss_planes(out, label).item() == pytest.approx(weight / 2)
    out = torch.ones_like(label)  # every spike wrong: sum of the weights
    assert vtsnn.itbp_loss_planes(out, label).item() == pytest.approx(255)


def test_stbp_loss_is_mse_of_the_decoded_image():
    out = torch.zeros(8, 1, 1, 1, 2)
    out[0, ..., 0] = 1  # pixel 0 decodes to 128, pixel 1 to 0
    clean = torch.tensor([[[[100.0, 51.0]]]])
    expected = ((28 / 255) ** 2 + (51 / 255) ** 2) / 2
    assert vtsnn.stbp_loss_planes(out, clean).item() == pytest.approx(expected)


def test_itbp_and_stbp_losses_train_through_the_spikes():
    torch.manual_seed(0)
    g = vtsnn.unet(4)
    clean = torch.full((1, 1, 8, 8), 200.0)
    noisy = clean + torch.randn_like(clean).mul(10).round()
    for loss in (vtsnn.itbp_loss, vtsnn.stbp_loss):
        g.zero_grad()
        loss(g, clean, noisy).backward()
        grads = [p.grad for p in g.parameters() if p.grad is not None]
        assert grads and sum(float(x.abs().sum()) for x in grads) > 0, loss.__name__


# ------------------------------------------------------------------ SpikingIR


def _mprn_chain(beta: float, theta: float = 2.0) -> QGraph:
    specs = [ConvSpec("c1", "input", 1, 1, k=1, bias=False), NeuronSpec("n1", "c1", theta=theta, mprn=(3, 4)),
             ConvSpec("c2", "n1", 1, 1, k=1, bias=False), IntegratorSpec("out", "c2")]
    g = QGraph(specs, 4, "direct", [Term("out", "membrane")], residual=True)
    g.weight["c1"].data.fill_(1.0)
    g.weight["c2"].data.fill_(0.5)
    g.beta["n1"].data.fill_(beta)
    return g


def test_mprn_spike_value_is_folded_into_weight_extra():
    # c2 sees spikes worth theta = 2 (gain), so its effective weight is 0.5 * 2 = 1; the extra spike is worth
    # beta * theta = 3, effective weight 1.5. One int8 scale for both: q = 1.5 / 127.
    ints = _mprn_chain(1.5).integerise()
    assert ints.weight["c2"].item() == round(1.0 / (1.5 / 127)) == 85
    assert ints.weight_extra["c2"].item() == 127
    model = _mprn_chain(1.5).to_model()
    assert model.node("n1").mprn == (3, 4)
    assert int(model.node("c2").weight_extra[0, 0, 0, 0]) == 127
    # beta = 1: the extra spike is an ordinary spike, weight_extra equals weight (and beta still learns)
    g1 = _mprn_chain(1.0)
    ints1 = g1.integerise()
    assert ints1.weight_extra["c2"].item() == ints1.weight["c2"].item() == 127
    ints1.weight_extra["c2"].sum().backward()
    assert g1.beta["n1"].grad is not None and g1.beta["n1"].grad.item() != 0


def test_mprn_extra_step_fires_at_alpha_theta_in_the_simulation():
    g = _mprn_chain(1.0)
    ints = g.integerise().double()
    th = int(ints.theta["n1"].item())
    w1 = int(ints.weight["c1"].item())
    # choose a pixel whose membrane after 4 steps (v0 = th // 2) lands in [3/4 th, th): only the extra step fires
    x = next(p for p in range(256) if 4 * th > 4 * ((th // 2 + 4 * w1 * p) % th) >= 3 * th
             and (th // 2 + 4 * w1 * p) // th <= 4)
    res = g.simulate(torch.tensor([[[[float(x)]]]], dtype=torch.float64), ints)
    assert res.spikes["n1"].shape[0] == 5 and res.spikes["n1"][4].item() == 1
    model = g.to_model()
    frame = np.array([[x]], np.uint8)
    _, trace = reference.run(model, frame, trace=True)
    assert trace.spikes["n1"][-1] == 1
    assert np.array_equal(g.predict_uint8(frame), reference.run(model, frame))


def test_recycling_term_scale_goes_through_the_mapper_weight():
    torch.manual_seed(0)
    g = spikingir.spikingir(3, 4, 5, None, True)
    ints = g.integerise()
    q_last = float(ints.gain["conv_last"][0])
    a = float(g.weight[spikingir.MAPPER].detach().sum())
    assert ints.scales[1] == pytest.approx(255 * q_last * a / 5)
    m, s = ints.multipliers, ints.shift
    assert m[1] / 2**s == pytest.approx(ints.scales[1], rel=1e-6)


@pytest.mark.parametrize("text", ["1/2", "0/4", "5/4", "3", "a/b", "3/70000"])
def test_alpha_outside_half_to_one_is_refused(text):
    with pytest.raises(ValueError, match="alpha"):
        spikingir.parse_alpha(text)


def test_alpha_parses():
    assert spikingir.parse_alpha("3/4") == (3, 4) and spikingir.parse_alpha("1/1") == (1, 1)


def test_threshold_balancing_sets_the_activation_quantile():
    torch.manual_seed(0)
    g = spikingir.spikingir(3, 4, 5)
    x = torch.rand(2, 1, 8, 8) * 255
    got = g.balance_thresholds(x, 0.5)
    with torch.no_grad():
        _, feats = g.ann(x, features=True)
    a = feats["n1"]
    assert got["n1"] == pytest.approx(float(torch.quantile(a[a > 0], 0.5)), rel=1e-5)
    assert g.theta("n1").item() == pytest.approx(got["n1"], rel=1e-5)


def test_lif_balanced_layer_by_layer_keeps_the_deep_layers_firing():
    """All layers balanced at once on the ReLU ANN silence a deep LIF network (its dead zone below theta / 4
    shrinks every layer's output); balanced in order on the rate-aware ANN, the last layer still fires."""
    from edgespike.train.methods.coding import neuron_kwargs
    from edgespike.train.methods.dncnn import dncnn

    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, 1, 48, 48)).astype(np.float32))
    rates = {}
    for sequential, q in ((False, 0.999), (True, 0.95)):
        g = dncnn(10, 32, 8, "direct", neuron_kwargs("lif", 2), seed=0)
        got = g.balance_thresholds(x, q, sequential=sequential)
        with torch.no_grad():
            _, feats = g.ann(x, features=True, rate_aware=True)
        rates[sequential] = float((feats["n9"] > 0).float().mean())
        assert set(got) == {f"n{i}" for i in range(1, 10)}
    assert rates[False] < 0.01 and rates[True] > 0.05


# ------------------------------------------------------------------ SpikerIR


def test_fft_l1_hand_case():
    a = torch.zeros(1, 1, 2, 2)
    b = torch.zeros(1, 1, 2, 2)
    b[0, 0, 0, 0] = 1.0  # a delta: every frequency is 1 + 0j
    # rfft2 of 2x2 keeps 2 x 2 bins; real parts differ by 1, imaginary by 0 -> mean |.| over 8 numbers = 0.5
    assert spikerir.fft_l1(a, b).item() == pytest.approx(0.5)
    assert spikerir.fft_l1(b, b).item() == 0


def test_restoration_loss_is_l1_plus_tenth_fft_l1():
    out = torch.full((1, 1, 4, 4), 255.0)
    clean = torch.zeros(1, 1, 4, 4)
    # L1 = 1; the FFT of a constant 1 has only the DC bin = 16 (of 4 x 3 complex bins, 24 numbers): 16/24
    assert spikerir.restoration_loss(out, clean).item() == pytest.approx(1 + 0.1 * 16 / 24)


def test_feature_pairs_by_relative_depth():
    assert spikerir.pairs(4, 16) == [(0, 3), (1, 7), (2, 11), (3, 15)]
    assert spikerir.pairs(7, 16)[-1] == (6, 15)


def test_teacher_loads_from_shared_and_denoises():
    path = spikerir.TEACHER_DIR / "dncnn_s25.pth"
    if not path.exists():
        pytest.skip("../shared/reference/dncnn is not here")
    teacher = spikerir.load_teacher(path)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in teacher.net) == 17
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:48]
    clean = (100 + 60 * np.sin(xx / 7.0) * np.cos(yy / 9.0)).astype(np.float64)
    noisy = np.clip(np.round(clean + rng.normal(0, 25, clean.shape)), 0, 255)
    out, feats = teacher(torch.from_numpy(noisy).float()[None, None])
    assert len(feats) == 16 and feats[0].shape == (1, 64, 48, 48)
    mse_in = np.mean((noisy - clean) ** 2)
    mse_out = np.mean((out[0, 0].numpy() - clean) ** 2)
    assert 10 * math.log10(mse_in / mse_out) > 6  # the teacher removes most of the noise


def test_missing_teacher_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="teacher weights"):
        spikerir.load_teacher(tmp_path / "nope.pth")


# ------------------------------------------------------------------ shared pieces


def test_decoder_constants():
    assert decoder_constants([1.0]) == ([1], 0)
    m, s = decoder_constants([0.75, -0.25])
    assert m[0] == 3 * -m[1] and m[0] < 2**31 and m[0] / 2**s == 0.75
    m, s = decoder_constants([3.0e-4])
    assert 2**30 <= m[0] < 2**31 and m[0] / 2**s == pytest.approx(3.0e-4, rel=1e-8)


def test_rate_planes_are_the_format_encoder():
    frame = np.random.default_rng(1).integers(0, 256, (5, 7)).astype(np.uint8)
    model = Model(nodes=[], timesteps=6, encoder=Encoder("rate", seed=99))
    planes = rate_planes(frame[None], 6, 99)
    for t in range(6):
        assert np.array_equal(planes[t, 0], reference.encode(model, frame, t))


def test_speckle_patches_keep_black_black_and_gaussian_does_not():
    im = np.zeros((20, 20), np.uint8)
    im[:, 10:] = 200
    sp = common.NoisyPatches([im], 20, 25.0, "speckle", seed=0)
    clean, noisy = sp.batch(4)
    assert torch.equal(noisy[clean == 0], clean[clean == 0])  # y = x + x v is 0 where x is 0
    assert (noisy[clean == 200] != 200).any()
    ga = common.NoisyPatches([im], 20, 25.0, "gaussian", seed=0)
    clean, noisy = ga.batch(4)
    assert (noisy[clean == 0] != 0).any()


def test_distiller_without_teacher_is_the_restoration_loss():
    from edgespike.train.methods.dncnn import dncnn

    torch.manual_seed(0)
    g = dncnn(3, 4, 2)
    d = spikerir.Distiller(g, None, 0.0, 3, 4)
    assert d.pairs == []
    clean = torch.rand(1, 1, 8, 8).mul(255).round()
    noisy = (clean + 20).clamp(0, 255)
    with torch.no_grad():
        out, _ = g.output(noisy)
        assert d(g, clean, noisy).item() == pytest.approx(spikerir.restoration_loss(out, clean).item())


def test_constant_drive_rate_hand_cases():
    from edgespike.train.methods.graph import constant_drive_rate

    current = torch.tensor([0.0, 0.1, 0.2, 0.5, 0.9, 1.0, 2.0, -1.0])
    th = torch.tensor(1.0)
    if_half = constant_drive_rate(current, th, NeuronSpec("n", "c"), 4) * 4
    assert if_half.tolist() == [0, 0, 1, 2, 4, 4, 4, 0]  # clip(floor(4 I + 1/2), 0, 4)
    # LIF, v -= v/4, hard reset to 0, v0 = 0. I = 0.5: v = .5, .875, 1.156 (spike, 0), .5 -> 1 spike;
    # I = 0.9: .9, 1.575 (spike), .9, 1.575 (spike) -> 2; I = 0.2: v tends to 0.8 < 1, never fires (dead zone).
    lif = constant_drive_rate(current, th, NeuronSpec("n", "c", reset="hard", leak_shift=2, v_init="zero"), 4) * 4
    assert lif.tolist() == [0, 0, 0, 1, 2, 4, 4, 0]


def test_rate_aware_ann_gives_spike_rate_levels_and_gradients():
    from edgespike.train.methods.dncnn import dncnn

    torch.manual_seed(0)
    g = dncnn(3, 4, 4)
    x = torch.rand(1, 1, 8, 8) * 255
    g.balance_thresholds(x, 0.9)
    out, feats = g.ann(x, features=True, rate_aware=True)
    for name, a in feats.items():
        levels = (a / g.theta(name)).detach() * 4  # spike counts out of T = 4
        assert torch.allclose(levels, levels.round(), atol=1e-4) and levels.min() >= 0 and levels.max() <= 4
    ((out - x) ** 2).mean().backward()
    assert g.weight["conv1"].grad.abs().sum() > 0 and g.log_theta["n1"].grad is not None


def test_itbp_cuts_the_gradient_through_time_but_not_the_forward():
    torch.manual_seed(0)
    g = vtsnn.unet(4)
    x = torch.rand(1, 1, 8, 8).mul(255).round()
    a = g.simulate(x, temporal=True)
    b = g.simulate(x, temporal=False)
    assert torch.equal(a.spikes[vtsnn.OUT], b.spikes[vtsnn.OUT]) and torch.equal(a.R, b.R)
    grads = []
    for res in (a, b):
        g.zero_grad()
        res.spikes[vtsnn.OUT][7].sum().backward()  # the last step's output only
        grads.append(g.weight["enc1"].grad.clone())
    assert not torch.allclose(grads[0], grads[1])  # BPTT also reaches enc1 through earlier steps' membranes
