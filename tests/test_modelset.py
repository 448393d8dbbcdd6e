"""Model sets (edgespike.modelset): the noise estimate, the choice of a member, the file, the commands."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from edgespike import fileformat, modelset
from edgespike.cli import main
from edgespike.fileformat import ModelFileError, ModelSetError
from edgespike.model import ModelError
from edgespike.modelset import Member, ModelSet, SetRuntime, estimate_sigma
from edgespike.runtime import Runtime
from edgespike.testing import bitplane_dncnn


def _noisy(sigma: float, shape=(96, 128), seed: int = 0) -> np.ndarray:
    """A smooth ramp with Gaussian noise of ``sigma``, clipped and rounded as the eval protocol does."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:shape[0], :shape[1]]
    clean = 60 + 100 * x / shape[1] + 30 * y / shape[0]
    return np.clip(np.rint(clean + rng.normal(0, sigma, shape)), 0, 255).astype(np.uint8)


def _net(seed: int, sigma) -> object:
    model = bitplane_dncnn(depth=3, width=4, seed=seed)
    model.metadata["sigma"] = sigma
    return model


@pytest.fixture(scope="module")
def mset() -> ModelSet:
    """Four networks in five bands, one of them serving two (as the shipped blind set's blind-net does)."""
    nets = {"any": _net(0, "blind"), "s15": _net(1, "15"), "s25": _net(2, "25"), "s50": _net(3, "50")}
    return ModelSet.from_spec(nets, "any,9.5,s15,18,s25,28.5,any,37,s50", {"name": "test-set"})


# ------------------------------------------------------------------ the estimate


@pytest.mark.parametrize("sigma", [5, 15, 25, 40])
def test_the_noise_estimate_finds_the_level_of_white_noise_on_a_smooth_frame(sigma):
    assert estimate_sigma(_noisy(sigma)) == pytest.approx(sigma, rel=0.06)


def test_the_estimate_is_the_same_in_strips_as_in_one_pass(monkeypatch):
    frame = _noisy(20, shape=(41, 33), seed=3)
    frame[5:9, 4:30] = 255  # a saturated patch: its windows do not count
    whole = modelset.laplacian_abs_sum(frame)
    monkeypatch.setattr(modelset, "STRIP_ROWS", 4)  # strips overlap by the mask's two rows
    assert modelset.laplacian_abs_sum(frame) == whole
    x, (h, w) = frame.astype(np.int64), frame.shape
    mask = np.array(modelset.MASK)
    lap = sum(mask[dy, dx] * x[dy:h - 2 + dy, dx:w - 2 + dx] for dy in range(3) for dx in range(3))
    clipped = np.array([[((frame[i:i + 3, j:j + 3] == 0) | (frame[i:i + 3, j:j + 3] == 255)).any()
                         for j in range(w - 2)] for i in range(h - 2)])
    assert whole == (int(np.abs(lap)[~clipped].sum()), int((~clipped).sum()))


def test_clipped_pixels_do_not_pull_the_estimate_down():
    frame = _noisy(25, shape=(96, 128), seed=4)
    dark = frame.copy()
    dark[:, :64] = np.clip(dark[:, :64].astype(int) - 150, 0, 255)  # half the frame in clipped shadow
    assert estimate_sigma(dark) == pytest.approx(estimate_sigma(frame[:, 64:]), rel=0.05)
    assert estimate_sigma(np.zeros((9, 9), np.uint8)) == 0.0  # every window clipped: all of them count


def test_a_frame_below_3x3_has_no_noise_estimate():
    assert estimate_sigma(np.zeros((2, 40), np.uint8)) == 0.0


# ------------------------------------------------------------------ the set


def test_the_bands_choose_their_members_lower_bound_included(mset):
    names = [mset.member_for(s).name for s in (0, 9.49, 9.5, 17.9, 18, 28.4, 28.5, 36.9, 37, 300)]
    assert names == ["any", "any", "s15", "s15", "s25", "s25", "any", "any", "s50", "s50"]
    assert mset.timesteps == 8 and mset.spec == "any,9.5,s15,18,s25,28.5,any,37,s50"
    assert mset.band_ranges()[3] == ("28.5 .. 37", "any")
    assert [m.trained_for for m in mset.members] == ["sigma 0..55 (blind)", "sigma 15", "sigma 25", "sigma 50"]


