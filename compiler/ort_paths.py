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

__all__ = ["unfused_average_pools"]


def unfused_average_pools(model: onnx.ModelProto) -> frozenset[str]:
    """Names of the AveragePool nodes onnxruntime's CPU provider keeps as float AveragePool.

    Empty when the model has none, when onnxruntime is not installed, or when it cannot load
    the model (the compiler then uses the fixed-point rule, which agrees within one step).
    """
    names = {n.name for n in model.graph.node if n.op_type == "AveragePool" and n.name}
    if not names or model.ByteSize() > (1 << 31) - 1:
        return frozenset()
    try:
        import onnxruntime as ort
    except ImportError:
        return frozenset()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "optimized.onnx")
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.optimized_model_filepath = path
        try:
            ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            optimized = onnx.load(path, load_external_data=False)
        except Exception:  # noqa: BLE001 - any failure: no fused/unfused knowledge, the safe default
            return frozenset()
    fused = {n.name for n in optimized.graph.node if n.op_type == "QLinearAveragePool"}
    return frozenset(names - fused)
