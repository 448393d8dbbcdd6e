#!/usr/bin/env python
"""Train an edgespike spiking denoiser and export it as ``.esnn``.

Method: optionally, the float ANN twin (float weights, ReLU clipped at the learned thresholds) is trained first
(phase "float": the architecture's float reference, and a starting point); then a rate-coded, quantisation-aware
ANN whose integers ARE the SNN's (int8 weights per output channel, thresholds folded in, T-step IF neurons with
v0 = theta/2 and soft reset) is trained with straight-through gradients (phase "qann", one conv per layer); then,
optionally, the exact spiking simulation is fine-tuned with BPTT through the T steps (phase "snn", surrogate
sigmoid gradient). See docs/MODELS.md.

Examples
--------
    python tools/train.py --depth 12 --width 48 --T 8 --sigma 25 --minutes 60 --snn-minutes 10 \\
        --seed 0 --out runs/s25.esnn
    python tools/train.py --sigma blind --init runs/s25.ckpt.pt --minutes 20 --out runs/blind.esnn
    python tools/train.py ... --resume      # continue from the checkpoint next to --out
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, default=12, help="number of conv layers D (default 12)")
    p.add_argument("--width", type=int, default=48, help="hidden channels C (default 48)")
    p.add_argument("--T", type=int, default=8, help="timesteps, at most 8 for shipped models (default 8)")
    p.add_argument("--down", action="store_true",
                   help="half-resolution body: stride-2 5x5 first conv and stride-2 transposed read-out (4x fewer ops)")
    p.add_argument("--sigma", default="25", help="training noise level (0..255 scale) or 'blind' = U[0, 55]")
    p.add_argument("--float-minutes", type=float, default=0.0,
                   help="float pre-training of the ANN twin (ReLU clipped at the thresholds) before the q-ANN phase")
    p.add_argument("--float-iters", type=int, default=0, help="iterations of the float phase (if no --float-minutes)")
    p.add_argument("--minutes", type=float, default=0.0, help="wall-clock budget of the q-ANN phase")
    p.add_argument("--iters", type=int, default=0, help="iteration budget of the q-ANN phase (if no --minutes)")
    p.add_argument("--snn-minutes", type=float, default=0.0, help="budget of the BPTT fine-tuning phase")
    p.add_argument("--snn-iters", type=int, default=0, help="iterations of the BPTT phase (if no --snn-minutes)")
    p.add_argument("--batch", type=int, default=64, help="patches per q-ANN step (default 64)")
    p.add_argument("--snn-batch", type=int, default=16, help="patches per BPTT step (default 16)")
    p.add_argument("--patch", type=int, default=40, help="patch side (default 40)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak Adam learning rate of the q-ANN phase")
    p.add_argument("--snn-lr", type=float, default=1e-4, help="peak learning rate of the BPTT phase")
    p.add_argument("--snn-mode", choices=("tandem", "bptt"), default="tandem",
                   help="fine-tuning on the spiking simulation: tandem learning (exact SNN forward, rate-coded "
                   "backward; default, ~3x cheaper) or BPTT with a surrogate gradient")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/model.esnn", help="the .esnn to write; checkpoint and log go next to it")
    p.add_argument("--ckpt", default="", help="checkpoint path (default: OUT with suffix .ckpt.pt)")
    p.add_argument("--init", default="", help="initialise the parameters from this checkpoint (fine-tuning)")
    p.add_argument("--resume", action="store_true", help="continue the run stored in the checkpoint")
    p.add_argument("--val-every", type=int, default=200, help="q-ANN iterations between validations")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    a = p.parse_args(argv)

    import torch

    from edgespike.train.loop import Config, train

    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(), logging.FileHandler(out.with_suffix(".train.log"))])
    cfg = Config(depth=a.depth, width=a.width, T=a.T, down=a.down, sigma=a.sigma, minutes=a.minutes, iters=a.iters,
                 float_minutes=a.float_minutes, float_iters=a.float_iters,
                 snn_minutes=a.snn_minutes, snn_iters=a.snn_iters, batch=a.batch, snn_batch=a.snn_batch,
                 patch=a.patch, lr=a.lr, snn_lr=a.snn_lr, snn_mode=a.snn_mode, seed=a.seed, out=a.out,
                 ckpt=a.ckpt, init=a.init,
                 val_every=a.val_every)
    if max(cfg.float_minutes, cfg.float_iters, cfg.minutes, cfg.iters, cfg.snn_minutes, cfg.snn_iters) <= 0:
        p.error("give a budget: --float-minutes/--float-iters, --minutes/--iters and/or --snn-minutes/--snn-iters")
    logging.getLogger("edgespike.train").info("command: %s", " ".join(sys.argv))
    logging.getLogger("edgespike.train").info("config: %s", cfg)
    train(cfg, resume=a.resume, progress=not a.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