@pytest.mark.parametrize("names,bounds,bands,match", [
    (["a"], (), (0,), "at least two members"),
    (["a", "a"], (5,), (0, 1), "distinct"),
    (["a", "b"], (), (0, 1), "0 bounds make 1 bands"),
    (["a", "b"], (9, 5), (0, 1, 0), "increasing positive"),
    (["a", "b"], (-1,), (0, 1), "increasing positive"),
    (["a", "b"], (5,), (0, 2), "member indices 0..1"),
    (["a", "b", "c"], (5,), (0, 1), "c serve no band"),
    (["a", "b"], (5, 9), (0, 0, 1), "same member"),
])
def test_an_inconsistent_set_is_refused(names, bounds, bands, match):
    model = bitplane_dncnn(depth=2, width=2)
    with pytest.raises(ModelError, match=match):
        ModelSet(tuple(Member(n, model) for n in names), bounds, bands)


@pytest.mark.parametrize("spec,match", [
    ("a,5", "starting and ending with a name"),
    ("a,x,b", "'x' is not a noise level"),
    ("a,5,c", "names c, which is not a member"),
])
def test_a_bad_band_spec_is_refused_in_one_line(spec, match):
    nets = {"a": bitplane_dncnn(depth=2, width=2), "b": bitplane_dncnn(depth=2, width=2, seed=1)}
    with pytest.raises(ModelError, match=match):
        ModelSet.from_spec(nets, spec)


def test_an_unknown_estimator_is_refused_with_the_upgrade_hint(mset):
    with pytest.raises(ModelError, match="unknown noise estimator 'wavelet'.*upgrade edgespike"):
        ModelSet(mset.members, mset.bounds, mset.bands, "wavelet")


def test_the_runtime_runs_the_chosen_member_bit_for_bit(mset):
    rt = SetRuntime(mset)
    for sigma, name in ((4, "any"), (15, "s15"), (25, "s25"), (33, "any"), (50, "s50")):
        frame = _noisy(sigma, shape=(37, 29), seed=sigma)
        index = mset.choose(frame)[0]
        assert mset.members[index].name == name
        out, stats = rt.denoise(frame)
        expect, _ = Runtime(mset.members[index].model).denoise(frame)
        np.testing.assert_array_equal(out, expect)
        assert stats.member == name
        assert stats.sigma_estimate == pytest.approx(estimate_sigma(frame))
        assert rt.model_of(stats) is mset.members[index].model


def test_the_runtime_refuses_a_bad_frame_as_a_single_network_does(mset):
    from edgespike.frames import FrameError

    with pytest.raises(FrameError, match="uint8"):
        SetRuntime(mset).denoise(np.zeros((8, 8), np.float32))


# ------------------------------------------------------------------ the file


def test_a_set_survives_its_file_and_is_written_as_format_1_2(mset, tmp_path):
    path = tmp_path / "set.esnn"
    fileformat.save(mset, path)
    assert struct.unpack_from("<HH", path.read_bytes(), 8) == (1, 2)
    back = fileformat.load_any(path)
    assert isinstance(back, ModelSet)
    assert back.spec == mset.spec and back.metadata == {"name": "test-set"}
    assert all(a.model.equals(b.model) for a, b in zip(back.members, mset.members, strict=True))
    # a single network is still written as before, 1.0 or 1.1
    fileformat.save(mset.members[0].model, tmp_path / "one.esnn")
    assert struct.unpack_from("<HH", (tmp_path / "one.esnn").read_bytes(), 8) == (1, 1)


def test_load_takes_one_network_and_names_a_sets_members(mset, tmp_path):
    path = tmp_path / "set.esnn"
    fileformat.save(mset, path)
    with pytest.raises(ModelSetError, match=r"set\.esnn: a noise-adaptive set of 4 networks, any \(sigma 0\.\.55 "
                                            r"\(blind\)\), s15 \(sigma 15\).*one network: give it one member's file"):
        fileformat.load(path)


def _set_bytes(header: dict, payload: bytes) -> bytes:
    return fileformat._container(header, payload, (1, 2))


