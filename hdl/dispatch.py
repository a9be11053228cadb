"""Dispatch: the four instruction queues and the dependency-token counters between units."""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import fifo, memory, wiring
from amaranth.lib.wiring import In, Out

from tessera.arch import NpuConfig
from tessera.isa import INSTR_BITS, ErrorCode, Opcode, Unit

from .common import ADDR_BITS, UnitSignature, delay, register_copies

__all__ = ["Dispatch"]

UNITS = list(Unit)


class _Body:
    """HeadQueue's entries behind the head with ``write_stage``: distributed RAM in four column
    slices, each written with an enable register of its own.

    The queue's count already keeps the body from overflowing, so a write needs no check of its
    own: a ``SyncFIFO`` ANDed its level compare into the one write enable of all ~60 RAM cells, and
    that LUT's net across the die was a routed critical path (13.1 ns, 11.8 of it wire,
    docs/synthesis.md, session 24). Here the write enables are registers of the accepted write,
    one per slice, kept apart as :func:`register_copies` keeps copies (an inverted copy's inverter
    drives its slice alone); a copy that starts as ones writes a slot in the first cycle after
    reset, which the first real write to it overwrites before it is read.
    """

    def __init__(self, m, width: int, depth: int, bounds: list):
        self.depth = depth
        self.w_data, self.r_data = Signal(width), Signal(width)
        self.r_en, self.r_rdy = Signal(), Signal()
        self.w_ptr, self.r_ptr = Signal(range(depth)), Signal(range(depth))
        self.level = Signal(range(depth + 1))
        self.ports = []
        for g in range(4):
            lo, hi = bounds[g], bounds[g + 1]
            mem = memory.Memory(shape=hi - lo, depth=depth, init=[])
            m.submodules[f"body{g}"] = mem
            wp, rp = mem.write_port(), mem.read_port(domain="comb")
            m.d.comb += [wp.addr.eq(self.w_ptr), wp.data.eq(self.w_data[lo:hi]),
                         rp.addr.eq(self.r_ptr), self.r_data[lo:hi].eq(rp.data)]
            self.ports.append(wp)
        m.d.comb += self.r_rdy.eq(self.level != 0)

    def write_enables(self, m, take):
        """Writes ``w_data`` a cycle after each ``take`` (a write accepted into the queue's register)."""
        ens = register_copies(m, take, 4, "body_we")
        wrote = ens[0]
        m.d.comb += [wp.en.eq(en) for wp, en in zip(self.ports, ens)]
        read = self.r_en & self.r_rdy

        def nxt(p):
            return Mux(p == self.depth - 1, 0, p + 1)
        with m.If(wrote):
            m.d.sync += self.w_ptr.eq(nxt(self.w_ptr))
        with m.If(read):
            m.d.sync += self.r_ptr.eq(nxt(self.r_ptr))
        m.d.sync += self.level.eq(self.level + wrote - read)


