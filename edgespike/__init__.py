"""edgespike: integer spiking neural networks for image restoration at the edge."""

from edgespike.fileformat import ModelFileError
from edgespike.frames import FrameError
from edgespike.model import ModelError

__version__ = "0.1.0"
__all__ = ["ModelError", "ModelFileError", "FrameError", "__version__"]
