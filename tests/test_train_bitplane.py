"""Training of bit-plane models: a few iterations of both phases, exported, run bit-exactly by every executor
(the training-side integer network, the reference, the runtime's two paths); resuming continues exactly."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs the [train] extra (torch)")

from edgespike import fileformat, reference  # noqa: E402
from edgespike.runtime import Runtime  # noqa: E402
from edgespike.train.bitplane import predict_uint8  # noqa: E402
from edgespike.train.bitplane_loop import Config, load_ckpt, net_from_ckpt, train  # noqa: E402
from edgespike.train.data import SHARED  # noqa: E402

pytestmark = pytest.mark.skipif(not (SHARED / "data" / "bsd400").is_dir(), reason="needs ../shared/data/bsd400")


def _config(tmp_path, **kw) -> Config:
    kw = {"float_iters": 3, "qat_iters": 3, "sigma": "25", **kw}
    return Config(depth=3, width=4, T=8, down=True, batch=2, patch=16, out=str(tmp_path / "m.esnn"), val_every=1000,
                  **kw)


def test_a_tiny_training_exports_a_model_every_executor_runs_identically(tmp_path):
    torch.set_num_threads(1)
    net = train(_config(tmp_path), progress=False)
    model = fileformat.load(tmp_path / "m.esnn")
    assert model.has_bitplane and model.encoder.kind == "uwe"
    frame = np.random.default_rng(0).integers(0, 256, (23, 17), dtype=np.uint8)
    want = predict_uint8(net, frame)
    assert np.array_equal(reference.run(model, frame), want)
    for path in ("dense", "spikes"):
        assert np.array_equal(Runtime(model, bitplane_path=path).denoise(frame)[0], want)


def test_stop_and_resume_continues_the_same_run(tmp_path):
    torch.set_num_threads(1)
    straight = tmp_path / "a"
    straight.mkdir()
    train(_config(straight), progress=False)
    resumed = tmp_path / "b"
    resumed.mkdir()
    with pytest.raises(SystemExit):
        train(_config(resumed, stop_at=2), progress=False)
    assert load_ckpt(str(resumed / "m.ckpt.pt"))["it"] == 2
    train(_config(resumed), resume=True, progress=False)
    a, b = net_from_ckpt(str(straight / "m.ckpt.pt")), net_from_ckpt(str(resumed / "m.ckpt.pt"))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_the_spike_weight_trades_activations_for_spikes(tmp_path):
    """--spike-weight adds the mean activation to the QAT loss: with a large weight the same run (same seed, same
    patches) ends with fewer spikes on the validation images than without."""
    rates = _validation_spike_rates(tmp_path, {"spike_weight": 0.0, "qat_iters": 8},
                                    {"spike_weight": 50.0, "qat_iters": 8})
    assert 0 < rates[1] < rates[0]


def _validation_spike_rates(tmp_path, *variants: dict) -> list[float]:
    """Spikes per neuron per step on the Set12 validation images after a tiny run with each config variant."""
    torch.set_num_threads(1)
    from edgespike.train.bitplane_loop import Validator

    rates = []
    for i, kw in enumerate(variants):
        d = tmp_path / f"v{i}"
        d.mkdir()
        net = train(_config(d, **kw), progress=False)
        v = Validator(str(SHARED / "data" / "set12"))
        v(net, "qat")
        rates.append(v.spike_rate)
    return rates


def test_the_distillation_loss_mixes_the_clean_and_the_teacher_targets():
    from edgespike.train.bitplane_loop import denoising_loss

    g = torch.Generator().manual_seed(0)
    x, clean, teacher, pred = (torch.rand(2, 1, 8, 8, generator=g) * 255 for _ in range(4))
    target = x - clean
    plain, _ = denoising_loss(pred, x, target)
    assert torch.equal(denoising_loss(pred, x, target, clean, 0.7)[0], plain)  # a teacher that knows the clean image
    to_teacher = ((pred - (x - teacher)) / 255).pow(2).mean()
    assert torch.allclose(denoising_loss(pred, x, target, teacher, 1.0)[0], to_teacher)
    mixed, clean_part = denoising_loss(pred, x, target, teacher, 0.25)
    assert torch.allclose(mixed, 0.75 * plain + 0.25 * to_teacher) and torch.equal(clean_part, plain)


def test_sigma_weights_balance_the_noise_levels_of_a_blind_batch():
    """--sigma-floor: a patch's weight is 1 / (sigma^2 + floor^2), mean 1 over the batch; equal errors relative
    to the noise level then weigh alike, and the sampler says each patch's sigma."""
    from edgespike.train.bitplane_loop import denoising_loss, sigma_weights
    from edgespike.train.data import PatchSampler

    w = sigma_weights(np.array([0.0, 5.0, 50.0]), 5.0)
    assert torch.allclose(w.mean(), torch.tensor(1.0)) and w[0] == 2 * w[1] and w[1] / w[2] == pytest.approx(101 / 2)
    x = torch.zeros(2, 1, 4, 4)
    target = torch.zeros(2, 1, 4, 4)
    pred = torch.stack([torch.full((1, 4, 4), 1.0), torch.full((1, 4, 4), 10.0)])  # errors 10x apart
    weighted, plain = denoising_loss(pred, x, target, weights=sigma_weights(np.array([1.0, 10.0]), 0.0))
    assert torch.allclose(plain, ((pred / 255) ** 2).mean())
    per = ((pred / 255) ** 2).flatten(1).mean(1)  # the quiet patch's small error now counts as much
    assert torch.allclose(weighted, (per * torch.tensor([100.0, 1.0]) / 50.5).mean())
    rng = np.random.default_rng(0)
    s = PatchSampler([rng.integers(0, 256, (32, 32), dtype=np.uint8)], 16, "blind", seed=3)
    clean, noisy = s.batch(64)
    assert s.last_sigma.shape == (64,) and 0 <= s.last_sigma.min() and s.last_sigma.max() <= 55
    spread = (noisy.astype(np.float64) - clean).reshape(64, -1).std(1)
    assert np.corrcoef(spread, s.last_sigma)[0, 1] > 0.95  # the noise drawn is the sigma reported


