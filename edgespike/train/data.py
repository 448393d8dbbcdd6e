"""Training patches from BSD400 and the team's noise/PSNR protocol (numpy only; torch tensors made by the caller).

Noise protocol (shared with ``edgespike eval``): for image ``i`` in sorted file order,
``n = numpy.random.default_rng(i).normal(0, sigma/255, x.shape)``, noisy frame
``uint8(clip(round((x/255 + n) * 255), 0, 255))``; PSNR on [0, 1] of a uint8 output against the clean image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
"""``../shared`` from the repository root (read-only data, never copied into the package)."""


def load_dir(path: str | Path) -> tuple[list[str], list[np.ndarray]]:
    """All PNGs of a directory in sorted order as 2-D uint8 arrays (colour converted to luma)."""
    files = sorted(Path(path).glob("*.png"))
    if not files:
        raise FileNotFoundError(f"no PNG images in {path}")
    return [f.name for f in files], [np.asarray(Image.open(f).convert("L"), dtype=np.uint8) for f in files]


def noisy_frame(clean: np.ndarray, sigma: float, index: int) -> np.ndarray:
    """The team's evaluation noise for image number ``index`` (sorted file order)."""
    rng = np.random.default_rng(index)
    n = rng.normal(0, sigma / 255, clean.shape)
    return np.clip(np.round((clean / 255 + n) * 255), 0, 255).astype(np.uint8)


def psnr(out: np.ndarray, clean: np.ndarray) -> float:
    """PSNR in dB on [0, 1] of two uint8 images."""
    mse = np.mean((out.astype(np.float64) / 255 - clean.astype(np.float64) / 255) ** 2)
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


class PatchSampler:
    """Random ``size`` x ``size`` patches of the training images with the 8 flips/rotations, and their noisy
    uint8 versions (noise level fixed; uniform in ``[lo, hi]`` per patch for a pair ``(lo, hi)``; uniform in
    ``[0, blind_max]`` for ``"blind"``).

    Parameters
    ----------
    images : list of uint8 arrays
    size : int
        Patch side.
    sigma : float, (float, float) or "blind"
    seed : int
    """

    def __init__(self, images: list[np.ndarray], size: int = 40, sigma: float | str = 25.0, seed: int = 0,
                 blind_max: float = 55.0):
        self.images = [im for im in images if min(im.shape) >= size]
        if not self.images:
            raise ValueError(f"no training image is at least {size} pixels on each side")
        self.size, self.sigma, self.blind_max = size, sigma, blind_max
        self.rng = np.random.default_rng(seed)

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``(clean, noisy)`` uint8 arrays of shape ``[n, size, size]``."""
        s, rng = self.size, self.rng
        out = np.empty((n, s, s), np.uint8)
        for k in range(n):
            im = self.images[rng.integers(len(self.images))]
            y = rng.integers(im.shape[0] - s + 1)
            x = rng.integers(im.shape[1] - s + 1)
            p = im[y:y + s, x:x + s]
            mode = rng.integers(8)
            p = np.rot90(p, mode % 4)
            if mode >= 4:
                p = p[:, ::-1]
            out[k] = p
        if self.sigma == "blind":
            sig = rng.uniform(0, self.blind_max, (n, 1, 1))
        elif isinstance(self.sigma, tuple):  # a band of levels: a member of a model set that must not collapse
            sig = rng.uniform(*self.sigma, (n, 1, 1))
        else:
            sig = float(self.sigma)
        self.last_sigma = np.broadcast_to(sig, (n, 1, 1)).reshape(n)  # per patch, for the loss's weights
        noise = rng.normal(0, 1, out.shape) * (sig / 255)
        noisy = np.clip(np.round((out / 255 + noise) * 255), 0, 255).astype(np.uint8)
        return out, noisy
