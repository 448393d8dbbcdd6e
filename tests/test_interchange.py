"""NIR interchange: exact round trips, the mapping of each supported node, and one-line refusals of the rest."""

from __future__ import annotations

import json

import h5py
import nir
import numpy as np
import pytest

from edgespike import reference
from edgespike.cli import main
from edgespike.fileformat import load, save
from edgespike.interchange import InterchangeError, nir_export, nir_import
from edgespike.interchange.floatnet import FConv, conv2d, simulate
from edgespike.model import (
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
from edgespike.profile.testmodels import random_dncnn

DT = 1e-4
RNG = np.random.default_rng(0)
FRAMES = [np.clip(np.kron(RNG.integers(30, 220, (4, 4)), np.ones((4, 4))) + RNG.normal(0, 15, (16, 16)), 0, 255)
          .astype(np.uint8) for _ in range(2)]


def i8(shape, lo=-127, hi=128):
    return RNG.integers(lo, hi, shape).astype(np.int8)


def rich_model() -> Model:
    """Every field NIR 1.0 cannot say: soft reset, v_init half, MPRN with weight_extra, Add, scales present and
    absent, a leak, two decoder terms."""
    return Model(
        nodes=[
            Conv("c1", "input", i8((4, 1, 3, 3)), RNG.integers(-50, 50, 4).astype(np.int32),
                 scale=np.full(4, 0.01, np.float32)),
            Neuron("n1", "c1", np.full(4, 3000, np.int32), reset="soft", v_init="half", mprn=(3, 4),
                   scale=np.full(4, 0.01, np.float32)),
            Conv("c2", "n1", i8((4, 4, 3, 3)), np.zeros(4, np.int32), stride=2, weight_extra=i8((4, 4, 3, 3)),
                 scale=np.float32([0.1, 0.2, 0.3, 0.4])),
            Neuron("n2", "c2", np.array([100, 200, 300, 400], np.int32), reset="hard", leak_shift=3),
            Conv("c3", "n2", i8((4, 4, 1, 1)), np.zeros(4, np.int32)),
            Conv("c3b", "n2", i8((4, 4, 5, 5)), np.ones(4, np.int32)),
            Add("a", ("c3", "c3b")),
            Neuron("n3", "a", np.full(4, 500, np.int32)),
            Conv("c4", "n1", i8((1, 4, 3, 3)), np.array([7], np.int32)),
            Integrator("out", "c4"),
            Conv("c5", "n1", i8((1, 4, 3, 3)), np.zeros(1, np.int32)),
            Neuron("n5", "c5", np.full(1, 900, np.int32), mprn=(1, 2)),
        ],
        timesteps=6,
        decoder=Decoder([ReadoutTerm("out", "membrane", np.array([3], np.int32)),
                         ReadoutTerm("n5", "count", np.array([-5], np.int32))], shift=4),
        metadata={"task": "test", "nested": {"a": [1, 2]}},
    )


def _graph_file(tmp_path, nodes: dict, edges: list, name="g.nir", metadata=None) -> str:
    g = nir.NIRGraph(nodes=nodes, edges=edges, type_check=False, metadata=metadata or {})
    path = tmp_path / name
    nir.write(path, g)
    return str(path)


def _conv(cout, cin, k=3, stride=1, pad=None, w=None, **kw):
    w = RNG.normal(0.1, 0.1, (cout, cin, k, k)) if w is None else w
    # nir.write cannot store input_shape=None; the importer ignores it (networks take any frame size)
    return nir.Conv2d(input_shape=(16, 16), weight=w, stride=stride, padding=k // 2 if pad is None else pad,
                      dilation=kw.pop("dilation", 1), groups=kw.pop("groups", 1), bias=np.zeros(cout), **kw)


def _lif(c, tau=4 * DT, thr=0.5, **over):
    p = dict(tau=np.full(c, tau), r=np.full(c, tau / DT), v_leak=np.zeros(c), v_threshold=np.full(c, thr),
             v_reset=np.zeros(c))
    p.update(over)
    return nir.LIF(**p)


def _chain(*layers) -> tuple[dict, list]:
    nodes = {"input": nir.Input(input_type={"input": np.array([1, 16, 16])})}
    names = ["input"]
    for i, layer in enumerate(layers):
        nodes[f"n{i}"] = layer
        names.append(f"n{i}")
    nodes["output"] = nir.Output(output_type={"output": np.array([1, 16, 16])})
    names.append("output")
    return nodes, list(zip(names[:-1], names[1:], strict=True))


def _refused(capsys, argv) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgespike: error: "), err
    assert "Traceback" not in err
    return lines[0]


# --------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("make", [rich_model, lambda: random_dncnn(depth=3, width=4, timesteps=4, seed=2),
                                  lambda: random_dncnn(depth=3, width=4, timesteps=4, seed=1, reset="hard",
                                                       v_init="zero", leak_shift=2)])
