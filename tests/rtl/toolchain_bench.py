"""cocotb side of test_toolchain: the clock runs inside the model; Python awaits only `done`."""

import cocotb
from cocotb.triggers import RisingEdge, Timer


@cocotb.test()
async def counter_reaches_limit(dut):
    dut.rst.value = 1
    await Timer(20, "ns")
    dut.rst.value = 0
    await RisingEdge(dut.done)
    assert int(dut.count.value) == int(dut.LIMIT.value)
