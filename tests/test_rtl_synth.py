"""Yosys synthesis of the shared layer engine for iCE40 and ECP5: no multiplier cells (the engine is adders-only),
and the single-port membrane RAM lands in iCE40 SPRAM. Synthesis only: no place-and-route, no bitstream."""

from __future__ import annotations

import numpy as np
import pytest

from edgespike.fpga.params import plan
from edgespike.fpga.synth import MULTIPLIER_CELLS, synth_stats
from edgespike.model import Conv, ConvTranspose, Decoder, Encoder, Model, Neuron, ReadoutTerm
from edgespike.rtl.engine import Engine

pytestmark = pytest.mark.hw


def feature_rich_engine() -> Engine:
    """Every datapath option at once: the bit-serial direct first layer (LIF soft), a stride-2 Conv (IF hard),
    a ConvTranspose into a one-channel Neuron read out by its spike count (the packed narrow layer), two lanes;
    a 128x128 tile so that the membranes (16384 words) want SPRAM."""
    rng = np.random.default_rng(0)
    nodes = [
        Conv("c0", "input", rng.integers(-20, 21, size=(2, 1, 3, 3)).astype(np.int8), np.array([5, -7], np.int32)),
        Neuron("n0", "c0", np.array([300, 900], np.int32), reset="soft", leak_shift=2, v_init="half"),
        Conv("c1", "n0", rng.integers(-20, 21, size=(2, 2, 3, 3)).astype(np.int8), np.zeros(2, np.int32), stride=2),
        Neuron("n1", "c1", np.array([17, 9], np.int32), reset="hard"),
        ConvTranspose("c2", "n1", rng.integers(-20, 21, size=(1, 2, 4, 4)).astype(np.int8), np.zeros(1, np.int32),
                      padding=1),
        Neuron("n2", "c2", np.array([20], np.int32)),
    ]
    dec = Decoder([ReadoutTerm("n2", "count", np.array([-7], np.int32))], shift=1, residual=True)
    model = Model(nodes=nodes, timesteps=4, encoder=Encoder("direct"), decoder=dec, membrane_bits=32)
    return Engine(plan(model, device="ecp5-85f", tile=(128, 128), lanes=2))


@pytest.mark.parametrize("family", ["ice40", "ecp5"])
def test_engine_synthesises_without_multipliers(family):
    cells = synth_stats(feature_rich_engine(), family, name="engine")
    luts = cells.get("SB_LUT4", 0) + cells.get("LUT4", 0)
    assert cells.get("coarse:$add", 0) + cells.get("coarse:$sub", 0) > 0, f"no coarse netlist parsed: {cells}"
    assert luts > 100, f"implausibly small netlist: {cells}"
    found = {c: n for c, n in cells.items() if c.removeprefix("coarse:") in MULTIPLIER_CELLS}
    assert not found, f"multiplier cells in the layer engine: {found}"
    if family == "ice40":
        assert cells.get("SB_SPRAM256KA", 0) >= 1, f"membranes did not map to SPRAM: {cells}"
    print(family, {k: v for k, v in cells.items() if not k.startswith("coarse:")})


@pytest.mark.parametrize("family", ["ice40", "ecp5"])
def test_layer_pipeline_synthesises_without_multipliers(family):
    """The bit-plane layer pipeline (the shipped shape, width 4: 5x5 stride 2, 3x3, 6x6 transposed read-out and
    the decoder's constant product) maps to LUTs, carries and block RAM only."""
    from edgespike.fpga.pipeline import layer_specs, residual_depth
    from edgespike.rtl.pipeline import LayerPipeline
    from edgespike.testing import bitplane_dncnn

    model = bitplane_dncnn(depth=3, width=4, T=8, down=True, seed=3)
    specs = layer_specs(model)
    sizes = [(16, 32)]
    for spec in specs:
        sizes.append(spec.out_size(*sizes[-1]))
    folds = [(4, 1, 1), (4, 2, 2), (1, 4, 1)]
    term = model.decoder.terms[0]
    pipe = LayerPipeline([s.gateware(*size, *f) for s, size, f in zip(specs, sizes, folds, strict=False)],
                         int(term.multiplier[0]), model.decoder.shift, model.decoder.residual,
                         residual_depth(specs, 16, 32))
    cells = synth_stats(pipe, family, name="pipeline")
    assert cells.get("coarse:$add", 0) + cells.get("coarse:$sub", 0) > 0, f"no coarse netlist parsed: {cells}"
    assert cells.get("SB_LUT4", 0) + cells.get("LUT4", 0) > 500, f"implausibly small netlist: {cells}"
    found = {c: n for c, n in cells.items() if c.removeprefix("coarse:") in MULTIPLIER_CELLS}
    assert not found, f"multiplier cells in the layer pipeline: {found}"
    print(family, {k: v for k, v in cells.items() if not k.startswith("coarse:")})


def test_fanout_copies_of_a_register_survive_synthesis():
    """Registers named ``*fanout_copy*`` (``rtl.bitplane``'s ROM address, ``rtl.uwd``'s membrane controls) stay
    separate flip-flops after yosys (``fpga.synth.AFTER_READ``): without the keep, opt_merge makes the four copies
    of the 6-bit address below one register driving every load again."""
    from amaranth.hdl import Module, Signal
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    class Copies(wiring.Component):
        def __init__(self):
            super().__init__({"addr": In(6), "out": Out(4)})

        def elaborate(self, platform):
            m = Module()
            for k in range(4):
                copy = Signal(6, name=f"addr_fanout_copy{k}")
                m.d.sync += copy.eq(self.addr)
                m.d.comb += self.out[k].eq((copy ^ k).xor())
            return m

    cells = synth_stats(Copies(), "ecp5", name="copies")
    assert cells.get("TRELLIS_FF") == 4 * 6, cells
