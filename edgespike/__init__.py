"""edgespike: integer spiking neural networks for image restoration at the edge."""

from edgespike.fileformat import ModelFileError
from edgespike.frames import FrameError
from edgespike.model import ModelError
from edgespike.parallel import note_import as _note_import

# Idle OpenMP workers (the compiled kernel's, and torch's if it loads later) sleep instead of spinning; libgomp
# reads this once, when it loads, so it is set as early as possible (edgespike.parallel explains why).
_note_import()

__version__ = "0.1.0"
__all__ = ["ModelError", "ModelFileError", "FrameError", "__version__", "load"]


def load(path=None, **kwargs):
    """The fast CPU runtime for a model file: ``edgespike.load(path).denoise(frame) -> (frame, stats)``.

    ``path`` may name a shipped model (``"s25"``, ``"blind"``); ``None`` loads the shipped sigma-25 model. A model
    set (the shipped ``blind``) gives a :class:`edgespike.modelset.SetRuntime`: the same ``denoise``, one member per
    frame, and ``stats.member`` / ``stats.sigma_estimate`` say which and why.
    Imported lazily so ``import edgespike`` stays light. See :class:`edgespike.runtime.Runtime`.
    """
    from edgespike.runtime import load as _load

    return _load(path, **kwargs)
