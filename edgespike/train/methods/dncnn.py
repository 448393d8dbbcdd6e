"""The DnCNN-shaped spiking body several methods share: conv(1->C)+neuron, (D-2) x [conv(C->C)+neuron],
conv(C->1) into an Integrator (the SPIDEN membrane read-out), residual output (the net predicts the noise)."""

from __future__ import annotations

from edgespike.train.methods.graph import ConvSpec, IntegratorSpec, NeuronSpec, QGraph, Term


def body(depth: int, width: int, neuron: dict | None = None) -> list:
    """Specs of the hidden layers ``conv1, n1, ..., conv{D-1}, n{D-1}``; ``neuron`` overrides NeuronSpec fields."""
    if depth < 2:
        raise ValueError("depth must be >= 2")
    specs, src = [], "input"
    for i in range(1, depth):
        specs.append(ConvSpec(f"conv{i}", src, 1 if i == 1 else width, width))
        specs.append(NeuronSpec(f"n{i}", f"conv{i}", **(neuron or {})))
        src = f"n{i}"
    return specs


def dncnn(depth: int, width: int, T: int, encoder: str = "direct", neuron: dict | None = None,
          seed: int = 0) -> QGraph:
    """The spiking DnCNN with a membrane read-out (SPIDEN's DnSNN when neurons are IF with learned thresholds)."""
    specs = body(depth, width, neuron)
    specs += [ConvSpec(f"conv{depth}", specs[-1].name, width, 1), IntegratorSpec("readout", f"conv{depth}")]
    g = QGraph(specs, T, encoder, [Term("readout", "membrane")], residual=True, seed=seed)
    g.weight[f"conv{depth}"].data.mul_(0.1)  # start near "no correction"
    return g
