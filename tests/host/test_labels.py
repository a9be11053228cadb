"""ImageNet labels from package data, label selection and top-k."""

import numpy as np
import pytest

from tessera.errors import UserError
from tessera.host.labels import imagenet1k, labels_for, topk


def test_imagenet1k_has_the_standard_class_order():
    names = imagenet1k()
    assert len(names) == 1000
    assert names[0] == "tench" and names[1] == "goldfish" and names[281] == "tabby" and names[999] == "toilet tissue"


def test_labels_for_specs():
    assert labels_for("imagenet1k", 1000)[281] == "tabby"
    bg = labels_for("imagenet1k+background", 1001)
    assert bg[0] == "background" and bg[282] == "tabby"
    assert labels_for(None, 1000)[0] == "tench"
    assert labels_for(None, 3) == ["class_0", "class_1", "class_2"]
    assert labels_for(["a", "b"], 2) == ["a", "b"]


@pytest.mark.parametrize("spec, n, message", [
    ("imagenet1k", 10, "1000 labels for an output of 10 classes"),
    ("coco", 80, "must be 'imagenet1k'"),
    ([1, 2], 2, "must be 'imagenet1k'"),
])
def test_labels_for_errors(spec, n, message):
    with pytest.raises(UserError, match=message):
        labels_for(spec, n)


def test_topk_orders_by_probability_and_breaks_ties_by_index():
    p = np.array([[0.1, 0.3, 0.05, 0.3, 0.25]])
    assert topk(p, list("abcde"), 3) == [("b", 0.3), ("d", 0.3), ("e", 0.25)]
    assert len(topk(p, list("abcde"), 50)) == 5


def test_topk_softmaxes_logits():
    top = topk([0.0, np.log(3.0)], ["x", "y"], 2, probabilities=False)
    assert top[0][0] == "y" and top[0][1] == pytest.approx(0.75) and top[1][1] == pytest.approx(0.25)


def test_topk_label_count_mismatch():
    with pytest.raises(ValueError, match="2 labels for 3 scores"):
        topk([1, 2, 3], ["a", "b"])