class HeadQueue(wiring.Component):
    """A unit's instruction queue with its head in a register (``timing_stages``).

    The same ports as :class:`amaranth.lib.fifo.SyncFIFO` and the same capacity, ``depth``
    entries (the emulator's ``queue_depth``: fetch and deadlock detection depend on it), but
    ``r_data`` comes from flip-flops rather than a distributed-RAM read, so the token compares
    that decide a start begin at a register. An entry written to an empty queue reaches the head
    one cycle later than in a ``SyncFIFO`` (``NpuConfig.queue_stages``).

    A read empties the head, which reloads in the next cycle: ``r_rdy`` is low in the cycle after
    a read. Dispatch never starts a unit in two cycles in a row (the unit is active in between),
    so this costs no cycle; what it buys is a head whose clock enable is a register's (``full``),
    not the start decision's, which fanned out to every head bit (docs/synthesis.md, session 18).

    With ``write_stage`` an accepted entry is first registered beside the queue and written into
    its distributed RAM a cycle later (one more cycle to an empty head), and ``w_rdy`` is a
    register: the count of entries (the one in that register too) decides it a cycle ahead. The
    RAM's write data, address and enable then start at registers of the queue's own, not at
    fetch's instruction register and the level compare behind ``w_rdy`` (docs/synthesis.md,
    session 21). ``r_level`` counts the registered entry, so the capacity stays ``depth``.
    That register loads ``w_data`` in every cycle the queue has room (``w_rdy``, a register, so in
    every cycle an entry can be taken; the RAM writes a taken entry at the next clock edge, as the
    register loads again), so it loads apart from the other queues' registers (with one input and
    no enable of their own, yosys made one register of all four, a late fan-out to four queues'
    RAMs; docs/synthesis.md, session 22), and its enable is neither fetch's valid nor the decode
    of fetch's unit (that LUT's fan-out to the register was late in session 24's builds).

    Parameters
    ----------
    width, depth : int
    write_stage : bool
    """

    def __init__(self, width: int, depth: int, write_stage: bool = False):
        self.width, self.depth, self.write_stage = width, depth, write_stage
        super().__init__({"w_data": In(width), "w_en": In(1), "w_rdy": Out(1),
                          "r_data": Out(width), "r_en": In(1), "r_rdy": Out(1), "r_level": Out(range(depth + 1))})

    def elaborate(self, platform):
        m = Module()
        bounds = [self.width * g // 4 for g in range(5)]
        if self.write_stage:
            body = _Body(m, self.width, self.depth, bounds)
        else:
            m.submodules.body = body = fifo.SyncFIFO(width=self.width, depth=self.depth)
        head = Signal(self.width, reset_less=True)     # data: ``full`` says whether it holds an entry
        # The head holds an entry: ``full``, copy 0 of four registers of it. Each copy enables a quarter
        # of the head's bits (240 at the ulx3s presets, spread towards the unit that latches them). The
        # other copies may be wrong in the first cycle after reset, when the queue is empty anyway.
        full_next = Signal()
        copies = register_copies(m, full_next, 4, "full")
        full = copies[0]
        m.d.comb += [full_next.eq(Mux(full, ~self.r_en, body.r_rdy)),
                     body.r_en.eq(~full & body.r_rdy),
                     self.r_data.eq(head), self.r_rdy.eq(full)]
        if self.write_stage:
            take = self.w_en & self.w_rdy
            count = Signal(range(self.depth + 1))
            count_next = count + take - (self.r_en & full)
            ready = Signal(init=1)
            w_data = Signal(self.width, reset_less=True)
            m.d.sync += [count.eq(count_next), ready.eq(count_next < self.depth)]
            with m.If(ready):
                m.d.sync += w_data.eq(self.w_data)
            m.d.comb += [body.w_data.eq(w_data), self.r_level.eq(count), self.w_rdy.eq(ready)]
            body.write_enables(m, take)
        else:
            m.d.comb += [body.w_data.eq(self.w_data), body.w_en.eq(self.w_en & self.w_rdy),
                         self.r_level.eq(body.r_level + full), self.w_rdy.eq(self.r_level < self.depth)]
        for g, copy in enumerate(copies):
            with m.If(~copy):
                m.d.sync += head[bounds[g]:bounds[g + 1]].eq(body.r_data[bounds[g]:bounds[g + 1]])
        return m


class Dispatch(wiring.Component):
    """Queues fetched instructions per unit and starts each unit's head when the tokens allow.

    An instruction starts when every unit in its ``wait`` mask has sent it a
    token and every queue in its ``signal`` mask has room (``token_depth``),
    the emulator's rule. SYNC completes here. ``idle`` reports a finished
    program; ``deadlock`` a state no unit can leave (pc: the oldest queued
    instruction). ``oldest_pc`` names the oldest executing instruction.
    ``hold`` keeps every unit from starting (a fault is waiting to be reported).

    For an instruction trace, ``trace_start`` has a bit per unit that pulses in
    the cycle its queue's head starts (SYNC included), ``trace_end`` one that
    pulses when it completes or faults, and ``trace_pc`` holds each unit's
    current pc from the cycle after its start on (32 bits per unit, Unit order).
    """

    def __init__(self, config: NpuConfig):
        self.config = config
        super().__init__({
            "i_valid": In(1), "i_ready": Out(1), "i_instr": In(INSTR_BITS), "i_unit": In(Unit),
            "i_pc": In(ADDR_BITS), "fetch_finished": In(1), "hold": In(1),
            **{f"u_{u.name.lower()}": Out(UnitSignature()) for u in UNITS},
            "idle": Out(1), "deadlock": Out(1), "deadlock_pc": Out(ADDR_BITS), "oldest_pc": Out(ADDR_BITS),
            "err": Out(1), "err_code": Out(ErrorCode), "err_pc": Out(ADDR_BITS),
            "progress": Out(1), "stall": Out(len(UNITS)),
            "trace_start": Out(len(UNITS)), "trace_end": Out(len(UNITS)), "trace_pc": Out(ADDR_BITS * len(UNITS)),
        })

    def elaborate(self, platform):
        m = Module()
        c = self.config
        ctl = [getattr(self, f"u_{u.name.lower()}") for u in UNITS]
        qs = []
        write_stage = c.queue_stages > 1
        for u in UNITS:
            if c.queue_stages:
                q = HeadQueue(INSTR_BITS + ADDR_BITS, c.queue_depth, write_stage=write_stage)
            else:
                q = fifo.SyncFIFO(width=INSTR_BITS + ADDR_BITS, depth=c.queue_depth)
            m.submodules[f"q_{u.name.lower()}"] = q
            qs.append(q)
        sel = self.i_unit.as_value()
        m.d.comb += self.i_ready.eq(Cat(*[q.w_rdy for q in qs]).bit_select(sel, 1))
        for i, q in enumerate(qs):
            m.d.comb += [q.w_data.eq(Cat(self.i_instr, self.i_pc)), q.w_en.eq(self.i_valid & (sel == i))]

        n = len(UNITS)
        tok = {(s, d): Signal(range(c.token_depth + 1), name=f"tok_{s}_{d}")
               for s in range(n) for d in range(n) if s != d}
        # Whether each count is non-zero and whether it is full, as registers beside it: a head's start
        # then ANDs flags, not the counts' compares (the counts were late endpoints, through that start).
        tok_nz = {k: Signal(name=f"tok_nz_{k[0]}_{k[1]}") for k in tok}
        tok_full = {k: Signal(name=f"tok_full_{k[0]}_{k[1]}") for k in tok}
        active = [Signal(name=f"active{u}") for u in range(n)]
        sync_done = [Signal(name=f"sync_done{u}") for u in range(n)]
        cur_sig = [Signal(4, name=f"cur_sig{u}") for u in range(n)]
        cur_pc = [Signal(ADDR_BITS, name=f"cur_pc{u}") for u in range(n)]
        start = [Signal(name=f"start{u}") for u in range(n)]
        finish = [Signal(name=f"finish{u}") for u in range(n)]
        can = [Signal(name=f"can{u}") for u in range(n)]
        # A unit's fault as dispatch sees it: err_stages registers later (the unit is idle meanwhile, and
        # its queue cannot start it: it is still active here).
        err = [delay(m, x.err, c.err_stages, f"err{u}") for u, x in enumerate(ctl)]
        err_code = [delay(m, x.err_code, c.err_stages, f"err_code{u}", reset_less=True) for u, x in enumerate(ctl)]
        hwait = [q.r_data[4:8] for q in qs]
        hsig = [q.r_data[8:12] for q in qs]
        hpc = [q.r_data[INSTR_BITS:] for q in qs]
        for u in range(n):
            ok = qs[u].r_rdy & ~active[u] & ~self.hold
            for s in range(n):
                if s != u:
                    ok = ok & (~hwait[u][s] | tok_nz[(s, u)])
                    ok = ok & (~hsig[u][s] | ~tok_full[(u, s)])
            is_sync = qs[u].r_data[:4] == Opcode.SYNC.value
            m.d.comb += [can[u].eq(ok), start[u].eq(ok), qs[u].r_en.eq(ok),
                         ctl[u].start.eq(ok & ~is_sync), ctl[u].instr.eq(qs[u].r_data[:INSTR_BITS]),
                         ctl[u].pc.eq(hpc[u]),
                         finish[u].eq(ctl[u].done | sync_done[u])]
            with m.If(start[u]):
                m.d.sync += [active[u].eq(1), cur_sig[u].eq(hsig[u]), cur_pc[u].eq(hpc[u]),
                             sync_done[u].eq(is_sync)]
            with m.Elif(finish[u] | err[u]):
                m.d.sync += [active[u].eq(0), sync_done[u].eq(0)]
            m.d.comb += self.stall[u].eq((qs[u].r_rdy & ~active[u] & ~ok) | ctl[u].stall)
        for (s, d), t in tok.items():
            inc = finish[s] & cur_sig[s][d]
            dec = start[d] & hwait[d][s]
            nxt = Signal.like(t, name=f"tok_next_{s}_{d}")
            m.d.comb += nxt.eq(t + inc - dec)
            m.d.sync += [t.eq(nxt), tok_nz[(s, d)].eq(nxt != 0), tok_full[(s, d)].eq(nxt == c.token_depth)]

        any_active = Cat(*active).any()
        # An entry on its way to a registered head is queued too (the program is not finished).
        queued = Cat(*[q.r_level != 0 for q in qs]).any()
        m.d.comb += self.idle.eq(self.fetch_finished & ~queued & ~any_active)
        stuck = ~any_active & ~Cat(*can).any() & queued & (self.fetch_finished | (self.i_valid & ~self.i_ready))
        # Stuck for 1 + max(1, queue_stages) + pc_stages cycles: with queue_stages an entry can reach its
        # registered head in the queue_stages-th stuck cycle, so from the next on the heads stand still,
        # and deadlock_pc (pc_stages registers below) is theirs once those registers have filled.
        stuck_hist, prev = [], stuck
        for i in range(max(1, c.queue_stages) + c.pc_stages):
            d = Signal(name=f"stuck_d{i + 1}")
            m.d.sync += d.eq(prev)
            stuck_hist.append(d)
            prev = d
        # With timing_stages the verdict is registered, a cycle later (a deadlock stays one): from fetch's
        # decoded unit through the stuck test and the core's error pc into the CSR block was a routed
        # critical path (docs/synthesis.md, session 18).
        m.d.comb += self.deadlock.eq(delay(m, stuck & Cat(*stuck_hist).all(), 1 if c.timing_stages else 0, "deadlock_r"))

        def oldest(valids, pcs, default, name):
            # A balanced tree of compares (two levels for four units, not a chain of four): the lowest
            # valid pc, the earlier unit on a tie, ``default`` when none is valid. With pc_stages each
            # level's result is registered (the compare chains were dispatch's slowest paths).
            items = list(zip(valids, pcs))
            level = 0
            while len(items) > 1:
                nxt = []
                for i in range(0, len(items) - 1, 2):
                    (va, pa), (vb, pb) = items[i], items[i + 1]
                    nxt.append((va | vb, Mux(vb & (~va | (pb < pa)), pb, pa)))
                items = nxt + items[len(items) - len(items) % 2:]
                level += 1
                if level < c.pc_stages:
                    items = [(delay(m, v, 1, f"{name}_v{level}"), delay(m, p, 1, f"{name}_pc{level}", reset_less=True))
                             for v, p in items]
            v, p = items[0]
            return delay(m, Mux(v, p, default), 1 if c.pc_stages else 0, name)

        # The watchdog reads oldest_pc after max(WATCHDOG, pc_stages) cycles without progress (hdl/csr.py),
        # so no unit started or finished in the cycles it was computed from.
        m.d.comb += [self.deadlock_pc.eq(oldest([q.r_rdy for q in qs], hpc, self.i_pc, "deadlock_pc")),
                     self.oldest_pc.eq(oldest(active, cur_pc, self.i_pc, "oldest_pc"))]
        # Unit faults: the first unit (in Unit order) reporting one wins.
        for u in reversed(range(n)):
            with m.If(err[u]):
                m.d.comb += [self.err.eq(1), self.err_code.eq(err_code[u]), self.err_pc.eq(cur_pc[u])]
        m.d.comb += [self.trace_start.eq(Cat(*start)), self.trace_end.eq(Cat(*[f | e for f, e in zip(finish, err)])),
                     self.trace_pc.eq(Cat(*cur_pc))]
        m.d.comb += self.progress.eq((self.i_valid & self.i_ready) | Cat(*start).any() | Cat(*finish).any()
                                     | Cat(*[x.progress for x in ctl]).any())
        return m
