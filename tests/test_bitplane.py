"""Bit-plane layers (docs/SEMANTICS.md section 5.5): a network of them IS an integer quantised ANN, bit for bit,
in every executor; the file format keeps 1.0 files as they were."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgespike import fileformat, reference
from edgespike.model import (
    BitPlaneNeuron,
    Conv,
    ConvTranspose,
    Decoder,
    Encoder,
    Integrator,
    Model,
    ModelError,
    Neuron,
    ReadoutTerm,
)
from edgespike.runtime import Runtime
from edgespike.testing import bitplane_dncnn
from edgespike.twin import Twin
from edgespike.validate import analyse

MODELS = Path(__file__).resolve().parents[1] / "edgespike" / "models"
METHODS = Path(__file__).resolve().parents[1] / "runs" / "methods"


def integer_ann(model: Model, frame: np.ndarray) -> np.ndarray:
    """The integer quantised ANN of a chain of Conv/ConvTranspose + BitPlaneNeuron layers with a uwd Integrator
    read-out, written out independently of every executor: q_l = clip(floor((W q + (2^T-1) b + bias) / theta))."""
    from edgespike.frames import pad_to_multiple

    T = model.timesteps
    L = 2**T - 1
    h, w = frame.shape
    x = pad_to_multiple(frame, model.size_multiple).astype(np.int64)
    q = x[None] * (1 if model.encoder.kind == "uwe" else L)
    z = None
    for node in model.nodes:
        if isinstance(node, Conv | ConvTranspose):
            W = node.weight.astype(np.int64)
            k = W.shape[2]
            if isinstance(node, Conv):
                d = node.dilation
                p = d * (k // 2)
                qp = np.pad(q, ((0, 0), (p, p), (p, p)))
                ho = (q.shape[1] + 2 * p - d * (k - 1) - 1) // node.stride + 1
                wo = (q.shape[2] + 2 * p - d * (k - 1) - 1) // node.stride + 1
                z = np.zeros((W.shape[0], ho, wo), np.int64)
                for i in range(k):
                    for j in range(k):
                        win = qp[:, d * i:d * i + node.stride * ho:node.stride,
                                 d * j:d * j + node.stride * wo:node.stride]
                        z += np.tensordot(W[:, :, i, j], win, axes=(1, 0))
            else:
                c, hh, ww = q.shape
                full = np.zeros((W.shape[0], 2 * hh + k, 2 * ww + k), np.int64)
                for i in range(k):
                    for j in range(k):
                        full[:, i:i + 2 * hh:2, j:j + 2 * ww:2] += np.tensordot(W[:, :, i, j], q, axes=(1, 0))
                z = full[:, node.padding:node.padding + 2 * hh, node.padding:node.padding + 2 * ww]
            z = z + node.bias.astype(np.int64)[:, None, None] * L
        elif isinstance(node, BitPlaneNeuron):
            v = z + node.bias.astype(np.int64)[:, None, None]
            q = np.clip(v // node.threshold.astype(np.int64)[:, None, None], 0, L)
        elif isinstance(node, Integrator):
            assert node.uwd
            z = z + (0 if node.bias is None else node.bias.astype(np.int64)[:, None, None])
    term = model.decoder.terms[0]
    R = int(term.multiplier[0]) * z
    s = model.decoder.shift
    r = (R + (1 << (s - 1))) >> s if s else R
    return np.clip(x[None] - r, 0, 255)[0, :h, :w].astype(np.uint8)


@settings(max_examples=25, deadline=None)
@given(depth=st.integers(2, 4), width=st.integers(1, 9), T=st.integers(1, 8), seed=st.integers(0, 2**31),
       down=st.booleans(), uwe=st.booleans(), h=st.integers(1, 23), w=st.integers(1, 23),
       dilations=st.lists(st.sampled_from([1, 1, 2, 3, 5]), min_size=4, max_size=4))
def test_a_bitplane_network_is_its_integer_quantised_ann(depth, width, T, seed, down, uwe, h, w, dilations):
    """Dilated layers (IRCNN's, format 1.3) too, with taps as far apart as the frame is wide."""
    dil = tuple(dilations[:depth])
    if down:  # the strided first and last layers are not dilated
        dil = (1,) + dil[1:-1] + (1,)
    model = bitplane_dncnn(depth, width, T, seed=seed, down=down, encoder="uwe" if (uwe and T == 8) else None,
                           dilations=dil)
    frame = np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)
    want = integer_ann(model, frame)
    assert np.array_equal(reference.run(model, frame), want)
    for backend in ("numpy", "auto"):
        for path in ("dense", "spikes"):
            out, _ = Runtime(model, backend=backend, bitplane_path=path).denoise(frame)
            assert np.array_equal(out, want), (backend, path)
    assert np.array_equal(Twin(model, mode="quant", dtype=np.float64).denoise(frame), want)
    torchsim = pytest.importorskip("edgespike.torchsim")
    for mode in ("step", "layer"):
        assert np.array_equal(torchsim.run(model, frame, mode=mode), want)


