"""Interchange with other SNN frameworks through NIR (the Neuromorphic Intermediate Representation).

- :mod:`edgespike.interchange.floatnet`: the float network an imported NIR graph describes, and its float
  simulator (the reference the quantisation error is measured against).
- :mod:`edgespike.interchange.nir_import`: NIR graph -> float network -> integer :class:`~edgespike.model.Model`
  (post-training quantisation with a calibration set, and the error report).
- :mod:`edgespike.interchange.nir_export`: :class:`~edgespike.model.Model` -> NIR graph, carrying what NIR cannot
  say in node metadata so that edgespike -> NIR -> edgespike is the identity.

Conventions and limits are documented in ``docs/INTERCHANGE.md``.
"""

from __future__ import annotations

from edgespike.errors import UserError, need_extra


class InterchangeError(UserError):
    """A graph or model that cannot be carried across: the message is one line naming the node and its path."""


def nir_module():
    """Import PyPI ``nir`` or raise the one-line missing-extra error."""
    try:
        import nir
    except ModuleNotFoundError as exc:
        raise need_extra("nir", "interchange") from exc
    return nir
