"""cocotb side of :class:`tessera.sim.rtl.RtlSim`: one test that serves the host's commands.

The clock runs inside the model. Python wakes only to pass a command: move
memory through the backdoor, start a run and await ``done`` (or a timeout),
read the CSRs, or pulse reset in the middle of a run.
"""

import os
import socket
import time
from multiprocessing.connection import Connection

import cocotb
from cocotb.triggers import FallingEdge, First, RisingEdge, Timer

from tessera.isa import Csr

PERIOD_NS = 10


async def _edges(dut, n=1):
    """Wait for ``n`` falling edges.

    Inputs change only at falling edges: a value written in a time slot that
    also holds a rising edge could reach the design before or after that edge.
    """
    for _ in range(n):
        await FallingEdge(dut.clk)


async def csr_write(dut, reg, value):
    await _edges(dut)
    dut.csr_addr.value = int(reg)
    dut.csr_wdata.value = value
    dut.csr_we.value = 1
    await _edges(dut)
    dut.csr_we.value = 0


async def csr_read(dut, reg):
    # The sim top registers its inputs: the address reaches the NPU at the next rising edge.
    await _edges(dut)
    dut.csr_addr.value = int(reg)
    await _edges(dut)
    return int(dut.csr_rdata.value)


async def read_status(dut):
    regs = {}
    for r in Csr:
        if r != Csr.CTRL:
            regs[r.name] = await csr_read(dut, r.value)
    return regs


async def _pulse(dut, sig):
    await _edges(dut)
    sig.value = 1
    await _edges(dut)
    sig.value = 0
    await _edges(dut)


@cocotb.test()
async def serve(dut):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(os.environ["TESSERA_RTL_SOCKET"])
    conn = Connection(sock.detach())
    for s in (dut.csr_we, dut.host_load, dut.host_dump, dut.bp_level, dut.mem_stall, dut.csr_addr, dut.csr_wdata,
              dut.dump_lo, dut.dump_hi, dut.trace_en):
        s.value = 0
    dut.rst.value = 1
    await _edges(dut, 3)
    dut.rst.value = 0
    await _edges(dut)
    conn.send(("ready",))
    while True:
        try:
            cmd, *args = conn.recv()
        except EOFError:
            return
        if cmd == "stop":
            conn.send(("bye",))
            return
        if cmd == "load":
            await _pulse(dut, dut.host_load)
            conn.send(("ok",))
        elif cmd == "dump":
            await _edges(dut)
            dut.dump_lo.value, dut.dump_hi.value = args
            await _pulse(dut, dut.host_dump)
            conn.send(("ok",))
        elif cmd == "csr":
            conn.send(("ok", await read_status(dut)))
        elif cmd == "run":
            opts = args[0]
            # The model runs in this process: its CPU time is the simulation's cost, whatever the machine's load.
            cpu0 = time.process_time()
            await _edges(dut)
            dut.bp_level.value = opts.get("bp_level", 0)
            dut.mem_stall.value = int(opts.get("mem_stall", False))
            dut.trace_en.value = int(opts.get("trace", False))
            await csr_write(dut, Csr.PROG_ADDR.value, opts["prog_addr"])
            await csr_write(dut, Csr.WATCHDOG.value, opts.get("watchdog", 0))
            await csr_write(dut, Csr.CTRL.value, 1)
            reset_after = opts.get("reset_after")
            if reset_after:
                await Timer(reset_after * PERIOD_NS, "ns")
                await _edges(dut)
                dut.rst.value = 1
                await _edges(dut, 3)
                dut.rst.value = 0
                dut.mem_stall.value = dut.trace_en.value = 0
                await _edges(dut)
                conn.send(("ok", {"reset": True, **await read_status(dut)}))
                continue
            timeout = Timer(opts.get("timeout_cycles", 1 << 40) * PERIOD_NS, "ns")
            fired = await First(RisingEdge(dut.done), timeout)
            cpu = time.process_time() - cpu0
            regs = await read_status(dut)
            regs["cpu_seconds"] = cpu
            regs["timeout"] = fired is timeout
            if regs["timeout"]:
                # Stop the run (soft reset) so the next command finds an idle NPU.
                await csr_write(dut, Csr.CTRL.value, 2)
                for _ in range(1 << 16):
                    if not await csr_read(dut, Csr.STATUS.value) & 1:
                        break
            await _edges(dut)
            dut.mem_stall.value = dut.trace_en.value = 0
            conn.send(("ok", regs))
        else:
            conn.send(("error", f"unknown command {cmd!r}"))
