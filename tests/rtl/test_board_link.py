"""The ULX3S board system (NPU + SDRAM controller + UART link) in RTL simulation with an SDRAM model.

The host's own protocol code (tessera.host.board) drives the simulated UART pins; one simulation
serves every test. Programs run through the board backend must equal the emulator bit for bit, bad
frames must get error answers and change nothing, and a board that does not answer must raise.
"""

import numpy as np
import pytest
from tessera.hdl.boards.protocol import MAX_PAYLOAD, Command, LinkStatus, encode_request
from tessera.host.board import BoardBackend, BoardLink, LinkError, LinkTimeout
from tessera.host.runtime import Runtime
from tessera.sim.handwritten import conv_relu_pool

from tessera.arch import NpuConfig
from tessera.isa import Csr

from .programs import board_runs_match

#: Small NPU, 16-byte memory beats (a beat is one 8-word SDRAM burst), 2 MiB of SDRAM.
CONFIG = NpuConfig(name="board-test", lanes=4, rows=8, abuf_words=512, wbuf_words=128, accbuf_words=128,
                   pbuf_words=16, bus_bytes=16, dram_bytes=2 << 20, mem_latency=8, queue_depth=4, token_depth=4)


@pytest.fixture(scope="module")
def board():
    from tessera.hdl.boards.board_sim import SimBoard
    b = SimBoard(CONFIG)
    yield b
    status = b.sdram_status()
    b.close()
    # Every test's traffic went through the SDRAM model: it must have seen no protocol violation.
    assert status["error"] == 0, f"SDRAM model error {status['error_code']}"


@pytest.fixture
def link(board):
    return BoardLink(board, timeout=1e-3, retries=0)


def test_board_link_program_matches_emulator_bit_for_bit(board):
    program, _ = conv_relu_pool(CONFIG, seed=3)
    board_runs_match(program, board, seed=3)
    status = board.sdram_status()
    assert status["error"] == 0 and status["refreshes"] > 0 and status["uart_framing_errors"] == 0


def test_board_link_memory_round_trip_at_odd_addresses(link):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, size=MAX_PAYLOAD + 77, dtype=np.uint8).tobytes()
    base = 0x1_2345  # not beat aligned; spans two frames
    link.write_mem(base, data)
    assert link.read_mem(base, len(data)) == data
    assert link.read_mem(base + 5, 3) == data[5:8]
    # Byte strobes: a write of 3 bytes leaves its neighbours alone.
    link.write_mem(base + 10, b"\xaa\xbb\xcc")
    assert link.read_mem(base + 8, 7) == data[8:10] + b"\xaa\xbb\xcc" + data[13:15]


def test_board_link_csr_access(link):
    assert link.read_csr(Csr.CONFIG_HASH) == int(CONFIG.hash(), 16) & 0xFFFFFFFF
    link.write_csr(Csr.PROG_ADDR, 0x4560)
    assert link.read_csr(Csr.PROG_ADDR) == 0x4560
    link.write_csr(Csr.PROG_ADDR, 0)


BAD_FRAMES = {
    "bad_crc": (lambda f: f[:-1] + bytes([f[-1] ^ 0x40]), Command.WRITE_MEM, 0x100, 4, b"wxyz", LinkStatus.BAD_CRC),
    "bad_command": (None, 9, 0x100, 4, b"", LinkStatus.BAD_COMMAND),
    "address_beyond_memory": (None, Command.READ_MEM, CONFIG.dram_bytes - 4, 8, b"", LinkStatus.BAD_ADDRESS),
    "csr_index_out_of_range": (None, Command.READ_CSR, 16, 4, b"", LinkStatus.BAD_ADDRESS),
    "length_zero": (None, Command.READ_MEM, 0x100, 0, b"", LinkStatus.BAD_LENGTH),
    "length_over_frame_buffer": (None, Command.WRITE_MEM, 0x100, MAX_PAYLOAD + 1, bytes(MAX_PAYLOAD + 1),
                                 LinkStatus.BAD_LENGTH),
    "csr_length_not_4": (None, Command.WRITE_CSR, int(Csr.PROG_ADDR.value), 2, b"\x01\x02", LinkStatus.BAD_LENGTH),
    "cut_short": (lambda f: f[:-3], Command.WRITE_MEM, 0x100, 4, b"wxyz", LinkStatus.TIMEOUT),
}


@pytest.mark.parametrize("case", sorted(BAD_FRAMES))
def test_board_link_bad_frame_gets_error_and_changes_nothing(link, case):
    mangle, cmd, addr, length, payload, want = BAD_FRAMES[case]
    link.write_mem(0x100, b"abcd")
    frame = encode_request(cmd, addr, length, payload)
    if mangle:
        frame = mangle(frame)
    with pytest.raises(LinkError) as e:
        link.exchange(frame, cmd)
    assert e.value.status == want, str(e.value)
    assert want.name in str(e.value)
    # The link answers the next good frame, and the refused write left memory alone.
    assert link.read_mem(0x100, 4) == b"abcd"


