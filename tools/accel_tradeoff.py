#!/usr/bin/env python
"""PSNR against the accelerator's frame time: what fewer spikes buy on the ECP5-85F and what they cost.

The layer pipeline's engines spend a cycle per (plane, channel) of their input that holds a spike, so a model that
fires less runs more frames per second. For each model this prints its mean PSNR and spikes per neuron per step on
the evaluation's noise protocol (sigma 25, the integer runtime; spikes on the first of ``--sets``) and the
planner's seconds per 640x480 frame at 75 MHz (``edgespike.fpga.pipeline.plan_pipeline``, the cycle model on
``fpga build``'s planning sample) at each logic budget.

Models are ``.esnn`` files or shipped names, or, with ``--ckpt``, one trained checkpoint re-exported with every
activation step multiplied by each ``--step-scale`` (coarser codes without retraining; ``tools/train_bitplane.py
--step-scale`` starts a QAT that way):

    python tools/accel_tradeoff.py s25 runs/bp_s25_c4.esnn --budget 0.8,0.85
    python tools/accel_tradeoff.py --ckpt tools/train_logs/bitplane_s25_r5q0b.ckpt.pt --step-scale 1,1.41,2,2.83
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _models(a):
    """(label, Model) pairs, built lazily (an export per step scale)."""
    from edgespike.fileformat import load
    from edgespike.models import resolve

    for m in a.models:
        yield m, load(resolve(m))
    if a.ckpt:
        import math

        import torch

        from edgespike.train.bitplane_loop import net_from_ckpt

        for k in (float(s) for s in a.step_scale.split(",")):
            net = net_from_ckpt(a.ckpt)
            with torch.no_grad():
                net.log_step += math.log(k)
            yield f"{Path(a.ckpt).name} steps x{k:g}", net.to_model({"name": f"step x{k:g}"})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", help=".esnn files or shipped model names (bit-plane models)")
    p.add_argument("--ckpt", help="a checkpoint of tools/train_bitplane.py to re-export at each --step-scale")
    p.add_argument("--step-scale", default="1", help="with --ckpt: comma-separated step multipliers (default 1)")
    p.add_argument("--sets", default="bsd68", help="comma-separated: bsd68, set12 (default bsd68)")
    p.add_argument("--budget", default="0.8", help="comma-separated logic budgets of the planner (default 0.8)")
    p.add_argument("--json", action="store_true", help="one JSON object per model instead of the table")
    a = p.parse_args(argv)
    if not a.models and not a.ckpt:
        p.error("give models, or --ckpt with --step-scale")

    import numpy as np

    from edgespike.fpga.build import planning_sample
    from edgespike.fpga.pipeline import plan_pipeline
    from edgespike.runtime import Runtime
    from edgespike.train.data import SHARED, load_dir, noisy_frame, psnr

    sets = {name: load_dir(SHARED / "data" / name)[1] for name in a.sets.split(",")}
    budgets = [float(b) for b in a.budget.split(",")]
    if not a.json:
        print(f"{'model':<48} " + " ".join(f"{s:>8}" for s in sets) + f" {'spikes':>7} "
              + " ".join(f"{'s @' + format(b, 'g'):>8}" for b in budgets))
    for label, model in _models(a):
        rt = Runtime(model)
        scores, rates = {}, {}
        for name, ims in sets.items():
            vals, rates[name] = [], []
            for i, im in enumerate(ims):
                out, st = rt.denoise(noisy_frame(im, 25.0, i))
                vals.append(psnr(out, im))
                rates[name].append(st.spike_rate)
            scores[name] = float(np.mean(vals))
        spikes = float(np.mean(next(iter(rates.values()))))  # on the first set
        sample = planning_sample(model)
        plans = {b: plan_pipeline(model, "ecp5-85f", (480, 640), sample, logic_budget=b) for b in budgets}
        if a.json:
            print(json.dumps({"model": label, "psnr": scores, "spikes": spikes,
                              "seconds_at_75mhz": {str(b): pl.seconds(75e6) for b, pl in plans.items()},
                              "folds": {str(b): pl.folds for b, pl in plans.items()}}), flush=True)
        else:
            print(f"{label:<48} " + " ".join(f"{v:>8.3f}" for v in scores.values()) + f" {spikes:>7.4f} "
                  + " ".join(f"{pl.seconds(75e6):>8.3f}" for pl in plans.values()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
