"""Training loop: optional float pre-training, q-ANN phase, optional BPTT fine-tuning on the spiking simulation,
checkpoints, export.

Phases share one optimiser state layout and one checkpoint file. Budgets are in minutes (wall clock, resumed
across restarts) or iterations; the learning rate follows a cosine over the budget of each phase, so a run that is
stopped and resumed follows the same schedule.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgespike import fileformat
from edgespike.train.data import SHARED, PatchSampler, load_dir, noisy_frame, psnr
from edgespike.train.qnet import QSpikingDnCNN, decode

log = logging.getLogger("edgespike.train")

PHASES = ("float", "qann", "snn")
"""The phases of a run, in order; a phase without a budget is skipped."""

_PHASE_SEED_OFFSET = {"float": 104729, "qann": 0, "snn": 7919}
"""Added to the patch sampler's seed so that each phase draws its own patches (distinct primes)."""


@dataclass
class Config:
    """Everything that defines a run (stored in the checkpoint and the model's metadata)."""

    depth: int = 12
    width: int = 48
    T: int = 8
    down: bool = False  # half-resolution body (stride-2 first conv, transposed read-out)
    sigma: str = "25"  # a number or "blind"
    float_minutes: float = 0.0  # float pre-training of the ANN twin (clipped ReLU at theta), before the q-ANN
    float_iters: int = 0
    minutes: float = 0.0  # q-ANN phase budget (wall clock); 0 -> use iters
    iters: int = 0
    snn_minutes: float = 0.0  # BPTT fine-tuning budget on the spiking simulation
    snn_iters: int = 0
    batch: int = 64
    snn_batch: int = 16
    patch: int = 40
    lr: float = 1e-3
    snn_lr: float = 1e-4
    snn_mode: str = "tandem"  # "tandem" (SNN forward, rate backward) or "bptt" (surrogate gradient through T)
    seed: int = 0
    out: str = "runs/model.esnn"
    ckpt: str = ""
    init: str = ""  # start from the parameters of this checkpoint (e.g. blind fine-tune of the sigma-25 model)
    train_dir: str = str(SHARED / "data" / "bsd400")
    val_dir: str = str(SHARED / "data" / "set12")
    val_images: int = 3
    val_crop: int = 128
    val_every: int = 200
    snn_val_every: int = 25
    extra: dict = field(default_factory=dict)

    @property
    def ckpt_path(self) -> str:
        return self.ckpt or str(Path(self.out).with_suffix(".ckpt.pt"))


def _budget_fraction(cfg_minutes: float, cfg_iters: int, elapsed: float, it: int) -> float:
    if cfg_minutes > 0:
        return elapsed / (cfg_minutes * 60)
    return it / max(cfg_iters, 1)


def _cosine(lr: float, frac: float, floor: float = 0.01) -> float:
    frac = min(max(frac, 0.0), 1.0)
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac)))


class Validator:
    """Running validation PSNR on a few centre-cropped images with the team's noise protocol."""

    def __init__(self, cfg: Config):
        _, ims = load_dir(cfg.val_dir)
        sigma = 25.0 if cfg.sigma == "blind" else float(cfg.sigma)
        self.clean, self.noisy = [], []
        for i, im in enumerate(ims[: cfg.val_images]):
            c = cfg.val_crop
            y0, x0 = (im.shape[0] - c) // 2, (im.shape[1] - c) // 2
            noisy = noisy_frame(im, sigma, i)  # noise of the full image, then crop: same pixels as the eval
            self.clean.append(im[y0:y0 + c, x0:x0 + c])
            self.noisy.append(noisy[y0:y0 + c, x0:x0 + c])

    @torch.no_grad()
    def __call__(self, net: QSpikingDnCNN, view: str) -> float:
        ints = net.integerise()
        x = torch.from_numpy(np.stack(self.noisy).astype(np.float32))[:, None]
        if view == "float":  # the float twin: no integers, the output is only rounded to pixels
            out = (x - net.twin(x)).round().clamp(0, 255)[:, 0].to(torch.uint8).numpy()
        else:
            R = net.snn(x, ints, return_R=True) if view == "snn" else net.qann(x, ints, return_R=True)
            out = decode(R, x, ints.multiplier, ints.shift)[:, 0].numpy()
        return float(np.mean([psnr(o, c) for o, c in zip(out, self.clean, strict=True)]))


def _save_ckpt(path: str, net, opt, cfg: Config, state: dict) -> None:
    tmp = path + ".tmp"
    torch.save({"config": asdict(cfg), "model": net.state_dict(), "opt": opt.state_dict(), **state}, tmp)
    os.replace(tmp, path)


