"""The accelerator, host side: everything that is not gateware.

* :mod:`.params` -- the shared engine's planner and fit check (:func:`~.params.plan`, :class:`~.params.FitError`);
  :mod:`.pipeline` -- the layer pipeline's layer specs, planner and exact cycle / access model.
* :mod:`.cycles` -- the shared engine's exact cycle model and access counts.
* :mod:`.tilesim` -- tiles through the shared engine in Amaranth's simulator, checked against the reference;
  :mod:`.sim` -- the board behind a TCP socket (``edgespike fpga serve-sim``, ``--backend fpga-sim``).
* :mod:`.synth` -- yosys cell counts; :mod:`.build` -- ``edgespike fpga build``.
* :mod:`.cli` -- ``edgespike rtl``; :mod:`.host` -- the ``fpga`` backend of ``edgespike run``.
* :mod:`.examples` -- small models and images for tests and demonstrations.

The board-side driver itself is :mod:`edgespike.firmware`; the gateware is :mod:`edgespike.rtl`, which imports
nothing from here.
"""
