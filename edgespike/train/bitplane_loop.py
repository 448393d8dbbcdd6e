"""Training loop of the bit-plane denoiser: float pre-training, then quantisation-aware training of the exact
integer network, checkpoints that resume bit for bit, export.

Budgets are iterations (so that the committed command reproduces the shipped file); the learning rate follows a
cosine over each phase. The patch sampler's random state is stored in the checkpoint, so a run stopped and resumed
draws the same patches as one that never stopped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from edgespike import fileformat
from edgespike.train.bitplane import BitPlaneDnCNN, decode
from edgespike.train.data import SHARED, PatchSampler, load_dir, noisy_frame, psnr
from edgespike.train.teacher import PoolSampler, TeacherPool

log = logging.getLogger("edgespike.train")

PHASES = ("float", "qat")
"""The phases of a run, in order; a phase without iterations is skipped."""

NORM_BATCHES = 40
"""Batches of training patches (always the same ones) over which batch normalisation's statistics are recomputed
before each float validation and before the fold into the convs (:meth:`BitPlaneDnCNN.recalibrate_batch_norm`)."""


@dataclass
class Config:
    """Everything that defines a run (stored in the checkpoint and the model's metadata)."""

    depth: int = 8
    width: int = 64
    T: int = 8
    down: bool = True
    dilations: tuple = ()  # each layer's tap spacing (empty: all 1)
    warmup: int = 0  # float phase: iterations of linear learning-rate warm-up
    # float phase: convolutions in bfloat16 (torch autocast, channels-last), about 2x faster on a CPU with
    # AVX512-BF16; validation, QAT (whose integers must be exact) and export stay float32
    bf16: bool = False
    # float phase: batch normalisation in the middle layers (DnCNN's and IRCNN's training), folded into the convs
    # when QAT starts
    batch_norm: bool = False
    sigma: str = "25"  # a number, a band "LO-HI" (uniform per patch) or "blind" (uniform in [0, blind_max])
    blind_max: float = 55.0
    float_iters: int = 0
    qat_iters: int = 0
    batch: int = 32
    patch: int = 64
    lr: float = 1e-3
    qat_lr: float = 2e-4
    seed: int = 0
    out: str = "runs/model.esnn"
    init: str = ""  # start from the parameters of this checkpoint (e.g. blind from the sigma-25 float state)
    val_dir: str = str(SHARED / "data" / "set12")
    val_every: int = 1000
    ckpt_minutes: float = 3.0
    stop_at: int = 0  # stop (with a checkpoint) once the current phase reaches this iteration; 0: never
    spike_weight: float = 0.0  # QAT: weight of the mean activation q / (2**T - 1) in the loss (fewer spikes)
    teacher: str = ""  # DnCNN state dict: distil from its outputs (edgespike.train.teacher); sigma must be a number
    teacher_weight: float = 0.0  # weight of the teacher's output in the target (the clean patch has the rest)
    # blind noise: each patch's squared error weighs 1 / (sigma^2 + floor^2) (mean 1 over a batch), so that every
    # noise level counts about alike in dB; 0: plain MSE, dominated by the noisiest patches
    sigma_floor: float = 0.0
    teacher_draws: int = 4  # noise draws per training image in the teacher's pool
    # QAT: the calibrated activation steps times this at the start of QAT. A step k times coarser drops about
    # log2(k) low bits of every code, so fewer 1-bits (spikes, and the accelerator's adds) for some precision
    step_scale: float = 1.0
    # one learned activation step per channel instead of per layer (the thresholds are per channel already)
    channel_steps: bool = False
    # QAT from ``init``: keep its learned activation steps instead of calibrating new ones (to go on with a QAT)
    keep_steps: bool = False

    @property
    def ckpt_path(self) -> str:
        return str(Path(self.out).with_suffix(".ckpt.pt"))


def _cosine(lr: float, frac: float, floor: float = 0.01) -> float:
    frac = min(max(frac, 0.0), 1.0)
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac)))


def phase_lr(lr: float, it: int, iters: int, warmup: int = 0) -> float:
    """The learning rate at iteration ``it`` of a phase: a linear warm-up over the first ``warmup`` iterations (a
    full-resolution dilated network at lr 1e-3 from its initialisation lost all of its last layer's ReLUs in the
    first thousand iterations and never recovered), then the cosine."""
    rate = _cosine(lr, it / iters)
    return rate * min(1.0, (it + 1) / warmup) if warmup > 0 else rate