def test_round_trip_is_identity(tmp_path, make):
    model = make()
    graph, _ = nir_export.to_nir(model, frame_size=(16, 16))
    nir.write(tmp_path / "m.nir", graph)
    back = nir.read(tmp_path / "m.nir")  # NIR's own reader, with its type checking
    assert isinstance(back, nir.NIRGraph)
    restored = nir_export.restore(back, nir_export.header_of(back))
    assert restored.equals(model)


def test_round_trip_through_the_cli(tmp_path, capsys):
    model = rich_model()
    model.encoder = Encoder("rate", seed=12345)
    save(model, tmp_path / "a.esnn")
    argv = ["export", str(tmp_path / "a.esnn"), "--to", "nir", "-o", str(tmp_path / "a.nir"), "--frame-size", "32x16"]
    line = _refused(capsys, argv)  # what NIR consumers will not simulate is named, nothing is written
    assert "soft reset" in line and "'rate' encoder" in line and "--lossy" in line
    assert not (tmp_path / "a.nir").exists()
    assert main(argv + ["--lossy"]) == 0
    out = capsys.readouterr().out
    assert "lost: soft reset" in out and "lost: the 'rate' encoder" in out
    assert main(["import", str(tmp_path / "a.nir"), "-o", str(tmp_path / "b.esnn")]) == 0
    assert load(tmp_path / "b.esnn").equals(model)


def test_exported_values_are_the_real_values(tmp_path):
    """Other frameworks see real weights: integer * scale / input unit, thresholds (theta - 1/2) * unit."""
    model = rich_model()
    graph, _ = nir_export.to_nir(model, frame_size=(16, 16))
    c1, n1, c2 = graph.nodes["c1"], graph.nodes["n1"], graph.nodes["c2"]
    np.testing.assert_allclose(c1.weight, model.nodes[0].weight * 0.01 * 255, rtol=1e-6)
    np.testing.assert_allclose(n1.v_threshold[:, 0, 0], (3000 - 0.5) * np.float64(np.float32(0.01)), rtol=1e-12)
    np.testing.assert_allclose(c2.weight[2], model.nodes[2].weight[2] * np.float32(0.3), rtol=1e-6)
    lif = graph.nodes["n2"]
    assert isinstance(lif, nir.LIF) and np.allclose(1 - DT / lif.tau, 1 - 2.0**-3) and np.allclose(
        DT / lif.tau * lif.r, 1.0)
    assert isinstance(graph.nodes["n1"], nir.IF) and np.allclose(graph.nodes["n1"].r * DT, 1.0)
    assert set(graph.edges) >= {("c3", "a"), ("c3b", "a"), ("a", "n3")}  # Add is a Scale(1) fed by two edges


def test_edited_graph_is_noticed_and_can_be_requantised(tmp_path, capsys):
    model = random_dncnn(depth=3, width=4, timesteps=4, seed=3)
    graph, _ = nir_export.to_nir(model, frame_size=(16, 16))
    graph.nodes["conv2"].weight = graph.nodes["conv2"].weight * 1.37
    nir.write(tmp_path / "e.nir", graph)
    line = _refused(capsys, ["import", str(tmp_path / "e.nir"), "-o", str(tmp_path / "e.esnn")])
    assert "'conv2'" in line and "--requantise" in line
    # --requantise: the float values are taken at face value (the soft reset lives in metadata only, so this
    # imports NIR's hard-reset reading of the graph)
    assert main(["import", str(tmp_path / "e.nir"), "-o", str(tmp_path / "e.esnn"), "--requantise",
                 "--crop", "16", "--frames", "2", "--json", str(tmp_path / "r.json")]) == 0
    again = load(tmp_path / "e.esnn")
    # the exported conventions (T, residual read-out and its scale) come back from the header
    assert again.timesteps == 4 and again.decoder.residual
    assert min(p or 99.0 for p in json.loads((tmp_path / "r.json").read_text())["psnr_db"]) > 25


