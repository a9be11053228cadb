"""The cycle model's ordering rules: overlap where tokens allow it, serialization where they demand it."""

import numpy as np
import pytest
from tessera.sim.cyclemodel import CycleModel, Timing, predict

from tessera.isa import Instruction, encode_program

from ..conftest import SMALL


def _conv(**kw):
    base = dict(in_h=8, in_w=8, in_cb=1, out_h=8, out_w=8, k_h=3, k_w=3, stride_h=1, stride_w=1, dil_h=1, dil_w=1,
                pad_t=1, pad_l=1, ob_count=1)
    return Instruction("conv", **{**base, **kw})


def _load(addr, **kw):
    return Instruction("load", buf="act", dram_addr=addr, rows=1, cols=64, **kw)


def test_double_buffered_load_overlaps_compute():
    m = CycleModel(SMALL, Timing())
    prog = [_load(0x1000, signal=["compute"]), _load(0x2000, buf_addr=64, signal=["compute"]),
            _conv(wait=["load"]), _conv(in_addr=64, wait=["load"]), Instruction("end")]
    r = m.run(prog)
    load2, conv1 = r.instructions[1], r.instructions[2]
    assert load2.start < conv1.end, "the second tile's load must run while the first tile computes"
    conv_cycles = 8 * 8 * 9
    assert r.cycles < 2 * conv_cycles + load2.end  # strictly less than fully serial


def test_token_serializes_consumer_after_producer():
    m = CycleModel(SMALL, Timing())
    r = m.run([_load(0x1000, signal=["compute"]), _conv(wait=["load"]), Instruction("end")])
    load, conv = r.instructions
    assert conv.start >= load.end
    assert r.macs == 8 * 8 * 9 * SMALL.macs_per_cycle
    assert 0 < r.utilization(SMALL) < 1


def test_store_overlapping_a_load_loses_port_cycles():
    # One memory port: a STORE running beside a LOAD gives up cycles to its read requests, and both end later.
    m = CycleModel(SMALL)
    store = Instruction("store", buf="act", dram_addr=0x8000, rows=1, cols=64)
    alone_load = m.run([_load(0x1000), Instruction("end")]).instructions[0]
    alone_store = m.run([store, Instruction("end")]).instructions[0]
    load, st = m.run([_load(0x1000), store, Instruction("end")]).instructions
    assert st.end - st.start > alone_store.end - alone_store.start
    assert load.end - load.start > alone_load.end - alone_load.start


