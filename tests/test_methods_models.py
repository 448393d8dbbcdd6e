"""The trained method models committed under runs/methods (docs/METHODS.md): each loads, and the fast runtime
equals the reference implementation on them bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgespike import fileformat, reference, runtime

RUNS = Path(__file__).resolve().parents[1] / "runs" / "methods"
MODELS = sorted(RUNS.glob("*.esnn"))


def test_every_model_of_the_comparison_manifest_is_committed():
    import tomllib

    manifest = RUNS.parents[1] / "edgespike" / "train" / "methods" / "manifest.toml"
    paths = {RUNS.parents[1] / m["path"] for m in tomllib.loads(manifest.read_text())["model"]}
    missing = sorted(p.name for p in paths if not p.is_file())
    assert not missing, f"docs/METHODS.md's table rows need their model files in runs/methods: {missing}"


@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_runtime_equals_reference_on_the_trained_model(path):
    model = fileformat.load(path)
    frame = np.random.default_rng(0).integers(0, 256, (19, 21), dtype=np.uint8)  # odd: padding and cropping too
    want = reference.run(model, frame)
    got, stats = runtime.Runtime(model).denoise(frame)
    assert np.array_equal(got, want)
    assert sum(int(s.sum()) for s in stats.spikes.values()) > 0  # a trained model spikes