@pytest.mark.parametrize("node, what", [
    (ConvTranspose("up", "n1", i8((1, 4, 4, 4)), np.zeros(1, np.int32), padding=1), "transposed convolution"),
    (Concat("cat", ("n1", "c1")), "concatenation"),
])
def test_export_refuses_what_nir_lacks(tmp_path, capsys, node, what):
    nodes = [Conv("c1", "input", i8((4, 1, 3, 3)), np.zeros(4, np.int32)),
             Neuron("n1", "c1", np.full(4, 900, np.int32))]
    if isinstance(node, ConvTranspose):
        nodes[0].stride = 2
    nodes.append(node)
    nodes += [Conv("c9", node.name, i8((1, node.weight.shape[0] if isinstance(node, ConvTranspose) else 8, 3, 3)),
                   np.zeros(1, np.int32)), Integrator("r", "c9")]
    model = Model(nodes=nodes, timesteps=4, decoder=Decoder([ReadoutTerm("r", "membrane", np.array([1], np.int32))]))
    save(model, tmp_path / "m.esnn")
    line = _refused(capsys, ["export", str(tmp_path / "m.esnn"), "--to", "nir", "-o", str(tmp_path / "m.nir")])
    assert repr(node.name) in line and what in line


# --------------------------------------------------------------------------- mapping foreign graphs
def test_if_lif_cubalif_and_integrator_read_out(tmp_path, capsys):
    """Conv -> IF -> Conv -> CubaLIF(tau_syn = dt) -> Conv -> I, membrane read-out, residual: near-lossless."""
    nodes, edges = _chain(
        _conv(4, 1, w=np.abs(RNG.normal(0.1, 0.05, (4, 1, 3, 3)))),
        nir.IF(r=np.full(4, 1 / DT), v_threshold=np.full(4, 0.3), v_reset=np.zeros(4)),
        _conv(4, 4),
        nir.CubaLIF(tau_syn=np.full(4, DT), tau_mem=np.full(4, 8 * DT), r=np.full(4, 8.0), v_leak=np.zeros(4),
                    v_threshold=np.full(4, 0.6), w_in=np.ones(4)),
        _conv(1, 4, w=RNG.normal(0.0, 0.1, (1, 4, 3, 3))),
        nir.I(r=np.full(1, 1 / DT)),
    )
    path = _graph_file(tmp_path, nodes, edges)
    graph = nir_import.read_graph(path)
    net = nir_import.lower(graph, timesteps=8, residual=True)
    assert net.readout_quantity == "membrane"
    model, report = nir_import.quantise(net, FRAMES)
    assert [type(n).__name__ for n in model.nodes] == ["Conv", "Neuron", "Conv", "Neuron", "Conv", "Integrator"]
    assert model.nodes[3].leak_shift == 3 and model.decoder.residual
    assert report.psnr_min > 40, report.text()
    for f, reported in zip(FRAMES, report.psnr, strict=True):  # the report measures what reference.run computes
        assert nir_import._psnr(reference.run(model, f), simulate(net, f).output) == pytest.approx(reported)
    assert main(["import", path, "-o", str(tmp_path / "m.esnn"), "--residual", "--crop", "16"]) == 0
    assert "PSNR min" in capsys.readouterr().out


def test_a_dilated_conv_imports_as_a_dilated_conv(tmp_path):
    """NIR's dilation with its 'same' padding d * (k // 2) becomes edgespike's (format 1.3), computed exactly."""
    nodes, edges = _chain(_conv(2, 1), _lif(2), _conv(2, 2, dilation=3, pad=3), _lif(2), _conv(1, 2),
                          nir.I(r=np.full(1, 1 / DT)))
    net = nir_import.lower(nir_import.read_graph(_graph_file(tmp_path, nodes, edges)), timesteps=8, residual=True)
    model, report = nir_import.quantise(net, FRAMES)
    assert [n.dilation for n in model.nodes if isinstance(n, Conv)] == [1, 3, 1]
    assert report.psnr_min > 40, report.text()


def test_li_read_out_is_a_leaky_never_firing_neuron():
    nodes, edges = _chain(_conv(2, 1), _lif(2), _conv(1, 2),
                          nir.LI(tau=np.full(1, 2 * DT), r=np.full(1, 2.0), v_leak=np.zeros(1)))
    graph = nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)
    net = nir_import.lower(graph, timesteps=8)
    model, report = nir_import.quantise(net, FRAMES)
    ro = model.node(model.decoder.terms[0].node)
    assert isinstance(ro, Neuron) and ro.leak_shift == 1 and model.decoder.terms[0].quantity == "membrane"
    assert report.psnr_min > 35, report.text()


