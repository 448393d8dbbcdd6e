"""The profiler's exact spike simulation and the int8 ANN twins (ONNX QDQ via onnxruntime, TFLite via ai-edge-litert).

Bound for the int8 twins: on a random 5-layer, 16-channel model the measured PSNR of each int8 twin against the
float twin is about 47 dB (ONNX) and 53 dB (TFLite); on the half-resolution model below 48 and 52 dB, on the
small graph with Add, Concat and two transposed convs 56 dB. 35 dB leaves room for BLAS and calibration
differences while still failing on any real mistake (a wrong scale, zero point or layout costs far more than
10 dB). The float graphs have no such slack: they must equal the shared twin to one grey level (measured: equal).
"""

from pathlib import Path

import numpy as np
import pytest

from edgespike import reference
from edgespike.errors import UserError
from edgespike.metrics import psnr
from edgespike.profile.run import SnnRunner
from edgespike.profile.testmodels import polyphase_blur, random_dncnn, random_graph

SET12 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "set12"


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
    levels = np.unique(np.round(tw.forward(frame / 255.0, return_acts=True)[1]["conv1"] * m.timesteps, 6))
    assert set(levels) <= set(range(m.timesteps + 1))
    content = ann.to_tflite(tw, [c / 255.0 for c in calib], 32, 32)
    run = ann.TfliteRunner(content)
    assert run(frame).shape == frame.shape  # resized from 32x32
    ann.to_onnx(tw, tmp_path / "q.onnx")


def test_unsupported_models_are_refused():
    from edgespike.profile import ann

    with pytest.raises(UserError, match="LIF"):
        ann.twin(random_dncnn(depth=3, width=2, leak_shift=1))


# --------------------------------------------------------------------------- half-resolution body and graphs
@pytest.fixture(scope="module")
def shapes():
    """The default model's new shape (5x5 stride-2 conv, 3x3 convs at half resolution, 6x6 stride-2 transposed
    read-out), a small graph with Add, Concat and two other transposed convs, and a full-resolution bit-plane
    network with dilated convs (IRCNN's body); an odd frame (padded to 38 x 52 inside the graphs, cropped back)."""
    from edgespike.testing import bitplane_dncnn

    pytest.importorskip("onnxruntime")
    pytest.importorskip("ai_edge_litert")
    calib = [_smooth(48, 48, s) for s in range(6)]
    models = {"halfres": random_dncnn(depth=4, width=8, timesteps=4, seed=0, frame=calib[0], down=True),
              "graph": random_graph(frame=calib[0]),
              "dilated": bitplane_dncnn(5, 8, 8, seed=3, calib=calib[0], dilations=(1, 2, 4, 3, 1))}
    return models, calib, _smooth(37, 51, 99)


@pytest.mark.parametrize("which", ["halfres", "graph", "dilated"])
def test_float_onnx_and_tflite_graphs_equal_the_shared_twin(shapes, which, tmp_path):
    from edgespike.profile import ann
    from edgespike.twin import Twin

    models, _, frame = shapes
    m = models[which]
    tw = ann.twin(m, "relu")
    ref = Twin(m, mode="relu", dtype=np.float64).denoise(frame)
    ann.to_onnx(tw, tmp_path / "f.onnx")
    outs = {"numpy": np.clip(np.rint(tw.forward(frame / 255.0) * 255), 0, 255).astype(np.uint8),
            "onnx": ann.OnnxRunner(tmp_path / "f.onnx")(frame)}
    for xnnpack in (True, False):
        run = ann.TfliteRunner(lambda h, w: ann.to_tflite(tw, [], h, w, int8=False), xnnpack=xnnpack)
        outs[f"tflite xnnpack={xnnpack}"] = run(frame)
    assert np.abs(ref.astype(int) - frame).mean() > 5  # the twin really changes the frame
    for name, y in outs.items():
        assert y.shape == frame.shape, name
        # the shared twin rounds its read-out like the SNN decoder, these at the output: one grey level at most
        assert np.abs(y.astype(int) - ref.astype(int)).max() <= 1, name


