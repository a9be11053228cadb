"""TensorProto ↔ numpy conversion, checked against TensorFlow's own make_tensor_proto / make_ndarray."""

import numpy as np
import pytest

from tessera.host._protos import tensor_pb2, types_pb2
from tessera.host.tensors import TensorError, string_values, to_ndarray, to_tensor_proto

DTYPES = [np.float32, np.float64, np.float16, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.int64,
          np.uint32, np.uint64]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_roundtrip_through_tensor_content(dtype):
    a = (np.arange(24).reshape(2, 3, 4) % 7).astype(dtype)
    b = to_ndarray(to_tensor_proto(a))
    assert b.dtype == a.dtype and b.shape == a.shape
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int8, np.uint8, np.int32, np.int64],
                         ids=lambda d: np.dtype(d).name)
def test_reads_tensorflows_tensor_content(dtype):
    import tensorflow as tf
    a = (np.arange(6).reshape(2, 3) - (2 if np.dtype(dtype).kind != "u" else 0)).astype(dtype)
    got = to_ndarray(tf.make_tensor_proto(a))
    assert got.dtype == a.dtype
    np.testing.assert_array_equal(got, a)


@pytest.mark.parametrize("dtype, field, values, want", [
    ("DT_FLOAT", "float_val", [1.5, -2.0], np.float32),
    ("DT_DOUBLE", "double_val", [1.5, -2.0], np.float64),
    ("DT_HALF", "half_val", [0x3E00, 0xC000], np.float16),      # float16 bit patterns of 1.5 and -2.0
    ("DT_INT8", "int_val", [-3, 4], np.int8),
    ("DT_UINT8", "int_val", [250, 4], np.uint8),
    ("DT_INT32", "int_val", [-70000, 4], np.int32),
    ("DT_INT64", "int64_val", [-(1 << 40), 4], np.int64),
])
def test_reads_typed_value_fields(dtype, field, values, want):
    # Clients other than TensorFlow's Python (REST gateways, Java) send *_val fields instead of tensor_content.
    p = tensor_pb2.TensorProto(dtype=types_pb2.DataType.Value(dtype), **{field: values})
    p.tensor_shape.dim.add(size=2)
    got = to_ndarray(p)
    expect = np.array(values, np.uint16).view(np.float16) if dtype == "DT_HALF" else np.array(values, want)
    assert got.dtype == want
    np.testing.assert_array_equal(got, expect)


def test_our_protos_read_in_tensorflow():
    import tensorflow as tf
    a = np.random.default_rng(0).normal(size=(1, 5)).astype(np.float32)
    np.testing.assert_array_equal(tf.make_ndarray(to_tensor_proto(a)), a)
    s = tf.make_ndarray(to_tensor_proto([b"\xff\xd8jpeg", b"png"]))
    assert list(s) == [b"\xff\xd8jpeg", b"png"]


def test_single_value_fills_tensor():
    p = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[2.5])
    p.tensor_shape.dim.add(size=2)
    p.tensor_shape.dim.add(size=2)
    np.testing.assert_array_equal(to_ndarray(p), np.full((2, 2), 2.5, np.float32))


def test_conversion_errors():
    bad_len = to_tensor_proto(np.zeros((2, 2), np.float32))
    bad_len.tensor_content = bad_len.tensor_content[:-1]
    with pytest.raises(TensorError, match="tensor_content has 15 bytes"):
        to_ndarray(bad_len)
    few = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT32, int_val=[1, 2])
    few.tensor_shape.dim.add(size=3)
    with pytest.raises(TensorError, match="2 values for a tensor of 3 elements"):
        to_ndarray(few)
    with pytest.raises(TensorError, match="DT_BOOL is not supported"):
        to_ndarray(tensor_pb2.TensorProto(dtype=types_pb2.DT_BOOL, bool_val=[True]))
    with pytest.raises(TensorError, match="DT_STRING tensor where a numeric"):
        to_ndarray(to_tensor_proto([b"x"]))
    with pytest.raises(TensorError, match="where DT_STRING"):
        string_values(to_tensor_proto(np.zeros(1, np.float32)))
    unknown = to_tensor_proto(np.zeros(2, np.float32))
    unknown.tensor_shape.dim[0].size = -1
    with pytest.raises(TensorError, match="unknown"):
        to_ndarray(unknown)


def test_string_values_scalar_and_vector():
    p = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"abc"])
    assert string_values(p) == ([b"abc"], [])
    assert string_values(to_tensor_proto([b"a", b"b"])) == ([b"a", b"b"], [2])
