#!/usr/bin/env python
"""Train a bit-plane spiking denoiser (the shipped default coding) and export it as ``.esnn``.

A bit-plane network equals an integer quantised ANN bit for bit (docs/SEMANTICS.md, section 5.5), so it is trained
as one: a float ReLU network of the same shape first (phase "float"), then quantisation-aware training of the exact
integer network (phase "qat": int8 per-channel weights, T-bit activations with learned per-layer steps, LSQ,
straight-through rounding). No BPTT: an iteration costs what an ANN's costs. See docs/MODELS.md.

Training uses the evaluation's noise protocol: BSD400 patches, Gaussian noise, the noisy patch clipped and rounded
to uint8 as a camera delivers it. A checkpoint (``OUT.ckpt.pt``) is written every few minutes; ``--resume`` continues
exactly where it stopped, drawing the same patches.

Examples
--------
    python tools/train_bitplane.py --sigma 25 --float-iters 20000 --qat-iters 6000 --out runs/bp_s25.esnn
    python tools/train_bitplane.py ... --resume            # continue the run of that checkpoint
    python tools/train_bitplane.py --sigma blind --init runs/bp_s25.ckpt.pt --qat-iters 4000 --out runs/bp_blind.esnn
    python tools/train_bitplane.py --sigma 25 --teacher ../shared/reference/dncnn/dncnn_s25.pth ...   # distil
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, default=8, help="conv layers D (default 8)")
    p.add_argument("--width", type=int, default=64, help="hidden channels C (default 64)")
    p.add_argument("--T", type=int, default=8, help="timesteps = bits per activation (default 8)")
    p.add_argument("--full-resolution", action="store_true",
                   help="run the body at full resolution (default: half resolution, 5x5 stride-2 conv in, "
                   "6x6 stride-2 transposed conv out: 4x fewer operations per pixel)")
    p.add_argument("--dilations", default="",
                   help="each layer's 3x3 tap spacing, comma-separated, one per layer (IRCNN's body: --depth 7 "
                   "--dilations 1,2,3,4,3,2,1 --full-resolution); default: all 1")
    p.add_argument("--sigma", default="25", help="training noise level (0..255 scale), a band LO-HI (uniform per "
                   "patch, e.g. 12-19: a model set's member that must hold up across its band) or 'blind' = U[0, 55]")
    p.add_argument("--float-iters", type=int, default=0, help="iterations of float pre-training")
    p.add_argument("--qat-iters", type=int, default=0, help="iterations of quantisation-aware training")
    p.add_argument("--batch", type=int, default=32, help="patches per iteration (default 32)")
    p.add_argument("--patch", type=int, default=64, help="patch side (default 64)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak Adam learning rate of the float phase")
    p.add_argument("--qat-lr", type=float, default=2e-4, help="peak learning rate of the QAT phase")
    p.add_argument("--warmup", type=int, default=0,
                   help="float phase: raise the learning rate linearly over this many first iterations (e.g. 500 for "
                   "a full-resolution dilated body, which can lose its ReLUs at once; default 0)")
    p.add_argument("--bf16", action="store_true",
                   help="float phase: convolutions in bfloat16 (about 2x faster on a CPU with AVX512-BF16, e.g. "
                   "recent Xeons; slower elsewhere); Set12 validation, QAT and export stay float32")
    p.add_argument("--batch-norm", action="store_true",
                   help="float phase: batch normalisation after the conv of every middle layer, as DnCNN and IRCNN "
                   "train (faster, steadier convergence); folded into the convs when QAT starts, so the exported "
                   "model is the same plain stack")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/model.esnn", help="the .esnn to write; checkpoint and log go next to it")
    p.add_argument("--init", default="", help="initialise the parameters from this checkpoint (fine-tuning)")
    p.add_argument("--resume", action="store_true", help="continue the run stored in OUT's checkpoint")
    p.add_argument("--val-every", type=int, default=1000, help="iterations between validations on Set12")
    p.add_argument("--stop-at", type=int, default=0,
                   help="stop with a checkpoint when the current phase reaches this iteration (to change budgets "
                   "and --resume, reproducibly)")
    p.add_argument("--spike-weight", type=float, default=0.0,
                   help="QAT: weight of the mean activation in the loss, trading PSNR for fewer spikes (default 0)")
    p.add_argument("--teacher", default="",
                   help="distil from this DnCNN state dict (e.g. ../shared/reference/dncnn/dncnn_s25.pth): its outputs "
                   "on --teacher-draws noise draws of every training image are computed once (minutes; cached in "
                   "OUT's folder) and patches are cut from them")
    p.add_argument("--teacher-weight", type=float, default=0.7,
                   help="with --teacher: the teacher's share of the target, the clean patch has the rest (default 0.7)")
    p.add_argument("--teacher-draws", type=int, default=4, help="with --teacher: noise draws per image (default 4)")
    p.add_argument("--sigma-floor", type=float, default=0.0,
                   help="--sigma blind: weigh each patch's squared error by 1 / (sigma^2 + FLOOR^2), scaled to mean 1 "
                   "per batch, so that quiet patches count about as much in dB as noisy ones (e.g. 5; default 0: "
                   "plain MSE, which the noisiest patches dominate)")
    p.add_argument("--step-scale", type=float, default=1.0,
                   help="QAT: start every activation step at this multiple of its calibrated value (e.g. 2.83: "
                   "codes about 1.5 bits coarser, fewer spikes and accelerator adds for a little PSNR; default 1)")
    p.add_argument("--channel-steps", action="store_true",
                   help="QAT: learn one activation step per channel instead of one per layer (the exported "
                   "thresholds are per channel either way): channels of small range keep fine codes")
    p.add_argument("--keep-steps", action="store_true",
                   help="with --init: start QAT from the checkpoint's learned activation steps instead of calibrating "
                   "new ones (to go on with a QAT; --step-scale still multiplies them)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    if a.float_iters <= 0 and a.qat_iters <= 0:
        p.error("give a budget: --float-iters and/or --qat-iters")
    try:
        lo, band, hi = a.sigma.partition("-")
        if a.sigma != "blind" and not (0 <= float(lo) < float(hi) if band else 0 <= float(lo)):
            raise ValueError
    except ValueError:
        p.error(f"--sigma takes a noise level, a band LO-HI with LO < HI, or 'blind'; got {a.sigma!r}")
    try:
        dilations = tuple(int(d) for d in a.dilations.split(",")) if a.dilations else ()
        if dilations and (len(dilations) != a.depth or min(dilations) < 1):
            raise ValueError
    except ValueError:
        p.error(f"--dilations takes {a.depth} positive integers (one per layer, --depth), e.g. 1,2,3,4,3,2,1; "
                f"got {a.dilations!r}")
    if dilations and not a.full_resolution and (dilations[0] != 1 or dilations[-1] != 1):
        p.error("--dilations: a half-resolution body's strided first and last layers take spacing 1")
    if a.teacher and (a.sigma == "blind" or band):
        p.error("--teacher needs a fixed --sigma: the reference teachers are trained for one noise level")
    if a.sigma_floor and a.sigma != "blind":
        p.error("--sigma-floor weighs noise levels against each other: it needs --sigma blind")
    if a.keep_steps and not a.init:
        p.error("--keep-steps keeps the steps of an --init checkpoint: give --init")
    if a.step_scale <= 0:
        p.error(f"--step-scale must be positive; got {a.step_scale}")
    if a.teacher and not Path(a.teacher).is_file():
        p.error(f"--teacher {a.teacher}: no such file (the reference DnCNN-S weights: ../shared/reference/dncnn/)")

    import torch

    from edgespike.train.bitplane_loop import Config, train

    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(), logging.FileHandler(out.with_suffix(".train.log"))])
    cfg = Config(depth=a.depth, width=a.width, T=a.T, down=not a.full_resolution, dilations=dilations, sigma=a.sigma,
                 float_iters=a.float_iters, qat_iters=a.qat_iters, batch=a.batch, patch=a.patch, lr=a.lr,
                 qat_lr=a.qat_lr, warmup=a.warmup, bf16=a.bf16, batch_norm=a.batch_norm, seed=a.seed, out=a.out,
                 init=a.init, val_every=a.val_every, stop_at=a.stop_at, spike_weight=a.spike_weight,
                 teacher=a.teacher, teacher_weight=a.teacher_weight if a.teacher else 0.0,
                 teacher_draws=a.teacher_draws, sigma_floor=a.sigma_floor,
                 step_scale=a.step_scale, channel_steps=a.channel_steps, keep_steps=a.keep_steps)
    logging.getLogger("edgespike.train").info("command: %s", " ".join(sys.argv))
    logging.getLogger("edgespike.train").info("config: %s", cfg)
    train(cfg, resume=a.resume, progress=not a.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