class Validator:
    """Mean PSNR on whole images (Set12 by default) with the evaluation noise protocol at ``sigma``; in the QAT
    phase also the integer network's spikes per neuron per step (``spike_rate``: the 1-bits of the hidden
    activations over ``T``, what ``edgespike eval`` reports)."""

    def __init__(self, val_dir: str, sigma: float = 25.0):
        _, ims = load_dir(val_dir)
        self.clean = ims
        self.noisy = [noisy_frame(im, sigma, i) for i, im in enumerate(ims)]
        self.spike_rate: float | None = None

    @torch.no_grad()
    def __call__(self, net: BitPlaneDnCNN, phase: str) -> float:
        training = net.training
        net.eval()  # batch normalisation (float phase) by its running statistics, as it will be folded
        try:
            return self._score(net, phase)
        finally:
            net.train(training)

    def _score(self, net: BitPlaneDnCNN, phase: str) -> float:
        ints = None if phase == "float" else net.integerise()
        scores = []
        ones = neurons = 0
        for clean, noisy in zip(self.clean, self.noisy, strict=True):
            x = torch.from_numpy(noisy.astype(np.float32))[None, None]
            if ints is None:
                out = (x - net.float_forward(x)).round().clamp(0, 255)[0, 0].to(torch.uint8).numpy()
            else:
                V, qs = net.qforward(x, ints, return_V=True, return_q=True)
                out = decode(V, x, ints.multiplier, ints.shift)[0, 0].numpy()
                for q in qs:
                    qi = q.to(torch.int64)
                    ones += sum(int(((qi >> b) & 1).sum()) for b in range(net.T))
                    neurons += q.numel()
            scores.append(psnr(out, clean))
        self.spike_rate = ones / (neurons * net.T) if neurons else None
        return float(np.mean(scores))


def _save_ckpt(path: str, net, opt, cfg: Config, state: dict, sampler: PatchSampler) -> None:
    tmp = path + ".tmp"
    rng = json.dumps(sampler.rng.bit_generator.state)
    torch.save({"config": asdict(cfg), "model": net.state_dict(), "opt": opt.state_dict(), "rng": rng, **state}, tmp)
    os.replace(tmp, path)


