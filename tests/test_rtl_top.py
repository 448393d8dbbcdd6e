"""The byte-stream top level: the protocol the firmware will put on a UART, end to end in simulation: info,
tiles, refusals, and weights loaded at run time."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from edgespike import reference
from edgespike.fpga.cycles import tile_cost
from edgespike.fpga.examples import chain_model, demo_image, down_model
from edgespike.fpga.params import plan
from edgespike.rtl.top import Top

pytestmark = pytest.mark.hw


def exchange(top: Top, requests: list[list[int]], replies: list[int]) -> list[list[int]]:
    """Send each request's bytes, read back the given number of reply bytes for each."""
    sim = Simulator(top)
    sim.add_clock(1e-6)
    got: list[list[int]] = []

    async def tb(ctx):
        ctx.set(top.tx.ready, 1)
        for req, n in zip(requests, replies, strict=True):
            out: list[int] = []
            for b in req:
                ctx.set(top.rx.valid, 1)
                ctx.set(top.rx.payload, b)
                while True:  # bytes go in while the reply may already be coming out
                    _, _, rdy, tv, tb_ = await ctx.tick().sample(top.rx.ready, top.tx.valid, top.tx.payload)
                    if tv:
                        out.append(tb_)
                    if rdy:
                        break
            ctx.set(top.rx.valid, 0)
            while len(out) < n:
                (v,) = await ctx.tick().sample(top.tx.payload).until(top.tx.valid)
                out.append(v)
            got.append(out)

    sim.add_testbench(tb)
    sim.run()
    return got


def test_info_and_one_tile_over_the_byte_protocol():
    model = chain_model(seed=3, channels=4, layers=2, timesteps=2)
    p = plan(model, tile=(8, 8))
    img = demo_image(5, 6, seed=2)
    h, w = img.shape
    top = Top(p)
    junk = [0, 0x55]  # ignored while idle
    info, error, reply = exchange(top, [junk + [ord("I")], [ord("T"), 9, 3],
                                        [ord("T"), h, w] + [int(v) for v in img.reshape(-1)]],
                                  [6, 1, 1 + h * w + 12])
    assert error == [ord("E")], "a tile taller than the hardware's must be refused"
    assert info == [ord("I"), 2, 8, 8, p.halo, 2]
    assert reply[0] == ord("R")
    out = np.array(reply[1:1 + h * w], np.uint8).reshape(h, w)
    assert np.array_equal(out, reference.run(model, img))
    cycles, spikes, sops = (int.from_bytes(bytes(reply[1 + h * w + 4 * i:5 + h * w + 4 * i]), "little")
                            for i in range(3))
    cost = tile_cost(p, img)
    assert (cycles, spikes, sops) == (cost.cycles, cost.spikes, cost.sops)


def flipped(model):
    """The same model with every kernel rotated by 180 degrees: other outputs, identical proved bounds."""
    import copy

    other = copy.deepcopy(model)
    for node in other.nodes:
        if hasattr(node, "weight"):
            node.weight = np.ascontiguousarray(node.weight[:, :, ::-1, ::-1])
    return other


def test_weights_loaded_at_run_time_replace_the_built_in_ones():
    """'W' + the weight image of another model of the same shape: the next tile computes that model."""
    model = chain_model(seed=3, channels=4, layers=2, timesteps=2)
    other = flipped(model)
    p, q = plan(model, tile=(6, 6)), plan(other, tile=(6, 6))
    assert (q.mbits, q.weight_depth, q.params_depth) == (p.mbits, p.weight_depth, p.params_depth)
    img = demo_image(4, 6, seed=5)
    h, w = img.shape
    pixels = [int(v) for v in img.reshape(-1)]
    assert not np.array_equal(reference.run(model, img), reference.run(other, img)), "the test needs a change"
    image = list(q.weight_image())
    assert len(image) == q.weight_depth * q.lanes + 8 * q.params_depth
    ack, reply = exchange(Top(p), [[ord("W")] + image, [ord("T"), h, w] + pixels], [1, 1 + h * w + 12])
    assert ack == [ord("K")]
    out = np.array(reply[1:1 + h * w], np.uint8).reshape(h, w)
    assert np.array_equal(out, reference.run(other, img))


def test_a_half_resolution_model_refuses_odd_tile_sides():
    p = plan(down_model(seed=1, width=2, depth=3, timesteps=1), tile=(8, 8), device="ecp5-85f")
    (info, odd_h, odd_w) = exchange(Top(p), [[ord("I")], [ord("T"), 3, 4], [ord("T"), 4, 5]], [6, 1, 1])
    assert info == [ord("I"), 2, 8, 8, p.halo, 1]
    assert odd_h == odd_w == [ord("E")]
