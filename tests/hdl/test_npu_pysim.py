"""The whole NPU in Amaranth's Python simulator (no Verilator): quick checks of every unit vs the emulator."""

import numpy as np
import pytest
from tessera.sim.emulator import Emulator

from tessera.sim.emulator import NpuError

from tessera.isa import ErrorCode, Unit, encode_program
from tessera.isa import Instruction as I
from tests.rtl.programs import ACT, OUT, conv_layer, dma_pattern, pool_layer
from tests.rtl.test_npu import CONFIG

from .pysim import run_npu

#: 4-bit weights, and ACT words as wide as the bus.
W4 = CONFIG.replace(name="rtl-test-w4", weight_bits=4, lanes=8, rows=8, bus_bytes=8)
#: Block-RAM shaped buffers (one ACT write port, PARAM in entries of 4 records) and an EPILOGUE of
#: 4 channels per cycle (two cycles per ACT word, four PARAM entries per word).
BRAM = CONFIG.replace(name="rtl-test-bram", lanes=8, rows=16, bus_bytes=8, post_lanes=4, bram_buffers=True)
#: The serial EPILOGUE alone, with PARAM words as wide as the default buffers keep them.
SERIAL = CONFIG.replace(name="rtl-test-serial", post_lanes=2)
#: Registered range checks and split roundings (the ulx3s-85f timing option), alone and with BRAM's options.
TIMED = CONFIG.replace(name="rtl-test-timed", timing_stages=True)
TIMED_BRAM = BRAM.replace(name="rtl-test-bram-timed", timing_stages=True)

CASES = {
    "conv_w4": lambda rng: (W4, conv_layer(W4, rng, in_cb=2, ob=2)),
    "conv_residual": lambda rng: (CONFIG, conv_layer(CONFIG, rng, ob=2, in_cb=2, residual=True, k_h=1, k_w=1, pad=(0, 0))),
    "conv_strided_dilated": lambda rng: (CONFIG, conv_layer(CONFIG, rng, stride=(2, 1), dil=(1, 2), in_h=6, in_w=7,
                                                           pad=(1, 2))),
    "pool_avg": lambda rng: (CONFIG, pool_layer(CONFIG, rng, mode="avg", k=(3, 3), stride=(1, 1), pad=(1, 1),
                                                in_h=4, in_w=4)),
    "dma_act": lambda rng: (CONFIG, dma_pattern(CONFIG, rng, offset=1)),
    "bram_conv_residual": lambda rng: (BRAM, conv_layer(BRAM, rng, ob=2, in_cb=2, residual=True, k_h=1, k_w=1,
                                                        pad=(0, 0))),
    "bram_conv3x3": lambda rng: (BRAM, conv_layer(BRAM, rng, ob=2, in_cb=2)),
    "bram_pool_max": lambda rng: (BRAM, pool_layer(BRAM, rng, mode="max", k=(2, 2), stride=(2, 2), pad=(0, 0),
                                                   in_h=4, in_w=4)),
    "bram_pool_avg": lambda rng: (BRAM, pool_layer(BRAM, rng, mode="avg", k=(3, 3), stride=(1, 1), pad=(1, 1),
                                                   in_h=4, in_w=4)),
    "bram_pool_avg_1x1": lambda rng: (BRAM, pool_layer(BRAM, rng, mode="avg", k=(1, 1), stride=(1, 1), in_h=3,
                                                       in_w=3)),
    "serial_pool_max": lambda rng: (SERIAL, pool_layer(SERIAL, rng, mode="max", k=(3, 3), stride=(2, 2), pad=(1, 1),
                                                       in_h=5, in_w=5)),
    "bram_dma_act": lambda rng: (BRAM, dma_pattern(BRAM, rng, offset=1)),
    "timed_conv_residual": lambda rng: (TIMED, conv_layer(TIMED, rng, ob=2, in_cb=2, residual=True, k_h=1, k_w=1,
                                                          pad=(0, 0))),
    "timed_conv_strided_dilated": lambda rng: (TIMED, conv_layer(TIMED, rng, stride=(2, 1), dil=(1, 2), in_h=6,
                                                                 in_w=7, pad=(1, 2))),
    "timed_pool_avg": lambda rng: (TIMED, pool_layer(TIMED, rng, mode="avg", k=(3, 3), stride=(1, 1), pad=(1, 1),
                                                     in_h=4, in_w=4)),
    "timed_dma_act": lambda rng: (TIMED, dma_pattern(TIMED, rng, offset=1)),
    "timed_bram_conv3x3": lambda rng: (TIMED_BRAM, conv_layer(TIMED_BRAM, rng, ob=2, in_cb=2)),
    "timed_bram_pool_avg": lambda rng: (TIMED_BRAM, pool_layer(TIMED_BRAM, rng, mode="avg", k=(3, 3), stride=(1, 1),
                                                               pad=(1, 1), in_h=4, in_w=4)),
    "serial_conv_residual": lambda rng: (SERIAL, conv_layer(SERIAL, rng, ob=2, in_cb=2, residual=True, k_h=1,
                                                            k_w=1, pad=(0, 0))),
}


