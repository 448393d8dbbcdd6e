"""The edgespike accelerator in Amaranth HDL 0.5: event-driven, adders-only, bit-exact with ``reference.run``.

This package holds gateware only (see ``docs/RTL.md``); it imports nothing from the host side
(``edgespike.fpga``, ``edgespike.firmware``, the runtime or the reference: ``tests/test_rtl_layout.py`` checks it):

* :mod:`~edgespike.rtl.params` -- :class:`Plan`, the record the shared engine is built from (made on the host by
  :func:`edgespike.fpga.params.plan`), and the layout of its weight image.
* :mod:`~edgespike.rtl.uwe`, :mod:`~edgespike.rtl.uwd` -- VTSNN's SAR encoder and weighted decoder.
* :mod:`~edgespike.rtl.engine` -- the shared layer engine (Conv/ConvTranspose + Neuron/Integrator, scatter and
  fire passes, run-time loadable weights).
* :mod:`~edgespike.rtl.sequencer` -- a tile through the whole model, layer-major; :mod:`~edgespike.rtl.top` --
  byte protocol.
* :mod:`~edgespike.rtl.bitplane`, :mod:`~edgespike.rtl.pipeline` -- the layer pipeline of bit-plane engines.
* :mod:`~edgespike.rtl.protocol`, :mod:`~edgespike.rtl.link`, :mod:`~edgespike.rtl.uart`,
  :mod:`~edgespike.rtl.board`, :mod:`~edgespike.rtl.pll` -- the framed serial link and the board tops.

Host code sits in :mod:`edgespike.fpga`: the planner (:mod:`~edgespike.fpga.params`,
:mod:`~edgespike.fpga.pipeline`), the cycle model (:mod:`~edgespike.fpga.cycles`), simulation drivers
(:mod:`~edgespike.fpga.tilesim`, :mod:`~edgespike.fpga.sim`), yosys (:mod:`~edgespike.fpga.synth`), builds and
the ``edgespike rtl`` command (:mod:`~edgespike.fpga.cli`).

Importing this package does not import Amaranth; the submodules do (the ``[hw]`` extra), except
:mod:`~edgespike.rtl.protocol` (standard library only: the firmware imports it on a Pi).
"""
