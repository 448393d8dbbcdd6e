"""tools/compare.py: the table and plot it writes into a METHODS.md, its figures against a direct evaluation,
rows for models not trained yet, and one-line errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from edgespike import data, fileformat, runtime  # noqa: E402
from edgespike.metrics import psnr  # noqa: E402
from edgespike.train.methods import cae, vtsnn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SET12 = ROOT.parent / "shared" / "data" / "set12"
sys.path.insert(0, str(ROOT / "tools"))


@pytest.fixture
def setup(tmp_path):
    if not SET12.is_dir():
        pytest.skip("../shared/data/set12 is not here")
    from PIL import Image

    ds = tmp_path / "ds"
    ds.mkdir()
    for f in sorted(SET12.glob("*.png"))[:2]:
        Image.fromarray(np.asarray(Image.open(f).convert("L"))[:32, :40]).save(ds / f.name)
    torch.manual_seed(0)
    fileformat.save(vtsnn.unet(2).to_model({"architecture": "tiny U-net"}), tmp_path / "vt.esnn")
    fileformat.save(cae.cae(2, 3).to_model(), tmp_path / "cae.esnn")
    (tmp_path / "m.toml").write_text(
        '[[model]]\nname = "VT"\nmethod = "vtsnn"\npath = "vt.esnn"\ncommand = "cmd vt"\ncurve = true\n\n'
        '[[model]]\nname = "CAE speckle"\nmethod = "cae"\npath = "cae.esnn"\nnoise = "speckle"\ncommand = "cmd c"\n\n'
        '[[model]]\nname = "later"\npath = "not-yet.esnn"\ncommand = "cmd later"\n')
    doc = tmp_path / "METHODS.md"
    doc.write_text("# Methods\n\nintro\n\n<!-- compare:begin -->\nold table\n<!-- compare:end -->\n\nfooter\n")
    return tmp_path, ds, doc


def test_compare_writes_table_and_plot(setup):
    import compare

    tmp, ds, doc = setup
    plot = tmp / "p.png"
    js = tmp / "rows.json"
    assert compare.main(["--manifest", str(tmp / "m.toml"), "--dataset", str(ds), "--sigma", "25",
                         "--doc", str(doc), "--plot", str(plot), "--json", str(js),
                         "--curves", str(tmp / "c0.png")]) == 0
    assert not (tmp / "c0.png").exists()  # no training log next to the models: no curves figure
    text = doc.read_text()
    assert text.startswith("# Methods\n\nintro\n") and text.rstrip().endswith("footer")
    assert "old table" not in text and text.count("<!-- compare:begin -->") == 1
    assert "| VT | gaussian 25 | 8 |" in text and "| CAE speckle | speckle 25 | 3 |" in text
    assert "not trained yet" in text and "`cmd later`" in text
    assert "![PSNR vs T per method](p.png)" in text
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The PSNR in the table is the mean over the images of the runtime's output, with the eval noise protocol.
    import json

    rows = {r["name"]: r for r in json.loads(js.read_text())}
    label, files = data.resolve(str(ds))
    rt = runtime.load(str(tmp / "cae.esnn"))
    vals = []
    for s in data.samples(files, 25.0, "speckle"):
        vals.append(psnr(s.clean, rt.denoise(s.noisy)[0]))
    assert rows["CAE speckle"]["psnr"] == pytest.approx(np.mean(vals))
    assert f"| {np.mean(vals):.2f} |" in text
    assert rows["VT"]["snn_uJ"] > 0 and rows["VT"]["spike_rate"] > 0 and rows["later"]["missing"]
    # The float ANN twin runs where the model has one (the CAE), not for UWE-coded VTSNN.
    assert rows["VT"]["ann_psnr"] is None and rows["CAE speckle"]["ann_psnr"] > 0


def test_compare_bad_manifest_is_one_line(tmp_path, capsys):
    import compare

    bad = tmp_path / "bad.toml"
    bad.write_text("[[model]]\nname = 3\n")
    assert compare.main(["--manifest", str(bad), "--dataset", str(tmp_path), "--doc", str(tmp_path / "d.md")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "needs string fields name, path and command" in err
    bad.write_text("not toml [")
    assert compare.main(["--manifest", str(bad), "--doc", str(tmp_path / "d.md")]) == 2
    assert "is not valid TOML" in capsys.readouterr().err
    assert compare.main(["--manifest", str(tmp_path / "none.toml"), "--doc", str(tmp_path / "d.md")]) == 2
    assert "cannot read manifest" in capsys.readouterr().err
    assert not (tmp_path / "d.md").exists()


def test_training_curves_from_the_logs(setup):
    import compare

    tmp, ds, doc = setup
    log = tmp / "vt.train.log"
    log.write_text("10:00:00 command: python tools/train_method.py vtsnn --out old\n"
                   "10:00:05 itbp it 50 1.0 min loss 9.0e+01 val 11.00 dB\n"
                   "11:00:00 command: python tools/train_method.py vtsnn --out vt.esnn\n"
                   "11:00:05 itbp it 50 1.5 min loss 8.0e+01 val 12.50 dB\n"
                   "11:00:09 itbp it 100 3.0 min loss 7.0e+01 val nan dB\n"
                   "12:00:00 command: python tools/train_method.py vtsnn --out vt.esnn --resume\n"
                   "12:00:05 itbp it 150 4.5 min loss 6.5e+01 val 13.25 dB\n")
    assert compare.read_curve(log) == {"itbp": [(1.5, 12.5), (4.5, 13.25)]}
    curves = tmp / "c.png"
    assert compare.main(["--manifest", str(tmp / "m.toml"), "--dataset", str(ds), "--doc", str(doc),
                         "--plot", "", "--curves", str(curves), "--no-ann-twin"]) == 0
    assert curves.read_bytes()[:4] == b"\x89PNG"
    text = doc.read_text()
    assert "![validation PSNR vs training time](c.png)" in text and "PSNR vs T per method" not in text


def test_cache_evaluates_each_model_once_and_only_selects_rows(setup, monkeypatch):
    import json

    import compare

    tmp, ds, doc = setup
    cache = tmp / "cache"
    args = ["--manifest", str(tmp / "m.toml"), "--dataset", str(ds), "--doc", str(doc), "--plot", "", "--curves", "",
            "--cache", str(cache), "--json", str(tmp / "rows.json")]
    assert compare.main(args + ["--only", "VT"]) == 0  # the VTSNN row only: the CAE row is left out
    names = [r["name"] for r in json.loads((tmp / "rows.json").read_text())]
    assert names == ["VT", "later"] and len(list(cache.glob("*.json"))) == 1
    first = json.loads((tmp / "rows.json").read_text())[0]

    calls = []
    real = compare.evaluate_entry
    monkeypatch.setattr(compare, "evaluate_entry", lambda e, *a: calls.append(e.name) or real(e, *a))
    assert compare.main(args) == 0
    assert calls == ["CAE speckle", "later"]  # VT came from the cache; a missing model is never cached
    rows = json.loads((tmp / "rows.json").read_text())
    assert rows[0] == first and [r["name"] for r in rows] == ["VT", "CAE speckle", "later"]

    # a row limited to the first image: its own cache entry, and the table says so
    (tmp / "m.toml").write_text((tmp / "m.toml").read_text().replace('curve = true\n', 'curve = true\nlimit = 1\n'))
    calls.clear()
    assert compare.main(args) == 0
    assert calls == ["VT", "later"] and "| VT (first 1 of 2 images) |" in doc.read_text()
    assert json.loads((tmp / "rows.json").read_text())[0]["images"] == 1

    fileformat.save(vtsnn.unet(2).to_model({"architecture": "retrained"}), tmp / "vt.esnn")  # a new file
    calls.clear()
    assert compare.main(args + ["--only", "VT"]) == 0
    assert calls == ["VT", "later"] and len(list(cache.glob("*.json"))) == 4  # a missing model is always a row
