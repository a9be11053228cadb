"""The board link's UART under Amaranth's Python simulator: loopback, line-level bits, errors."""

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator
from tessera.hdl.boards.uart import UartRx, UartTx, divisor_for

DIV = 5


def _rx_bench(bits_per_byte, *, divisor=DIV, ready_chance=1.0, seed=0, tail=40):
    """Drive ``rx`` with a list of line levels (one per bit time); collect the received bytes and error pulses."""
    dut = UartRx(divisor)
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    rng = np.random.default_rng(seed)
    got, errors = [], {"framing": 0, "overrun": 0}

    async def drive(ctx):
        for level in bits_per_byte:
            ctx.set(dut.rx, level)
            await ctx.tick().repeat(divisor)
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(tail * divisor)

    async def sink(ctx):
        while True:
            ready = int(rng.random() < ready_chance)
            ctx.set(dut.o_stream.ready, ready)
            if ctx.get(dut.o_stream.valid) and ready:
                got.append(ctx.get(dut.o_stream.payload))
            errors["framing"] += ctx.get(dut.framing_error)
            errors["overrun"] += ctx.get(dut.overrun)
            await ctx.tick()

    sim.add_testbench(drive)
    sim.add_testbench(sink, background=True)
    sim.run()
    return got, errors


def _frame(byte, stop=1):
    return [0] + [(byte >> i) & 1 for i in range(8)] + [stop]


def test_uart_rx_receives_line_bytes_lsb_first():
    data = [0x00, 0xFF, 0x5A, 0xA5, 0x01, 0x80]
    line = [1, 1] + [b for x in data for b in _frame(x)]
    got, errors = _rx_bench(line)
    assert got == data
    assert errors == {"framing": 0, "overrun": 0}


def test_uart_rx_drops_a_byte_with_a_low_stop_bit_and_resynchronizes():
    line = [1] + _frame(0x33, stop=0) + [0, 0, 1, 1] + _frame(0x44)
    got, errors = _rx_bench(line)
    assert got == [0x44]
    assert errors["framing"] == 1


def test_uart_rx_ignores_a_glitch_shorter_than_half_a_bit():
    dut = UartRx(8)
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    got = []

    async def bench(ctx):
        ctx.set(dut.o_stream.ready, 1)
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(10)
        ctx.set(dut.rx, 0)          # 2 cycles low: a glitch
        await ctx.tick().repeat(2)
        ctx.set(dut.rx, 1)
        for _ in range(200):
            await ctx.tick()
            if ctx.get(dut.o_stream.valid):
                got.append(ctx.get(dut.o_stream.payload))

    sim.add_testbench(bench)
    sim.run()
    assert got == []


def test_uart_rx_reports_overrun_when_the_consumer_stalls():
    data = [1, 2, 3]
    line = [1] + [b for x in data for b in _frame(x)]
    got, errors = _rx_bench(line, ready_chance=0.0)
    assert got == []
    assert errors["overrun"] == 2  # the first byte waits in the output register; the next two are lost


@pytest.mark.parametrize("ready_chance", [1.0, 0.3])
def test_uart_loopback_tx_to_rx_random_bytes(ready_chance):
    rng = np.random.default_rng(int(ready_chance * 10))
    data = [int(x) for x in rng.integers(0, 256, 24)]
    m = Module()
    m.submodules.tx = tx = UartTx(DIV)
    m.submodules.rx = rx = UartRx(DIV)
    m.d.comb += rx.rx.eq(tx.tx)
    sim = Simulator(m)
    sim.add_clock(1e-6)
    got = []

    async def source(ctx):
        for x in data:
            ctx.set(tx.i_stream.payload, x)
            ctx.set(tx.i_stream.valid, 1)
            await ctx.tick().until(tx.i_stream.ready)
            ctx.set(tx.i_stream.valid, 0)
            # Random gaps between bytes, as a host's USB packets leave.
            await ctx.tick().repeat(int(rng.integers(1, 3 * DIV)))

    async def sink(ctx):
        # A slow consumer still takes each byte within a byte time: no overrun by design.
        while len(got) < len(data):
            ready = int(rng.random() < ready_chance)
            ctx.set(rx.o_stream.ready, ready)
            if ctx.get(rx.o_stream.valid) and ready:
                got.append(ctx.get(rx.o_stream.payload))
            assert not ctx.get(rx.overrun) and not ctx.get(rx.framing_error)
            await ctx.tick()

    sim.add_testbench(source, background=True)
    sim.add_testbench(sink)
    sim.run_until(1e-6 * len(data) * 14 * DIV)
    assert got == data


def test_uart_divisor_for_rejects_inexact_or_too_fast_rates():
    assert divisor_for(100e6, 3_000_000) == 33
    assert divisor_for(25e6, 115200) == 217
    with pytest.raises(ValueError, match="too fast"):
        divisor_for(10e6, 3_000_000)
    with pytest.raises(ValueError, match="off by"):
        divisor_for(10e6, 1_500_000)