def test_a_damaged_set_is_refused_in_one_line(mset, tmp_path):
    data = bytearray(fileformat.set_to_bytes(mset))
    data[-100] ^= 0x40
    with pytest.raises(ModelFileError, match="payload checksum mismatch"):
        fileformat.any_from_bytes(bytes(data))
    member = fileformat.to_bytes(mset.members[0].model)
    pad = b"\0" * ((-len(member)) % 64)
    cases = [
        ({"members": [{"name": "a", "offset": 0, "nbytes": len(member) + 64}]}, "member #0 lies outside"),
        ({"members": [{"name": "a", "offset": 0}]}, "member #0: incomplete entry"),
        ({"members": []}, "no member table"),
        ({"members": [{"name": "a", "offset": 0, "nbytes": len(member)}]}, "at least two members"),
    ]
    for fields, match in cases:
        header = {"format": "edgespike-snn-set", "estimator": "immerkaer-unclipped", "bounds": [], "bands": [0],
                  "metadata": {}} | fields
        with pytest.raises(ModelFileError, match=match):
            fileformat.any_from_bytes(_set_bytes(header, member + pad))
    broken = bytearray(member)
    broken[40] ^= 1  # a member's own header checksum
    header = {"format": "edgespike-snn-set", "estimator": "immerkaer-unclipped", "bounds": [20.0], "bands": [0, 1],
              "metadata": {}, "members": [{"name": "a", "offset": 0, "nbytes": len(member)},
                                          {"name": "b", "offset": len(member) + len(pad), "nbytes": len(member)}]}
    with pytest.raises(ModelFileError, match=r"member #0 \(a\): .*checksum"):
        fileformat.any_from_bytes(_set_bytes(header, bytes(broken) + pad + member + pad))
    nested = fileformat.set_to_bytes(mset)
    header["members"][1]["nbytes"] = len(nested)
    with pytest.raises(ModelFileError, match="member #1 is itself a set"):
        fileformat.any_from_bytes(_set_bytes(header, member + pad + nested))


# ------------------------------------------------------------------ the commands


def _frame_file(tmp_path, sigma: float):
    from edgespike import png

    path = tmp_path / "in.png"
    png.write_png(path, _noisy(sigma, shape=(40, 48), seed=1))
    return path


def test_denoise_and_info_say_which_member_ran_and_what_the_set_holds(mset, tmp_path, capsys):
    path = tmp_path / "set.esnn"
    fileformat.save(mset, path)
    assert main(["denoise", str(_frame_file(tmp_path, 45)), "--model", str(path)]) == 0
    out = capsys.readouterr().out
    assert "noise: estimated sigma 4" in out and "its member s50 ran" in out
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "edgespike-snn model set, format 1.2" in out and "28.5 .. 37        any" in out
    assert "--- member 3: s50 (sigma 50) ---" in out


