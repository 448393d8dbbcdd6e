"""Which shipped model a hardware command runs when none is given: the one that fits the target, said aloud.

The ECP5-85F (ULX3S) runs ``s25-half``, the half-resolution 8 x 64 bit-plane network (T = 8) that was the default
``s25`` until 2026-12-07, on the layer pipeline (:mod:`edgespike.rtl.pipeline`), held in vertical stripes
(docs/RTL.md, "Measured"). Today's ``s25`` (7 x 64 at full resolution, dilated) fits that part too, but at over
three times the synaptic operations per pixel it plans at 5.45 s per 640x480 frame against s25-half's 0.93 s,
and s25-half's plan is the one routed at 75 MHz (:mod:`edgespike.fpga.closure`).
The iCE40UP5K (iCEBreaker) and the ECP5-25F (OrangeCrab) hold the small bit-plane model
``small_bitplane_3x4_s25.esnn`` (3 layers of 4 channels, sigma 25, docs/MODELS.md) on the layer pipeline.
The rate-coded ``if-s25`` runs on the shared engine (:mod:`edgespike.rtl.sequencer`); no shipped IF model fits the
iCE40UP5K or the ECP5-25F. ``edgespike fpga serve-sim`` and the ``fpga`` board backend talk to either: a pipeline
board behind the framed link (:mod:`edgespike.fpga.pipelink`) takes regions of exactly its built size (at most
255 x 255), so the default plans' long stripes still get the raw UART top (docs/HARDWARE.md).
"""

from __future__ import annotations

from pathlib import Path

from edgespike.errors import UserError

SMALL_MODEL = "small_bitplane_3x4_s25.esnn"
"""The small shipped bit-plane model (in ``edgespike/models``): what fits the iCE40UP5K's layer pipeline."""


def small_model_path() -> str:
    """Path of :data:`SMALL_MODEL` in the installed package."""
    import edgespike.models

    return str(Path(edgespike.models.__file__).parent / SMALL_MODEL)


# fit-check device -> (shipped model, why)
PIPELINE_DEFAULT = {
    "ecp5-85f": ("s25-half", "the half-resolution sigma-25 bit-plane model; the ECP5-85F holds its layer pipeline "
                 "in stripes at about 1 frame/s (the full-resolution s25 fits too, at about 5.4 s per frame)"),
    "up5k": (SMALL_MODEL, "the small bit-plane model, 3 layers x 4 channels, sigma 25: the one whose layer "
             "pipeline fits the iCE40UP5K; s25 needs far more block RAM and logic"),
    "ecp5-25f": (SMALL_MODEL, "the small bit-plane model, 3 layers x 4 channels, sigma 25: s25's weights alone "
                 "need more block RAM than the ECP5-25F has"),
}
ENGINE_DEFAULT = {
    "ecp5-85f": ("if-s25", "the shared engine runs rate-coded IF layers; the ECP5-85F holds if-s25 at 64x64 tiles"),
}
BOARD_DEVICE = {"icebreaker": "up5k", "ulx3s-85f": "ecp5-85f", "orangecrab": "ecp5-25f"}
DEVICE_NAME = {"up5k": "iCE40UP5K", "ecp5-85f": "ECP5-85F", "ecp5-25f": "ECP5-25F"}


def default_model(device: str, engine: str = "pipeline") -> tuple[str, str]:
    """The shipped model for ``device`` (a fit-check key) on ``engine`` (``pipeline`` or ``shared``), and a line
    saying why; :class:`UserError` when no shipped model fits that device.

    The model is a shipped model's name (``s25-half``) or, for the small model, the path of its file."""
    table = PIPELINE_DEFAULT if engine == "pipeline" else ENGINE_DEFAULT
    if device not in table:
        fits = ", ".join(DEVICE_NAME.get(d, d) for d in table)
        raise UserError(f"no shipped model fits the {DEVICE_NAME.get(device, device)} "
                        f"({'layer pipeline' if engine == 'pipeline' else 'shared engine'}: the shipped models fit "
                        f"the {fits}); give --model, a smaller model ("
                        + ("bit-plane, e.g. edgespike.testing.bitplane_dncnn(depth=3, width=4, T=8, down=True))"
                           if engine == "pipeline" else "IF, e.g. edgespike.fpga.examples.chain_model())"))
    name, why = table[device]
    path = small_model_path() if name == SMALL_MODEL else name
    return path, f"model {name} (no --model given: {why})"


def board_default(device: str) -> tuple[str, str]:
    """What ``edgespike fpga build`` builds without ``--model``: the shipped bit-plane model whose layer pipeline
    fits ``device`` (``s25-half`` on the ECP5-85F, the small model on the iCE40UP5K and ECP5-25F), and the line saying
    so."""
    return default_model(device, engine="pipeline")
