"""The methods of the founding papers as trainable, exportable integer SNNs (issue 8); see docs/METHODS.md.

Modules: :mod:`.graph` (the shared quantisation-aware graph), :mod:`.vtsnn`, :mod:`.spikingir`, :mod:`.spikerir`,
:mod:`.coding` (LIF and rate-coding baselines), :mod:`.cae` (strided CAE), :mod:`.dncnn` (the DnCNN-shaped body they
share), :mod:`.common` (patches with Gaussian or speckle noise, the budgeted training loop, checkpoints, export).
``manifest.toml`` lists the proposed runs for ``tools/compare.py``.
"""
