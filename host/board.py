"""The ``board`` backend: the NPU on an FPGA board, driven over the board link (UART).

:class:`BoardLink` speaks the frame protocol of :mod:`tessera.hdl.boards.protocol` (documented in
docs/synthesis.md, "Board link protocol") over any byte transport: :class:`SerialTransport`
(pyserial, the board's USB serial port) or, with no board attached, the RTL simulation of the
same board top (:class:`tessera.hdl.boards.board_sim.SimBoard`). :class:`BoardBackend`
implements the runtime's Backend API on top: memory writes and reads, then START, polling
STATUS, and the counters.

A transport has ``write(bytes)``, ``read(n, timeout) -> bytes`` (fewer bytes when the timeout
passes), ``reset_input_buffer()``, ``idle(seconds)`` and ``close()``; ``idle_seconds`` (optional)
is how long the board needs to give up on a broken frame.
"""

from __future__ import annotations

import os
import time

from tessera.hdl.boards.protocol import (
    BOARD_IDLE_SECONDS,
    CSR_BYTES,
    DEFAULT_BAUD,
    MAX_PAYLOAD,
    RESP_HEADER_BYTES,
    Command,
    LinkStatus,
    crc16,
    decode_response_header,
    encode_request,
)

from tessera.errors import UserError
from tessera.isa import Csr, ErrorCode, Status

from .runtime import Backend, BackendUnavailable, RunResult

__all__ = [
    "DEFAULT_BAUD",
    "DEFAULT_PORT",
    "BoardBackend",
    "BoardLink",
    "LinkError",
    "LinkTimeout",
    "SerialTransport",
]

DEFAULT_PORT = "/dev/ttyUSB0"
_CTRL_START, _CTRL_RESET = 1, 2
#: Errors worth one more try: the frame was damaged on the way, not refused.
_TRANSIENT = (LinkStatus.BAD_CRC, LinkStatus.TIMEOUT)


class LinkError(RuntimeError):
    """The board refused a frame (``status``), or its answer was unreadable (``status`` None)."""

    def __init__(self, message: str, status: LinkStatus | None = None):
        super().__init__(message)
        self.status = status


class LinkTimeout(LinkError):
    """The board did not answer in time."""


class SerialTransport:
    """The board's USB serial port through pyserial (8N1, no flow control)."""

    idle_seconds = 2.5 * BOARD_IDLE_SECONDS  # the bitstream ends a broken frame after this much silence

    def __init__(self, port: str = DEFAULT_PORT, baud: int = DEFAULT_BAUD):
        import serial
        try:
            self.ser = serial.Serial(port, baud, timeout=1.0)
        except (serial.SerialException, OSError) as e:
            raise BackendUnavailable(f"cannot open the board's serial port {port}: {e}") from None
        self.seconds_per_byte = 10 / baud

    def write(self, data: bytes) -> None:
        self.ser.write(data)
        self.ser.flush()

    def read(self, n: int, timeout: float) -> bytes:
        self.ser.timeout = timeout
        return self.ser.read(n)

    def reset_input_buffer(self) -> None:
        self.ser.reset_input_buffer()

    def idle(self, seconds: float) -> None:
        time.sleep(seconds)

    def close(self) -> None:
        self.ser.close()


def _name(cmd) -> str:
    try:
        return Command(cmd).name
    except ValueError:
        return f"command {cmd}"