def test_a_sigma_band_draws_each_patchs_level_inside_it():
    """--sigma 12-19: the level of each patch is uniform in the band (a model set's member that must hold up
    across it); a band out of order or a word is refused."""
    from edgespike.train.bitplane_loop import parse_sigma
    from edgespike.train.data import PatchSampler

    assert parse_sigma("12-19") == (12.0, 19.0) and parse_sigma("25") == 25.0 and parse_sigma("blind") == "blind"
    for bad in ("19-12", "x", "3-x"):
        with pytest.raises(ValueError):
            parse_sigma(bad)
    rng = np.random.default_rng(0)
    s = PatchSampler([rng.integers(0, 256, (32, 32), dtype=np.uint8)], 16, (12.0, 19.0), seed=3)
    s.batch(200)
    assert 12 <= s.last_sigma.min() < 13 and 18 < s.last_sigma.max() <= 19


def test_the_pool_sampler_cuts_and_turns_the_clean_noisy_and_teacher_patches_together():
    from edgespike.train.teacher import PoolSampler, TeacherPool

    rng = np.random.default_rng(1)
    clean = [rng.integers(0, 256, (20, 27), dtype=np.uint8) for _ in range(3)]
    noisy = [np.stack([(im.astype(np.int64) + d) % 256 for d in range(2)]).astype(np.uint8) for im in clean]
    teacher = [n.astype(np.float16) for n in noisy]  # a stand-in teacher: the identity, to check alignment
    c, n, t = PoolSampler(TeacherPool(clean, noisy, teacher), 12, seed=0).batch(40)
    assert c.shape == n.shape == t.shape == (40, 12, 12)
    assert np.array_equal(t, n.astype(np.float32))
    d = (n.astype(np.int64) - c) % 256
    assert all(len(np.unique(p)) == 1 for p in d) and set(np.unique(d)) == {0, 1}  # one draw per patch, both used


