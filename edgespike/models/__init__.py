"""Models shipped inside the package (the embedded defaults) and the bundled sample frame."""

from __future__ import annotations

from pathlib import Path

from edgespike.errors import UserError


class ModelFileNotFound(UserError, FileNotFoundError):
    """A ``--model`` names no file: a :class:`UserError` for the CLI, a ``FileNotFoundError`` for library users."""


HERE = Path(__file__).parent
DEFAULTS = {"s25": "default_s25.esnn", "blind": "default_blind.esnn", "s5": "default_s5.esnn", "s8": "default_s8.esnn",
            "s11": "default_s11.esnn", "s15": "default_s15.esnn", "s20": "default_s20.esnn", "s50": "default_s50.esnn",
            "blind-net": "blind_net.esnn", "s25-half": "half_s25.esnn", "if-s25": "if_s25.esnn",
            "if-blind": "if_blind.esnn"}
"""The shipped models by name. All but the ``if-`` ones are bit-plane networks (T = 8 spikes carry 256 levels):
``s25``, ``s8``, ``s11``, ``s15``, ``s20`` and ``s50`` are trained for Gaussian noise of one sigma each (``s25``, the
default, is a full-resolution dilated 7 x 64 network, the others half-resolution 8 x 64) and ``s5`` for sigma 2..8
(a full-resolution 8 x 32 network: at low noise fine detail is what counts); ``blind`` is the model
set of those seven and ``blind-net`` (:mod:`edgespike.modelset`), which picks one per frame by the frame's estimated
noise level;
``blind-net`` is one network trained for sigma 0..55 (the shipped ``blind`` until 2026-12-06). ``s25-half`` is the
half-resolution 8 x 64 sigma-25 network (the shipped ``s25`` until 2026-12-07; the same bytes, so the ECP5-85F's
closed plan, keyed on the file's SHA-256, still holds for it: it is that part's hardware default). ``if-s25`` and
``if-blind`` are the rate-coded IF networks (T = 8 spike counts) of ``s25-half``'s shape, the defaults until
2026-12-05."""

ACCELERATOR_MODEL = "if-s25"
"""What a board with the shared engine (rate-coded IF layers, the accelerator before the layer pipeline) runs
without ``--model`` (``run --backend fpga``): a layer-pipeline board names its own model by fingerprint instead, and
the other hardware commands' defaults are in :mod:`edgespike.fpga.defaults` (the bit-plane model that fits the part;
``if-s25`` where a command simulates the shared engine)."""

MODEL_HELP = ("model file, or a shipped model by name: s25 (Gaussian sigma 25), blind (any sigma 0..55: the s5, s8, "
              "s11, s15, s20, s25, s50 and blind-net networks, one chosen per frame by its estimated noise), s5 "
              "(sigma 2..8, full resolution), s8, s11, s15, s20, s50, blind-net (one network for sigma 0..55), "
              "s25-half (the half-resolution sigma-25 network: the ECP5-85F's hardware default), if-s25 "
              "or if-blind (the rate-coded IF models)")
"""The ``--model`` help shared by every command (each adds its default)."""


def default_path(kind: str = "s25") -> Path:
    """Path of a shipped model by its name in :data:`DEFAULTS`."""
    if kind not in DEFAULTS:
        raise UserError(f"no shipped model {kind!r}; choose one of {', '.join(DEFAULTS)}")
    path = HERE / DEFAULTS[kind]
    if not path.exists():
        raise UserError(f"the shipped model {path.name} is missing from this installation; pass --model FILE")
    return path


def shipped_for(noise: str | None, sigma: float | None = None) -> str:
    """The shipped model for inputs with ``noise`` (``"gaussian"``, ...) of level ``sigma``; ``None``: unknown.

    ``s25`` only for Gaussian noise of sigma 25, what it was trained for: at other levels it is far worse than
    ``blind`` (5-6 dB at sigma 5 and 50, the table in docs/MODELS.md), and a camera's or an image's noise is not
    known in advance.
    """
    return "s25" if noise == "gaussian" and sigma == 25 else "blind"


def resolve(model: str | Path | None) -> Path:
    """The file a ``--model`` argument names: a shipped model's name (``s25``, ``blind``), a path, or ``None`` for
    the shipped sigma-25 model. Raises :class:`ModelFileNotFound` for a missing file."""
    if model is None or str(model) in DEFAULTS:
        return default_path("s25" if model is None else str(model))
    path = Path(model)
    if not path.is_file():
        raise ModelFileNotFound(f"model file {path} not found (a file, or a shipped model: {', '.join(DEFAULTS)})")
    return path


def sample_path() -> Path:
    """The bundled sample frame (256x256 grayscale PNG)."""
    return HERE / "sample.png"


def label(path: str | Path, metadata: dict | None = None) -> str:
    """How a summary names the model that ran: its file, and its name.

    Parameters
    ----------
    path
        The model file (as :func:`resolve` returned it).
    metadata
        The model's metadata; its ``"name"`` is shown when present.

    Returns
    -------
    str
        e.g. ``".../default_blind.esnn (shipped 'blind', name default_blind)"`` or ``"my.esnn (name dncnn-17)"``;
        the commands choose a shipped model by themselves (``blind`` for cameras and images), so the summary must
        say which one ran.
    """
    path = Path(path)
    shipped = path.parent.resolve() == HERE.resolve()
    parts = [f"shipped {k!r}" for k, v in DEFAULTS.items() if shipped and path.name == v]
    name = metadata.get("name") if isinstance(metadata, dict) else None
    parts.append(f"name {name}" if name else "no name in its metadata")
    return f"{path} ({', '.join(parts)})"
