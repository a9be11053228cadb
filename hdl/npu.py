"""The NPU top: ``Npu(config)`` for any :class:`~tessera.arch.NpuConfig`."""

from __future__ import annotations

from amaranth.hdl import ClockDomain, ClockSignal, DomainRenamer, Module, ResetSignal, Signal, unsigned
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from tessera.arch import NpuConfig
from tessera.isa import Buffer, ErrorCode, Unit

from .buffers import acc_buffer, bram_act_buffer, bram_param_buffer, group_memory, wgt_buffer, wgt_groups
from .common import ADDR_BITS, MemPortSignature, acc_groups, delay, word_bits
from .conv import ConvUnit
from .csr import CsrBlock, CsrSignature
from .dispatch import Dispatch
from .dma import LoadDma, StoreDma, write_lanes
from .fetch import Fetch
from .post import PostUnit, prm_groups

__all__ = ["Npu", "NpuCore", "TraceSignature", "collision_free_buffers"]


def TraceSignature(with_cycle: bool = True) -> wiring.Signature:
    """Instruction events for a simulation trace (see :class:`~tessera.hdl.dispatch.Dispatch`).

    Bits of ``start``/``end`` and 32-bit slices of ``pc`` are in :class:`~tessera.isa.Unit`
    order; ``cycle`` is the CYCLES counter. Plain wires: a design that leaves them
    unconnected pays nothing.
    """
    n = len(Unit)
    members = {"start": Out(n), "end": Out(n), "pc": Out(ADDR_BITS * n)}
    if with_cycle:
        members["cycle"] = Out(64)
    return wiring.Signature(members)


