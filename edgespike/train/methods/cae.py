"""SPIDEN's strided convolutional auto-encoder: 8 conv layers, two stride-2 convolutions down and two stride-2
transposed convolutions up (4x4 kernels, padding 1, exactly doubling), IF neurons with learned thresholds and
soft reset, membrane read-out, residual output. Trained like :mod:`.coding` (ANN phase, threshold balancing,
BPTT)."""

from __future__ import annotations

from edgespike.train.methods import common
from edgespike.train.methods.graph import ConvSpec, IntegratorSpec, NeuronSpec, QGraph, Term

NAME = "cae"
HELP = "strided spiking CAE (8 layers, stride-2 down, stride-2 transposed up)"


def add_arguments(p) -> None:
    p.add_argument("--width", type=int, default=32, help="channels at full resolution (2x after the downs)")
    p.add_argument("--T", type=int, default=8)


def cae(width: int, T: int, seed: int = 0) -> QGraph:
    """conv(1->C), conv s2 (C->C), conv s2 (C->2C), conv (2C->2C), convT (2C->C), convT (C->C), conv (C->C),
    conv (C->1) + Integrator; an IF layer after each of the first seven."""
    C = width
    layers = [  # name, c_in, c_out, stride, transposed
        ("conv1", 1, C, 1, False), ("conv2", C, C, 2, False), ("conv3", C, 2 * C, 2, False),
        ("conv4", 2 * C, 2 * C, 1, False), ("up5", 2 * C, C, 2, True), ("up6", C, C, 2, True),
        ("conv7", C, C, 1, False)]
    specs, src = [], "input"
    for i, (name, ci, co, stride, tr) in enumerate(layers, start=1):
        if tr:
            specs.append(ConvSpec(name, src, ci, co, k=4, stride=2, transpose=True, padding=1))
        else:
            specs.append(ConvSpec(name, src, ci, co, stride=stride))
        specs.append(NeuronSpec(f"n{i}", name))
        src = f"n{i}"
    specs += [ConvSpec("conv8", src, C, 1), IntegratorSpec("readout", "conv8")]
    g = QGraph(specs, T, "direct", [Term("readout", "membrane")], residual=True, seed=seed)
    g.weight["conv8"].data.mul_(0.1)
    return g


def setup(a):
    g = cae(a.width, a.T, a.seed)
    phases = [
        common.Phase("ann", common.ann_mse_loss, a.ann_minutes, a.ann_iters, a.lr, a.ann_batch, a.patch),
        common.Phase("snn", common.mse_loss, a.minutes, a.iters, a.snn_lr, a.batch, a.patch,
                     before=common.balance(a.quantile)),
    ]
    return g, phases, f"spiking strided CAE, 8 layers, width {a.width}, IF learned Vth, T={a.T}, membrane read-out"
