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
