"""The bit-plane layer engine (``edgespike.rtl.bitplane``) in Amaranth's simulator against the reference.

Each layer is fed input codes in raster order and its output pixels are compared, bit for bit, with the layer as
``edgespike.reference`` computes it (bit planes, conv per plane, the reference's bit-plane neuron or ``uwd``
Integrator: :meth:`LayerSpec.compute`); its cycles and its memory reads and writes are compared with the cycle
model (:meth:`LayerSpec.cost`).
"""

from __future__ import annotations

import gc
import warnings

import numpy as np
import pytest
from amaranth.hdl import UnusedElaboratable
from amaranth.sim import Simulator

from edgespike import reference
from edgespike.fpga.examples import demo_image
from edgespike.fpga.pipeline import (
    LayerSpec,
    PipelineError,
    decode,
    frame_accesses,
    layer_specs,
    linebuf_slice,
    memories,
    pipeline_cycles,
    plan_pipeline,
    ram_blocks,
    ring_extra,
    run_codes,
    stripe_count,
)
from edgespike.fpga.pipesim import build_pipeline, simulate_pipeline
from edgespike.model import BitPlaneNeuron, Conv, ConvTranspose, Decoder, Encoder, Integrator, Model, ReadoutTerm
from edgespike.rtl.bitplane import BitPlaneLayer
from edgespike.rtl.pipeline import LayerPipeline
from edgespike.testing import bitplane_dncnn

pytestmark = pytest.mark.hw


def pack(values, bits: int) -> int:
    word = 0
    for n, v in enumerate(values):
        word |= (int(v) & ((1 << bits) - 1)) << (bits * n)
    return word


def unpack(word: int, bits: int, n: int, signed: bool) -> list[int]:
    out = []
    for i in range(n):
        v = (word >> (bits * i)) & ((1 << bits) - 1)
        out.append(v - (1 << bits) if signed and v >> (bits - 1) else v)
    return out


def simulate_layer(dut: BitPlaneLayer, q: np.ndarray, stall: int = 0, frames: int = 1):
    """Stream ``q`` ``[C_in, H, W]`` through the layer; returns the outputs ``[C_out, H_out, W_out]``, the cycles
    until the last output is taken, and the reads counted from the RAM enables. ``stall``: the output is not
    ready for that many cycles of every ``stall + 1`` (backpressure must not change the result). ``frames``: ``q``
    holds that many frames one below the other (the same raster stream)."""
    c_in, h, w = q.shape
    inputs = [pack(q[:, y, x], dut.T) for y in range(h) for x in range(w)]
    n_out = dut.h_out * dut.w_out * frames
    signed = dut.theta is None
    obits = dut.T if not signed else dut.vbits
    result = {}

    async def tb(ctx):
        outs, i, cycles, taken = [], 0, 0, []
        reads = {"linebuf": 0, "weights": 0, "params": 0}
        writes = {"linebuf": 0}
        while len(outs) < n_out:
            ready = 1 if not stall else int(cycles % (stall + 1) == stall)
            ctx.set(dut.o.ready, ready)
            if i < len(inputs):
                ctx.set(dut.i.valid, 1)
                ctx.set(dut.i.payload.as_value(), inputs[i])
            else:
                ctx.set(dut.i.valid, 0)
            _, _, iready, ovalid, opay, lb, wr, pr, lw = await ctx.tick().sample(
                dut.i.ready, dut.o.valid, dut.o.payload.as_value(), dut.lb_read, dut.w_read, dut.p_read, dut.lb_write)
            cycles += 1
            writes["linebuf"] += lw
            reads["linebuf"] += lb
            reads["weights"] += wr
            reads["params"] += pr
            if iready and i < len(inputs):
                i += 1
                taken.append(cycles - 1)
            if ovalid and ready:
                outs.append(unpack(opay, obits, dut.c_out, signed))
        result.update(outs=outs, cycles=cycles, reads=reads, taken=i, writes=writes, times=taken)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    out = np.array(result["outs"], np.int64).T.reshape(dut.c_out, dut.h_out * frames, dut.w_out)
    assert result["taken"] == len(inputs), "the layer did not take its whole input"
    simulate_layer.times = result["times"]  # the cycles its input pixels were taken in
    return out, result["cycles"], result["reads"] | {"writes": result["writes"]}