def test_a_distilled_run_builds_its_teacher_pool_once_and_resumes_exactly(tmp_path, monkeypatch):
    """With --teacher the loop distils from a pool of the reference DnCNN-S's outputs, cached next to OUT; a run
    stopped and resumed draws the same pool patches as one that never stopped."""
    from edgespike.train import bitplane_loop
    from edgespike.train.methods.spikerir import TEACHER_DIR

    teacher = TEACHER_DIR / "dncnn_s25.pth"
    if not teacher.is_file():
        pytest.skip("needs ../shared/reference/dncnn/dncnn_s25.pth")
    torch.set_num_threads(1)
    real = bitplane_loop.load_dir
    monkeypatch.setattr(bitplane_loop, "load_dir",  # four training images keep the pool a few seconds' work
                        lambda p: tuple(v[:4] for v in real(p)) if "bsd400" in str(p) else real(p))
    kw = {"teacher": str(teacher), "teacher_weight": 0.7, "teacher_draws": 2}
    straight, resumed = tmp_path / "a", tmp_path / "b"
    straight.mkdir()
    resumed.mkdir()
    train(_config(straight, **kw), progress=False)
    assert len(list(straight.glob("teacher_pool_*.npz"))) == 1
    with pytest.raises(SystemExit):
        train(_config(resumed, stop_at=2, **kw), progress=False)
    train(_config(resumed, **kw), resume=True, progress=False)
    a, b = net_from_ckpt(str(straight / "m.ckpt.pt")), net_from_ckpt(str(resumed / "m.ckpt.pt"))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    with pytest.raises(ValueError, match="fixed sigma"):
        train(_config(tmp_path, sigma="blind", **kw), progress=False)


def test_per_channel_steps_train_and_export_exactly_from_a_per_layer_start(tmp_path):
    """--channel-steps: one learned activation step per channel. A per-layer checkpoint starts it (its steps
    spread over the channels), the export gives each channel its own threshold, and every executor still equals
    the training-side integer network."""
    torch.set_num_threads(1)
    base = tmp_path / "base"
    base.mkdir()
    train(_config(base), progress=False)
    d = tmp_path / "chan"
    d.mkdir()
    net = train(_config(d, float_iters=0, qat_iters=3, init=str(base / "m.ckpt.pt"), channel_steps=True),
                progress=False)
    assert net.channel_steps and tuple(net.log_step.shape) == (2, 4)
    assert net_from_ckpt(str(d / "m.ckpt.pt")).channel_steps
    model = fileformat.load(d / "m.esnn")
    frame = np.random.default_rng(1).integers(0, 256, (19, 21), dtype=np.uint8)
    want = predict_uint8(net, frame)
    assert np.array_equal(reference.run(model, frame), want)
    assert np.array_equal(Runtime(model).denoise(frame)[0], want)


def test_silent_channels_get_their_layers_step_not_a_tiny_one():
    """A channel that never fires on the calibration pixels would otherwise get a step near zero and fire at full
    scale on the first input that reaches it."""
    from edgespike.train.bitplane import BitPlaneDnCNN

    torch.manual_seed(0)
    net = BitPlaneDnCNN(3, 4, 8, channel_steps=True)
    with torch.no_grad():
        net.weight[0][1] = -1.0  # channel 1 of layer 1: negative for every (non-negative) pixel
        net.bias[0][1] = -1.0
    net.init_steps(torch.rand(2, 1, 32, 32) * 255)
    steps = net.log_step.detach().exp()[0]
    assert steps[1] >= steps[[0, 2, 3]].min()


def test_step_scale_starts_qat_with_coarser_codes_and_fewer_spikes(tmp_path):
    """--step-scale k multiplies the calibrated steps at the start of QAT: the codes lose about log2(k) low bits,
    so the same run fires less."""
    rates = _validation_spike_rates(tmp_path, {"step_scale": 1.0, "qat_iters": 1}, {"step_scale": 8.0, "qat_iters": 1})
    assert 0 < rates[1] < rates[0]


