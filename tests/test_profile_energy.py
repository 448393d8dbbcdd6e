"""The analytical energy model: hand-checked counts, and SPIDEN's published directions and figures.

SPIDEN (Castagnetti et al. 2023, section 4.7) with the Lemaire et al. model, DnCNN 17 layers, 256x256:
DnCNN-64 28.1e9 "nJ" (the paper's unit; our pJ / 1e3 gives the same number), DnSNN-64 24.4e9 at T = 1
(0.45 spikes/neuron), about 30 % more than DnCNN at T = 2, DnCNN-128 220e9 and DnSNN-128 173e9 at T = 2.

Tolerances: the absolute DnCNN figures depend only on shapes and the table, so they must agree within 5 %. The
SNN figures also depend on sparsities the paper gives only roughly (0.45 per inference at T = 1, "about 0.3" per
timestep; the width study's Table 5 is missing from our text), so the ratios get bands around the paper's value
that still exclude the opposite conclusion: T = 1 in [0.80, 0.95] (paper 0.868), T = 2 in [1.10, 1.45] (paper
about 1.3).
"""

import math

import numpy as np
import pytest

from edgespike.profile import energy as E
from edgespike.profile.testmodels import random_dncnn


def spiden(width=64, T=1, rate=0.45, table="spiden", addressing="code"):
    layers = E.dncnn_layers(17, width, 256)
    return E.analyse_layers(layers, E.activity_from_rates(layers, T, rate), table, addressing)


def test_dncnn_absolute_energy_matches_spiden():
    # shapes and the table only: the paper's 28.1e9 and 220e9 (reported in "nJ") are our pJ / 1e3
    assert spiden().total("ann") / 1e3 == pytest.approx(28.1e9, rel=0.05)
    assert spiden(width=128, T=2, rate=0.2).total("ann") / 1e3 == pytest.approx(220e9, rel=0.05)


def test_snn_beats_cnn_at_T1_only():
    r1 = spiden(T=1, rate=0.45).ratio  # 0.45 spikes/neuron per inference at T = 1
    r2 = spiden(T=2, rate=0.3).ratio  # about 0.3 spikes/neuron/timestep
    assert 0.80 <= r1 <= 0.95, r1  # paper: 24.4 / 28.1 = 0.868
    assert 1.10 <= r2 <= 1.45, r2  # paper: about 1.3
    assert spiden(T=1, rate=0.45).total("snn") / 1e3 == pytest.approx(24.4e9, rel=0.10)


@pytest.mark.parametrize("T,rate", [(1, 0.45), (2, 0.3)])
def test_memory_dominates_and_snn_ops_are_orders_below(T, rate):
    r = spiden(T=T, rate=rate)
    for net in ("snn", "ann"):
        mem = sum(r.total(net, k) for k in ("mem_input", "mem_weight", "mem_bias", "mem_potential", "mem_output"))
        assert mem / r.total(net) > 0.9
    ops = r.total("snn", "ops") / r.total("ann", "ops")
    assert 1e-2 <= ops <= 1e-1  # "one to two orders of magnitude lower"


def test_width_at_fixed_sparsity_does_not_change_the_ratio():
    # In this model every large memory (ANN activations, SNN membranes) has C*H*W elements, so at a fixed
    # spike rate the ratio is nearly width-independent: the paper's gain for wide nets comes from their lower
    # spike rates ("as the network size increases ... the sparsity of DnSNN improve[s]").
    rs = [spiden(width=w, T=2, rate=0.3).ratio for w in (64, 96, 128, 160)]
    assert max(rs) - min(rs) < 0.02


def test_widening_with_the_papers_sparsity_favours_the_snn():
    # 173/220 at 128 filters is reproduced at 0.2 spikes/neuron/step (a rate inferred from the paper's energies,
    # its Table 5 being unavailable to us); the same sparser regime at 160 gives "almost 40 %".
    r128 = spiden(width=128, T=2, rate=0.2)
    assert r128.total("snn") / 1e3 == pytest.approx(173e9, rel=0.05)
    assert r128.ratio < 0.82  # "more than 20 % energy gain"
    assert spiden(width=160, T=2, rate=0.15).ratio < 0.65  # "almost 40 %"
    # and wider nets favour the SNN at a given T when sparsity improves with width, as the paper reports
    assert r128.ratio < spiden(width=64, T=2, rate=0.3).ratio


def test_addressing_variants_differ_only_in_addressing():
    a, b = spiden(addressing="code"), spiden(addressing="paper")
    assert b.total("snn", "addr") > a.total("snn", "addr")
    assert a.total("snn", "mem_potential") == b.total("snn", "mem_potential")


