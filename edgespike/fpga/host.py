"""``edgespike run --backend fpga --port DEVICE[@BAUD]``: frames through a real board over its serial port.

The board must run a bitstream built for the model (``edgespike fpga build --model M``): the firmware checks the
gateware version and the model fingerprint before the first frame and refuses a mismatch with one line. A board
with the shared engine (IF models) takes halo'd tiles; a layer pipeline board (bit-plane models, IDENT
``CAP_PIPELINE``) takes regions of exactly its built size, cut by the firmware with the halo it announces.
"""

from __future__ import annotations

import time

from edgespike.errors import UserError
from edgespike.firmware.protocol import CAP_PIPELINE, DEFAULT_BAUD


def parse_port(port: str) -> tuple[str, int]:
    """``/dev/ttyUSB0@115200`` -> (``/dev/ttyUSB0``, 115200); no ``@``: the build's default baud rate."""
    if "@" in port and not port.startswith(("socket://", "loop://", "rfc2217://")):
        name, _, baud = port.rpartition("@")
        try:
            return name, int(baud)
        except ValueError:
            raise UserError(f"--port {port!r}: the baud rate after '@' must be a number, e.g. /dev/ttyUSB0@500000") \
                from None
    return port, DEFAULT_BAUD


def denoise_frame(acc, frame):
    """One frame through an :class:`edgespike.firmware.Accelerator`: ``(output, stats)`` for the run pipeline; a link
    failure becomes a one-line :class:`UserError` (a wrong image is never returned)."""
    from edgespike.firmware import LinkError

    t0 = time.perf_counter()
    try:
        out, results = acc.denoise(frame)
    except LinkError as exc:
        raise UserError(str(exc)) from None
    # a layer pipeline board counts cycles only (its RESULT's spikes and synaptic ops are 0): no synaptic ops then
    sops = None if acc.pipeline else sum(r.sops for r in results)
    stats = {"synaptic_ops": sops, "seconds": time.perf_counter() - t0,
             "cycles": sum(r.cycles for r in results)}
    return out, stats


# A socket:// port is usually a simulated board (``edgespike fpga serve-sim``), which moves a few hundred bytes
# per second and computes a region or tile in seconds to minutes: a serial board ACKs within milliseconds, the
# simulation only after it has clocked the whole request through its UART. A board that announces its clock still
# gets the RESULT deadline from its announced cost; only a clockless (simulated) one falls back to result_timeout.
SIMULATION_TIMEOUTS = {"ack_timeout": 120.0, "result_timeout": 3600.0}


def timeouts(port: str) -> dict:
    """The :class:`~edgespike.firmware.Accelerator` timeouts for ``port``: longer ones for ``socket://``."""
    return dict(SIMULATION_TIMEOUTS) if port.startswith("socket://") else {}


def shipped_model_of(fingerprint: int) -> str:
    """The shipped model (a file of ``edgespike/models``) whose fingerprint a layer pipeline board reports: its
    weights are built into the bitstream, so without ``--model`` the board says which model it runs."""
    from edgespike.fileformat import load_any
    from edgespike.firmware.accelerator import model_fingerprint
    from edgespike.model import Model
    from edgespike.models import HERE

    for path in sorted(HERE.glob("*.esnn")):
        model = load_any(path)  # a model set (the blind one) is no board's: its members are shipped on their own
        if isinstance(model, Model) and model_fingerprint(model) == fingerprint:
            return str(path)
    raise UserError(f"the board runs a layer pipeline built for model {fingerprint:08x}, which is none of the "
                    "shipped models: give the model file it was built from with --model")


class BoardBackend:
    """A board behind a serial port, driven by :class:`edgespike.firmware.Accelerator`."""

    name = "fpga"

    def __init__(self, model_path: str | None, port: str):
        from edgespike.fileformat import load
        from edgespike.firmware import Accelerator, LinkError
        from edgespike.models import ACCELERATOR_MODEL, resolve

        name, baud = parse_port(port)
        try:
            self.acc = Accelerator(name, baud=baud, **timeouts(name))
            if model_path is None and self.acc.check_versions().capabilities & CAP_PIPELINE:
                model_path = shipped_model_of(self.acc.ident.fingerprint)
            self.model = load(resolve(model_path or ACCELERATOR_MODEL))
            ident = self.acc.check_model(self.model)
        except LinkError as exc:
            raise UserError(str(exc)) from None
        th, tw = ident.tile
        clock = f", {ident.clock_hz / 1e6:g} MHz" if ident.clock_hz else ""
        shape = f"layer pipeline, regions {th}x{tw}" if self.acc.pipeline else f"tile {th}x{tw}"
        self.label = f"fpga ({name} at {baud} baud, {shape}{clock})"

    def denoise(self, frame):
        return denoise_frame(self.acc, frame)

    def close(self) -> None:
        self.acc.close()


def open_backend(model_path: str | None, port: str):
    """The ``fpga`` backend of ``edgespike run`` (see :mod:`edgespike.live.backends`)."""
    return BoardBackend(model_path, port)
