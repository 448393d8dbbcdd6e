"""SpikingIR (Ouyang et al. 2025): ANN -> SNN conversion, a convolutional pixel mapper with membrane-potential
recycling, MPRN neurons, then surrogate-gradient fine-tuning.

Network (DnCNN-shaped, residual): conv(1->C)+IF, (D-3) x [conv(C->C)+IF], conv(C->1)+IF (the last spiking layer,
one channel: it fires for the noise plus an offset its bias learns), then the pixel mapper, a 1x1 conv(1->1)
with bias (which removes the offset) into an Integrator.

* Conversion: the float ANN (same weights, ReLU) is trained first; threshold balancing (Rueckauer 2017) sets each
  layer's threshold to the 99.9 % quantile of its ANN activation; integerisation folds them into the weights.
* Membrane-potential recycling: the output adds the last spiking layer's residual membrane ``v_res / (Vth T)``
  (in rate units, through the mapper's weight): a second decoder term ``membrane`` of that neuron, its
  multiplier in the ratio of the scales.
* MPRN: every neuron fires once more after step T if ``v >= alpha Vth`` (alpha = num/den); that extra spike is
  worth ``beta Vth`` with beta learned per layer and folded into the next conv's ``weight_extra`` (spikes stay
  binary).
* Fine-tuning: BPTT through the T (+1) steps with a sigmoid surrogate gradient.
"""

from __future__ import annotations

from edgespike.train.methods import common
from edgespike.train.methods.dncnn import body
from edgespike.train.methods.graph import ConvSpec, IntegratorSpec, NeuronSpec, QGraph, Term

NAME = "spikingir"
HELP = "SpikingIR: ANN->SNN conversion, pixel mapper, membrane recycling, MPRN neurons, surrogate fine-tuning"
LAST, MAPPER = "n_last", "mapper"


def add_arguments(p) -> None:
    p.add_argument("--depth", type=int, default=10, help="spiking layers incl. the 1-channel last one")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--T", type=int, default=10)
    p.add_argument("--alpha", default="3/4", help="MPRN alpha as num/den in (1/2, 1] (default 3/4)")
    p.add_argument("--no-mprn", action="store_true", help="plain IF neurons, no extra step")
    p.add_argument("--no-recycle", action="store_true", help="no membrane-potential recycling term")


def parse_alpha(text: str) -> tuple[int, int]:
    try:
        num, den = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--alpha must look like 3/4, got {text!r}") from None
    if not (0 < num <= den <= 65536) or 2 * num <= den:
        raise ValueError(f"--alpha must be in (1/2, 1] with den <= 65536, got {text}")
    return num, den


def spikingir(depth: int, width: int, T: int, mprn: tuple[int, int] | None = (3, 4), recycle: bool = True,
              seed: int = 0) -> QGraph:
    nk = {"mprn": mprn}
    specs = body(depth, width, nk)
    specs += [ConvSpec("conv_last", specs[-1].name, width, 1), NeuronSpec(LAST, "conv_last", **nk),
              ConvSpec(MAPPER, LAST, 1, 1, k=1), IntegratorSpec("readout", MAPPER)]
    terms = [Term("readout", "membrane")] + ([Term(LAST, "membrane", via=MAPPER)] if recycle else [])
    g = QGraph(specs, T, "direct", terms, residual=True, seed=seed)
    # The last layer carries the signed noise shifted by an offset of 0.5 (in [0, 1] units) the mapper removes.
    g.weight["conv_last"].data.mul_(0.1)
    g.bias["conv_last"].data.fill_(0.5)
    g.weight[MAPPER].data.fill_(1.0)
    g.bias[MAPPER].data.fill_(-0.5)
    return g


def setup(a):
    mprn = None if a.no_mprn else parse_alpha(a.alpha)
    g = spikingir(a.depth, a.width, a.T, mprn, not a.no_recycle, a.seed)
    phases = [
        common.Phase("ann", common.ann_mse_loss, a.ann_minutes, a.ann_iters, a.lr, a.ann_batch, a.patch),
        common.Phase("finetune", common.mse_loss, a.minutes, a.iters, a.snn_lr, a.batch, a.patch,
                     before=common.balance(a.quantile)),
    ]
    parts = [f"SpikingIR DnCNN {a.depth}x{a.width}, T={a.T}, converted (threshold balancing q={a.quantile or 0.999})",
             "1x1 pixel mapper", "membrane recycling" if not a.no_recycle else "no recycling",
             f"MPRN alpha={a.alpha}" if mprn else "no MPRN", "surrogate fine-tuning"]
    return g, phases, ", ".join(parts)
