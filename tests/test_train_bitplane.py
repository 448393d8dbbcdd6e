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
    kw = {"float_iters": 3, "qat_iters": 3, **kw}
    return Config(depth=3, width=4, T=8, down=True, sigma="25", batch=2, patch=16, out=str(tmp_path / "m.esnn"),
                  val_every=1000, **kw)


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
    torch.set_num_threads(1)
    from edgespike.train.bitplane_loop import Validator

    rates = []
    for w in (0.0, 50.0):
        d = tmp_path / f"w{w}"
        d.mkdir()
        net = train(_config(d, spike_weight=w, qat_iters=8), progress=False)
        v = Validator(str(SHARED / "data" / "set12"))
        v(net, "qat")
        rates.append(v.spike_rate)
    assert 0 < rates[1] < rates[0]
