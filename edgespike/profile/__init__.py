"""``edgespike profile``: the SNN against its quantised ANN twin, estimated (:mod:`.energy`) and measured
(:mod:`.measure`, :mod:`.sensors`). The ANN twins are built in :mod:`.ann`; :mod:`.sim` gives exact spike counts
fast. See ``docs/PROFILE.md``."""
