"""The sequential NPU's firmware, built for the host, against the emulator: results, faults and MAC counts.

The CPU runs the same C (tests/rtl/test_seq.py checks the CPU against it); here every program is
cheap, so the comparison covers many programs and a fuzz of their fields.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera.arch import NpuConfig
from tessera.hdl.seq.firmware import HostFirmware, config_header
from tessera.isa import FORMATS, HEADER, INSTR_BYTES, Buffer, ErrorCode, Instruction, encode, encode_program
from tessera.sim.emulator import Emulator, NpuError
from tests.rtl import programs

#: The firmware's shapes: a 32-bit bus, rows = 2 x lanes, small queues; DRAM large enough for programs.py.
SEQ = NpuConfig(name="seq-test", lanes=4, rows=8, abuf_words=4096, wbuf_words=1024, accbuf_words=1024,
                pbuf_words=64, bus_bytes=4, dram_bytes=1 << 20, queue_depth=4, token_depth=4, pool_fl32=False)
CONFIGS = {"4x8": SEQ, "w4": SEQ.replace(name="seq-w4", weight_bits=4),
           "w2": SEQ.replace(name="seq-w2", weight_bits=2, lanes=8, rows=8), "fl32": SEQ.replace(name="seq-fl32", pool_fl32=True)}

_FW: dict = {}


def firmware(config):
    fw = _FW.get(config.name)
    if fw is None:
        fw = _FW[config.name] = HostFirmware(config)
    return fw


def both(config, image: bytes, prog_addr: int = 0):
    """Runs ``image`` (DRAM from address 0) on a fresh emulator and the firmware; asserts they agree."""
    emu = Emulator(config)
    emu.write(0, image)
    try:
        stats = emu.run(prog_addr)
        want = (ErrorCode.NONE, 0, stats.macs)
    except NpuError as e:
        want = (e.code, e.pc, None)
    fw = firmware(config)
    fw.clear()
    fw.dram[:] = 0
    fw.dram[:len(image)] = np.frombuffer(image, np.uint8)
    code, pc, macs = fw.run(prog_addr)
    got = (code, pc, macs if want[2] is not None else None)
    assert got == want
    np.testing.assert_array_equal(fw.dram, emu.dram)
    return want


def image_of(prog, segs, size=programs.OUT + 0x10000) -> bytes:
    img = bytearray(size)
    code = encode_program(prog)
    img[:len(code)] = code
    for addr, data in segs:
        img[addr:addr + len(data)] = data
    return bytes(img)


LAYERS = {
    "conv3x3": dict(),
    "conv_stride_dil": dict(in_h=7, in_w=6, in_cb=2, stride=(2, 1), dil=(1, 2), pad=(2, 1), ob=2),
    "conv_accumulate_relu": dict(accumulate=True, relu=True, ob=2),
    "conv_residual": dict(residual=True, in_cb=2, ob=2),
    "conv_1x1": dict(k_h=1, k_w=1, pad=(0, 0), in_cb=3),
}


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("layer", LAYERS)
def test_firmware_conv_layers_match_emulator(cfg, layer):
    c = CONFIGS[cfg]
    prog, segs, _ = programs.conv_layer(c, np.random.default_rng(len(layer)), **LAYERS[layer])
    code, _, macs = both(c, image_of(prog, segs))
    assert code == ErrorCode.NONE and macs > 0


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("geom", [dict(), dict(k=(3, 3), stride=(2, 2), pad=(1, 1), in_h=7, in_w=5),
                                  dict(k=(3, 2), stride=(1, 2), pad=(2, 1), cb=1)])
def test_firmware_pool_layers_match_emulator(mode, geom):
    prog, segs, _ = programs.pool_layer(SEQ, np.random.default_rng(1), mode=mode, **geom)
    assert both(SEQ, image_of(prog, segs))[0] == ErrorCode.NONE


@pytest.mark.parametrize("fl32_zp", [0, 1])
@pytest.mark.parametrize("geom", [dict(k=(2, 2), stride=(2, 2)), dict(k=(3, 3), stride=(1, 1), pad=(1, 1), in_h=5, in_w=5),
                                  dict(k=(4, 4), stride=(1, 1), in_h=4, in_w=4, cb=3)])
def test_firmware_pool_fl32_matches_emulator(fl32_zp, geom):
    # onnxruntime's float32 average (tessera.numerics.pool_avg_fl32), ties included: inputs from a narrow range
    # make exact .5 quotients common.
    c = CONFIGS["fl32"]
    rng = np.random.default_rng(9 + fl32_zp)
    for trial in range(4):
        prog, segs, _ = programs.pool_layer(c, rng, mode="avg", **geom)
        taps = geom["k"][0] * geom["k"][1]
        data = bytes(rng.integers(-6, 6, size=len(segs[0][1]), dtype=np.int8)) if trial % 2 else segs[0][1]
        pool = prog[1].replace(fl32=1, fl32_zp=fl32_zp, zp_ort=int(rng.integers(-128, 256)),
                               mult=int(rng.integers(1 << 23, 1 << 24)), shift=taps.bit_length() - 1,
                               zp_in=int(rng.integers(-10, 10)))
        assert both(c, image_of([prog[0], pool] + prog[2:], [(segs[0][0], data)]))[0] == ErrorCode.NONE


@pytest.mark.parametrize("buf", ["act", "wgt", "param"])
@pytest.mark.parametrize("buf_stride", [7, 2])
def test_firmware_strided_dma_matches_emulator(buf, buf_stride):
    prog, segs, _ = programs.dma_pattern(SEQ, np.random.default_rng(2), buf=buf, buf_stride=buf_stride, offset=1)
    assert both(SEQ, image_of(prog, segs))[0] == ErrorCode.NONE


def test_firmware_in_place_pool_and_overlapping_residual_match_emulator():
    # Outputs over the inputs they are computed from: the emulator reads every input first.
    c = SEQ
    rng = np.random.default_rng(3)
    prog, segs, _ = programs.pool_layer(c, rng, mode="max", k=(3, 3), stride=(1, 1), pad=(1, 1))
    pool = prog[1].replace(out_addr=prog[1].in_addr + 1)
    store = prog[2].replace(buf_addr=1)
    assert both(c, image_of([prog[0], pool, store, prog[3]], segs))[0] == ErrorCode.NONE
    prog, segs, _ = programs.conv_layer(c, rng, residual=True, ob=2)
    k = c.words_per_block
    for stride in (0, 1, 2 * k):   # overlapping pixels (stride < ob*k) and in place
        epi = prog[5].replace(out_addr=prog[5].res_addr, out_stride=stride)
        assert both(c, image_of(prog[:5] + [epi] + prog[6:], segs))[0] == ErrorCode.NONE


def test_firmware_faults_match_emulator():
    c = SEQ
    prog, segs, _ = programs.conv_layer(c, np.random.default_rng(4))
    cases = {
        "illegal opcode": [prog[0], Instruction("sync", unit="load")],          # then erased memory
        "dram range": [prog[0].replace(dram_addr=c.dram_bytes - 4, cols=2)] + prog[1:],
        "misaligned": [prog[0].replace(dram_addr=programs.ACT + 1)] + prog[1:],
        "buffer range": prog[:4] + [prog[4].replace(acc_addr=c.accbuf_words - 3)] + prog[5:],
        "bad field": prog[:-2] + [prog[-2].replace(buf="wgt")] + prog[-1:],
        "deadlock": prog[:3] + [prog[3].replace(signal=0)] + prog[4:],
    }
    seen = set()
    for name, p in cases.items():
        img = bytearray(image_of(p, segs))
        if name == "illegal opcode":
            img[2 * INSTR_BYTES:3 * INSTR_BYTES] = bytes(INSTR_BYTES)
        code, pc, _ = both(c, bytes(img))
        seen.add(code)
    assert seen == {ErrorCode.ILLEGAL_OPCODE, ErrorCode.DRAM_RANGE, ErrorCode.MISALIGNED, ErrorCode.BUFFER_RANGE,
                    ErrorCode.BAD_FIELD, ErrorCode.DEADLOCK}


def test_firmware_fetch_past_memory_and_reserved_bits_match_emulator():
    c = SEQ
    end = encode(Instruction("end"))
    assert both(c, bytes(c.dram_bytes - 8) + end[:8], prog_addr=c.dram_bytes - 8)[0] == ErrorCode.DRAM_RANGE
    bad = bytearray(end)
    bad[-1] = 0x80
    assert both(c, bytes(bad))[0] == ErrorCode.BAD_FIELD


_BASE = {}


def _base_programs():
    if not _BASE:
        rng = np.random.default_rng(5)
        _BASE["conv"] = programs.conv_layer(SEQ, rng, residual=True, ob=2, in_cb=2)[:2]
        _BASE["pool"] = programs.pool_layer(SEQ, rng, mode="avg", k=(3, 3), pad=(1, 1))[:2]
        _BASE["dma"] = programs.dma_pattern(SEQ, rng, buf="act")[:2]
    return _BASE


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_firmware_fuzzed_fields_match_emulator(data):
    # Valid programs with one field (or a few) set to random values: every fault and every result agrees.
    base = data.draw(st.sampled_from(sorted(_base_programs())))
    prog, segs = _base_programs()[base]
    prog = list(prog)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(prog) - 2))
        ins = prog[i]
        fields = [f for f in HEADER[1:] + FORMATS[ins.op].fields if not isinstance(f.kind, type)]
        f = data.draw(st.sampled_from(fields))
        if data.draw(st.booleans()):
            v = data.draw(st.integers(f.min, f.max))
        else:   # near the current value, where geometry stays mostly sensible
            v = min(max(ins.values[f.name] + data.draw(st.integers(-3, 3)), f.min), f.max)
        prog[i] = ins.replace(**{f.name: v})
    both(SEQ, image_of(prog, segs))


def test_firmware_compiled_classifier_matches_emulator():
    from tessera.host.tinyclassifier import tiny_classifier
    c = SEQ.replace(name="seq-big", dram_bytes=4 << 20)
    prog = tiny_classifier(c, classes=10)
    emu = Emulator(c)
    emu.load_program(prog)
    rng = np.random.default_rng(6)
    for t in prog.inputs:
        emu.write(t.addr, rng.integers(-128, 128, size=t.nbytes, dtype=np.int8))
    image = bytes(emu.dram)
    code, _, macs = both(c, image, prog.prog_addr)
    assert code == ErrorCode.NONE and macs > 10_000


@pytest.mark.parametrize("residual", [False, True])
def test_firmware_epilogue_extremes_match_emulator(residual):
    # Accumulators and parameters over their whole int32 ranges (rounding up to 2**31, negative multipliers,
    # shifts of 0 and past 62): the firmware's 32-bit shortcuts must give the emulator's 64-bit results.
    c = SEQ
    rng = np.random.default_rng(8 + residual)
    ob, P = 4, 16
    acc = rng.integers(-2**31, 2**31, size=(ob * P, c.rows), dtype=np.int64)
    acc[:8] = [2**31 - 1, -2**31, 2**31 - 64, -2**31 + 1, 2**24, -2**24 - 1, 0, 1][:8]
    prm = np.zeros((ob, c.rows, 3), np.int64)
    prm[..., 0] = rng.integers(-2**31, 2**31, size=(ob, c.rows))
    prm[..., 1] = rng.integers(-2**31, 2**31, size=(ob, c.rows))
    prm[..., 2] = rng.integers(0, 70, size=(ob, c.rows))
    prm[0, :, 0], prm[0, :, 1], prm[0, :, 2] = 0, 2**31 - 1, [0, 1, 31, 62, 63, 64, 30, 40]
    k = c.words_per_block
    epi = Instruction("epilogue", signal=["store"], acc_addr=0, pixels=P, ob_count=ob, param_addr=0,
                      out_addr=512, out_stride=ob * k, zp_out=-3, out_min=-120, out_max=125, residual=int(residual),
                      res_addr=0, res_stride=ob * k, zp_mid=5, zp_res=-7, res_mult_a=(1 << 31) - 1,
                      res_mult_b=3 << 28, res_shift=33)
    store = Instruction("store", wait=["post"], buf="act", dram_addr=0x8000, rows=1, cols=P * ob * k, buf_addr=512)
    image = encode_program([epi, store, Instruction("end")])
    act = rng.integers(-128, 128, size=(P * ob * k, c.lanes), dtype=np.int8)
    emu = Emulator(c)
    emu.write(0, image)
    fw = firmware(c)
    fw.clear()
    fw.dram[:] = 0
    fw.dram[:len(image)] = np.frombuffer(image, np.uint8)
    for bufs in (emu.buffers, {b: fw.buffer(b) for b in (Buffer.ACC, Buffer.PARAM, Buffer.ACT)}):
        bufs[Buffer.ACC][:ob * P] = acc.astype(np.int32)
        bufs[Buffer.PARAM][:ob] = prm.astype(np.int32)
        bufs[Buffer.ACT][:len(act)] = act
    emu.run(0)
    assert fw.run(0)[0] == ErrorCode.NONE
    np.testing.assert_array_equal(fw.buffer(Buffer.ACT), emu.buffers[Buffer.ACT])
    np.testing.assert_array_equal(fw.dram, emu.dram)


def test_firmware_requantization_equals_the_numerics_definition_up_to_its_saturation():
    # The firmware's 32-bit requantization against tessera.numerics on a million values: random, products whose
    # 24-bit rounding carries (m = 2**24 with small shifts), int32 extremes, every shift 0..70.
    import ctypes

    from tessera.numerics import round_shift, scale_product
    fw = firmware(SEQ)
    rng = np.random.default_rng(10)
    n = 1 << 20
    v = rng.integers(-2**31, 2**31, size=n, dtype=np.int64)
    v[: n // 4] >>= rng.integers(0, 31, size=n // 4)          # every magnitude
    mult = rng.integers(-2**31, 2**31, size=n, dtype=np.int64)
    mult[n // 4: n // 2] = rng.integers(1 << 30, 1 << 31, size=n // 4)
    carry = np.arange(n // 2, n // 2 + 4096)
    v[carry], mult[carry] = (1 << 24) - 1, (1 << 24) + 1             # (2**24 - 1)(2**24 + 1) rounds up to 2**48
    v[:8] = [2**31 - 1, -2**31, 2**31 - 64, -2**31 + 64, 2**24, -(2**24) - 1, 0, -1]
    shift = rng.integers(0, 71, size=n).astype(np.uint32)
    shift[carry] = rng.integers(0, 40, size=carry.size)
    want = np.clip(round_shift(scale_product(v, mult), shift.astype(np.int64)), -1024, 1024)
    got = np.empty(n, np.int32)
    f = fw._lib.seq_requantize
    f.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_uint32]
    v32, m32 = v.astype(np.int32), mult.astype(np.int32)
    f(v32.ctypes.data, m32.ctypes.data, shift.ctypes.data, got.ctypes.data, n)
    bad = np.nonzero(got != want)[0]
    assert bad.size == 0, f"{bad.size} differ, first v={v[bad[0]]} mult={mult[bad[0]]} shift={shift[bad[0]]}"


def test_config_header_names_every_field_once():
    text = config_header(SEQ)
    for op, fmt in FORMATS.items():
        for f in fmt.fields:
            assert text.count(f"#define {op.name}_{f.name} ") == 1
    assert f"#define DRAM_BYTES {SEQ.dram_bytes}ULL" in text
