"""Every emulator instruction against plain numpy (tessera.sim.reference), plus faults and tokens."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tessera.sim import reference as ref
from tessera.sim.emulator import Emulator, HazardError, NpuError

from tessera.isa import Buffer, ErrorCode, Instruction, encode, encode_program
from tessera.numerics import pack_weights, pool_avg_fl32, round_shift

PROG = 0x0
DATA = 0x8000


def run(cfg, instrs, writes=(), buffers=None, check_hazards=True):
    """Run `instrs` (END appended) on a fresh emulator; `buffers` pre-fills on-chip memories."""
    emu = Emulator(cfg, check_hazards=check_hazards)
    emu.write(PROG, encode_program(list(instrs) + [Instruction("end")]))
    for addr, data in writes:
        emu.write(addr, data)
    for buf, (addr, words) in (buffers or {}).items():
        emu.buffers[buf][addr:addr + len(words)] = words
    emu.run(PROG)
    return emu


def conv_case(cfg, rng, *, in_h, in_w, in_cb, k, stride, dil, pad, ob, out_h=None, out_w=None):
    """Random operands for one CONV; returns (instruction, act words, weight blocks, expected acc words)."""
    N, M = cfg.lanes, cfg.rows
    kh, kw = k
    (sh, sw), (dh, dw), (pt, pl) = stride, dil, pad
    full_h = (in_h + 2 * pt - dh * (kh - 1) - 1) // sh + 1
    full_w = (in_w + 2 * pl - dw * (kw - 1) - 1) // sw + 1
    out_h, out_w = out_h or full_h, out_w or full_w
    lo, hi = -(1 << (cfg.weight_bits - 1)), (1 << (cfg.weight_bits - 1)) - 1
    x = rng.integers(-128, 128, size=(in_h, in_w, in_cb * N))
    w = rng.integers(lo, hi + 1, size=(ob * M, in_cb * N, kh, kw))
    pad_value = int(rng.integers(-128, 128))
    # Reference: explicit pad_value padding (enough on every side for the requested output), no implicit padding.
    need_h = (out_h - 1) * sh + (kh - 1) * dh + 1
    need_w = (out_w - 1) * sw + (kw - 1) * dw + 1
    xp = np.full((in_cb * N, max(need_h, pt + in_h), max(need_w, pl + in_w)), pad_value, dtype=np.int64)
    xp[:, pt:pt + in_h, pl:pl + in_w] = x.transpose(2, 0, 1)
    acc = ref.conv2d(xp, w, stride=(sh, sw), dilation=(dh, dw))[:, :out_h, :out_w]
    expected = acc.reshape(ob, M, out_h * out_w).transpose(0, 2, 1).reshape(ob * out_h * out_w, M)
    blocks = w.reshape(ob, M, in_cb, N, kh, kw).transpose(0, 4, 5, 2, 1, 3)  # [ob][ky][kx][cb][m][n]
    ins = Instruction("conv", in_addr=0, in_h=in_h, in_w=in_w, in_cb=in_cb, out_h=out_h, out_w=out_w,
                      k_h=kh, k_w=kw, stride_h=sh, stride_w=sw, dil_h=dh, dil_w=dw, pad_t=pt, pad_l=pl,
                      pad_value=pad_value, w_addr=0, acc_addr=0, ob_count=ob)
    return ins, x.reshape(-1, N), blocks.reshape(-1, M, N), expected


def conv_through_dma(cfg, ins, act_words, blocks):
    """The CONV's operands go in through LOAD, so DMA and weight packing are exercised too."""
    wbytes = pack_weights(blocks, cfg.weight_bits)
    abytes = act_words.astype(np.int8).tobytes()
    waddr = DATA + ((len(abytes) + 255) // 256) * 256
    loads = [
        Instruction("load", buf="act", dram_addr=DATA, buf_addr=0, rows=1, cols=len(act_words)),
        Instruction("load", buf="wgt", dram_addr=waddr, buf_addr=0, rows=1, cols=len(blocks), signal=["compute"]),
        ins.replace(wait=["load"]),
    ]
    return run(cfg, loads, writes=[(DATA, abytes), (waddr, wbytes)])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_conv_matches_numpy_with_strides_dilation_and_padding(any_config, data):
    cfg = any_config
    k = data.draw(st.tuples(st.integers(1, 7), st.integers(1, 7)))
    stride = data.draw(st.tuples(st.integers(1, 4), st.integers(1, 4)))
    dil = data.draw(st.tuples(st.integers(1, 3), st.integers(1, 3)))
    pad = data.draw(st.tuples(st.integers(0, k[0] - 1), st.integers(0, k[1] - 1)))
    min_h = max(1, dil[0] * (k[0] - 1) + 1 - 2 * pad[0])
    min_w = max(1, dil[1] * (k[1] - 1) + 1 - 2 * pad[1])
    in_h = data.draw(st.integers(min_h, min_h + 6))
    in_w = data.draw(st.integers(min_w, min_w + 6))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    ins, act, blocks, expected = conv_case(cfg, rng, in_h=in_h, in_w=in_w, in_cb=data.draw(st.integers(1, 3)),
                                           k=k, stride=stride, dil=dil, pad=pad, ob=data.draw(st.integers(1, 2)))
    emu = conv_through_dma(cfg, ins, act, blocks)
    got = emu.buffers[Buffer.ACC][:len(expected)]
    np.testing.assert_array_equal(got, expected)
    assert emu.stats.macs == len(expected) * ins.k_h * ins.k_w * ins.in_cb * cfg.rows * cfg.lanes


def test_conv_output_tile_smaller_than_full_output(small_config):
    # A tile computes only the rows it is asked for; the compiler splits layers this way.
    rng = np.random.default_rng(3)
    ins, act, blocks, expected = conv_case(small_config, rng, in_h=9, in_w=7, in_cb=2, k=(3, 3), stride=(2, 1),
                                           dil=(1, 1), pad=(1, 1), ob=2, out_h=2, out_w=5)
    emu = conv_through_dma(small_config, ins, act, blocks)
    np.testing.assert_array_equal(emu.buffers[Buffer.ACC][:len(expected)], expected)


def test_conv_accumulate_adds_and_wraps_int32(small_config):
    cfg = small_config
    rng = np.random.default_rng(4)
    ins, act, blocks, expected = conv_case(cfg, rng, in_h=4, in_w=4, in_cb=1, k=(1, 1), stride=(1, 1),
                                           dil=(1, 1), pad=(0, 0), ob=1)
    # Accumulators near the int32 limits must wrap, as the hardware's 32-bit adders do.
    start = rng.choice([2**31 - 5, -(2**31) + 5, 7], size=expected.shape).astype(np.int32)
    emu = Emulator(cfg, check_hazards=True)
    emu.buffers[Buffer.ACC][:len(start)] = start
    emu.buffers[Buffer.ACT][:len(act)] = act
    emu.buffers[Buffer.WGT][:len(blocks)] = blocks
    emu.write(PROG, encode_program([ins.replace(accumulate=1), Instruction("end")]))
    emu.run(PROG)
    want = (start.astype(np.int64) + expected + 2**31) % 2**32 - 2**31
    np.testing.assert_array_equal(emu.buffers[Buffer.ACC][:len(start)], want)


def _params(rng, m, extremes=False):
    bias = rng.integers(-(2**31), 2**31, size=m) if extremes else rng.integers(-5000, 5000, size=m)
    mult = rng.integers(0, 2**31, size=m)
    shift = rng.choice([0, 1, 31, 40, 62, 63], size=m) if extremes else rng.integers(30, 45, size=m)
    return np.stack([bias, mult, shift], axis=-1).astype(np.int32)


@pytest.mark.parametrize("extremes", [False, True])
def test_epilogue_requantization_matches_reference(small_config, extremes):
    cfg = small_config
    M, k = cfg.rows, cfg.words_per_block
    rng = np.random.default_rng(5 + extremes)
    ob, P = 2, 6
    acc = rng.integers(-(2**31), 2**31, size=(ob * P, M)) if extremes else rng.integers(-(2**20), 2**20, size=(ob * P, M))
    params = np.stack([_params(rng, M, extremes) for _ in range(ob)])
    zp_out, lo, hi = int(rng.integers(-20, 20)), -128, 127
    out_stride = ob * k + 1  # a gap word per pixel must stay untouched
    emu = run(cfg, [Instruction("epilogue", acc_addr=0, pixels=P, ob_count=ob, param_addr=0, out_addr=10,
                                out_stride=out_stride, zp_out=zp_out, out_min=lo, out_max=hi)],
              buffers={Buffer.ACC: (0, acc), Buffer.PARAM: (0, params)})
    act = emu.buffers[Buffer.ACT]
    for b in range(ob):
        want = ref.requantize(acc[b * P:(b + 1) * P], params[b, :, 0], params[b, :, 1], params[b, :, 2], zp_out, lo, hi)
        for p in range(P):
            got = act[10 + p * out_stride + b * k:10 + p * out_stride + (b + 1) * k].reshape(-1)
            assert got.tolist() == want[p].tolist(), (b, p)
    assert not act[10 + np.arange(P) * out_stride + ob * k].any()


def test_epilogue_relu_and_clip_bounds(small_config):
    cfg = small_config
    acc = np.arange(-8, 8).reshape(2, 8) * 1000
    params = np.tile(np.array([0, 2**30, 31], dtype=np.int32), (cfg.rows, 1))[None]  # ×0.5
    emu = run(cfg, [Instruction("epilogue", acc_addr=0, pixels=2, ob_count=1, param_addr=0, out_addr=0,
                                out_stride=2, zp_out=-10, out_min=-10, out_max=60)],
              buffers={Buffer.ACC: (0, acc), Buffer.PARAM: (0, params)})
    y = emu.buffers[Buffer.ACT][:4].reshape(2, 8).astype(int)
    assert y.tolist() == np.clip(acc // 2 - 10, -10, 60).tolist()


@pytest.mark.parametrize("seed", range(4))
def test_epilogue_residual_add_matches_reference(small_config, seed):
    cfg = small_config
    M, N, k = cfg.rows, cfg.lanes, cfg.words_per_block
    rng = np.random.default_rng(seed)
    ob, P = 2, 5
    acc = rng.integers(-(2**18), 2**18, size=(ob * P, M))
    params = np.stack([_params(rng, M) for _ in range(ob)])
    res_stride = ob * k
    r = rng.integers(-128, 128, size=(P * res_stride, N))
    zp_mid, zp_res, zp_out = (int(v) for v in rng.integers(-128, 128, size=3))
    # seed 3 saturates: huge multipliers push the sum past int8 on both sides.
    ma, mb = (2**30, 2**30) if seed == 3 else (int(rng.integers(2**29, 2**31)), int(rng.integers(2**29, 2**31)))
    rs = 24 if seed == 3 else int(rng.integers(30, 33))
    lo = max(zp_out, -128) if seed % 2 else -128
    emu = run(cfg, [Instruction("epilogue", acc_addr=0, pixels=P, ob_count=ob, param_addr=0, out_addr=200,
                                out_stride=res_stride, zp_out=zp_out, out_min=lo, out_max=127, residual=1,
                                res_addr=100, res_stride=res_stride, zp_mid=zp_mid, zp_res=zp_res,
                                res_mult_a=ma, res_mult_b=mb, res_shift=rs)],
              buffers={Buffer.ACC: (0, acc), Buffer.PARAM: (0, params), Buffer.ACT: (100, r)})
    act = emu.buffers[Buffer.ACT]
    for b in range(ob):
        a = ref.requantize(acc[b * P:(b + 1) * P], params[b, :, 0], params[b, :, 1], params[b, :, 2], zp_mid)
        for p in range(P):
            rr = r[p * res_stride + b * k:p * res_stride + (b + 1) * k].reshape(-1).astype(int)
            want = [min(max(ref.round_half_even_shift((int(a[p, m]) - zp_mid) * ma + (int(rr[m]) - zp_res) * mb, rs)
                            + zp_out, lo), 127) for m in range(M)]
            got = act[200 + p * res_stride + b * k:200 + p * res_stride + (b + 1) * k].reshape(-1)
            assert got.tolist() == want, (b, p)
    if seed == 3:
        got = act[200:200 + P * res_stride].reshape(-1)
        assert (got == 127).any() and (got == lo).any()


@pytest.mark.parametrize("k, stride, pad, hw", [((3, 3), (2, 2), (1, 1), (7, 6)), ((2, 2), (2, 2), (0, 0), (6, 6)),
                                                ((3, 2), (1, 3), (2, 1), (5, 8)), ((7, 7), (1, 1), (0, 0), (7, 7))])
def test_pool_max_matches_numpy_at_borders(small_config, k, stride, pad, hw):
    cfg = small_config
    rng = np.random.default_rng(11)
    cb, (H, W) = 2, hw
    x = rng.integers(-128, 128, size=(H, W, cb * cfg.lanes))
    want = ref.maxpool(x.transpose(2, 0, 1), k, stride, pad)
    OH, OW = want.shape[1:]
    emu = run(cfg, [Instruction("pool", mode="max", in_addr=0, in_h=H, in_w=W, cb=cb, out_addr=500, out_h=OH,
                                out_w=OW, k_h=k[0], k_w=k[1], stride_h=stride[0], stride_w=stride[1],
                                pad_t=pad[0], pad_l=pad[1])],
              buffers={Buffer.ACT: (0, x.reshape(-1, cfg.lanes))})
    got = emu.buffers[Buffer.ACT][500:500 + OH * OW * cb].reshape(OH, OW, -1).transpose(2, 0, 1)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("k, stride, pad, hw", [((7, 7), (1, 1), (0, 0), (7, 7)), ((3, 3), (2, 2), (1, 1), (6, 5)),
                                                ((2, 2), (2, 2), (0, 0), (4, 6))])
def test_pool_avg_requantizes_like_reference(small_config, k, stride, pad, hw):
    cfg = small_config
    rng = np.random.default_rng(12)
    cb, (H, W) = 1, hw
    zp_in, zp_out = -7, 5
    x = rng.integers(-128, 128, size=(H, W, cb * cfg.lanes))
    sums = ref.avgpool_sum(x.transpose(2, 0, 1) - zp_in, k, stride, pad)
    mult, shift = 1_718_986_918, 35  # about 1/(k*k) * 0.9 for 3x3
    want = np.clip([[[ref.round_half_even_shift(int(s) * mult, shift) + zp_out for s in row] for row in ch]
                    for ch in sums], -128, 127)
    OH, OW = sums.shape[1:]
    emu = run(cfg, [Instruction("pool", mode="avg", in_addr=0, in_h=H, in_w=W, cb=cb, out_addr=500, out_h=OH,
                                out_w=OW, k_h=k[0], k_w=k[1], stride_h=stride[0], stride_w=stride[1],
                                pad_t=pad[0], pad_l=pad[1], zp_in=zp_in, zp_out=zp_out, mult=mult, shift=shift)],
              buffers={Buffer.ACT: (0, x.reshape(-1, cfg.lanes))})
    got = emu.buffers[Buffer.ACT][500:500 + OH * OW * cb].reshape(OH, OW, -1).transpose(2, 0, 1)
    np.testing.assert_array_equal(got, want)


def test_dma_2d_strided_load_and_store(small_config):
    cfg = small_config
    N = cfg.lanes
    rng = np.random.default_rng(13)
    src = rng.integers(0, 256, size=4096, dtype=np.uint8)
    # Load 3 rows of 5 words with a 64-byte source stride into buffer rows 7 words apart, then store them back
    # packed at another address: the result is the gathered sub-matrix.
    emu = run(cfg, [
        Instruction("load", buf="act", dram_addr=DATA + 32, dram_stride=64, buf_addr=3, buf_stride=7, rows=3, cols=5,
                    signal=["store"]),
        Instruction("store", wait=["load"], buf="act", dram_addr=DATA + 8192, dram_stride=5 * N, buf_addr=3,
                    buf_stride=7, rows=3, cols=5),
    ], writes=[(DATA, src.tobytes())])
    want = np.stack([src[32 + r * 64:32 + r * 64 + 5 * N] for r in range(3)]).reshape(-1)
    got = np.frombuffer(emu.read(DATA + 8192, 15 * N), dtype=np.uint8)
    np.testing.assert_array_equal(got, want)
    assert emu.stats.dram_read_bytes == emu.stats.dram_write_bytes == 15 * N


def test_load_param_records(small_config):
    cfg = small_config
    params = np.random.default_rng(14).integers(-(2**31), 2**31, size=(2, cfg.rows, 3)).astype("<i4")
    emu = run(cfg, [Instruction("load", buf="param", dram_addr=DATA, buf_addr=5, rows=1, cols=2)],
              writes=[(DATA, params.tobytes())])
    np.testing.assert_array_equal(emu.buffers[Buffer.PARAM][5:7], params)


# ---- faults: every one stops with the error code the hardware reports ----------------------------------

@pytest.mark.parametrize("ins, code, message", [
    (Instruction("load", buf="act", dram_addr=DATA + 2, rows=1, cols=1), ErrorCode.MISALIGNED, "multiples of 4"),
    (Instruction("load", buf="act", dram_addr=(1 << 20) - 4, rows=1, cols=2), ErrorCode.DRAM_RANGE, "ends at"),
    (Instruction("load", buf="act", dram_addr=DATA, buf_addr=4095, rows=1, cols=2), ErrorCode.BUFFER_RANGE, "4096"),
    (Instruction("load", buf="acc", dram_addr=DATA, rows=1, cols=1), ErrorCode.BAD_FIELD, "not a DMA target"),
    (Instruction("store", buf="wgt", dram_addr=DATA, rows=1, cols=1), ErrorCode.BAD_FIELD, "only act"),
    (Instruction("conv", in_addr=4090, in_h=2, in_w=2, in_cb=2, out_h=1, out_w=1, k_h=1, k_w=1, stride_h=1,
                 stride_w=1, dil_h=1, dil_w=1, ob_count=1), ErrorCode.BUFFER_RANGE, "conv input tile"),
    (Instruction("pool", in_h=2, in_w=2, cb=1, out_addr=4095, out_h=2, out_w=2, k_h=1, k_w=1, stride_h=1,
                 stride_w=1), ErrorCode.BUFFER_RANGE, "pool output"),
    (Instruction("epilogue", acc_addr=1020, pixels=8, ob_count=1), ErrorCode.BUFFER_RANGE, "accumulators"),
])
def test_faults_stop_with_error_code(small_config, ins, code, message):
    with pytest.raises(NpuError, match=message) as e:
        run(small_config, [ins])
    assert e.value.code == code and e.value.pc == 0


def test_pool_fl32_needs_a_config_built_with_it(small_config):
    ins = Instruction("pool", mode="avg", fl32=1, in_h=2, in_w=2, cb=1, out_addr=100, out_h=1, out_w=1, k_h=2,
                      k_w=2, stride_h=2, stride_w=2, mult=1 << 23, shift=2)
    run(small_config, [ins])
    with pytest.raises(NpuError, match="built without pool_fl32") as e:
        run(small_config.replace(pool_fl32=False), [ins])
    assert e.value.code == ErrorCode.BAD_FIELD and e.value.pc == 0


def test_pool_avg_fl32_is_numerics_rule(small_config):
    cfg = small_config
    rng = np.random.default_rng(15)
    H, W, zp_in, zp_out, m = 6, 8, -3, 4, 12_345_679
    x = rng.integers(-128, 128, size=(H, W, cfg.lanes))
    taps = np.stack([x[i::2, j::2] for i in range(2) for j in range(2)]) - zp_in
    want = np.clip(pool_avg_fl32(taps, m, 2) + zp_out, -128, 127)
    emu = run(cfg, [Instruction("pool", mode="avg", fl32=1, in_addr=0, in_h=H, in_w=W, cb=1, out_addr=500, out_h=H // 2,
                                out_w=W // 2, k_h=2, k_w=2, stride_h=2, stride_w=2, zp_in=zp_in, zp_out=zp_out,
                                mult=m, shift=2)],
              buffers={Buffer.ACT: (0, x.reshape(-1, cfg.lanes))})
    got = emu.buffers[Buffer.ACT][500:500 + H * W // 4].reshape(H // 2, W // 2, -1)
    np.testing.assert_array_equal(got, want)
    # ... which is not the fixed-point answer on every tie.
    assert (pool_avg_fl32(taps, m, 2) != round_shift(taps.sum(axis=0), 2)).any()


def test_illegal_opcode_from_erased_memory(small_config):
    emu = Emulator(small_config)
    emu.write(0, encode_program([Instruction("sync", unit="load")]))  # no END: fetch runs into zeros
    with pytest.raises(NpuError, match="illegal opcode 0") as e:
        emu.run(0)
    assert e.value.code == ErrorCode.ILLEGAL_OPCODE and e.value.pc == 32


def test_zero_count_field_is_bad_field(small_config):
    emu = Emulator(small_config)
    emu.write(0, encode(Instruction("load", buf="act", rows=0, cols=1), check=False))
    with pytest.raises(NpuError, match="rows: must not be zero") as e:
        emu.run(0)
    assert e.value.code == ErrorCode.BAD_FIELD


def test_token_to_own_unit_is_bad_field(small_config):
    with pytest.raises(NpuError, match="cannot wait for or signal its own unit") as e:
        run(small_config, [Instruction("sync", unit="post", signal=["post"])])
    assert e.value.code == ErrorCode.BAD_FIELD


def test_missing_token_deadlocks_instead_of_hanging(small_config):
    with pytest.raises(NpuError, match="deadlock: unit COMPUTE waits for tokens from LOAD") as e:
        run(small_config, [Instruction("sync", unit="compute", wait=["load"])])
    assert e.value.code == ErrorCode.DEADLOCK


def test_full_token_queue_stalls_the_signaller(small_config):
    # token_depth=4: a fifth signal with nobody consuming can never start.
    prog = [Instruction("sync", unit="load", signal=["compute"])] * 5
    with pytest.raises(NpuError, match="room to signal COMPUTE"):
        run(small_config, prog)
    run(small_config, prog[:4] + [Instruction("sync", unit="compute", wait=["load"])] * 4)


def test_bounded_queues_deadlock_like_hardware(small_config):
    # The compute instruction that would release LOAD sits behind five LOAD-queue entries that fetch
    # cannot dispatch (queue_depth=4): the emulator must report the deadlock the hardware would have.
    prog = ([Instruction("sync", unit="load", wait=["compute"])]
            + [Instruction("sync", unit="load")] * 4
            + [Instruction("sync", unit="compute", signal=["load"])])
    with pytest.raises(NpuError, match="fetch is blocked"):
        run(small_config, prog)
    run(small_config, prog[:1] + prog[-1:] + prog[1:-1])


def test_race_without_token_is_detected(small_config):
    # The second LOAD overwrites the conv's input without waiting for the conv: a race on hardware.
    conv = Instruction("conv", in_h=1, in_w=1, in_cb=1, out_h=1, out_w=1, k_h=1, k_w=1, stride_h=1, stride_w=1,
                       dil_h=1, dil_w=1, ob_count=1, wait=["load"])
    load = Instruction("load", buf="act", dram_addr=DATA, rows=1, cols=1)
    racy = [load.replace(signal=["compute"]), conv, load]
    with pytest.raises(HazardError, match="ACT buffer word 0"):
        run(small_config, racy)
    run(small_config, racy, check_hazards=False)  # the emulator alone would not notice
    safe = [load.replace(signal=["compute"]), conv.replace(signal=["load"]), load.replace(wait=["compute"])]
    run(small_config, safe)


@pytest.mark.parametrize("k, dil, pad, stride", [((3, 3), (6, 6), (6, 6), (1, 1)), ((1, 1), (1, 1), (0, 0), (4, 4)),
                                                 ((7, 7), (1, 1), (3, 3), (2, 2))])
def test_conv_named_shapes_ssd_dilation_stem_and_stride4(small_config, k, dil, pad, stride):
    # SSD's VGG-16 conv6 (3×3, dilation 6), a stride-4 1×1, and the ResNet stem (7×7/2, pad 3).
    rng = np.random.default_rng(21)
    ins, act, blocks, expected = conv_case(small_config, rng, in_h=13, in_w=15, in_cb=2, k=k, stride=stride,
                                           dil=dil, pad=pad, ob=1)
    emu = conv_through_dma(small_config, ins, act, blocks)
    np.testing.assert_array_equal(emu.buffers[Buffer.ACC][:len(expected)], expected)


# ---- the fast kernels behind the emulator are exact, and its caches never serve stale data ----------------

@pytest.mark.parametrize("backend", ["onnxruntime", "float32"])
def test_int8_gemm_is_exact_on_extremes_and_random(backend):
    from tessera.sim.emulator_kernels import Int8Gemm
    gemm = Int8Gemm(backend)
    rng = np.random.default_rng(31)
    for m, k, n in [(1, 1, 1), (7, 4608, 16), (98, 2304, 48), (224, 147, 64), (3, 5, 7)]:
        cases = [(np.full((m, k), a, np.int8), np.full((k, n), b, np.int8))
                 for a in (-128, 127) for b in (-128, 127)]
        cases.append((rng.integers(-128, 128, (m, k), dtype=np.int8), rng.integers(-128, 128, (k, n), dtype=np.int8)))
        for a, b in cases:
            want = a.astype(np.int64) @ b.astype(np.int64)
            got = gemm((a.view(np.uint8) ^ 0x80), b)
            assert got.dtype == np.int32
            np.testing.assert_array_equal(got, want)


def _channel_params(rng, ob, M):
    # Shifts over the whole 6-bit field and beyond, negative multipliers, full-range biases: 31-bit
    # multipliers, which are no float32, take the kernels' integer path.
    bias = rng.integers(-(2**31), 2**31, size=(ob, M))
    mult = np.where(rng.random((ob, M)) < 0.1, rng.integers(-(2**31), 0, size=(ob, M)), rng.integers(0, 2**31, size=(ob, M)))
    shift = rng.choice([-1, 0, 1, 5, 20, 31, 38, 43, 44, 45, 50, 61, 62, 63, 64, 200], size=(ob, M))
    return np.stack([bias, mult, shift], axis=-1).astype(np.int32)


@pytest.mark.parametrize("seed", range(6))
def test_requantize_kernel_matches_integer_definition(seed):
    from tessera.sim.emulator_kernels import ChannelParams, requantize_into

    from tessera.numerics import requantize
    rng = np.random.default_rng(seed)
    ob, P, M = 3, 12, 16
    prm = _channel_params(rng, ob, M)
    if seed % 2:
        prm[..., 2] = rng.integers(30, 45, size=(ob, M))     # shifts of real scales
    acc = rng.integers(-(2**31), 2**31, size=(ob, P, M)).astype(np.int32)
    if seed >= 4:
        # Exact ties: acc + bias = (2j + 1) * 2**(shift - 1) with mult = 1.
        prm[..., 1], prm[..., 2] = 1, rng.integers(1, 20, size=(ob, M))
        acc = ((2 * rng.integers(-60, 60, size=(ob, P, M)) + 1) << (prm[:, None, :, 2] - 1)) - prm[:, None, :, 0]
        acc = acc.astype(np.int32)
    zp, lo, hi = int(rng.integers(-128, 128)), -128, 127
    if seed == 3:
        lo, hi = 20, -20                               # lo > hi: hi everywhere
    out = np.empty((ob, P, M), np.int8)
    requantize_into(out, acc, ChannelParams(prm, P), zp, lo, hi)
    want = requantize(acc.astype(np.int64), *(prm[:, None, :, i].astype(np.int64) for i in range(3)), zp, lo, hi)
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("seed", range(4))
def test_requantize_kernels_float32_path_matches_integer_definition(seed):
    # The compiler's multipliers are float32 scales: the kernels then compute in float32 (ChannelParams.float32),
    # which must equal the integer definition on every accumulator, near-ties and wrapped sums included.
    from tessera.sim.emulator_kernels import (
        ChannelParams,
        ResidualParams,
        requantize_into,
        residual_into,
    )

    from tessera.numerics import quantize_multiplier, requantize, round_shift
    rng = np.random.default_rng(200 + seed)
    ob, P, M = 2, 64, 16
    scales = rng.uniform(2.0**-30, 4.0, size=(ob, M)).astype(np.float32)
    scales[0, :3] = [0.0, 2.0**-40, 0.5]
    mult_shift = np.array([quantize_multiplier(float(x)) for x in scales.reshape(-1)]).reshape(ob, M, 2)
    prm = np.stack([rng.integers(-(2**31), 2**31, size=(ob, M)), mult_shift[..., 0], mult_shift[..., 1]],
                   axis=-1).astype(np.int32)
    prm[1, :4, 1] *= -1                                       # negative multipliers are float32 scales too
    acc = rng.integers(-(2**31), 2**31, size=(ob, P, M))
    # Near-ties of the float32 product: acc + bias = (k + 1/2) / scale, give or take a few units.
    k = rng.integers(-130, 130, size=(ob, P // 2, M))
    tie = np.round((k + 0.5) / np.where(scales == 0, 1, scales)[:, None, :]).astype(np.int64)
    acc[:, : P // 2] = tie + rng.integers(-3, 4, size=tie.shape) - prm[:, None, :, 0]
    acc = ((acc + 2**31) % 2**32 - 2**31).astype(np.int32)
    ch = ChannelParams(prm, P)
    assert ch.float32
    zp, lo, hi = int(rng.integers(-128, 128)), -128, 127
    out = np.empty((ob, P, M), np.int8)
    requantize_into(out, acc, ch, zp, lo, hi)
    want = requantize(acc.astype(np.int64), *(prm[:, None, :, i].astype(np.int64) for i in range(3)), zp, lo, hi)
    np.testing.assert_array_equal(out, want)
    r = rng.integers(-128, 128, size=(ob, P, M)).astype(np.int8)
    zp_mid, zp_res = (int(v) for v in rng.integers(-128, 128, size=2))
    res = ResidualParams(zp_mid, zp_res, int(rng.integers(0, 2**31)), int(rng.integers(0, 2**31)), 31)
    residual_into(out, acc, ch, r, res, zp, lo, hi)
    a = requantize(acc.astype(np.int64), *(prm[:, None, :, i].astype(np.int64) for i in range(3)), zp_mid)
    s = (a - zp_mid) * res.mult_a + (r.astype(np.int64) - zp_res) * res.mult_b
    np.testing.assert_array_equal(out, np.minimum(np.maximum(round_shift(s, 31) + zp, lo), hi))
    prm[0, 0, 1] = 2**30 + 1                                  # one multiplier that is no float32: integer path
    assert not ChannelParams(prm, P).float32


@pytest.mark.parametrize("seed", range(4))
def test_residual_kernel_matches_integer_definition(seed):
    from tessera.sim.emulator_kernels import (
        ChannelParams,
        ResidualParams,
        residual_into,
    )

    from tessera.numerics import requantize, round_shift
    rng = np.random.default_rng(100 + seed)
    ob, P, M = 2, 10, 16
    prm = _channel_params(rng, ob, M)
    acc = rng.integers(-(2**31), 2**31, size=(ob, P, M)).astype(np.int32)
    r = rng.integers(-128, 128, size=(ob, P, M)).astype(np.int8)
    zp_mid, zp_res, zp_out = (int(v) for v in rng.integers(-128, 128, size=3))
    ma, mb = (int(v) for v in rng.integers(0, 2**31, size=2))
    rs = int(rng.choice([0, 1, 24, 31, 40, 62, 63]))
    lo, hi = (max(zp_out, -128), 127) if seed % 2 else (-128, 127)
    out = np.empty((ob, P, M), np.int8)
    residual_into(out, acc, ChannelParams(prm, P), r, ResidualParams(zp_mid, zp_res, ma, mb, rs), zp_out, lo, hi)
    a = requantize(acc.astype(np.int64), *(prm[:, None, :, i].astype(np.int64) for i in range(3)), zp_mid)
    s = (a - zp_mid) * ma + (r.astype(np.int64) - zp_res) * mb
    np.testing.assert_array_equal(out, np.minimum(np.maximum(round_shift(s, rs) + zp_out, lo), hi))


def test_conv_leaves_out_input_channels_without_weights(small_config):
    # The ResNet stem: 3 of the lane-padded input channels carry weights; and a tile with no weights at all.
    cfg = small_config
    rng = np.random.default_rng(41)
    for live in ([0], [], [1, 2]):
        ins, act, blocks, _ = conv_case(cfg, rng, in_h=9, in_w=8, in_cb=1, k=(3, 3), stride=(2, 2), dil=(1, 1),
                                        pad=(1, 1), ob=2)
        dead = [c for c in range(cfg.lanes) if c not in live]
        blocks = blocks.reshape(2, 3, 3, 1, cfg.rows, cfg.lanes).copy()
        blocks[..., dead] = 0
        x = act.reshape(9, 8, cfg.lanes).transpose(2, 0, 1).astype(np.int64)
        w = blocks.transpose(0, 4, 3, 5, 1, 2).reshape(2 * cfg.rows, cfg.lanes, 3, 3)
        xp = np.full((cfg.lanes, 11, 10), ins.pad_value, dtype=np.int64)
        xp[:, 1:10, 1:9] = x
        acc = ref.conv2d(xp, w, stride=(2, 2))[:, :ins.out_h, :ins.out_w]
        expected = acc.reshape(2, cfg.rows, -1).transpose(0, 2, 1).reshape(-1, cfg.rows)
        emu = conv_through_dma(cfg, ins, act, blocks.reshape(-1, cfg.rows, cfg.lanes))
        np.testing.assert_array_equal(emu.buffers[Buffer.ACC][:len(expected)], expected)


def _layer_program(cfg):
    """LOAD act/weights/params → CONV (3×3, padded) → EPILOGUE → STORE, with its DRAM operand addresses."""
    N, M = cfg.lanes, cfg.rows
    h, w, cb, ob = 6, 5, 2, 2
    a_act, a_w, a_p, a_out = DATA, DATA + 0x2000, DATA + 0x6000, DATA + 0x8000
    prog = [
        Instruction("load", buf="act", dram_addr=a_act, buf_addr=0, rows=1, cols=h * w * cb),
        Instruction("load", buf="wgt", dram_addr=a_w, buf_addr=0, rows=1, cols=ob * 9 * cb),
        Instruction("load", buf="param", dram_addr=a_p, buf_addr=0, rows=1, cols=ob, signal=["compute"]),
        Instruction("conv", wait=["load"], signal=["post"], in_addr=0, in_h=h, in_w=w, in_cb=cb, out_h=h, out_w=w,
                    k_h=3, k_w=3, stride_h=1, stride_w=1, dil_h=1, dil_w=1, pad_t=1, pad_l=1, pad_value=-3,
                    w_addr=0, acc_addr=0, ob_count=ob),
        Instruction("epilogue", wait=["compute"], signal=["store"], acc_addr=0, pixels=h * w, ob_count=ob,
                    param_addr=0, out_addr=500, out_stride=ob * M // N, zp_out=4, out_min=-128, out_max=127),
        Instruction("store", wait=["post"], buf="act", dram_addr=a_out, buf_addr=500, rows=1,
                    cols=h * w * ob * M // N),
    ]
    sizes = {a_act: h * w * cb * N, a_w: ob * 9 * cb * M * N, a_p: ob * M * 3}
    return prog, sizes, (a_out, h * w * ob * M)


def _layer_operands(cfg, sizes, rng):
    a_act, a_w, a_p = sorted(sizes)
    params = np.stack([rng.integers(-5000, 5000, (sizes[a_p] // 3,)), rng.integers(2**30, 2**31, (sizes[a_p] // 3,)),
                       rng.integers(36, 42, (sizes[a_p] // 3,))], -1).astype("<i4")
    return [(a_act, rng.integers(-128, 128, sizes[a_act], dtype=np.int8).tobytes()),
            (a_w, pack_weights(rng.integers(-128, 128, sizes[a_w]), cfg.weight_bits)),
            (a_p, params.tobytes())]


def test_rerun_with_new_weights_params_and_program_matches_a_fresh_emulator(small_config):
    # The second run replays the first's schedule and finds weight matrices and requantization constants by
    # content: new weights (down to a single byte), parameters and inputs must all be seen, and a changed
    # program must be re-fetched.
    cfg = small_config
    prog, sizes, (a_out, n_out) = _layer_program(cfg)
    rng = np.random.default_rng(51)
    emu = Emulator(cfg)
    emu.write(PROG, encode_program(prog + [Instruction("end")]))
    operands = _layer_operands(cfg, sizes, rng)
    for i in range(4):
        if i == 1:
            a_w, w = operands[1]
            operands[1] = (a_w, w[:9] + bytes([w[9] ^ 0x11]) + w[10:])
        elif i == 2:
            operands = _layer_operands(cfg, sizes, rng)
        elif i == 3:
            prog[4] = prog[4].replace(zp_out=-9, out_max=50)
            emu.write(PROG, encode_program(prog + [Instruction("end")]))
        for addr, data in operands:
            emu.write(addr, data)
        emu.run(PROG)
        fresh = run(cfg, prog, writes=operands, check_hazards=False)
        assert emu.read(a_out, n_out) == fresh.read(a_out, n_out), i
        assert emu.stats.macs == fresh.stats.macs and emu.stats.by_opcode == fresh.stats.by_opcode


def test_store_over_the_program_is_fetched_afterwards(small_config):
    # A STORE overwrites a later instruction word that fetch cannot dispatch before the STORE ran (the LOAD
    # queue is full until then). The word it writes comes from data, so every run must execute what the
    # STORE wrote in that run: no schedule of an earlier run may be replayed.
    cfg = small_config
    prog = [Instruction("load", buf="act", dram_addr=DATA + 64, buf_addr=0, rows=1, cols=32 // cfg.lanes,
                        signal=["store"]),
            Instruction("store", wait=["load"], buf="act", dram_addr=PROG + 6 * 32, buf_addr=0, rows=1,
                        cols=32 // cfg.lanes, signal=["load"]),
            Instruction("sync", unit="load", wait=["store"])]
    prog += [Instruction("sync", unit="load")] * (cfg.queue_depth)
    assert len(prog) == 7 and cfg.queue_depth == 4
    emu = Emulator(cfg)
    emu.write(PROG, encode_program(prog + [Instruction("end")]))
    emu.write(DATA, bytes(range(1, 1 + cfg.lanes)))
    for dst in (100, 101, 102):
        emu.write(DATA + 64, encode(Instruction("load", buf="act", dram_addr=DATA, buf_addr=dst, rows=1, cols=1)))
        emu.buffers[Buffer.ACT][100:103] = 0
        emu.run(PROG)
        assert emu.buffers[Buffer.ACT][100:103].any(axis=1).tolist() == [d == dst for d in (100, 101, 102)]


def _two_weight_tiles(conv_a, conv_b, act_words, w_words):
    """LOAD input, LOAD weights A → ``conv_a``, LOAD weights B into the same words → ``conv_b``."""
    a_act, a_wa, a_wb = DATA, DATA + 0x1000, DATA + 0x3000
    prog = [
        Instruction("load", buf="act", dram_addr=a_act, rows=1, cols=act_words),
        Instruction("load", buf="wgt", dram_addr=a_wa, rows=1, cols=w_words, signal=["compute"]),
        conv_a.replace(wait=["load"], signal=["load"]),
        Instruction("load", buf="wgt", wait=["compute"], dram_addr=a_wb, rows=1, cols=w_words, signal=["compute"]),
        conv_b.replace(wait=["load"]),
    ]
    return prog, (a_act, a_wa, a_wb)


def test_second_weight_load_into_the_same_words_is_seen_by_the_next_conv(small_config):
    # Weight matrices are checked once per LOAD into their words: a reload between two CONVs on the same
    # words must be seen by the second, within one run.
    cfg = small_config
    rng = np.random.default_rng(61)
    ins, act, blocks_a, want_a = conv_case(cfg, rng, in_h=5, in_w=6, in_cb=2, k=(3, 3), stride=(1, 1), dil=(1, 1),
                                           pad=(1, 1), ob=2)
    _, _, blocks_b, want_b = conv_case(cfg, np.random.default_rng(62), in_h=5, in_w=6, in_cb=2, k=(3, 3),
                                       stride=(1, 1), dil=(1, 1), pad=(1, 1), ob=2)
    # Same input for both: conv_case draws the input first, so recompute B's expectation on A's input.
    x = act.reshape(5, 6, -1).transpose(2, 0, 1).astype(np.int64)
    w = blocks_b.reshape(2, 3, 3, 2, cfg.rows, cfg.lanes).transpose(0, 4, 3, 5, 1, 2).reshape(2 * cfg.rows, -1, 3, 3)
    xp = np.full((x.shape[0], 7, 8), ins.pad_value, dtype=np.int64)
    xp[:, 1:6, 1:7] = x
    want_b = ref.conv2d(xp, w).reshape(2, cfg.rows, -1).transpose(0, 2, 1).reshape(-1, cfg.rows)
    wa = pack_weights(blocks_a, cfg.weight_bits)
    wb = pack_weights(blocks_b, cfg.weight_bits)
    n = len(want_a)
    prog, (a_act, a_wa, a_wb) = _two_weight_tiles(ins, ins.replace(acc_addr=n), len(act), len(blocks_a))
    writes = [(a_act, act.astype(np.int8).tobytes()), (a_wa, wa), (a_wb, wb)]
    emu = run(cfg, prog, writes=writes)
    np.testing.assert_array_equal(emu.buffers[Buffer.ACC][:n], want_a)
    np.testing.assert_array_equal(emu.buffers[Buffer.ACC][n:2 * n], want_b)
    emu.check_hazards = False
    for _ in range(2):                                # the second run replays the first's schedule
        emu.buffers[Buffer.ACC][:2 * n] = 0
        emu.run(PROG)
        np.testing.assert_array_equal(emu.buffers[Buffer.ACC][:n], want_a)
        np.testing.assert_array_equal(emu.buffers[Buffer.ACC][n:2 * n], want_b)


@pytest.mark.parametrize("accumulate", [False, True])
def test_store_accumulators_transposes_and_wraps(accumulate):
    from tessera.sim.emulator_kernels import store_accumulators
    rng = np.random.default_rng(7)
    ob, P, M = 3, 5, 4
    acc = rng.integers(-(2**31), 2**31, size=(ob, P, M)).astype(np.int32)
    y = rng.integers(-(2**31), 2**31, size=(P, ob * M)).astype(np.int32)
    y[0, 0], acc[0, 0, 0] = 2**31 - 1, 2**31 - 1           # the sum wraps to -2
    want = y.reshape(P, ob, M).transpose(1, 0, 2).astype(np.int64)
    if accumulate:
        want = (want + acc + 2**31) % 2**32 - 2**31
    store_accumulators(acc, y, accumulate)
    np.testing.assert_array_equal(acc, want)
    if accumulate:
        assert acc[0, 0, 0] == -2


def test_replay_sees_weights_changed_in_memory_and_identical_conv_words_apart(small_config):
    # Replays reuse each CONV step's weight matrix while the bytes WGT LOADs read are unchanged. Two
    # identical CONV words read different weights (one plan, two steps), and weight bytes change between
    # replays, also by a write of a single byte.
    cfg = small_config
    rng = np.random.default_rng(71)
    ins, act, blocks_a, _ = conv_case(cfg, rng, in_h=5, in_w=6, in_cb=2, k=(3, 3), stride=(1, 1), dil=(1, 1),
                                      pad=(1, 1), ob=2)
    blocks_b = rng.integers(-128, 128, blocks_a.shape)
    acc_ins = ins.replace(accumulate=True)
    prog, (a_act, a_wa, a_wb) = _two_weight_tiles(acc_ins, acc_ins, len(act), len(blocks_a))
    emu = Emulator(cfg)
    emu.write(PROG, encode_program(prog + [Instruction("end")]))
    emu.write(a_act, act.astype(np.int8).tobytes())
    n = ins.ob_count * ins.out_h * ins.out_w
    for i in range(6):
        wa, wb = (pack_weights(b, cfg.weight_bits) for b in (blocks_a, blocks_b))
        emu.write(a_wa, wa)
        if i == 4:
            with pytest.raises(ValueError):
                emu.dram[a_wb + 5] ^= 0x40              # external memory changes only through write() and STOREs
            emu.write(a_wb + 5, bytes([emu.dram[a_wb + 5] ^ 0x40]))      # one byte: still seen
            wb = emu.dram[a_wb:a_wb + len(wb)].tobytes()
        else:
            emu.write(a_wb, wb)
        emu.buffers[Buffer.ACC][:n] = 0
        emu.run(PROG)
        fresh = Emulator(cfg)
        fresh.write(PROG, encode_program(prog + [Instruction("end")]))
        for addr, data in ((a_act, act.astype(np.int8).tobytes()), (a_wa, wa), (a_wb, wb)):
            fresh.write(addr, data)
        fresh.run(PROG)
        np.testing.assert_array_equal(emu.buffers[Buffer.ACC][:n], fresh.buffers[Buffer.ACC][:n], err_msg=str(i))
        assert emu._traces and (i < 2 or emu._traces[PROG].wcells is not None)
        if i in (2, 3):
            blocks_a = rng.integers(-128, 128, blocks_a.shape)


def test_replay_sees_weights_a_store_of_the_same_run_wrote(small_config):
    # The weights a CONV uses are stored into external memory earlier in the same run, from data that
    # changes every run: each WGT LOAD of a replay must notice that its bytes differ from last time.
    cfg = small_config
    rng = np.random.default_rng(81)
    ins, act, blocks, _ = conv_case(cfg, rng, in_h=4, in_w=5, in_cb=1, k=(1, 1), stride=(1, 1), dil=(1, 1),
                                    pad=(0, 0), ob=1)
    wbytes = len(pack_weights(blocks, cfg.weight_bits))
    a_act, a_src, a_w, stage = DATA, DATA + 0x1000, DATA + 0x3000, 200
    prog = [
        Instruction("load", buf="act", dram_addr=a_act, rows=1, cols=len(act)),
        Instruction("load", buf="act", dram_addr=a_src, buf_addr=stage, rows=1, cols=wbytes // cfg.lanes,
                    signal=["store"]),
        Instruction("store", wait=["load"], signal=["load"], buf="act", dram_addr=a_w, buf_addr=stage, rows=1,
                    cols=wbytes // cfg.lanes),
        Instruction("load", buf="wgt", wait=["store"], dram_addr=a_w, rows=1, cols=len(blocks), signal=["compute"]),
        ins.replace(wait=["load"]),
    ]
    emu = Emulator(cfg)
    emu.write(PROG, encode_program(prog + [Instruction("end")]))
    n = ins.ob_count * ins.out_h * ins.out_w
    for i in range(5):
        writes = [(a_act, act.astype(np.int8).tobytes()),
                  (a_src, pack_weights(rng.integers(-128, 128, blocks.shape), cfg.weight_bits))]
        for addr, data in writes:
            emu.write(addr, data)
        emu.run(PROG)
        fresh = run(cfg, prog, writes=writes)
        np.testing.assert_array_equal(emu.buffers[Buffer.ACC][:n], fresh.buffers[Buffer.ACC][:n], err_msg=str(i))


def _fresh_run(cfg, prog, writes):
    emu = Emulator(cfg)
    emu.write(PROG, encode_program(prog + [Instruction("end")]))
    for addr, data in writes:
        emu.write(addr, data)
    emu.run(PROG)
    return emu


def test_replay_skips_unchanged_weight_loads_and_the_wgt_buffer_shows_a_full_run(small_config):
    # While the weight bytes are unchanged a replay skips its WGT LOADs; the WGT buffer must still read as a
    # full run leaves it, also after the host has written new weights over the bytes those LOADs read.
    cfg = small_config
    rng = np.random.default_rng(91)
    ins, act, blocks_a, _ = conv_case(cfg, rng, in_h=4, in_w=5, in_cb=2, k=(3, 3), stride=(1, 1), dil=(1, 1),
                                      pad=(1, 1), ob=2)
    n = ins.ob_count * ins.out_h * ins.out_w
    prog, (a_act, a_wa, a_wb) = _two_weight_tiles(ins, ins.replace(acc_addr=n), len(act), len(blocks_a))
    writes = {a_act: act.astype(np.int8).tobytes(), a_wa: pack_weights(blocks_a, cfg.weight_bits),
              a_wb: pack_weights(rng.integers(-128, 128, blocks_a.shape), cfg.weight_bits)}
    emu = _fresh_run(cfg, prog, writes.items())
    trace = emu._traces[PROG]
    assert trace.known
    emu.run(PROG)
    assert emu._pending == []                           # the first replay loads (and builds weight matrices)
    for i in range(6):
        if i == 2:
            emu.write(a_wa, writes[a_wa])               # the same bytes again: nothing changed
        if i == 4:
            assert emu._pending == [trace]
            before = _fresh_run(cfg, prog, writes.items())
            writes[a_wb] = pack_weights(rng.integers(-128, 128, blocks_a.shape), cfg.weight_bits)
            emu.write(a_wb, writes[a_wb])
            # The skipped LOADs were applied before the write: the buffer holds what the last run loaded.
            np.testing.assert_array_equal(emu.buffers[Buffer.WGT], before.buffers[Buffer.WGT])
        emu._bufs[Buffer.ACC][:2 * n] = 0
        emu.run(PROG)
        assert (emu._pending == [trace]) == (i != 4), i   # after a change, one replay loads again
        fresh = _fresh_run(cfg, prog, writes.items())
        np.testing.assert_array_equal(emu._bufs[Buffer.ACC][:2 * n], fresh._bufs[Buffer.ACC][:2 * n], err_msg=str(i))
        assert emu.stats.dram_read_bytes == fresh.stats.dram_read_bytes
        if i in (1, 5):
            np.testing.assert_array_equal(emu.buffers[Buffer.WGT], fresh.buffers[Buffer.WGT], err_msg=str(i))
            assert emu._pending == []


@pytest.mark.parametrize("overlap", [False, True])
def test_replay_sees_weights_another_programs_store_wrote(small_config, overlap):
    # A second program STOREs new weight bytes over those the first one's WGT LOADs read: the next replay of
    # the first program must load them, though it had been skipping its WGT LOADs. With ``overlap`` the STORE's
    # two rows overlap in memory (the second wins), which takes the STORE's row-by-row path.
    cfg = small_config
    rng = np.random.default_rng(92)
    ins, act, blocks, _ = conv_case(cfg, rng, in_h=4, in_w=5, in_cb=1, k=(1, 1), stride=(1, 1), dil=(1, 1),
                                    pad=(0, 0), ob=1)
    wbytes = len(pack_weights(blocks, cfg.weight_bits))
    a_act, a_src, a_w, stage, prog_b = DATA, DATA + 0x1000, DATA + 0x3000, 200, PROG + 0x400
    prog = [Instruction("load", buf="act", dram_addr=a_act, rows=1, cols=len(act)),
            Instruction("load", buf="wgt", dram_addr=a_w, rows=1, cols=len(blocks), signal=["compute"]),
            ins.replace(wait=["load"])]
    if overlap:
        # Rows of 3/4 of the weight bytes, a quarter apart: together exactly the weight bytes.
        row, step = 3 * wbytes // 4, wbytes // 4
        assert row % cfg.lanes == 0 and step % cfg.lanes == 0
        src_bytes = 2 * row
        store = dict(rows=2, cols=row // cfg.lanes, dram_stride=step, buf_stride=row // cfg.lanes)
    else:
        src_bytes, store = wbytes, dict(rows=1, cols=wbytes // cfg.lanes)
    copy = [Instruction("load", buf="act", dram_addr=a_src, buf_addr=stage, rows=1, cols=src_bytes // cfg.lanes,
                        signal=["store"]),
            Instruction("store", wait=["load"], buf="act", dram_addr=a_w, buf_addr=stage, **store)]

    def stored(src: bytes) -> bytes:
        return src[:step] + src[row:] if overlap else src

    weights = pack_weights(blocks, cfg.weight_bits)
    emu = _fresh_run(cfg, prog, [(a_act, act.astype(np.int8).tobytes()), (a_w, weights)])
    emu.write(prog_b, encode_program(copy + [Instruction("end")]))
    emu.run(PROG)
    emu.run(PROG)
    assert emu._pending == [emu._traces[PROG]]
    n = ins.ob_count * ins.out_h * ins.out_w
    src = bytes(rng.integers(0, 256, src_bytes, dtype=np.uint8))
    for i in range(5):
        if i != 2:                                      # (once the same bytes again)
            src = bytes(rng.integers(0, 256, src_bytes, dtype=np.uint8))
        emu.write(a_src, src)
        emu.run(prog_b)
        weights = stored(src)
        assert emu.read(a_w, wbytes) == weights
        emu.run(PROG)
        assert emu._pending == ([emu._traces[PROG]] if i == 2 else []), i
        if i == 2:
            # A run of the other program that changes nothing leaves the skipped LOADs pending.
            emu.run(prog_b)
            assert emu._pending == [emu._traces[PROG]]
        fresh = _fresh_run(cfg, prog, [(a_act, act.astype(np.int8).tobytes()), (a_w, weights)])
        np.testing.assert_array_equal(emu._bufs[Buffer.ACC][:n], fresh._bufs[Buffer.ACC][:n], err_msg=str(i))
        np.testing.assert_array_equal(emu.buffers[Buffer.WGT], fresh.buffers[Buffer.WGT], err_msg=str(i))


def test_external_memory_changes_only_through_write_and_store(small_config):
    emu = Emulator(small_config)
    with pytest.raises(ValueError):
        emu.dram[DATA] = 1
    emu.write(DATA, np.arange(4, dtype=np.int8) - 2)    # arrays are written as their bytes
    assert emu.read(DATA, 4) == bytes([254, 255, 0, 1])