def layer(weights, theta, bias, T, stride=1, transposed=False, padding=0, conv_bias=None, dilation=1) -> LayerSpec:
    c_out = weights.shape[0]
    b = np.zeros(c_out, np.int32) if conv_bias is None else np.asarray(conv_bias, np.int32)
    conv = (ConvTranspose("c", "input", weights, b, padding=padding) if transposed
            else Conv("c", "input", weights, b, stride=stride, dilation=dilation))
    neuron = (BitPlaneNeuron("n", "c", np.asarray(theta, np.int32), np.asarray(bias, np.int32)) if theta is not None
              else Integrator("n", "c", uwd=True, bias=np.asarray(bias, np.int32)))
    return LayerSpec(conv, neuron, T)


def check_layer(spec: LayerSpec, q: np.ndarray, lanes: int, stall: int = 0, group: int = 1, parts: int = 1,
                rom_words: int = 0, ring: int = 0, lb_slice: int = 0):
    _, h, w = q.shape
    dut = BitPlaneLayer(**spec.gateware(h, w, lanes, group, parts, rom_words, ring, lb_slice))
    out, cycles, reads = simulate_layer(dut, q, stall)
    want = spec.compute(q)
    bad = np.argwhere(out != want)
    assert not len(bad), f"first difference at {tuple(bad[0])}: {out[tuple(bad[0])]} != {want[tuple(bad[0])]}"
    if not stall:
        cost = spec.cost(q, lanes, group, parts, rom_words, ring)
        assert cycles == cost.cycles
        trace: dict = {}
        pipeline_cycles([spec], [q], [(lanes, group, parts, rom_words, ring)], trace)
        assert simulate_layer.times == trace[0], "the input was taken in other cycles than the model's"
        assert reads == cost.reads | {"writes": cost.writes}
    return out


