"""tools/ship_model.py: the shipped copy of a run's model differs only in its name and provenance; bad input is
refused in one line and leaves nothing behind."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from edgespike import fileformat

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "edgespike" / "models" / "default_s25.esnn"


def _tool():
    spec = importlib.util.spec_from_file_location("ship_model", ROOT / "tools" / "ship_model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ship_sets_name_and_training_and_keeps_every_tensor(tmp_path):
    log = tmp_path / "run.train.log"
    log.write_text("10:00:00 command: tools/train_bitplane.py\n")
    dest = tmp_path / "shipped.esnn"
    assert _tool().main([str(SRC), str(dest), "--name", "candidate", "--log", str(log)]) == 0
    shipped, source = fileformat.load(dest), fileformat.load(SRC)
    assert shipped.metadata["name"] == "candidate"
    assert str(log) in shipped.metadata["training"]
    a = fileformat.model_to_header_and_tensors(shipped)[1]
    b = fileformat.model_to_header_and_tensors(source)[1]
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_a_missing_log_or_a_corrupt_model_is_refused_and_writes_nothing(tmp_path, capsys):
    tool = _tool()
    dest = tmp_path / "shipped.esnn"
    assert tool.main([str(SRC), str(dest), "--name", "x", "--log", str(tmp_path / "no.log")]) == 2
    assert "no.log does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.esnn"
    bad.write_bytes(SRC.read_bytes()[:1000])
    log = tmp_path / "run.log"
    log.write_text("x\n")
    assert tool.main([str(bad), str(dest), "--name", "x", "--log", str(log)]) == 2
    assert "bad.esnn" in capsys.readouterr().err
    assert not dest.exists()
