"""cocotb side of :class:`tessera.hdl.boards.board_sim.SimBoard`: the host's UART, bit by bit.

The clock runs inside the model. A monitor decodes every byte the board sends on ``uart_tx``
(sampling each bit in its middle); commands from the host drive bytes onto ``uart_rx``, return
received bytes (waiting in simulated time), let idle time pass, or report the SDRAM model's state.
"""

import os
import socket
from multiprocessing.connection import Connection

import cocotb
from cocotb.simtime import get_sim_time
from cocotb.triggers import Event, FallingEdge, First, Timer


@cocotb.test()
async def serve(dut):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(os.environ["TESSERA_BOARD_SOCKET"])
    conn = Connection(sock.detach())
    bit = int(os.environ["TESSERA_BOARD_BIT_NS"])
    dut.uart_rx.value = 1
    dut.rst.value = 1
    await Timer(40, "ns")
    dut.rst.value = 0
    received = bytearray()
    arrived = Event()
    framing = 0

    async def monitor():
        nonlocal framing
        while True:
            await FallingEdge(dut.uart_tx)
            await Timer(bit // 2, "ns")
            if dut.uart_tx.value:
                continue  # not a start bit
            v = 0
            for i in range(8):
                await Timer(bit, "ns")
                v |= int(dut.uart_tx.value) << i
            await Timer(bit, "ns")
            if dut.uart_tx.value:
                received.append(v)
                arrived.set()
            else:
                framing += 1

    cocotb.start_soon(monitor())
    conn.send(("ok",))
    while True:
        try:
            cmd, *args = conn.recv()
        except EOFError:
            return
        if cmd == "stop":
            conn.send(("ok",))
            return
        if cmd == "send":
            for byte in args[0]:
                for level in [0] + [(byte >> i) & 1 for i in range(8)] + [1]:
                    dut.uart_rx.value = level
                    await Timer(bit, "ns")
            conn.send(("ok",))
        elif cmd == "recv":
            n, timeout_ns = args
            deadline = get_sim_time("ns") + timeout_ns
            while len(received) < n:
                left = deadline - get_sim_time("ns")
                if left <= 0:
                    break
                arrived.clear()
                await First(arrived.wait(), Timer(max(1, round(left)), "ns"))
            out = bytes(received[:n])
            del received[:n]
            conn.send(("ok", out))
        elif cmd == "flush":
            received.clear()
            conn.send(("ok",))
        elif cmd == "idle":
            await Timer(max(1, args[0]), "ns")
            conn.send(("ok",))
        elif cmd == "time":
            conn.send(("ok", int(get_sim_time("ns"))))
        elif cmd == "status":
            conn.send(("ok", {"error": int(dut.sdram_error.value), "error_code": int(dut.sdram_error_code.value),
                              "refreshes": int(dut.sdram_refreshes.value), "uart_framing_errors": framing}))
        else:
            conn.send(("error", f"unknown command {cmd!r}"))