def load_ckpt(path: str) -> dict:
    """A checkpoint (tensors and plain Python values only: no pickled code)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def net_from_ckpt(path: str, timesteps: int | None = None) -> BitPlaneDnCNN:
    """The network stored in a checkpoint (with ``timesteps``: the same parameters built for another T, whose
    activation steps the caller rescales)."""
    ck = load_ckpt(path)
    c = ck["config"]
    net = BitPlaneDnCNN(c["depth"], c["width"], timesteps or c["T"], down=c["down"],
                        channel_steps=c.get("channel_steps", False), dilations=c.get("dilations") or None,
                        batch_norm=c.get("batch_norm", False) and ck["phase"] == "float")
    net.load_state_dict(ck["model"])
    return net


def parse_sigma(text: str) -> float | tuple[float, float] | str:
    """``"25"`` -> 25.0, ``"12-19"`` -> (12.0, 19.0), ``"blind"`` -> ``"blind"``; ValueError otherwise."""
    if text == "blind":
        return "blind"
    lo, sep, hi = str(text).partition("-")
    if sep:
        band = (float(lo), float(hi))
        if not 0 <= band[0] < band[1]:
            raise ValueError(f"a sigma band LO-HI needs 0 <= LO < HI, got {text!r}")
        return band
    return float(text)


def train(cfg: Config, resume: bool = False, progress: bool = True) -> BitPlaneDnCNN:
    """Run (or resume) the phases of ``cfg``, export ``cfg.out`` and return the network."""
    torch.manual_seed(cfg.seed)
    net = BitPlaneDnCNN(cfg.depth, cfg.width, cfg.T, down=cfg.down, channel_steps=cfg.channel_steps,
                        dilations=cfg.dilations or None, batch_norm=cfg.batch_norm and cfg.float_iters > 0)
    _, train_ims = load_dir(SHARED / "data" / "bsd400")
    sigma = parse_sigma(cfg.sigma)
    state = {"phase": PHASES[0], "it": 0, "seconds": 0.0}
    ck = None
    if resume and os.path.exists(cfg.ckpt_path):
        ck = load_ckpt(cfg.ckpt_path)
        if ck["phase"] != "float":
            net.fold_batch_norm()  # the checkpoint's convs carry it already: this only drops the modules
        net.load_state_dict(ck["model"])
        state = {k: ck[k] for k in state}
        log.info("resumed %s: phase %s, iteration %d", cfg.ckpt_path, state["phase"], state["it"])
    elif cfg.init:
        net.load_params(load_ckpt(cfg.init)["model"])
        log.info("initialised from %s", cfg.init)
    # a fixed sigma is validated at it, a band at its middle
    validator = Validator(cfg.val_dir, 25.0 if sigma == "blind" else sum(sigma) / 2 if isinstance(sigma, tuple)
                          else sigma)
    pool = None
    if cfg.teacher:
        if not isinstance(sigma, float):
            raise ValueError("distillation needs a fixed sigma: the reference teachers are trained for one level")
        pool = TeacherPool.build(train_ims, cfg.teacher, sigma, cfg.teacher_draws,
                                 cache_dir=Path(cfg.out).parent, progress=progress)

    def recalibrate_norm() -> None:
        """Batch norm's statistics over the same NORM_BATCHES training batches each time (a no-op without it)."""
        if net.norm is not None:
            norm = PatchSampler(train_ims, cfg.patch, sigma, seed=cfg.seed + 2 * 10**6, blind_max=cfg.blind_max)
            net.recalibrate_batch_norm(torch.from_numpy(norm.batch(cfg.batch)[1].astype(np.float32))[:, None]
                                       for _ in range(NORM_BATCHES))

    budgets = {"float": (cfg.float_iters, cfg.lr), "qat": (cfg.qat_iters, cfg.qat_lr)}
    for phase in PHASES[PHASES.index(state["phase"]):]:
        iters, lr = budgets[phase]
        if iters <= 0:
            continue
        seed = cfg.seed * 1000 + PHASES.index(phase)
        sampler = (PatchSampler(train_ims, cfg.patch, sigma, seed=seed, blind_max=cfg.blind_max) if pool is None
                   else PoolSampler(pool, cfg.patch, seed=seed))
        if phase == "qat" and net.norm is not None:
            recalibrate_norm()
            net.fold_batch_norm()  # before the optimiser takes the parameters: QAT trains the plain conv stack
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        if ck is not None and ck["phase"] == phase:
            opt.load_state_dict(ck["opt"])
            sampler.rng.bit_generator.state = json.loads(ck["rng"])
        else:
            state = {"phase": phase, "it": 0, "seconds": 0.0}
            if phase == "qat":
                cal = PatchSampler(train_ims, 128, sigma, seed=cfg.seed + 10**6, blind_max=cfg.blind_max)
                _, noisy = cal.batch(32)
                if cfg.keep_steps and cfg.init:
                    log.info("activation steps kept from %s", cfg.init)
                else:
                    net.init_steps(torch.from_numpy(noisy.astype(np.float32))[:, None])
                if cfg.step_scale != 1.0:
                    with torch.no_grad():
                        net.log_step += math.log(cfg.step_scale)
                steps = net.log_step.detach().exp().numpy() * 255
                if net.channel_steps:  # min / median / max over each layer's channels
                    steps = np.stack([steps.min(1), np.median(steps, 1), steps.max(1)], 1)
                log.info("activation steps (x255%s): %s", ", min/median/max per layer" if net.channel_steps else "",
                         np.round(steps, 4).tolist())
                log.info("qat starts at val %.2f dB, %.3f spikes per neuron per step", validator(net, "qat"),
                         validator.spike_rate)
        _run_phase(net, opt, sampler, cfg, state, phase, iters, lr, validator, progress, recalibrate_norm)
    if cfg.qat_iters > 0:  # a float-only run is a pre-training stage: nothing integer to export yet
        export(net, cfg)
    return net


def denoising_loss(pred, x, target, teacher=None, teacher_weight: float = 0.0, weights=None):
    """The training loss and its clean-target part (MSE on the 0..1 scale of the predicted residual ``pred``).

    ``target`` is the true residual (noisy ``x`` minus the clean patch). With ``teacher`` (the teacher's denoised
    patch), ``x - teacher`` is a second target of weight ``teacher_weight``: most of what separates the clean
    target from the best possible estimate is noise the student cannot learn. ``weights`` (one per patch, mean 1)
    weigh the patches' squared errors in the loss (:func:`sigma_weights`); the clean-target part returned beside it
    stays the plain MSE, comparable across runs.
    """
    per_patch = ((pred - target) / 255.0).pow(2).flatten(1).mean(1)
    clean_loss = per_patch.mean()
    loss = clean_loss if weights is None else (per_patch * weights).mean()
    if teacher is None:
        return loss, clean_loss
    w = teacher_weight
    to_teacher = ((pred - (x - teacher)) / 255.0).pow(2).flatten(1).mean(1)
    to_teacher = to_teacher.mean() if weights is None else (to_teacher * weights).mean()
    return (1 - w) * loss + w * to_teacher, clean_loss


def sigma_weights(sigma: np.ndarray, floor: float) -> torch.Tensor:
    """Per-patch loss weights ``1 / (sigma^2 + floor^2)``, scaled to mean 1: a patch's squared error grows about
    as its noise variance, so under plain MSE the noisiest patches of a blind batch set the gradient and the
    quiet ones (where PSNR is highest and BM3D strongest) are left over; this weighs them alike in dB."""
    w = 1.0 / (np.asarray(sigma, np.float64) ** 2 + floor**2)
    return torch.from_numpy(w / w.mean()).float()