def _case_matches_emulator(case, **run_kw):
    """Run a case on the emulator and the NPU (``run_npu`` options ``run_kw``): the same outputs."""
    config, (prog, segs, outs) = CASES[case](np.random.default_rng(3))
    dram = np.zeros(config.dram_bytes, np.uint8)
    for a, b in [(0, encode_program(prog))] + segs:
        dram[a:a + len(b)] = np.frombuffer(b, np.uint8)
    emu = Emulator(config)
    emu.write(0, dram)
    emu.run(0)
    regs = run_npu(config, dram, 0, max_cycles=20_000, **run_kw)
    assert regs["STATUS"] == 2 and regs["ERROR"] == 0
    for a, n in outs:
        np.testing.assert_array_equal(dram[a:a + n], emu.dram[a:a + n])
    return regs


@pytest.mark.parametrize("backpressure", [0.4])
@pytest.mark.parametrize("case", sorted(CASES))
def test_npu_pysim_matches_emulator(case, backpressure):
    _case_matches_emulator(case, backpressure=backpressure, latency=3)


@pytest.mark.parametrize("case", ["timed_dma_act", "timed_bram_conv3x3"])
def test_npu_pysim_timed_load_at_its_least_latency_matches_emulator(case):
    # With timing_stages LOAD's destination queue shows an entry a cycle later (hdl/dma.py): answers two
    # cycles after their requests, the least latency it allows, still find their destination.
    _case_matches_emulator(case, latency=2)