def test_tau_maps_to_the_nearest_shift_leak_and_is_reported():
    nodes, edges = _chain(_conv(2, 1), _lif(2, tau=3 * DT), _conv(1, 2), _lif(1))
    net = nir_import.lower(nir.NIRGraph(nodes=nodes, edges=edges, type_check=False), timesteps=4)
    model, report = nir_import.quantise(net, FRAMES[:1])
    assert model.node("n1").leak_shift == 2  # dt/tau = 1/3: 2^-2 is 0.083 away, 2^-1 0.167
    assert "tau 3 dt -> leak 2^-2 (a 0.6667 vs 0.7500)" in report.text()


@pytest.mark.parametrize("thr", [0.8, 1e-4])
def test_soft_reset_thresholds_are_whole_units_and_weights_never_overflow(thr):
    """Soft reset subtracts theta: the scale is chosen so that thr is exactly theta units, never finer than the
    max-abs scale (no weight is clipped). A threshold below one unit cannot be aligned: theta = 1."""
    w = RNG.normal(0.1, 0.1, (2, 1, 3, 3))
    nodes, edges = _chain(_conv(2, 1, w=w), _lif(2, thr=thr), _conv(1, 2), _lif(1))
    net = nir_import.lower(nir.NIRGraph(nodes=nodes, edges=edges, type_check=False), timesteps=4, reset="soft")
    model, _ = nir_import.quantise(net, FRAMES[:1])
    conv, neuron = model.node("n0"), model.node("n1")
    q = conv.scale.astype(np.float64)
    eff = w / 255  # the frame's unit is 1/255
    qmax = np.abs(eff).reshape(2, -1).max(axis=1) / 127
    assert np.all(q >= qmax * (1 - 1e-6))
    np.testing.assert_allclose(conv.weight * q[:, None, None, None], eff, atol=0.5 * q.max() * (1 + 1e-6))
    gain = DT / (4 * DT) * 4.0  # tau = 4 dt, r = tau / dt
    if thr / gain > qmax.max():
        np.testing.assert_allclose(neuron.threshold * q, thr / gain, rtol=1e-6)
    else:
        assert np.all(neuron.threshold == 1)


@pytest.mark.parametrize("ratio, k", [(2.7, 2), (1.0, 1), (1.2, 1), (6.0, 3), (2.0**20, 20)])
def test_leak_is_the_nearest_power_of_two(ratio, k):
    a, shift = nir_import.leak_for("x", None, ratio * DT, DT)
    assert shift == k and a == pytest.approx(1 - 1 / ratio)


def test_scale_affine_groups_and_sums():
    """Scale folds into the conv before it, an Affine is a 1x1 conv, groups expand to zero blocks, two edges into
    one neuron sum (their convs share one integer scale)."""
    w = RNG.normal(0.1, 0.1, (4, 1, 3, 3))
    nodes = {
        "in": nir.Input(input_type={"input": np.array([1, 16, 16])}),
        "a": _conv(4, 1, w=w), "s": nir.Scale(scale=np.array([1.0, 2.0, 0.5, 1.0])), "l1": _lif(4),
        "g": _conv(4, 4, groups=2, w=RNG.normal(0.2, 0.1, (4, 2, 3, 3))),
        "aff": nir.Affine(weight=RNG.normal(0.2, 0.1, (4, 4)), bias=np.zeros(4)),
        "l2": _lif(4), "r": _conv(1, 4), "l3": _lif(1),
        "out": nir.Output(output_type={"output": np.array([1, 16, 16])}),
    }
    edges = [("in", "a"), ("a", "s"), ("s", "l1"), ("l1", "g"), ("l1", "aff"), ("g", "l2"), ("aff", "l2"),
             ("l2", "r"), ("r", "l3"), ("l3", "out")]
    net = nir_import.lower(nir.NIRGraph(nodes=nodes, edges=edges, type_check=False), timesteps=4)
    a = net.node("a")
    np.testing.assert_allclose(a.weight[1], 2 * w[1])
    g = net.node("g")
    assert g.weight.shape == (4, 4, 3, 3) and np.all(g.weight[:2, 2:] == 0) and np.all(g.weight[2:, :2] == 0)
    assert net.node("aff").weight.shape == (4, 4, 1, 1)
    assert net.node("l2.sum").inputs == ("g", "aff")
    model, _ = nir_import.quantise(net, FRAMES[:1])
    np.testing.assert_array_equal(model.node("g").scale, model.node("aff").scale)  # one unit for the sum
    assert isinstance(model.node("l2.sum"), Add)


