"""Training -> export -> bit-exact execution, and the PyTorch integer simulation against the reference."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgespike import fileformat, reference, torchsim  # noqa: E402
from edgespike.model import (  # noqa: E402
    Add,
    Concat,
    Conv,
    ConvTranspose,
    Decoder,
    Encoder,
    Integrator,
    Model,
    Neuron,
    ReadoutTerm,
)
from edgespike.train.data import SHARED, noisy_frame  # noqa: E402
from edgespike.train.qnet import QSpikingDnCNN, predict_uint8  # noqa: E402

needs_data = pytest.mark.skipif(not (SHARED / "data" / "bsd400").is_dir(), reason="needs ../shared/data")


def _frame(h=21, w=26, seed=0):
    """A smooth test picture with the team's noise (``seed >= 0``) or uniform random pixels (``seed < 0``)."""
    if seed < 0:
        return np.random.default_rng(-seed).integers(0, 256, (h, w), dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    clean = (128 + 80 * np.sin(xx / 3.0) * np.cos(yy / 4.0)).astype(np.uint8)
    return noisy_frame(clean, 25, seed)


@needs_data
def test_tiny_training_exports_bit_exact(tmp_path):
    from edgespike.train.loop import Config, train

    torch.manual_seed(0)
    out = tmp_path / "tiny.esnn"
    cfg = Config(depth=4, width=6, T=8, sigma="25", iters=6, snn_iters=2, batch=8, snn_batch=4, patch=24,
                 val_images=1, val_crop=32, val_every=1000, snn_val_every=1000, out=str(out))
    net = train(cfg, progress=False)
    model = fileformat.load(out)
    assert model.timesteps == 8 and len(model.nodes) == 2 * 4
    frame = _frame()
    ref = reference.run(model, frame)
    assert ref.dtype == np.uint8 and ref.shape == frame.shape
    np.testing.assert_array_equal(torchsim.run(model, frame), ref)
    np.testing.assert_array_equal(torchsim.run(model, frame, mode="layer"), ref)
    # The training-side simulation predicts the exported file's output exactly.
    np.testing.assert_array_equal(predict_uint8(net, frame, "snn"), ref)
    # The model is not the identity (a test of equality between two identities would prove nothing).
    assert np.any(ref != frame)


@needs_data
def test_float_pretraining_runs_before_the_qann_phase(tmp_path, caplog):
    """``--float-iters``: the float twin is trained first, then the q-ANN starts from its weights and thresholds."""
    import logging

    from edgespike.train.loop import Config, Validator, train

    torch.manual_seed(0)
    out = tmp_path / "f.esnn"
    cfg = Config(depth=4, width=6, T=8, sigma="25", float_iters=3, iters=2, batch=8, patch=24,
                 val_images=1, val_crop=32, val_every=1000, out=str(out))
    with caplog.at_level(logging.INFO, logger="edgespike.train"):
        net = train(cfg, progress=False)
    done = [r.getMessage().split(" done")[0] for r in caplog.records if " done: " in r.getMessage()]
    assert done == ["float", "qann"]
    ck = torch.load(cfg.ckpt_path, weights_only=True)
    assert (ck["phase"], ck["it"]) == ("qann", 2)
    # The float view scores the twin's own output: a network whose read-out is zero returns the noisy crop.
    with torch.no_grad():
        net.weight[-1].zero_()
        net.bias[-1].zero_()
    v = Validator(cfg)
    from edgespike.train.data import psnr

    assert v(net, "float") == pytest.approx(psnr(v.noisy[0], v.clean[0]))
    np.testing.assert_array_equal(predict_uint8(net, _frame(), "snn"), _frame())


def test_qann_is_exact_with_one_hidden_layer():
    """With direct encoding the first neuron layer sees a constant current: the q-ANN count formula
    ``clip(floor((Theta>>1 + T*I) / Theta), 0, T)`` is then exactly the IF neuron's spike count."""
    torch.manual_seed(1)
    net = QSpikingDnCNN(depth=2, width=5, timesteps=8)
    net.calibrate(torch.from_numpy(_frame(32, 32).astype(np.float32))[None, None])
    frame = _frame(17, 19, seed=3)
    model = net.to_model()
    ref = reference.run(model, frame)
    np.testing.assert_array_equal(predict_uint8(net, frame, "qann"), ref)
    np.testing.assert_array_equal(predict_uint8(net, frame, "snn"), ref)


@pytest.mark.parametrize("shape", [(17, 23), (32, 32), (5, 9)])
def test_half_resolution_body_exports_bit_exact(shape):
    """``down=True``: 5x5 stride-2 first conv, transposed stride-2 read-out; odd frames are edge-padded to even
    sizes and cropped back by every executor, and the training-side simulation predicts the file exactly."""
    torch.manual_seed(2)
    net = QSpikingDnCNN(depth=4, width=6, timesteps=8, down=True)
    net.calibrate(torch.from_numpy(_frame(32, 32).astype(np.float32))[None, None])
    model = net.to_model()
    assert model.size_multiple == net.size_multiple == 2
    assert isinstance(model.nodes[0], Conv) and model.nodes[0].stride == 2 and model.nodes[0].kernel == 5
    assert isinstance(model.nodes[-2], ConvTranspose) and model.nodes[-2].kernel == 6
    frame = _frame(*shape, seed=4)
    ref = reference.run(model, frame)
    assert ref.shape == frame.shape and np.any(ref != frame)
    np.testing.assert_array_equal(predict_uint8(net, frame, "snn"), ref)
    np.testing.assert_array_equal(torchsim.run(model, frame, mode="layer"), ref)
    from edgespike.runtime import Runtime

    np.testing.assert_array_equal(Runtime(model).denoise(frame)[0], ref)


def _rand_w(rng, *shape):
    return rng.integers(-40, 41, shape).astype(np.int8)


def _unet_model(encoder: str, reset: str, leak: int, quantity: str) -> Model:
    rng = np.random.default_rng(7)
    c = 3
    nodes = [
        Conv("c1", "input", _rand_w(rng, c, 1, 3, 3), rng.integers(-50, 50, c).astype(np.int32)),
        Neuron("n1", "c1", rng.integers(20, 200, c).astype(np.int32), reset=reset, leak_shift=leak, v_init="half"),
        Conv("down", "n1", _rand_w(rng, c, c, 3, 3), rng.integers(-5, 5, c).astype(np.int32), stride=2),
        Neuron("n2", "down", rng.integers(10, 60, c).astype(np.int32), reset=reset, leak_shift=leak),
        ConvTranspose("up", "n2", _rand_w(rng, c, c, 4, 4), rng.integers(-5, 5, c).astype(np.int32), padding=1),
        Add("sum", ("up", "c1")),
        Neuron("n3", "sum", rng.integers(10, 60, c).astype(np.int32), reset=reset, leak_shift=leak),
        Concat("cat", ("n3", "n1")),
        Conv("c2", "cat", _rand_w(rng, 1, 2 * c, 3, 3), np.array([3], np.int32)),
    ]
    if quantity == "membrane":
        nodes.append(Integrator("out", "c2"))
        term = ReadoutTerm("out", "membrane", np.array([3], np.int32))
    else:
        nodes.append(Neuron("out", "c2", np.array([25], np.int32), reset=reset))
        term = ReadoutTerm("out", quantity, np.array([5], np.int32))
    T = 8
    return Model(nodes=nodes, timesteps=T, encoder=Encoder(encoder, seed=11),
                 decoder=Decoder([term], shift=10 if quantity == "membrane" else 2,
                                 residual=quantity == "membrane"))


@pytest.mark.parametrize("encoder,reset,leak,quantity", [
    ("direct", "soft", 0, "membrane"),
    ("uwe", "hard", 2, "count"),
    ("rate", "soft", 1, "uwd"),
    ("direct", "hard", 0, "count"),
])
def test_torchsim_matches_reference_on_hand_built_models(encoder, reset, leak, quantity):
    model = _unet_model(encoder, reset, leak, quantity)
    frame = _frame(13, 18, seed=-1)  # odd sizes exercise the edge padding to the model's size multiple
    ref = reference.run(model, frame)
    assert len(np.unique(ref)) > 1
    for mode in ("step", "layer"):
        np.testing.assert_array_equal(torchsim.run(model, frame, mode=mode), ref, err_msg=mode)
    np.testing.assert_array_equal(torchsim.run(model, frame, dtype=torch.float64), ref)


def test_torchsim_batches_frames_like_single_runs():
    model = _unet_model("direct", "soft", 0, "membrane")
    frames = np.stack([_frame(12, 16, seed=s) for s in range(3)])
    sim = torchsim.TorchSim(model)
    batched = sim.run(frames)
    for f, b in zip(frames, batched, strict=True):
        np.testing.assert_array_equal(b, reference.run(model, f))


def test_torchsim_refuses_mprn():
    model = _unet_model("direct", "soft", 0, "membrane")
    model.nodes[1].mprn = (1, 2)
    with pytest.raises(NotImplementedError):
        torchsim.TorchSim(model)
