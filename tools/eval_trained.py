#!/usr/bin/env python
"""PSNR of a trained model on Set12 / BSD68 with the team's noise protocol.

``--model X.esnn`` evaluates the shipped integer file itself (through :mod:`edgespike.torchsim`, bit-exact to
:func:`edgespike.reference.run`); ``--ckpt`` adds the float ANN twin and the q-ANN view of the same parameters.

    python tools/eval_trained.py --model edgespike/models/default_s25.esnn --ckpt runs/s25.ckpt.pt \\
        --sets set12,bsd68 --sigmas 25
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help=".esnn file (the SNN through the integer simulation)")
    p.add_argument("--ckpt", help="training checkpoint (adds the float twin and the q-ANN view)")
    p.add_argument("--sets", default="set12,bsd68")
    p.add_argument("--sigmas", default="25")
    p.add_argument("--views", default="snn,twin,qann")
    p.add_argument("--limit", type=int, default=0, help="only the first N images of each set")
    p.add_argument("--engine", choices=("runtime", "torchsim"), default="runtime",
                   help="executor of the .esnn (both are tested bit-exact against edgespike.reference)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)

    import numpy as np
    import torch

    from edgespike import fileformat, torchsim
    from edgespike.frames import pad_to_multiple
    from edgespike.train.data import SHARED, load_dir, noisy_frame, psnr
    from edgespike.train.loop import _load_ckpt
    from edgespike.train.qnet import QSpikingDnCNN, predict_uint8

    torch.set_num_threads(a.threads)
    sim = None
    if a.model:
        model = fileformat.load(a.model)
        if a.engine == "runtime":
            from edgespike.runtime import Runtime

            rt = Runtime(model)

            def sim(frame):
                return rt.denoise(frame)[0]
        else:
            ts = torchsim.TorchSim(model)

            def sim(frame):
                return ts.run(frame, mode="layer")
    net = None
    if a.ckpt:
        ck = _load_ckpt(a.ckpt)
        c = ck["config"]
        net = QSpikingDnCNN(c["depth"], c["width"], c["T"], down=c.get("down", False))
        net.load_state_dict(ck["model"])
        net.eval()
    views = [v for v in a.views.split(",") if (v == "snn" and sim) or (v != "snn" and net)]
    print(f"| set | sigma | {' | '.join(views)} | images | seconds |")
    print("| --- | --- |" + " --- |" * (len(views) + 2))
    for name in a.sets.split(","):
        _, ims = load_dir(SHARED / "data" / name)
        if a.limit:
            ims = ims[: a.limit]
        for sigma in [float(s) for s in a.sigmas.split(",")]:
            res = {v: [] for v in views}
            t0 = time.time()
            for i, clean in enumerate(ims):
                noisy = noisy_frame(clean, sigma, i)
                for v in views:
                    if v == "snn":
                        out = sim(noisy)
                    elif v == "qann":
                        out = predict_uint8(net, noisy, "qann")
                    else:
                        with torch.no_grad():
                            padded = pad_to_multiple(noisy, net.size_multiple)
                            x = torch.from_numpy(padded.astype(np.float32))[None, None]
                            r = net.twin(x)[0, 0].numpy()[: noisy.shape[0], : noisy.shape[1]]
                        out = np.clip(np.round(noisy - r), 0, 255).astype(np.uint8)
                    res[v].append(psnr(out, clean))
            cells = " | ".join(f"{np.mean(res[v]):.2f}" for v in views)
            print(f"| {name} | {sigma:g} | {cells} | {len(ims)} | {time.time() - t0:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
