"""The NPU as a board core: on-chip memory in place of the board's DRAM, and a CSR sequencer.

This is the first step of issue 7's board top. It synthesizes the real :class:`tessera.hdl.npu.Npu`
with everything it needs to run: its memory port is served by a block-RAM window (``mem_beats``
beats; addresses wrap modulo its size) and a small sequencer plays the host: it writes PROG_ADDR,
starts the NPU, waits for STATUS to show DONE, counts the run and starts again. The LED shows the
run counter's low bit, or stays lit after an error.

Still to come (see docs/synthesis.md): the SDRAM controller for the ULX3S's 32 MiB and the UART
host link (memory writes/reads and CSR access from ``tessera.host``'s board backend) in place of
the window and the sequencer.
"""

from amaranth.hdl import Module, Signal, unsigned
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import Out

from tessera.isa import Csr, Status

from ..common import log2
from ..csr import CTRL_START
from ..npu import Npu

__all__ = ["NpuBoardCore"]


class NpuBoardCore(wiring.Component):
    """``Npu(config)`` with a block-RAM memory window and a restart loop; ``led`` observes it.

    Parameters
    ----------
    config : NpuConfig
    mem_beats : int
        Depth of the memory window in ``bus_bytes`` beats (a power of two).
    prog_addr : int
        Byte address the sequencer starts every run at.
    init : bytes, optional
        Initial memory contents (e.g. a program image), little-endian beats from address 0.
    """

    led: Out(1)

    def __init__(self, config, *, mem_beats=1024, prog_addr=0, init=b""):
        self._MustUse__silence = True  # a rejected instance is not an unused design
        if mem_beats < 2 or mem_beats & (mem_beats - 1):
            raise ValueError(f"mem_beats={mem_beats} must be a power of two >= 2")
        bb = config.bus_bytes
        if len(init) > mem_beats * bb:
            raise ValueError(f"init of {len(init)} bytes exceeds the {mem_beats * bb}-byte memory window")
        init = bytes(init) + bytes(-len(init) % bb)
        self.init = [int.from_bytes(init[i:i + bb], "little") for i in range(0, len(init), bb)]
        self.config, self.mem_beats, self.prog_addr = config, mem_beats, prog_addr
        self._MustUse__silence = False
        super().__init__()
        self.runs = Signal(16)

    @property
    def macs_per_cycle(self):
        return self.config.macs_per_cycle

    def elaborate(self, platform):
        m = Module()
        c = self.config
        m.submodules.npu = npu = Npu(c)
        m.submodules.mem = mem = memory.Memory(shape=unsigned(8 * c.bus_bytes), depth=self.mem_beats,
                                                init=self.init)
        rd = mem.read_port()
        wr = mem.write_port(granularity=8)
        ab = log2(self.mem_beats)

        # Reads: always accepted, answered in order two cycles later (the port cannot be stalled): the
        # block RAM's read, then a register, which is also the least latency LOAD allows with
        # timing_stages (hdl/dma.py).
        port = npu.mem
        rd_valid, rd_id = Signal(), Signal()
        resp_valid, resp_id, resp_data = Signal(), Signal(), Signal.like(rd.data)
        m.d.comb += [port.rd_req.ready.eq(1), rd.addr.eq(port.rd_req.payload.addr[:ab])]
        m.d.sync += [rd_valid.eq(port.rd_req.valid), rd_id.eq(port.rd_req.payload.id),
                     resp_valid.eq(rd_valid), resp_id.eq(rd_id), resp_data.eq(rd.data)]
        m.d.comb += [port.rd_resp.valid.eq(resp_valid), port.rd_resp.payload.data.eq(resp_data),
                     port.rd_resp.payload.id.eq(resp_id)]
        # Writes: always accepted, byte strobes.
        m.d.comb += [port.wr_req.ready.eq(1), wr.addr.eq(port.wr_req.payload.addr[:ab]),
                     wr.data.eq(port.wr_req.payload.data)]
        with m.If(port.wr_req.valid):
            m.d.comb += wr.en.eq(port.wr_req.payload.strb)

        # The host's part: PROG_ADDR, START, poll STATUS, count, repeat.
        csr = npu.csr
        error_seen = Signal()
        with m.FSM():
            with m.State("PROG"):
                m.d.comb += [csr.addr.eq(Csr.PROG_ADDR), csr.wdata.eq(self.prog_addr), csr.we.eq(1)]
                m.next = "START"
            with m.State("START"):
                m.d.comb += [csr.addr.eq(Csr.CTRL), csr.wdata.eq(CTRL_START), csr.we.eq(1)]
                m.next = "WAIT"
            with m.State("WAIT"):
                m.d.comb += csr.addr.eq(Csr.STATUS)
                with m.If(csr.rdata[Status.DONE.value.bit_length() - 1]):
                    m.d.sync += self.runs.eq(self.runs + 1)
                    with m.If(csr.rdata[Status.ERROR.value.bit_length() - 1]):
                        m.d.sync += error_seen.eq(1)
                    m.next = "PROG"
        m.d.comb += self.led.eq(self.runs[0] | error_seen)
        return m