class _LosesFirstByte:
    """A transport that drops the first byte of every write (the sync byte): the board never sees a frame."""

    def __init__(self, inner):
        self.inner = inner

    def write(self, data):
        self.inner.write(data[1:])

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_board_link_no_answer_raises_a_clear_timeout(board, link):
    lossy = BoardLink(_LosesFirstByte(board), timeout=30e-6, retries=0)
    with pytest.raises(LinkTimeout, match="no answer from the board within 3e-05 s to READ_CSR"):
        lossy.read_csr(Csr.STATUS)
    # The board ignored the sync-less bytes; the link still works.
    assert link.read_csr(Csr.CONFIG_HASH) == int(CONFIG.hash(), 16) & 0xFFFFFFFF


def test_board_backend_refuses_a_program_for_another_config(board):
    other = NpuConfig(name="other", lanes=4, rows=8, abuf_words=512, wbuf_words=128, accbuf_words=128,
                      pbuf_words=16, bus_bytes=16, dram_bytes=2 << 20, mem_latency=8, queue_depth=4, token_depth=2)
    program, _ = conv_relu_pool(other, seed=0)
    with pytest.raises(Exception, match="another NPU config"):
        BoardBackend(program, transport=board, timeout=1e-3)


def test_board_link_memory_access_during_a_run_is_busy(link):
    from tessera.isa import Instruction as I
    from tessera.isa import Status, encode_program

    # Three 1600-byte LOADs: about 5k cycles on the SDRAM, longer than the four frames below take on the line.
    prog = [I("load", buf="act", dram_addr=0x1000, buf_addr=0, rows=1, cols=400) for _ in range(3)] + [I("end")]
    link.write_mem(0x100, b"abcd")
    link.write_mem(0x2000, encode_program(prog))
    link.write_csr(Csr.PROG_ADDR, 0x2000)
    link.write_csr(Csr.CTRL, 1)
    for cmd, call in ((Command.READ_MEM, lambda: link.read_mem(0x100, 4)),
                      (Command.WRITE_MEM, lambda: link.write_mem(0x100, b"zzzz"))):
        with pytest.raises(LinkError) as e:
            call()
        assert e.value.status == LinkStatus.BUSY, cmd.name
    while Status.BUSY in Status(link.read_csr(Csr.STATUS) & 7):
        pass
    assert link.read_csr(Csr.ERROR) == 0
    assert link.read_mem(0x100, 4) == b"abcd"


class _ScriptedBoard:
    """A transport answering from a script of response frames (no simulation): the host side alone."""

    idle_seconds = 0.0

    def __init__(self, answers):
        self.answers, self.sent, self.pending = list(answers), [], b""

    def write(self, data):
        self.sent.append(bytes(data))
        self.pending += self.answers.pop(0) if self.answers else b""

    def read(self, n, timeout):
        out, self.pending = self.pending[:n], self.pending[n:]
        return out

    def reset_input_buffer(self):
        self.pending = b""

    def idle(self, seconds):
        pass


def test_board_link_retries_once_after_a_damaged_answer_then_gives_up():
    from tessera.hdl.boards.protocol import encode_response
    good = encode_response(Command.READ_CSR, LinkStatus.OK, (0x1234).to_bytes(4, "little"))
    damaged = good[:-1] + bytes([good[-1] ^ 1])
    board = _ScriptedBoard([damaged, good])
    assert BoardLink(board, retries=1).read_csr(Csr.STATUS) == 0x1234
    assert len(board.sent) == 2 and board.sent[0] == board.sent[1]
    with pytest.raises(LinkError, match="failed its CRC check"):
        BoardLink(_ScriptedBoard([damaged, damaged]), retries=1).read_csr(Csr.STATUS)
    # A refusal that is not a transmission error is not repeated.
    busy = _ScriptedBoard([encode_response(Command.READ_MEM, LinkStatus.BUSY), good])
    with pytest.raises(LinkError, match="BUSY"):
        BoardLink(busy, retries=1).read_mem(0, 4)
    assert len(busy.sent) == 1


def test_board_backend_without_a_serial_port_is_unavailable(tmp_path):
    from tessera.host.runtime import BackendUnavailable
    program, _ = conv_relu_pool(CONFIG, seed=0)
    with pytest.raises(BackendUnavailable, match="cannot open the board's serial port"):
        Runtime(program, backend="board", port=str(tmp_path / "no-such-tty"))