def test_commands_of_one_network_refuse_a_set_without_a_traceback(mset, tmp_path, capsys):
    path = tmp_path / "set.esnn"
    fileformat.save(mset, path)
    assert main(["export", str(path), "--to", "onnx", "-o", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert "one member's file" in err and "Traceback" not in err
    assert not (tmp_path / "x.onnx").exists()


def test_eval_reports_the_estimates_and_the_members_chosen(mset, tmp_path, capsys):
    import json

    from edgespike import png

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):  # smooth frames: the estimate is then the noise's level (texture raises it)
        png.write_png(folder / f"{i}.png", _noisy(0, shape=(32, 40), seed=i))
    path = tmp_path / "set.esnn"
    fileformat.save(mset, path)
    assert main(["eval", "--model", str(path), "--dataset", str(folder), "--sigma", "50", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert all(r["member"] == "s50" and r["sigma_estimate"] > 37 for r in doc["images"])
    assert doc["mean"]["members_chosen"] == {"s50": 3}
    assert main(["eval", "--model", str(path), "--dataset", str(folder), "--sigma", "15"]) == 0
    out = capsys.readouterr().out
    assert "s15 on 3" in out and "noise~" in out


# ------------------------------------------------------------------ the tools that make sets


def _tool(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_calibrated_bounds_are_the_best_monotone_split_of_the_frames():
    """Against every split of a few frames into bands in order (brute force): the same mean, and bounds that give it."""
    import itertools

    best_bounds = _tool("calibrate_model_set").best_bounds
    rng = np.random.default_rng(0)
    for _ in range(150):
        n, k = int(rng.integers(1, 8)), int(rng.integers(2, 4))
        estimate, gain = rng.permutation(n).astype(float) + 1, rng.normal(size=(n, k))
        bounds, score, counts = best_bounds(estimate, gain)
        assert sum(counts) == n and len(counts) == k
        order = np.argsort(estimate)
        brute = max(sum(gain[order[a:b], j].sum() for j, (a, b) in enumerate(zip((0, *cuts), (*cuts, n), strict=True)))
                    for cuts in itertools.combinations_with_replacement(range(n + 1), k - 1))
        assert score == pytest.approx(brute / n)
        band = np.searchsorted(np.array(bounds), estimate, side="right")
        assert gain[np.arange(n), band].mean() == pytest.approx(score)


def test_make_model_set_writes_the_bands_and_refuses_a_bad_spec_in_one_line(tmp_path, capsys):
    tool = _tool("make_model_set")
    files = []
    for i in range(2):
        files.append(tmp_path / f"m{i}.esnn")
        fileformat.save(bitplane_dncnn(depth=2, width=2, seed=i), files[-1])
    dest = tmp_path / "set.esnn"
    assert tool.main([str(dest), "--member", f"lo={files[0]}", "--member", f"hi={files[1]}", "--bands", "lo,20,hi",
                      "--name", "two"]) == 0
    assert fileformat.load_any(dest).spec == "lo,20,hi"
    assert tool.main([str(tmp_path / "bad.esnn"), "--member", f"lo={files[0]}", "--member", f"hi={files[1]}",
                      "--bands", "lo,20,mid", "--name", "x"]) == 2
    assert "names mid, which is not a member" in capsys.readouterr().err
    assert not (tmp_path / "bad.esnn").exists()


def test_in_video_the_member_holds_while_the_estimate_hovers_at_a_bound(mset, monkeypatch):
    """run's set keeps its network unless the estimate moves ``hold`` past the band; stills choose afresh."""
    estimates = iter([17.0, 18.5, 17.9, 18.9, 19.2, 18.1, 17.5, 16.9, 5.0])
    monkeypatch.setattr(modelset, "estimate_sigma", lambda frame: next(estimates))
    rt = SetRuntime(mset, hold=1.0)
    frame = _noisy(15, shape=(16, 16))
    assert [rt.denoise(frame)[1].member for _ in range(9)] == ["s15", "s15", "s15", "s15", "s25", "s25", "s25",
                                                                 "s15", "any"]
    estimates = iter([17.0, 18.5, 17.9])
    assert [SetRuntime(mset).denoise(frame)[1].member for _ in range(3)] == ["s15", "s25", "s15"]


def test_eval_compares_each_frame_with_the_ann_twin_of_the_member_that_ran(mset, tmp_path, capsys):
    import json

    from edgespike import data, png
    from edgespike.metrics import psnr
    from edgespike.twin import Twin

    folder = tmp_path / "imgs"
    folder.mkdir()
    png.write_png(folder / "0.png", _noisy(0, shape=(32, 40), seed=5))
    path = tmp_path / "set.esnn"
    fileformat.save(mset, path)
    for sigma in (15, 50):
        assert main(["eval", "--model", str(path), "--dataset", str(folder), "--sigma", str(sigma), "--compare",
                     "ann", "--json"]) == 0
        (rec,) = json.loads(capsys.readouterr().out)["images"]
        (s,) = data.samples([folder / "0.png"], sigma)
        member = next(m for m in mset.members if m.name == rec["member"])
        expect = Twin(member.model, mode="quant").denoise(s.noisy)
        assert rec["compare"]["psnr"] == pytest.approx(psnr(s.clean, expect))


def test_a_calibration_band_without_frames_is_dropped_with_its_member():
    band_spec = _tool("calibrate_model_set").band_spec
    assert band_spec(["a", "b", "c", "a", "d"], [5.0, 9.0, 9.0, 30.123], [3, 4, 0, 2, 6]) == "a,5,b,9,a,30.12,d"
    assert band_spec(["a", "b", "a"], [5.0, 5.0], [3, 0, 4]) == "a"  # one band left: the caller refuses it
