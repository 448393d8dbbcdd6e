"""What every method's training shares: noisy patches (Gaussian or speckle), a budgeted multi-phase loop with
checkpoints and a progress bar, validation on exact integer outputs, and export to ``.esnn``.

A method supplies a :class:`~edgespike.train.methods.graph.QGraph` and a list of :class:`Phase` objects, each
with a ``loss(graph, clean, noisy) -> tensor`` function on float pixel tensors ``[B, 1, H, W]`` (0..255). Budgets
are wall-clock minutes (or iterations); the learning rate follows a cosine over each phase's budget; a checkpoint
next to the output file (``.ckpt.pt``) is written every two minutes and at the end of each phase, and ``resume``
continues from it.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgespike import fileformat
from edgespike.data import add_noise
from edgespike.train.data import SHARED, PatchSampler, load_dir
from edgespike.train.methods.graph import QGraph, decode

log = logging.getLogger("edgespike.train.methods")

TRAIN_DIR = SHARED / "data" / "bsd400"
VAL_DIR = SHARED / "data" / "set12"


class NoisyPatches:
    """Random clean training patches (8 flips/rotations) and their noisy uint8 versions.

    Parameters
    ----------
    images : list of uint8 arrays
    size : int
        Patch side.
    sigma : float
        Noise level on the 0..255 scale.
    noise : str
        ``"gaussian"`` (``y = x + v``) or ``"speckle"`` (``y = x + x v``), ``v ~ N(0, sigma/255)`` on [0, 1]
        images: the formula of ``edgespike eval --noise`` (:func:`edgespike.data.add_noise`).
    seed : int
    """

    def __init__(self, images: list[np.ndarray], size: int, sigma: float, noise: str = "gaussian", seed: int = 0):
        self.patches = PatchSampler(images, size, 0.0, seed)
        self.sigma, self.noise = sigma, noise
        self.rng = np.random.default_rng(seed + 1)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(clean, noisy)`` float32 pixel tensors ``[n, 1, size, size]``."""
        clean, _ = self.patches.batch(n)
        noisy = add_noise(clean, self.sigma, self.rng, self.noise)
        return (torch.from_numpy(clean.astype(np.float32))[:, None],
                torch.from_numpy(noisy.astype(np.float32))[:, None])


def psnr(out: np.ndarray, clean: np.ndarray) -> float:
    mse = np.mean((out.astype(np.float64) - clean.astype(np.float64)) ** 2) / 255.0**2
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


class Validator:
    """Mean PSNR of the exact integer output on centre crops of a few validation images."""

    def __init__(self, sigma: float, noise: str, n: int = 3, crop: int = 96, folder: Path = VAL_DIR):
        _, ims = load_dir(folder)
        self.clean, self.noisy = [], []
        # One square side for all crops (they are simulated as one batch); every method's size multiple divides 8.
        side = min([crop] + [min(im.shape) for im in ims[:n]]) // 8 * 8
        for i, im in enumerate(ims[:n]):
            y0, x0 = (im.shape[0] - side) // 2, (im.shape[1] - side) // 2
            c = im[y0:y0 + side, x0:x0 + side]
            self.clean.append(c)
            self.noisy.append(add_noise(c, sigma, np.random.default_rng(i), noise))

    @torch.no_grad()
    def __call__(self, g: QGraph) -> float:
        ints = g.integerise()
        x = torch.from_numpy(np.stack(self.noisy).astype(np.float32))[:, None]
        res = g.simulate(x, ints)
        out = decode(res.R, x, ints.shift, g.residual)[:, 0].numpy()
        return float(np.mean([psnr(o, c) for o, c in zip(out, self.clean, strict=True)]))

    @torch.no_grad()
    def ann(self, g: QGraph) -> float:
        """The same figure for the float ANN with the same weights (the conversion's starting point), or NaN for
        UWE-coded graphs, which have no ANN view."""
        if g.encoder == "uwe":
            return float("nan")
        x = torch.from_numpy(np.stack(self.noisy).astype(np.float32))[:, None]
        out = g.ann(x).round().clamp(0, 255).to(torch.uint8)[:, 0].numpy()
        return float(np.mean([psnr(o, c) for o, c in zip(out, self.clean, strict=True)]))


