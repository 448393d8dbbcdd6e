"""SPIDEN's strided convolutional auto-encoder (CAE-S): 8 conv layers of C filters; the first keeps the
resolution, the second, third and fourth down-sample by 2 (stride-2 convs), the fifth, sixth and seventh
up-sample by 2 (4x4 stride-2 transposed convs, padding 1, exactly doubling), the eighth maps to one channel. IF
neurons with learned thresholds and soft reset after the first seven, membrane read-out, residual output (as
DnCNN). Frames are padded to a multiple of 8. Trained like :mod:`.coding` (threshold balancing, rate-aware ANN
phase, BPTT)."""

from __future__ import annotations

from edgespike.train.methods import common
from edgespike.train.methods.graph import ConvSpec, IntegratorSpec, NeuronSpec, QGraph, Term

NAME = "cae"
HELP = "strided spiking CAE (8 layers, stride-2 down, stride-2 transposed up)"


def add_arguments(p) -> None:
    p.add_argument("--width", type=int, default=32, help="filters per layer (the paper: 64)")
    p.add_argument("--T", type=int, default=8)


def cae(width: int, T: int, seed: int = 0) -> QGraph:
    """conv(1->C); conv s2, conv s2, conv s2 (C->C); convT, convT, convT (C->C); an IF layer after each of these
    seven; conv(C->1) + Integrator."""
    C = width
    layers = [  # name, c_in, c_out, stride, transposed
        ("conv1", 1, C, 1, False), ("down2", C, C, 2, False), ("down3", C, C, 2, False), ("down4", C, C, 2, False),
        ("up5", C, C, 2, True), ("up6", C, C, 2, True), ("up7", C, C, 2, True)]
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
        common.Phase("qann", common.qann_mse_loss, a.ann_minutes, a.ann_iters, a.lr, a.ann_batch, a.patch,
                     before=common.balance(a.quantile)),
        common.Phase("snn", common.mse_loss, a.minutes, a.iters, a.snn_lr, a.batch, a.patch),
    ]
    return g, phases, (f"spiking strided CAE, 8 layers (3 stride-2 down, 3 stride-2 transposed up), width {a.width}, "
                       f"IF learned Vth, T={a.T}, membrane read-out")
