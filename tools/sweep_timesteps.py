#!/usr/bin/env python
"""PSNR and spikes of a trained bit-plane denoiser at fewer timesteps (T = 4..8), without retraining.

A bit-plane layer's T spikes carry ``2**T`` levels. From a checkpoint of ``tools/train_bitplane.py`` (trained at
T = 8), each T is exported with every activation step widened by ``255 / (2**T - 1)`` so that the same range is
covered with fewer levels (post-training requantisation; T < 8 uses the direct input encoding), then run by the
integer runtime on the evaluation's noise protocol. Quantisation-aware training at that T would recover part of
the loss; this table is the lower bound.

    python tools/sweep_timesteps.py --ckpt tools/train_logs/default_s25.ckpt.pt --sets set12,bsd68 --T 4,5,6,7,8
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

# torch's OpenMP workers busy-wait by default and would slow the runtime's own kernels in this process
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint of tools/train_bitplane.py (after its QAT phase)")
    p.add_argument("--sets", default="set12", help="comma-separated: set12, bsd68 (default set12)")
    p.add_argument("--sigma", type=float, default=25.0)
    p.add_argument("--T", default="4,5,6,7,8", help="timesteps to export and evaluate")
    p.add_argument("--limit", type=int, default=0, help="only the first N images of each set")
    a = p.parse_args(argv)

    import numpy as np
    import torch

    from edgespike.runtime import Runtime
    from edgespike.train.bitplane_loop import load_ckpt, net_from_ckpt
    from edgespike.train.data import SHARED, load_dir, noisy_frame, psnr

    ck = load_ckpt(a.ckpt)
    c = ck["config"]
    print(f"checkpoint {a.ckpt}: {c['depth']}x{c['width']}, trained at T={c['T']}, phase {ck['phase']} "
          f"iteration {ck['it']}")
    print(f"{'T':>3} {'levels':>7} " + " ".join(f"{s:>8}" for s in a.sets.split(",")) + f" {'spikes/neuron/step':>19}")
    for T in (int(t) for t in a.T.split(",")):
        net = net_from_ckpt(a.ckpt, timesteps=T)
        with torch.no_grad():
            net.log_step += math.log((2 ** c["T"] - 1) / (2**T - 1))
        rt = Runtime(net.to_model({"name": f"T{T}"}))
        scores, rates = [], []
        for name in a.sets.split(","):
            _, ims = load_dir(SHARED / "data" / name)
            ims = ims[: a.limit] if a.limit else ims
            vals = []
            for i, im in enumerate(ims):
                out, st = rt.denoise(noisy_frame(im, a.sigma, i))
                vals.append(psnr(out, im))
                rates.append(st.spike_rate)
            scores.append(float(np.mean(vals)))
        print(f"{T:>3} {2**T:>7} " + " ".join(f"{s:>8.2f}" for s in scores) + f" {np.mean(rates):>19.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
