"""Board-side Python (runs on the Raspberry Pi): drives the edgespike accelerator over a framed serial link.

* :mod:`~edgespike.firmware.protocol` -- frames, CRC, types and versions (shared with the gateware's link).
* :mod:`~edgespike.firmware.accelerator` -- :class:`Accelerator`: identify, version and model checks, tiles,
  frames, retries.
* :mod:`~edgespike.firmware.tiling` -- how a frame is cut into halo'd tiles (the gateware simulation cuts the same),
  or into the fixed-size regions of a layer pipeline board.
* :mod:`~edgespike.firmware.spi` -- the SPI link from the Pi (``/dev/spidev0.0``): a serial-port-like transport
  over ``spidev`` and the links' frame times.

Needs numpy and pyserial only (the ``[hw]`` extra brings pyserial; the SPI link needs ``spidev``); no Amaranth.
"""

from edgespike.firmware.accelerator import Accelerator, DeviceMismatch, LinkError
from edgespike.firmware.tiling import TileResult

__all__ = ["Accelerator", "DeviceMismatch", "LinkError", "TileResult"]
