"""The board link under Amaranth's Python simulator: its request register, and its answers to reads."""

import numpy as np
import pytest
from amaranth.sim import Simulator
from tessera.arch import PRESETS
from tessera.hdl.boards.link import RequestRegister

CONFIG = PRESETS["ulx3s-85f"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_request_register_passes_every_request_once_in_the_order_taken_under_random_traffic(seed):
    # The SDRAM controller executes requests in the order it gets them; the register must hand them on
    # in the order it took them (a write visible to every read accepted after it), lose none, make
    # none up, and offer its readies from its own state: neither depends on the other master's valid.
    dut = RequestRegister(CONFIG)
    rng = np.random.default_rng(seed)
    taken, passed = [], []
    n_reads, n_writes = 60, 60

    async def bench(ctx):
        reads = [(int(a), int(i)) for a, i in zip(rng.integers(0, 1 << 20, n_reads), rng.integers(0, 2, n_reads))]
        writes = [(int(a), int(d), int(s)) for a, d, s in zip(rng.integers(0, 1 << 20, n_writes),
                                                             rng.integers(0, 1 << 62, n_writes),
                                                             rng.integers(0, 256, n_writes))]
        up, dn = dut.up, dut.down
        for _ in range(2000):
            rd_v = int(bool(reads) and rng.random() < 0.6)
            wr_v = int(bool(writes) and rng.random() < 0.6)
            ready = int(rng.random() < 0.3)
            ctx.set(up.rd_req.valid, rd_v)
            ctx.set(up.wr_req.valid, wr_v)
            if reads:
                ctx.set(up.rd_req.payload, {"addr": reads[0][0], "id": reads[0][1]})
            if writes:
                ctx.set(up.wr_req.payload, {"addr": writes[0][0], "data": writes[0][1], "strb": writes[0][2]})
            ctx.set(dn.rd_req.ready, ready)
            ctx.set(dn.wr_req.ready, ready)
            rd_r, wr_r = ctx.get(up.rd_req.ready), ctx.get(up.wr_req.ready)
            # The readies are the same whatever the masters offer this cycle.
            ctx.set(up.rd_req.valid, 1 - rd_v)
            ctx.set(up.wr_req.valid, 1 - wr_v)
            assert (ctx.get(up.rd_req.ready), ctx.get(up.wr_req.ready)) == (rd_r, wr_r)
            ctx.set(up.rd_req.valid, rd_v)
            ctx.set(up.wr_req.valid, wr_v)
            assert not (rd_r and wr_r), "one request per cycle"
            dn_rd, dn_wr = ctx.get(dn.rd_req.valid), ctx.get(dn.wr_req.valid)
            assert not (dn_rd and dn_wr)
            if dn_rd and ready:
                p = ctx.get(dn.rd_req.payload)
                passed.append(("r", int(p.addr), int(p.id)))
            if dn_wr and ready:
                p = ctx.get(dn.wr_req.payload)
                passed.append(("w", int(p.addr), int(p.data), int(p.strb)))
            if rd_v and rd_r:
                taken.append(("r", *reads.pop(0)))
            if wr_v and wr_r:
                taken.append(("w", *writes.pop(0)))
            await ctx.tick()
            if not reads and not writes and len(passed) == len(taken):
                break
        assert not reads and not writes, "the masters' requests were not all taken"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert len(taken) == n_reads + n_writes
    assert passed == taken


def _memory_byte(a: int) -> int:
    return (a * 7 + 3) & 0xFF


@pytest.mark.parametrize("tx_ready", ["always", "random"])
def test_link_answers_reads_with_the_protocol_frame_and_its_crc(tx_ready):
    # The host's view of four reads (the last past the memory's end): every response byte, CRC included, as encode_response makes it.
    # With the sink always ready the CRC's first byte goes out in the cycle after the last data byte,
    # before a CRC computed a cycle late could have caught up unless TX_CRC waits for it.
    from tessera.hdl.boards.link import Link
    from tessera.hdl.boards.protocol import Command, LinkStatus, encode_request, encode_response
    from tessera.isa import Csr

    c = PRESETS["ulx3s-85f"].replace(bus_bytes=8)
    B = c.bus_bytes
    dut = Link(c, idle_cycles=1000)
    rng = np.random.default_rng(5)
    csr_value = 0x12345678
    top = c.dram_bytes
    # (command, address, length, status, data): the last two end at and one byte past the memory's end.
    reads = [(Command.READ_CSR, Csr.PROG_ADDR.value, 4, LinkStatus.OK, csr_value.to_bytes(4, "little")),
             (Command.READ_MEM, 5, 13, LinkStatus.OK, bytes(_memory_byte(a) for a in range(5, 18))),
             (Command.READ_MEM, top - 8, 8, LinkStatus.OK, bytes(_memory_byte(a) for a in range(top - 8, top))),
             (Command.READ_MEM, top - 7, 8, LinkStatus.BAD_ADDRESS, b"")]
    got = []

    async def bench(ctx):
        pending = []                             # beat addresses requested, answered a cycle later
        for cmd, addr, length, status, data in reads:
            frame = encode_request(cmd, addr, length)
            want = encode_response(cmd, status, data)
            out, i = [], 0
            for _ in range(4000):
                ctx.set(dut.csr.rdata, csr_value if ctx.get(dut.csr.addr) in (Csr.PROG_ADDR, Csr.PROG_ADDR.value) else 0)
                ctx.set(dut.i_stream.valid, i < len(frame))
                ctx.set(dut.i_stream.payload, frame[i] if i < len(frame) else 0)
                ready = tx_ready == "always" or rng.random() < 0.5
                ctx.set(dut.o_stream.ready, ready)
                ctx.set(dut.mem.rd_req.ready, 1)
                ctx.set(dut.mem.rd_resp.valid, bool(pending))
                if pending:
                    beat = pending.pop(0)
                    ctx.set(dut.mem.rd_resp.payload.data,
                            int.from_bytes(bytes(_memory_byte(beat * B + k) for k in range(B)), "little"))
                if i < len(frame) and ctx.get(dut.i_stream.ready):
                    i += 1
                if ctx.get(dut.o_stream.valid) and ready:
                    out.append(ctx.get(dut.o_stream.payload))
                if ctx.get(dut.mem.rd_req.valid):
                    pending.append(ctx.get(dut.mem.rd_req.payload.addr))
                await ctx.tick()
                if len(out) == len(want):
                    break
            got.append((bytes(out), want))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    for out, want in got:
        assert out == want