@dataclass
class Phase:
    """One training phase: ``loss(graph, clean, noisy)``; budget ``minutes`` (or ``iters``); peak ``lr``."""

    name: str
    loss: Callable
    minutes: float = 0.0
    iters: int = 0
    lr: float = 1e-3
    batch: int = 16
    patch: int = 40
    before: Callable | None = None  # run once when the phase starts (e.g. threshold balancing)
    extra_params: list | None = None  # parameters trained with the graph's but not exported (adapters)

    @property
    def empty(self) -> bool:
        return self.minutes <= 0 and self.iters <= 0


def _cosine(lr: float, frac: float, floor: float = 0.01) -> float:
    frac = min(max(frac, 0.0), 1.0)
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac)))


def _save(path: Path, g: QGraph, opt, state: dict, extra: dict) -> None:
    tmp = str(path) + ".tmp"
    torch.save({"model": g.state_dict(), "fixed_theta": g.fixed_theta, "opt": opt.state_dict() if opt else None,
                **state, **extra}, tmp)
    os.replace(tmp, path)


def train(g: QGraph, phases: list[Phase], out: str | Path, sigma: float, noise: str = "gaussian", seed: int = 0,
          resume: bool = False, progress: bool = True, metadata: dict | None = None, val_every: int = 50,
          train_dir: Path = TRAIN_DIR, val_dir: Path = VAL_DIR, val_images: int = 3, init: str | Path = "",
          skip_phases: int = 0) -> QGraph:
    """Run (or resume) ``phases`` on ``g``, export ``out`` (.esnn) and return ``g``.

    ``init``: start from the parameters of another run's checkpoint (parameters the graph lacks or adds, such as
    MPRN spike values, are skipped or keep their initial value); ``skip_phases``: the number of leading phases
    that run already did (e.g. 1 to reuse a trained ANN for several conversions).
    """
    torch.manual_seed(seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt = out.with_suffix(".ckpt.pt")
    state = {"phase": 0, "it": 0, "elapsed": 0.0, "started": False}
    ck = None
    if resume and ckpt.exists():
        ck = torch.load(ckpt, map_location="cpu", weights_only=True)  # tensors, numbers, dicts only
        g.load_state_dict(ck["model"])
        g.fixed_theta.update(ck["fixed_theta"])
        state = {k: ck[k] for k in state}
        log.info("resumed %s: phase %d, iteration %d", ckpt, state["phase"], state["it"])
    elif init:
        load_parameters(g, init)
        state["phase"] = skip_phases
        log.info("initialised from %s, skipping %d phase(s)", init, skip_phases)
    _, images = load_dir(train_dir)
    validator = Validator(sigma, noise, val_images, folder=val_dir) if val_images else None
    for pi, ph in enumerate(phases):
        if pi < state["phase"]:
            continue
        if pi > state["phase"]:
            state = {"phase": pi, "it": 0, "elapsed": 0.0, "started": False}
        sampler = NoisyPatches(images, ph.patch, sigma, noise, seed * 1000 + pi * 7919 + state["it"])
        if ph.before is not None and not state["started"]:
            ph.before(g, sampler)  # also for an empty phase: conversion without fine-tuning still balances
        state["started"] = True
        if ph.empty:
            continue
        params = list(g.parameters()) + list(ph.extra_params or [])
        opt = torch.optim.Adam(params, lr=ph.lr)
        if ck is not None and ck["phase"] == pi and ck["opt"] is not None:
            opt.load_state_dict(ck["opt"])
        _run_phase(g, ph, opt, params, sampler, state, ckpt, validator, val_every, progress)
        state = {"phase": pi + 1, "it": 0, "elapsed": 0.0, "started": False}
        _save(ckpt, g, None, state, {})
        if validator is not None:
            log.info("%s done, val %.2f dB (float ANN, same weights: %.2f dB)", ph.name, validator(g),
                     validator.ann(g))
    if validator is not None:
        log.info("final: SNN %.2f dB, float ANN %.2f dB (validation crops)", validator(g), validator.ann(g))
    export(g, out, metadata)
    return g


def load_parameters(g: QGraph, path: str | Path) -> None:
    """Load the parameters of a checkpoint into ``g`` where names and shapes match."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    ck = torch.load(path, map_location="cpu", weights_only=True)  # tensors, numbers, dicts only
    own = g.state_dict()
    same = {k: v for k, v in ck["model"].items() if k in own and own[k].shape == v.shape}
    if not same:
        raise ValueError(f"checkpoint {path} has no parameter of this network")
    g.load_state_dict(same, strict=False)
    g.fixed_theta.update({k: v for k, v in ck.get("fixed_theta", {}).items() if k in g.fixed_theta})


def _fraction(ph: Phase, state: dict) -> float:
    return state["elapsed"] / (ph.minutes * 60) if ph.minutes > 0 else state["it"] / ph.iters


def _run_phase(g, ph, opt, params, sampler, state, ckpt, validator, val_every, progress) -> None:
    from tqdm import tqdm

    total = int(ph.minutes * 60) if ph.minutes > 0 else ph.iters
    bar = tqdm(total=total, desc=ph.name, unit="s" if ph.minutes > 0 else "it", disable=not progress,
               mininterval=2.0)
    t_last = last_save = time.monotonic()
    ema, val = None, float("nan")
    while _fraction(ph, state) < 1.0:
        for grp in opt.param_groups:
            grp["lr"] = _cosine(ph.lr, _fraction(ph, state))
        clean, noisy = sampler.batch(ph.batch)
        loss = ph.loss(g, clean, noisy)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        state["it"] += 1
        now = time.monotonic()
        state["elapsed"] += now - t_last
        t_last = now
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if validator is not None and state["it"] % val_every == 0:
            val = validator(g)
            log.info("%s it %d %.1f min loss %.4e val %.2f dB", ph.name, state["it"], state["elapsed"] / 60, ema, val)
            t_last = time.monotonic()  # validation is not training budget
        bar.set_postfix(loss=f"{ema:.3e}", val=f"{val:.2f}")
        bar.n = min(int(state["elapsed"]) if ph.minutes > 0 else state["it"], total)
        bar.refresh()
        if now - last_save > 120:
            _save(ckpt, g, opt, state, {})
            last_save = time.monotonic()
    bar.close()


def export(g: QGraph, out: str | Path, metadata: dict | None = None) -> None:
    """Write the graph's integer model to ``out``."""
    model = g.to_model(metadata)
    fileformat.save(model, out)
    log.info("exported %s (%d bytes)", out, os.path.getsize(out))


# ------------------------------------------------------------------ losses shared by several methods
def mse_loss(g: QGraph, clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """MSE of the SNN's output (BPTT through the T steps, surrogate gradient) in [0, 1] units."""
    out, _ = g.output(noisy)
    return ((out - clean) / 255.0).pow(2).mean()


def ann_mse_loss(g: QGraph, clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """MSE of the float ANN view (the network conversion starts from)."""
    return ((g.ann(noisy) - clean) / 255.0).pow(2).mean()


def qann_mse_loss(g: QGraph, clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """MSE of the rate-aware ANN view (each activation is its neuron's spike rate under constant drive)."""
    return ((g.ann(noisy, rate_aware=True) - clean) / 255.0).pow(2).mean()


def balance(quantile: float | None = 0.999, n: int = 64, sequential: bool = False):
    """A :attr:`Phase.before` hook: threshold balancing from the ANN's activations on ``n`` training patches
    (``quantile`` None: 0.999; ``sequential``: see :meth:`QGraph.balance_thresholds`)."""
    def hook(g: QGraph, sampler: NoisyPatches) -> None:
        _, noisy = sampler.batch(n)
        th = g.balance_thresholds(noisy, 0.999 if quantile is None else quantile, sequential)
        log.info("balanced thresholds: %s", {k: round(v, 4) for k, v in th.items()})
    return hook