def test_streaming_load_beside_a_store_loses_only_its_request_cycles():
    # A LOAD that streams a beat per cycle (reads in flight cover the round trip) competes for the port
    # only while it requests: beside a long STORE, a short LOAD's latency tail costs nothing more
    # (arria10's strided 1x1 layers: many 28-beat LOADs beside one 896-beat STORE, measured on the RTL).
    c = SMALL.replace(mem_latency=40, mem_outstanding=48)
    m = CycleModel(c)
    store = Instruction("store", buf="act", dram_addr=0x80000, rows=1, cols=896)
    short = _load(0x1000).replace(cols=28 * c.bus_bytes // c.act_word_bytes)
    alone = m.run([short, Instruction("end")]).instructions[0]
    st, *loads = m.run([store, *[short.replace(dram_addr=0x1000 + 0x1000 * k) for k in range(6)],
                        Instruction("end")]).instructions[:7]
    assert alone.busy == 28
    for ld in loads:
        assert ld.end < st.end
        # every other request cycle goes to the STORE: at most one lost cycle per request
        assert alone.end - alone.start < ld.end - ld.start <= alone.end - alone.start + ld.busy + 1


def test_load_rate_is_limited_by_outstanding_reads():
    # hdl/dma.py keeps mem_outstanding reads in flight: beats arrive in groups of that many per round trip.
    c = SMALL.replace(mem_latency=20, mem_outstanding=4)
    m = CycleModel(c)
    words = 400 * c.bus_bytes // c.act_word_bytes
    occupied, beats, _ = m.work(_load(0x1000).replace(cols=words))
    assert beats == 400                         # ACT words narrower than the bus share a beat's request
    assert occupied >= 400 / 4 * 21


def test_dma_packs_narrow_words_per_beat_a_row_touches():
    c = SMALL.replace(mem_latency=20, mem_outstanding=32)
    m = CycleModel(c)
    k = c.bus_bytes // c.act_word_bytes
    assert k > 1
    # A row that starts one word into a beat and ends one word into another touches three beats.
    ins = _load(0x1000 + c.act_word_bytes).replace(cols=2 * k - 2 + 2, rows=1)
    assert m.beats(ins) == 3
    # Rows whose starts move through the beat: each row counted on its own.
    ins = ins.replace(rows=5, dram_stride=(2 * k + 1) * c.act_word_bytes, cols=k)
    want = sum(((ins.dram_addr + r * ins.dram_stride) % c.bus_bytes + k * c.act_word_bytes + c.bus_bytes - 1)
               // c.bus_bytes for r in range(5))
    assert m.beats(ins) == want
    # STORE sends a beat per word.
    store = Instruction("store", buf="act", dram_addr=ins.dram_addr, dram_stride=ins.dram_stride, rows=5, cols=k)
    assert m.beats(store) == 5 * k


def test_epilogue_takes_lanes_over_post_lanes_cycles_per_word():
    # hdl/post.py: with post_lanes below lanes the EPILOGUE requantizes one channel group per cycle and
    # writes the ACT word with its last group, so each output word costs lanes // post_lanes cycles.
    epi = Instruction("epilogue", acc_addr=0, pixels=50, ob_count=3, param_addr=0, out_addr=0,
                      out_stride=SMALL.words_per_block * 3)
    words = 3 * 50 * SMALL.words_per_block
    full = CycleModel(SMALL).run([epi, Instruction("end")]).instructions[0]
    for post_lanes, groups in ((2, 2), (1, 4)):
        shared = CycleModel(SMALL.replace(post_lanes=post_lanes)).run([epi, Instruction("end")]).instructions[0]
        assert shared.end - shared.start == full.end - full.start + (groups - 1) * words


def test_pool_window_takes_at_least_lanes_over_post_lanes_cycles():
    # A window shorter than lanes // post_lanes taps waits for the bank to send the previous pixel's groups;
    # a longer one runs a tap per cycle as before. The drain adds the bank's groups once.
    c = SMALL.replace(post_lanes=1)                 # 4 groups per word
    m, m0 = CycleModel(c), CycleModel(SMALL)

    def pool(k):
        return Instruction("pool", mode="max", in_addr=0, in_h=6, in_w=6, cb=2, out_addr=100, out_h=6 - k + 1,
                           out_w=6 - k + 1, k_h=k, k_w=k, stride_h=1, stride_w=1)
    for k, per_window in ((1, 4), (2, 4), (3, 9)):
        windows = (6 - k + 1) ** 2 * 2
        occupied, _, _ = m.work(pool(k))
        assert occupied == m0.work(pool(k))[0] - windows * k * k + windows * per_window + 4


def _post_beside_dma():
    from ..rtl.test_npu_bram import CONFIG
    epi = Instruction("epilogue", acc_addr=0, pixels=200, ob_count=1, param_addr=0, out_addr=1000, out_stride=2)
    pool = Instruction("pool", mode="max", in_addr=1500, in_h=10, in_w=10, cb=2, out_addr=1000, out_h=8, out_w=8,
                       k_h=3, k_w=3, stride_h=1, stride_w=1)
    return CONFIG, epi, pool


def test_store_reads_nothing_while_post_holds_the_shared_act_copy():
    # bram_buffers (hdl/buffers.py): STORE reads ACT through the copy POST reads first, and POST keeps it for as
    # long as a POOL or a residual EPILOGUE runs; a plain EPILOGUE reads no ACT and leaves STORE alone.
    c, epi, pool = _post_beside_dma()
    m = CycleModel(c)
    store = Instruction("store", buf="act", dram_addr=0x40000, rows=1, cols=300)
    alone = m.run([store, Instruction("end")]).instructions[0]
    for post, holds in ((pool, True), (epi.replace(residual=1, res_addr=1500, res_stride=2), True), (epi, False)):
        st, p = m.run([store, post, Instruction("end")]).instructions
        assert p.start < st.end
        held = p.end - p.start - m.timing.run_lead if holds else 0
        assert st.end - st.start == alone.end - alone.start + held
    # Without bram_buffers STORE has a read port of its own.
    st, _ = CycleModel(c.replace(bram_buffers=False)).run([store, pool, Instruction("end")]).instructions
    assert st.end - st.start == alone.end - alone.start


def test_store_held_by_post_leaves_the_memory_port_to_a_load():
    # While POST holds the ACT reads a STORE sends no beats, so a LOAD then has the memory port to itself,
    # whether POST took the reads before the LOAD started or after STORE and LOAD had begun sharing the port
    # (ResNet-50's res2 on ulx3s-85f: residual EPILOGUEs beside STOREs and LOADs, 15 % slow without this).
    c, epi, _ = _post_beside_dma()
    res = epi.replace(residual=1, res_addr=1500, res_stride=2)
    m = CycleModel(c)
    store = Instruction("store", buf="act", dram_addr=0x40000, rows=1, cols=300)
    load = Instruction("load", buf="wgt", dram_addr=0x10000, rows=1, cols=18)
    alone = m.run([load, Instruction("end")]).instructions[0]
    shared = m.run([store, load, Instruction("end")]).instructions[1]
    assert shared.end - shared.start > 1.5 * (alone.end - alone.start)
    for prog in ([res, store, load], [store, load, res]):
        ld = next(t for t in m.run([*prog, Instruction("end")]).instructions if t.op == "LOAD")
        # a few cycles of sharing before POST's engine takes the reads
        assert alone.end - alone.start <= ld.end - ld.start <= alone.end - alone.start + 4


def test_act_load_beside_post_gets_the_write_cycles_post_leaves():
    # POST writes ACT first; LOAD's words wait in a FIFO holding their read slots. An EPILOGUE of 2 channel
    # groups per word writes every other cycle, so an ACT LOAD beside it moves at most a beat per 2 cycles
    # (RTL: 610 cycles for 300 beats that take 349 alone). A WGT LOAD writes another buffer.
    c, epi, _ = _post_beside_dma()
    m = CycleModel(c)
    act = Instruction("load", buf="act", dram_addr=0x10000, rows=1, cols=300)
    wgt = Instruction("load", buf="wgt", dram_addr=0x10000, rows=1, cols=300 * c.act_word_bytes // c.wgt_word_bytes)
    for load, slowed in ((act, True), (wgt, False)):
        alone = m.run([load, Instruction("end")]).instructions[0]
        ld, p = m.run([load, epi, Instruction("end")]).instructions
        assert ld.end < p.end
        if slowed:
            assert 2 * 300 <= ld.end - ld.start <= 2 * 300 + c.mem_latency + m.timing.load_overhead
        else:
            assert ld.end - ld.start == alone.end - alone.start


def test_act_load_answer_waits_for_each_post_write_it_meets():
    # Beat by beat (hdl/dma.py, hdl/buffers.py): an answer arriving in a cycle POST writes goes to the FIFO and
    # is written a cycle later, and the answers behind it follow it through the FIFO.
    from tessera.arch import PRESETS
    c = PRESETS["ulx3s-85f"]                    # 8 reads in flight against a 25-cycle round trip
    m = CycleModel(c)
    lat = c.mem_latency
    # One beat, requested at 100, answered at 100 + lat: delayed only if POST writes in exactly that cycle.
    for first, delay in ((100 + lat, 1), (100 + lat - 1, 0), (100 + lat + 1, 0)):
        assert m.act_load_delay(1, 100, [(first, 4, 10)]) == delay
    # Four answers in a row meet one POST write of every fourth cycle, or two when the first answer
    # meets one (the delayed burst reaches the next).
    assert [m.act_load_delay(4, 100, [(100 + lat + k, 4, 10)]) for k in range(4)] == [2, 1, 1, 1]
    # POST writing every cycle (one channel group per word) holds every answer until it is done.
    assert m.act_load_delay(4, 100, [(90, 1, 200)]) == 290 - (100 + lat)
    # Writes that end before the first answer cost nothing.
    assert m.act_load_delay(50, 100, [(0, 2, 50)]) == 0


def test_deadlocking_program_is_reported():
    m = CycleModel(SMALL, Timing())
    with pytest.raises(RuntimeError, match="deadlock"):
        m.run([Instruction("sync", unit="compute", wait=["load"]), Instruction("end")])


def test_work_counts_mac_issues_per_conv():
    m = CycleModel(SMALL, Timing())
    occupied, issues, macs = m.work(_conv(ob_count=2))
    assert issues == 2 * 64 * 9 and macs == issues * SMALL.macs_per_cycle
    assert occupied > issues


# ---- against the RTL cycle counter -----------------------------------------------------------------
# One Verilator build per config (tests/rtl share those of their configs); each program runs in well under a
# second. The configs: the RTL tests' (tests/rtl/test_npu.py); that of tests/rtl/test_npu_bram.py, which has
# ulx3s-85f's post_lanes (EPILOGUE/POOL requantizing half a word per cycle) and bram_buffers (POST first on the
# ACT ports, so LOAD and STORE wait for it); and the ulx3s-85f preset itself.

RTL_TOLERANCE = 0.03


def _rtl_config(name):
    from tessera.arch import PRESETS

    from ..rtl.test_npu import CONFIG
    from ..rtl.test_npu_bram import CONFIG as BRAM
    return {"rtl-test": CONFIG, "rtl-test-bram": BRAM, "ulx3s-85f": PRESETS["ulx3s-85f"]}[name]


@pytest.fixture(scope="module", params=["rtl-test", "rtl-test-bram", "ulx3s-85f"])
def rtl(request):
    """A running RTL simulation of one of the configs (tests choose some with ``indirect`` parametrization)."""
    from tessera.sim.rtl import RtlSim
    sim = RtlSim(_rtl_config(request.param), opt="-O0")
    yield sim
    sim.close()


def _rtl_cycles(sim, prog, segs=(), at=0):
    for a, b in [(at, encode_program(prog))] + list(segs):
        sim.write(a, b)
    regs = sim.run(at, timeout_cycles=2_000_000)
    assert not regs["timeout"] and regs["ERROR"] == 0
    return regs["cycles"]


def _programs(c):
    from ..rtl.programs import ACT, OUT, conv_layer, dma_pattern, pool_layer
    rng = np.random.default_rng(4)
    yield "conv3x3", *conv_layer(c, rng, in_h=10, in_w=9, in_cb=3, ob=2)[:2]
    yield "conv1x1_residual", *conv_layer(c, rng, in_h=8, in_w=8, in_cb=4, ob=2, k_h=1, k_w=1, pad=(0, 0),
                                          residual=True)[:2]
    yield "conv_stride2_accumulate", *conv_layer(c, rng, in_h=9, in_w=9, stride=(2, 2), accumulate=True)[:2]
    yield "maxpool", *pool_layer(c, rng, in_h=10, in_w=10, cb=3)[:2]
    yield "dma_strided", *dma_pattern(c, rng, rows=6, cols=20)[:2]
    yield "load_beside_store", [Instruction("load", buf="wgt", dram_addr=ACT, rows=1, cols=40),
                                Instruction("store", buf="act", dram_addr=OUT, buf_addr=64, rows=1, cols=300),
                                Instruction("end")], [(ACT, bytes(40 * c.wgt_word_bytes))]


@pytest.mark.parametrize("name", ["conv3x3", "conv1x1_residual", "conv_stride2_accumulate", "maxpool",
                                  "dma_strided", "load_beside_store"])
def test_model_matches_rtl_cycles_on_small_programs(rtl, name):
    prog, segs = next((p, s) for n, p, s in _programs(rtl.config) if n == name)
    want = _rtl_cycles(rtl, prog, segs)
    got = CycleModel(rtl.config).run(prog).cycles
    assert abs(got - want) <= RTL_TOLERANCE * want, f"model {got} vs RTL {want} cycles"


@pytest.mark.parametrize("rtl", [
    "rtl-test",
    # Not the shared-port modelling: the same layers miss by as much with post_lanes and bram_buffers off.
    pytest.param("rtl-test-bram", marks=pytest.mark.xfail(strict=True, reason=(
        "fetch beside LOAD: on this 8-byte bus an instruction is 4 beats and a LOAD nearly streams (8 reads "
        "per 9-cycle round trip), so each beat fetch takes costs the LOAD about a cycle, not the model's "
        "fetch_turn per burst; layers of many short LOADs come out 5-20 % fast"))),
    "ulx3s-85f"], indirect=True)
def test_model_matches_rtl_per_layer_of_a_compiled_network(rtl):
    # Per layer: both run the program cut after each layer's last instruction (+END); the cycle count
    # is that layer's completion, and the difference to the previous cut the layer's cycles (the bench's
    # definition, up to the later layers' prefetches a cut leaves out).
    from tessera.compiler.driver import compile_model

    from tessera.program import Program

    from ..compiler.netgen import quantize, resnet
    c = rtl.config
    prog, _ = compile_model(quantize(resnet(in_shape=(1, 3, 16, 16), widths=(8, 16), bottleneck=True)), c)
    prev_rtl = prev_model = 0
    for d in prog.meta["layers"]:
        last = max(b for _, b in d["instructions"])
        cut = Program(c, prog.instructions[:last + 1] + [Instruction("end")], prog.constants, prog.prog_addr,
                      prog.const_addr)
        done_rtl = _rtl_cycles(rtl, cut.instructions, cut.segments()[1:], prog.prog_addr)
        done_model = predict(cut).cycles
        layer_rtl, layer_model = done_rtl - prev_rtl, done_model - prev_model
        # 3 % of the layer, or a memory round trip on layers of a few hundred cycles
        assert abs(layer_model - layer_rtl) <= max(RTL_TOLERANCE * layer_rtl, 16), \
            f"{d['name']}: model {layer_model} vs RTL {layer_rtl} cycles"
        prev_rtl, prev_model = done_rtl, done_model
    total = _rtl_cycles(rtl, prog.instructions, prog.segments()[1:], prog.prog_addr)
    assert abs(predict(prog).cycles - total) <= RTL_TOLERANCE * total


@pytest.mark.parametrize("rtl", ["rtl-test"], indirect=True)
def test_bench_rtl_backend_layers_match_the_model(rtl):
    # The rtl backend's layer cycles come from the RTL's instruction trace, the model's from its own
    # timings; both use the same span definition, so they must agree layer by layer.
    from tessera.compiler.driver import compile_model
    from tessera.sim.bench import bench_program

    from ..compiler.netgen import quantize, resnet
    c = rtl.config
    prog, _ = compile_model(quantize(resnet(in_shape=(1, 3, 16, 16), widths=(8, 16), bottleneck=True)), c)
    res, model = bench_program(prog, "rtl", sim=rtl), bench_program(prog, "model")
    assert res.backend == "rtl" and abs(res.model_cycles - res.cycles) <= RTL_TOLERANCE * res.cycles
    if not res.layers:
        pytest.skip("this RtlBackend gives no instruction trace: totals only")
    assert [L.name for L in res.layers] == [L.name for L in model.layers]
    assert sum(L.cycles for L in res.layers) <= res.cycles
    for r, m in zip(res.layers, model.layers):
        assert abs(m.cycles - r.cycles) <= max(RTL_TOLERANCE * r.cycles, 16), \
            f"{r.name}: model {m.cycles} vs RTL {r.cycles} cycles"


@pytest.mark.parametrize("program", ["conv_residual", "pool_avg", "dma"])
def test_model_matches_rtl_cost_of_timing_stages(program):
    # timing_stages adds a few cycles per instruction, inside the 3 % the RTL comparisons allow; the model must
    # add exactly what the RTL adds (Amaranth's simulator: the same HDL, no Verilator build).
    from ..hdl.pysim import run_npu
    from ..rtl.programs import conv_layer, dma_pattern, pool_layer
    from ..rtl.test_npu import CONFIG
    make = {"conv_residual": lambda c, rng: conv_layer(c, rng, ob=2, in_cb=2, residual=True, k_h=1, k_w=1,
                                                       pad=(0, 0)),
            "pool_avg": lambda c, rng: pool_layer(c, rng, mode="avg", k=(3, 3), stride=(1, 1), pad=(1, 1), in_h=4,
                                                  in_w=4),
            "dma": lambda c, rng: dma_pattern(c, rng, offset=1)}[program]
    cycles = {}
    for timed in (False, True):
        c = CONFIG.replace(timing_stages=timed, post_lanes=2)
        prog, segs, _ = make(c, np.random.default_rng(5))
        dram = np.zeros(c.dram_bytes, np.uint8)
        for a, b in [(0, encode_program(prog))] + segs:
            dram[a:a + len(b)] = np.frombuffer(b, np.uint8)
        regs = run_npu(c, dram, 0, max_cycles=20_000)
        assert regs["ERROR"] == 0
        cycles[timed] = (regs["CYCLES_LO"], CycleModel(c).run(prog).cycles)
    rtl_cost = cycles[True][0] - cycles[False][0]
    model_cost = cycles[True][1] - cycles[False][1]
    # Within a cycle: where a unit already waited (a token, fetch) the RTL can absorb one of the added cycles
    # that the model's hand-over rounding does not (an unmirrored model is off by the whole cost, 7-31 here).
    assert rtl_cost > 0 and abs(model_cost - rtl_cost) <= 1, (rtl_cost, model_cost)
