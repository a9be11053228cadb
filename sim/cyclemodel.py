"""Cycle model: predicts when every instruction starts and ends, and so cycles per layer.

A discrete-event model of the NPU's timing with the same ordering rules as the
emulator and the hardware: fetch streams instruction beats from external
memory into bounded unit queues; an instruction starts when its unit is free,
its wait tokens have arrived and every token queue it signals has room. The
durations follow the RTL's structure (hdl/): a unit's FSM spends one cycle
from start to CHECK and one from CHECK to RUN; CONV issues one MAC-array
cycle per (block, pixel, tap, channel block) and drains its pipeline; LOAD
keeps at most ``mem_outstanding`` reads in flight, so it moves
``mem_outstanding`` beats per ``mem_latency + 1`` cycles (a beat per cycle
once that covers the round trip), and it packs the words of a row that share
a beat into one request; STORE sends one beat per word per cycle; fetch keeps a few instruction beats in flight the same
way. EPILOGUE writes an ACT word per ``lanes // post_lanes`` cycles and a POOL
window takes at least that long (``post_lanes``: requantization lanes shared
by a word's channel groups). With ``bram_buffers`` POST has the ACT buffer's
ports first: a STORE reads nothing while a POOL or a residual EPILOGUE runs,
and an ACT LOAD gets the write port only in the cycles POST does not write
(hdl/buffers.py). Each instruction's ``end`` is the first cycle a dependent
instruction (or the next one on the same unit) can start. Calibrated against the RTL cycle
counter (tests/sim/test_cyclemodel.py, docs/utilization.md).

It never touches data, so it models a ResNet-50 program in about a second.
Every instruction also records how long its unit sat idle before it and what
it waited for (``waited_on``: FETCH, a unit's token, or QUEUE for room in a
token queue it signals); the bench turns that into a loss breakdown.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from tessera.arch import NpuConfig
from tessera.isa import INSTR_BYTES, Buffer, Instruction, Opcode, Unit, mask_units

__all__ = ["CycleModel", "InstrTiming", "ModelResult", "Timing", "predict", "transfer_beats"]


def _log2(n: int) -> int:
    return max(0, (n - 1).bit_length())


@dataclass(frozen=True)
class Timing:
    """Fixed cycle costs of the RTL's units; :meth:`for_config` derives them from the HDL's structure.

    All counts are from a unit's start pulse to the first cycle a dependent can start.
    """
    conv_overhead: int = 15       # FSM to RUN (2) + MAC pipeline drain (8 + log2 lanes) + hand-back (1)
    epilogue_overhead: int = 17   # FSM (2) + engine start + 12-stage pipeline drain + hand-back
    pool_overhead: int = 15       # FSM (2) + engine start + 10-stage pipeline drain + hand-back
    load_overhead: int = 4        # FSM (2) + last response → inflight empty → done → hand-back
    store_overhead: int = 3       # FSM (2) + last beat accepted → done
    sync_cycles: int = 1
    queue_latency: int = 2        # fetch hand-over → queue head → start
    fetch_start: int = 1          # start pulse → first instruction beat requested
    fetch_buffer: int = 0         # an instruction beat's arrival → the first cycle fetch can take it, beyond one
    end_cycles: int = 2           # END decoded → done seen by the cycle counter
    fetch_turn: float = 1.0       # cycles a LOAD loses per burst of instruction beats fetch requests beside it
    run_lead: int = 2             # a unit's start pulse → its RUN state (IDLE → CHECK → RUN): POST's engine, DMA's requests
    epilogue_write: int = 9       # EPILOGUE: generating a word's last channel group → its ACT write
    pool_write: int = 8           # POOL: a window's last tap (+ the bank's groups with post_lanes) → its ACT write

    @classmethod
    def for_config(cls, config: NpuConfig) -> Timing:
        # timing_stages: every unit's CHECK state waits check_cycles for its registered range check,
        # EPILOGUE's and POOL's pipelines get the stages their steps are split into, and a queue head its
        # register (queue_stages), and fetch's instruction beats a register (fetch_buffer).
        chk = config.check_cycles
        epi, pool = sum(config.epilogue_stages.values()), sum(config.pool_stages.values())
        base = cls()
        mac = sum(config.mac_stages.values()) + sum(config.conv_stages.values())
        return cls(conv_overhead=3 + 4 + (2 + _log2(config.lanes)) + mac + 2 + chk,
                   epilogue_overhead=base.epilogue_overhead + chk + epi,
                   pool_overhead=base.pool_overhead + chk + pool,
                   load_overhead=base.load_overhead + chk, store_overhead=base.store_overhead + chk,
                   run_lead=base.run_lead + chk, queue_latency=base.queue_latency + config.queue_stages,
                   fetch_buffer=1 if config.timing_stages and config.bus_bytes <= INSTR_BYTES else 0,
                   epilogue_write=base.epilogue_write + epi, pool_write=base.pool_write + pool)


@dataclass
class InstrTiming:
    pc: int
    op: str
    unit: str
    dispatch: int       # the cycle it could start as far as fetch is concerned
    start: int
    end: int
    busy: int           # cycles of useful work (MAC issues, memory beats, output words)
    macs: int = 0
    index: int = 0      # position in the program
    idle: int = 0       # cycles its unit sat idle between its previous instruction and this one
    waited_on: str = "" # what held the start last: FETCH, LOAD/COMPUTE/POST/STORE (a token), QUEUE, or ""


@dataclass
class ModelResult:
    cycles: int
    macs: int
    instructions: list[InstrTiming] = field(default_factory=list)
    stalls: dict = field(default_factory=dict)
    segments: list = field(default_factory=list)     # cycles of each END-terminated segment (predict)

    def utilization(self, config: NpuConfig) -> float:
        return self.macs / max(1, self.cycles * config.macs_per_cycle)

    @property
    def serial(self) -> int:
        """Cycles if no two instructions overlapped."""
        return sum(i.end - i.start for i in self.instructions)

    @property
    def compute_busy(self) -> float:
        """Fraction of the cycles the MAC array issues (CONV work)."""
        return sum(i.busy for i in self.instructions if i.op == "CONV") / max(1, self.cycles)


def transfer_beats(c: NpuConfig, ins: Instruction) -> int:
    """Bus beats hdl/dma.py requests for a LOAD or STORE (see :meth:`CycleModel.beats`)."""
    wb, B = c.word_bytes(ins.buf), c.bus_bytes
    if wb >= B or ins.op != Opcode.LOAD:
        return ins.rows * ins.cols * max(1, wb // B)
    span = ins.cols * wb
    if ins.rows == 1 or ins.dram_stride % B == 0:
        return ins.rows * ((ins.dram_addr % B + span + B - 1) // B)
    # Row starts move through the beat; their offsets repeat every B // gcd(stride, B) rows.
    period = B // math.gcd(ins.dram_stride % B, B)
    per = [((ins.dram_addr + r * ins.dram_stride) % B + span + B - 1) // B for r in range(min(period, ins.rows))]
    full, rest = divmod(ins.rows, len(per))
    return full * sum(per) + sum(per[:rest])


class CycleModel:
    """Timing of one program on one config."""

    def __init__(self, config: NpuConfig, timing: Timing | None = None):
        self.config = config
        self.timing = timing or Timing.for_config(config)

    # ---- per-instruction work --------------------------------------------------------

    @property
    def post_groups(self) -> int:
        """Cycles POST spends per ACT word it requantizes: ``lanes // post_lanes`` (1 without ``post_lanes``)."""
        return self.config.lanes // self.config.post_lanes_eff

    @property
    def pool_bank_drain(self) -> int:
        """Cycles the POOL bank adds once at the end with shared lanes: its ``post_groups`` (0 without)."""
        G = self.post_groups
        return G if G > 1 else 0

    def beats(self, ins: Instruction) -> int:
        """Memory beats of a LOAD/STORE: one per bus beat of a word; words narrower than the bus are
        packed by LOAD (hdl/dma.py), one request per beat a row touches, and sent one per beat by STORE."""
        return transfer_beats(self.config, ins)

    def read_cycles(self, n: int) -> int:
        """Cycles from the first read request to the last response of ``n`` beats (outstanding-limited)."""
        c = self.config
        o, rt = c.mem_outstanding, c.mem_latency + 1
        if n <= 0:
            return 0
        if o >= rt:
            return n - 1 + c.mem_latency
        return (n - 1) // o * rt + (n - 1) % o + c.mem_latency

    def work(self, ins: Instruction) -> tuple[int, int, int]:
        """(cycles the unit is occupied, of which useful work, MACs)."""
        c, t = self.config, self.timing
        op = ins.op
        if op == Opcode.CONV:
            issues = ins.ob_count * ins.out_h * ins.out_w * ins.k_h * ins.k_w * ins.in_cb
            return t.conv_overhead + issues, issues, issues * c.macs_per_cycle
        if op == Opcode.EPILOGUE:
            # One channel group of post_lanes per cycle (hdl/post.py EpilogueEngine): G cycles per ACT word.
            n = ins.ob_count * ins.pixels * c.words_per_block * self.post_groups
            return t.epilogue_overhead + n, n, 0
        if op == Opcode.POOL:
            # One tap per cycle; with shared lanes the generator holds a window's last tap until the bank has
            # sent the previous pixel's G groups, so a window takes at least G cycles, and the drain counts
            # the bank's G cycles on top of the pipeline (hdl/post.py PoolEngine).
            G = self.post_groups
            n = ins.out_h * ins.out_w * ins.cb * max(ins.k_h * ins.k_w, G)
            return t.pool_overhead + n + self.pool_bank_drain, n, 0
        if op == Opcode.LOAD:
            n = self.beats(ins)
            tail = self.config.act_write_stages if ins.buf == Buffer.ACT else 0
            return t.load_overhead + tail + self.read_cycles(n), n, 0
        if op == Opcode.STORE:
            n = self.beats(ins)
            return t.store_overhead + n, n, 0
        return t.sync_cycles, 0, 0  # SYNC

    def _share_port(self, new: InstrTiming, other: InstrTiming | None, stalls: dict, held: dict,
                    shares: dict) -> None:
        """A LOAD and a STORE overlapping in time share the memory port (hdl/simtop.py: turns when both ask).

        While both run, the LOAD's reads take at most every other cycle (its outstanding-limited rate if
        lower) and the STORE the rest; measured on the RTL, the LOAD loses at least about 1.2 cycles per
        round trip of ``mem_outstanding`` reads. ``other`` started earlier; both ends move. ``held`` maps
        a STORE's index to the ``(from, to)`` windows in which POST holds its ACT reads (``bram_buffers``):
        it sends no beats then, so they do not count as overlap. ``shares`` keeps what each pair was
        charged (STORE index → LOAD index → cycles added to the LOAD and STORE, ``new``, ``other``), so
        a pair charged before POST held the STORE is charged again with the window (:meth:`_hold_store`).
        """
        if other is None or other.end <= new.start:
            return
        c = self.config
        rt = c.mem_latency + 1
        rate = min(1.0, c.mem_outstanding / rt)       # read requests per cycle of a LOAD alone
        share = min(rate, 0.5)                        # ... and beside a STORE
        load, store = (new, other) if new.op == "LOAD" else (other, new)
        charged = shares.setdefault(store.index, {})
        dl, ds = charged.get(load.index, (0, 0))[:2]
        load0, store0 = load.end - dl, store.end - ds
        # A LOAD starting beside a running STORE issues its first burst of reads every other cycle.
        # (With reads outstanding-limited the rate rule below leaves that burst out; a LOAD that streams a beat
        # per cycle loses it in the rate rule already.)
        streams = rate >= 1
        first = min(load.busy, c.mem_outstanding) - 1 if new is load and not streams else 0
        for _ in range(4):                            # the overlap grows as both stretch
            # A streaming LOAD competes only while it requests: its last request goes out a round trip
            # before it ends (many short LOADs beside one long STORE: strided 1×1 layers on arria10).
            reads_end = load.end - c.mem_latency - self.timing.load_overhead if streams else load.end
            both = min(reads_end, store.end)
            overlap = max(0, both - new.start) - sum(max(0, min(both, b) - max(new.start, a))
                                                     for a, b in held.get(store.index, ()))
            store.end = store0 + min(load.busy, round(overlap * share))
            extra = overlap * max(1 - share / rate, 1.2 / rt if rate < 1 else 0)
            load.end = load0 + round(extra) + (first if overlap > first else 0)
        charged[load.index] = (load.end - load0, store.end - store0, new, other)
        stalls["STORE"]["memory"] += store.end - store0 - ds
        stalls["LOAD"]["memory"] += load.end - load0 - dl

    def _hold_store(self, store: InstrTiming, reads: tuple | None, stalls: dict, held: dict, shares: dict) -> None:
        """:meth:`_store_waits_for_post`, then the STORE's port sharing with LOADs charged again without the window."""
        self._store_waits_for_post(store, reads, stalls, held)
        if store.index in held:
            for _, _, new, other in list(shares.get(store.index, {}).values()):
                self._share_port(new, other, stalls, held, shares)

    # ---- bram_buffers: the ACT buffer's ports shared with POST ---------------------------

    def _post_act_use(self, ins: Instruction, rec: InstrTiming) -> tuple:
        """How a POST instruction uses the ACT buffer's shared ports (``bram_buffers``, hdl/buffers.py).

        Returns
        -------
        reads : tuple of int or None
            ``(from, to)`` cycles in which it owns the read copy STORE shares, or None. A POOL and a
            residual EPILOGUE take it for as long as their engine is active, whether or not they read
            in a given cycle (hdl/post.py: ``act_rd_use``).
        writes : tuple of int
            ``(first, period, count)``: its ACT writes, which go ahead of LOAD's. An EPILOGUE writes
            a word per ``lanes // post_lanes`` cycles, with the word's last channel group; a POOL
            one per window, after the pool bank has sent the pixel's groups.
        """
        t, G = self.timing, self.post_groups
        engine = rec.start + t.run_lead
        if ins.op == Opcode.POOL:
            per = max(ins.k_h * ins.k_w, G)
            first = engine + per - 1 + t.pool_write + self.pool_bank_drain
            return (engine, rec.end), (first, per, ins.out_h * ins.out_w * ins.cb)
        words = ins.ob_count * ins.pixels * self.config.words_per_block
        return (engine, rec.end) if ins.residual else None, (engine + G - 1 + t.epilogue_write, G, words)

    def _store_waits_for_post(self, store: InstrTiming, reads: tuple | None, stalls: dict, held: dict) -> None:
        """A STORE reads no ACT word while POST holds the shared read copy (``reads``); it resumes after.

        Words it read before keep the memory port busy from its FIFO: three words of
        ``act_word_bytes // bus_bytes`` beats, of which a STORE that reads a word per cycle
        (one-beat words) saves nothing.
        """
        if reads is None:
            return
        c, t = self.config, self.timing
        first, last = store.start + t.run_lead, store.end - t.store_overhead + t.run_lead
        if reads[0] >= last or reads[1] <= first:
            return
        buffered = 3 * (c.act_word_bytes // c.bus_bytes - 1) if reads[0] > first else 0
        extra = max(0, reads[1] - max(reads[0], first) - buffered)
        store.end += extra
        held.setdefault(store.index, []).append((max(reads[0], first), reads[1]))
        stalls["STORE"]["buffer"] += extra

    def act_load_delay(self, beats: int, first_request: int, writes: list) -> int:
        """Cycles POST's ACT writes add to an ACT LOAD of ``beats`` beats (``bram_buffers``).

        Follows hdl/dma.py and hdl/buffers.py beat by beat: a read request goes out while fewer than
        ``mem_outstanding`` beats are in flight or waiting to be written, its answer arrives
        ``mem_latency`` cycles later and is written in that cycle, unless POST writes then or older
        words wait in the FIFO; a waiting word is written in the first later cycle POST leaves free
        (the FIFO shows a word the cycle after it entered) and frees its read slot only then. So a
        LOAD beside a POST that writes often gets at most the cycles POST leaves, and a slower one
        loses a cycle for each POST write its burst of answers runs into. The delay is that of the
        last write against the same LOAD without POST.

        Parameters
        ----------
        beats : int
            The LOAD's memory beats (one ACT write each: ``bram_buffers`` words are at least a beat).
        first_request : int
            Cycle of its first read request.
        writes : list of tuple of int
            ``(first, period, count)`` of each POST instruction's writes (:meth:`_post_act_use`).
        """
        c = self.config
        o, lat = c.mem_outstanding, c.mem_latency
        rt = lat + 1
        quiet = max(f + p * n for f, p, n in writes)     # after POST's last write nothing waits for it

        def post_write(t):
            """The (first, period, count) of the POST instruction writing in cycle t, or None."""
            return next(((f, p, n) for f, p, n in writes if f <= t < f + p * n and (t - f) % p == 0), None)

        def free_from(t):
            while (hit := post_write(t)) is not None:
                f, p, n = hit
                t = f + p * n if p == 1 else t + 1
            return t

        slots = deque(maxlen=o)                          # write cycles of the last o beats: their read slots
        rq, w, d, same = first_request - 1, -1, 0, 0
        for k in range(beats):
            rq = rq + 1 if k < o else max(rq + 1, slots[0] + 1)
            a = rq + lat
            w = a if w < a and post_write(a) is None else free_from(max(a, w) + 1)
            slots.append(w)
            base_rq = first_request + (k // o * rt + k % o if o < rt else k)
            nd = w - base_rq - lat
            # Once past POST's writes with every slot and the request stream shifted alike, the rest of the
            # LOAD is the undisturbed one shifted: stop there (a long LOAD beside a short EPILOGUE).
            same = same + 1 if nd == d and rq - base_rq == d and a >= quiet else 0
            d = nd
            if same >= o:
                break
        return d

    def _act_load_beside(self, load: InstrTiming, state: list, writes: tuple, stalls: dict) -> None:
        """Add one more POST instruction's ``writes`` to those an ACT LOAD runs beside, and move its end."""
        delay, seen, beats, first = state
        if writes[0] >= load.end or writes[0] + writes[1] * writes[2] <= first + self.config.mem_latency:
            return
        seen.append(writes)
        new = self.act_load_delay(beats, first, seen)
        load.end += new - delay
        stalls["LOAD"]["buffer"] += new - delay
        state[0] = new

    # ---- instruction fetch -------------------------------------------------------------

    def _fetch_shape(self):
        c = self.config
        ib = max(1, INSTR_BYTES // c.bus_bytes)      # beats per instruction
        ipb = max(1, c.bus_bytes // INSTR_BYTES)     # instructions per beat
        return ib, ipb, max(2 * ib, 4)               # beat FIFO depth as in hdl/fetch.py

    # ---- the event model ---------------------------------------------------------------

    def run(self, instructions: list[Instruction]) -> ModelResult:
        c, t = self.config, self.timing
        ib, ipb, fd = self._fetch_shape()
        lat = c.mem_latency
        units = list(Unit)
        queues = {u: deque() for u in units}
        last: dict = {}                             # unit → its latest InstrTiming (ends may still move)

        def unit_free(u):
            return last[u].end if u in last else 0
        started = {u: [] for u in units}            # start times, to know when queue slots free up
        tokens = {(s, d): deque() for s in units for d in units if s != d}   # arrival times
        consumed = {(s, d): [] for s in units for d in units if s != d}     # consumption (start) times
        produced = {(s, d): 0 for s in units for d in units if s != d}
        n = len(instructions)
        results: list[InstrTiming] = []
        stalls = {u.name: {"tokens": 0, "memory": 0, "queue": 0, "buffer": 0} for u in units}
        act_use = None                              # the latest POST instruction's _post_act_use
        act_loads: dict = {}                        # ACT LOAD index → [delay, POST writes, beats, first request]
        held: dict = {}                             # STORE index → windows POST holds its ACT reads
        shares: dict = {}                           # what each LOAD/STORE pair was charged (_share_port)
        dispatched_count = {u: 0 for u in units}
        # Fetch state: beat request/arrival/consumption times (hdl/fetch.py keeps fd beats in flight or queued).
        rq: list[int] = []
        cons: list[int] = []
        fs = {"pc": 0, "handover": t.fetch_start, "finished": None}

        def beat(j: int) -> int:
            """Arrival cycle of instruction beat j, requesting beats as the FIFO frees up."""
            while len(rq) <= j:
                k = len(rq)
                r = t.fetch_start if k == 0 else rq[-1] + 1
                if k >= fd:
                    r = max(r, cons[k - fd] + 1)
                rq.append(r)
            return rq[j] + lat

        def dispatch_more():
            while fs["pc"] < n:
                pc = fs["pc"]
                ins = instructions[pc]
                # Beats of this instruction; each must have been consumed in order.
                if ipb == 1:
                    first = pc * ib
                    tt = fs["handover"]
                    for j in range(first, first + ib):
                        if j < len(cons):
                            tt = cons[j]
                            continue
                        if j >= fd and len(cons) <= j - fd:
                            return
                        tt = max(beat(j) + 1 + t.fetch_buffer, tt + 1)
                        cons.append(tt)
                    ready = tt + 1
                else:
                    j = pc // ipb
                    if j >= len(cons):
                        if j >= fd and len(cons) <= j - fd:
                            return
                        cons.append(max(beat(j) + 1 + t.fetch_buffer, fs["handover"] + 1))
                    ready = max(cons[j] + 1, fs["handover"] + 1)
                if ins.op == Opcode.END:
                    fs["finished"] = ready
                    fs["pc"] = n
                    return
                u = ins.unit
                k = dispatched_count[u]
                if k >= c.queue_depth:
                    # The slot frees when the instruction queue_depth earlier in this unit starts.
                    if len(started[u]) <= k - c.queue_depth:
                        return
                    ready = max(ready, started[u][k - c.queue_depth] + 1)
                fs["handover"] = ready
                queues[u].append((pc, ins, ready + t.queue_latency))
                dispatched_count[u] += 1
                fs["pc"] = pc + 1

        dispatch_more()
        while True:
            best = None
            for u in units:
                if not queues[u]:
                    continue
                ipc, ins, disp = queues[u][0]
                ready = max(unit_free(u), disp)
                tok_t, why = 0, ""
                ok = True
                for s in mask_units(ins.wait):
                    q = tokens[(s, u)]
                    if not q:
                        ok = False
                        break
                    if q[0].end > tok_t:
                        tok_t, why = q[0].end, s.name
                room_t = 0
                for d in mask_units(ins.signal):
                    # Room in (u→d): the token token_depth before ours has been taken (the counter is registered).
                    p = produced[(u, d)] - c.token_depth
                    if p >= 0:
                        if len(consumed[(u, d)]) <= p:
                            ok = False
                            break
                        room_t = max(room_t, consumed[(u, d)][p] + 1)
                if not ok:
                    continue
                if room_t > max(ready, tok_t):
                    tok_t, why = room_t, "QUEUE"
                start = max(ready, tok_t)
                if best is None or (start, ipc) < (best[0], best[1]):
                    best = (start, ipc, u, tok_t, why)
            if best is None:
                if any(queues.values()) or fs["pc"] < n:
                    raise RuntimeError("cycle model: the program deadlocks (the emulator reports where)")
                break
            start, ipc, u, tok_t, why = best
            _, ins, disp = queues[u].popleft()
            for s in mask_units(ins.wait):
                tokens[(s, u)].popleft()
                consumed[(s, u)].append(start)
            occupied, busy, macs = self.work(ins)
            free = unit_free(u)
            if start > free:
                if tok_t >= start and tok_t > disp:
                    waited = why
                    stalls[u.name]["queue" if why == "QUEUE" else "tokens"] += start - max(free, disp)
                else:
                    waited = "FETCH"
            else:
                waited = ""
            rec = InstrTiming(ipc * INSTR_BYTES, ins.op.name, u.name, disp, start, start + occupied,
                              busy, macs, ipc, max(0, start - free), waited)
            if ins.op == Opcode.LOAD:
                # Fetch and LOAD take turns on the read port: each burst of instruction beats that fetch
                # requests while the LOAD runs costs it about a cycle (measured on the RTL).
                end0 = rec.end
                for _ in range(2):
                    bursts = sum(1 for r in rq if start <= r < rec.end) / fd
                    rec.end = end0 + round(bursts * t.fetch_turn)
                stalls["LOAD"]["memory"] += rec.end - end0
            if ins.op in (Opcode.LOAD, Opcode.STORE):
                self._share_port(rec, last.get(Unit.STORE if ins.op == Opcode.LOAD else Unit.LOAD), stalls, held,
                                 shares)
            if c.bram_buffers:
                # POST never waits for the ACT ports; a LOAD or STORE overlapping it does. Only the latest
                # POST instruction and the latest LOAD and STORE can overlap the one placed now.
                if ins.op in (Opcode.EPILOGUE, Opcode.POOL):
                    act_use = self._post_act_use(ins, rec)
                    store, load = last.get(Unit.STORE), last.get(Unit.LOAD)
                    if store is not None and store.end > rec.start:
                        self._hold_store(store, act_use[0], stalls, held, shares)
                    if load is not None and load.end > rec.start and load.index in act_loads:
                        self._act_load_beside(load, act_loads[load.index], act_use[1], stalls)
                elif act_use is not None and ins.op == Opcode.STORE:
                    self._hold_store(rec, act_use[0], stalls, held, shares)
                elif ins.op == Opcode.LOAD and ins.buf == Buffer.ACT:
                    act_loads[rec.index] = [0, [], busy, start + t.run_lead]
                    if act_use is not None:
                        self._act_load_beside(rec, act_loads[rec.index], act_use[1], stalls)
            last[u] = rec
            started[u].append(start)
            for d in mask_units(ins.signal):
                tokens[(u, d)].append(rec)
                produced[(u, d)] += 1
            results.append(rec)
            dispatch_more()
        results.sort(key=lambda r: r.index)
        end = max((r.end for r in results), default=0)
        if fs["finished"] is not None:
            end = max(end, fs["finished"]) + t.end_cycles
        return ModelResult(cycles=end, macs=sum(r.macs for r in results), instructions=results, stalls=stalls)


def predict(program, timing: Timing | None = None) -> ModelResult:
    """Model a :class:`tessera.program.Program` on its own config.

    A program of several END-terminated segments (``Program.starts``) runs each from its own
    start, as the runtime does: cycles, MACs and stalls add up, and each segment's instruction
    times are offset by the cycles of the segments before it. The host ops between segments take
    no NPU cycles; ``segments`` holds each segment's cycles.
    """
    model = CycleModel(program.config, timing)
    starts = list(getattr(program, "starts", None) or [0])
    bounds = [*starts[1:], len(program.instructions)]
    total = None
    for a, b in zip(starts, bounds):
        r = model.run(program.instructions[a:b])
        if total is None:
            total = r
            total.segments = [r.cycles]
            continue
        for t in r.instructions:
            t.index += a
            t.pc += a * INSTR_BYTES
            t.dispatch += total.cycles
            t.start += total.cycles
            t.end += total.cycles
        for u, kinds in r.stalls.items():
            for k, v in kinds.items():
                total.stalls[u][k] += v
        total.instructions += r.instructions
        total.segments.append(r.cycles)
        total.cycles += r.cycles
        total.macs += r.macs
    return total
