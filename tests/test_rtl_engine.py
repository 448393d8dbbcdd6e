"""The shared layer engine against the reference semantics: random layers, random spike trains, every step's
spikes and the final membranes, block by block: Conv stride 1/2, kernels 1/3/5, ConvTranspose (scatter form),
IF/LIF, soft/hard reset, v_init zero/half, Integrator, one or several blocks of lanes, and the packed one-channel
read-out layer."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from edgespike.fpga.params import plan
from edgespike.model import Conv, ConvTranspose, Decoder, Encoder, Integrator, Model, Neuron, ReadoutTerm
from edgespike.reference import conv2d, conv_transpose2d
from edgespike.rtl.common import field_of
from edgespike.rtl.engine import Engine

pytestmark = pytest.mark.hw


def layer_model(rng, *, op, k, cin, cout, kind, reset, leak, v_init, T, pad=2, stride=2):
    """A 3-layer chain whose middle layer (index 1) is the one under test; the others only make it a valid
    model (level back to the frame's, one channel read out)."""
    def rnd(shape):
        return rng.integers(-20, 21, size=shape).astype(np.int8)

    def neuron(name, src, c):
        theta = rng.integers(5, 40, size=c).astype(np.int32)
        return Neuron(name, src, theta, reset=reset, leak_shift=leak, v_init=v_init)

    bias = rng.integers(-10, 11, size=cout).astype(np.int32)
    if op == "convT":  # level 1 -> 0
        first = Conv("c0", "input", rnd((cin, 1, 3, 3)), np.zeros(cin, np.int32), stride=2)
        mid = ConvTranspose("c1", "n0", rnd((cout, cin, k, k)), bias, padding=pad)
        last = Conv("c2", "n1", rnd((1, cout, 1, 1)), np.zeros(1, np.int32))
    elif stride == 2:  # level 0 -> 1
        first = Conv("c0", "input", rnd((cin, 1, 3, 3)), np.zeros(cin, np.int32))
        mid = Conv("c1", "n0", rnd((cout, cin, k, k)), bias, stride=2)
        last = ConvTranspose("c2", "n1", rnd((1, cout, 4, 4)), np.zeros(1, np.int32), padding=1)
    else:
        first = Conv("c0", "input", rnd((cin, 1, 3, 3)), np.zeros(cin, np.int32))
        mid = Conv("c1", "n0", rnd((cout, cin, k, k)), bias)
        last = Conv("c2", "n1", rnd((1, cout, 3, 3)), np.zeros(1, np.int32))
    act = neuron("n1", "c1", cout) if kind == "neuron" else Integrator("n1", "c1")
    nodes = [first, neuron("n0", "c0", cin), mid, act, last, Integrator("out", "c2")]
    dec = Decoder([ReadoutTerm("out", "membrane", np.array([1], np.int32))], shift=0, residual=True)
    return Model(nodes=nodes, timesteps=T, encoder=Encoder("uwe" if T == 8 else "direct"), decoder=dec,
                 membrane_bits=32)


def expected(lp, spikes_in):
    """Step-major reference semantics (``reference.run``'s Neuron / Integrator on the layer's synaptic sum)."""
    bias = np.array(lp.bias, np.int64)[:, None, None]
    theta = np.array(lp.theta, np.int64)[:, None, None]
    out, v = [], None
    for s_in in spikes_in:
        syn = conv_transpose2d(s_in, lp.weight, lp.pad) if lp.op == "convT" else conv2d(s_in, lp.weight, lp.stride)
        cur = syn + bias
        if v is None:
            v0 = theta >> 1 if lp.v_init == "half" else np.zeros_like(theta)
            v = np.broadcast_to(v0 if lp.kind == "neuron" else 0, cur.shape).copy()
        if lp.kind == "integrator":
            v += cur
            out.append(np.zeros_like(v))
            continue
        if lp.leak:
            v -= v >> lp.leak
        v += cur
        s = (v >= theta).astype(np.int64)
        v = v - theta * s if lp.reset == "soft" else np.where(s == 1, 0, v)
        out.append(s)
    return out, v


def simulate(p, li: int, spikes_in: list[np.ndarray], h_out: int, w_out: int):
    """Drive engine layer ``li`` block by block: params, init, per step the events then a fire pass; read back."""
    lp = p.layers[li]
    dut = Engine(p)
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    L = p.lanes
    got = [np.zeros((lp.cout, h_out, w_out), np.int64) for _ in spikes_in]
    membranes = np.zeros((lp.cout, h_out, w_out), np.int64)

    async def pulse(ctx, sig):
        ctx.set(sig, 1)
        await ctx.tick()
        ctx.set(sig, 0)
        await ctx.tick().until(~dut.busy)

    async def tb(ctx):
        ctx.set(dut.layer, li)
        ctx.set(dut.h_out, h_out)
        ctx.set(dut.w_out, w_out)
        for g in range(lp.groups):
            ctx.set(dut.group, g)
            await pulse(ctx, dut.start_params)
            await pulse(ctx, dut.start_init)
            for t, s_in in enumerate(spikes_in):
                for c, y, x in zip(*np.nonzero(s_in), strict=True):
                    ctx.set(dut.events.valid, 1)
                    ctx.set(dut.events.payload, {"y": int(y), "x": int(x), "c": int(c), "sh": 0})
                    await ctx.tick().until(dut.events.ready)
                    ctx.set(dut.events.valid, 0)
                    await ctx.tick().until(~dut.busy)
                ctx.set(dut.step, t)
                ctx.set(dut.last_step, t == len(spikes_in) - 1)
                ctx.set(dut.start_fire, 1)
                await ctx.tick()
                ctx.set(dut.start_fire, 0)
                while True:
                    _, _, valid, busy, fy, fx, bits = await ctx.tick().sample(
                        dut.fire_valid, dut.busy, dut.fire_y, dut.fire_x, dut.fire_bits)
                    if valid:
                        for lane in range(L):
                            if bits >> lane & 1:
                                if lp.narrow:
                                    got[t][0, fy, fx * L + lane] = 1
                                else:
                                    got[t][g * L + lane, fy, fx] = 1
                    if not busy:
                        break
            # this block's membranes, through the read-out port
            for y in range(h_out):
                for x in range(w_out):
                    ctx.set(dut.ro_en, 1)
                    ctx.set(dut.ro_y, y)
                    ctx.set(dut.ro_x, x)
                    await ctx.tick()
                    ctx.set(dut.ro_en, 0)
                    word = ctx.get(dut.ro_data)
                    if lp.narrow:
                        membranes[0, y, x] = field_of(word, (x % L) * p.lane_bits, p.mbits, True)
                    else:
                        for lane in range(L):
                            membranes[g * L + lane, y, x] = field_of(word, lane * p.lane_bits, p.mbits, True)

    sim.add_testbench(tb)
    sim.run()
    return got, membranes


def check(seed, *, op="conv", k=3, stride=1, cin=2, cout=4, lanes=None, kind="neuron", reset="soft", leak=0,
          v_init="zero", T=2, h=4, w=4, density=0.35, pad=2, li=1):
    rng = np.random.default_rng(seed)
    model = layer_model(rng, op=op, k=k, cin=cin, cout=cout, kind=kind, reset=reset, leak=leak, v_init=v_init, T=T,
                        pad=pad, stride=stride)
    p = plan(model, device="ecp5-85f", tile=(8, 8), lanes=lanes)
    lp = p.layers[li]
    spikes_in = [(rng.random((lp.cin, h, w)) < density).astype(np.int64) for _ in range(T)]
    want, want_v = expected(lp, spikes_in)
    h_out, w_out = want_v.shape[1:]
    got, got_v = simulate(p, li, spikes_in, h_out, w_out)
    for t, (a, b) in enumerate(zip(got, want, strict=True)):
        diff = np.argwhere(a != b)
        assert not len(diff), f"step {t}: spikes differ first at (c, y, x) = {tuple(diff[0])}: rtl {a[tuple(diff[0])]}"
    diff = np.argwhere(got_v != want_v)
    assert not len(diff), f"membrane differs first at {tuple(diff[0])}: rtl {got_v[tuple(diff[0])]} " \
                          f"reference {want_v[tuple(diff[0])]}"
    return lp, sum(int(s.sum()) for s in want)


@pytest.mark.parametrize("case", [
    dict(seed=0, op="conv", k=3, reset="soft"),                              # IF soft, 3x3, one block
    dict(seed=1, op="conv", k=3, reset="hard", leak=2, lanes=2),             # LIF hard, two blocks of 2 lanes
    dict(seed=2, op="conv", k=3, stride=2, leak=1, v_init="half", h=6, w=5),  # stride 2 (not bit-serial)
    dict(seed=3, op="conv", k=1, reset="hard", lanes=1),                     # 1x1, four blocks of one lane
    dict(seed=4, op="convT", k=6, pad=2, v_init="half", h=3, w=4),          # ConvTranspose 6x6 pad 2 (default)
    dict(seed=5, op="convT", k=4, pad=1, lanes=2, h=3, w=3),                 # ConvTranspose 4x4 pad 1, 2 blocks
    dict(seed=6, op="conv", k=5, kind="integrator"),                         # Integrator, 5x5
])
def test_engine_matches_reference(case):
    lp, fired = check(**case)
    assert (lp.op == "convT") == (case["op"] == "convT")
    if lp.kind == "neuron":
        assert fired > 0, "the random layer never fired: the test would not exercise resets"


def test_packed_readout_layer_matches_reference():
    """The one-channel layer with 4 lanes: 4 positions per word, the scatter adds in one lane only."""
    lp, _ = check(7, op="conv", k=3, cin=4, cout=4, lanes=4, li=2, h=6, w=7)
    assert lp.narrow and lp.cout == 1


# no shrinking: each example is a gateware simulation, and the failure message already names the first difference
@settings(max_examples=6, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(seed=st.integers(0, 2**31), shape=st.sampled_from([("conv", 1, 1), ("conv", 3, 1), ("conv", 3, 2),
                                                          ("convT", 6, 2), ("convT", 4, 2)]),
       reset=st.sampled_from(["soft", "hard"]), leak=st.integers(0, 3), lanes=st.sampled_from([None, 1, 2]),
       v_init=st.sampled_from(["zero", "half"]), density=st.floats(0.05, 0.9))
def test_engine_hypothesis(seed, shape, reset, leak, lanes, v_init, density):
    op, k, stride = shape
    pad = {6: 2, 4: 1}.get(k, 0) if op == "convT" else 0
    check(seed, op=op, k=k, stride=stride, pad=pad, reset=reset, leak=leak, lanes=lanes, v_init=v_init,
          density=density, cin=2, cout=2, h=3, w=3)