def test_hand_counts_of_one_layer():
    layer = E.Layer("c", "conv", 2, 3, 4, 4, 4, 4, 3, 1, ("n0",), True, "n1")
    ann = E.ann_counts(layer)
    assert ann.macs == 3 * 16 * 2 * 9 and ann.accs == 48 and ann.rd_bias == 48 and ann.wr_output == 48
    assert ann.addr_accs == 32 + 48 + 27
    act = E.Activity(2, {"n0": 10.0, "n1": 7.0})
    s = E.snn_counts(layer, act)
    # 4x4 map, 3x3 'same' taps: per axis a border input reaches 2 outputs, an inner one 3, (2+3+3+2)/4 = 2.5 on
    # average, so an event (positions unknown: the mean) reaches 6.25 outputs per output channel, not 9
    assert s.accs == 10 * 6.25 * 3 + 2 * 48 + 7
    assert s.rd_weight == 10 * 3 * 6.25 and s.rd_potential == s.wr_potential == 10 * 6.25 * 3 + 96
    assert s.rd_input == 10 and s.wr_output == 7 and s.addr_macs == 20 and s.addr_accs == 62.5
    assert E.snn_counts(layer, act, "paper").addr_accs == 62.5 * 3
    # where the events are known, each counts its own reach: 10 events in a corner reach 4 outputs each
    corner = np.zeros((4, 4))
    corner[0, 0] = 10
    assert E.snn_counts(layer, E.Activity(2, {"n0": 10.0, "n1": 7.0}, maps={"n0": corner})).rd_weight == 10 * 4 * 3
    tab = E.get_table("horowitz45-int32")
    e = E.energy(s, tab)
    assert e["mem_potential"] == pytest.approx(2 * s.rd_potential * (1.09e-5 * 48 * 32 + 13.2))
    assert e["ops"] == pytest.approx(s.accs * 0.1)
    oc = E.energy(ann, E.get_table("opcount-vtsnn"))
    assert oc["total"] == pytest.approx(ann.macs * 4.6 + ann.accs * 0.9)


def test_hybrid_first_layer_and_readout_of_a_real_model():
    from edgespike import reference

    m = random_dncnn(depth=3, width=4, timesteps=2, seed=1)
    frame = np.random.default_rng(0).integers(0, 256, (8, 8)).astype(np.uint8)
    frame[0, :] = 0
    _, tr = reference.run(m, frame, trace=True)
    r = E.analyse(m, 8, 8, tr.spikes, frame)
    first, mid, last = r.layers
    assert first.hybrid and not mid.hybrid and not last.hybrid
    assert first.snn.macs == first.ann.macs  # dense pixels: MACs, not accumulates
    assert first.theta_in == pytest.approx(np.count_nonzero(frame) * 2)  # non-zero pixels x T
    assert mid.theta_in == sum(tr.spikes["if1"]) and mid.theta_out == sum(tr.spikes["if2"])
    assert last.theta_out == 0 and last.snn.wr_output == 0  # read-out: no spikes, no reset
    d = r.to_dict()
    assert d["energy_pJ"]["snn"] == pytest.approx(r.total("snn"))
    assert math.isfinite(d["energy_pJ"]["snn_over_ann"])


def test_estimate_for_run_and_extensible_tables(tmp_path):
    from edgespike import reference

    m = random_dncnn(depth=3, width=4, timesteps=2, seed=2)
    frame = np.full((8, 8), 100, np.uint8)
    _, tr = reference.run(m, frame, trace=True)
    est = E.estimate(tr, m, shape=(8, 8))
    assert est["snn_pJ"] > 0 and est["ann_pJ"] > 0 and est["table"] == E.DEFAULT_TABLE
    extra = tmp_path / "t.json"
    extra.write_text('{"mine": {"label": "x", "add": 1.0, "mul": 0.0, "memory": null, "addressing": false}}')
    tab = E.get_table("mine", extra)
    r = E.analyse_layers(E.layers(m, 8, 8), E.activity_from_spikes(m, tr.spikes, frame), tab)
    assert r.total("ann") == pytest.approx(r.count("ann", "accs") + r.count("ann", "macs"))
    with pytest.raises(KeyError, match="choose one of"):
        E.get_table("nope")
    with pytest.raises(ValueError, match="frame shape"):
        E.estimate(tr, m)


def _brute_synapses(kind, events, k, stride, pad, hout, wout):
    """Synaptic events per output channel, straight from docs/SEMANTICS.md section 4, one position at a time.

    Conv (gather): output (y, x) reads tap (i, j) from input (s*y + i - p, s*x + j - p) when that is inside.
    ConvTranspose (scatter): input (iy, ix) adds tap (i, j) to output (2*iy - p + i, 2*ix - p + j) when inside.
    ``events`` is the ``[H, W]`` map of input events (channels and steps summed).
    """
    hin, win = events.shape
    total = 0
    if kind == "conv":
        for y in range(hout):
            for x in range(wout):
                for i in range(k):
                    for j in range(k):
                        iy, ix = stride * y + i - pad, stride * x + j - pad
                        if 0 <= iy < hin and 0 <= ix < win:
                            total += events[iy, ix]
    else:
        for iy in range(hin):
            for ix in range(win):
                for i in range(k):
                    for j in range(k):
                        if 0 <= 2 * iy - pad + i < hout and 0 <= 2 * ix - pad + j < wout:
                            total += events[iy, ix]
    return total


