"""TensorFlow ``TensorProto`` ↔ numpy, without the TensorFlow runtime.

Only the protobuf message classes of the ``tensorflow`` package are used, so
converting a request costs microseconds, not a TensorFlow session.
"""

from __future__ import annotations

import numpy as np

from tessera.errors import UserError

from ._protos import tensor_pb2, tensor_shape_pb2, types_pb2

__all__ = ["NUMERIC", "TensorError", "dtype_name", "string_values", "to_ndarray", "to_tensor_proto"]


class TensorError(UserError, ValueError):
    """A request tensor that cannot be converted (bad dtype, shape or content)."""


DT = types_pb2.DataType
# dtype enum -> (numpy dtype, repeated field used when tensor_content is empty)
NUMERIC = {
    DT.Value("DT_FLOAT"): (np.float32, "float_val"),
    DT.Value("DT_DOUBLE"): (np.float64, "double_val"),
    DT.Value("DT_HALF"): (np.float16, "half_val"),
    DT.Value("DT_INT8"): (np.int8, "int_val"),
    DT.Value("DT_UINT8"): (np.uint8, "int_val"),
    DT.Value("DT_INT16"): (np.int16, "int_val"),
    DT.Value("DT_UINT16"): (np.uint16, "int_val"),
    DT.Value("DT_INT32"): (np.int32, "int_val"),
    DT.Value("DT_INT64"): (np.int64, "int64_val"),
    DT.Value("DT_UINT32"): (np.uint32, "uint32_val"),
    DT.Value("DT_UINT64"): (np.uint64, "uint64_val"),
}
DT_STRING = DT.Value("DT_STRING")
DT_FLOAT = DT.Value("DT_FLOAT")
_FROM_NUMPY = {np.dtype(npt): enum for enum, (npt, _) in NUMERIC.items()}


def dtype_name(enum: int) -> str:
    try:
        return DT.Name(enum)
    except ValueError:
        return f"dtype {enum}"


def shape_of(proto) -> list[int]:
    if proto.tensor_shape.unknown_rank:
        raise TensorError("tensor has unknown rank")
    dims = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims):
        raise TensorError(f"tensor shape {dims} has unknown (-1) dimensions")
    return dims


def _fill(values, n: int, what: str):
    if len(values) == n:
        return values
    if len(values) == 1 and n > 1:      # TensorFlow's rule: a single value fills the tensor
        return np.full(n, values[0])
    raise TensorError(f"{what}: {len(values)} values for a tensor of {n} elements")


def to_ndarray(proto) -> np.ndarray:
    """A numeric ``TensorProto`` → numpy array. Raises :class:`TensorError`."""
    if proto.dtype == DT_STRING:
        raise TensorError("DT_STRING tensor where a numeric tensor is expected")
    if proto.dtype not in NUMERIC:
        raise TensorError(f"{dtype_name(proto.dtype)} is not supported; "
                          f"use one of {', '.join(dtype_name(d) for d in NUMERIC)}")
    npt, field = NUMERIC[proto.dtype]
    shape = shape_of(proto)
    n = int(np.prod(shape, dtype=np.int64))
    if proto.tensor_content:
        dt = np.dtype(npt).newbyteorder("<")
        if len(proto.tensor_content) != n * dt.itemsize:
            raise TensorError(f"tensor_content has {len(proto.tensor_content)} bytes, shape {shape} of "
                              f"{dtype_name(proto.dtype)} needs {n * dt.itemsize}")
        return np.frombuffer(proto.tensor_content, dtype=dt).astype(npt).reshape(shape)
    vals = getattr(proto, field)
    if proto.dtype == DT.Value("DT_HALF"):
        arr = np.asarray(vals, dtype=np.uint16).view(np.float16)
    else:
        arr = np.asarray(vals, dtype=npt)
    return np.asarray(_fill(arr, n, dtype_name(proto.dtype)), dtype=npt).reshape(shape)


def string_values(proto) -> tuple[list[bytes], list[int]]:
    """A ``DT_STRING`` tensor → its byte strings (flattened) and its shape."""
    if proto.dtype != DT_STRING:
        raise TensorError(f"{dtype_name(proto.dtype)} tensor where DT_STRING (encoded images) is expected")
    shape = shape_of(proto)
    n = int(np.prod(shape, dtype=np.int64))
    vals = list(proto.string_val)
    return list(_fill(vals, n, "DT_STRING")) if n else [], shape


def to_tensor_proto(x) -> tensor_pb2.TensorProto:
    """numpy array (numeric) or list of ``bytes`` → ``TensorProto`` (numeric data as little-endian tensor_content)."""
    if isinstance(x, (bytes, bytearray)):
        x = [bytes(x)]
    if isinstance(x, (list, tuple)) and x and all(isinstance(v, (bytes, bytearray)) for v in x):
        shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(x))])
        return tensor_pb2.TensorProto(dtype=DT_STRING, tensor_shape=shape, string_val=[bytes(v) for v in x])
    a = np.asarray(x)
    if a.dtype not in _FROM_NUMPY:
        raise TensorError(f"numpy dtype {a.dtype} has no TensorProto equivalent here")
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in a.shape])
    return tensor_pb2.TensorProto(dtype=_FROM_NUMPY[a.dtype], tensor_shape=shape,
                                  tensor_content=np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes())