def _one_layer(theta: int, bias: int, T: int = 4) -> Model:
    """input (direct) -> 1x1 conv (weight 1) -> bit-plane neuron, read out as its uwd value (its q)."""
    return Model(
        nodes=[Conv("c", "input", np.ones((1, 1, 1, 1), np.int8), np.zeros(1, np.int32)),
               BitPlaneNeuron("bp", "c", np.array([theta], np.int32), np.array([bias], np.int32))],
        timesteps=T, encoder=Encoder("direct"),
        decoder=Decoder([ReadoutTerm("bp", "uwd", np.array([1], np.int32))], shift=0, residual=False))


def test_successive_approximation_floors_saturates_and_clips_negatives():
    # direct input x at T = 4: the decoded membrane is 15 x + bias; q = clip(floor(v / theta), 0, 15)
    frame = np.arange(256, dtype=np.uint8).reshape(16, 16)
    for theta, bias in ((15, 0), (40, 7), (15, -1000), (3, 0)):
        v = 15 * frame.astype(np.int64) + bias
        want = np.clip(v // theta, 0, 15).astype(np.uint8)
        out, trace = reference.run(_one_layer(theta, bias), frame, trace=True)
        assert np.array_equal(out, want)
        # the residue is what the successive approximation leaves: v - theta * q
        assert np.array_equal(trace.membranes["bp"][0], v - theta * want.astype(np.int64))
        # spikes are the bits of q, MSB first
        bits = [int(((want.astype(np.int64) >> (3 - t)) & 1).sum()) for t in range(4)]
        assert trace.spikes["bp"] == bits


def test_bitplane_layers_mix_with_if_layers_in_every_executor():
    rng = np.random.default_rng(3)
    model = Model(
        nodes=[Conv("c1", "input", rng.integers(-20, 21, (4, 1, 3, 3)).astype(np.int8), np.zeros(4, np.int32)),
               BitPlaneNeuron("bp1", "c1", np.full(4, 40, np.int32), np.full(4, 20, np.int32)),
               Conv("c2", "bp1", rng.integers(-20, 21, (4, 4, 3, 3)).astype(np.int8), np.full(4, 3, np.int32)),
               Neuron("if2", "c2", np.full(4, 30, np.int32), v_init="half"),
               Conv("c3", "if2", rng.integers(-20, 21, (1, 4, 3, 3)).astype(np.int8), np.zeros(1, np.int32)),
               BitPlaneNeuron("bp3", "c3", np.full(1, 9, np.int32), np.zeros(1, np.int32))],
        timesteps=8, encoder=Encoder("uwe"),
        decoder=Decoder([ReadoutTerm("bp3", "uwd", np.array([1], np.int32))], shift=0, residual=True))
    frame = rng.integers(0, 256, (19, 13), dtype=np.uint8)
    want = reference.run(model, frame)
    for backend in ("numpy", "auto"):
        assert np.array_equal(Runtime(model, backend=backend).denoise(frame)[0], want)
    torchsim = pytest.importorskip("edgespike.torchsim")
    assert np.array_equal(torchsim.run(model, frame), want)


def test_bitplane_layers_refuse_an_mprn_extra_step():
    model = _one_layer(10, 0)
    model.nodes.insert(1, Neuron("m", "c", np.array([5], np.int32), mprn=(1, 2)))
    model.nodes[2].input = "c"
    with pytest.raises(ModelError, match="bit-plane layers cannot be combined with an MPRN extra step"):
        analyse(model)


def test_bounds_refuse_a_threshold_whose_comparisons_overflow():
    model = _one_layer(2**28, 0, T=8)
    with pytest.raises(ModelError, match="node 'bp': worst-case membrane needs 37 bits"):
        analyse(model)


def test_a_bitplane_model_is_written_as_1_1_and_reads_back_equal(tmp_path):
    model = bitplane_dncnn(3, 4, 8, seed=1, down=True)
    path = tmp_path / "bp.esnn"
    fileformat.save(model, path)
    assert path.read_bytes()[8:12] == bytes([1, 0, 1, 0])  # major 1, minor 1, little-endian
    assert fileformat.load(path).equals(model)


# Outputs of committed 1.0 files on a 37x53 crop of the sample frame, computed with the code before format 1.1
# (commit a7812ad) by edgespike.reference.run.
OLD_PIXELS = {
    MODELS / "if_s25.esnn": "0c1d078fb0bad7d0a1e5958a188baf2f833c32de60483e695bebc49572262fc8",
    MODELS / "if_blind.esnn": "f502b7f8f4f7c64e20c7c12765cdd8ed333b4fe05afbebd6588e8992f5b3cb6d",
    METHODS / "sir_mprn_t15.esnn": "5f93c455fcfaef24c66e22f13d5638082c53ee9d5e9098cd47471aace94879cf",
    METHODS / "lif_direct_t4.esnn": "ba435354d8569a5fc61ebd62b349e24acfb28b99329b031f09966551e373a6f5",
    METHODS / "if_rate_t8.esnn": "15f0081c514cc9ccc9d9005d6b4a9ada295de9b29a0371384b1f181c1daafdc0",
    METHODS / "vtsnn_itbp.esnn": "44d4186ed3a20917e08459bc6baaa25e19d9952d0080d8c9f9d12577936484b4",
}


@pytest.mark.parametrize("path", list(OLD_PIXELS), ids=lambda p: p.name)
def test_a_committed_1_0_file_still_gives_its_old_pixels(path, tmp_path):
    from edgespike.png import read_png

    data = path.read_bytes()
    assert data[8:12] == bytes([1, 0, 0, 0])  # written as format 1.0
    frame = np.asarray(read_png(MODELS / "sample.png"))[100:137, 60:113]
    model = fileformat.load(path)
    for out in (reference.run(model, frame), Runtime(model).denoise(frame)[0]):
        assert hashlib.sha256(out.tobytes()).hexdigest() == OLD_PIXELS[path]
    # re-saving a model without bit-plane layers writes the same 1.0 bytes
    fileformat.save(model, tmp_path / "again.esnn")
    assert (tmp_path / "again.esnn").read_bytes() == data


def _kernel_or_skip():
    from edgespike import kernels

    lib = kernels.load()
    if lib is None:
        pytest.skip(f"no compiled kernel: {kernels.load_error()}")
    return kernels, lib


def _check_integer_kernel(kernels, lib, pack, h, w, cin, co, k, stride, T, seed, dilation=1):
    """kernels.conv_int with ``pack``'s weights equals an int64 convolution; fused with the bit-plane neuron it
    equals bitplane_quantise's output, its spikes counted in the core rows only."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2**T, (h, w, cin)).astype(np.uint8 if T <= 8 else np.uint16)
    weight = rng.integers(-128, 128, (co, cin, k, k)).astype(np.int8)
    bias = rng.integers(-5000, 5000, co).astype(np.int32)
    d = dilation
    p = d * (k // 2)
    xp = np.pad(x.astype(np.int64), ((p, p), (p, p), (0, 0)))
    ho, wo = (h + 2 * p - d * (k - 1) - 1) // stride + 1, (w + 2 * p - d * (k - 1) - 1) // stride + 1
    want = np.tile(bias.astype(np.int64), (ho, wo, 1))
    for i in range(k):
        for j in range(k):
            win = xp[d * i:d * i + stride * ho:stride, d * j:d * j + stride * wo:stride]
            want += win @ weight[:, :, i, j].astype(np.int64).T
    packed = pack(weight)
    assert np.array_equal(kernels.conv_int(lib, x, packed, stride, bias, dilation=d), want)
    neuron = BitPlaneNeuron("bp", "c", rng.integers(1, 3000, co).astype(np.int32),
                            rng.integers(-3000, 3000, co).astype(np.int32))
    rows = (min(1, ho), max(min(1, ho), ho - int(rng.integers(0, 3))))
    q, bits = kernels.conv_int(lib, x, packed, stride, bias, neuron=neuron, T=T, rows=rows, dilation=d)
    q_want = np.clip(np.floor_divide(want + neuron.bias, neuron.threshold), 0, 2**T - 1)
    assert np.array_equal(q, q_want)
    if T <= 8:
        core = q_want[rows[0]:rows[1]]
        assert bits.tolist() == [int(((core >> (T - 1 - t)) & 1).sum()) for t in range(T)]


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 13), w=st.integers(1, 21), cin=st.integers(1, 40), co=st.integers(1, 40),
       k=st.sampled_from([1, 3, 5]), stride=st.sampled_from([1, 2]), T=st.integers(1, 12), seed=st.integers(0, 2**31),
       dilation=st.sampled_from([1, 1, 2, 4]))
def test_the_integer_kernel_is_an_exact_convolution_and_quantiser(h, w, cin, co, k, stride, T, seed, dilation):
    """The int16 kernel (the dense path of bit-plane layers: int16 pairs, 4-pixel x 16-channel tiles and their
    tails), dilated at stride 1 by phases."""
    kernels, lib = _kernel_or_skip()
    _check_integer_kernel(kernels, lib, kernels.pack_s16, h, w, cin, co, k, stride, T, seed,
                          dilation if stride == 1 else 1)


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 13), w=st.integers(1, 21), cin=st.integers(1, 70), co=st.integers(1, 90),
       k=st.sampled_from([1, 3, 5]), stride=st.sampled_from([1, 2]), T=st.integers(1, 8), seed=st.integers(0, 2**31),
       dilation=st.sampled_from([1, 1, 2, 4]))
def test_the_u8_kernel_is_an_exact_convolution_and_quantiser(h, w, cin, co, k, stride, T, seed, dilation):
    """The u8 x s8 kernel (VNNI where the CPU has it: 6-pixel x 64-channel tiles, their 16-channel and masked
    tails, and the 6-pixel tail past the row's end; the plain C loop elsewhere), dilated at stride 1 by phases."""
    kernels, lib = _kernel_or_skip()
    _check_integer_kernel(kernels, lib, kernels.pack_u8, h, w, cin, co, k, stride, T, seed,
                          dilation if stride == 1 else 1)


def test_the_u8_kernel_without_vnni_is_the_same_convolution(tmp_path):
    """Built without the CPU's vector extensions (as for a CPU without VNNI), the u8 kernel runs its plain C loop:
    the same results, and it says it is not the fast path."""
    kernels, _ = _kernel_or_skip()
    out = tmp_path / "portable.so"
    ok, why = kernels.compile_kernel(kernels.compiler(), ["-O1", "-fPIC", "-shared"], out)
    assert ok, why
    lib = kernels._open(str(out))
    assert not kernels.u8_fast(lib) and not kernels.s16_fast(lib)
    cases = [(9, 14, 64, 64, 3, 1, 1), (7, 11, 1, 70, 5, 2, 1), (11, 13, 8, 20, 3, 1, 3), (6, 9, 6, 5, 3, 1, 2)]
    for seed, (h, w, cin, co, k, stride, dil) in enumerate(cases):  # dilated: in place (cin 8), by phases (cin 6)
        _check_integer_kernel(kernels, lib, kernels.pack_u8, h, w, cin, co, k, stride, 8, seed, dil)


@pytest.mark.parametrize("width", [16, 20, 37])
def test_the_runtime_runs_wide_bitplane_layers_in_the_integer_kernel(width, monkeypatch):
    """Layers of 16 channels and more take the kernel's vector tiles (and their channel tails); the result is
    still the integer ANN, and the integer path did run."""
    kernels, _ = _kernel_or_skip()
    calls = []
    real = kernels.conv_int

    def spy(lib, x, packed, *a, **kw):
        calls.append((kw.get("neuron"), packed.dtype))
        return real(lib, x, packed, *a, **kw)

    monkeypatch.setattr(kernels, "conv_int", spy)
    model = bitplane_dncnn(4, width, 8, seed=width, down=True)
    frame = np.random.default_rng(width).integers(0, 256, (29, 35), dtype=np.uint8)
    out, _ = Runtime(model, bitplane_path="dense").denoise(frame)
    assert np.array_equal(out, integer_ann(model, frame))
    lib = kernels.load()
    if not kernels.s16_fast(lib):
        pytest.skip("the kernel has no vector path here (no AVX2): the runtime keeps BLAS")
    assert any(n is not None for n, _ in calls)  # fused with the bit-plane layer that reads it
    # 8-bit activations and int8 weights take the dot-product kernel where the CPU has one
    assert {dt for _, dt in calls} == {np.dtype(np.int8) if kernels.u8_fast(lib) else np.dtype(np.int16)}