def test_keep_steps_goes_on_from_the_checkpoints_learned_steps(tmp_path):
    """--keep-steps with --init: QAT starts from the checkpoint's activation steps (here 8 times the calibrated
    ones) instead of calibrating new ones, so a sparse QAT can be continued; --step-scale still multiplies them."""
    torch.set_num_threads(1)
    base = tmp_path / "base"
    base.mkdir()
    train(_config(base, step_scale=8.0), progress=False)
    learned = net_from_ckpt(str(base / "m.ckpt.pt")).log_step.detach().clone()
    runs = {}
    for name, kw in {"kept": {"keep_steps": True}, "scaled": {"keep_steps": True, "step_scale": 2.0},
                     "calibrated": {}}.items():
        d = tmp_path / name
        d.mkdir()
        # no learning (lr 0): the steps the QAT starts from are the ones it ends with
        runs[name] = train(_config(d, float_iters=0, qat_iters=1, qat_lr=0.0, init=str(base / "m.ckpt.pt"), **kw),
                           progress=False).log_step.detach()
    assert torch.allclose(runs["kept"], learned)
    assert torch.allclose(runs["scaled"], learned + np.log(2.0))
    assert (runs["calibrated"] < learned - 1.0).all()  # calibrated afresh: about 8 times finer


def test_warmup_raises_the_rate_linearly_then_follows_the_cosine():
    from edgespike.train.bitplane_loop import phase_lr

    assert phase_lr(1e-3, 0, 1000, 100) == pytest.approx(1e-5, rel=0.01)  # 1 / 100 of the peak
    assert phase_lr(1e-3, 49, 1000, 100) == pytest.approx(0.5e-3, rel=0.01)
    for it in (99, 500, 999):  # from the warm-up's end the rate is the cosine's
        assert phase_lr(1e-3, it, 1000, 100) == phase_lr(1e-3, it, 1000)
    assert phase_lr(1e-3, 0, 1000) == pytest.approx(1e-3)


def test_a_dilated_full_resolution_run_trains_resumes_and_exports_its_dilations(tmp_path):
    from edgespike.model import Conv

    cfg = Config(depth=4, width=4, down=False, dilations=(1, 2, 3, 1), warmup=3, float_iters=6, qat_iters=3,
                 batch=2, patch=24, out=str(tmp_path / "d.esnn"), val_every=1000)
    net = train(cfg, progress=False)
    model = fileformat.load(cfg.out)
    assert [n.dilation for n in model.nodes if isinstance(n, Conv)] == [1, 2, 3, 1]
    assert net_from_ckpt(cfg.ckpt_path).dilations == (1, 2, 3, 1)
    frame = np.random.default_rng(0).integers(0, 256, (19, 26), dtype=np.uint8)
    assert np.array_equal(Runtime(model).denoise(frame)[0], predict_uint8(net, frame))


def test_bf16_float_phase_trains_in_bfloat16_resumes_exactly_and_exports_exactly(tmp_path):
    """--bf16 runs the float phase's convolutions in bfloat16 (a different run from float32's, same patches), keeps
    the parameters float32, resumes bit for bit, and leaves QAT and export exact."""
    torch.set_num_threads(1)
    runs = {}
    for name, kw in {"fp32": {}, "bf16": {"bf16": True}}.items():
        (tmp_path / name).mkdir()
        runs[name] = train(_config(tmp_path / name, **kw), progress=False)
    bf = runs["bf16"]
    assert all(p.dtype == torch.float32 for p in bf.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(runs["fp32"].parameters(), bf.parameters(), strict=True))
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    with pytest.raises(SystemExit):
        train(_config(resumed, bf16=True, stop_at=2), progress=False)
    train(_config(resumed, bf16=True), resume=True, progress=False)
    for a, b in zip(net_from_ckpt(str(resumed / "m.ckpt.pt")).parameters(), bf.parameters(), strict=True):
        assert torch.equal(a, b)
    frame = np.random.default_rng(1).integers(0, 256, (21, 18), dtype=np.uint8)
    model = fileformat.load(tmp_path / "bf16" / "m.esnn")
    assert np.array_equal(Runtime(model).denoise(frame)[0], predict_uint8(bf, frame))


