"""Single-layer programs for NPU tests: each returns (instructions, memory segments, output regions).

Data is random; every region a program reads is written by the segments, and
every output region is covered by its STOREs, so RTL and emulator start from
the same image.
"""

import numpy as np

from tessera.arch import NpuConfig
from tessera.isa import INSTR_BYTES, encode, encode_program
from tessera.isa import Instruction as I
from tessera.numerics import pack_weights

ACT, WGT, PRM, RES, OUT = 0x10000, 0x20000, 0x30000, 0x38000, 0x40000


def conv_layer(c: NpuConfig, rng, *, in_h=5, in_w=5, in_cb=1, k_h=3, k_w=3, stride=(1, 1), dil=(1, 1),
               pad=(1, 1), ob=1, accumulate=False, residual=False, pad_value=3, relu=False):
    """LOAD act/wgt/param → CONV (→ second CONV accumulating) → EPILOGUE (± residual) → STORE."""
    N, M = c.lanes, c.rows
    k = c.words_per_block
    oh = (in_h + 2 * pad[0] - dil[0] * (k_h - 1) - 1) // stride[0] + 1
    ow = (in_w + 2 * pad[1] - dil[1] * (k_w - 1) - 1) // stride[1] + 1
    P = oh * ow
    act = rng.integers(-128, 128, size=in_h * in_w * in_cb * N, dtype=np.int8).tobytes()
    nw = ob * k_h * k_w * in_cb
    lo, hi = -(1 << (c.weight_bits - 1)), 1 << (c.weight_bits - 1)
    wgt = pack_weights(rng.integers(lo, hi, size=nw * M * N), c.weight_bits)
    prm = np.zeros((ob, M, 3), np.int32)
    prm[..., 0] = rng.integers(-5000, 5000, size=(ob, M))
    prm[..., 1] = rng.integers(1 << 29, 1 << 31, size=(ob, M))
    prm[..., 2] = rng.integers(28, 40, size=(ob, M))
    res = rng.integers(-128, 128, size=P * ob * k * N, dtype=np.int8).tobytes()
    a_res, a_out = in_h * in_w * in_cb, in_h * in_w * in_cb + P * ob * k
    conv = I("conv", wait=["load"], signal=["post"], in_addr=0, in_h=in_h, in_w=in_w, in_cb=in_cb, out_h=oh,
             out_w=ow, k_h=k_h, k_w=k_w, stride_h=stride[0], stride_w=stride[1], dil_h=dil[0], dil_w=dil[1],
             pad_t=pad[0], pad_l=pad[1], pad_value=pad_value, w_addr=0, acc_addr=0, ob_count=ob)
    convs = [conv]
    if accumulate:
        # The same layer twice, the second adding onto the first: 2× every sum.
        convs = [conv.replace(wait=["load"], signal=0), conv.replace(wait=0, accumulate=1)]
    zp = -3
    prog = [I("load", buf="act", dram_addr=ACT, buf_addr=0, rows=1, cols=in_h * in_w * in_cb),
            I("load", buf="act", dram_addr=RES, buf_addr=a_res, rows=1, cols=P * ob * k),
            I("load", buf="wgt", dram_addr=WGT, buf_addr=0, rows=1, cols=nw),
            I("load", buf="param", dram_addr=PRM, buf_addr=0, rows=1, cols=ob, signal=["compute", "post"]),
            *convs,
            I("epilogue", wait=["load", "compute"], signal=["store"], acc_addr=0, pixels=P, ob_count=ob,
              param_addr=0, out_addr=a_out, out_stride=ob * k, zp_out=zp, out_min=zp if relu else -100,
              out_max=120, residual=int(residual), res_addr=a_res, res_stride=ob * k, zp_mid=2, zp_res=-1,
              res_mult_a=1 << 29, res_mult_b=3 << 28, res_shift=30),
            I("store", wait=["post"], buf="act", dram_addr=OUT, buf_addr=a_out, rows=1, cols=P * ob * k),
            I("end")]
    segs = [(ACT, act), (WGT, wgt), (PRM, prm.astype("<i4").tobytes()), (RES, res)]
    return prog, segs, [(OUT, P * ob * k * N)]


