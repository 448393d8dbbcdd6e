"""The gateware UART in Amaranth's simulator: every byte value through TX -> RX, framing errors, the divisor."""

from __future__ import annotations

import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator

from edgespike.rtl.uart import UARTRx, UARTTx

pytestmark = pytest.mark.hw


def loopback(divisor: int, values: list[int]) -> tuple[list[int], list[int]]:
    """Send ``values`` through a UARTTx wired to a UARTRx; return what came out and the TX bit lengths seen."""
    m = Module()
    m.submodules.tx = tx = UARTTx(divisor)
    m.submodules.rx = rx = UARTRx(divisor)
    m.d.comb += rx.rx.eq(tx.tx)
    sim = Simulator(m)
    sim.add_clock(1e-6)
    got: list[int] = []
    low_runs: list[int] = []

    async def send(ctx):
        for v in values:
            ctx.set(tx.inp.payload, v)
            ctx.set(tx.inp.valid, 1)
            await ctx.tick().until(tx.inp.ready)
            ctx.set(tx.inp.valid, 0)
            await ctx.tick()
        await ctx.tick().repeat(12 * divisor)  # the last byte's bits, and the receiver's synchroniser

    async def receive(ctx):
        ctx.set(rx.out.ready, 1)
        async for _, _, valid, payload, error in ctx.tick().sample(rx.out.valid, rx.out.payload, rx.error):
            assert not error
            if valid:
                got.append(payload)

    async def measure(ctx):  # the start bit's length in cycles: the divisor, exactly
        run = 0
        async for _, _, line in ctx.tick().sample(tx.tx):
            if not line:
                run += 1
            elif run:
                low_runs.append(run)
                run = 0

    sim.add_testbench(send)
    sim.add_testbench(receive, background=True)
    sim.add_testbench(measure, background=True)
    sim.run()
    return got, low_runs


@pytest.mark.parametrize("divisor", [4, 7])
def test_every_byte_value_goes_through_tx_and_rx(divisor):
    values = list(range(256)) if divisor == 4 else [0x00, 0xFF, 0x55, 0xAA, 0x80, 0x01]
    got, low_runs = loopback(divisor, values)
    assert got == values
    # 0x00 is a start bit and 8 zero data bits: one low run of 9 bit times; 0x01 leaves the start bit alone
    assert 9 * divisor in low_runs
    if 0x01 in values:
        assert divisor in low_runs


def test_framing_error_drops_the_byte_and_the_next_one_is_received():
    divisor = 4
    rx = UARTRx(divisor)
    sim = Simulator(rx)
    sim.add_clock(1e-6)
    events: list[tuple[str, int]] = []

    def bits(value: int, stop: int) -> list[int]:
        return [0] + [(value >> i) & 1 for i in range(8)] + [stop]

    async def drive(ctx):
        ctx.set(rx.rx, 1)
        await ctx.tick().repeat(3 * divisor)
        line = bits(0x3C, stop=0) + [0] * 12 + [1, 1] + bits(0xC3, stop=1) + [1, 1]  # bad stop + break, good
        for b in line:
            ctx.set(rx.rx, b)
            await ctx.tick().repeat(divisor)

    async def watch(ctx):
        ctx.set(rx.out.ready, 1)
        async for _, _, valid, payload, error in ctx.tick().sample(rx.out.valid, rx.out.payload, rx.error):
            if error:
                events.append(("error", 0))
            if valid:
                events.append(("byte", payload))

    sim.add_testbench(drive)
    sim.add_testbench(watch, background=True)
    sim.run()
    assert events == [("error", 0), ("byte", 0xC3)]


def test_overrun_when_nobody_takes_the_bytes():
    divisor = 4
    rx = UARTRx(divisor)
    sim = Simulator(rx)
    sim.add_clock(1e-6)
    seen = {"overrun": 0}

    async def drive(ctx):
        ctx.set(rx.rx, 1)
        await ctx.tick().repeat(3 * divisor)
        for value in (0x11, 0x22):  # out.ready stays low: the second byte has nowhere to go
            for b in [0] + [(value >> i) & 1 for i in range(8)] + [1, 1]:
                ctx.set(rx.rx, b)
                await ctx.tick().repeat(divisor)
        assert ctx.get(rx.out.valid) and ctx.get(rx.out.payload) == 0x11

    async def watch(ctx):
        async for _, _, overrun in ctx.tick().sample(rx.overrun):
            seen["overrun"] += overrun

    sim.add_testbench(drive)
    sim.add_testbench(watch, background=True)
    sim.run()
    assert seen["overrun"] == 1


@pytest.mark.parametrize("divisor", [0, 3, 4.5])
def test_divisor_below_four_or_fractional_is_refused(divisor):
    with pytest.raises(ValueError, match="divisor"):
        UARTRx(divisor)
    with pytest.raises(ValueError, match="divisor"):
        UARTTx(divisor)
