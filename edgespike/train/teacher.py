"""Distillation targets from the full-precision DnCNN-S teacher, computed once and sampled as patches.

Why a pool: late in training, the loss against the clean patch is dominated by what no denoiser can know (the
clean image given the noisy one is uncertain: DnCNN-S itself leaves an MSE of about 60 on the 0..255 scale at
sigma 25), so the gradient is mostly noise. The teacher's output is close to the best estimate a network can make;
a student pulled towards it sees the part of its error it can remove. The teacher costs about 3x a student step
per pixel, so its outputs are computed once, for ``K`` noise draws of every training image, and patches are cut
from that pool (the noisy frame and the teacher's output cropped and flipped together).

The noise follows the evaluation protocol (Gaussian, the noisy frame clipped and rounded to uint8); draw ``k`` of
image ``i`` uses ``numpy.random.default_rng([seed, k, i])``. The pool is cached under ``runs/`` by a key of the
teacher file's SHA-256, sigma, ``K``, the seed and the images, so every run of the same settings reads the same
targets.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger("edgespike.train")


def _key(teacher: Path, sigma: float, draws: int, seed: int, images: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    h.update(hashlib.sha256(teacher.read_bytes()).digest())
    h.update(f"{sigma!r} {draws} {seed}".encode())
    for im in images:
        h.update(np.ascontiguousarray(im).tobytes())
    return h.hexdigest()[:16]


def noisy_draw(clean: np.ndarray, sigma: float, seed: int, draw: int, index: int) -> np.ndarray:
    """Noise draw ``draw`` of training image ``index``: the evaluation protocol with its own random stream."""
    n = np.random.default_rng([seed, draw, index]).normal(0, sigma / 255, clean.shape)
    return np.clip(np.round((clean / 255 + n) * 255), 0, 255).astype(np.uint8)


class TeacherPool:
    """Noisy frames and the teacher's outputs for ``draws`` noise draws of each training image.

    Attributes
    ----------
    clean : list of uint8 arrays
        The training images.
    noisy : list of uint8 arrays ``[draws, H, W]``
        Per image, its noisy frames.
    teacher : list of float16 arrays ``[draws, H, W]``
        Per image, the teacher's denoised frames (0..255 scale, not rounded or clipped).
    """

    def __init__(self, clean: list[np.ndarray], noisy: list[np.ndarray], teacher: list[np.ndarray]):
        self.clean, self.noisy, self.teacher = clean, noisy, teacher

    @classmethod
    def build(cls, images: list[np.ndarray], teacher_path: str | Path, sigma: float, draws: int, seed: int = 0,
              cache_dir: str | Path = "runs", progress: bool = True) -> TeacherPool:
        """The pool for these settings: read from ``cache_dir`` when it is there, else computed (minutes: the
        teacher denoises ``draws x len(images)`` frames) and saved."""
        import torch
        from tqdm import tqdm

        from edgespike.train.methods.spikerir import load_teacher

        teacher_path = Path(teacher_path)
        key = _key(teacher_path, float(sigma), draws, seed, images)
        path = Path(cache_dir) / f"teacher_pool_{key}.npz"
        if path.is_file():
            with np.load(path) as z:
                noisy = [z[f"n{i}"] for i in range(len(images))]
                out = [z[f"t{i}"] for i in range(len(images))]
            log.info("teacher pool %s: %d images x %d draws (cached)", path, len(images), draws)
            return cls(images, noisy, out)
        net = load_teacher(teacher_path)
        noisy, out = [], []
        with torch.no_grad():
            for i, im in enumerate(tqdm(images, desc="teacher pool", unit="image", disable=not progress)):
                n = np.stack([noisy_draw(im, sigma, seed, k, i) for k in range(draws)])
                y, _ = net(torch.from_numpy(n.astype(np.float32))[:, None])
                noisy.append(n)
                out.append(y[:, 0].numpy().astype(np.float16))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **{f"n{i}": a for i, a in enumerate(noisy)}, **{f"t{i}": a for i, a in enumerate(out)})
        os.replace(tmp, path)
        log.info("teacher pool %s: %d images x %d draws (computed)", path, len(images), draws)
        return cls(images, noisy, out)


class PoolSampler:
    """Random ``size`` x ``size`` patches of a :class:`TeacherPool` with the 8 flips/rotations: the clean patch,
    its noisy frame and the teacher's output, cut and turned together. Same ``rng`` attribute and ``batch`` as
    :class:`edgespike.train.data.PatchSampler`, so a checkpoint resumes it the same way."""

    def __init__(self, pool: TeacherPool, size: int, seed: int = 0):
        keep = [i for i, im in enumerate(pool.clean) if min(im.shape) >= size]
        if not keep:
            raise ValueError(f"no training image is at least {size} pixels on each side")
        self.pool, self.keep, self.size = pool, keep, size
        self.rng = np.random.default_rng(seed)

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(clean, noisy, teacher)``: uint8, uint8 and float32 arrays of shape ``[n, size, size]``."""
        s, rng, pool = self.size, self.rng, self.pool
        clean = np.empty((n, s, s), np.uint8)
        noisy = np.empty((n, s, s), np.uint8)
        teacher = np.empty((n, s, s), np.float32)
        for k in range(n):
            i = self.keep[rng.integers(len(self.keep))]
            im = pool.clean[i]
            d = rng.integers(pool.noisy[i].shape[0])
            y = rng.integers(im.shape[0] - s + 1)
            x = rng.integers(im.shape[1] - s + 1)
            mode = rng.integers(8)
            for dst, src in ((clean, im), (noisy, pool.noisy[i][d]), (teacher, pool.teacher[i][d])):
                p = np.rot90(src[y:y + s, x:x + s], mode % 4)
                dst[k] = p[:, ::-1] if mode >= 4 else p
        return clean, noisy, teacher
