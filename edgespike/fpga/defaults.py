"""Which shipped model a hardware command runs when none is given: the one that fits the target, said aloud.

The default model ``s25`` is a bit-plane network (half-resolution 8 x 64, T = 8); it runs on the layer pipeline
(:mod:`edgespike.rtl.pipeline`), which the ECP5-85F (ULX3S) holds in vertical stripes (docs/RTL.md, "Measured").
The rate-coded ``if-s25`` runs on the shared engine (:mod:`edgespike.rtl.sequencer`), which is what
``edgespike fpga build`` and the ``fpga`` board backend still build and talk to (the pipeline has no framed link
yet). No shipped model fits the iCE40UP5K or the ECP5-25F: both need ``--model``.
"""

from __future__ import annotations

from edgespike.errors import UserError

# fit-check device -> (shipped model, why)
PIPELINE_DEFAULT = {
    "ecp5-85f": ("s25", "the default bit-plane model; the ECP5-85F holds its layer pipeline in stripes"),
}
ENGINE_DEFAULT = {
    "ecp5-85f": ("if-s25", "the shared engine runs rate-coded IF layers; the ECP5-85F holds if-s25 at 64x64 tiles"),
}
BOARD_DEVICE = {"icebreaker": "up5k", "ulx3s-85f": "ecp5-85f", "orangecrab": "ecp5-25f"}
DEVICE_NAME = {"up5k": "iCE40UP5K", "ecp5-85f": "ECP5-85F", "ecp5-25f": "ECP5-25F"}


def default_model(device: str, engine: str = "pipeline") -> tuple[str, str]:
    """The shipped model for ``device`` (a fit-check key) on ``engine`` (``pipeline`` or ``shared``), and a line
    saying why; :class:`UserError` when no shipped model fits that device."""
    table = PIPELINE_DEFAULT if engine == "pipeline" else ENGINE_DEFAULT
    if device not in table:
        fits = ", ".join(DEVICE_NAME.get(d, d) for d in table)
        raise UserError(f"no shipped model fits the {DEVICE_NAME.get(device, device)} "
                        f"({'layer pipeline' if engine == 'pipeline' else 'shared engine'}: the shipped models fit "
                        f"the {fits}); give --model, a smaller model ("
                        + ("bit-plane, e.g. edgespike.testing.bitplane_dncnn(depth=3, width=4, T=8, down=True))"
                           if engine == "pipeline" else "IF, e.g. edgespike.fpga.examples.chain_model())"))
    name, why = table[device]
    return name, f"model {name} (no --model given: {why})"
