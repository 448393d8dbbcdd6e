"""Models shipped inside the package (the embedded defaults) and the bundled sample frame."""

from __future__ import annotations

from pathlib import Path

from edgespike.errors import UserError

HERE = Path(__file__).parent
DEFAULTS = {"s25": "default_s25.esnn", "blind": "default_blind.esnn"}


def default_path(kind: str = "s25") -> Path:
    """Path of a shipped model: ``"s25"`` (Gaussian sigma 25) or ``"blind"`` (sigma 0..55)."""
    if kind not in DEFAULTS:
        raise UserError(f"no shipped model {kind!r}; choose one of {', '.join(DEFAULTS)}")
    path = HERE / DEFAULTS[kind]
    if not path.exists():
        raise UserError(f"the shipped model {path.name} is missing from this installation; pass --model FILE")
    return path


def sample_path() -> Path:
    """The bundled sample frame (256x256 grayscale PNG)."""
    return HERE / "sample.png"
