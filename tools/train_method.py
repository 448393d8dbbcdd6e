#!/usr/bin/env python
"""Train (or convert) one method of the founding papers and export it as ``.esnn`` (docs/METHODS.md).

Methods: vtsnn, spikingir, spikerir, coding (LIF / rate / learned-threshold IF, Gaussian or speckle noise), cae.
Budgets are wall-clock minutes per phase (or iterations); a checkpoint next to --out is saved every two minutes
and at the end of each phase, and --resume continues from it. A tqdm bar shows loss and validation PSNR (exact
integer output on three Set12 crops).

Examples
--------
    python tools/train_method.py vtsnn --loss itbp --minutes 60 --out runs/methods/vtsnn_itbp.esnn
    python tools/train_method.py spikingir --ann-minutes 30 --minutes 30 --T 10 --out runs/methods/spikingir.esnn
    python tools/train_method.py coding --neuron lif --ann-minutes 20 --minutes 30 --out runs/methods/lif.esnn
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METHODS = ("vtsnn", "spikingir", "spikerir", "coding", "cae")


def _common(p) -> None:
    p.add_argument("--sigma", type=float, default=25.0, help="noise level, 0..255 scale (default 25)")
    p.add_argument("--noise", choices=("gaussian", "speckle"), default="gaussian",
                   help="y = x + v or speckle y = x + x v (default gaussian)")
    p.add_argument("--minutes", type=float, default=0.0, help="budget of the SNN phase (BPTT / ITBP / distillation)")
    p.add_argument("--iters", type=int, default=0, help="iterations of the SNN phase (if no --minutes)")
    p.add_argument("--ann-minutes", type=float, default=0.0, help="budget of the float-ANN phase (conversion)")
    p.add_argument("--ann-iters", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3, help="peak Adam learning rate (ANN phase, from-scratch SNNs)")
    p.add_argument("--snn-lr", type=float, default=1e-4, help="peak learning rate of SNN fine-tuning")
    p.add_argument("--batch", type=int, default=16, help="patches per SNN step")
    p.add_argument("--ann-batch", type=int, default=64, help="patches per ANN step")
    p.add_argument("--patch", type=int, default=40, help="patch side (a multiple of 8, the CAE's size multiple)")
    p.add_argument("--quantile", type=float, help="threshold balancing quantile (default 0.999; 0.95 for LIF, "
                   "balanced layer by layer)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="the .esnn to write; checkpoint and log go next to it")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint next to --out")
    p.add_argument("--init", default="", help="start from the parameters of this checkpoint (e.g. a trained ANN)")
    p.add_argument("--skip-phases", type=int, default=0,
                   help="with --init: leading phases already done (1 = reuse the ANN, convert/fine-tune only)")
    p.add_argument("--val-every", type=int, default=50, help="iterations between validations")
    p.add_argument("--val-images", type=int, default=3, help="Set12 crops for validation (0: none)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--no-progress", action="store_true")


def parser() -> argparse.ArgumentParser:
    from importlib import import_module

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="method", required=True)
    for name in METHODS:
        mod = import_module(f"edgespike.train.methods.{name}")
        sp = sub.add_parser(name, help=mod.HELP, description=mod.__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(sp)
        _common(sp)
    return p


def main(argv=None) -> int:
    from importlib import import_module

    p = parser()
    a = p.parse_args(argv)
    if a.minutes <= 0 and a.iters <= 0 and a.ann_minutes <= 0 and a.ann_iters <= 0 and not a.init:
        p.error("give a budget: --minutes/--iters and/or --ann-minutes/--ann-iters (or --init to convert only)")
    if a.patch % 8:
        p.error("--patch must be a multiple of 8")
    import torch

    from edgespike.train.methods import common

    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(a.seed)
    try:
        g, phases, arch = import_module(f"edgespike.train.methods.{a.method}").setup(a)
        if a.init:
            common.load_parameters(g, a.init)
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    # The run's log goes to the terminal and next to the model (own handlers: callers' logging is left alone).
    log = logging.getLogger("edgespike.train.methods")
    log.setLevel(logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S")
    handlers = [logging.StreamHandler(), logging.FileHandler(out.with_suffix(".train.log"))]
    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)
    command = "python tools/train_method.py " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))
    meta = {"name": out.stem, "method": a.method, "architecture": arch, "noise": a.noise, "sigma": a.sigma,
            "trained_with": command, "seed": a.seed}
    try:
        log.info("command: %s", command)
        common.train(g, phases, out, a.sigma, a.noise, a.seed, a.resume, not a.no_progress, meta, a.val_every,
                     val_images=a.val_images, init=a.init, skip_phases=a.skip_phases)
    finally:
        for h in handlers:
            log.removeHandler(h)
            h.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