def _load_ckpt(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def train(cfg: Config, resume: bool = False, progress: bool = True) -> QSpikingDnCNN:
    """Run (or resume) the phases of ``cfg``, export ``cfg.out`` and return the network."""
    torch.manual_seed(cfg.seed)
    net = QSpikingDnCNN(cfg.depth, cfg.width, cfg.T, down=cfg.down)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    state = {"phase": PHASES[0], "it": 0, "elapsed": 0.0, "best": None}
    ckpt_path = cfg.ckpt_path
    if resume and os.path.exists(ckpt_path):
        ck = _load_ckpt(ckpt_path)
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        state = {k: ck[k] for k in ("phase", "it", "elapsed", "best")}
        log.info("resumed %s: phase %s, iteration %d, %.1f min", ckpt_path, state["phase"], state["it"],
                 state["elapsed"] / 60)
    elif cfg.init:
        ck = _load_ckpt(cfg.init)
        net.load_state_dict(ck["model"])
        log.info("initialised from %s", cfg.init)
    _, train_ims = load_dir(cfg.train_dir)
    validator = Validator(cfg)
    sigma = "blind" if cfg.sigma == "blind" else float(cfg.sigma)

    if state["it"] == 0 and state["phase"] == PHASES[0] and not cfg.init:
        cal = PatchSampler(train_ims, cfg.patch, sigma, seed=cfg.seed + 10**6)
        _, noisy = cal.batch(128)
        net.calibrate(torch.from_numpy(noisy.astype(np.float32))[:, None])
        log.info("calibrated thetas: %s", np.round(net.theta.detach().numpy(), 4).tolist())

    phases = [("float", cfg.float_minutes, cfg.float_iters, cfg.lr, cfg.batch, cfg.val_every),
              ("qann", cfg.minutes, cfg.iters, cfg.lr, cfg.batch, cfg.val_every),
              ("snn", cfg.snn_minutes, cfg.snn_iters, cfg.snn_lr, cfg.snn_batch, cfg.snn_val_every)]
    start_index = PHASES.index(state["phase"])
    for name, minutes, iters, lr, batch, val_every in phases[start_index:]:
        if minutes <= 0 and iters <= 0:
            continue
        if state["phase"] != name:  # entering a new phase: fresh schedule and optimiser moments
            state = {"phase": name, "it": 0, "elapsed": 0.0, "best": None}
            opt = torch.optim.Adam(net.parameters(), lr=lr)
        _run_phase(net, opt, cfg, state, train_ims, sigma, validator, name, minutes, iters, lr, batch,
                   val_every, progress)
        _save_ckpt(ckpt_path, net, opt, cfg, state)

    export(net, cfg, validator)
    return net


def _run_phase(net, opt, cfg, state, train_ims, sigma, validator, name, minutes, iters, lr, batch, val_every,
               progress):
    from tqdm import tqdm

    # Reseed per (phase, iteration) so a resumed run draws fresh, reproducible patches.
    sampler = PatchSampler(train_ims, cfg.patch, sigma,
                           seed=cfg.seed * 1000 + state["it"] + _PHASE_SEED_OFFSET[name])
    total = int(minutes * 60) if minutes > 0 else iters
    bar = tqdm(total=total, initial=min(int(state["elapsed"]) if minutes > 0 else state["it"], total),
               unit="s" if minutes > 0 else "it", desc=name, disable=not progress, mininterval=2.0)
    t_last = time.monotonic()
    last_save = t_last
    val = float("nan")
    loss_ema = None
    while _budget_fraction(minutes, iters, state["elapsed"], state["it"]) < 1.0:
        frac = _budget_fraction(minutes, iters, state["elapsed"], state["it"])
        for g in opt.param_groups:
            g["lr"] = _cosine(lr, frac)
        clean, noisy = sampler.batch(batch)
        x = torch.from_numpy(noisy.astype(np.float32))[:, None]
        target = x - torch.from_numpy(clean.astype(np.float32))[:, None]
        if name == "float":
            pred = net.twin(x)
        elif name == "qann":
            pred = net.qann(x)
        elif cfg.snn_mode == "bptt":
            pred = net.snn(x)
        else:
            pred = net.tandem(x)
        loss = ((pred - target) / 255.0).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            net.theta.clamp_(min=1e-3)
        state["it"] += 1
        now = time.monotonic()
        state["elapsed"] += now - t_last
        t_last = now
        lv = loss.item()
        loss_ema = lv if loss_ema is None else 0.98 * loss_ema + 0.02 * lv
        if state["it"] % val_every == 0:
            val = validator(net, name)
            t_last = time.monotonic()  # validation time is not training budget
            log.info("%s it %d  %.1f min  lr %.2e  loss %.3e (%.2f dB)  val %.2f dB  thetas %s", name, state["it"],
                     state["elapsed"] / 60, opt.param_groups[0]["lr"], loss_ema, -10 * math.log10(loss_ema), val,
                     np.round(net.theta.detach().numpy(), 3).tolist())
        bar.set_postfix(it=state["it"], loss=f"{loss_ema:.2e}", val=f"{val:.2f}")
        bar.n = min(int(state["elapsed"]) if minutes > 0 else state["it"], total)
        bar.refresh() if state["it"] % 20 == 0 else None
        if now - last_save > 120:
            _save_ckpt(cfg.ckpt_path, net, opt, cfg, state)
            last_save = time.monotonic()
    bar.close()
    val = validator(net, name)
    log.info("%s done: %d iterations, %.1f min, val %.2f dB", name, state["it"], state["elapsed"] / 60, val)


def export(net: QSpikingDnCNN, cfg: Config, validator: Validator | None = None) -> None:
    """Write ``cfg.out`` (.esnn) with the training configuration as metadata."""
    body = "half-resolution body (5x5 stride-2 conv in, 6x6 stride-2 transposed conv out), " if cfg.down else ""
    meta = {"name": Path(cfg.out).stem, "architecture": f"spiking DnCNN {cfg.depth}x{cfg.width}, {body}IF soft reset, "
            f"v0=theta/2, direct encoding, T={cfg.T}, membrane read-out", "sigma": cfg.sigma,
            "trained_with": "tools/train.py", "seed": cfg.seed}
    model = net.to_model(meta)
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    fileformat.save(model, cfg.out)
    log.info("exported %s (%d bytes)", cfg.out, os.path.getsize(cfg.out))
