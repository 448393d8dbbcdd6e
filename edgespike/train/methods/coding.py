"""Neural-coding baselines of Castagnetti et al. (arXiv 2305.11898) against SPIDEN's learned-threshold IF model.

* ``--neuron if`` (SPIDEN DnSNN): IF, soft reset, threshold learned per layer, ``v0 = theta / 2``.
* ``--neuron lif``: LIF with the format's shift leak ``v -= v >> k`` (tau = 2**k steps), hard reset to 0,
  ``v0 = 0`` and a FIXED threshold (set once by threshold balancing, layer by layer on the rate-aware ANN at the
  95 % quantile, never trained).
* ``--encoder direct`` (the pixel at every step) or ``rate`` (Bernoulli spikes with probability x/256 from the
  format's counter-based lowbias32 encoder: the training sees exactly the spikes the runtime will make).

Training: thresholds balanced on the initial ANN's activations, a rate-aware ANN phase (each activation is the
neuron's own spike rate under constant drive, with a clipped-ReLU gradient: the T + 1 levels of IF, the dead zone
and uneven levels of LIF), then BPTT on the exact SNN (surrogate gradient). ``--noise speckle`` gives SPIDEN's
Table 2 setting (y = x + x v). With ``--init`` of another run and ``--skip-phases 1`` the thresholds and weights of
that run are reused as they are (e.g. the direct-coded model run with rate coding or another T).
"""

from __future__ import annotations

from edgespike.train.methods import common
from edgespike.train.methods.dncnn import dncnn

NAME = "coding"
HELP = "LIF / rate-coding baselines and the learned-threshold IF DnSNN (also speckle noise)"


def add_arguments(p) -> None:
    p.add_argument("--neuron", choices=("if", "lif"), default="if")
    p.add_argument("--encoder", choices=("direct", "rate"), default="direct")
    p.add_argument("--leak-shift", type=int, default=2, help="LIF leak v -= v >> k, tau = 2**k (default 2)")
    p.add_argument("--depth", type=int, default=10)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--T", type=int, default=8)


def neuron_kwargs(kind: str, leak_shift: int) -> dict:
    if kind == "lif":
        return {"leak_shift": leak_shift, "reset": "hard", "v_init": "zero", "learn_theta": False}
    return {"leak_shift": 0, "reset": "soft", "v_init": "half", "learn_theta": True}


def setup(a):
    g = dncnn(a.depth, a.width, a.T, a.encoder, neuron_kwargs(a.neuron, a.leak_shift), seed=a.seed)
    lif = a.neuron == "lif"
    # LIF's dead zone silences the deep layers unless each layer is balanced on what the layers before it
    # really pass on, at a lower quantile (measured: 10x32, T=8: at 0.999 layer 9 fires nowhere, at 0.95 on 19 %)
    balance = common.balance(0.95 if lif and a.quantile is None else a.quantile, sequential=lif)
    phases = [
        common.Phase("qann", common.qann_mse_loss, a.ann_minutes, a.ann_iters, a.lr, a.ann_batch, a.patch,
                     before=balance),
        common.Phase("snn", common.mse_loss, a.minutes, a.iters, a.snn_lr, a.batch, a.patch),
    ]
    if a.neuron == "lif":
        kind = f"LIF (tau 2^{a.leak_shift}, hard reset, fixed Vth)"
    else:
        kind = "IF (soft reset, learned Vth, v0 = Vth/2)"
    arch = f"spiking DnCNN {a.depth}x{a.width}, {kind}, {a.encoder} coding, T={a.T}, membrane read-out"
    return g, phases, arch