def float_prediction(net: BitPlaneDnCNN, pixels: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """The float phase's predicted residual (float32); with ``bf16`` its convolutions run in bfloat16 (torch
    autocast on channels-last tensors, which oneDNN's bfloat16 kernels are fastest on; the network's parameters
    should be channels-last too)."""
    if not bf16:
        return net.float_forward(pixels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return net.float_forward(pixels.contiguous(memory_format=torch.channels_last)).float()


def _run_phase(net, opt, sampler, cfg, state, phase, iters, lr, validator, progress, recalibrate_norm) -> None:
    from tqdm import tqdm

    bar = tqdm(total=iters, initial=state["it"], unit="it", desc=phase, disable=not progress, mininterval=5.0)
    if phase == "float" and cfg.bf16:
        net.to(memory_format=torch.channels_last)  # oneDNN's bfloat16 convolutions are fastest in NHWC
    t_last = last_save = time.monotonic()
    loss_ema = None
    while state["it"] < iters:
        for g in opt.param_groups:
            g["lr"] = phase_lr(lr, state["it"], iters, cfg.warmup if phase == "float" else 0)
        clean, noisy, *teacher = sampler.batch(cfg.batch)
        x = torch.from_numpy(noisy.astype(np.float32))[:, None]
        target = x - torch.from_numpy(clean.astype(np.float32))[:, None]
        if phase == "float":
            pred, qs = float_prediction(net, x, cfg.bf16), []
        else:
            pred, qs = net.qforward(x, return_q=True)
        teacher = torch.from_numpy(teacher[0])[:, None] if teacher else None
        weights = sigma_weights(sampler.last_sigma, cfg.sigma_floor) if cfg.sigma_floor else None
        loss, clean_loss = denoising_loss(pred, x, target, teacher, cfg.teacher_weight, weights)
        if phase == "qat" and cfg.spike_weight:
            # A neuron's spikes are the 1-bits of its activation q: the mean of q is a smooth stand-in that
            # pushes activations to zero (no spikes) and small values (few bits).
            loss = loss + cfg.spike_weight * torch.stack([q.mean() for q in qs]).mean() / net.levels
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state["it"] += 1
        now = time.monotonic()
        state["seconds"] += now - t_last
        t_last = now
        lv = clean_loss.item()  # the log's "loss" stays the clean-target MSE, comparable across runs
        loss_ema = lv if loss_ema is None else 0.98 * loss_ema + 0.02 * lv
        bar.update(1)
        if state["it"] % cfg.val_every == 0 or state["it"] == iters:
            recalibrate_norm()  # (float phase with batch norm) validate what the fold would give
            val = validator(net, phase)
            rate = "" if validator.spike_rate is None else f"  spikes {validator.spike_rate:.3f}"
            log.info("%s it %d  %.1f min  lr %.2e  loss %.3e (%.2f dB)  val %.2f dB%s", phase, state["it"],
                     state["seconds"] / 60, opt.param_groups[0]["lr"], loss_ema, -10 * math.log10(loss_ema), val,
                     rate)
            bar.set_postfix(val=f"{val:.2f}")
            t_last = time.monotonic()  # validation time is not training time
        stop = cfg.stop_at and state["it"] >= cfg.stop_at
        if now - last_save > cfg.ckpt_minutes * 60 or state["it"] == iters or stop:
            _save_ckpt(cfg.ckpt_path, net, opt, cfg, state, sampler)
            last_save = time.monotonic()
        if stop:
            log.info("stopped at %s iteration %d (--stop-at); resume with --resume", phase, state["it"])
            raise SystemExit(0)
    bar.close()


def export(net: BitPlaneDnCNN, cfg: Config) -> None:
    """Write ``cfg.out`` (.esnn) with the training configuration as metadata."""
    body = "half-resolution body (5x5 stride-2 conv in, 6x6 stride-2 transposed conv out), " if cfg.down else ""
    if cfg.dilations and max(cfg.dilations) > 1:
        body += f"dilations {','.join(map(str, cfg.dilations))}, "
    meta = {"name": Path(cfg.out).stem, "coding": "bitplane",
            "architecture": f"bit-plane spiking DnCNN {cfg.depth}x{cfg.width}, {body}T={cfg.T}, residual",
            "sigma": cfg.sigma, "trained_with": "tools/train_bitplane.py", "seed": cfg.seed}
    model = net.to_model(meta)
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    fileformat.save(model, cfg.out)
    log.info("exported %s (%d bytes)", cfg.out, os.path.getsize(cfg.out))
