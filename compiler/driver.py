"""``tessera compile``: the compiler pipeline and its command-line handler."""

from __future__ import annotations

import json
import os
import time

import onnx
from tessera.sim.cyclemodel import predict

from tessera.arch import get_config
from tessera.errors import UserError

from .codegen import EmitInstructions, TileForBuffers
from .frontend import load_onnx, lower
from .ir import CompileError
from .ort_paths import average_pool_paths
from .passes import FoldBatchNorm, run_passes
from .tf_frontend import is_tf_model, strip_input_layout, tf_to_onnx

__all__ = ["compile_command", "compile_model", "compile_tf_model", "format_report", "is_quantized"]

_QOPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "QGemm"}


def is_quantized(model: onnx.ModelProto) -> bool:
    return any(n.op_type in _QOPS for n in model.graph.node)


def compile_model(model, config, *, calibrate=None, name: str | None = None):
    """Compile an ONNX model (path or ModelProto) for ``config``.

    Returns ``(program, reports)``; ``reports`` is a list of
    :class:`~tessera.compiler.codegen.LayerReport`, one per NPU layer.
    """
    if isinstance(config, str):
        config = get_config(config)
    t0 = time.perf_counter()
    m = load_onnx(model)
    if not is_quantized(m):
        if calibrate is None:
            raise CompileError(f"{name or 'model'}: the model is not quantized (no QuantizeLinear/QLinear* "
                               f"nodes); pass --calibrate DIR|NPZ to calibrate and quantize it")
        from .calibrate import quantize_float_model
        m = load_onnx(quantize_float_model(FoldBatchNorm()(m), calibrate))
    elif calibrate is not None:
        raise CompileError(f"{name or 'model'}: --calibrate is for float models, and this model is already quantized")
    g = lower(m)
    ort_pools = average_pool_paths(m)
    for op in g.ops:
        if op.kind == "pool" and op.name in ort_pools:
            op.attrs["onnxruntime_path"] = ort_pools[op.name]   # codegen picks POOL's arithmetic by it
    g = run_passes(g, config)
    plans = TileForBuffers(config)(g)
    meta = {"source": name or (model if isinstance(model, str) else "model"), "compiler": "tessera.compiler"}
    prog, reports = EmitInstructions(config, plans)(g, meta)
    prog.meta["compile_seconds"] = round(time.perf_counter() - t0, 3)
    return prog, reports


def compile_tf_model(path, config, *, calibrate=None, name: str | None = None):
    """Compile a Keras file or SavedModel folder: tf2onnx, then :func:`compile_model`.

    The NHWC→NCHW conversion tf2onnx puts after image inputs is stripped (the NPU stores
    pixels channel-innermost anyway); the program's inputs keep the Keras model's NHWC
    shapes, and NHWC calibration arrays are transposed to match.
    """
    import tempfile

    import numpy as np

    proto, nhwc = strip_input_layout(tf_to_onnx(path))
    with tempfile.TemporaryDirectory() as tmp:
        if nhwc and calibrate is not None and str(calibrate).endswith(".npz"):
            with np.load(calibrate) as f:
                arrays = {k: (np.moveaxis(f[k], -1, -3) if k in nhwc else f[k]) for k in f.files}
            calibrate = os.path.join(tmp, "calibration_nchw.npz")
            np.savez(calibrate, **arrays)
        prog, reports = compile_model(proto, config, calibrate=calibrate, name=name or str(path))
    for t in prog.inputs:
        if t.name in nhwc:
            t.shape, t.layout = nhwc[t.name], "NHWC"
    return prog, reports


def format_report(reports, prog) -> str:
    lines = ["| layer | op | input | output | MACs | instructions | tiles | buffer words (per slot) |",
             "|---|---|---|---|---:|---:|---:|---|"]
    for r in reports:
        buf = ", ".join(f"{k} {v}" for k, v in r.buffers.items())
        lines.append(f"| {r.name} | {r.op} | {'×'.join(map(str, r.in_shape))} | {'×'.join(map(str, r.out_shape))} "
                     f"| {r.macs} | {r.instructions} | {r.tiles} | {buf} |")
    total = sum(r.macs for r in reports)
    est = predict(prog)
    lines.append(f"\n{len(reports)} layers, {total} MACs, {len(prog.instructions)} instructions, "
                 f"{len(prog.constants)} constant bytes, {prog.scratch_size} scratch bytes; "
                 f"cycle model: {est.cycles:.0f} cycles, MAC array busy {est.compute_busy:.0%}, "
                 f"useful MACs {total / (est.cycles * prog.config.macs_per_cycle):.0%} of peak"
                 + "".join(f"; host op {h['op']} ({h['name']})" for h in prog.host_ops))
    return "\n".join(lines)


def compile_command(args) -> int:
    config = get_config(args.config)
    if not os.path.exists(args.model):
        raise UserError(f"{args.model}: no such file")
    try:
        model = args.model
        if is_tf_model(model):
            prog, reports = compile_tf_model(model, config, calibrate=args.calibrate, name=args.model)
        elif os.path.isdir(model):
            raise CompileError(f"{model} is a folder without saved_model.pb; supported: .onnx, .keras, "
                               f"or a SavedModel folder")
        else:
            prog, reports = compile_model(model, config, calibrate=args.calibrate, name=args.model)
    except CompileError as e:
        raise UserError(f"{args.model}: {e}") from None
    try:
        prog.save(args.output)
    except OSError as e:
        raise UserError(f"{args.output}: cannot write the program: {e.strerror}") from None
    if args.json:
        print(json.dumps({"output": args.output, "instructions": len(prog.instructions),
                          "constants": len(prog.constants), "macs": prog.meta.get("macs"),
                          "seconds": prog.meta.get("compile_seconds"),
                          "layers": [r.to_dict() for r in reports] if args.report else None}))
    else:
        if args.report:
            print(format_report(reports, prog))
        print(f"compiled {args.model} for {config.name}: {len(reports)} layers, {len(prog.instructions)} "
              f"instructions -> {args.output} ({prog.meta['compile_seconds']:.2f} s)")
    return 0