def pool_layer(c: NpuConfig, rng, *, mode="max", in_h=6, in_w=6, cb=2, k=(2, 2), stride=(2, 2), pad=(0, 0)):
    """LOAD act → POOL → STORE."""
    N = c.lanes
    oh = (in_h + 2 * pad[0] - k[0]) // stride[0] + 1
    ow = (in_w + 2 * pad[1] - k[1]) // stride[1] + 1
    act = rng.integers(-128, 128, size=in_h * in_w * cb * N, dtype=np.int8).tobytes()
    n_in, n_out = in_h * in_w * cb, oh * ow * cb
    prog = [I("load", buf="act", dram_addr=ACT, buf_addr=0, rows=1, cols=n_in, signal=["post"]),
            I("pool", wait=["load"], signal=["store"], mode=mode, in_addr=0, in_h=in_h, in_w=in_w, cb=cb,
              out_addr=n_in, out_h=oh, out_w=ow, k_h=k[0], k_w=k[1], stride_h=stride[0], stride_w=stride[1],
              pad_t=pad[0], pad_l=pad[1], zp_in=-5, zp_out=7, mult=int(rng.integers(1 << 29, 1 << 31)),
              shift=int(rng.integers(31, 35))),
            I("store", wait=["post"], buf="act", dram_addr=OUT, buf_addr=n_in, rows=1, cols=n_out),
            I("end")]
    return prog, [(ACT, act)], [(OUT, n_out * N)]


def dma_pattern(c: NpuConfig, rng, *, buf="act", rows=3, cols=5, dram_stride=None, buf_stride=7, offset=0):
    """2-D strided LOAD, then STOREs that read the words back through ACT (for WGT/PARAM only the load runs)."""
    N = c.lanes
    wb = c.word_bytes(__import__("tessera.isa", fromlist=["Buffer"]).Buffer[buf.upper()])
    align = min(wb, c.bus_bytes)
    dram_stride = dram_stride if dram_stride is not None else cols * wb + 3 * align
    data = rng.integers(-128, 128, size=rows * dram_stride + cols * wb + 64, dtype=np.int8).tobytes()
    src = ACT + offset * align
    prog = [I("load", buf=buf, dram_addr=src, dram_stride=dram_stride, buf_addr=3, buf_stride=buf_stride,
              rows=rows, cols=cols, signal=["store"])]
    if buf == "act":
        out_stride = cols * N + 2 * min(N, c.bus_bytes)
        prog.append(I("store", wait=["load"], buf="act", dram_addr=OUT + offset * min(N, c.bus_bytes),
                      dram_stride=out_stride, buf_addr=3, buf_stride=buf_stride, rows=rows, cols=cols))
        outs = [(OUT, rows * out_stride + 64)]
    else:
        prog.append(I("sync", unit="store", wait=["load"]))
        outs = []
    prog.append(I("end"))
    return prog, [(ACT, data)], outs


def runs_match(config: NpuConfig, sim, prog, segs, outs, *, timeout_cycles: int, backpressure=0.0, **opts):
    """Run ``prog`` (instructions or encoded bytes at 0, the data ``segs``, zeroed ``outs``) on the emulator and
    on ``sim`` from the same image; a program the emulator finishes must give the same outputs and MAC count.
    Returns (the emulator's NpuError or None, the RTL's CSRs)."""
    from tessera.sim.emulator import Emulator, NpuError

    from tessera.isa import ErrorCode
    code = encode_program(prog) if isinstance(prog, list) else prog
    emu = Emulator(config, check_hazards=True)
    segs = [(0, code)] + list(segs) + [(a, bytes(n)) for a, n in outs]
    for a, b in segs:
        emu.write(a, b)
        sim.write(a, b)
    try:
        emu.run(0)
        emu_err = None
    except NpuError as e:
        emu_err = e
    regs = sim.run(0, backpressure=backpressure, timeout_cycles=timeout_cycles, **opts)
    assert not regs["timeout"], "the NPU did not finish"
    if emu_err is None:
        assert regs["ERROR"] == 0, f"RTL stopped with {ErrorCode(regs['ERROR']).name} at 0x{regs['ERROR_PC']:x}"
        for a, n in outs:
            want = emu.read(a, n)
            got = sim.read(a, n)
            diff = np.nonzero(np.frombuffer(want, np.int8) != np.frombuffer(got, np.int8))[0]
            assert diff.size == 0, f"{diff.size} bytes differ at 0x{a:x}, first at +{diff[0]}"
        assert regs["macs"] == emu.stats.macs
    return emu_err, regs


def handwritten_runs_match(prog, sim, *, backpressure: float, seed: int):
    """The handwritten program ``prog`` through the runtime's backends, emulator and RTL (``sim``), on a random
    input: equal outputs; returns both RunResults."""
    from tessera.host.runtime import EmulatorBackend
    from tessera.sim.rtl import RtlBackend
    t = prog.inputs[0]
    img = np.random.default_rng(seed).integers(-128, 128, size=t.nbytes, dtype=np.int8).tobytes()
    emu, rtl = EmulatorBackend(prog), RtlBackend(prog, sim=sim, backpressure=backpressure)
    for be in (emu, rtl):
        be.write(t.addr, img)
    r_emu, r_rtl = emu.execute(), rtl.execute()
    o = prog.outputs[0]
    assert rtl.read(o.addr, o.nbytes) == emu.read(o.addr, o.nbytes)
    assert r_rtl.macs == r_emu.macs and r_rtl.cycles > 0
    return r_emu, r_rtl


