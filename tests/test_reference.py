"""The reference semantics against hand-computed cases and independent scalar re-implementations."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgespike import reference
from edgespike.model import (
    Concat,
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
from edgespike.validate import analyse


def i8(a):
    return np.array(a, np.int8)


def i32(a):
    return np.array(a, np.int32)


def one(m: int = 1) -> np.ndarray:
    return i32([m])


def test_spiden_worked_example():
    """SPIDEN Section 3.2: inputs (1.5, 1.2), thresholds (1.5, 1.5, 7), T = 8 -> 8, 6 and 7 spikes.

    Values are scaled by 10 to be integers: pixels (15, 12), thresholds (15, 15, 70); neuron 3 sees
    3 * 1.5 * z1 + 2 * 1.5 * z2 (gain-compensated weights 45 and 30) through the middle row of a 3x3 kernel.
    """
    w3 = np.zeros((1, 1, 3, 3), np.int8)
    w3[0, 0, 1, 1], w3[0, 0, 1, 2] = 45, 30
    model = Model(
        nodes=[
            Conv("c1", "input", i8([[[[1]]]]), i32([0])),
            Neuron("n12", "c1", i32([15])),
            Conv("c3", "n12", w3, i32([0])),
            Neuron("n3", "c3", i32([70])),
        ],
        timesteps=8,
        decoder=Decoder([ReadoutTerm("n3", "count", one())], residual=False),
    )
    out, trace = reference.run(model, np.array([[15, 12]], np.uint8), trace=True)
    assert trace.counts["n12"][0, 0].tolist() == [8, 6]
    assert trace.counts["n3"][0, 0, 0] == 7
    assert out[0, 0] == 7


def test_uwe_uwd_round_trip_all_pixel_values():
    """VTSNN: UWE bit planes (MSB first) decoded by UWD give back every 8-bit value exactly."""
    model = Model(
        nodes=[Conv("c", "input", i8([[[[1]]]]), i32([0])), Neuron("n", "c", i32([1]))],
        timesteps=8,
        encoder=Encoder("uwe"),
        decoder=Decoder([ReadoutTerm("n", "uwd", one())], residual=False),
    )
    frame = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out, trace = reference.run(model, frame, trace=True)
    np.testing.assert_array_equal(out, frame)
    # MSB first: step 0 carries bit 7, so exactly the 128 pixels >= 128 spike at step 0.
    assert trace.spikes["n"][0] == 128


def test_uwe_planes_follow_vtsnn_algorithm_1():
    model = Model(nodes=[Conv("c", "input", i8([[[[1]]]]), i32([0]))], timesteps=8, encoder=Encoder("uwe"),
                  decoder=Decoder([]))
    x = np.array([[0b10110010]], np.uint8)
    planes = [int(reference.encode(model, x, t)[0, 0, 0]) for t in range(8)]
    a, expected = 0b10110010, []
    for t in range(7, -1, -1):  # r_t = floor(a_t / 2^t), a_{t-1} = a_t mod 2^t
        expected.append(a // 2**t)
        a %= 2**t
    assert planes == expected


def lowbias32_python(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    x ^= x >> 16
    return x


def test_rate_encoder_is_the_documented_counter_hash():
    model = Model(nodes=[Conv("c", "input", i8([[[[1]]]]), i32([0]))], timesteps=4, encoder=Encoder("rate", 7),
                  decoder=Decoder([]))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (5, 9), dtype=np.uint8)
    for t in range(4):
        got = reference.encode(model, x, t)[0]
        for y in range(5):
            for xx in range(9):
                r = lowbias32_python(((t * 5 + y) * 9 + xx) ^ 7)
                assert got[y, xx] == int((r >> 24) < x[y, xx])
    # Probability x/256: a mid-grey frame spikes about half the time.
    flat = np.full((64, 64), 128, np.uint8)
    assert abs(reference.encode(model, flat, 0).mean() - 0.5) < 0.03


def scalar_neuron(currents, extra_current, theta, reset, leak, v_init, mprn):
    """SEMANTICS.md, 'Neuron', transcribed for one neuron with Python integers."""
    v = theta // 2 if v_init == "half" else 0
    spikes = []
    for i in currents:
        if leak:
            v -= v >> leak
        v += i
        s = int(v >= theta)
        if s:
            v = v - theta if reset == "soft" else 0
        spikes.append(s)
    if mprn is not None:
        v += extra_current
        num, den = mprn
        s = int(den * v >= num * theta)
        if s:
            v = v - theta if reset == "soft" else 0
        spikes.append(s)
    return spikes, v


@settings(max_examples=150, deadline=None)
@given(
    w=st.integers(-127, 127), b=st.integers(-300, 300), theta=st.integers(1, 3000),
    reset=st.sampled_from(["soft", "hard"]), leak=st.integers(0, 4), v_init=st.sampled_from(["zero", "half"]),
    mprn=st.sampled_from([None, (3, 4), (1, 1), (5, 8)]), T=st.integers(1, 12), pixel=st.integers(0, 255),
)
def test_neuron_dynamics_match_scalar_transcription(w, b, theta, reset, leak, v_init, mprn, T, pixel):
    model = Model(
        nodes=[Conv("c", "input", i8([[[[w]]]]), i32([b])),
               Neuron("n", "c", i32([theta]), reset=reset, leak_shift=leak, v_init=v_init, mprn=mprn)],
        timesteps=T,
        decoder=Decoder([ReadoutTerm("n", "membrane", one())], residual=False),
    )
    _, trace = reference.run(model, np.array([[pixel]], np.uint8), trace=True)
    spikes, v = scalar_neuron([w * pixel + b] * T, 0, theta, reset, leak, v_init, mprn)
    assert trace.spikes["n"] == spikes
    assert trace.membranes["n"][0, 0, 0] == v


def conv_python(x, w, stride):
    c, h, wd = x.shape
    o, _, k, _ = w.shape
    p = k // 2
    ho, wo = (h + 2 * p - k) // stride + 1, (wd + 2 * p - k) // stride + 1
    out = np.zeros((o, ho, wo), np.int64)
    for oo in range(o):
        for y in range(ho):
            for xx in range(wo):
                acc = 0
                for cc in range(c):
                    for i in range(k):
                        for j in range(k):
                            yy, xi = y * stride + i - p, xx * stride + j - p
                            if 0 <= yy < h and 0 <= xi < wd:
                                acc += int(w[oo, cc, i, j]) * int(x[cc, yy, xi])
                out[oo, y, xx] = acc
    return out


def conv_transpose_python(x, w, p):
    c, h, wd = x.shape
    o, _, k, _ = w.shape
    out = np.zeros((o, 2 * h, 2 * wd), np.int64)
    for oo in range(o):
        for cc in range(c):
            for iy in range(h):
                for ix in range(wd):
                    for i in range(k):
                        for j in range(k):
                            y, xx = 2 * iy - p + i, 2 * ix - p + j
                            if 0 <= y < 2 * h and 0 <= xx < 2 * wd:
                                out[oo, y, xx] += int(w[oo, cc, i, j]) * int(x[cc, iy, ix])
    return out


@pytest.mark.parametrize("k,stride,shape", [(3, 1, (2, 5, 7)), (3, 2, (2, 6, 8)), (1, 2, (3, 4, 4)),
                                            (5, 1, (1, 3, 3)), (3, 2, (1, 1, 1))])
def test_conv2d_matches_loops(k, stride, shape):
    rng = np.random.default_rng(k * 10 + stride)
    x = rng.integers(-3, 4, shape)
    w = rng.integers(-127, 128, (4, shape[0], k, k)).astype(np.int8)
    np.testing.assert_array_equal(reference.conv2d(x, w, stride), conv_python(x, w, stride))


@pytest.mark.parametrize("k,p", [(2, 0), (3, 1), (4, 1)])
def test_conv_transpose_matches_loops(k, p):
    rng = np.random.default_rng(k)
    x = rng.integers(0, 2, (2, 3, 5))
    w = rng.integers(-127, 128, (3, 2, k, k)).astype(np.int8)
    np.testing.assert_array_equal(reference.conv_transpose2d(x, w, p), conv_transpose_python(x, w, p))


def test_decoder_rounds_half_up_and_clips():
    # Integrator of a constant current c over T=1 -> R = c; r = (R + 2) >> 2 ; direct output clipped.
    for c, expected in [(-6, 0), (-5, 0), (2, 1), (6, 2), (10, 3), (2000, 255)]:
        model = Model(
            nodes=[Conv("c", "input", i8([[[[0]]]]), i32([c])), Integrator("o", "c")],
            timesteps=1,
            decoder=Decoder([ReadoutTerm("o", "membrane", one())], shift=2, residual=False),
        )
        assert reference.run(model, np.zeros((1, 1), np.uint8))[0, 0] == expected, c
    # Residual: out = clip(x - r).
    model = Model(nodes=[Conv("c", "input", i8([[[[0]]]]), i32([-3])), Integrator("o", "c")], timesteps=1,
                  decoder=Decoder([ReadoutTerm("o", "membrane", one())], shift=0, residual=True))
    assert reference.run(model, np.array([[254, 10]], np.uint8)).tolist() == [[255, 13]]


def test_frames_are_edge_padded_to_the_size_multiple_and_cropped():
    """A stride-2 / transposed-conv pair needs even sizes: a 5x7 frame is padded to 6x8, the output cropped."""
    rng = np.random.default_rng(1)
    model = Model(
        nodes=[
            Conv("down", "input", rng.integers(-5, 6, (2, 1, 3, 3)).astype(np.int8), i32([0, 0]), stride=2),
            Neuron("n", "down", i32([200, 200])),
            ConvTranspose("up", "n", rng.integers(-5, 6, (1, 2, 2, 2)).astype(np.int8), i32([0])),
            Conv("skip", "input", i8([[[[1]]]]), i32([0])),
            Concat("cat", ("up", "skip")),
            Conv("mix", "cat", rng.integers(-5, 6, (1, 2, 3, 3)).astype(np.int8), i32([0])),
            Integrator("o", "mix"),
        ],
        timesteps=3,
        decoder=Decoder([ReadoutTerm("o", "membrane", one())], shift=4, residual=True),
    )
    assert model.size_multiple == 2
    frame = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    out = reference.run(model, frame)
    assert out.shape == (5, 7)
    padded = np.pad(frame, ((0, 1), (0, 1)), mode="edge")
    np.testing.assert_array_equal(reference.run(model, padded)[:5, :7], out)


def test_overflow_bound_refuses_the_layer_by_name():
    model = Model(
        nodes=[Conv("conv1", "input", np.full((8, 1, 3, 3), 127, np.int8), np.zeros(8, np.int32)),
               Neuron("if1", "conv1", np.full(8, 2**20, np.int32))],
        timesteps=64,
        membrane_bits=24,
        decoder=Decoder([ReadoutTerm("if1", "count", one())]),
    )
    with pytest.raises(ModelError, match="node 'if1': worst-case membrane needs 26 bits.*24-bit"):
        analyse(model)


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda m: setattr(m.nodes[0], "stride", 3), "stride must be 1 or 2"),
        (lambda m: setattr(m.nodes[0], "weight", m.nodes[0].weight.astype(np.int16)), "weight must be int8"),
        (lambda m: setattr(m.nodes[1], "threshold", i32([0])), "strictly positive"),
        (lambda m: setattr(m.nodes[1], "reset", "none"), "reset must be one of"),
        (lambda m: setattr(m.nodes[1], "mprn", (5, 4)), "mprn alpha"),
        (lambda m: setattr(m.nodes[1], "input", "later"), "not an earlier node"),
        (lambda m: setattr(m, "timesteps", 0), "timesteps"),
        (lambda m: setattr(m.encoder, "kind", "uwe"), "exactly 8 steps"),
        (lambda m: setattr(m.decoder.terms[0], "node", "nope"), "does not have"),
        (lambda m: setattr(m.decoder.terms[0], "quantity", "uwd"), "not a Neuron"),
    ],
)
def test_invalid_models_are_refused_with_one_line(mutate, message):
    model = Model(
        nodes=[Conv("c", "input", i8([[[[1]]]]), i32([0])), Neuron("n", "c", i32([5])), Integrator("o", "n")],
        timesteps=4,
        decoder=Decoder([ReadoutTerm("o", "membrane", one())]),
    )
    analyse(model)
    mutate(model)
    with pytest.raises(ModelError, match=message) as exc:
        analyse(model)
    assert "\n" not in str(exc.value)