@pytest.mark.parametrize("kind,k,stride,pad,hin,win", [
    ("conv", 3, 1, 1, 7, 9),
    ("conv", 5, 2, 2, 8, 10),  # the half-resolution body's first conv
    ("conv", 5, 2, 2, 7, 9),
    ("conv", 3, 2, 1, 6, 5),
    ("convT", 6, 2, 2, 5, 4),  # its read-out (output_padding 0)
    ("convT", 3, 2, 1, 4, 5),  # k = 3, padding 1, output_padding 1
    ("convT", 4, 2, 1, 3, 3),
])
def test_synaptic_counts_equal_a_brute_force_count(kind, k, stride, pad, hin, win):
    hout, wout = (-(-hin // stride), -(-win // stride)) if kind == "conv" else (2 * hin, 2 * win)
    layer = E.Layer("c", kind, 2, 3, hin, win, hout, wout, k, stride, ("n0",), True, "n1", False, pad)
    events = np.random.default_rng(k + hin).integers(0, 4, (hin, win))
    exact = E.Activity(2, {"n0": float(events.sum())}, maps={"n0": events})
    brute = _brute_synapses(kind, events, k, stride, pad, hout, wout)
    assert exact.synapses(layer) == brute
    s = E.snn_counts(layer, exact)
    assert s.rd_weight == 3 * brute and s.rd_potential == 3 * brute + 2 * layer.n_out
    assert s.accs == 3 * brute + 2 * layer.n_out  # no output spikes in this activity
    # events spread evenly over positions: the mean fan-out (no map needed) is exact too
    even = np.full((hin, win), 3)
    assert E.Activity(2, {"n0": float(even.sum())}).synapses(layer) == pytest.approx(
        _brute_synapses(kind, even, k, stride, pad, hout, wout))
    # away from the borders: k^2 targets per event for a transposed conv, (k/2)^2 on average at stride 2
    inner = {"conv": (k / stride) ** 2, "convT": k * k}[kind]
    big = E.Layer("c", kind, 1, 1, 64, 64, *((64, 64) if stride == 1 else (32, 32) if kind == "conv" else (128, 128)),
                  k, stride, ("n0",), True, "n1", False, pad)
    assert big.fanout()[8:-8, 8:-8].mean() == pytest.approx(inner)


def test_counts_of_a_half_resolution_model_against_brute_force():
    from edgespike import reference

    m = random_dncnn(depth=4, width=3, timesteps=2, seed=4, down=True)
    frame = np.random.default_rng(2).integers(0, 256, (9, 11)).astype(np.uint8)  # odd: padded to 10 x 12
    _, tr = reference.run(m, frame, trace=True)
    exact = E.analyse(m, 9, 11, tr.spikes, frame, counts=tr.counts)
    assert [(la.name, la.kind, la.hybrid) for la in exact.layers] == [
        ("conv1", "conv", True), ("conv2", "conv", False), ("conv3", "conv", False), ("conv4", "convT", False)]
    maps = {"input": 2 * (np.pad(frame, ((0, 1), (0, 1)), mode="edge") != 0)}
    maps.update({k: v.sum(axis=0) for k, v in tr.counts.items()})
    sources = {"conv1": "input", "conv2": "if1", "conv3": "if2", "conv4": "if3"}
    for lr, layer in zip(exact.layers, E.layers(m, 9, 11), strict=True):
        brute = _brute_synapses(layer.kind, maps[sources[lr.name]], layer.k, layer.stride,
                                layer.k // 2 if layer.kind == "conv" else 2, layer.hout, layer.wout)
        assert lr.snn.rd_weight == layer.cout * brute, lr.name
        assert lr.snn.wr_potential == layer.cout * brute + 2 * layer.n_out, lr.name
    first, last = exact.layers[0], exact.layers[-1]
    assert (first.snn.macs, first.ann.macs) == (3 * 5 * 6 * 25, 3 * 5 * 6 * 25)  # dense pixels: 5x5 taps
    assert last.ann.macs == 1 * 10 * 12 * 3 * 9  # each output gathers (6/2)^2 taps per input channel
    assert sum(tr.spikes["if3"]) > 0
    # totals only (what the runtime reports): mean fan-outs, the same up to where the spikes happen to be
    approx = E.analyse(m, 9, 11, tr.spikes, frame)
    for a, b in zip(approx.layers, exact.layers, strict=True):
        assert a.snn.rd_weight == pytest.approx(b.snn.rd_weight, rel=0.15), a.name
