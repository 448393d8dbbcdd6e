"""Frame checks, size padding and the colour policy of docs/SEMANTICS.md section 1."""

from __future__ import annotations

import numpy as np
import pytest

from edgespike.frames import FrameError, check_frame, from_luma, pad_to_multiple, to_luma, to_uint8


@pytest.mark.parametrize(
    "frame,message",
    [
        ([[1, 2]], "numpy array"),
        (np.zeros((4, 4), np.float32), "must be uint8"),
        (np.zeros((4, 4, 3), np.uint8), "one grayscale plane"),
        (np.zeros((0, 4), np.uint8), "outside"),
    ],
)
def test_bad_frames_are_refused_with_advice(frame, message):
    with pytest.raises(FrameError, match=message):
        check_frame(frame)


def test_padding_replicates_the_edges():
    f = np.arange(15, dtype=np.uint8).reshape(3, 5)
    p = pad_to_multiple(f, 4)
    assert p.shape == (4, 8)
    np.testing.assert_array_equal(p[:3, :5], f)
    np.testing.assert_array_equal(p[3, :5], f[2])
    np.testing.assert_array_equal(p[:3, 7], f[:, 4])
    assert pad_to_multiple(f, 1) is f


def test_luma_round_trip_is_close_and_gray_is_exact():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    back = from_luma(*to_luma(rgb))
    assert np.abs(back.astype(int) - rgb).max() <= 3
    gray = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], 3, axis=2)
    y, cb, cr = to_luma(gray)
    np.testing.assert_array_equal(y[:, 0], np.arange(256))
    assert set(np.unique(cb)) == {128} and set(np.unique(cr)) == {128}


def test_to_uint8_says_what_it_changed():
    a, note = to_uint8(np.full((2, 2), 65535, np.uint16))
    assert a.dtype == np.uint8 and a.max() == 255 and "16-bit" in note
    a, note = to_uint8(np.zeros((2, 2, 3), np.uint8))
    assert a.shape == (2, 2) and "luma" in note
    a, note = to_uint8(np.zeros((2, 2), np.uint8))
    assert note is None