def board_runs_match(program, board, seed: int):
    """``program`` (with an 8×8 ``input``) on the emulator and through the board backend over ``board`` (a
    simulated board transport), on a random input: equal outputs and MAC counts; returns the board's RunResult."""
    from tessera.host.runtime import Runtime
    image = np.random.default_rng(seed).integers(-128, 128, size=(8, 8, program.config.lanes), dtype=np.int8)
    with Runtime(program, backend="emulator") as emu:
        want = emu.run_quantized({"input": image})
        emu_macs = emu.last.macs
    with Runtime(program, backend="board", transport=board, timeout=1e-3) as rt:
        got = rt.run_quantized({"input": image})
        stats = rt.last
    assert np.array_equal(got["output"], want["output"])
    assert stats.backend == "board" and stats.cycles > 0 and stats.macs == emu_macs
    return stats


def compiled_runs_match(prog, sim, backpressure: float, seed: int):
    """Run a compiled program on a random quantized image on the emulator and on ``sim`` (RTL) and check
    every output byte; returns both runtimes' last run statistics (emulator, RTL)."""
    from tessera.host.runtime import Runtime
    rng = np.random.default_rng(seed)
    images = {t.name: rng.integers(-128, 128, size=(t.height, t.width, t.cpad), dtype=np.int8) for t in prog.inputs}
    emu = Runtime(prog)
    rtl = Runtime(prog, backend="rtl", sim=sim, backpressure=backpressure)
    want, got = emu.run_quantized(images), rtl.run_quantized(images)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    return emu.last, rtl.last


def _fault_program(bad, before=()):
    return encode_program([*before]) + bad + encode_program([I("end")])


def fault_programs(c: NpuConfig) -> dict:
    """Programs that fault, by name (each with no data: the fault comes before any result)."""
    return {
        "illegal_opcode": lambda: _fault_program(bytes([0x0F]) + bytes(INSTR_BYTES - 1),
                                                 [I("sync", unit="load")]),
        "zero_opcode": lambda: _fault_program(bytes(INSTR_BYTES)),
        "zero_count": lambda: _fault_program(encode(I("load", buf="act", rows=0, cols=1), check=False)),
        "reserved_bits": lambda: _fault_program(encode(I("sync", unit="post"))[:-1] + b"\x80"),
        "own_token": lambda: _fault_program(encode(I("conv", wait=["compute"], in_h=1, in_w=1, in_cb=1, out_h=1,
                                                     out_w=1, k_h=1, k_w=1, stride_h=1, stride_w=1, dil_h=1, dil_w=1,
                                                     ob_count=1), check=False)),
        "dram_range": lambda: encode_program([I("load", buf="act", dram_addr=c.dram_bytes - 16, rows=1, cols=8),
                                              I("end")]),
        "store_dram_range": lambda: encode_program([I("store", buf="act", dram_addr=c.dram_bytes - 4, rows=1,
                                                      cols=2), I("end")]),
        "buffer_range": lambda: encode_program([I("sync", unit="load"),
                                                I("load", buf="wgt", dram_addr=ACT, buf_addr=c.wbuf_words - 1,
                                                  rows=1, cols=2), I("end")]),
        "conv_buffer_range": lambda: encode_program([I("conv", in_addr=c.abuf_words - 3, in_h=2, in_w=2, in_cb=1,
                                                       out_h=1, out_w=1, k_h=1, k_w=1, stride_h=1, stride_w=1, dil_h=1,
                                                       dil_w=1, ob_count=1), I("end")]),
        "misaligned": lambda: encode_program([I("load", buf="param", dram_addr=ACT + 2, rows=1, cols=1), I("end")]),
        "load_acc": lambda: encode_program([I("load", buf="acc", dram_addr=ACT, rows=1, cols=1), I("end")]),
        "store_wgt": lambda: encode_program([I("store", buf="wgt", dram_addr=OUT, rows=1, cols=1), I("end")]),
        "deadlock": lambda: encode_program([I("sync", unit="compute", wait=["load"]), I("end")]),
        # Two faults: the emulator fetches the illegal instruction before it executes the bad LOAD.
        "exec_then_fetch_fault": lambda: encode_program([
            I("load", buf="act", dram_addr=c.dram_bytes - 16, rows=1, cols=8),
            I("sync", unit="post"), I("sync", unit="post")]) + bytes([0x0F]) + bytes(INSTR_BYTES - 1),
        "exec_fault_full_queue": lambda: encode_program([
            I("load", buf="act", dram_addr=c.dram_bytes - 16, rows=1, cols=8),
            *[I("sync", unit="load")] * (c.queue_depth + 1)]) + bytes(INSTR_BYTES),
    }