def test_pooling_is_an_exact_stride_two_conv():
    pool = nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0]))
    nodes, edges = _chain(_conv(2, 1), _lif(2), _conv(1, 2), pool, _lif(1))
    graph = nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)
    with pytest.raises(InterchangeError, match="1/2 of the input resolution"):
        nir_import.lower(graph)
    low = nir_import._Lowering(graph, DT)
    low.channels["x"] = 2
    nir_import._lower_node(low, "p", pool, "x", 2, None)
    pool = low.nodes[0]
    assert isinstance(pool, FConv) and pool.stride == 2
    x = RNG.integers(0, 2, (2, 8, 8)).astype(np.float64)
    expect = x.reshape(2, 4, 2, 4, 2).sum(axis=(2, 4))
    np.testing.assert_array_equal(conv2d(x, pool.weight, 2), expect)


# --------------------------------------------------------------------------- refusals
def _lif_bad(**over):
    return _lif(2, **over)


REFUSED = [
    (lambda: nir.Delay(delay=np.ones(2)), "Delay", "delays"),
    (lambda: nir.Threshold(threshold=np.ones(2)), "Threshold", "stateless threshold"),
    (lambda: nir.Flatten(input_type=np.array([2, 16, 16])), "Flatten", "flattened"),
    (lambda: nir.CubaLIF(tau_syn=np.full(2, 5 * DT), tau_mem=np.full(2, 8 * DT), r=np.ones(2), v_leak=np.zeros(2),
                         v_threshold=np.ones(2)), "CubaLIF", "tau_syn"),
    (lambda: _lif_bad(v_leak=np.full(2, 0.1)), "LIF", "v_leak"),
    (lambda: _lif_bad(v_reset=np.full(2, -0.2)), "LIF", "v_reset"),
    (lambda: _lif_bad(tau=np.array([4 * DT, 8 * DT])), "LIF", "one leak per layer"),
    (lambda: nir.LIF(tau=np.full((2, 16, 16), 4 * DT), r=np.full((2, 16, 16), 4.0), v_leak=np.zeros((2, 16, 16)),
                     v_threshold=np.stack([np.linspace(0.1, 1, 256).reshape(16, 16)] * 2)), "LIF",
     "varies across the image"),
    (lambda: _lif_bad(tau=np.full(2, DT / 2)), "LIF", "shorter than dt"),
    (lambda: _conv(2, 2, dilation=2), "Conv2d", "padding [1, 1] with a 3x3 kernel and dilation 2"),
    (lambda: _conv(2, 2, dilation=np.array([2, 3]), pad=2), "Conv2d", "dilation [2, 3]"),
    (lambda: _conv(2, 2, dilation=2, stride=2, pad=2), "Conv2d", "stride 1 when dilated"),
    (lambda: _conv(2, 2, pad=0), "Conv2d", "padding"),
    (lambda: _conv(2, 2, k=4, pad=2), "Conv2d", "odd square"),
    (lambda: _conv(2, 2, stride=3), "Conv2d", "stride"),
    (lambda: _conv(2, 3), "Conv2d", "input has 2"),
    (lambda: nir.AvgPool2d(kernel_size=np.array([3, 3]), stride=np.array([1, 1]), padding=np.array([1, 1])),
     "AvgPool2d", "2x2 pooling"),
    (lambda: nir.Linear(weight=np.ones((2, 512))), "Linear", "1x1 convolution"),
    (lambda: nir.CubaLI(tau_syn=np.ones(2), tau_mem=np.ones(2), r=np.ones(2), v_leak=np.zeros(2)), "CubaLI",
     "current-based"),
    (lambda: nir.NIRGraph(nodes={"i": nir.Input(input_type={"input": np.array([2])}),
                                 "o": nir.Output(output_type={"output": np.array([2])})}, edges=[("i", "o")],
                          type_check=False), "NIRGraph", "nested"),
]


@pytest.mark.parametrize("make, kind, why", REFUSED, ids=[r[1] + "-" + r[2].split()[0] for r in REFUSED])
def test_unsupported_node_is_refused_by_name_and_type(tmp_path, capsys, make, kind, why):
    nodes, edges = _chain(_conv(2, 1), _lif(2), make(), _conv(1, 2), _lif(1))
    path = _graph_file(tmp_path, nodes, edges)
    line = _refused(capsys, ["import", path, "-o", str(tmp_path / "x.esnn")])
    assert f"'n2' ({kind})" in line and why in line, line


