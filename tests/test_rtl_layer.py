"""The layer engine against the reference semantics: random layers, random spike trains, every step's spikes
and the final membranes, for stride 1/2, kernels 1/3, IF/LIF, soft/hard reset, Integrator, 1 or all lanes."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from edgespike.reference import conv2d
from edgespike.rtl.common import field_of
from edgespike.rtl.layer import LayerEngine
from edgespike.rtl.params import LayerParams
from edgespike.validate import signed_bits

pytestmark = pytest.mark.hw

YB, XB, CB = 4, 4, 3  # event record of a design with tiles up to 16 x 16 and 8 channels


def make_layer(rng, *, cin, cout, k, stride, kind, reset, leak, lanes, T, h_out, w_out, v_init="zero"):
    w = rng.integers(-20, 21, size=(cout, cin, k, k)).astype(np.int8)
    bias = [int(b) for b in rng.integers(-10, 11, size=cout)]
    theta = [int(v) for v in rng.integers(5, 40, size=cout)]
    cur = int(np.abs(w.astype(np.int64)).sum(axis=(1, 2, 3)).max()) + 10
    mbits = signed_bits(T * cur + max(theta) + cur)
    return LayerParams(
        index=0, name="n", conv="c", kind=kind, cin=cin, cout=cout, k=k, stride=stride, lanes=lanes, weight=w,
        bias=bias, theta=theta if kind == "neuron" else [0] * cout, reset=reset, leak=leak, v_init=v_init,
        bit_serial=False, timesteps=T, mbits=mbits, keep_count=False, keep_uwd=False, level=0,
        max_h=h_out, max_w=w_out)


def expected(lp: LayerParams, spikes_in: list[np.ndarray]):
    """Step-major reference semantics (``reference.run``'s Neuron / Integrator on ``conv2d`` + bias)."""
    w = lp.weight
    bias = np.array(lp.bias, np.int64)[:, None, None]
    out_spikes = []
    v = None
    for s_in in spikes_in:
        cur = conv2d(s_in, w, lp.stride) + bias
        if v is None:
            theta0 = np.array(lp.theta, np.int64)[:, None, None]
            v0 = theta0 >> 1 if lp.v_init == "half" else np.zeros_like(theta0)
            v = np.broadcast_to(v0, cur.shape).copy()
        if lp.kind == "integrator":
            v += cur
            out_spikes.append(np.zeros_like(v))
            continue
        theta = np.array(lp.theta, np.int64)[:, None, None]
        if lp.leak:
            v -= v >> lp.leak
        v += cur
        s = (v >= theta).astype(np.int64)
        if lp.reset == "soft":
            v -= theta * s
        else:
            v[s == 1] = 0
        out_spikes.append(s)
    return out_spikes, v


def simulate(lp: LayerParams, spikes_in: list[np.ndarray], h_out: int, w_out: int):
    dut = LayerEngine(lp, YB, XB, CB)
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    got_spikes: list[np.ndarray] = []
    membranes = np.zeros((lp.cout, h_out, w_out), np.int64)

    async def tb(ctx):
        ctx.set(dut.h_out, h_out)
        ctx.set(dut.w_out, w_out)
        ctx.set(dut.start_init, 1)
        await ctx.tick()
        ctx.set(dut.start_init, 0)
        await ctx.tick().until(~dut.busy)
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
            ctx.set(dut.spikes.ready, 1)
            await ctx.tick()
            ctx.set(dut.start_fire, 0)
            s = np.zeros((lp.cout, h_out, w_out), np.int64)
            while True:
                _, _, valid, busy, ev = await ctx.tick().sample(dut.spikes.valid, dut.busy, dut.spikes.payload)
                if valid:
                    assert s[ev.c, ev.y, ev.x] == 0, "a neuron spiked twice in one step"
                    s[ev.c, ev.y, ev.x] = 1
                if not busy:
                    break
            got_spikes.append(s)
        # read every membrane word back through the read-out port
        for g in range(lp.groups):
            for y in range(h_out):
                for x in range(w_out):
                    ctx.set(dut.ro_en, 1)
                    ctx.set(dut.ro_y, y)
                    ctx.set(dut.ro_x, x)
                    ctx.set(dut.ro_g, g)
                    await ctx.tick()
                    ctx.set(dut.ro_en, 0)
                    word = ctx.get(dut.ro_data)
                    for lane in range(lp.lanes):
                        membranes[g * lp.lanes + lane, y, x] = field_of(word, lane * lp.lane_bits, lp.mbits, True)

    sim.add_testbench(tb)
    sim.run()
    return got_spikes, membranes


def check(seed, *, stride, k, kind, reset, leak, lanes_all, h_in=6, w_in=5, cin=3, cout=4, T=3, density=0.35,
          v_init="zero"):
    rng = np.random.default_rng(seed)
    h_out, w_out = (h_in, w_in) if stride == 1 else (-(-h_in // 2), -(-w_in // 2))
    lp = make_layer(rng, cin=cin, cout=cout, k=k, stride=stride, kind=kind, reset=reset, leak=leak,
                    lanes=cout if lanes_all else 1, T=T, h_out=h_out, w_out=w_out, v_init=v_init)
    spikes_in = [(rng.random((cin, h_in, w_in)) < density).astype(np.int64) for _ in range(T)]
    want_spikes, want_v = expected(lp, spikes_in)
    got_spikes, got_v = simulate(lp, spikes_in, h_out, w_out)
    for t, (a, b) in enumerate(zip(got_spikes, want_spikes, strict=True)):
        diff = np.argwhere(a != b)
        assert not len(diff), f"step {t}: spikes differ first at (c, y, x) = {tuple(diff[0])}: rtl {a[tuple(diff[0])]}"
    diff = np.argwhere(got_v != want_v)
    assert not len(diff), f"membrane differs first at {tuple(diff[0])}: rtl {got_v[tuple(diff[0])]} " \
                          f"reference {want_v[tuple(diff[0])]}"
    return sum(int(s.sum()) for s in want_spikes)


@pytest.mark.parametrize("seed,stride,k,kind,reset,leak,lanes_all", [
    (0, 1, 3, "neuron", "soft", 0, True),   # IF, soft reset (4 x 8: a target one row/column out would wrap)
    (1, 1, 3, "neuron", "hard", 2, True),   # LIF, hard reset
    (2, 2, 3, "neuron", "soft", 1, True),   # stride 2, LIF soft
    (3, 2, 1, "neuron", "hard", 0, False),  # stride 2, 1x1, IF hard, one lane (4 words per position)
    (4, 1, 1, "neuron", "soft", 3, False),  # 1x1, LIF soft, one lane
    (5, 1, 3, "integrator", "none", 0, True),  # read-out layer: integrates, never fires
])
def test_layer_engine_matches_reference(seed, stride, k, kind, reset, leak, lanes_all):
    dims = {"h_in": 4, "w_in": 8} if seed == 0 else {}
    fired = check(seed, stride=stride, k=k, kind=kind, reset=reset, leak=leak, lanes_all=lanes_all, **dims)
    if kind == "neuron":
        assert fired > 0, "the random layer never fired: the test would not exercise resets"


# no shrinking: each example is a gateware simulation, and the failure message already names the first difference
@settings(max_examples=6, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(seed=st.integers(0, 2**31), stride=st.sampled_from([1, 2]), k=st.sampled_from([1, 3]),
       reset=st.sampled_from(["soft", "hard"]), leak=st.integers(0, 3), lanes_all=st.booleans(),
       v_init=st.sampled_from(["zero", "half"]), density=st.floats(0.05, 0.9))
def test_layer_engine_hypothesis(seed, stride, k, reset, leak, lanes_all, v_init, density):
    check(seed, stride=stride, k=k, kind="neuron", reset=reset, leak=leak, lanes_all=lanes_all, h_in=5, w_in=4,
          cin=2, cout=2, T=2, density=density, v_init=v_init)
