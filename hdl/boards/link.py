"""The board's host link: request frames in, memory and CSR accesses, response frames out.

:class:`Link` parses the frames of :mod:`.protocol` from a byte stream (the UART receiver),
executes them on the NPU's CSR bus and on a memory port, and answers on a byte stream (the UART
transmitter). :class:`MemArbiter` lets the link and the NPU share one memory controller: the link
touches memory only while the NPU is idle (a memory command during a run is answered BUSY).

Robustness: a frame with a bad command, length or address, or a bad CRC, is not executed; the
link swallows bytes until the line has been idle for ``idle_cycles`` and then answers with the
error, so the host's whole (possibly garbled) frame is gone before the answer. A frame cut short
is answered TIMEOUT after the same idle time. Bytes outside a frame that are not the sync byte
are ignored.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from tessera.arch import NpuConfig
from tessera.isa import Csr, Status

from ..common import MemPortSignature, log2
from ..csr import CsrSignature
from .protocol import (
    CRC_INIT,
    CRC_POLY,
    CSR_BYTES,
    MAX_PAYLOAD,
    SYNC_REQ,
    SYNC_RESP,
    Command,
    LinkStatus,
)

__all__ = ["Link", "MemArbiter", "RequestRegister", "crc16_next"]


def _crc_taps():
    """For each bit of the next CRC register: the bits of (crc, byte) whose XOR it is (the CRC is linear)."""
    def step(crc, byte):
        x = crc ^ (byte << 8)
        for _ in range(8):
            x = ((x << 1) ^ CRC_POLY if x & 0x8000 else x << 1) & 0xFFFF
        return x
    cols = [step(1 << i, 0) for i in range(16)] + [step(0, 1 << i) for i in range(8)]
    return [[j for j, col in enumerate(cols) if col >> k & 1] for k in range(16)]


_CRC_TAPS = _crc_taps()


def crc16_next(crc, byte):
    """CRC-16/CCITT-FALSE register after one more byte (MSB first): an XOR of input bits per output bit."""
    bits = Cat(crc, byte)
    out = []
    for taps in _CRC_TAPS:
        v = bits[taps[0]]
        for j in taps[1:]:
            v = v ^ bits[j]
        out.append(v)
    return Cat(*out)


class MemArbiter(wiring.Component):
    """Two masters on one memory port: ``link`` while ``sel_link`` is high, else ``npu``.

    ``sel_link`` may change only when neither master has a read in flight: the link selects
    itself only while the NPU is idle (an idle NPU has drained its reads) and finishes its own
    reads before it lets go. The read responses pass a register (one cycle more latency).

    ``sel_link`` takes effect a cycle later, from a register: the link's state decode ran on
    through the choice of ready into the NPU's request enables (fetch's request address, LOAD's
    walker: the routed critical path of a 128-MAC build, docs/synthesis.md, session 22). The
    link's first request then waits a cycle; the NPU is idle whenever the link is selected.
    """

    def __init__(self, config: NpuConfig):
        sig = MemPortSignature(config)
        super().__init__({"npu": In(sig), "link": In(sig), "out": Out(sig), "sel_link": In(1)})

    def elaborate(self, platform):
        m = Module()
        out = self.out
        link = Signal()
        m.d.sync += link.eq(self.sel_link)
        for name in ("rd_req", "wr_req"):
            o = getattr(out, name)
            for master, sel in ((self.link, link), (self.npu, ~link)):
                i = getattr(master, name)
                with m.If(sel):
                    m.d.comb += [o.valid.eq(i.valid), o.payload.eq(i.payload), i.ready.eq(o.ready)]
        rs = out.rd_resp
        # Both masters' responses a cycle later (registers, never stalled): from the controller's read id
        # through LOAD's write logic to a buffer's write address was the routed 128-MAC build's critical
        # path (18.7 ns, docs/synthesis.md, session 14), and from the controller's state into the link's
        # beat and state, late endpoints of session 24's builds. The NPU counts its reads in flight, so
        # it only goes idle, and lets the link take the port, after the register has passed its last
        # response; the link waits for its one read's answer before it lets go.
        m.d.sync += [self.npu.rd_resp.valid.eq(rs.valid & ~link), self.npu.rd_resp.payload.eq(rs.payload),
                     self.link.rd_resp.valid.eq(rs.valid & link), self.link.rd_resp.payload.eq(rs.payload)]
        return m


class RequestRegister(wiring.Component):
    """One memory request, read or write, held in a register between the masters (``up``) and the
    memory controller (``down``).

    Each side sees only registers: ``up``'s readies come from the register's state, ``down``'s
    valids and payloads are the register. From STORE's write queue through the SDRAM controller's
    choice between a read and a write back into the NPU's read arbitration and LOAD's counters was a
    routed critical path of the ULX3S build (15.3 ns, 12.9 of it wire; docs/synthesis.md, session
    19). Requests leave in the order they were taken, so a write is still visible to every read
    accepted after it. While empty the register offers itself to reads and writes in alternate
    cycles, so neither ready depends on the other master's valid. A request takes at least two
    cycles to pass, far less than the controller spends on one. Read responses pass unchanged.
    """

    def __init__(self, config: NpuConfig):
        sig = MemPortSignature(config)
        super().__init__({"up": In(sig), "down": Out(sig), "busy": Out(1)})

    def elaborate(self, platform):
        m = Module()
        up, dn = self.up, self.down
        full, is_wr, turn = Signal(), Signal(), Signal()
        m.d.comb += self.busy.eq(full)
        m.d.comb += [up.rd_req.ready.eq(~full & ~turn), up.wr_req.ready.eq(~full & turn),
                     dn.rd_req.valid.eq(full & ~is_wr), dn.wr_req.valid.eq(full & is_wr),
                     up.rd_resp.valid.eq(dn.rd_resp.valid), up.rd_resp.payload.eq(dn.rd_resp.payload)]
        with m.If(~full):
            # The payloads load in every empty cycle (the one taken is the last loaded), so their clock
            # enable is ``full`` alone, not the masters' valids: that enable's LUT was a late net
            # to every payload bit (docs/synthesis.md, session 21).
            m.d.sync += [turn.eq(~turn), dn.rd_req.payload.eq(up.rd_req.payload),
                         dn.wr_req.payload.eq(up.wr_req.payload)]
            with m.If(~turn & up.rd_req.valid):
                m.d.sync += [full.eq(1), is_wr.eq(0)]
            with m.If(turn & up.wr_req.valid):
                m.d.sync += [full.eq(1), is_wr.eq(1)]
        with m.Elif((dn.rd_req.valid & dn.rd_req.ready) | (dn.wr_req.valid & dn.wr_req.ready)):
            m.d.sync += full.eq(0)
        return m


class Link(wiring.Component):
    """Frame parser and executor of the board link protocol (:mod:`.protocol`).

    Parameters
    ----------
    config : NpuConfig
        ``dram_bytes`` bounds memory addresses; ``bus_bytes`` is the memory port's beat.
    idle_cycles : int
        Line idle time (clock cycles) that ends a broken frame (several byte times; on a board
        milliseconds, since USB serial adapters pause between packets).
    """

    def __init__(self, config: NpuConfig, *, idle_cycles: int):
        if idle_cycles < 1:
            raise ValueError(f"idle_cycles={idle_cycles}: must be at least 1")
        self.config, self.idle_cycles = config, idle_cycles
        super().__init__({"i_stream": In(stream.Signature(8)), "o_stream": Out(stream.Signature(8)),
                          "csr": Out(CsrSignature()), "mem": Out(MemPortSignature(config)), "mem_active": Out(1)})

    def elaborate(self, platform):
        m = Module()
        c = self.config
        B = c.bus_bytes
        lb = log2(B)
        # The FSM's requests leave through a register of its own, so the readies it waits on are that
        # register's state, not the arbiter's and the system's request register's across the die
        # (their readies ran on through this FSM's next state into cur, count, rlen and status: late
        # endpoints of session 24's builds). The port stays the link's while a request is held.
        m.submodules.req = req = RequestRegister(c)
        wiring.connect(m, req.down, wiring.flipped(self.mem))
        mem = req.up
        mem_active = Signal()
        m.d.comb += self.mem_active.eq(mem_active | req.busy)
        m.submodules.buf = buf = memory.Memory(shape=8, depth=MAX_PAYLOAD, init=[])
        bw = buf.write_port()
        br = buf.read_port()

        rx, tx = self.i_stream, self.o_stream
        got = rx.valid & rx.ready
        byte = rx.payload

        cmd = Signal(8)
        hdr = Signal(48)               # addr (32) and length (16), shifted in little-endian
        addr, length = hdr[:32], hdr[32:]
        crc = Signal(16)
        status = Signal(8)
        count = Signal(range(max(MAX_PAYLOAD, 8) + 1))
        data32 = Signal(32)
        idle = Signal(range(self.idle_cycles + 1))
        cur = Signal(32)               # byte address of the current memory byte
        left = Signal(range(MAX_PAYLOAD + 1))
        # A read's beat and a write's beat in registers of their own: as one register its data was a
        # choice between the response and the payload buffer's byte, by the state and the byte lane.
        beat, wbeat = Signal(8 * B), Signal(8 * B)
        strb = Signal(B)
        rlen = Signal(16)
        # Whether the line has been idle for idle_cycles, from a register (the same cycles as the compare
        # on ``idle``, whose LUTs ran on into most states' choices).
        timed_out = Signal()
        # A sent byte enters the CRC a cycle later, from a register: the byte's select (state, count,
        # the beat's lane) straight into the CRC's XORs and its enable was a late path (docs/synthesis.md,
        # session 21). TX_CRC waits for a pending byte.
        tx_byte, tx_crc = Signal(8), Signal()
        m.d.sync += tx_crc.eq(0)
        with m.If(tx_crc):
            m.d.sync += crc.eq(crc16_next(crc, tx_byte))

        with m.If(got):
            m.d.sync += [idle.eq(0), timed_out.eq(0)]
        with m.Elif(~timed_out):
            m.d.sync += [idle.eq(idle + 1), timed_out.eq(idle == self.idle_cycles - 1)]

        # The CSR bus from registers: a write's decode in the CSR block (start, soft reset: the
        # counters' and error registers' resets) then begins at a flip-flop, not at this FSM's
        # state decode (a critical path, docs/synthesis.md session 17). Between commands the bus
        # reads STATUS.
        csr_addr = Signal(Csr, init=Csr.STATUS)
        csr_wdata, csr_we = Signal(32), Signal()
        m.d.comb += [self.csr.addr.eq(csr_addr), self.csr.wdata.eq(csr_wdata), self.csr.we.eq(csr_we)]
        m.d.sync += [csr_addr.eq(Csr.STATUS), csr_we.eq(0)]
        # The read data a cycle later, from a register: the CSR block's read multiplexer runs on from the
        # address register across the die and back, and into the verdicts on it (BUSY, a read's value)
        # it was a routed critical path (csr_addr into the CRC's enable, 12.6 ns, docs/synthesis.md,
        # session 24). The STATUS that EXEC sees is then a cycle older: the NPU only starts from a
        # write of this link, many cycles before, so BUSY can be stale only towards "busy".
        csr_rdata = Signal(32)
        m.d.sync += csr_rdata.eq(self.csr.rdata)
        npu_busy = csr_rdata[Status.BUSY.value.bit_length() - 1]
        is_mem = (cmd == Command.WRITE_MEM) | (cmd == Command.READ_MEM)
        is_csr = (cmd == Command.WRITE_CSR) | (cmd == Command.READ_CSR)
        is_write = (cmd == Command.WRITE_MEM) | (cmd == Command.WRITE_CSR)

        def respond(code, n=0):
            m.d.sync += [status.eq(code), rlen.eq(n), count.eq(0), crc.eq(CRC_INIT)]
            m.next = "TX_HDR"

        end, past_end = Signal(34), Signal()
        m.d.sync += [end.eq(addr + length), past_end.eq(end > c.dram_bytes)]

        with m.FSM():
            with m.State("HUNT"):
                m.d.comb += rx.ready.eq(1)
                with m.If(got & (byte == SYNC_REQ)):
                    m.d.sync += [crc.eq(CRC_INIT), count.eq(0), cmd.eq(0)]
                    m.next = "HDR"
            with m.State("HDR"):
                m.d.comb += rx.ready.eq(1)
                with m.If(got):
                    m.d.sync += [crc.eq(crc16_next(crc, byte)), count.eq(count + 1)]
                    with m.If(count == 0):
                        m.d.sync += cmd.eq(byte)
                    with m.Else():
                        m.d.sync += hdr.eq(Cat(hdr[8:], byte))
                    with m.If(count == 6):
                        m.next = "CHECK_END"
                with m.Elif(timed_out):
                    respond(LinkStatus.TIMEOUT)
            # The memory range check in registered steps: the header's end address (an add), then its
            # compare, then the verdict. In one cycle the add, the compare and the state's choice were a
            # routed critical path of 39 cells (docs/synthesis.md, session 21). Both registers follow the
            # header in every cycle; these two states let them settle on the complete header.
            with m.State("CHECK_END"):
                m.next = "CHECK_RANGE"
            with m.State("CHECK_RANGE"):
                m.next = "CHECK"
            with m.State("CHECK"):
                with m.If(~is_mem & ~is_csr):
                    m.d.sync += status.eq(LinkStatus.BAD_COMMAND)
                    m.next = "DISCARD"
                with m.Elif(Mux(is_mem, (length == 0) | (length > MAX_PAYLOAD), length != CSR_BYTES)):
                    m.d.sync += status.eq(LinkStatus.BAD_LENGTH)
                    m.next = "DISCARD"
                with m.Elif(Mux(is_mem, past_end, addr >= len(Csr))):
                    m.d.sync += status.eq(LinkStatus.BAD_ADDRESS)
                    m.next = "DISCARD"
                with m.Elif(is_write):
                    m.d.sync += count.eq(0)
                    m.next = "PAYLOAD"
                with m.Else():
                    m.d.sync += count.eq(0)
                    m.next = "CRC"
            with m.State("PAYLOAD"):
                m.d.comb += [rx.ready.eq(1), bw.addr.eq(count), bw.data.eq(byte), bw.en.eq(got)]
                with m.If(got):
                    m.d.sync += [crc.eq(crc16_next(crc, byte)), count.eq(count + 1), data32.eq(Cat(data32[8:], byte))]
                    with m.If(count == length - 1):
                        m.d.sync += count.eq(0)
                        m.next = "CRC"
                with m.Elif(timed_out):
                    respond(LinkStatus.TIMEOUT)
            with m.State("CRC"):
                m.d.comb += rx.ready.eq(1)
                nxt = crc16_next(crc, byte)
                with m.If(got):
                    m.d.sync += [crc.eq(nxt), count.eq(count + 1)]
                    with m.If(count == 1):
                        with m.If(nxt == 0):
                            m.next = "EXEC"
                        with m.Else():
                            m.d.sync += status.eq(LinkStatus.BAD_CRC)
                            m.next = "DISCARD"
                with m.Elif(timed_out):
                    respond(LinkStatus.TIMEOUT)
            with m.State("DISCARD"):
                # Swallow the rest of a bad frame; answer once the line is quiet.
                m.d.comb += rx.ready.eq(1)
                with m.If(~got & timed_out):
                    respond(status)
            with m.State("EXEC"), m.Switch(cmd):
                with m.Case(Command.WRITE_CSR):
                    # Written in the next cycle, long before the answer's first byte is out.
                    m.d.sync += [csr_addr.eq(addr), csr_wdata.eq(data32), csr_we.eq(1)]
                    respond(LinkStatus.OK)
                with m.Case(Command.READ_CSR):
                    m.d.sync += csr_addr.eq(addr)
                    m.next = "CSR_WAIT"
                with m.Default():
                    m.d.sync += [cur.eq(addr), left.eq(length), strb.eq(0)]
                    with m.If(npu_busy):
                        respond(LinkStatus.BUSY)
                    with m.Elif(cmd == Command.WRITE_MEM):
                        m.d.sync += count.eq(0)
                        m.next = "WR_FETCH"
                    with m.Else():
                        respond(LinkStatus.OK, length)

            with m.State("CSR_WAIT"):
                # The addressed register is on the bus now and in csr_rdata next cycle.
                m.next = "CSR_READ"
            with m.State("CSR_READ"):
                m.d.sync += data32.eq(csr_rdata)
                respond(LinkStatus.OK, CSR_BYTES)

            # WRITE_MEM: payload bytes into beats with byte strobes, one write per touched beat.
            with m.State("WR_FETCH"):
                m.d.comb += [mem_active.eq(1), br.addr.eq(count)]
                m.next = "WR_PLACE"
            with m.State("WR_PLACE"):
                m.d.comb += mem_active.eq(1)
                lane = cur[:lb]
                m.d.sync += [wbeat.word_select(lane, 8).eq(br.data), strb.bit_select(lane, 1).eq(1)]
                with m.If((lane == B - 1) | (left == 1)):
                    m.next = "WR_ISSUE"
                with m.Else():
                    m.d.sync += [cur.eq(cur + 1), left.eq(left - 1), count.eq(count + 1)]
                    m.next = "WR_FETCH"
            with m.State("WR_ISSUE"):
                wq = mem.wr_req
                m.d.comb += [mem_active.eq(1), wq.valid.eq(1), wq.payload.addr.eq(cur[lb:]),
                             wq.payload.data.eq(wbeat), wq.payload.strb.eq(strb)]
                with m.If(wq.ready):
                    m.d.sync += [strb.eq(0), cur.eq(cur + 1), left.eq(left - 1), count.eq(count + 1)]
                    with m.If(left == 1):
                        respond(LinkStatus.OK)
                    with m.Else():
                        m.next = "WR_FETCH"

            # Response: header, data (CSR value or memory bytes), CRC.
            with m.State("TX_HDR"):
                hdr_bytes = [Const(SYNC_RESP, 8), cmd, status, rlen[:8], rlen[8:]]
                with m.Switch(count):
                    for i, v in enumerate(hdr_bytes):
                        with m.Case(i):
                            m.d.comb += tx.payload.eq(v)
                m.d.comb += tx.valid.eq(1)
                with m.If(tx.ready):
                    m.d.sync += count.eq(count + 1)
                    with m.If(count != 0):
                        m.d.sync += [tx_byte.eq(tx.payload), tx_crc.eq(1)]
                    with m.If(count == len(hdr_bytes) - 1):
                        m.d.sync += count.eq(0)
                        with m.If(rlen == 0):
                            m.next = "TX_CRC"
                        with m.Elif(cmd == Command.READ_CSR):
                            m.next = "TX_CSR"
                        with m.Else():
                            m.next = "RD_REQ"
            with m.State("TX_CSR"):
                m.d.comb += [tx.valid.eq(1), tx.payload.eq(data32.word_select(count[:2], 8))]
                with m.If(tx.ready):
                    m.d.sync += [tx_byte.eq(tx.payload), tx_crc.eq(1), count.eq(count + 1)]
                    with m.If(count == CSR_BYTES - 1):
                        m.d.sync += count.eq(0)
                        m.next = "TX_CRC"
            with m.State("RD_REQ"):
                rq = mem.rd_req
                m.d.comb += [mem_active.eq(1), rq.valid.eq(1), rq.payload.addr.eq(cur[lb:]), rq.payload.id.eq(0)]
                with m.If(rq.ready):
                    m.next = "RD_WAIT"
            with m.State("RD_WAIT"):
                m.d.comb += mem_active.eq(1)
                # Loaded in every waiting cycle (the response's is the last), so the enable is the state's.
                m.d.sync += beat.eq(mem.rd_resp.payload.data)
                with m.If(mem.rd_resp.valid):
                    m.next = "RD_SEND"
            with m.State("RD_SEND"):
                m.d.comb += [mem_active.eq(1), tx.valid.eq(1), tx.payload.eq(beat.word_select(cur[:lb], 8))]
                with m.If(tx.ready):
                    m.d.sync += [tx_byte.eq(tx.payload), tx_crc.eq(1), cur.eq(cur + 1), left.eq(left - 1)]
                    with m.If(left == 1):
                        m.d.sync += count.eq(0)
                        m.next = "TX_CRC"
                    with m.Elif(cur[:lb] == B - 1):
                        m.next = "RD_REQ"
            with m.State("TX_CRC"):
                m.d.comb += [tx.valid.eq(~tx_crc), tx.payload.eq(Mux(count[0], crc[:8], crc[8:]))]
                with m.If(tx.ready & ~tx_crc):
                    m.d.sync += count.eq(count + 1)
                    with m.If(count == 1):
                        m.next = "HUNT"
        return m
