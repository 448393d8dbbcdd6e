"""PSNR and SSIM against closed forms and against scikit-image's conventions."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from edgespike.metrics import psnr, ssim
from edgespike.png import read_png

SET12 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "set12"


def test_psnr_closed_form():
    a = np.full((8, 8), 100, np.uint8)
    b = a + np.uint8(1)
    assert psnr(a, b) == pytest.approx(20 * math.log10(255.0))
    c = a.copy()
    c[0, 0] = 110  # MSE = 100 / 64
    assert psnr(a, c) == pytest.approx(10 * math.log10(255.0**2 * 64 / 100))
    assert psnr(a, a) == math.inf
    assert psnr(a / 255.0, b / 255.0, data_range=1.0) == pytest.approx(psnr(a, b))


def test_psnr_does_not_wrap_uint8():
    # 0 vs 255 must be an error of 255, not of 1 (uint8 subtraction would wrap).
    assert psnr(np.zeros((4, 4), np.uint8), np.full((4, 4), 255, np.uint8)) == pytest.approx(0.0)


def test_ssim_of_constant_images_closed_form():
    a = np.full((20, 20), 50.0)
    b = np.full((20, 20), 200.0)
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b) == pytest.approx((2 * 50 * 200 + c1) / (50**2 + 200**2 + c1))
    assert ssim(a, a) == pytest.approx(1.0)


def test_ssim_matches_scikit_image():
    skm = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(3)
    cases = [
        (rng.integers(0, 256, (37, 53)).astype(np.uint8), None),
        (read_png(SET12 / "01.png"), 25),
        (read_png(SET12 / "08.png")[100:211, 50:300], 50),
    ]
    for clean, sigma in cases:
        other = rng.integers(0, 256, clean.shape).astype(np.uint8) if sigma is None else np.clip(
            np.rint(clean + rng.normal(0, sigma, clean.shape)), 0, 255).astype(np.uint8)
        want = skm.structural_similarity(clean, other, gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False, data_range=255)
        assert ssim(clean, other) == pytest.approx(want, abs=1e-9)
        assert psnr(clean, other) == pytest.approx(skm.peak_signal_noise_ratio(clean, other, data_range=255))


def test_ssim_is_symmetric_and_below_one_for_different_images():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (32, 32)).astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    assert ssim(a, b) == pytest.approx(ssim(b, a))
    assert ssim(a, b) < 0.99


def test_metric_errors():
    with pytest.raises(ValueError, match="shape"):
        psnr(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(np.zeros((10, 40)), np.zeros((10, 40)))
    with pytest.raises(ValueError, match="grey plane"):
        ssim(np.zeros((20, 20, 3)), np.zeros((20, 20, 3)))
