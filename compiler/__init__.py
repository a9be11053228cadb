"""The ONNX → NPU compiler (``tessera compile``); see docs/compiler.md.

``compile_model(model, config, calibrate=None)`` returns ``(Program, [LayerReport])``.
"""


def compile_model(*args, **kwargs):
    """Compile an ONNX model (path or ModelProto) for an NPU config; see :func:`tessera.compiler.driver.compile_model`."""
    from .driver import compile_model as _compile
    return _compile(*args, **kwargs)


__all__ = ["compile_model"]
