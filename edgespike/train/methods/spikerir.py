"""SpikerIR-style feature distillation: an ANN teacher trains a thin SNN student (direct encoding, T = 4).

Loss = L1(output, clean) + 0.1 * FFT-L1(output, clean) + lambda * sum_l MSE(adapter_l(student_l), teacher_l),
where ``student_l`` is the real-valued rate of a student layer (``Vth * count / T``), ``teacher_l`` the teacher's
ReLU feature at the matching relative depth, and ``adapter_l`` a 1x1 conv (training only, never exported).

The teacher is the full-precision DnCNN-S of ``../shared/reference/dncnn`` (17 conv layers, 64 channels,
BatchNorm, residual), loaded from there at run time (never copied into the repository). ``--distill 0`` trains
the same student without a teacher (the baseline for "distillation speeds convergence").
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from edgespike.train.data import SHARED
from edgespike.train.methods import common
from edgespike.train.methods.dncnn import dncnn

NAME = "spikerir"
HELP = "SpikerIR: thin SNN student distilled from the full-precision DnCNN teacher (features + L1 + 0.1 FFT-L1)"
TEACHER_DIR = SHARED / "reference" / "dncnn"


def add_arguments(p) -> None:
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--T", type=int, default=4)
    p.add_argument("--teacher", default="", help="DnCNN state dict (default: ../shared/reference/dncnn/"
                   "dncnn_s<sigma>.pth)")
    p.add_argument("--distill", type=float, default=1.0, help="weight of the feature loss (0: no teacher)")


class DnCNNTeacher(nn.Module):
    """DnCNN-S: Conv(1->64)+ReLU, 15 x [Conv(64->64)+BN+ReLU], Conv(64->1); predicts the noise on [0, 1]."""

    def __init__(self, state: dict):
        super().__init__()
        convs = sorted({int(m.group(1)) for k in state if (m := re.match(r"module\.dncnn\.(\d+)\.weight", k))
                        and state[k].dim() == 4})
        layers = []
        for n, i in enumerate(convs):
            w = state[f"module.dncnn.{i}.weight"]
            conv = nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], padding=w.shape[2] // 2, bias=False)
            conv.weight.data.copy_(w)
            layers.append(conv)
            if f"module.dncnn.{i + 1}.running_mean" in state:
                bn = nn.BatchNorm2d(w.shape[0])
                for key in ("weight", "bias", "running_mean", "running_var"):
                    getattr(bn, key).data.copy_(state[f"module.dncnn.{i + 1}.{key}"])
                layers.append(bn)
            if n < len(convs) - 1:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers).eval()
        for p in self.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Denoised pixels and the ReLU features, shallow to deep."""
        x = pixels / 255.0
        feats = []
        y = x
        for layer in self.net:
            y = layer(y)
            if isinstance(layer, nn.ReLU):
                feats.append(y)
        return pixels - 255.0 * y, feats


def load_teacher(path: str | Path) -> DnCNNTeacher:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher weights {path} not found (../shared/reference/dncnn/)")
    return DnCNNTeacher(torch.load(path, map_location="cpu", weights_only=True))


def fft_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 distance of the 2-D FFTs (real and imaginary parts) of two image batches."""
    fa, fb = torch.fft.rfft2(a), torch.fft.rfft2(b)
    return (torch.view_as_real(fa) - torch.view_as_real(fb)).abs().mean()


def restoration_loss(out: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """L1 + 0.1 FFT-L1 in [0, 1] units."""
    o, c = out / 255.0, clean / 255.0
    return (o - c).abs().mean() + 0.1 * fft_l1(o, c)


def pairs(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """(student, teacher) feature indices matched by relative depth, the deepest of each always paired."""
    return [(i, round((i + 1) * teacher_layers / student_layers) - 1) for i in range(student_layers)]


class Distiller:
    """The loss of a SpikerIR phase; holds the teacher and the 1x1 adapters (trained, not exported)."""

    def __init__(self, g, teacher: DnCNNTeacher | None, weight: float, depth: int, width: int):
        self.teacher, self.weight = teacher, weight
        self.names = [f"n{i}" for i in range(1, depth)]
        self.adapters = nn.ModuleList(nn.Conv2d(width, 64, 1) for _ in self.names)
        n_t = sum(isinstance(m, nn.ReLU) for m in teacher.net) if teacher is not None else 0
        self.pairs = pairs(len(self.names), n_t) if teacher is not None else []

    def __call__(self, g, clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
        out, res = g.output(noisy)
        loss = restoration_loss(out, clean)
        if self.teacher is not None and self.weight > 0:
            _, tf = self.teacher(noisy)
            feat = 0
            for si, ti in self.pairs:
                name = self.names[si]
                rate = res.spikes[name][: g.T].mean(0) * g.theta(name)  # real rate-domain activation
                feat = feat + F.mse_loss(self.adapters[si](rate), tf[ti])
            loss = loss + self.weight * feat / len(self.pairs)
        return loss


def setup(a):
    g = dncnn(a.depth, a.width, a.T, seed=a.seed)
    teacher = None
    if a.distill > 0:
        teacher = load_teacher(a.teacher or TEACHER_DIR / f"dncnn_s{int(a.sigma)}.pth")
    d = Distiller(g, teacher, a.distill, a.depth, a.width)
    phases = [common.Phase("distill" if teacher else "student", d, a.minutes, a.iters, a.lr, a.batch, a.patch,
                           before=common.balance(a.quantile), extra_params=list(d.adapters.parameters()))]
    t = f"DnCNN-S teacher, feature weight {a.distill}" if teacher else "no teacher"
    return g, phases, (f"SpikerIR student DnCNN {a.depth}x{a.width}, IF learned Vth, direct, T={a.T}, {t}, "
                       "L1 + 0.1 FFT-L1")
