"""The compiler's integer graph: quantized tensors and the NPU-level ops between them.

The front end lowers an ONNX model (QDQ, QOperator, or float after calibration)
into a :class:`Graph`; the passes in :mod:`tessera.compiler.passes` rewrite it
until only ``conv``, ``pool``, ``alias`` and host ops remain; the back end tiles
and emits those.

Every activation tensor is int8 with a per-tensor ``scale`` and ``zero_point``
(uint8 source tensors are already shifted by -128). Shapes are the source
model's (batch 1, NCHW or NC).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tessera.errors import UserError

__all__ = ["CompileError", "Graph", "Op", "QTensor", "unsupported"]


class CompileError(UserError, ValueError):
    """The model cannot be compiled; the message names the node, op and what is (un)supported."""


def unsupported(node_name: str, op_type: str, what: str, supported: str) -> CompileError:
    """A :class:`CompileError` in the one format every pass uses."""
    return CompileError(f"node {node_name!r} ({op_type}): {what} is not supported; supported: {supported}")


@dataclass
class QTensor:
    """An int8 activation tensor (``real = scale * (q - zero_point)``)."""

    name: str
    shape: tuple
    scale: float | None = None
    zero_point: int | None = None
    src_dtype: str = "int8"
    cpad: int = 0                  # physical channels per pixel (set by PadChannels)
    #: physical channel of each logical channel when they are not 0..C-1 (a concatenation of padded parts)
    chan_map: object = None
    #: (base tensor, first physical channel) when this tensor is a channel slice of a concatenation
    view: object = None

    @property
    def pitch(self) -> int:
        """Bytes between consecutive pixels in external memory."""
        return self.cpad if self.view is None else self.view[0].cpad

    @property
    def channels(self) -> int:
        return int(self.shape[1])

    @property
    def height(self) -> int:
        return int(self.shape[2]) if len(self.shape) == 4 else 1

    @property
    def width(self) -> int:
        return int(self.shape[3]) if len(self.shape) == 4 else 1

    @property
    def layout(self) -> str:
        return "NCHW" if len(self.shape) == 4 else "NC"

    def quantize_real(self, v: float) -> int:
        """Real value → clamped int8 code of this tensor."""
        return int(min(max(round(v / self.scale) + self.zero_point, -128), 127))


@dataclass
class Op:
    """One integer op.

    ``kind`` is one of ``conv`` (also fully connected layers once lowered),
    ``gemm``, ``add``, ``pool``, ``clamp``, ``requant``, ``alias`` (a
    Reshape/Flatten that moves no data) and ``concat``. ``name`` and
    ``onnx_op`` are the source node's, for messages and the report.
    """

    kind: str
    name: str
    onnx_op: str
    inputs: list
    output: str
    attrs: dict = field(default_factory=dict)


@dataclass
class Graph:
    """The integer graph: tensors by name, ops in topological order, I/O bindings."""

    tensors: dict = field(default_factory=dict)
    ops: list = field(default_factory=list)
    #: (source model input name, int tensor name)
    inputs: list = field(default_factory=list)
    #: (source model output name, int tensor name)
    outputs: list = field(default_factory=list)
    #: host-side ops in DESIGN.md's format; their inputs are output names above
    host_ops: list = field(default_factory=list)
    #: int input tensor -> (layout, source shape) for inputs the source model gives as NHWC
    input_layouts: dict = field(default_factory=dict)
    #: source output name -> its shape, for outputs that are a free reshape of an NPU tensor
    output_views: dict = field(default_factory=dict)
    #: int input tensor -> {"shape": source NCHW shape, "pad": [t, l, b, r], "block": b} for inputs the
    #: host stores padded and space-to-depth packed (the tensor's own shape is then the stored image's)
    input_transforms: dict = field(default_factory=dict)

    def producer(self, tensor: str):
        for op in self.ops:
            if op.output == tensor:
                return op
        return None

    def consumers(self, tensor: str) -> list:
        return [op for op in self.ops if tensor in op.inputs]

    def is_output(self, tensor: str) -> bool:
        return any(t == tensor for _, t in self.outputs)

    def rename(self, old: str, new: str) -> None:
        """Replace every use of tensor ``old`` by ``new`` (ops and outputs)."""
        for op in self.ops:
            op.inputs = [new if t == old else t for t in op.inputs]
        self.outputs = [(n, new if t == old else t) for n, t in self.outputs]

    def remove_unused(self) -> None:
        used = {t for op in self.ops for t in op.inputs} | {t for _, t in self.outputs} | {t for _, t in self.inputs}
        used |= {op.output for op in self.ops}
        for name in list(self.tensors):
            if name not in used:
                del self.tensors[name]
