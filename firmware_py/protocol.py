"""The framed serial link's constants, CRC and frames, as the firmware uses them.

The definition is :mod:`edgespike.rtl.protocol` (standard library only, beside the gateware that implements it:
the gateware imports nothing from the host side); this module re-exports all of it, so the firmware and its users
keep writing ``from edgespike.firmware import protocol as P``.
"""

from edgespike.rtl.protocol import *  # noqa: F403
from edgespike.rtl.protocol import __all__  # noqa: F401