class NpuCore(wiring.Component):
    """Fetch, dispatch, the four units, the on-chip buffers and the memory-port arbiter."""

    def __init__(self, config: NpuConfig):
        self.config = c = config
        super().__init__({
            "mem": Out(MemPortSignature(c)),
            "prog_addr": In(ADDR_BITS),
            "done": Out(1), "err": Out(1), "err_code": Out(ErrorCode), "err_pc": Out(ADDR_BITS),
            "oldest_pc": Out(ADDR_BITS), "progress": Out(1), "mac": Out(1), "stall": Out(len(Unit)),
            "trace": Out(TraceSignature(with_cycle=False)),
        })

    def elaborate(self, platform):
        m = Module()
        c = self.config
        m.submodules.fetch = fetch = Fetch(c)
        m.submodules.dispatch = disp = Dispatch(c)
        m.submodules.load = load = LoadDma(c)
        m.submodules.conv = conv = ConvUnit(c)
        m.submodules.post = post = PostUnit(c)
        m.submodules.store = store = StoreDma(c)

        m.d.comb += fetch.prog_addr.eq(self.prog_addr)
        m.d.comb += [disp.i_valid.eq(fetch.o_valid), fetch.o_ready.eq(disp.i_ready), disp.i_instr.eq(fetch.o_instr),
                     disp.i_unit.eq(fetch.o_unit), disp.i_pc.eq(fetch.pc), disp.fetch_finished.eq(fetch.finished)]
        wiring.connect(m, disp.u_load, load.ctl)
        wiring.connect(m, disp.u_compute, conv.ctl)
        wiring.connect(m, disp.u_post, post.ctl)
        wiring.connect(m, disp.u_store, store.ctl)

        # On-chip buffers: one port per user, so units never wait for each other here.
        def buf(b):
            mem = memory.Memory(shape=unsigned(word_bits(c, b)), depth=c.buffer_words(b), init=[])
            m.submodules[f"{b.name.lower()}_buf"] = mem
            return mem

        def rd(mem, user):
            p = mem.read_port()
            m.d.comb += [p.addr.eq(user.addr), user.data.eq(p.data)]

        def wr(mem, user, lanes=1):
            p = mem.write_port(granularity=mem.shape.width // lanes)
            m.d.comb += [p.addr.eq(user.addr), p.data.eq(user.data), p.en.eq(user.en)]

        if acc_groups(c) > 1:
            acc_buffer(m, c, conv, post)
        else:
            acc = buf(Buffer.ACC)
            rd(acc, conv.acc_rd)
            rd(acc, post.acc_rd)
            wr(acc, conv.acc_wr)
        if wgt_groups(c) > 1:
            wgt_buffer(m, c, load, conv)
            wgt = None
        else:
            wgt = buf(Buffer.WGT)
            rd(wgt, conv.wgt_rd)
            wr(wgt, load.wgt_wr, write_lanes(c, Buffer.WGT))
        if c.bram_buffers:
            bram_act_buffer(m, c, load, conv, post, store)
            bram_param_buffer(m, c, load, post)
        else:
            act, prm = buf(Buffer.ACT), buf(Buffer.PARAM)
            rd(act, conv.act_rd)
            rd(act, post.act_rd)
            rd(act, store.act_rd)
            rd(prm, post.prm_rd)
            wr(act, load.act_wr, write_lanes(c, Buffer.ACT))
            wr(act, post.act_wr)
            wr(prm, load.prm_wr, write_lanes(c, Buffer.PARAM))
        # LOAD writes every word of a beat at once when words are narrower than the bus.
        for b, mem in ((Buffer.ACT, None if c.bram_buffers else act), (Buffer.WGT, wgt),
                       (Buffer.PARAM, None if c.bram_buffers else prm)):
            for p in getattr(load, f"{LoadDma.PORTS[b]}x", []):
                wr(mem, p)

        # Memory port: fetch (id 0) and LOAD (id 1) share reads round-robin; STORE owns writes.
        prio = Signal()
        rq = self.mem.rd_req
        take_load = load.mem.req.valid & (prio | ~fetch.mem.req.valid)
        m.d.comb += rq.valid.eq(fetch.mem.req.valid | load.mem.req.valid)
        with m.If(take_load):
            m.d.comb += [rq.payload.addr.eq(load.mem.req.payload), rq.payload.id.eq(1),
                         load.mem.req.ready.eq(rq.ready)]
        with m.Else():
            m.d.comb += [rq.payload.addr.eq(fetch.mem.req.payload), rq.payload.id.eq(0)]
        # Fetch's ready leaves its own valid out (a request it makes is refused only on LOAD's turn), so
        # its request address's enable does not wait for fetch's valid to pass take_load first.
        m.d.comb += fetch.mem.req.ready.eq(rq.ready & ~(prio & load.mem.req.valid))
        with m.If(rq.valid & rq.ready):
            m.d.sync += prio.eq(~take_load)
        rs = self.mem.rd_resp
        m.d.comb += [fetch.mem.resp.valid.eq(rs.valid & (rs.payload.id == 0)), fetch.mem.resp.payload.eq(rs.payload.data),
                     load.mem.resp.valid.eq(rs.valid & (rs.payload.id == 1)), load.mem.resp.payload.eq(rs.payload.data)]
        wiring.connect(m, wiring.flipped(self.mem.wr_req), store.mem.req)

        # Faults. The emulator fetches as far as it can (END or a full queue) before it executes, so a
        # faulty instruction fetch wins over an execution fault of an earlier instruction: a unit's fault
        # waits (the first one is kept) until fetch has finished, is blocked on a full queue, or faults.
        pend, pend_code, pend_pc = Signal(), Signal(ErrorCode), Signal(ADDR_BITS)
        with m.If(disp.err & ~pend):
            m.d.sync += [pend.eq(1), pend_code.eq(disp.err_code), pend_pc.eq(disp.err_pc)]
        settled = fetch.finished | (fetch.o_valid & ~disp.i_ready)
        # Meanwhile no unit starts, so the queues fill as the emulator's do before it executes.
        m.d.comb += disp.hold.eq(pend | disp.err)
        settled_r = delay(m, settled, 1, "settled_r") if c.timing_stages else None
        with m.If(fetch.err):
            m.d.comb += [self.err.eq(1), self.err_code.eq(fetch.err_code), self.err_pc.eq(fetch.pc)]
        if c.timing_stages:
            # The fault waits in pend and is reported from registers only, a cycle later: from fetch's
            # decoded unit through the queue's ready and `settled` into the CSR block's error registers
            # was a routed critical path (docs/synthesis.md, session 18). Settled stays so once a fault
            # holds the queues (nothing starts, so fetch stays finished or blocked).
            with m.Elif(pend & settled_r):
                m.d.comb += [self.err.eq(1), self.err_code.eq(pend_code), self.err_pc.eq(pend_pc)]
        else:
            with m.Elif(pend & settled):
                m.d.comb += [self.err.eq(1), self.err_code.eq(pend_code), self.err_pc.eq(pend_pc)]
            with m.Elif(disp.err & settled):
                m.d.comb += [self.err.eq(1), self.err_code.eq(disp.err_code), self.err_pc.eq(disp.err_pc)]
        with m.Elif(disp.deadlock & ~pend):
            m.d.comb += [self.err.eq(1), self.err_code.eq(ErrorCode.DEADLOCK), self.err_pc.eq(disp.deadlock_pc)]
        m.d.comb += [self.trace.start.eq(disp.trace_start), self.trace.end.eq(disp.trace_end),
                     self.trace.pc.eq(disp.trace_pc)]
        m.d.comb += [self.done.eq(disp.idle), self.oldest_pc.eq(disp.oldest_pc), self.mac.eq(conv.mac),
                     self.stall.eq(disp.stall),
                     self.progress.eq(disp.progress | fetch.mem.resp.valid | (rq.valid & rq.ready))]
        return m


def collision_free_buffers(config: NpuConfig) -> dict[str, int]:
    """The buffer memories (name: write ports) whose reads never meet a write of the same word in one cycle.

    Amaranth's read ports return the old word when a write to it lands in the same cycle; a block
    RAM whose two ports collide returns an undefined word, so yosys builds the old word around it
    (a flip-flop copy of the write data and a multiplexer per read bit: 3,992 LUT4 for the 4,096-bit
    WGT word at 512 MACs, docs/synthesis.md). The NPU never needs it. Between units such a
    collision is a race that dependency tokens order away in every program
    :mod:`tessera.sim.hazards` accepts, and within a unit no pipeline reads a word it is writing in
    that cycle: CONV's accumulate reads a pixel's old ACC word many cycles before that pixel's total
    is written (and a CONV is done only when its writes are), EPILOGUE reads a residual word
    ``depth`` pixels ahead of the output word it writes. ``tessera synth`` marks these ports'
    collisions undefined (hdl/synth.py). Memories with more than one write port keep the rule.
    """
    names = {group_memory("wgt_buf", g): 1 for g in range(wgt_groups(config))}
    names.update({group_memory("acc_buf", g): 1 for g in range(acc_groups(config))})
    if acc_groups(config) > 1:
        names.update({group_memory("acc_buf_post", g): 1 for g in range(acc_groups(config))})
    if config.bram_buffers:
        names.update(act_buf=1, act_buf_post=1)
        names.update({group_memory("prm_buf", g): 1 for g in range(prm_groups(config))})
    else:
        names.update(param_buf=1)
    return names


class Npu(wiring.Component):
    """The whole NPU: CSR block, core (reset between runs) and one external memory port.

    Parameters
    ----------
    config : NpuConfig
        Sizes of everything; its hash is readable in the ``CONFIG_HASH`` CSR.
    reset_buffer : callable, optional
        ``reset_buffer(m, signal, name=...) -> signal``: how the core's reset reaches its flip-flops when
        the NPU is built for a device (e.g. :func:`tessera.hdl.boards.clocks.ecp5_global`);
        simulation (no platform) uses the net itself.

    Besides the CSR bus and the memory port, ``trace`` shows instruction starts
    and ends for simulation (see :func:`TraceSignature`); hardware leaves it open.
    """

    def __init__(self, config: NpuConfig, *, reset_buffer=None):
        self.config = c = config
        self.reset_buffer = reset_buffer
        super().__init__({"csr": In(CsrSignature()), "mem": Out(MemPortSignature(c)), "irq": Out(1), "done": Out(1),
                          "trace": Out(TraceSignature())})

    def elaborate(self, platform):
        m = Module()
        c = self.config
        m.submodules.csr = csr = CsrBlock(c)
        if c.core == "sequential":
            from .seq.core import SeqCore
            core = SeqCore(c)
        else:
            core = NpuCore(c)
        # The core runs in its own domain whose reset is one net (the domain's reset or the CSR
        # block's core_rst), so a board can carry that net to the core's flip-flops on a clock
        # network: at 256 MACs it reaches over 8,000 of them, and through general routing it made
        # thousands of them late (docs/synthesis.md, session 12).
        core_rst = Signal()
        m.d.comb += core_rst.eq(ResetSignal("sync", allow_reset_less=True) | csr.core_rst)
        if self.reset_buffer is not None and platform is not None:
            core_rst = self.reset_buffer(m, core_rst, name="core_rst_glb")
        m.domains.core = cd_core = ClockDomain("core", local=True)
        m.d.comb += [cd_core.clk.eq(ClockSignal("sync")), cd_core.rst.eq(core_rst)]
        m.submodules.core = DomainRenamer("core")(core)
        wiring.connect(m, wiring.flipped(self.csr), csr.bus)
        m.d.comb += [self.irq.eq(csr.irq), self.done.eq(csr.done)]
        m.d.comb += [core.prog_addr.eq(csr.prog_addr), csr.core_done.eq(core.done), csr.core_err.eq(core.err),
                     csr.core_err_code.eq(core.err_code), csr.core_err_pc.eq(core.err_pc),
                     csr.oldest_pc.eq(core.oldest_pc), csr.progress.eq(core.progress), csr.mac.eq(core.mac),
                     csr.stall.eq(core.stall)]
        if hasattr(core, "trace"):
            m.d.comb += [self.trace.start.eq(core.trace.start), self.trace.end.eq(core.trace.end),
                         self.trace.pc.eq(core.trace.pc)]
        m.d.comb += self.trace.cycle.eq(csr.cycles)
        # Reads in flight, counted outside the core's reset: a stopped run waits for their answers.
        inflight = Signal(16)
        rq, rs = core.mem.rd_req, core.mem.rd_resp
        m.d.comb += [self.mem.rd_req.valid.eq(rq.valid & ~csr.core_rst), self.mem.rd_req.payload.eq(rq.payload),
                     rq.ready.eq(self.mem.rd_req.ready & ~csr.core_rst),
                     rs.valid.eq(self.mem.rd_resp.valid & ~csr.core_rst), rs.payload.eq(self.mem.rd_resp.payload)]
        m.d.sync += inflight.eq(inflight + (self.mem.rd_req.valid & self.mem.rd_req.ready) - self.mem.rd_resp.valid)
        m.d.comb += csr.reads_idle.eq(inflight == 0)
        wq = core.mem.wr_req
        m.d.comb += [self.mem.wr_req.valid.eq(wq.valid & ~csr.core_rst), self.mem.wr_req.payload.eq(wq.payload),
                     wq.ready.eq(self.mem.wr_req.ready & ~csr.core_rst)]
        return m
