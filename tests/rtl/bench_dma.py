"""cocotb bench of hdl/dma.py (LoadDma ``ld_*`` and StoreDma ``st_*`` side by side) against the emulator.

External memory is a Python model with latency (random extra latency and
random request backpressure under ``TB_BACKPRESSURE``); the on-chip buffers
are Python models too. Every buffer lane a LOAD writes and every byte a STORE
writes is matched by key against the emulator after the same instruction, and
must have arrived when the unit reports done.
"""

import cocotb
import numpy as np
from tb import (
    TB,
    BufferModel,
    ReadMemory,
    Unit,
    WriteMemory,
    buffer_word_bytes,
    config,
    golden,
    unpack,
    words_of,
)
from tessera.hdl.common import MemPortSignature
from tessera.hdl.dma import words_per_beat, write_lanes
from tessera.sim.cyclemodel import transfer_beats
from tessera.sim.emulator import Emulator

from tessera.isa import Buffer, ErrorCode, Instruction

DMA_BUFS = (Buffer.ACT, Buffer.WGT, Buffer.PARAM)
PREFIX = {Buffer.ACT: "act_wr", Buffer.WGT: "wgt_wr", Buffer.PARAM: "prm_wr"}


class DmaBench:
    """The emulator, the RTL-side memory and buffer models, and the agents around both DMA units."""

    def __init__(self, dut):
        self.c = c = config()
        self.tb = tb = TB(dut)
        self.prog = c.dram_bytes - 64          # the emulator's two-instruction program lives here
        rng = np.random.default_rng(tb.rng.randrange(1 << 30))
        self.emu = emu = Emulator(c)
        emu.write(0, rng.integers(0, 256, emu.dram.size, dtype=np.uint8))
        emu.buffers[Buffer.ACT][:] = rng.integers(-128, 128, emu.buffers[Buffer.ACT].shape)
        emu.buffers[Buffer.WGT][:] = rng.integers(-128, 128, emu.buffers[Buffer.WGT].shape)
        emu.buffers[Buffer.PARAM][:] = rng.integers(-(1 << 31), 1 << 31, emu.buffers[Buffer.PARAM].shape)
        self.dram = emu.dram.copy()
        self.writes = tb.scoreboard("buffer writes")
        self.stores = tb.scoreboard("memory writes")
        self.requests = self.beats = 0
        self.bufs = {}
        for b in DMA_BUFS:
            p = PREFIX[b]
            words = words_of(c, b, emu.buffers[b])
            self.bufs[b] = tb.add(BufferModel(
                tb, words, c.word_bytes(b) * 8, reads=[(dut.st_act_rd__addr, dut.st_act_rd__data)] if b == Buffer.ACT else [],
                writes=[(getattr(dut, f"ld_{p}__addr"), getattr(dut, f"ld_{p}__data"), getattr(dut, f"ld_{p}__en"),
                         write_lanes(c, b))]
                + [(getattr(dut, f"ld_{p}x__{j}__addr"), getattr(dut, f"ld_{p}x__{j}__data"),
                    getattr(dut, f"ld_{p}x__{j}__en"), 1) for j in range(words_per_beat(c, b) - 1)],
                on_write=lambda a, lane, v, b=b: self.writes.got(v, key=(b.name, a, lane))))
        tb.add(ReadMemory(tb, self.dram, c.bus_bytes, c.mem_latency, dut.ld_mem__req__valid, dut.ld_mem__req__ready,
                          dut.ld_mem__req__payload, dut.ld_mem__resp__valid, dut.ld_mem__resp__payload,
                          on_request=self._request))
        lay = MemPortSignature(c).members["wr_req"].signature.members["payload"].shape

        def split(v):
            f = unpack(lay, v)
            return f["addr"], f["data"], f["strb"]

        def split_counted(v):
            f = split(v)
            self.beats += 1
            return f

        def stored(addr, v):
            self.dram[addr] = v
            self.stores.got(v, key=addr)

        tb.add(WriteMemory(tb, c.bus_bytes, dut.st_mem__req__valid, dut.st_mem__req__ready, dut.st_mem__req__payload,
                           split_counted, stored))
        self.load = tb.add(Unit(tb, "ld_ctl"))
        self.store = tb.add(Unit(tb, "st_ctl"))

    def _request(self, beat):
        self.requests += 1

    async def run(self, ins: Instruction):
        """Execute on the emulator and the RTL; both must agree on the fault or on every written word/byte."""
        c, emu = self.c, self.emu
        want = golden(emu, ins, self.prog)
        wb = c.word_bytes(ins.buf)
        if want is None:
            for r in range(ins.rows):
                for col in range(ins.cols):
                    if ins.op.name == "LOAD":
                        a = ins.buf_addr + r * ins.buf_stride + col
                        raw = buffer_word_bytes(c, ins.buf, emu.buffers[ins.buf][a])
                        n = write_lanes(c, ins.buf)
                        lw = len(raw) // n
                        for lane in range(n):
                            self.writes.expect(int.from_bytes(raw[lane * lw:(lane + 1) * lw], "little"),
                                               key=(ins.buf.name, a, lane))
                    else:
                        start = ins.dram_addr + r * ins.dram_stride + col * wb
                        for i in range(start, start + wb):
                            self.stores.expect(int(emu.dram[i]), key=i)
        requests, beats = self.requests, self.beats
        unit = self.load if ins.op.name == "LOAD" else self.store
        try:
            got = await unit.execute(ins)
        except AssertionError as e:
            raise AssertionError(f"{ins}: {e}") from None
        # done means every write is visible: nothing may still be on its way.
        assert self.writes.pending == 0 and self.stores.pending == 0, f"{ins}: done before its writes"
        if want is None:
            assert got == 0, f"{ins}: RTL error {ErrorCode(got).name}, emulator none"
            # LOAD packs narrow words into shared requests; the cycle model counts the same beats.
            n = self.requests - requests if ins.op.name == "LOAD" else self.beats - beats
            assert n == transfer_beats(c, ins), f"{ins}: {n} memory beats"
        else:
            assert got == want.value, f"{ins}: RTL error {ErrorCode(got).name}, emulator {want.name}"
            assert self.requests == requests, f"{ins}: faulting instruction read memory"
        for b in DMA_BUFS:
            assert self.bufs[b].words == words_of(c, b, emu.buffers[b]), f"{ins}: {b.name} buffer differs"
        assert (self.dram[:self.prog] == emu.dram[:self.prog]).all(), f"{ins}: external memory differs"

    def random_transfer(self, op: str) -> Instruction:
        c, rng = self.c, self.tb.rng
        buf = Buffer.ACT if op == "store" else rng.choice(DMA_BUFS)
        wb, depth = c.word_bytes(buf), c.buffer_words(buf)
        align = min(wb, c.bus_bytes)
        rows = rng.randint(1, 3)
        cols = rng.randint(1, min(4, depth // rows))
        buf_stride = rng.randint(cols, max(cols, depth // rows))
        buf_addr = rng.randint(0, depth - ((rows - 1) * buf_stride + cols))
        # Rows never overlap in memory: the scoreboard keys each byte once.
        dram_stride = cols * wb + align * rng.randint(0, 4)
        span = (rows - 1) * dram_stride + cols * wb
        dram_addr = align * rng.randint(0, (self.prog - span) // align)
        return Instruction(op, buf=buf, dram_addr=dram_addr, dram_stride=dram_stride if rows > 1 else rng.choice([0, 8]),
                           buf_addr=buf_addr, buf_stride=buf_stride, rows=rows, cols=cols)


@cocotb.test()
async def dma_load_store_match_emulator(dut):
    b = DmaBench(dut)
    await b.tb.reset()
    seen = set()
    for i in range(40):
        ins = b.random_transfer("store" if i % 3 == 2 else "load")
        seen.add((ins.op.name, ins.buf.name, ins.rows > 1))
        await b.run(ins)
    assert len(seen) >= 6, seen
    b.tb.finish()


@cocotb.test()
async def dma_faults_stop_without_traffic(dut):
    b = DmaBench(dut)
    c = b.c
    await b.tb.reset()
    ok = b.random_transfer("load")
    faulty = [
        ok.replace(dram_addr=c.dram_bytes - min(c.word_bytes(ok.buf), c.bus_bytes), rows=1, cols=2),  # past the end
        ok.replace(rows=2, dram_stride=0xFFFFFFF8, dram_addr=0),                  # the second row wraps 32 bits
        ok.replace(dram_addr=0xFFFFFFF8, rows=1, cols=1),
        ok.replace(buf=Buffer.ACT, dram_addr=2, rows=1),                          # misaligned
        ok.replace(buf=Buffer.WGT, rows=2, dram_stride=c.wgt_word_bytes + 2),     # misaligned stride
        ok.replace(buf=Buffer.PARAM, buf_addr=c.pbuf_words - 1, rows=1, cols=2),  # past the buffer
        ok.replace(buf=Buffer.ACC, rows=1),                                       # not a LOAD target
        Instruction("store", buf=Buffer.WGT, rows=1, cols=1),                     # only ACT is stored
        Instruction("store", buf=Buffer.ACT, dram_addr=c.dram_bytes - 2 * c.act_word_bytes, rows=1, cols=3),
        Instruction("store", buf=Buffer.ACT, buf_addr=c.abuf_words - 2, rows=2, cols=1, buf_stride=2),
    ]
    codes = set()
    for ins in faulty:
        want = golden(b.emu, ins, b.prog)
        assert want is not None, ins
        codes.add(want)
        await b.run(ins)
        await b.run(b.random_transfer("load"))        # the unit works again after a fault
    assert {ErrorCode.DRAM_RANGE, ErrorCode.MISALIGNED, ErrorCode.BUFFER_RANGE, ErrorCode.BAD_FIELD} <= codes
    b.tb.finish()