@pytest.mark.parametrize("change, why", [
    (lambda n, e: (n, e + [("n3", "n1")]), "cycle"),
    (lambda n, e: ({**n, "in2": nir.Input(input_type={"input": np.array([1, 16, 16])})}, e + [("in2", "n0")]),
     "2 Input nodes"),
    (lambda n, e: ({k: v for k, v in n.items() if k != "n3"}, [x for x in e if "n3" not in x] + [("n2", "output")]),
     "Conv2d"),
    (lambda n, e: ({**n, "n2": _conv(2, 2), "n3": _lif(2)}, e), "2 channels"),
    (lambda n, e: ({**n, "input": nir.Input(input_type={"input": np.array([3, 16, 16])})}, e), "3 channels"),
])
def test_unsupported_graph_shapes_are_refused(tmp_path, capsys, change, why):
    nodes, edges = _chain(_conv(2, 1), _lif(2), _conv(1, 2), _lif(1))
    nodes, edges = change(nodes, edges)
    line = _refused(capsys, ["import", _graph_file(tmp_path, nodes, edges), "-o", str(tmp_path / "x.esnn")])
    assert why in line, line


def _write(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _h5(path, build):
    with h5py.File(path, "w") as f:
        build(f)
    return str(path)


@pytest.mark.parametrize("make, why", [
    (lambda p: str(p / "missing.nir"), "no such NIR file"),
    (lambda p: str(p), "is a folder"),
    (lambda p: _write(p / "t.nir", b"not a graph"), "no HDF5 signature"),
    (lambda p: _write(p / "e.nir", b""), "no HDF5 signature"),
    (lambda p: _h5(p / "h.nir", lambda f: f.create_dataset("x", data=1)), "no 'node' group"),
    (lambda p: _h5(p / "u.nir", lambda f: f.create_group("node").create_dataset("type", data="Frobnicate")),
     "malformed NIR graph"),
    (lambda p: _h5(p / "k.nir", lambda f: (f.create_group("node").create_dataset("type", data="NIRGraph"))),
     "malformed NIR graph"),
])
def test_malformed_files_are_refused_in_one_line(tmp_path, capsys, make, why):
    line = _refused(capsys, ["import", make(tmp_path), "-o", str(tmp_path / "x.esnn")])
    assert why in line, line


@pytest.mark.parametrize("field, value", [("tau", None), ("v_threshold", np.zeros((2, 3))), ("r", "junk")])
def test_broken_node_fields_name_the_node(tmp_path, capsys, field, value):
    nodes, edges = _chain(_conv(2, 1), _lif(2), _conv(1, 2), _lif(1))
    path = _graph_file(tmp_path, nodes, edges)
    with h5py.File(path, "r+") as f:
        del f[f"node/nodes/n1/{field}"]
        if value is not None:
            f[f"node/nodes/n1/{field}"] = value
    line = _refused(capsys, ["import", path, "-o", str(tmp_path / "x.esnn")])
    assert "malformed NIR graph at node 'n1' (LIF)" in line, line


def test_truncated_nir_file_is_refused(tmp_path, capsys):
    nodes, edges = _chain(_conv(2, 1), _lif(2), _conv(1, 2), _lif(1))
    data = open(_graph_file(tmp_path, nodes, edges), "rb").read()
    (tmp_path / "cut.nir").write_bytes(data[: len(data) // 2])
    line = _refused(capsys, ["import", str(tmp_path / "cut.nir"), "-o", str(tmp_path / "x.esnn")])
    assert "cut.nir" in line


def test_export_of_a_damaged_model_file_is_refused(tmp_path, capsys):
    (tmp_path / "bad.esnn").write_bytes(b"ESNN\x00garbage")
    line = _refused(capsys, ["export", str(tmp_path / "bad.esnn"), "--to", "nir", "-o", str(tmp_path / "o.nir")])
    assert "bad.esnn" in line


def test_bad_edgespike_metadata_is_refused(tmp_path, capsys):
    nodes, edges = _chain(_conv(2, 1), _lif(2), _conv(1, 2), _lif(1))
    path = _graph_file(tmp_path, nodes, edges, metadata={"edgespike": json.dumps({"format": "other"})})
    assert "edgespike-nir header" in _refused(capsys, ["import", path, "-o", str(tmp_path / "x.esnn")])


def test_onnx_export_of_the_ann_twin(tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    save(random_dncnn(depth=3, width=4, timesteps=4, seed=2), tmp_path / "d.esnn")
    assert main(["export", str(tmp_path / "d.esnn"), "--to", "onnx", "-o", str(tmp_path / "d.onnx")]) == 0
    m = onnx.load(str(tmp_path / "d.onnx"))
    onnx.checker.check_model(m)
    assert [n.op_type for n in m.graph.node].count("Conv") == 3
    save(rich_model(), tmp_path / "r.esnn")
    _refused(capsys, ["export", str(tmp_path / "r.esnn"), "--to", "onnx", "-o", str(tmp_path / "r.onnx")])


# --------------------------------------------------------------------------- export: what NIR loses
def test_export_names_what_it_would_lose_and_refuses_without_lossy(tmp_path, capsys):
    """Soft reset, the theta/2 start and (for a framework, none of whose importers reads NIR's I) the Integrator
    read-out and the decoder: listed, refused without --lossy, one line, no file."""
    model = random_dncnn(depth=3, width=4, timesteps=4, seed=2)  # soft reset, v_init half, Integrator read-out
    save(model, tmp_path / "m.esnn")
    out = tmp_path / "m.nir"
    line = _refused(capsys, ["export", str(tmp_path / "m.esnn"), "--to", "nir", "-o", str(out)])
    assert "soft reset (subtract theta) of if1, if2" in line and "initial membrane theta/2" in line
    assert "Integrator" not in line  # NIR's own reading has I: only the frameworks' importers lack it
    assert not out.exists()
    line = _refused(capsys, ["export", str(tmp_path / "m.esnn"), "--to", "nir", "--target", "norse", "-o", str(out)])
    assert "the Integrator read-out readout" in line and "the decoder" in line and not out.exists()
    assert main(["export", str(tmp_path / "m.esnn"), "--to", "nir", "--target", "norse", "--lossy", "-o",
                 str(out)]) == 0
    assert "lost: the Integrator read-out" in capsys.readouterr().out
    graph = nir.read(out)
    assert not any(isinstance(n, nir.I) for n in graph.nodes.values())  # the output is the current feeding it
    assert ("conv3", "output") in graph.edges


def test_a_faithful_model_exports_without_lossy(tmp_path, capsys):
    model = random_dncnn(depth=3, width=4, timesteps=4, seed=1, reset="hard", v_init="zero", leak_shift=2)
    assert nir_export.losses(model) == []
    save(model, tmp_path / "m.esnn")
    assert main(["export", str(tmp_path / "m.esnn"), "--to", "nir", "-o", str(tmp_path / "m.nir"),
                 "--frame-size", "16x16"]) == 0
    assert "lost:" not in capsys.readouterr().out


def test_bitplane_layers_are_refused_even_with_lossy(tmp_path, capsys):
    from edgespike.testing import bitplane_dncnn

    save(bitplane_dncnn(depth=3, width=4, T=4), tmp_path / "bp.esnn")
    line = _refused(capsys, ["export", str(tmp_path / "bp.esnn"), "--to", "nir", "--lossy", "-o",
                             str(tmp_path / "bp.nir")])
    assert "'bp1' (BitPlaneNeuron)" in line and "even --lossy" in line
    assert not (tmp_path / "bp.nir").exists()


def test_shipped_if_model_is_refused_by_name(tmp_path, capsys):
    """The shipped IF models up-sample with a transposed convolution, which the installed NIR has no node for."""
    line = _refused(capsys, ["export", "if-s25", "--to", "nir", "--lossy", "-o", str(tmp_path / "s.nir")])
    assert "(ConvTranspose)" in line and "transposed convolution" in line
    assert not (tmp_path / "s.nir").exists()


@pytest.mark.parametrize("target", ["snntorch", "spikingjelly"])
def test_framework_target_makes_thresholds_uniform_exactly(target):
    """snnTorch and SpikingJelly need one threshold per layer: per-channel thresholds are folded into the feeding
    conv (divide its output channel by the real threshold), which NIR's own reading simulates identically."""
    model = random_dncnn(depth=3, width=4, timesteps=8, seed=1, reset="hard", v_init="zero", leak_shift=2)
    assert len(set(model.node("if1").threshold.tolist())) > 1
    graph, _ = nir_export.to_nir(model, frame_size=(16, 16), target=target)
    for key in ("if1", "if2"):
        assert np.unique(graph.nodes[key].v_threshold).size == 1
    # the framework graph has no I node (no framework reads it): put one back to simulate it here
    graph.nodes["ri"] = nir.I(r=np.ones((1, 16, 16)))
    graph.edges = [e for e in graph.edges if e[1] != "output"] + [("conv3", "ri"), ("ri", "output")]
    plain, _ = nir_export.to_nir(model, frame_size=(16, 16))
    frame = np.random.default_rng(0).integers(0, 256, (16, 16)).astype(np.uint8)
    a = simulate(nir_import.lower(plain, dt=nir_export.DEFAULT_DT, timesteps=8), frame)
    b = simulate(nir_import.lower(graph, dt=nir_export.DEFAULT_DT, timesteps=8), frame)
    for name in ("if1", "if2"):
        assert np.mean(a.counts[name] != b.counts[name]) < 0.01  # float rounding at exact ties only
    assert a.counts["if1"].mean() > 0.05


def test_nir_1_0_4_files_have_no_metadata_and_no_v_reset(tmp_path, capsys):
    """NIR 1.0.4's reader passes every stored field to the node's constructor, which knows neither ``metadata``
    (Conv2d) nor ``v_reset``: --nir-version 1.0.4 writes neither (and says the exact round trip is lost)."""
    model = random_dncnn(depth=3, width=4, timesteps=4, seed=1, reset="hard", v_init="zero", leak_shift=2)
    save(model, tmp_path / "m.esnn")
    argv = ["export", str(tmp_path / "m.esnn"), "--to", "nir", "--nir-version", "1.0.4", "-o", str(tmp_path / "m.nir"),
            "--frame-size", "16x16"]
    assert "NIR 1.0.4 cannot read node metadata" in _refused(capsys, argv)
    assert main(argv + ["--lossy"]) == 0
    names = []
    with h5py.File(tmp_path / "m.nir") as f:
        f.visit(names.append)
    assert names and not any(n.split("/")[-1] in ("metadata", "v_reset") for n in names)
    graph = nir.read(tmp_path / "m.nir")  # the current reader still reads it
    assert nir_export.header_of(graph) is None and isinstance(graph.nodes["if1"], nir.LIF)


def test_a_file_that_names_its_producer_gets_its_preset(tmp_path, capsys):
    """No exporter writes who it is today; a graph whose metadata says so is read with that framework's preset
    (here Norse's IF: the input is added once per step, so it fires without any --dt)."""
    w = np.full((2, 1, 3, 3), 0.15)
    nodes = {"input": nir.Input(input_type={"input": np.array([1, 16, 16])}),
             "c": nir.Conv2d(input_shape=(16, 16), weight=w, stride=(1, 1), padding=(1, 1), dilation=(1, 1),
                             groups=1, bias=np.zeros(2)),
             "n": nir.IF(r=np.ones(2), v_threshold=np.ones(2), v_reset=np.zeros(2)),
             "c2": nir.Conv2d(input_shape=(16, 16), weight=np.full((1, 2, 3, 3), 0.1), stride=(1, 1),
                              padding=(1, 1), dilation=(1, 1), groups=1, bias=np.zeros(1)),
             "n2": nir.IF(r=np.ones(1), v_threshold=np.ones(1), v_reset=np.zeros(1)),
             "output": nir.Output(output_type={"output": np.array([1, 16, 16])})}
    edges = [("input", "c"), ("c", "n"), ("n", "c2"), ("c2", "n2"), ("n2", "output")]
    graph = nir.NIRGraph(nodes=nodes, edges=edges, metadata={"producer": "Norse 1.1.0"}, type_check=False)
    from edgespike.interchange.producers import detect

    assert detect(graph) == "norse"
    nir.write(tmp_path / "p.nir", graph)
    assert main(["import", str(tmp_path / "p.nir"), "-o", str(tmp_path / "p.esnn"), "--crop", "16", "--frames", "2",
                 "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "read as written by norse (named in the file)" in out
    assert json.loads((tmp_path / "r.json").read_text())["warnings"] == []
    # the same file read by the spec at Norse's dt: dead, and said so
    assert main(["import", str(tmp_path / "p.nir"), "-o", str(tmp_path / "q.esnn"), "--from", "nir", "--dt", "1e-3",
                 "--crop", "16", "--frames", "2", "--json", str(tmp_path / "q.json")]) == 0
    warnings = json.loads((tmp_path / "q.json").read_text())["warnings"]
    assert any("layer 'n'" in x and "never fires" in x and "--from norse" in x for x in warnings), warnings
