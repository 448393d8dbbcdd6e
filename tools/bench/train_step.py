"""Benchmark of one float-phase training step of a bit-plane denoiser: float32 against ``--bf16``.

``tools/train_bitplane.py --bf16`` runs the float phase's convolutions in bfloat16 (torch autocast, channels-last
tensors), which a CPU with AVX512-BF16 computes at about twice the float32 rate. This times what an iteration of
the loop in :mod:`edgespike.train.bitplane_loop` does (forward, MSE loss, backward, Adam step) on one batch of
random patches, both precisions interleaved in one process (one round runs each once, so a shared machine's load
hits them alike), medians over the rounds, and prints the ratio. It also prints how far the bfloat16 forward pass
is from the float32 one on the same batch (in pixels), the price of the speed.

Usage::

    python tools/bench/train_step.py [--depth 7] [--width 64] [--dilations 1,2,3,4,3,2,1] [--half-resolution]
                                     [--batch 32] [--patch 64] [--rounds 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, default=7)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--dilations", default="1,2,3,4,3,2,1", help="one per layer, or '' for none")
    p.add_argument("--half-resolution", action="store_true", help="the shipped s25's half-resolution body")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)

    import torch

    from edgespike.train.bitplane import BitPlaneDnCNN
    from edgespike.train.bitplane_loop import float_prediction

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dilations = tuple(int(d) for d in a.dilations.split(",")) if a.dilations else None
    nets, opts = {}, {}
    for name in ("float32", "bf16"):
        torch.manual_seed(0)
        nets[name] = BitPlaneDnCNN(a.depth, a.width, 8, down=a.half_resolution, dilations=dilations)
        opts[name] = torch.optim.Adam(nets[name].parameters(), lr=1e-4)
    nets["bf16"].to(memory_format=torch.channels_last)
    clean = torch.rand(a.batch, 1, a.patch, a.patch) * 255
    noisy = (clean + 25 * torch.randn_like(clean)).round().clamp(0, 255)

    def step(name: str) -> float:
        net, opt = nets[name], opts[name]
        t = time.perf_counter()
        pred = float_prediction(net, noisy, bf16=name == "bf16")
        loss = ((pred - (noisy - clean)) / 255).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t

    times = {name: [] for name in nets}
    step("float32"), step("bf16")  # warm-up: oneDNN builds its kernels on first use
    for _ in range(a.rounds):
        for name in nets:
            times[name].append(step(name))
    med = {name: statistics.median(ts) for name, ts in times.items()}
    with torch.no_grad():
        ref = BitPlaneDnCNN(a.depth, a.width, 8, down=a.half_resolution, dilations=dilations)
        y32, y16 = float_prediction(ref, noisy), float_prediction(ref, noisy, bf16=True)
    shape = f"{a.depth} x {a.width}" + (", half resolution" if a.half_resolution else "")
    if dilations:
        shape += f", dilations {a.dilations}"
    print(f"{shape}; batch {a.batch} x {a.patch}x{a.patch}; {a.threads} thread(s); {a.rounds} rounds")
    for name, s in med.items():
        print(f"  {name:8s} {s:.3f} s per training step (median)")
    print(f"float32 / bf16 = {med['float32'] / med['bf16']:.2f}")
    diff = (y32 - y16).abs()
    print(f"bf16 forward against float32 on the same batch: mean |diff| {diff.mean():.3f} px, max {diff.max():.3f} px "
          f"(the predicted residual's RMS is {y32.pow(2).mean().sqrt():.2f} px)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