def random_layer(rng, c_in, c_out, k, T, **kw):
    w = rng.integers(-127, 128, (c_out, c_in, k, k)).astype(np.int8)
    # thresholds put the codes across their whole range on inputs of about half scale
    scale = max(1, int(np.abs(w.astype(np.int64)).reshape(c_out, -1).sum(1).max()) * (2**T) // 8 // (2**T - 1))
    theta = rng.integers(max(1, scale // 2), scale + 2, c_out)
    bias = rng.integers(-scale * 4, scale * 4, c_out)
    return w, theta, bias


@pytest.mark.parametrize("c_in,c_out,k,stride,lanes,group,parts,h,w", [
    (1, 4, 5, 2, 4, 1, 1, 6, 8),   # the shipped first layer's shape: 5x5 stride 2 on the pixels' 8 planes
    (4, 4, 3, 1, 2, 1, 1, 5, 6),   # a body layer in two blocks of 2 lanes, one spike per cycle
    (4, 4, 3, 1, 4, 2, 2, 5, 6),   # two input channels per cycle, each pixel in two line-buffer words
    (3, 2, 3, 1, 1, 4, 8, 4, 4),   # channels not a power of two, one lane, all channels per cycle, a word per plane
    (2, 2, 1, 1, 2, 1, 4, 3, 3),   # 1x1
])
def test_conv_layer_equals_reference(c_in, c_out, k, stride, lanes, group, parts, h, w):
    rng = np.random.default_rng(c_in * 100 + k)
    T = 8
    wts, theta, bias = random_layer(rng, c_in, c_out, k, T)
    q = rng.integers(0, 2**T, (c_in, h, w))
    q[:, rng.random((h, w)) < 0.3] = 0  # spike-free words are skipped whole
    out = check_layer(layer(wts, theta, bias, T, stride=stride), q, lanes, group=group, parts=parts)
    assert out.min() == 0 and out.max() > 0, "the test layer should produce both zero and non-zero codes"


@pytest.mark.parametrize("c_in,c_out,k,lanes,group,parts,h,w,ring", [
    (4, 4, 3, 2, 1, 1, 5, 6, 2),   # the fewest pixels beyond k rows: the receiver waits for the compute's pixels
    (4, 4, 3, 4, 2, 2, 5, 6, 5),   # two words per pixel, a few more pixels
    (3, 2, 3, 1, 4, 8, 4, 7, 3),   # a word per plane, rows not a power of two
    (2, 2, 1, 2, 1, 4, 3, 3, 2),   # 1x1: a ring of one row and 2 pixels
])
def test_ring_line_buffer_equals_reference(c_in, c_out, k, lanes, group, parts, h, w, ring):
    """A stride-1 Conv with a ring line buffer of ``k`` rows and ``ring`` pixels (``ring``): the same codes, the
    same reads and writes, and the cycles of the cycle model (the receiver waits for the compute's pixels)."""
    rng = np.random.default_rng(c_in * 10 + k + ring)
    T = 8
    wts, theta, bias = random_layer(rng, c_in, c_out, k, T)
    q = rng.integers(0, 2**T, (c_in, h, w))
    q[:, rng.random((h, w)) < 0.3] = 0
    spec = layer(wts, theta, bias, T)
    out = check_layer(spec, q, lanes, group=group, parts=parts, ring=ring)
    assert out.min() == 0 and out.max() > 0
    check_layer(spec, q, lanes, stall=3, group=group, parts=parts, ring=ring)  # backpressure
    dut = BitPlaneLayer(**spec.gateware(h, w, lanes, group, parts, 0, ring))
    second = q[:, ::-1, ::-1].copy()
    two, _, _ = simulate_layer(dut, np.concatenate([q, second], axis=1), frames=2)
    assert np.array_equal(two[:, :h], spec.compute(q)) and np.array_equal(two[:, h:], spec.compute(second))


@pytest.mark.parametrize("parts,ring,lb_slice", [
    (2, 0, 16),   # whole rows: 4 rows of 8 pixels, 2 words each, in 4 slices of 16 words
    (2, 5, 16),   # a ring of 3 rows of 6 and 5 pixels (46 words): 3 slices, the last of 14 words
    (8, 2, 32),   # a word per plane: a ring of 160 words in 5 slices
])
def test_sliced_line_buffer_equals_reference(parts, ring, lb_slice):
    """The line buffer in slices of ``lb_slice`` words, each read into a register beside its block
    (``RegisteredRAM``, what an ECP5 build gets from ``linebuf_slice``): the same codes, cycles and access counts as
    one memory."""
    rng = np.random.default_rng(parts * 10 + ring)
    T = 8
    wts, theta, bias = random_layer(rng, 4, 4, 3, T)
    q = rng.integers(0, 2**T, (4, 5, 6))
    q[:, rng.random((5, 6)) < 0.3] = 0
    spec = layer(wts, theta, bias, T)
    assert np.array_equal(check_layer(spec, q, 2, parts=parts, ring=ring, lb_slice=lb_slice), spec.compute(q))
    check_layer(spec, q, 2, stall=3, parts=parts, ring=ring, lb_slice=lb_slice)  # backpressure


def test_linebuf_slices_are_one_block_deep():
    """An ECP5 line buffer of 64-bit words is cut where a block's depth ends in the aspect ratio that takes the
    fewest blocks; one that a block's depth holds, or that is logic, is not cut."""
    body = layer_specs(bitplane_dncnn(depth=8, width=64, T=8, down=True))[1]
    # 3 rows of 94 and 38 pixels, 8 words each: 2560 words of 64 bits, 10 DP16KD as 5 slices of 512 x 2 blocks
    assert linebuf_slice(body, 94, 8, 38, "ecp5-85f") == 512
    assert ram_blocks(64, 2560, "ecp5-85f") == 10
    assert linebuf_slice(body, 8, 1, 2, "ecp5-85f") == 0  # 26 words of 512 bits: one block deep


@pytest.mark.parametrize("d,lanes,group,parts,ring,h,w", [
    (2, 2, 1, 1, 0, 7, 9),   # whole rows: a window of 5 rows in 8
    (3, 4, 2, 2, 3, 8, 13),  # a ring of 7 rows and 3 pixels (the least: the padding), two words per pixel
    (4, 2, 2, 2, 0, 5, 4),   # a frame smaller than the 9x9 window: most taps fall outside
    (4, 4, 1, 4, 5, 5, 4),   # the same in a ring, a word per two planes
    (2, 1, 4, 8, 2, 6, 3),   # rows narrower than the window, a word per plane
])
def test_dilated_conv_layer_equals_reference(d, lanes, group, parts, ring, h, w):
    """A dilated 3x3 Conv (taps ``d`` pixels apart, padding ``d``: IRCNN's body layers) on odd-sized frames: the
    reference's codes, the cycle model's cycles, input handshakes, reads and writes, with whole rows (the window's
    ``2 d + 1`` rows rounded up to a power of two) or a ring of those rows; backpressure and a second frame keep
    the result."""
    rng = np.random.default_rng(d * 10 + ring)
    T = 8
    wts, theta, bias = random_layer(rng, 4, 4, 3, T)
    q = rng.integers(0, 2**T, (4, h, w))
    q[:, rng.random((h, w)) < 0.3] = 0
    spec = layer(wts, theta, bias, T, dilation=d)
    assert (spec.span, spec.padding, spec.out_size(h, w)) == (2 * d + 1, d, (h, w))
    out = check_layer(spec, q, lanes, group=group, parts=parts, ring=ring)
    assert out.min() == 0 and out.max() > 0
    check_layer(spec, q, lanes, stall=2, group=group, parts=parts, ring=ring)
    dut = BitPlaneLayer(**spec.gateware(h, w, lanes, group, parts, 0, ring))
    second = q[:, ::-1].copy()
    two, _, _ = simulate_layer(dut, np.concatenate([q, second], axis=1), frames=2)
    assert np.array_equal(two[:, :h], spec.compute(q)) and np.array_equal(two[:, h:], spec.compute(second))


def test_a_dilated_rings_least_pixels_are_its_padding():
    """An output row starts once its last input row is whole while its first window's tap 0 (``padding`` pixels left
    of the row) is still the oldest pixel read: a ring of fewer pixels beyond its rows would wait for itself, and
    the gateware refuses it. The planner's rings (``ring_extra``) are never fewer."""
    rng = np.random.default_rng(4)
    wts, theta, bias = random_layer(rng, 4, 4, 3, 8)
    spec = layer(wts, theta, bias, 8, dilation=3)
    assert spec.ring_least == 3 and layer(wts, theta, bias, 8).ring_least == 2
    with warnings.catch_warnings():  # the refused engine is never elaborated: no UnusedElaboratable when it goes
        warnings.simplefilter("ignore", UnusedElaboratable)
        with pytest.raises(AssertionError, match="padding"):
            BitPlaneLayer(**spec.gateware(8, 13, 2, 1, 1, 0, 2))
        gc.collect()
    assert ring_extra(spec, 13, 1, "ecp5-85f", least=2) >= 3


def test_weight_rom_tail_equals_reference():
    """The last weight words in a ROM of logic (``rom_words``, the planner's answer to a weight RAM just over a
    power of two of words): the same codes, cycles and access counts. 36 words: 32 in block RAM, 4 in the ROM;
    with two blocks of lanes, the second block's taps read the ROM; words wider than ROM_SLICE_BITS decoded in
    slices, and more lanes than LANES_PER_COPY."""
    rng = np.random.default_rng(11)
    T = 8
    wts, theta, bias = random_layer(rng, 4, 4, 3, T)
    q = rng.integers(0, 2**T, (4, 5, 6))
    q[:, rng.random((5, 6)) < 0.3] = 0
    spec = layer(wts, theta, bias, T)
    check_layer(spec, q, lanes=4, rom_words=4)  # 36 words: 32 + 4
    check_layer(spec, q, lanes=2, rom_words=8, parts=2)  # 72 words: 64 + 8, block 1 reads the ROM
    check_layer(spec, q, lanes=4, group=4, rom_words=1)  # 9 words of 128 bits: 8 + 1, the ROM in 4 slices
    # 16 lanes: 9 words of 512 bits, the ROM in 16 slices, and two copies of the membranes' controls
    wts, theta, bias = random_layer(rng, 4, 16, 3, T)
    check_layer(layer(wts, theta, bias, T), q, lanes=16, group=4, rom_words=1)


def test_saturation_negative_and_conv_bias():
    """Codes clip at ``2**T - 1`` and at 0 (negative membranes); the conv's own bias counts ``2**T - 1`` times."""
    rng = np.random.default_rng(5)
    T = 4
    wts = rng.integers(-127, 128, (2, 2, 3, 3)).astype(np.int8)
    q = rng.integers(0, 2**T, (2, 4, 5))
    spec = layer(wts, theta=[3, 5], bias=[4000, -4000], T=T, conv_bias=[7, -3])
    out = check_layer(spec, q, lanes=2)
    assert (out[0] == 2**T - 1).any() and (out[1] == 0).any()


def test_readout_transposed_conv_into_integrator():
    """The shipped read-out's shape: ConvTranspose 6x6 stride 2 padding 2 into a ``uwd`` Integrator (membranes
    out, every output parity class)."""
    rng = np.random.default_rng(7)
    T = 8
    wts = rng.integers(-127, 128, (1, 4, 6, 6)).astype(np.int8)
    q = rng.integers(0, 2**T, (4, 3, 4))
    q[:2, 1] = 0  # some channel groups without spikes
    spec = layer(wts, None, [-321], T, transposed=True, padding=2)
    check_layer(spec, q, lanes=1)
    check_layer(spec, q, lanes=1, group=2, parts=2)
    # a ring line buffer of 3 rows and 2 or 5 pixels: output rows come in pairs on the same input rows
    check_layer(spec, q, lanes=1, group=2, parts=2, ring=2)
    check_layer(spec, q, lanes=1, ring=5, stall=2)


@pytest.mark.parametrize("c_in,group,lanes", [(16, 16, 1), (8, 8, 2), (32, 32, 1)])
def test_wide_adder_trees_are_pipelined_with_the_same_results_and_modelled_cycles(c_in, group, lanes):
    """Groups above 4 channels get register stages inside the accumulator's adder tree (one every two levels:
    the read-out's 16-channel tree in one cycle held the ECP5 pipeline at 59 MHz); each block then drains that
    many cycles longer, as the cycle model counts. The read-out's shape into the Integrator, and a Conv into
    neurons."""
    from edgespike.fpga.pipeline import tree_stages as model_stages
    from edgespike.rtl.uwd import tree_stages

    assert [tree_stages(g) for g in (1, 2, 4, 8, 16, 32, 64)] == [0, 0, 0, 1, 1, 2, 2]
    assert all(model_stages(g) == tree_stages(g) for g in range(1, 130))
    from edgespike.fpga import pipeline
    from edgespike.rtl import bitplane

    assert pipeline.WEIGHT_STAGES == bitplane.WEIGHT_STAGES == 1  # the cycle model counts the gateware's register
    rng = np.random.default_rng(c_in)
    T = 8
    q = rng.integers(0, 2**T, (c_in, 3, 4))
    q[: c_in // 2, 1] = 0
    wts = rng.integers(-127, 128, (1, c_in, 6, 6)).astype(np.int8)
    readout = layer(wts, None, [-321], T, transposed=True, padding=2)
    check_layer(readout, q, lanes=1, group=group, parts=2, ring=4)
    check_layer(readout, q, lanes=1, group=group, stall=2)
    wts, theta, bias = random_layer(rng, c_in, 2, 3, T)
    conv = layer(wts, theta, bias, T)
    out = check_layer(conv, q, lanes=lanes, group=group, parts=2)
    assert out.max() > 0
    narrow = spec_cycles(conv, q, lanes, 1) - spec_cycles(conv, q, lanes, group)
    assert narrow > 0, "a wide group should still save cycles over one channel per add"


def spec_cycles(spec, q, lanes, group):
    return spec.cost(q, lanes, group).cycles


def test_transposed_4x4_padding_1_into_neurons():
    rng = np.random.default_rng(8)
    T = 4
    wts, theta, bias = random_layer(rng, 2, 2, 4, T)
    q = rng.integers(0, 2**T, (2, 3, 3))
    check_layer(layer(wts, theta, bias, T, transposed=True, padding=1), q, lanes=2)
    check_layer(layer(wts, theta, bias, T, transposed=True, padding=1), q, lanes=2, ring=2)  # odd padding


@pytest.mark.parametrize("parts,ring", [(8, 0), (4, 3), (2, 0)])
def test_scan_ends_with_the_pixels_last_part_that_holds_a_spike(parts, ring):
    """Small codes leave a pixel's high planes empty: the scan (low planes first) stops at the most significant part
    with a spike, and a pixel without one reads a single part. Codes, cycles and reads equal the model's, and the
    line buffer is read fewer times than ``parts`` per tap."""
    rng = np.random.default_rng(11)
    T, c_in = 8, 4
    wts, theta, bias = random_layer(rng, c_in, 4, 3, T)
    # per pixel a different top: zero, a low bit, up to 15, up to 255
    tops = rng.choice([0, 2, 16, 256], size=(1, 5, 6))
    q = (rng.integers(0, 1 << 16, (c_in, 5, 6)) % np.maximum(tops, 1)) * (tops > 0)
    spec = layer(wts, theta, bias, T)
    check_layer(spec, q, lanes=2, group=2, parts=parts, ring=ring)
    dut = BitPlaneLayer(**spec.gateware(5, 6, 2, 2, parts, 0, ring))
    _, _, reads = simulate_layer(dut, q)
    full = spec.cost(np.full_like(q, 255), 2, 2, parts, 0, ring).reads["linebuf"]
    assert reads["linebuf"] < full == 2 * parts * spec.schedule(q, 2, 2, 1)[2].sum()


def test_backpressure_keeps_the_result():
    rng = np.random.default_rng(9)
    T = 4
    wts, theta, bias = random_layer(rng, 2, 2, 3, T)
    q = rng.integers(0, 2**T, (2, 4, 4))
    check_layer(layer(wts, theta, bias, T), q, lanes=1, stall=3, parts=2)


def test_two_frames_in_a_row():
    """The engine starts the next frame afresh (line buffer rows and counters)."""
    rng = np.random.default_rng(10)
    T = 4
    wts, theta, bias = random_layer(rng, 2, 2, 3, T)
    spec = layer(wts, theta, bias, T)
    q = rng.integers(0, 2**T, (2, 3, 4))
    dut = BitPlaneLayer(**spec.gateware(3, 4, 2))
    second = q[:, ::-1, ::-1].copy()
    out, _, _ = simulate_layer(dut, np.concatenate([q, second], axis=1), frames=2)
    assert np.array_equal(out[:, :3], spec.compute(q))
    assert np.array_equal(out[:, 3:], spec.compute(second))


def test_layer_specs_of_the_shipped_shape_and_refusals():
    model = bitplane_dncnn(depth=3, width=4, T=8, down=True)
    specs = layer_specs(model)
    assert [(s.k, s.stride, s.transposed, s.c_in, s.c_out) for s in specs] == [
        (5, 2, False, 1, 4), (3, 1, False, 4, 4), (6, 2, True, 4, 1)]
    assert [s.out_size(8, 12) for s in specs] == [(4, 6), (8, 12), (16, 24)]
    direct = bitplane_dncnn(depth=3, width=4, T=4, down=True)
    with pytest.raises(PipelineError, match="uwe"):
        layer_specs(direct)
    extra = Model(model.nodes + [Integrator("x", "readout")], 8, Encoder("uwe"),
                  Decoder([ReadoutTerm("x", "membrane", np.ones(1, np.int32))]))
    with pytest.raises(PipelineError):
        layer_specs(extra)


def check_model(model: Model, frame: np.ndarray, folds: list[tuple[int, ...]]):
    h, w = frame.shape
    dut, specs, folds = build_pipeline(model, h, w, folds)
    codes = run_codes(specs, frame)
    want_cycles = pipeline_cycles(specs, codes[:-1], folds) + LayerPipeline.LATENCY
    run = simulate_pipeline(dut, frame, limit=2 * want_cycles + 1000)
    out, cycles, counts = run.out, run.cycles, run.counts
    want = reference.run(model, frame)
    bad = np.argwhere(out != want)
    assert not len(bad), f"first difference at {tuple(bad[0])}: {out[tuple(bad[0])]} != {want[tuple(bad[0])]}"
    assert np.array_equal(decode(model, frame, codes[-1]), want)
    assert cycles == want_cycles
    costs = [spec.cost(q, *fold) for spec, q, fold in zip(specs, codes, folds, strict=False)]
    assert counts == [c.reads | {"writes": c.writes} for c in costs], "memory accesses differ from the model"
    acc = frame_accesses(specs, codes[:-1], folds)  # the profiler's record of the same counts
    for spec, count in zip(specs, counts, strict=True):
        # a neuron's biases are the converters' constants: only an Integrator has a params memory
        assert (f"{spec.conv.name}.params" in acc.rams) == (spec.theta is None)
        for ram in ("linebuf", "weights", "params")[:3 if spec.theta is None else 2]:
            r = acc.rams[f"{spec.conv.name}.{ram}"]
            assert (r["reads"], r["writes"]) == (count[ram], count["writes"].get(ram, 0))
    assert acc.adds["synaptic"] == sum(c.sops for c in costs) > 0
    # adds by use, counted from each engine's probes (spikes of the group added, bias adds, SAR steps)
    assert run.adds == [c.adds for c in costs], "adds differ from the model"
    assert all(a["synaptic"] >= a["accumulate"] > 0 and a["bias"] > 0 for a in run.adds)
    return cycles, [c.cycles for c in costs]


def test_whole_small_model_as_a_pipeline_equals_reference():
    """The shipped shape (5x5 stride-2 in, 3x3 body at half resolution, 6x6 transposed read-out, uwd Integrator,
    residual decoder), width 4, on a whole 8x10 frame: pixels equal ``reference.run``; cycles equal the handshake
    model, every engine's memory reads and writes equal the cycle model's counts, and the layers overlap (the
    pipeline takes fewer cycles than the layers one after the other)."""
    model = bitplane_dncnn(depth=3, width=4, T=8, down=True, seed=3)
    model.decoder.shift = 15  # the random read-out scale would saturate most pixels: keep them in range
    frame = demo_image(8, 10, seed=1)
    out = reference.run(model, frame)
    assert ((out > 0) & (out < 255)).mean() > 0.8 and (out != frame).mean() > 0.5
    cycles, alone = check_model(model, frame, folds=[(4, 1, 2), (2, 2, 1), (1, 4, 4)])
    assert cycles < sum(alone)
    # the body layer and the read-out with ring line buffers of 3 rows and 2 pixels: their receivers wait for their
    # computes' pixels; here the read-out's compute sets the pace either way (the cycle model's 12721 both)
    ring, _ = check_model(model, frame, folds=[(4, 1, 2), (2, 2, 1, 0, 2), (1, 4, 4, 0, 2)])
    assert ring == cycles


@pytest.mark.parametrize("dilations,frame,folds", [
    ((1, 2, 1), (13, 11), [(4, 1, 1), (2, 2, 2), (1, 4, 2)]),
    # rings of the padding's pixels beyond the window's rows (the least), and of 2 in the read-out
    ((1, 2, 3, 1), (13, 11), [(4, 1, 2), (4, 2, 1, 0, 2), (2, 1, 2, 0, 3), (1, 4, 4, 0, 2)]),
    ((1, 2, 3, 1), (5, 4), [(4, 1, 1), (4, 2, 2), (4, 4, 1, 0, 3), (1, 4, 1)]),  # smaller than the 7x7 window
])
def test_dilated_model_as_a_pipeline_equals_reference(dilations, frame, folds):
    """IRCNN's shape in small (3x3 layers with dilations, full resolution, uwd read-out) through the whole pipeline
    on odd-sized frames: pixels equal ``reference.run``, cycles the handshake model's, every engine's memory
    accesses and adds the cycle model's (:func:`check_model`), with whole rows and rings."""
    model = bitplane_dncnn(depth=len(dilations), width=4, T=8, down=False, seed=4, dilations=dilations)
    model.decoder.shift = 13  # the random read-out scale would saturate most pixels
    assert [s.dilation for s in layer_specs(model)] == list(dilations)
    x = demo_image(*frame, seed=1)
    out = reference.run(model, x)
    assert ((out > 0) & (out < 255)).mean() > 0.8 and (out != x).mean() > 0.8
    check_model(model, x, folds)


def test_dilated_layers_plan_their_halo_stripes_and_line_buffers():
    """IRCNN's dilations 1, 2, 3, 4, 3, 2, 1: a halo of 16 columns (the paddings' sum), which the firmware's regions
    need and suffice with; whole-row line buffers of the window's 2 d + 1 rows plus one rounded up to a power of
    two, rings of the window's rows; the decoder's FIFO as deep as the rounded rows let the receivers run ahead;
    the planner's stripes keep ``stripe - 2 * halo`` columns."""
    from edgespike.firmware.tiling import regions
    from edgespike.fpga.pipeline import receptive_radius, residual_depth

    model = bitplane_dncnn(depth=7, width=4, T=8, down=False, seed=2, dilations=(1, 2, 3, 4, 3, 2, 1))
    model.decoder.shift = 13
    specs = layer_specs(model)
    assert [s.padding for s in specs] == [1, 2, 3, 4, 3, 2, 1] and receptive_radius(specs) == 16
    assert [s.slots() for s in specs] == [4, 8, 8, 16, 8, 8, 4]
    body = specs[3]  # d = 4: 9 rows
    assert memories(body, 100, 4, 1)["linebuf"] == (32, 16 * 128)
    assert memories(body, 100, 4, 1, 1, 0, 40)["linebuf"] == (32, 9 * 100 + 40)
    assert ring_extra(body, 100, 1, "ecp5-85f", least=2) >= body.padding
    # output row oy in flight: the d = 4 layer may hold rows up to oy - 4 + 16, where one row ahead of its need
    # (oy + 5) would be oy + 6; the FIFO holds that lag plus two rows
    assert residual_depth(specs, 64, 10) > residual_depth(layer_specs(bitplane_dncnn(
        depth=7, width=4, T=8, down=False, seed=2)), 64, 10) + 16 * 10
    x = demo_image(20, 57, seed=3)
    want = reference.run(model, x)
    for halo, exact in ((16, True), (14, False)):
        out = np.zeros_like(want)
        for (y0, y1, x0, x1), (cy0, cy1, cx0, cx1) in regions(x.shape, (20, 40), halo):
            out[cy0:cy1, cx0:cx1] = reference.run(model, x[y0:y1, x0:x1])[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
        assert np.array_equal(out, want) == exact, halo
    # the ECP5-25F's 56 blocks: 3 stripes of 256 columns (rows of 512 words would double the line buffers)
    plan = plan_pipeline(model, "ecp5-25f", (480, 640), demo_image(16, 16, seed=4), folds=[(4, 1)] * 6 + [(1, 4)])
    assert (plan.stripes, plan.stripe, plan.core) == (3, 256, 256 - 2 * 16) and plan.total_blocks <= 56
    for spec, fold in zip(specs, plan.folds, strict=True):
        wd, dp = memories(spec, 256, *fold)["linebuf"]
        assert plan.blocks[f"{spec.conv.name}.linebuf"] == ram_blocks(wd, dp, "ecp5-25f")
    assert memories(body, 256, *plan.folds[3])["linebuf"][1] == 16 * 256 * plan.folds[3][2]
    assert plan.blocks["residual"] == ram_blocks(8, 1 << (residual_depth(specs, 480, 256) - 1).bit_length(), "ecp5-25f")


def test_block_ram_accounting_and_planner():
    """Block counts by aspect ratio (DP16KD 512x36 .. 16384x1, EBR 256x16 .. 2048x2); the planner keeps a plan
    inside the part, takes the whole width when the line buffers fit, and refuses a model the part cannot hold."""
    assert ram_blocks(512, 576, "ecp5-85f") == 29  # 1024x18 mode, 29 side by side
    assert ram_blocks(8, 36864, "ecp5-85f") == 18  # 2048x9 mode
    assert ram_blocks(16, 256, "up5k") == 1 and ram_blocks(32, 600, "up5k") == 6
    assert ram_blocks(512, 9, "ecp5-85f") > 0 and ram_blocks(64, 9, "ecp5-85f") == 0  # small ones are logic
    small = bitplane_dncnn(depth=3, width=4, T=8, down=True, seed=3)
    sample = demo_image(16, 16, seed=4)
    plan = plan_pipeline(small, "ecp5-85f", (480, 640), sample)
    assert plan.total_blocks <= 208 and plan.stripe >= 640 and plan.core == 640
    assert plan.frame_cycles == max(plan.cycles_per_pixel) * 480 * 640
    big = bitplane_dncnn(depth=8, width=64, T=8, down=True)
    with pytest.raises(PipelineError, match="iCE40UP5K"):
        plan_pipeline(big, "up5k", (480, 640), demo_image(8, 8), folds=[(1, 1)] * 8)
    # a ring line buffer: a body layer's rows of 72 pixels at 8 parts of 64 bits (and the 3 bits of the scan's
    # length) take 16 DP16KD as 4 rows of 128 pixels; as 3 rows and the 40 pixels that fill their blocks
    # (ring_extra), 8
    body = layer_specs(big)[1]
    assert memories(body, 72, 64, 1, 8)["linebuf"] == (67, 4 * 128 * 8)
    assert ring_extra(body, 72, 8, "ecp5-85f") == 40
    assert memories(body, 72, 64, 1, 8, 0, 40)["linebuf"] == (67, (3 * 72 + 40) * 8)
    assert [ram_blocks(*memories(body, 72, 64, 1, 8, 0, r)["linebuf"], "ecp5-85f") for r in (0, 40, 41)] == [16, 8, 10]


@pytest.mark.parametrize("width,halo", [(640, 18), (640, 10), (100, 6), (97, 4)])
def test_planned_stripes_are_the_firmwares_regions(width, halo):
    """The planner counts a frame's stripes as the firmware cuts them (``tiling.regions``: the first and last
    stripes end at the frame's edges and keep their outer halo), for every stripe width from one just wider than
    two halos to the whole frame: 640 columns in stripes of 158 with a halo of 18 are 5 stripes, not 6."""
    from edgespike.firmware.tiling import regions

    for stripe in range(2 * halo + 1, width + 3):
        cut = len(list(regions((8, width), (8, min(stripe, width)), halo)))
        assert stripe_count(width, stripe, stripe - 2 * halo) == cut, stripe
    assert stripe_count(640, 158, 122) == 5 and stripe_count(640, 144, 108) == 6