class BoardLink:
    """Request/response transactions of the board link protocol over a byte transport.

    Parameters
    ----------
    transport : transport
        See the module docstring.
    timeout : float
        Seconds to wait for an answer (plus the time its bytes take on the line).
    retries : int
        Extra tries after a damaged frame (BAD_CRC, TIMEOUT, an unreadable or missing answer).
        Memory and CSR reads and writes are idempotent; a repeated START is ignored by a busy NPU.
    """

    def __init__(self, transport, *, timeout: float = 1.0, retries: int = 1):
        self.transport, self.timeout, self.retries = transport, timeout, retries
        self.idle_seconds = getattr(transport, "idle_seconds", SerialTransport.idle_seconds)
        self.byte_seconds = getattr(transport, "seconds_per_byte", 0.0)

    def transact(self, cmd: Command, addr: int, length: int, payload: bytes = b"") -> bytes:
        """Send one request and return the answer's data; LinkError if the board refuses it."""
        for attempt in range(self.retries + 1):
            try:
                return self._once(cmd, addr, length, payload)
            except LinkError as e:
                self.resync()
                if attempt == self.retries or (e.status is not None and e.status not in _TRANSIENT):
                    raise
        raise AssertionError("unreachable")

    def _once(self, cmd, addr, length, payload):
        return self.exchange(encode_request(cmd, addr, length, payload), cmd,
                             f"{_name(cmd)} at 0x{addr:x} ({length} bytes)")

    def exchange(self, frame: bytes, cmd: int, what: str = "a request") -> bytes:
        """Send ``frame`` as it is (tests send broken ones) and return the answer's data."""
        self.transport.write(frame)
        head = self._read(RESP_HEADER_BYTES, what)
        try:
            echo, status, n = decode_response_header(head)
        except ValueError as e:
            raise LinkError(f"unreadable answer from the board to {what}: {e}") from None
        body = self._read(n + 2, what)
        if crc16(head[1:] + body) != 0:
            raise LinkError(f"answer to {what} failed its CRC check")
        try:
            status = LinkStatus(status)
        except ValueError:
            raise LinkError(f"answer to {what} has an unknown status {status}") from None
        if status != LinkStatus.OK:
            raise LinkError(f"the board refused {what}: {status.name}", status)
        if echo != cmd:
            raise LinkError(f"answer to {what} is for command {echo}")
        return body[:n]

    def _read(self, n, what):
        data = self.transport.read(n, self.timeout + n * self.byte_seconds)
        if len(data) < n:
            raise LinkTimeout(f"no answer from the board within {self.timeout:g} s to {what} "
                              f"({len(data)} of {n} bytes): is the bitstream loaded, the port and baud "
                              f"rate right?")
        return data

    def resync(self) -> None:
        """Let the board drop any half-received frame and answer it, then discard what it sent."""
        self.transport.idle(self.idle_seconds)
        self.transport.reset_input_buffer()

    # ---- operations ----

    def write_mem(self, addr: int, data: bytes) -> None:
        data = bytes(data)
        for off in range(0, len(data), MAX_PAYLOAD):
            chunk = data[off:off + MAX_PAYLOAD]
            self.transact(Command.WRITE_MEM, addr + off, len(chunk), chunk)

    def read_mem(self, addr: int, n: int) -> bytes:
        out = bytearray()
        for off in range(0, n, MAX_PAYLOAD):
            out += self.transact(Command.READ_MEM, addr + off, min(MAX_PAYLOAD, n - off))
        return bytes(out)

    def write_csr(self, reg: Csr, value: int) -> None:
        self.transact(Command.WRITE_CSR, int(Csr(reg).value), CSR_BYTES, (value & 0xFFFFFFFF).to_bytes(4, "little"))

    def read_csr(self, reg: Csr) -> int:
        return int.from_bytes(self.transact(Command.READ_CSR, int(Csr(reg).value), CSR_BYTES), "little")


