"""Image quality metrics in numpy: PSNR and SSIM, with the conventions the denoising papers report.

- PSNR on the [0, 1] scale (8-bit images divided by 255), i.e. ``10 log10(255**2 / MSE)`` on 0..255 values.
- SSIM of Wang et al. (2004) with a Gaussian window (sigma 1.5, 11 x 11), ``K1 = 0.01``, ``K2 = 0.03``, population
  (not sample) covariances and ``data_range = 255``: the same number as scikit-image's
  ``structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)``
  (the tests check this against scikit-image). The mean is taken over the pixels whose whole window lies inside
  the image, as scikit-image does, so the border handling of the filter never enters the result.
"""

from __future__ import annotations

import math

import numpy as np

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # int(3.5 * sigma + 0.5): scikit-image's (scipy's) truncation, an 11 x 11 window
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.ndim != 2:
        raise ValueError(f"metrics take one grey plane (H x W), got shape {a.shape}")
    return a.astype(np.float64), b.astype(np.float64)


def psnr(reference, test, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB of ``test`` against ``reference`` (``inf`` when identical).

    Parameters
    ----------
    reference, test : array_like
        Two grey images of the same shape; 0..255 values (uint8 or float) for the default ``data_range``.
    data_range : float
        The peak value (255 for 8-bit images; 1.0 for images already on [0, 1]).
    """
    a, b = _pair(reference, test)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def _gaussian_window() -> np.ndarray:
    x = np.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return w / w.sum()


def _filter_valid(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Separable correlation with ``w`` on both axes, keeping only fully-inside ('valid') positions."""
    n = len(w)
    h, wd = x.shape
    rows = sum(w[k] * x[k:h - n + 1 + k, :] for k in range(n))
    return sum(w[k] * rows[:, k:wd - n + 1 + k] for k in range(n))


def ssim(reference, test, data_range: float = 255.0) -> float:
    """Mean structural similarity (Gaussian-window SSIM, see the module docstring).

    Parameters
    ----------
    reference, test : array_like
        Two grey images of the same shape, at least 11 x 11 pixels.
    data_range : float
        The dynamic range of the pixel values (255 for 8-bit images).
    """
    a, b = _pair(reference, test)
    n = 2 * SSIM_RADIUS + 1
    if min(a.shape) < n:
        raise ValueError(f"SSIM needs images of at least {n}x{n} pixels, got {a.shape[1]}x{a.shape[0]}")
    w = _gaussian_window()
    mu_a, mu_b = _filter_valid(a, w), _filter_valid(b, w)
    var_a = _filter_valid(a * a, w) - mu_a * mu_a
    var_b = _filter_valid(b * b, w) - mu_b * mu_b
    cov = _filter_valid(a * b, w) - mu_a * mu_b
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())
