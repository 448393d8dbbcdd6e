"""Dilated convolutions (format 1.3, docs/SEMANTICS.md section 4): the file keeps older files as they were, the
validator refuses what the semantics exclude, every executor and exporter computes the reference's pixels, the
accelerator's layer pipeline runs a dilated bit-plane model and its shared engine says plainly where one runs.
(Reference = integer ANN = runtime paths = torchsim for random dilated networks: tests/test_bitplane.py; the
kernels' phases: its kernel tests; ONNX and TFLite: tests/test_profile_twin.py; the pipeline's gateware, cycles and
stripes: tests/test_rtl_bitplane.py.)"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edgespike import fileformat, reference
from edgespike.model import Conv, ModelError
from edgespike.runtime import Runtime
from edgespike.testing import bitplane_dncnn
from edgespike.validate import analyse

IRCNN = (1, 2, 3, 4, 3, 2, 1)


def _dilated(**kw):
    return bitplane_dncnn(7, 6, 8, seed=kw.pop("seed", 5), dilations=kw.pop("dilations", IRCNN), **kw)


def test_a_dilated_model_is_written_as_1_3_and_an_undilated_one_as_before(tmp_path):
    model = _dilated()
    fileformat.save(model, tmp_path / "d.esnn")
    data = (tmp_path / "d.esnn").read_bytes()
    assert data[8:12] == bytes([1, 0, 3, 0])  # major 1, minor 3
    back = fileformat.load(tmp_path / "d.esnn")
    assert back.equals(model) and [n.dilation for n in back.nodes if isinstance(n, Conv)] == list(IRCNN)
    # without dilation: 1.1 (bit-plane layers), and no dilation field in the header
    plain = bitplane_dncnn(7, 6, 8, seed=5)
    raw = fileformat.to_bytes(plain)
    assert raw[8:12] == bytes([1, 0, 1, 0]) and b"dilation" not in raw


def test_a_set_holding_a_dilated_member_is_written_at_its_members_version(tmp_path):
    from edgespike.modelset import Member, ModelSet

    members = [Member("plain", bitplane_dncnn(3, 4, 8, seed=1)), Member("dilated", _dilated())]
    mset = ModelSet(members, bounds=(20.0,), bands=(0, 1))
    assert fileformat.set_to_bytes(mset)[8:12] == bytes([1, 0, 3, 0])


@pytest.mark.parametrize(("change", "message"), [
    (dict(dilation=0), r"dilation must be an integer in 1\.\.16, got 0"),
    (dict(dilation=17), r"dilation must be an integer in 1\.\.16, got 17"),
    (dict(dilation=2.0), r"dilation must be an integer in 1\.\.16, got 2\.0"),
    (dict(dilation=2, stride=2), r"a dilated conv \(dilation 2\) must have stride 1, got 2"),
])
def test_the_validator_refuses_dilations_the_semantics_exclude(change, message):
    model = _dilated()
    nodes = list(model.nodes)
    nodes[2] = dataclasses.replace(nodes[2], **change)
    with pytest.raises(ModelError, match=message):
        analyse(dataclasses.replace(model, nodes=nodes))


def test_a_file_with_a_bad_dilation_gives_one_clear_line(tmp_path):
    import json
    import struct
    import zlib

    data = bytearray(fileformat.to_bytes(_dilated()))
    pre = fileformat.PREAMBLE
    magic, major, minor, hlen, plen, hcrc, pcrc = pre.unpack_from(data)
    header = json.loads(bytes(data[pre.size:pre.size + hlen]))
    header["nodes"][2]["dilation"] = -3
    head = json.dumps(header, sort_keys=True).encode()
    body = pre.pack(magic, major, minor, len(head), plen, zlib.crc32(head), pcrc) + head
    body += b"\0" * ((-len(body)) % fileformat.ALIGN)
    payload = bytes(data[-plen:])
    with pytest.raises(fileformat.ModelFileError, match="dilation must be an integer") as exc:
        fileformat.from_bytes(body + payload)
    assert "\n" not in str(exc.value)
    assert struct.calcsize("<8sHHIQII") == pre.size


def test_strips_give_the_whole_frames_pixels():
    """The runtime's strips grow their halo with the taps' spacing (dilation * (k // 2) per layer)."""
    model = _dilated()
    frame = np.random.default_rng(3).integers(0, 256, (97, 45), dtype=np.uint8)
    want = reference.run(model, frame)
    for rows in (8, 16, 40):
        out, _ = Runtime(model, strip_rows=rows).denoise(frame)
        assert np.array_equal(out, want), rows
    rt = Runtime(model, strip_rows=8)
    assert rt.halo >= sum(IRCNN[:-1])  # every dilated 3x3 layer spreads a cut by its dilation


def test_dilated_if_layers_run_unfused_and_exactly():
    """A rate-coded network with a dilated layer: the lookup-table kernel (neighbouring taps) is not used for it."""
    from edgespike.profile.testmodels import random_dncnn

    model = random_dncnn(depth=4, width=4, timesteps=4, seed=2)
    nodes = list(model.nodes)
    i = next(i for i, n in enumerate(nodes) if isinstance(n, Conv) and n.name != nodes[0].name)
    nodes[i] = dataclasses.replace(nodes[i], dilation=3)
    model = dataclasses.replace(model, nodes=nodes)
    frame = np.random.default_rng(4).integers(0, 256, (21, 30), dtype=np.uint8)
    rt = Runtime(model)
    assert nodes[i].name not in rt.fused
    assert np.array_equal(rt.denoise(frame)[0], reference.run(model, frame))
    torchsim = pytest.importorskip("edgespike.torchsim")
    assert np.array_equal(torchsim.run(model, frame), reference.run(model, frame))


def test_nir_keeps_the_dilation(tmp_path):
    nir = pytest.importorskip("nir")
    from edgespike.interchange import nir_export
    from edgespike.profile.testmodels import random_dncnn

    model = random_dncnn(depth=3, width=4, timesteps=4, seed=2)
    nodes = list(model.nodes)
    i = next(i for i, n in enumerate(nodes) if isinstance(n, Conv) and n.name != nodes[0].name)
    nodes[i] = dataclasses.replace(nodes[i], dilation=2)
    model = dataclasses.replace(model, nodes=nodes)
    graph, _ = nir_export.to_nir(model, frame_size=(16, 16))
    conv = graph.nodes[nodes[i].name]
    assert tuple(np.asarray(conv.dilation).tolist()) == (2, 2) and tuple(np.asarray(conv.padding).tolist()) == (2, 2)
    nir.write(tmp_path / "m.nir", graph)
    back = nir.read(tmp_path / "m.nir")
    assert nir_export.restore(back, nir_export.header_of(back)).equals(model)


# what the shared engine says of a dilated conv, after naming the node
ELSEWHERE = (r"which the shared engine does not implement: the layer pipeline runs dilated bit-plane models .*; run "
             r"this model on the CPU runtime")


def _rate_coded_dilated():
    from edgespike.profile.testmodels import random_dncnn

    rate = random_dncnn(depth=3, width=4, timesteps=4, seed=2)  # a model for the shared (rate-coded) engine
    nodes = list(rate.nodes)
    nodes[2] = dataclasses.replace(nodes[2], dilation=3)
    return dataclasses.replace(rate, nodes=nodes)


def test_the_layer_pipeline_takes_a_dilated_model_and_the_shared_engine_says_where_it_runs():
    from edgespike.fpga.params import FitError, plan
    from edgespike.fpga.pipeline import layer_specs, receptive_radius

    specs = layer_specs(_dilated())  # the bit-plane layer pipeline
    assert [s.dilation for s in specs] == list(IRCNN) and receptive_radius(specs) == sum(IRCNN)
    with pytest.raises(FitError, match=r"node 'conv2' is a dilated conv \(taps 2 pixels apart\), " + ELSEWHERE) as exc:
        plan(_dilated(), "ecp5-85f")  # the shared engine asked for directly
    assert "\n" not in str(exc.value)
    rate = _rate_coded_dilated()
    with pytest.raises(FitError, match=rf"node '{rate.nodes[2].name}' is a dilated conv \(taps 3 pixels apart\), "
                       + ELSEWHERE):
        plan(rate, "ecp5-85f")


def test_info_names_the_dilation(tmp_path, capsys):
    from edgespike.cli import main

    fileformat.save(_dilated(), tmp_path / "d.esnn")
    assert main(["info", str(tmp_path / "d.esnn")]) == 0
    out = capsys.readouterr().out
    assert "3x3 s1 d4" in out and "3x3 s1 d2" in out


def test_a_trained_dilated_network_exports_the_pixels_it_trained_on():
    """tools/train_bitplane.py --full-resolution --dilations ...: the exported file computes, through the runtime,
    what the training network's exact integer forward pass computes."""
    pytest.importorskip("torch")
    from edgespike.train.bitplane import BitPlaneDnCNN, predict_uint8

    net = BitPlaneDnCNN(depth=7, width=6, timesteps=8, down=False, dilations=IRCNN)
    frame = np.random.default_rng(7).integers(0, 256, (29, 34), dtype=np.uint8)
    import torch

    net.init_steps(torch.from_numpy(frame.astype(np.float32))[None, None])
    model = net.to_model()
    assert [n.dilation for n in model.nodes if isinstance(n, Conv)] == list(IRCNN)
    want = predict_uint8(net, frame)
    assert np.array_equal(Runtime(model).denoise(frame)[0], want)
    assert np.array_equal(reference.run(model, frame), want)
    with pytest.raises(ValueError, match="one positive spacing per layer"):
        BitPlaneDnCNN(depth=7, down=False, dilations=(1, 2))
    with pytest.raises(ValueError, match="strided first and last layers"):
        BitPlaneDnCNN(depth=3, down=True, dilations=(2, 1, 1))


def test_the_hardware_commands_run_a_dilated_bitplane_model_on_the_layer_pipeline(tmp_path, capsys):
    """``rtl sim`` streams a frame smaller than the 7x7 window of a dilation-3 layer through the pipeline's gateware
    (pixels, cycles, accesses equal to the runtime's and the cycle model's); ``fpga build --plan-only`` plans the
    pipeline for 640x480 on the ECP5-85F and writes nothing."""
    pytest.importorskip("amaranth")
    from edgespike.cli import main
    from edgespike.fpga.examples import demo_image
    from edgespike.png import write_png

    model = bitplane_dncnn(3, 4, 8, seed=4, dilations=(1, 3, 1))
    model.decoder.shift = 13  # the random read-out scale would saturate most pixels
    fileformat.save(model, tmp_path / "d.esnn")
    write_png(tmp_path / "i.png", demo_image(12, 14, seed=5))
    assert main(["rtl", "sim", "--model", str(tmp_path / "d.esnn"), "--image", str(tmp_path / "i.png"), "--frame",
                 "5x6", "--simulator", "amaranth"]) == 0
    said = capsys.readouterr().out
    assert "frame 5x6: equal to the CPU runtime (edgespike.runtime), pixel for pixel" in said
    assert said.count("equal to the cycle model's") == 4 and "DIFFERENT" not in said
    out = tmp_path / "build"
    assert main(["fpga", "build", "--board", "ulx3s-85f", "--model", str(tmp_path / "d.esnn"), "--out", str(out),
                 "--plan-only"]) == 0
    err = capsys.readouterr().err
    assert "layer pipeline on ECP5-85F: folds" in err and "s per 640x480 frame at 75 MHz" in err
    assert not out.exists()


@pytest.mark.parametrize("argv", [["rtl", "sim"], ["fpga", "build", "--board", "ulx3s-85f"]])
def test_the_hardware_commands_refuse_a_dilated_rate_coded_model_in_one_line(argv, tmp_path, capsys):
    from edgespike.cli import main

    fileformat.save(_rate_coded_dilated(), tmp_path / "d.esnn")
    out = tmp_path / "build"
    rc = main(argv + ["--model", str(tmp_path / "d.esnn")] + (["--out", str(out)] if "build" in argv else []))
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [err.strip()] and "is a dilated conv" in err
    assert "the layer pipeline runs dilated bit-plane models" in err and "CPU runtime" in err
    assert not out.exists()  # nothing half-built


@pytest.mark.parametrize(("L", "cin", "cout", "k"), [
    (1, 3, 2, 3),  # few outputs: one GEMM against all taps, added at their (dilated) shifts
    (1, 12, 16, 3),  # one step: im2col with dilated gathers
    (3, 12, 16, 3),  # several steps, wide: one GEMM per tap on rows shifted by d * (i * W_pad + j)
    (2, 9, 10, 5),
])
@pytest.mark.parametrize("d", [2, 3, 7])
def test_every_gemm_form_of_the_numpy_path_reads_dilated_taps(L, cin, cout, k, d):
    """What runs where no compiled kernel does (the BLAS path of ARM boards, rate-coded layers)."""
    from edgespike.runtime import conv_nhwc

    rng = np.random.default_rng(d * 100 + k)
    x = rng.integers(0, 4, (L, 11, 13, cin))
    w = rng.integers(-6, 7, (cout, cin, k, k))
    got = conv_nhwc(x, np.ascontiguousarray(w.transpose(2, 3, 1, 0)).astype(np.float64), 1, 1, d)
    for t in range(L):
        want = reference.conv2d(np.moveaxis(x[t], -1, 0), w, 1, d)
        assert np.array_equal(np.moveaxis(want, 0, -1), got[t]), t
