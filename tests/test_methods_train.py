"""Few-iteration training runs of the methods (the real budgets are in docs/METHODS.md): the loop, the
checkpoint, resume, export, and the model file still bit-exact after training; tools/train_method.py errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgespike import fileformat, reference, runtime  # noqa: E402
from edgespike.train.methods import common, spikerir, spikingir, vtsnn  # noqa: E402
from edgespike.train.methods.dncnn import dncnn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SET12 = ROOT.parent / "shared" / "data" / "set12"
sys.path.insert(0, str(ROOT / "tools"))


@pytest.fixture
def tiny_data(tmp_path):
    """Two 48x48 crops of Set12 as the training and validation folders."""
    if not SET12.is_dir():
        pytest.skip("../shared/data/set12 is not here")
    from PIL import Image

    d = tmp_path / "data"
    d.mkdir()
    for f in sorted(SET12.glob("*.png"))[:2]:
        im = np.asarray(Image.open(f).convert("L"))[100:148, 100:148]
        Image.fromarray(im).save(d / f.name)
    return d


def _check_exported(g, path):
    model = fileformat.load(path)
    frame = np.random.default_rng(5).integers(0, 256, (8, 12)).astype(np.uint8)
    out = runtime.denoise(model, frame)
    assert np.array_equal(out, reference.run(model, frame))
    assert np.array_equal(out, g.predict_uint8(frame))
    return model


def test_spikingir_conversion_and_finetuning_three_iterations(tiny_data, tmp_path):
    torch.manual_seed(0)
    g = spikingir.spikingir(3, 4, 4, (3, 4), True)
    before = {k: v.detach().clone() for k, v in g.state_dict().items()}
    phases = [common.Phase("ann", common.ann_mse_loss, iters=3, batch=2, patch=16),
              common.Phase("finetune", common.mse_loss, iters=3, lr=1e-3, batch=2, patch=16,
                           before=common.balance(0.99, n=4))]
    out = tmp_path / "sir.esnn"
    common.train(g, phases, out, 25.0, progress=False, metadata={"method": "spikingir"}, val_every=2,
                 train_dir=tiny_data, val_dir=tiny_data, val_images=1)
    after = g.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained
    assert not torch.equal(before["beta.n1"], after["beta.n1"])  # the MPRN spike value learns
    model = _check_exported(g, out)
    assert model.metadata["method"] == "spikingir" and model.has_extra_step
    ck = torch.load(out.with_suffix(".ckpt.pt"), weights_only=False)
    assert ck["phase"] == 2

    # Resuming a finished run trains nothing more and writes the same model.
    g2 = spikingir.spikingir(3, 4, 4, (3, 4), True)
    out2 = tmp_path / "sir.esnn"
    common.train(g2, phases, out2, 25.0, resume=True, progress=False, train_dir=tiny_data, val_dir=tiny_data,
                 val_images=1, metadata={"method": "spikingir"})
    assert fileformat.load(out2).equals(model)


@pytest.mark.parametrize("loss", [vtsnn.itbp_loss, vtsnn.stbp_loss])
def test_vtsnn_three_iterations(loss, tiny_data, tmp_path):
    torch.manual_seed(0)
    g = vtsnn.unet(2)
    out = tmp_path / "vt.esnn"
    common.train(g, [common.Phase("vt", loss, iters=3, lr=1e-2, batch=2, patch=16)], out, 25.0, progress=False,
                 train_dir=tiny_data, val_dir=tiny_data, val_images=0)
    assert _check_exported(g, out).encoder.kind == "uwe"


def test_spikerir_distillation_three_iterations(tiny_data, tmp_path):
    path = spikerir.TEACHER_DIR / "dncnn_s25.pth"
    if not path.exists():
        pytest.skip("../shared/reference/dncnn is not here")
    torch.manual_seed(0)
    g = dncnn(3, 4, 2)
    d = spikerir.Distiller(g, spikerir.load_teacher(path), 1.0, 3, 4)
    a0 = [p.detach().clone() for p in d.adapters.parameters()]
    out = tmp_path / "sr.esnn"
    phase = common.Phase("distill", d, iters=3, batch=2, patch=16, extra_params=list(d.adapters.parameters()))
    common.train(g, [phase], out, 25.0, progress=False, train_dir=tiny_data, val_dir=tiny_data, val_images=0)
    assert any(not torch.equal(a, b) for a, b in zip(a0, d.adapters.parameters(), strict=True))  # adapters learn
    model = _check_exported(g, out)
    assert not any("adapter" in n.name for n in model.nodes)  # training-only, never exported


def test_train_method_cli_errors(tmp_path, capsys):
    import train_method

    with pytest.raises(SystemExit) as e:
        train_method.main(["coding", "--out", str(tmp_path / "m.esnn")])
    assert e.value.code == 2
    assert "give a budget" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        train_method.main(["spikingir", "--alpha", "1/3", "--iters", "1", "--out", str(tmp_path / "m.esnn")])
    assert e.value.code == 2
    assert "alpha must be in (1/2, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_method.main(["nosuch", "--out", "x"])
    assert not (tmp_path / "m.esnn").exists()


def test_train_method_cli_smoke(tmp_path):
    import train_method

    out = tmp_path / "cae.esnn"
    assert train_method.main(["cae", "--width", "2", "--T", "2", "--ann-iters", "2", "--iters", "2", "--batch", "2",
                              "--ann-batch", "2", "--patch", "16", "--val-images", "0", "--no-progress",
                              "--noise", "speckle", "--threads", "1", "--out", str(out)]) == 0
    model = fileformat.load(out)
    assert model.metadata["method"] == "cae" and model.metadata["noise"] == "speckle"
    assert model.metadata["trained_with"].startswith("python tools/train_method.py cae --width 2")
    assert out.with_suffix(".train.log").exists() and out.with_suffix(".ckpt.pt").exists()


def test_conversion_only_from_a_trained_ann(tiny_data, tmp_path):
    """SpikingIR ablations reuse one ANN: --init its checkpoint, skip the ANN phase, no fine-tuning budget; the
    thresholds are still balanced (and T can differ)."""
    torch.manual_seed(0)
    ann = spikingir.spikingir(3, 4, 4, (3, 4), True)
    common.train(ann, [common.Phase("ann", common.ann_mse_loss, iters=2, batch=2, patch=16),
                       common.Phase("finetune", common.mse_loss)], tmp_path / "ann.esnn", 25.0, progress=False,
                 train_dir=tiny_data, val_dir=tiny_data, val_images=0)
    conv = spikingir.spikingir(3, 4, 6, None, False)  # no MPRN, no recycling, another T
    assert conv.theta("n1").item() == pytest.approx(1.0)
    common.train(conv, [common.Phase("ann", common.ann_mse_loss, iters=5),
                        common.Phase("finetune", common.mse_loss, before=common.balance(0.99, n=4))],
                 tmp_path / "conv.esnn", 25.0, progress=False, train_dir=tiny_data, val_dir=tiny_data, val_images=0,
                 init=tmp_path / "ann.ckpt.pt", skip_phases=1)
    assert torch.equal(conv.weight["conv1"], ann.weight["conv1"])  # the ANN's weights, not retrained
    assert conv.theta("n1").item() != pytest.approx(1.0)  # balanced
    model = _check_exported(conv, tmp_path / "conv.esnn")
    assert model.timesteps == 6 and not model.has_extra_step and len(model.decoder.terms) == 1
    with pytest.raises(FileNotFoundError, match="not found"):
        common.load_parameters(conv, tmp_path / "nope.pt")


def test_resume_in_the_middle_of_a_phase(tiny_data, tmp_path):
    """A run stopped mid-phase continues where it was: no second threshold balancing, only the iterations left."""
    torch.manual_seed(0)
    g = dncnn(3, 4, 2)
    out = tmp_path / "r.esnn"
    common._save(out.with_suffix(".ckpt.pt"), g, torch.optim.Adam(g.parameters()),
                 {"phase": 1, "it": 2, "elapsed": 0.0, "started": True}, {})
    calls = []

    def loss(g, clean, noisy):
        calls.append(1)
        return common.mse_loss(g, clean, noisy)

    def must_not_run(g, sampler):
        raise AssertionError("balancing ran again on resume")

    phases = [common.Phase("ann", common.ann_mse_loss, iters=5), common.Phase("snn", loss, iters=3, batch=1,
                                                                              patch=16, before=must_not_run)]
    common.train(g, phases, out, 25.0, resume=True, progress=False, train_dir=tiny_data, val_dir=tiny_data,
                 val_images=0)
    assert len(calls) == 1  # iterations 3 of 3: the ANN phase and the first two SNN iterations were done
    assert torch.load(out.with_suffix(".ckpt.pt"), weights_only=False)["phase"] == 2