@pytest.mark.parametrize("which", ["halfres", "graph", "dilated"])
def test_int8_twins_of_new_shapes_track_the_float_twin(shapes, which, tmp_path):
    import onnx
    from ai_edge_litert.interpreter import Interpreter

    from edgespike.profile import ann

    models, calib, frame = shapes
    tw = ann.twin(models[which], "relu")
    yf = np.clip(np.rint(tw.forward(frame / 255.0) * 255), 0, 255).astype(np.uint8)
    ann.to_onnx(tw, tmp_path / "f.onnx")
    ann.quantize_onnx(tmp_path / "f.onnx", tmp_path / "q.onnx", [c / 255.0 for c in calib])
    assert psnr(yf, ann.OnnxRunner(tmp_path / "q.onnx")(frame)) > 35
    q = onnx.load(str(tmp_path / "q.onnx"))
    if which == "dilated":  # the taps' spacing is the Conv's own attribute (no padding ops around it)
        dil = [list(a.ints) for n in q.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "dilations"]
        assert sorted(d[0] for d in dil) == [1, 1, 2, 3, 4]
    else:
        assert "ConvTranspose" in {n.op_type for n in q.graph.node}
    assert any(i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4 for i in q.graph.initializer)
    built = []

    def build(h, w):
        built.append((h, w))
        return ann.to_tflite(tw, [c / 255.0 for c in calib], h, w)

    run = ann.TfliteRunner(build, size=frame.shape)
    yt = run(frame)
    assert psnr(yf, yt) > 35
    assert psnr(yt, ann.TfliteRunner(build, xnnpack=False)(frame)) > 45  # XNNPACK and the builtin kernels
    assert run(frame[:20, :16]).shape == (20, 16) and run(frame).shape == frame.shape
    assert built == [frame.shape, frame.shape, (20, 16)]  # one file per size, kept per runner
    ops = {d["op_name"] for d in Interpreter(model_content=build(9, 11))._get_ops_details()}
    assert ({"CONV_2D"} if which == "dilated" else {"TRANSPOSE_CONV", "CONV_2D", "PAD", "SLICE"}) <= ops  # int8 too:
    assert Interpreter(model_content=build(9, 11)).get_input_details()[0]["dtype"] == np.int8


def test_int8_twins_lose_little_psnr_on_set12(tmp_path):
    """A hand-made half-resolution denoiser (3x3 box blur, thresholds calibrated on a noisy Set12 image) on
    129x97 crops (odd sizes) of Set12 01-02 at sigma 25. Measured: noisy 20.46 dB, SNN 26.39, float twin 26.56,
    ONNX int8 26.52 (-0.04), TFLite int8 26.52 (-0.04). Bound: 0.3 dB, the budget the profile reports against."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("ai_edge_litert")
    if not SET12.is_dir():
        pytest.skip(f"no Set12 at {SET12}")
    from edgespike import data
    from edgespike.profile import ann

    clean = [data.read_image(SET12 / f"{i:02d}.png")[0] for i in range(1, 5)]
    noisy = [data.noisy_image(c, i, 25) for i, c in enumerate(clean)]
    m = polyphase_blur(depth=4, timesteps=8, frame=noisy[2])
    rng = np.random.default_rng(0)
    calib = [im[y:y + 64, x:x + 64] / 255.0 for im in noisy[2:4] for y, x in rng.integers(0, 190, (4, 2))]
    tw = ann.twin(m, "relu")
    ann.to_onnx(tw, tmp_path / "f.onnx")
    ann.quantize_onnx(tmp_path / "f.onnx", tmp_path / "q.onnx", calib)
    nets = {"float": ann.OnnxRunner(tmp_path / "f.onnx"), "onnx": ann.OnnxRunner(tmp_path / "q.onnx"),
            "tflite": ann.TfliteRunner(lambda h, w: ann.to_tflite(tw, calib, h, w)), "snn": SnnRunner(m)}
    score = {k: np.mean([psnr(clean[i][:129, :97], f(noisy[i][:129, :97])) for i in (0, 1)])
             for k, f in nets.items()}
    noisy_db = np.mean([psnr(clean[i][:129, :97], noisy[i][:129, :97]) for i in (0, 1)])
    assert score["float"] > noisy_db + 5  # it denoises: the comparison is about a real denoiser
    assert score["snn"] > noisy_db + 5
    for k in ("onnx", "tflite"):
        assert abs(score["float"] - score[k]) < 0.3, (k, score)


def test_qnet_half_resolution_export_has_a_twin(tmp_path):
    """The exact shape the trainer exports (``QSpikingDnCNN(down=True).to_model``), calibrated on data."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from edgespike.profile import ann
    from edgespike.train.qnet import QSpikingDnCNN
    from edgespike.twin import Twin

    torch.manual_seed(0)
    net = QSpikingDnCNN(depth=4, width=8, timesteps=8, down=True)
    net.calibrate(torch.from_numpy(np.stack([_smooth(32, 32, s) for s in range(4)])[:, None].astype(np.float32)))
    m = net.to_model({"name": "tiny-down"})
    kinds = [(type(n).__name__, getattr(n, "stride", None), getattr(n, "kernel", None)) for n in m.nodes]
    assert kinds[0] == ("Conv", 2, 5) and kinds[-2] == ("ConvTranspose", 2, 6) and m.size_multiple == 2
    frame = _smooth(33, 21, 5)
    tw = ann.twin(m, "relu")
    ann.to_onnx(tw, tmp_path / "f.onnx")
    ref = Twin(m, mode="relu", dtype=np.float64).denoise(frame)
    assert np.abs(ann.OnnxRunner(tmp_path / "f.onnx")(frame).astype(int) - ref.astype(int)).max() <= 1


