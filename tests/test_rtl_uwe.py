"""UWE (SAR encoder) and UWD (weighted accumulator) in simulation, exhaustively over the 256 pixel values,
against ``reference.encode`` (UWE planes) and the reference's ``uwd`` read-out."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from edgespike import reference
from edgespike.model import Conv, Decoder, Encoder, Model, Neuron, ReadoutTerm
from edgespike.rtl.uwd import UWDecoder
from edgespike.rtl.uwe import SARNeuron, UWEncoder

pytestmark = pytest.mark.hw

ALL = np.arange(256, dtype=np.uint8).reshape(16, 16)


def identity_uwe_model() -> Model:
    """UWE input -> 1x1 conv (weight 1) -> IF (threshold 1, hard reset) -> 'uwd' read-out: the reference's own
    encode/decode pair, so ``reference.run`` returns the UWD word of the UWE planes."""
    conv = Conv("c", "input", np.ones((1, 1, 1, 1), np.int8), np.zeros(1, np.int32))
    neuron = Neuron("n", "c", np.ones(1, np.int32), reset="hard")
    dec = Decoder([ReadoutTerm("n", "uwd", np.ones(1, np.int32))], shift=0, residual=False)
    return Model([conv, neuron], timesteps=8, encoder=Encoder("uwe"), decoder=dec)


def run_encoder(values, emit_from=0, stop_at=7):
    """Feed pixels (tag = index) through the UWEncoder; return the events and the busy cycles per pixel."""
    dut = UWEncoder(tag_bits=8)
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    events, busy_cycles = [], []

    async def tb(ctx):
        ctx.set(dut.emit_from, emit_from)
        ctx.set(dut.stop_at, stop_at)
        ctx.set(dut.events.ready, 1)
        for tag, v in enumerate(values):
            ctx.set(dut.pixels.valid, 1)
            ctx.set(dut.pixels.payload, {"value": int(v), "tag": tag})
            await ctx.tick().until(dut.pixels.ready)
            ctx.set(dut.pixels.valid, 0)
            n = 0
            while True:
                _, _, valid, busy, ev = await ctx.tick().sample(dut.events.valid, dut.busy, dut.events.payload)
                if valid:
                    events.append((ev.tag, ev.t))
                if not busy:
                    break
                n += 1
            busy_cycles.append(n)

    sim.add_testbench(tb)
    sim.run()
    return events, busy_cycles


def test_uwe_planes_equal_reference_encode_for_all_256_values():
    events, busy = run_encoder(ALL.reshape(-1))
    planes = np.zeros((8, 256), np.int64)
    for tag, t in events:
        assert planes[t, tag] == 0, "one pixel spiked twice in one plane"
        planes[t, tag] = 1
    model = identity_uwe_model()
    for t in range(8):
        want = reference.encode(model, ALL, t)[0].reshape(-1)
        bad = np.nonzero(planes[t] != want)[0]
        assert not len(bad), f"plane {t} differs first at pixel value {bad[0]}"
    assert set(busy) == {8}, "a SAR conversion takes one cycle per bit"


def test_uwe_hold_freezes_the_converter():
    """``hold`` (the engine is busy): no pixel is taken, no bit decided, no event offered; released, the
    conversion finishes exactly as without the hold (one cycle per bit)."""
    dut = UWEncoder(tag_bits=8)
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    seen = []

    async def tb(ctx):
        ctx.set(dut.events.ready, 1)
        ctx.set(dut.hold, 1)
        ctx.set(dut.pixels.valid, 1)
        ctx.set(dut.pixels.payload, {"value": 0b10100001, "tag": 9})
        for _ in range(3):
            _, _, ready, busy = await ctx.tick().sample(dut.pixels.ready, dut.busy)
            assert not ready and not busy, "a held encoder took a pixel"
        ctx.set(dut.hold, 0)
        await ctx.tick().until(dut.pixels.ready)
        ctx.set(dut.pixels.valid, 0)
        ctx.set(dut.hold, 1)  # hold in the middle of the conversion: nothing moves
        for _ in range(4):
            _, _, valid, busy = await ctx.tick().sample(dut.events.valid, dut.busy)
            assert busy and not valid
        ctx.set(dut.hold, 0)
        cycles = 0
        while True:
            _, _, valid, busy, ev = await ctx.tick().sample(dut.events.valid, dut.busy, dut.events.payload)
            if valid:
                seen.append((ev.tag, ev.t))
            if not busy:
                break
            cycles += 1
        assert cycles == 8

    sim.add_testbench(tb)
    sim.run()
    assert seen == [(9, 0), (9, 2), (9, 7)]


@pytest.mark.parametrize("t", [0, 3, 7])
def test_uwe_single_plane_mode(t):
    """UWE coding at step t: the SAR decides bits 7..7-t and emits only plane t."""
    events, busy = run_encoder(ALL.reshape(-1), emit_from=t, stop_at=t)
    got = np.zeros(256, np.int64)
    for tag, tt in events:
        assert tt == t
        got[tag] = 1
    assert np.array_equal(got, (np.arange(256) >> (7 - t)) & 1)
    assert set(busy) == {t + 1}


def encode_decode(values, n=8):
    enc, dec = UWEncoder(tag_bits=8, n=n), UWDecoder(tag_bits=8, n=n)
    m = Module()
    m.submodules.enc, m.submodules.dec = enc, dec
    wiring.connect(m, enc.events, dec.events)
    sim = Simulator(m)
    sim.add_clock(1e-6)
    words = {}

    async def tb(ctx):
        for tag, v in enumerate(values):
            ctx.set(enc.pixels.valid, 1)
            ctx.set(enc.pixels.payload, {"value": int(v), "tag": tag})
            await ctx.tick().until(enc.pixels.ready)
            ctx.set(enc.pixels.valid, 0)
        await ctx.tick().until(~enc.busy & ~dec.busy)
        ctx.set(dec.count, len(values))
        ctx.set(dec.drain, 1)
        await ctx.tick()
        ctx.set(dec.drain, 0)
        ctx.set(dec.words.ready, 1)
        for _ in values:
            tag, value = await ctx.tick().sample(dec.words.payload.tag, dec.words.payload.value).until(
                dec.words.valid)
            words[tag] = value

    sim.add_testbench(tb)
    sim.run()
    return [words[i] for i in range(len(values))]


def test_uwe_uwd_round_trip_all_256_values_equals_reference_uwd():
    got = np.array(encode_decode(ALL.reshape(-1)), np.uint8).reshape(16, 16)
    want = reference.run(identity_uwe_model(), ALL)  # the reference's UWE planes decoded by its 'uwd' read-out
    assert np.array_equal(want, ALL)
    bad = np.argwhere(got != want)
    assert not len(bad), f"value {ALL[tuple(bad[0])]} came back as {got[tuple(bad[0])]}"


@settings(max_examples=5, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(st.integers(2, 8).flatmap(lambda n: st.tuples(st.just(n), st.lists(st.integers(0, 2**n - 1), min_size=1,
                                                                               max_size=40))))
def test_uwe_uwd_round_trip_other_widths(case):
    n, values = case
    assert encode_decode(values, n=n) == values


@pytest.mark.parametrize("lanes,share", [(8, 1), (8, 4), (6, 2)])
def test_sar_neuron_shared_converters_equal_floor_division(lanes, share):
    """``SARNeuron`` with ``share`` lanes per converter: after ``share * T`` steps every lane's code is
    ``clip(floor((v + bias) / theta), 0, 2**T - 1)`` (SEMANTICS 5.5, steps 2 and 3), for negative, in-range and
    saturating sums, two conversions in a row (the converters' lane counter back at its start); ``first`` is high
    for ``T`` of the steps (one step per lane counted)."""
    T, vbits, bbits, tbits = 8, 20, 12, 10
    rng = np.random.default_rng(lanes * 10 + share)
    dut = SARNeuron(lanes, vbits, bbits, tbits, T, share)
    sim = Simulator(dut)
    sim.add_clock(1e-6)

    async def tb(ctx):
        for _ in range(2):
            theta = rng.integers(1, 2**tbits, lanes)
            bias = rng.integers(-(2**(bbits - 1)), 2**(bbits - 1), lanes)
            bias[:4] = [0, 5, -3, 0]
            total = np.concatenate([[-1, 0, int(theta[2]) * 2**T, int(theta[3]) * 2**T - 1], rng.integers(
                -(2**(vbits - 1)) + 2**(bbits - 1), 2**(vbits - 1) - 2**(bbits - 1), lanes - 4)])[:lanes]
            v = total - bias
            for j in range(lanes):
                ctx.set(dut.v[j], int(v[j]))
                ctx.set(dut.bias[j], int(bias[j]))
                ctx.set(dut.theta[j], int(theta[j]))
            await ctx.tick()  # steady from the cycle before the load
            ctx.set(dut.load, 1)
            await ctx.tick()
            ctx.set(dut.load, 0)
            ctx.set(dut.step, 1)
            first = 0
            for _ in range(share * T):
                first += ctx.get(dut.first)
                await ctx.tick()
            ctx.set(dut.step, 0)
            assert first == T
            got = [ctx.get(dut.q[j]) for j in range(lanes)]
            want = [int(np.clip(total[j] // theta[j], 0, 2**T - 1)) for j in range(lanes)]
            assert got == want
            await ctx.tick()

    sim.add_testbench(tb)
    sim.run()