def test_folding_batch_norm_keeps_what_the_float_network_computes():
    """The float network in eval mode (batch norm by its running statistics) computes the same residual before and
    after fold_batch_norm, which leaves the plain conv stack the integers are made of; a plain network loading
    that float state (--init) folds it the same way."""
    from edgespike.train.bitplane import BitPlaneDnCNN

    torch.manual_seed(0)
    net = BitPlaneDnCNN(5, 6, 8, down=False, dilations=(1, 2, 3, 2, 1), batch_norm=True)
    with torch.no_grad():
        for bn in net.norm:  # statistics and affine parameters far from the identity
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.2, 3.0)
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(-0.3, 0.3)
    net.eval()
    x = torch.rand(2, 1, 17, 23) * 255
    with torch.no_grad():
        before = net.float_forward(x)
        state = {k: v.clone() for k, v in net.state_dict().items()}
        with pytest.raises(RuntimeError, match="fold_batch_norm"):
            net.integerise()
        net.fold_batch_norm()
        assert net.norm is None and not any(k.startswith("norm.") for k in net.state_dict())
        assert torch.allclose(net.float_forward(x), before, atol=1e-3)
        plain = BitPlaneDnCNN(5, 6, 8, down=False, dilations=(1, 2, 3, 2, 1))
        plain.load_params(state)
        assert torch.allclose(plain.float_forward(x), before, atol=1e-3)


def test_a_batch_norm_run_folds_at_qat_resumes_in_either_phase_and_exports_exactly(tmp_path):
    torch.set_num_threads(1)
    budgets = {"batch_norm": True, "float_iters": 2, "qat_iters": 4}
    straight = tmp_path / "straight"
    straight.mkdir()
    net = train(_config(straight, **budgets), progress=False)
    assert net.norm is None  # folded when QAT started
    for stop in (1, 3):  # inside the float phase (batch norm live), inside QAT (folded)
        run = tmp_path / f"stop{stop}"
        run.mkdir()
        with pytest.raises(SystemExit):
            train(_config(run, stop_at=stop, **budgets), progress=False)
        assert load_ckpt(str(run / "m.ckpt.pt"))["phase"] == ("float" if stop == 1 else "qat")
        train(_config(run, **budgets), resume=True, progress=False)
        for a, b in zip(net_from_ckpt(str(run / "m.ckpt.pt")).parameters(), net.parameters(), strict=True):
            assert torch.equal(a, b)
    frame = np.random.default_rng(2).integers(0, 256, (15, 22), dtype=np.uint8)
    model = fileformat.load(straight / "m.esnn")
    want = predict_uint8(net, frame)
    assert np.array_equal(Runtime(model).denoise(frame)[0], want)
    assert np.array_equal(reference.run(model, frame), want)


def test_recalibrated_batch_norm_evaluates_as_training_normalises():
    """After recalibrate_batch_norm on a batch, eval mode (running statistics, what validation and the fold use)
    computes what training mode (the batch's own statistics) computes on that batch, whatever the lagging running
    averages were before."""
    from edgespike.train.bitplane import BitPlaneDnCNN

    torch.manual_seed(1)
    net = BitPlaneDnCNN(5, 6, 8, down=False, dilations=(1, 2, 3, 2, 1), batch_norm=True)
    x = torch.rand(4, 1, 19, 21) * 255
    with torch.no_grad():
        for bn in net.norm:  # stale statistics, as momentum leaves them while the weights move
            bn.running_mean.fill_(3.0)
            bn.running_var.fill_(0.01)
        net.train()
        trained = net.float_forward(x)
        net.eval()
        assert not torch.allclose(net.float_forward(x), trained, atol=0.5)
        net.recalibrate_batch_norm([x])
        assert not net.training and all(bn.momentum == 0.1 for bn in net.norm)
        assert torch.allclose(net.float_forward(x), trained, atol=0.1)  # up to the unbiased variance's N / (N - 1)
