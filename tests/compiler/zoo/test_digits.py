"""The digits data set and model: real data from scikit-learn, a trainable Keras ResNet."""

import numpy as np
import pytest

from tessera.compiler.zoo import digits


def test_digits_split_is_deterministic_and_disjoint():
    a, b = digits.load_digits_split(0), digits.load_digits_split(0)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert a.x_train.shape[1:] == (digits.SIZE, digits.SIZE, 1)
    assert len(a.x_train) + len(a.x_test) == 1797
    assert 0.0 <= a.x_train.min() and a.x_train.max() <= 1.0
    # Every class appears in the held-out split.
    assert set(a.y_test.tolist()) == set(range(10))


def test_digits_model_learns_above_chance(tmp_path):
    pytest.importorskip("keras")
    r = digits.train(tmp_path, epochs=2)
    assert r["float_accuracy"] > 0.5  # chance is 0.1; two epochs are enough to leave it far behind
    with np.load(r["calibration"]) as f:
        assert f[digits.INPUT_NAME].shape == (64, 1, digits.SIZE, digits.SIZE, 1)  # samples of batch-1 inputs


@pytest.fixture(scope="module")
def trained_digits(tmp_path_factory):
    pytest.importorskip("keras")
    d = tmp_path_factory.mktemp("digits")
    r = digits.train(d, epochs=8)
    from tessera.compiler.zoo import build_program
    prog, _ = build_program("digits", d / "digits.tsp", config="sim", weights=r["weights"])
    return d, r, prog


def test_digits_int8_accuracy_within_half_a_point_of_float(trained_digits):
    from tessera.host.runtime import Runtime
    d, r, prog = trained_digits
    with np.load(r["test"]) as f:
        x, y = f["x"], f["y"]
    with Runtime(prog, backend="emulator") as rt:
        pred = np.array([rt.run({digits.INPUT_NAME: x[i:i + 1]})[digits.OUTPUT_NAME].argmax() for i in range(len(x))])
    int8 = float((pred == y).mean())
    assert r["float_accuracy"] > 0.95  # a real model on real data, not a random-weight stand-in
    assert int8 >= r["float_accuracy"] - 0.005, (int8, r["float_accuracy"])


def test_digits_program_carries_preprocessing_and_labels(trained_digits):
    _, _, prog = trained_digits
    assert prog.meta["labels"] == [str(i) for i in range(10)]
    assert prog.inputs[0].layout == "NHWC" and prog.inputs[0].shape == [1, digits.SIZE, digits.SIZE, 1]
    assert [op["op"] for op in prog.host_ops] == ["Softmax"]