@pytest.mark.parametrize("case", ["timed_conv_residual", "timed_bram_pool_avg", "bram_conv_residual"])
def test_npu_pysim_soft_reset_mid_run_then_rerun_matches_emulator(case):
    # The generators' loop counters have no reset of their own (hdl.common.loop_counters): runs stopped
    # by a soft reset at a quarter, half and three quarters of the way (inside CONV's, EPILOGUE's or
    # POOL's loops) must leave nothing that the next run sees.
    whole = _case_matches_emulator(case, latency=3)["sim_cycles"]
    _case_matches_emulator(case, latency=3, reset_at=[whole * k // 4 for k in (1, 2, 3)])


def _fault_matches_emulator(config, program):
    """Run a faulting program on the emulator and the NPU: the same error code at the same pc, and the
    same memory (a faulting STORE writes nothing, though its walker starts during the check)."""
    _raw_fault_matches_emulator(config, encode_program(program))


def _raw_fault_matches_emulator(config, code: bytes):
    """The same for a program given as its bytes (words the assembler would refuse)."""
    prog = np.frombuffer(code, np.uint8)
    dram = np.zeros(config.dram_bytes, np.uint8)
    dram[:len(prog)] = prog
    emu = Emulator(config)
    emu.write(0, dram)
    with pytest.raises(NpuError) as err:
        emu.run(0)
    regs = run_npu(config, dram, 0, latency=3, max_cycles=5_000)
    assert regs["STATUS"] == 6, "the NPU did not stop with an error"
    assert (ErrorCode(regs["ERROR"]), regs["ERROR_PC"]) == (err.value.code, err.value.pc)
    assert bytes(dram) == emu.read(0, config.dram_bytes), "the NPU's memory differs from the emulator's"


#: A LOAD word made bad in one place (bit offsets from tessera.isa's LOAD layout): fetch with
#: timing_stages checks each beat as it arrives, so a fault in every beat of an 8- and a 16-byte bus.
DECODE_FAULTS = {
    "self_signal": lambda w: w | 1 << (8 + Unit.LOAD.value),       # signal, bits 8-11: beat 0
    "zero_rows": lambda w: w & ~(0xFFFF << 110),                   # rows, 110-125: beat 1 of 8 bytes
    "zero_cols": lambda w: w & ~(0xFFFF << 126),                   # cols, 126-141: across beats 1 and 2
    "reserved_mid": lambda w: w | 1 << 150,                        # beat 2 of 8 bytes, 1 of 16
    "reserved_last": lambda w: w | 1 << 255,                       # the last beat
    "illegal_opcode": lambda w: w | 0xF,
}


@pytest.mark.parametrize("config", [TIMED, TIMED_BRAM], ids=lambda c: f"bus{c.bus_bytes}")
@pytest.mark.parametrize("fault", sorted(DECODE_FAULTS))
def test_npu_pysim_decode_fault_in_each_beat_matches_emulator(config, fault):
    # The bad word follows a good one of the same kind, so the beat checks gathered for it start over.
    ok = I("load", buf="act", dram_addr=ACT, rows=1, cols=1)
    code = bytearray(encode_program([ok, ok, I("end")]))
    word = int.from_bytes(code[32:64], "little")
    code[32:64] = DECODE_FAULTS[fault](word).to_bytes(32, "little")
    _raw_fault_matches_emulator(config, bytes(code))


def _conv(**kw):
    f = dict(in_h=2, in_w=2, in_cb=1, out_h=1, out_w=1, k_h=1, k_w=1, stride_h=1, stride_w=1, dil_h=1, dil_w=1,
             ob_count=1)
    return I("conv", **{**f, **kw})


def _epilogue(**kw):
    return I("epilogue", **{**dict(pixels=1, ob_count=1), **kw})


def _pool(**kw):
    f = dict(in_h=2, in_w=2, cb=1, out_h=1, out_w=1, k_h=2, k_w=2, stride_h=1, stride_w=1)
    return I("pool", **{**f, **kw})


#: Every range check of every unit, each once just past its limit (the registered checks must still see it).
RANGE_FAULTS = {
    "conv_act": lambda c: _conv(in_addr=c.abuf_words - 3),
    "conv_wgt": lambda c: _conv(w_addr=c.wbuf_words - 3, k_h=2, k_w=2),
    "conv_acc": lambda c: _conv(acc_addr=c.accbuf_words - 5, out_h=2, out_w=3),
    "epilogue_acc": lambda c: _epilogue(acc_addr=c.accbuf_words - 2, pixels=3),
    "epilogue_param": lambda c: _epilogue(param_addr=c.pbuf_words - 1, ob_count=2),
    "epilogue_out": lambda c: _epilogue(out_addr=c.abuf_words - 5 - c.words_per_block, pixels=4, out_stride=2),
    "epilogue_residual": lambda c: _epilogue(residual=1, res_addr=c.abuf_words - 5 - c.words_per_block, pixels=4,
                                                       res_stride=2),
    "pool_in": lambda c: _pool(in_addr=c.abuf_words - 7, cb=2),
    "pool_out": lambda c: _pool(out_addr=c.abuf_words - 1, out_w=2),
    "load_dram": lambda c: I("load", buf="act", dram_addr=c.dram_bytes - 64, rows=3, cols=4, dram_stride=32),
    "load_buffer": lambda c: I("load", buf="wgt", dram_addr=ACT, buf_addr=c.wbuf_words - 5, rows=2, cols=2,
                               buf_stride=4, dram_stride=4 * c.wgt_word_bytes),
    "load_misaligned": lambda c: I("load", buf="param", dram_addr=ACT, rows=2, cols=1, dram_stride=4),
    "store_dram": lambda c: I("store", buf="act", dram_addr=c.dram_bytes - 4 * c.act_word_bytes, rows=1, cols=5),
    "store_buffer": lambda c: I("store", buf="act", dram_addr=OUT, buf_addr=c.abuf_words - 2, rows=1, cols=3),
    # Strides of 2**17 and more: the row offset's high partial product is the one compared (hdl/dma.py).
    "load_dram_wide_stride": lambda c: I("load", buf="act", rows=3, cols=2, dram_stride=WIDE,
                                         dram_addr=c.dram_bytes - 2 * WIDE - c.act_word_bytes),
    "store_dram_wide_stride": lambda c: I("store", buf="act", rows=2, cols=1, dram_stride=2 * WIDE,
                                          dram_addr=c.dram_bytes - 2 * WIDE),
}

#: A DRAM stride above the 17 bits of a range check's low partial product.
WIDE = (1 << 20) + 16


@pytest.mark.parametrize("config", [CONFIG, TIMED], ids=lambda c: c.name)
@pytest.mark.parametrize("fault", sorted(RANGE_FAULTS))
def test_npu_pysim_range_fault_matches_emulator(config, fault):
    # A valid instruction first, so the unit's check registers hold another instruction's values.
    ok = {"conv": _conv(), "epilogue": _epilogue(), "pool": _pool(),
          "load": I("load", buf="act", dram_addr=ACT, rows=1, cols=1),
          "store": I("store", buf="act", dram_addr=OUT, rows=1, cols=1)}
    bad = RANGE_FAULTS[fault](config)
    _fault_matches_emulator(config, [ok[bad.op.name.lower()], bad, I("end")])


@pytest.mark.parametrize("config", [CONFIG, TIMED], ids=lambda c: c.name)
def test_npu_pysim_dma_ending_at_the_dram_end_runs(config):
    # The wide-stride faults above a word earlier, so their last rows end at the DRAM's end: both run them.
    rows = [I("load", buf="act", rows=3, cols=2, dram_stride=WIDE,
              dram_addr=config.dram_bytes - 2 * WIDE - 2 * config.act_word_bytes),
            I("store", buf="act", rows=2, cols=1, dram_stride=2 * WIDE,
              dram_addr=config.dram_bytes - 2 * WIDE - config.act_word_bytes)]
    prog = encode_program([*rows, I("end")])
    dram = np.zeros(config.dram_bytes, np.uint8)
    dram[:len(prog)] = np.frombuffer(prog, np.uint8)
    emu = Emulator(config)
    emu.write(0, dram)
    emu.run(0)
    regs = run_npu(config, dram, 0, latency=3, max_cycles=5_000)
    assert regs["STATUS"] == 2 and regs["ERROR"] == 0


#: Faults that depend on the queues: a deadlock, and a fault raised while fetch waits on a full queue.
QUEUE_FAULTS = {
    "deadlock": lambda c: [I("sync", unit="compute", wait=["load"]), I("end")],
    "fault_full_queue": lambda c: [I("load", buf="act", dram_addr=c.dram_bytes - 16, rows=1, cols=8),
                                   *[I("sync", unit="load")] * (c.queue_depth + 1), I("end")],
    "deadlock_behind_full_queue": lambda c: [*[I("sync", unit="post", wait=["store"])] * (c.queue_depth + 2),
                                             I("end")],
}


@pytest.mark.parametrize("config", [CONFIG, TIMED], ids=lambda c: c.name)
@pytest.mark.parametrize("fault", sorted(QUEUE_FAULTS))
def test_npu_pysim_queue_fault_matches_emulator(config, fault):
    # TIMED keeps each queue's head in a register: the same capacity and the same deadlock pc.
    _fault_matches_emulator(config, QUEUE_FAULTS[fault](config))


@pytest.mark.parametrize("config", [CONFIG, TIMED], ids=lambda c: c.name)
def test_npu_pysim_watchdog_names_the_stalled_instruction(config):
    # The memory hangs from cycle 60, when the STORE (the fourth instruction) streams out: the watchdog ends the
    # run and names it (the registered oldest_pc of TIMED included).
    prog, segs, _ = pool_layer(config, np.random.default_rng(1))
    code = encode_program([I("sync", unit="post")] + prog)
    dram = np.zeros(config.dram_bytes, np.uint8)
    for a, b in [(0, code)] + segs:
        dram[a:a + len(b)] = np.frombuffer(b, np.uint8)
    regs = run_npu(config, dram, 0, latency=3, watchdog=40, stall_after=60, max_cycles=2_000)
    assert ErrorCode(regs["ERROR"]) == ErrorCode.WATCHDOG
    assert regs["ERROR_PC"] == 96
