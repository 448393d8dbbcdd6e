"""Small random models that the accelerator runs, for tests and demos.

Thresholds are set from the weights so that neurons fire at a moderate rate for ordinary images (the point of
a test is to exercise spikes, resets and leaks, not to denoise).
"""

from __future__ import annotations

import numpy as np

from edgespike.model import Conv, ConvTranspose, Decoder, Encoder, Integrator, Model, Neuron, ReadoutTerm


def chain_model(seed: int = 0, channels: int = 4, layers: int = 3, timesteps: int = 3, encoder: str = "direct",
                kernel: int = 3, neurons: tuple[tuple[str, int], ...] = (("soft", 0), ("hard", 2)),
                readout: str = "membrane", v_init: str = "zero") -> Model:
    """A Conv -> Neuron chain ending in a one-channel Conv -> Integrator (or -> Neuron for count/uwd read-out).

    ``neurons`` cycles over the hidden layers as ``(reset, leak_shift)`` pairs. ``readout`` is the decoder
    quantity: ``membrane`` of a final Integrator, or ``count`` / ``uwd`` of a final one-channel Neuron.
    """
    rng = np.random.default_rng(seed)
    nodes = []
    prev, cin = "input", 1
    for i in range(layers):
        last = i == layers - 1
        cout = 1 if last else channels
        k = kernel
        top = 255 if (encoder == "direct" and i == 0) else 1
        w = rng.integers(-12, 13, size=(cout, cin, k, k)).astype(np.int8)
        scale = max(2, int(np.abs(w).sum(axis=(1, 2, 3)).mean()) * top // (3 if i == 0 else 6))
        bias = rng.integers(-scale // 8, scale // 8 + 1, size=cout).astype(np.int32)
        nodes.append(Conv(f"conv{i}", prev, w, bias))
        if last and readout == "membrane":
            nodes.append(Integrator(f"out{i}", f"conv{i}"))
        else:
            reset, leak = neurons[i % len(neurons)]
            theta = rng.integers(max(1, scale // 2), scale + 2, size=cout).astype(np.int32)
            nodes.append(Neuron(f"lif{i}", f"conv{i}", theta, reset=reset, leak_shift=leak, v_init=v_init))
        prev, cin = nodes[-1].name, cout
    if readout == "membrane":
        term = ReadoutTerm(prev, "membrane", np.array([int(rng.integers(1, 6))], np.int32))
        dec = Decoder([term], shift=3, residual=True)
    elif readout == "count":
        dec = Decoder([ReadoutTerm(prev, "count", np.array([-7], np.int32))], shift=1, residual=True)
    else:
        dec = Decoder([ReadoutTerm(prev, "uwd", np.array([3], np.int32))], shift=2, residual=False)
    return Model(nodes=nodes, timesteps=timesteps, encoder=Encoder(encoder), decoder=dec, membrane_bits=32)


def down_model(seed: int = 0, width: int = 4, depth: int = 4, timesteps: int = 2) -> Model:
    """The default model's shape with random weights: a half-resolution body.

    ``conv1`` Conv 5x5 stride 2 (1 -> width) + IF on the direct-coded pixels, ``depth - 2`` x [Conv 3x3 + IF soft
    reset, v0 = theta/2] at half resolution, ``conv{depth}`` ConvTranspose 6x6 stride 2 padding 2 (width -> 1)
    into an Integrator, residual decoder: what ``QSpikingDnCNN(down=True).to_model()`` exports, without torch.
    """
    rng = np.random.default_rng(seed)
    nodes = []
    prev, cin = "input", 1
    for i in range(depth):
        name = f"conv{i + 1}"
        if i == depth - 1:
            w = rng.integers(-40, 41, size=(1, cin, 6, 6)).astype(np.int8)
            nodes.append(ConvTranspose(name, prev, w, rng.integers(-50, 51, size=1).astype(np.int32), padding=2))
            nodes.append(Integrator("readout", name))
            break
        k = 5 if i == 0 else 3
        w = rng.integers(-60, 61, size=(width, cin, k, k)).astype(np.int8)
        top = 255 if i == 0 else 1
        scale = max(2, int(np.abs(w.astype(np.int64)).sum(axis=(1, 2, 3)).mean()) * top // (4 if i == 0 else 6))
        bias = rng.integers(-scale // 8, scale // 8 + 1, size=width).astype(np.int32)
        nodes.append(Conv(name, prev, w, bias, stride=2 if i == 0 else 1))
        theta = rng.integers(max(1, scale // 2), scale + 2, size=width).astype(np.int32)
        nodes.append(Neuron(f"if{i + 1}", name, theta, reset="soft", leak_shift=0, v_init="half"))
        prev, cin = f"if{i + 1}", width
    dec = Decoder([ReadoutTerm("readout", "membrane", np.array([int(rng.integers(1, 6))], np.int32))], shift=4,
                  residual=True)
    return Model(nodes=nodes, timesteps=timesteps, encoder=Encoder("direct"), decoder=dec, membrane_bits=32,
                 metadata={"name": "down-random", "architecture": "down"})


def demo_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth gradient with a square and noise: varied bit planes, edges for the kernels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = 40 + 150 * (xx + yy) / max(1, h + w - 2)
    img[h // 4:3 * h // 4, w // 4:3 * w // 4] += 50
    img += rng.normal(0, 20, size=(h, w))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def pipeline_model(seed: int = 3) -> Model:
    """A small bit-plane network of the shipped shape (3 layers x 4 channels, half-resolution body) whose layer
    pipeline compiles in seconds: what the compiled simulators' tests build."""
    from edgespike.testing import bitplane_dncnn

    model = bitplane_dncnn(depth=3, width=4, T=8, down=True, seed=seed)
    model.decoder.shift = 15  # the random read-out scale would saturate most pixels
    return model


def with_other_weights(model: Model) -> Model:
    """``model`` with every conv's weights reversed along the output channels: the same gateware but for the
    memories' contents (the read-out's scale, wired into the decoder, is kept)."""
    import copy

    other = copy.deepcopy(model)
    for node in other.nodes:
        if getattr(node, "weight", None) is not None:
            node.weight = np.ascontiguousarray(node.weight[::-1])
    return other
