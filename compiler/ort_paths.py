"""Which arithmetic onnxruntime uses for an op whose result depends on its execution plan.

onnxruntime runs DQ → AveragePool → Q either fused into QLinearAveragePool or as a float
AveragePool between a DequantizeLinear and a QuantizeLinear, and the two round a window mean
differently (docs/numerics.md). Which one it picks depends on its graph optimizer and the CPU
(its x86 int8 convolutions move their activations to uint8, and an average pool whose input and
output types then differ is not fused). The compiler asks onnxruntime's optimizer, on the machine
that compiles, and lowers each pool to the POOL arithmetic that reproduces that path.
"""

from __future__ import annotations

import os
import tempfile

import onnx

__all__ = ["average_pool_paths"]

#: Path of a pool onnxruntime leaves unfused (DQ → float AveragePool → Q).
UNFUSED = "unfused"


def average_pool_paths(model: onnx.ModelProto) -> dict:
    """How onnxruntime's CPU provider runs each named AveragePool of a QDQ model.

    ``{name: "unfused"}`` for a float AveragePool between DequantizeLinear and QuantizeLinear,
    ``{name: zp}`` for one fused into QLinearAveragePool, whose output zero point onnxruntime
    then holds as ``zp`` (int8, or uint8 after its x86 int8-to-uint8 conversion). Pools it does
    not report, and every pool when onnxruntime is not installed or cannot load the model, are
    missing (the compiler then uses the fixed-point rule, which agrees within one step).
    """
    by_output = {n.output[0]: n.name for n in model.graph.node if n.op_type == "AveragePool" and n.name}
    names = set(by_output.values())
    if not names or model.ByteSize() > (1 << 31) - 1:
        return {}
    try:
        import onnxruntime as ort
    except ImportError:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "optimized.onnx")
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.optimized_model_filepath = path
        try:
            ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            optimized = onnx.load(path, load_external_data=False)
        except Exception:  # noqa: BLE001 - any failure: no knowledge of the paths, the safe default
            return {}
    inits = {t.name: t for t in optimized.graph.initializer}
    paths = {}
    for n in optimized.graph.node:
        if n.op_type == "QLinearAveragePool" and n.name in names and len(n.input) > 4 and n.input[4] in inits:
            paths[n.name] = int(onnx.numpy_helper.to_array(inits[n.input[4]]).reshape(-1)[0])
        elif n.op_type == "AveragePool":
            # Kept in float: under its own name and output, or moved to blocked channels by the layout
            # pass, which names the node after the original output ("<output>_nchwc").
            name = n.name if n.name in names else by_output.get(n.output[0], by_output.get(n.name.removesuffix("_nchwc")))
            if name is not None:
                paths[name] = UNFUSED
    return paths
