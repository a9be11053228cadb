"""The iCEBreaker board system (sequential NPU + on-chip memory + UART link, hdl/boards/ice40.py) in RTL
simulation, driven by the host's own board backend: the ``icebreaker`` preset as ``tessera synth`` builds it.
"""

import pytest
from tessera.hdl.boards.protocol import Command, LinkStatus, encode_request
from tessera.host.board import BoardLink, LinkError
from tessera.host.runtime import Runtime
from tessera.sim.emulator import NpuError
from tessera.sim.handwritten import conv_relu_pool

from tessera.arch import PRESETS
from tessera.isa import Csr, ErrorCode, Instruction, encode_program

from .programs import board_runs_match

CONFIG = PRESETS["icebreaker"]


@pytest.fixture(scope="module")
def board():
    from tessera.hdl.boards.board_sim import SimBoard
    b = SimBoard(CONFIG, memory="onchip")
    yield b
    status = b.sdram_status()
    b.close()
    assert status["uart_framing_errors"] == 0


def test_icebreaker_board_runs_a_program_like_the_emulator(board):
    program, _ = conv_relu_pool(CONFIG, seed=5)
    assert max(a + len(b) for a, b in program.segments()) <= CONFIG.dram_bytes
    board_runs_match(program, board, seed=5)


def test_icebreaker_board_reports_a_fault_with_its_pc(board):
    link = BoardLink(board, timeout=1e-3, retries=0)
    bad = Instruction("load", buf="act", dram_addr=CONFIG.dram_bytes - 4, rows=1, cols=2)
    link.write_mem(0x200, encode_program([Instruction("sync", unit="post"), bad, Instruction("end")]))
    program, _ = conv_relu_pool(CONFIG, seed=5)
    with Runtime(program, backend="board", transport=board, timeout=1e-3) as rt:
        with pytest.raises(NpuError) as e:
            rt.backend.execute(0x200)
    assert e.value.code == ErrorCode.DRAM_RANGE and e.value.pc == 0x220
    assert link.read_csr(Csr.CONFIG_HASH) == int(CONFIG.hash(), 16) & 0xFFFFFFFF


def test_icebreaker_board_refuses_addresses_beyond_its_memory(board):
    link = BoardLink(board, timeout=1e-3, retries=0)
    link.write_mem(0x100, b"abcd")
    with pytest.raises(LinkError) as e:
        link.exchange(encode_request(Command.READ_MEM, CONFIG.dram_bytes - 4, 8, b""), Command.READ_MEM)
    assert e.value.status == LinkStatus.BAD_ADDRESS
    assert link.read_mem(0x100, 4) == b"abcd"