class BoardBackend(Backend):
    """The NPU on a board (``tessera run --backend board``), over its UART link.

    Parameters
    ----------
    program : Program
        Its segments are written to the board's memory at once; the board must run the program's
        config (checked against the CONFIG_HASH CSR).
    port : str, optional
        Serial port of the board (default: ``TESSERA_BOARD_PORT`` or ``/dev/ttyUSB0``).
    baud : int, optional
        The bitstream's baud rate (default: ``TESSERA_BOARD_BAUD`` or 3,000,000).
    timeout : float
        Seconds to wait for each answer.
    transport : optional
        A transport to use instead of opening ``port`` (e.g. the simulated board).
    watchdog : int
        Cycles without progress before the NPU stops with WATCHDOG (0 off).
    run_timeout : float
        Seconds a run may take before it is stopped (soft reset) and reported.
    """

    name = "board"

    def __init__(self, program, *, port: str | None = None, baud: int | None = None, timeout: float = 1.0,
                 transport=None, watchdog: int = 1 << 20, run_timeout: float = 600.0, retries: int = 1):
        super().__init__(program)
        self._own = transport is None
        if transport is None:
            # The CLI passes no options: TESSERA_BOARD_PORT / TESSERA_BOARD_BAUD choose the serial port.
            port = port or os.environ.get("TESSERA_BOARD_PORT", DEFAULT_PORT)
            baud = baud or int(os.environ.get("TESSERA_BOARD_BAUD", DEFAULT_BAUD))
            transport = SerialTransport(port, baud)
        self.transport = transport
        self.link = BoardLink(self.transport, timeout=timeout, retries=retries)
        self.watchdog, self.run_timeout = watchdog, run_timeout
        c = program.config
        try:
            have = self.link.read_csr(Csr.CONFIG_HASH)
        except LinkError:
            self.close()
            raise
        want = int(c.hash(), 16) & 0xFFFFFFFF
        if have != want:
            self.close()
            raise UserError(f"the board runs another NPU config (hash {have:08x}); the program needs config "
                            f"{c.name!r} (hash {want:08x}): build its bitstream with "
                            f"`tessera synth --board BOARD --config {c.name}` (ulx3s-85f, icebreaker)")
        for addr, blob in program.segments():
            self.link.write_mem(addr, blob)

    def write(self, addr, data):
        self._check(addr, len(data))
        self.link.write_mem(addr, data)

    def read(self, addr, n):
        self._check(addr, n)
        return self.link.read_mem(addr, n)

    def _check(self, addr, n):
        if addr < 0 or addr + n > self.program.config.dram_bytes:
            raise ValueError(f"access of {n} bytes at 0x{addr:x} is outside external memory "
                             f"({self.program.config.dram_bytes} bytes)")

    def execute(self, prog_addr: int | None = None) -> RunResult:
        from tessera.sim.emulator import NpuError
        c = self.program.config
        link = self.link
        t0 = time.perf_counter()
        link.write_csr(Csr.PROG_ADDR, self.program.prog_addr if prog_addr is None else prog_addr)
        link.write_csr(Csr.WATCHDOG, self.watchdog)
        link.write_csr(Csr.CTRL, _CTRL_START)
        while True:
            status = Status(link.read_csr(Csr.STATUS) & 7)
            if Status.DONE in status and Status.BUSY not in status:
                break
            if time.perf_counter() - t0 > self.run_timeout:
                link.write_csr(Csr.CTRL, _CTRL_RESET)
                raise NpuError(ErrorCode.WATCHDOG, link.read_csr(Csr.ERROR_PC),
                               f"the board did not finish within {self.run_timeout:g} s (stopped with a soft reset)")
        err = link.read_csr(Csr.ERROR)
        if err:
            code = ErrorCode(err)
            raise NpuError(code, link.read_csr(Csr.ERROR_PC), f"the NPU stopped with {code.name}")
        cycles = link.read_csr(Csr.CYCLES_LO) | link.read_csr(Csr.CYCLES_HI) << 32
        macs = link.read_csr(Csr.MACS_LO) | link.read_csr(Csr.MACS_HI) << 32
        util = macs / (cycles * c.macs_per_cycle) if cycles else None
        return RunResult("board", cycles, macs, util, time.perf_counter() - t0)

    def close(self):
        if self._own and self.transport is not None:
            self.transport.close()
            self.transport = None
