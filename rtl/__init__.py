"""The edgespike accelerator in Amaranth HDL 0.5: event-driven, adders-only, bit-exact with ``reference.run``.

Modules (see ``docs/RTL.md``):

* :mod:`~edgespike.rtl.params` -- :func:`plan`: model -> parameters, and the fit check (:class:`FitError`).
* :mod:`~edgespike.rtl.uwe`, :mod:`~edgespike.rtl.uwd` -- VTSNN's SAR encoder and weighted decoder.
* :mod:`~edgespike.rtl.engine` -- the shared layer engine (Conv/ConvTranspose + Neuron/Integrator, scatter and
  fire passes, run-time loadable weights).
* :mod:`~edgespike.rtl.sequencer` -- a tile through the whole model, layer-major; :mod:`~edgespike.rtl.top` --
  byte protocol.
* :mod:`~edgespike.rtl.cycles` -- exact cycle model and frame tiling; :mod:`~edgespike.rtl.sim` -- simulation.
* :mod:`~edgespike.rtl.synth` -- yosys cell counts; :mod:`~edgespike.rtl.cli` -- ``edgespike rtl``.

Importing this package does not import Amaranth; the submodules do (the ``[hw]`` extra).
"""
