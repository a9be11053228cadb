"""Block-RAM shaped ACT and PARAM buffers (``NpuConfig.bram_buffers``).

A block RAM (ECP5 DP16KD, iCE40 SB_RAM40_4K, M20K) has two ports. The default buffers of
:class:`~tessera.hdl.npu.NpuCore` give every user its own port (ACT: three readers, two writers),
which synthesis can only build from flip-flops and multiplexers. Here:

- **ACT**: one write port, shared. POST's writes go first (its pipeline cannot wait); LOAD's wait
  in a FIFO of ``mem_outstanding`` entries, which LOAD counts as reads in flight (``backlog``), so
  it never overflows, and LOAD is done only when it is empty. With ``timing_stages`` LOAD's word
  passes a register before the choice (``act_write_stages``), the FIFO's head is a register, and
  the chosen write passes a register on its way to the block RAMs. Two copies take every write:
  CONV reads one alone; POST and STORE share the other's read port, POST first (only while it
  reads: a POOL or an EPILOGUE with a residual), STORE when granted (``act_grant``).
- **PARAM**: one entry per ``post_lanes`` records instead of one per word (see
  :func:`tessera.hdl.post.param_read_shape`): a read is as wide as one cycle of the EPILOGUE
  needs. LOAD's beat-wide slices of a word are scattered into the entries' 32-bit fields; a beat
  never straddles two entries (checked by :class:`~tessera.arch.NpuConfig`).

Results are the same as with the default buffers; cycles differ only when two users want the
same port in the same cycle.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Mux, Signal, unsigned
from amaranth.lib import fifo, memory

from tessera.arch import NpuConfig
from tessera.isa import Buffer

from .common import acc_slices, delay, word_bits
from .dma import wgt_groups, write_lanes
from .post import param_read_shape, prm_groups

__all__ = ["acc_buffer", "bram_act_buffer", "bram_param_buffer", "group_memory", "wgt_groups", "wgt_buffer"]


def group_memory(name: str, g: int) -> str:
    """Name of column group ``g``'s memory of a buffer split into groups (``name`` for group 0, so a
    buffer of one group keeps its plain name); :func:`~tessera.hdl.npu.collision_free_buffers` names
    the same memories."""
    return name if g == 0 else f"{name}_{g}"


def wgt_buffer(m, c: NpuConfig, load, conv):
    """The WGT buffer in :func:`wgt_groups` memories of whole beats side by side; group ``g`` reads
    at CONV's address copy ``g`` and takes LOAD's writes of its beats at LOAD's address copy ``g``."""
    groups = wgt_groups(c)
    width, lanes = word_bits(c, Buffer.WGT), write_lanes(c, Buffer.WGT)
    w, lg = width // groups, lanes // groups
    addrs = [conv.wgt_rd.addr] + list(getattr(conv, "wgt_rd_addrx", []))
    w_addrs = [load.wgt_wr.addr] + list(getattr(load, "wgt_wr_addrx", []))
    assert len(addrs) == len(w_addrs) == groups, (len(addrs), len(w_addrs), groups)
    for g in range(groups):
        mem = memory.Memory(shape=unsigned(w), depth=c.wbuf_words, init=[])
        m.submodules[group_memory("wgt_buf", g)] = mem
        rp = mem.read_port()
        m.d.comb += [rp.addr.eq(addrs[g]), conv.wgt_rd.data[g * w:(g + 1) * w].eq(rp.data)]
        wp = mem.write_port(granularity=w // lg)
        lw = load.wgt_wr
        m.d.comb += [wp.addr.eq(w_addrs[g]), wp.data.eq(lw.data[g * w:(g + 1) * w]), wp.en.eq(lw.en[g * lg:(g + 1) * lg])]


def acc_buffer(m, c: NpuConfig, conv, post):
    """The ACC buffer as :func:`acc_groups` memories side by side for each reader (CONV's accumulate
    read, ``acc_buf``; EPILOGUE's, ``acc_buf_post``), group ``g`` of both at CONV's write address
    copy ``g`` and each reader's read address copy ``g``, each reader's memories written with an
    enable of their own. yosys would make the two readers' copies of one memory itself; written
    out, each copy of a group has its own address registers."""
    wr = conv.acc_wr
    w_addr = [wr.addr, *conv.acc_wr_addrx]
    post_en = getattr(conv, "acc_wr_en_post", wr.en)
    for name, rd, r_addr, w_en in (("acc_buf", conv.acc_rd, [conv.acc_rd.addr, *conv.acc_rd_addrx], wr.en),
                                   ("acc_buf_post", post.acc_rd, [post.acc_rd.addr, *post.acc_rd_addrx], post_en)):
        for g, (lo, hi) in enumerate(acc_slices(c)):
            mem = memory.Memory(shape=unsigned(hi - lo), depth=c.accbuf_words, init=[])
            m.submodules[group_memory(name, g)] = mem
            wp, rp = mem.write_port(), mem.read_port()
            m.d.comb += [wp.addr.eq(w_addr[g]), wp.data.eq(wr.data[lo:hi]), wp.en.eq(w_en),
                         rp.addr.eq(r_addr[g]), rd.data[lo:hi].eq(rp.data)]


def bram_act_buffer(m, c: NpuConfig, load, conv, post, store):
    """The ACT buffer with one write port and two read copies (see the module docstring)."""
    width, depth = word_bits(c, Buffer.ACT), c.abuf_words
    lanes = write_lanes(c, Buffer.ACT)
    # With timing_stages (act_write_stages) LOAD's word is registered here first: it was written
    # straight from the memory response into the FIFO's distributed RAM and the write register, a
    # late path (docs/synthesis.md, session 21). The registered word counts in LOAD's backlog, so
    # LOAD is done only when it has left the register (a LOAD into ACT takes a cycle more). The
    # FIFO's head then comes from a register too (SyncFIFOBuffered): it waits only while POST writes.
    st = c.act_write_stages
    wq = fifo.SyncFIFOBuffered if st else fifo.SyncFIFO
    m.submodules.act_wq = q = wq(width=len(load.act_wr.addr) + width + lanes, depth=c.mem_outstanding)
    lw_addr, lw_data = (delay(m, v, st, f"act_ld_{k}", reset_less=True)
                        for k, v in (("addr", load.act_wr.addr), ("data", load.act_wr.data)))
    lw_en = delay(m, load.act_wr.en, st, "act_ld_en")
    load_wr = lw_en.any()
    if st:
        # LOAD counts the backlog (``q.level + load_wr``) with its reads in flight (hdl/dma.py) from
        # the words that leave it: the register's word written straight to the port, the FIFO's head.
        m.d.comb += load.backlog_leave.eq((load_wr & ~q.w_en) + (q.r_en & q.r_rdy))
    else:
        m.d.comb += load.backlog.eq(q.level)

    post_wr = post.act_wr.en
    addr, dat, en = Signal.like(lw_addr), Signal(width), Signal(lanes)
    with m.If(post_wr):
        m.d.comb += [addr.eq(post.act_wr.addr), dat.eq(post.act_wr.data), en.eq(-1)]
    with m.Elif(q.r_rdy):
        m.d.comb += [addr.eq(q.r_data[:len(addr)]), dat.eq(q.r_data[len(addr):len(addr) + width]),
                     en.eq(q.r_data[len(addr) + width:]), q.r_en.eq(1)]
    with m.Else():
        m.d.comb += [addr.eq(lw_addr), dat.eq(lw_data), en.eq(lw_en)]
    # LOAD's word waits when the port is POST's or older LOAD words wait before it.
    m.d.comb += [q.w_en.eq(load_wr & (post_wr | q.r_rdy)), q.w_data.eq(Cat(lw_addr, lw_data, lw_en))]
    if c.timing_stages:
        # The chosen write reaches the block RAMs a cycle later, from a register: the choice (POST's
        # engines, the FIFO, LOAD) and the enables' fan-out to every block RAM of both copies were
        # session 15's critical path. No word is read that soon after it was written: a reader starts
        # after its writer's done, a token and its CHECK stage; POST reads a residual word before it
        # writes that word.
        addr, dat = delay(m, addr, 1, "act_wr_addr", reset_less=True), delay(m, dat, 1, "act_wr_data", reset_less=True)
        en = delay(m, en, 1, "act_wr_en")

    def copy(name):
        mem = memory.Memory(shape=unsigned(width), depth=depth, init=[])
        m.submodules[name] = mem
        wp = mem.write_port(granularity=width // lanes)
        m.d.comb += [wp.addr.eq(addr), wp.data.eq(dat), wp.en.eq(en)]
        return mem.read_port()

    rc = copy("act_buf")
    m.d.comb += [rc.addr.eq(conv.act_rd.addr), conv.act_rd.data.eq(rc.data)]
    rs = copy("act_buf_post")
    use = post.act_rd_use
    m.d.comb += [rs.addr.eq(Mux(use, post.act_rd.addr, store.act_rd.addr)), store.act_grant.eq(~use),
                 post.act_rd.data.eq(rs.data), store.act_rd.data.eq(rs.data)]


def bram_param_buffer(m, c: NpuConfig, load, post):
    """The PARAM buffer in entries of ``post_lanes`` records, filled from LOAD's beat-wide slices."""
    depth, width = param_read_shape(c)
    E = c.post_lanes_eff
    per_word = c.rows // E                   # entries per PARAM word
    Q = c.bus_bytes // 4                     # 32-bit fields per beat
    R = 3 * E // Q                           # beats per entry
    n = prm_groups(c)                        # column groups, each read at its own address copy
    r_addrs = [post.prm_rd.addr, *getattr(post, "prm_rd_addrx", [])]
    assert len(r_addrs) == n, (len(r_addrs), n)
    gw = width // n
    wps = []
    for g in range(n):
        mem = memory.Memory(shape=unsigned(gw), depth=depth, init=[])
        m.submodules[group_memory("prm_buf", g)] = mem
        rp = mem.read_port()
        m.d.comb += [rp.addr.eq(r_addrs[g]), post.prm_rd.data[g * gw:(g + 1) * gw].eq(rp.data)]
        wps.append(mem.write_port(granularity=32))

    lw = load.prm_wr
    beats = write_lanes(c, Buffer.PARAM)     # one enable bit per beat of the word: at most one is set
    assert beats == per_word * R, (beats, per_word, R)
    entry = Signal(range(max(2, per_word)))
    local = Signal(R)                        # which beat of its entry this one is (one-hot)
    for t in range(per_word):
        hit = lw.en[t * R:(t + 1) * R].any()
        if per_word > 1:
            with m.If(hit):
                m.d.comb += entry.eq(t)
    for r in range(R):
        m.d.comb += local[r].eq(Cat(*[lw.en[t * R + r] for t in range(per_word)]).any())
    beat = lw.data[:8 * c.bus_bytes]         # LOAD repeats the beat over the word
    # Field s of an entry (lane s // 3; bias, mult, shift) is the beat's field s % Q, in beat s // Q.
    addr = Cat(entry[:max(0, per_word.bit_length() - 1)], lw.addr) if per_word > 1 else lw.addr
    data = Cat(*[beat.word_select(s % Q, 32) for s in range(3 * E)])
    en = Cat(*[local[s // Q] for s in range(3 * E)])
    if c.timing_stages:
        # The entry and field decode of LOAD's enables, then a register, then the block RAMs: from
        # LOAD's registered enables through the decode to a far PARAM block RAM's address was 13.2 ns of
        # wire in a routed build (docs/synthesis.md, session 19). No reader can tell: a reader starts
        # after LOAD is done, a token and its CHECK stage (check_cycles).
        addr = delay(m, addr, 1, "prm_wr_addr", reset_less=True)
        data = delay(m, data, 1, "prm_wr_data", reset_less=True)
        en = delay(m, en, 1, "prm_wr_en")
    fields = 3 * E // n
    for g, wp in enumerate(wps):
        m.d.comb += [wp.addr.eq(addr), wp.data.eq(data[g * gw:(g + 1) * gw]), wp.en.eq(en[g * fields:(g + 1) * fields])]