def test_unsupported_graphs_are_refused_in_one_line():
    from edgespike.model import Add, Conv, Integrator
    from edgespike.profile import ann

    m = random_dncnn(depth=3, width=1, seed=0)  # nodes conv1 if1 conv2 if2 conv3 readout, one channel each
    # an Add of the frame and spikes mixes units (255 per pixel, 1 per spike) the rate network cannot express
    c2 = m.nodes[2]
    m.nodes[2:3] = [Add("mix", ("input", "if1")), Conv("conv2", "mix", c2.weight, c2.bias)]
    with pytest.raises(UserError, match="Add 'mix' sums pixels and spikes"):
        ann.twin(m)
    m2 = random_dncnn(depth=3, width=2, seed=0)
    m2.nodes.append(Integrator("extra", "conv2"))  # conv2 now feeds two nodes
    with pytest.raises(UserError, match="conv 'conv2' must feed exactly one"):
        ann.twin(m2)
    m3 = random_dncnn(depth=3, width=1, seed=0)
    m3.nodes[4:] = [Integrator("readout", "if2")]  # a read-out of spikes, not of a conv's current
    with pytest.raises(UserError, match="Integrator 'readout' must follow a conv"):
        ann.twin(m3)


@pytest.mark.parametrize("which", ["halfres", "graph"])
def test_quant_twins_of_new_shapes_run(shapes, which, tmp_path):
    """``--twin quant``: T-level floors are discontinuous, so float32 (the graphs) against float64 (numpy) rounding
    flips a few levels and int8 rounding flips more. Measured against the numpy quant twin: float ONNX 50 dB
    (half-res) and identical (graph), float TFLite 47 and 81 dB, int8 TFLite 34 dB on both (a fused RELU_N1_TO_1
    on TRANSPOSE_CONV in the graph). Bounds 40 and 28 dB: a wrong layout or scale costs far more."""
    from edgespike.profile import ann

    models, calib, frame = shapes
    tw = ann.twin(models[which], "quant")
    yq = np.clip(np.rint(tw.forward(frame / 255.0) * 255), 0, 255).astype(np.uint8)
    ann.to_onnx(tw, tmp_path / "q.onnx")
    assert psnr(yq, ann.OnnxRunner(tmp_path / "q.onnx")(frame)) > 40
    assert psnr(yq, ann.TfliteRunner(lambda h, w: ann.to_tflite(tw, [], h, w, int8=False))(frame)) > 40
    assert psnr(yq, ann.TfliteRunner(lambda h, w: ann.to_tflite(tw, [c / 255.0 for c in calib], h, w))(frame)) > 28
