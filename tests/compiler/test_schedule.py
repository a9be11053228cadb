"""The token scheduler: conflicting accesses are ordered, implied ones are not, queues stay bounded."""

import pytest
from tessera.compiler.schedule import DRAM, Scheduler
from tessera.sim.emulator import Emulator

from tessera.arch import NpuConfig
from tessera.isa import Buffer, Unit
from tessera.program import Program

CFG = NpuConfig(name="t", lanes=8, rows=8, abuf_words=256, wbuf_words=16, accbuf_words=64, pbuf_words=4,
                bus_bytes=8, dram_bytes=1 << 16, queue_depth=2, token_depth=1)


def _load(s, addr, dram=0x1000):
    return s.emit("load", reads=[(DRAM, dram, dram + 8)], writes=[(Buffer.ACT, addr, addr + 1)], buf="act",
                  dram_addr=dram, buf_addr=addr, rows=1, cols=1)


def _store(s, addr, dram=0x2000):
    return s.emit("store", reads=[(Buffer.ACT, addr, addr + 1)], writes=[(DRAM, dram, dram + 8)], buf="act",
                  dram_addr=dram, buf_addr=addr, rows=1, cols=1)


def test_schedule_raw_gets_one_token():
    s = Scheduler(CFG, 0x1000, 0x2000)
    a = _load(s, 0)
    b = _store(s, 0)
    assert s.instrs[a]["signal"] == 1 << Unit.STORE.value
    assert s.instrs[b]["wait"] == 1 << Unit.LOAD.value


def test_schedule_independent_accesses_need_no_token():
    s = Scheduler(CFG, 0x1000, 0x2000)
    _load(s, 0)
    b = _store(s, 5)
    assert s.instrs[b]["wait"] == 0


def test_schedule_war_and_transitive_skip():
    s = Scheduler(CFG, 0x1000, 0x2000)
    _load(s, 0)
    _store(s, 0)                     # STORE waits for LOAD
    c = _load(s, 0)                  # WAR: the second load must wait for the store's read
    assert s.instrs[c]["wait"] == 1 << Unit.STORE.value
    d = _store(s, 0, dram=0x2008)    # RAW on the second load
    assert s.instrs[d]["wait"] == 1 << Unit.LOAD.value


def test_schedule_respects_token_depth_and_runs():
    # Many loads each read by its own store: with one token per queue the scheduler must still emit a
    # program that neither deadlocks nor races on the emulator.
    s = Scheduler(CFG, 0x1000, 0x2000)
    for k in range(6):
        _load(s, k, dram=0x1000 + 8 * k)
    for k in range(6):
        _store(s, k, dram=0x2000 + 8 * k)
    assert s.check_token_depth() <= CFG.token_depth
    prog = Program(config=CFG, instructions=s.instructions(), prog_addr=0x8000)
    emu = Emulator(CFG, check_hazards=True)
    emu.load_program(prog)
    emu.write(0x1000, bytes(range(48)))
    emu.run(0x8000)
    assert emu.read(0x2000, 48) == bytes(range(48))


def test_schedule_check_token_depth_catches_excess():
    s = Scheduler(CFG.replace(token_depth=4), 0x1000, 0x2000)
    for k in range(3):
        _load(s, k, dram=0x1000 + 8 * k)
    for k in range(3):
        _store(s, k)
    s.config = CFG
    with pytest.raises(Exception, match="tokens in flight"):
        s.check_token_depth()


def test_schedule_load_waits_for_a_store_into_the_same_bus_beat():
    # The DMA reads whole beats: a LOAD of bytes [16, 24) shares the beat [16, 32) with a STORE of
    # bytes [24, 32) (4-byte words on a 16-byte bus), which the emulator's hazard check sees as a race.
    cfg = CFG.replace(lanes=4, rows=4, bus_bytes=16)
    s = Scheduler(cfg, 0x1000, 0x2000)
    st = s.emit("store", reads=[(Buffer.ACT, 0, 2)], writes=[(DRAM, 0x1018, 0x1020)], buf="act",
                dram_addr=0x1018, buf_addr=0, rows=1, cols=2)
    ld = s.emit("load", reads=[(DRAM, 0x1010, 0x1018)], writes=[(Buffer.ACT, 8, 10)], buf="act",
                dram_addr=0x1010, buf_addr=8, rows=1, cols=2)
    far = s.emit("load", reads=[(DRAM, 0x1040, 0x1048)], writes=[(Buffer.ACT, 16, 18)], buf="act",
                 dram_addr=0x1040, buf_addr=16, rows=1, cols=2)
    assert s.instrs[ld]["wait"] == 1 << Unit.STORE.value and s.instrs[st]["signal"] == 1 << Unit.LOAD.value
    assert s.instrs[far]["wait"] == 0
