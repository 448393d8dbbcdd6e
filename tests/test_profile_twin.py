"""The profiler's exact spike simulation and the int8 ANN twins (ONNX QDQ via onnxruntime, TFLite via ai-edge-litert).

Bound for the int8 twins: on a random 5-layer, 16-channel model the measured PSNR of each int8 twin against the
float twin is about 47 dB (ONNX) and 53 dB (TFLite); 35 dB leaves room for BLAS and calibration differences
while still failing on any real mistake (a wrong scale, zero point or layout costs far more than 10 dB).
"""

import numpy as np
import pytest

from edgespike import reference
from edgespike.errors import UserError
from edgespike.metrics import psnr
from edgespike.profile.run import SnnRunner
from edgespike.profile.testmodels import random_dncnn


def _smooth(h, w, seed):
    rng = np.random.default_rng(seed)
    base = rng.integers(30, 226, (h // 8 + 1, w // 8 + 1)).astype(float)
    img = np.kron(base, np.ones((8, 8)))[:h, :w] + rng.normal(0, 25, (h, w))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kw", [{}, {"v_init": "zero"}, {"reset": "hard"}, {"leak_shift": 2}, {"mprn": (1, 2)},
                                {"timesteps": 1}])
def test_profiler_spike_counts_are_the_reference_s(kw):
    m = random_dncnn(depth=4, width=5, seed=3, **kw)
    f = np.random.default_rng(1).integers(0, 256, (13, 17)).astype(np.uint8)
    out, tr = reference.run(m, f, trace=True)
    out2, spikes = SnnRunner(m).run(f)
    assert np.array_equal(out, out2)
    assert spikes == tr.spikes
    assert sum(sum(v) for v in spikes.values()) > 0  # a silent model would test nothing


@pytest.fixture(scope="module")
def small():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("ai_edge_litert")
    calib = [_smooth(48, 48, s) for s in range(6)]
    m = random_dncnn(depth=5, width=16, timesteps=4, seed=0, frame=calib[0])
    return m, calib, _smooth(64, 80, 99)


def test_float_twin_matches_the_shared_twin(small, tmp_path):
    from edgespike.profile import ann
    from edgespike.twin import Twin

    m, _, frame = small
    tw = ann.twin(m, "relu")
    ann.to_onnx(tw, tmp_path / "f.onnx")
    y = ann.OnnxRunner(tmp_path / "f.onnx")(frame)
    ref = Twin(m, mode="relu", dtype=np.float64).denoise(frame)
    # the shared twin rounds its read-out like the SNN decoder, ours at the output: at most one grey level apart
    assert np.abs(y.astype(int) - ref.astype(int)).max() <= 1


def test_int8_twins_track_the_float_twin(small, tmp_path):
    from edgespike.profile import ann

    m, calib, frame = small
    tw = ann.twin(m, "relu")
    yf = np.clip(np.rint(tw.forward(frame / 255.0) * 255), 0, 255).astype(np.uint8)
    ann.to_onnx(tw, tmp_path / "f.onnx")
    ann.quantize_onnx(tmp_path / "f.onnx", tmp_path / "q.onnx", [c / 255.0 for c in calib])
    yq = ann.OnnxRunner(tmp_path / "q.onnx")(frame)
    content = ann.to_tflite(tw, [c / 255.0 for c in calib], *frame.shape)
    yt = ann.TfliteRunner(content)(frame)
    yt2 = ann.TfliteRunner(content, xnnpack=False)(frame)
    assert psnr(yf, yq) > 35
    assert psnr(yf, yt) > 35
    assert psnr(yt, yt2) > 45  # XNNPACK and the builtin kernels agree to the rounding
    # and the int8 graphs really are int8: the QDQ model holds int8 weights, the tflite model int8 tensors
    import onnx

    q = onnx.load(str(tmp_path / "q.onnx"))
    assert any(i.data_type == onnx.TensorProto.INT8 for i in q.graph.initializer)
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=content)
    assert it.get_input_details()[0]["dtype"] == np.int8


def test_quant_twin_runs_and_tflite_resizes(small, tmp_path):
    from edgespike.profile import ann

    m, calib, frame = small
    tw = ann.twin(m, "quant")
    levels = np.unique(np.round(tw.forward(frame / 255.0, return_acts=True)[1][0] * m.timesteps, 6))
    assert set(levels) <= set(range(m.timesteps + 1))
    content = ann.to_tflite(tw, [c / 255.0 for c in calib], 32, 32)
    run = ann.TfliteRunner(content)
    assert run(frame).shape == frame.shape  # resized from 32x32
    ann.to_onnx(tw, tmp_path / "q.onnx")


def test_unsupported_models_are_refused():
    from edgespike.profile import ann

    with pytest.raises(UserError, match="LIF"):
        ann.twin(random_dncnn(depth=3, width=2, leak_shift=1))
