"""SSD post-processing on the host: prior boxes, box decoding and non-maximum suppression.

The NPU computes SSD300's convolutions; what follows them is data-dependent
control flow, so it runs here in numpy. Priors follow the SSD300 paper's
configuration (Liu et al., 2016, as in the reference Caffe implementation)
and are ordered like the network's head outputs: feature map, then row, column,
then anchor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import product

import numpy as np

from tessera.errors import UserError

__all__ = ["OUTPUTS", "SSD300", "Detector", "SsdConfig", "decode_boxes", "detect", "detector_meta", "nms", "prior_boxes"]


@dataclass(frozen=True)
class SsdConfig:
    image_size: int = 300
    feature_maps: tuple = (38, 19, 10, 5, 3, 1)
    steps: tuple = (8, 16, 32, 64, 100, 300)
    min_sizes: tuple = (30, 60, 111, 162, 213, 264)
    max_sizes: tuple = (60, 111, 162, 213, 264, 315)
    aspect_ratios: tuple = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
    variances: tuple = (0.1, 0.2)

    def anchors_per_cell(self) -> list[int]:
        return [2 + 2 * len(a) for a in self.aspect_ratios]


SSD300 = SsdConfig()


def prior_boxes(cfg: SsdConfig = SSD300) -> np.ndarray:
    """A×4 priors as (cx, cy, w, h), relative to the image size, clipped to [0, 1]."""
    out = []
    for k, f in enumerate(cfg.feature_maps):
        scale = cfg.image_size / cfg.steps[k]
        s_k = cfg.min_sizes[k] / cfg.image_size
        s_k1 = np.sqrt(s_k * (cfg.max_sizes[k] / cfg.image_size))
        for i, j in product(range(f), repeat=2):
            cx, cy = (j + 0.5) / scale, (i + 0.5) / scale
            out += [(cx, cy, s_k, s_k), (cx, cy, s_k1, s_k1)]
            for ar in cfg.aspect_ratios[k]:
                r = np.sqrt(ar)
                out += [(cx, cy, s_k * r, s_k / r), (cx, cy, s_k / r, s_k * r)]
    return np.clip(np.array(out, dtype=np.float32), 0.0, 1.0)


def decode_boxes(loc: np.ndarray, priors: np.ndarray, variances=(0.1, 0.2)) -> np.ndarray:
    """Offsets (A×4: dcx, dcy, dw, dh) against priors → corner boxes (A×4: x0, y0, x1, y1)."""
    cxcy = priors[:, :2] + loc[:, :2] * variances[0] * priors[:, 2:]
    wh = priors[:, 2:] * np.exp(loc[:, 2:] * variances[1])
    return np.concatenate([cxcy - wh / 2, cxcy + wh / 2], axis=1)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = lambda b: np.prod(np.clip(b[..., 2:] - b[..., :2], 0, None), axis=-1)  # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-12)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.45, top_k: int = 200) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best first."""
    order = np.argsort(-scores, kind="stable")[:top_k]
    keep = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[_iou(boxes[i], boxes[rest]) <= iou_threshold]
    return np.array(keep, dtype=np.int64)


def detect(loc: np.ndarray, conf: np.ndarray, *, cfg: SsdConfig = SSD300, score_threshold: float = 0.01,
           iou_threshold: float = 0.45, top_k: int = 200, background: int = 0) -> dict:
    """SSD detections for one image from the network's ``mbox_loc`` (A×4) and ``mbox_conf`` (A×C logits).

    Returns ``{"boxes": K×4 (x0, y0, x1, y1 in [0, 1]), "classes": K, "scores": K}``, best first.
    """
    loc = np.asarray(loc, dtype=np.float32).reshape(-1, 4)
    logits = np.asarray(conf, dtype=np.float32).reshape(loc.shape[0], -1)
    priors = prior_boxes(cfg)
    if priors.shape[0] != loc.shape[0]:
        raise ValueError(f"the network has {loc.shape[0]} anchors, the SSD config {priors.shape[0]}")
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = e / e.sum(axis=1, keepdims=True)
    boxes = decode_boxes(loc, priors, cfg.variances)
    out_b, out_c, out_s = [], [], []
    for c in range(probs.shape[1]):
        if c == background:
            continue
        sel = np.nonzero(probs[:, c] > score_threshold)[0]
        if sel.size == 0:
            continue
        keep = sel[nms(boxes[sel], probs[sel, c], iou_threshold, top_k)]
        out_b.append(boxes[keep])
        out_c.append(np.full(keep.size, c))
        out_s.append(probs[keep, c])
    if not out_b:
        return {"boxes": np.zeros((0, 4), np.float32), "classes": np.zeros(0, np.int64), "scores": np.zeros(0, np.float32)}
    b, c, s = np.concatenate(out_b), np.concatenate(out_c), np.concatenate(out_s)
    order = np.argsort(-s, kind="stable")[:top_k]
    return {"boxes": b[order].astype(np.float32), "classes": c[order].astype(np.int64), "scores": s[order].astype(np.float32)}


#: What a served detector answers, named and laid out as the TF Object Detection API does.
OUTPUTS = ("detection_boxes", "detection_classes", "detection_scores", "num_detections")


def detector_meta(cfg: SsdConfig = SSD300, *, loc: str = "mbox_loc", conf: str = "mbox_conf",
                  max_detections: int = 100, score_threshold: float = 0.01, iou_threshold: float = 0.45,
                  background: int = 0) -> dict:
    """``Program.meta`` entries that make a program an SSD detector (``meta["task"] == "detection"``)."""
    return {"task": "detection",
            "detection": {"kind": "ssd", "loc": loc, "conf": conf, "max_detections": max_detections,
                          "score_threshold": score_threshold, "iou_threshold": iou_threshold,
                          "background": background, "priors": asdict(cfg)}}


def _tuples(v):
    return tuple(_tuples(x) for x in v) if isinstance(v, (list, tuple)) else v


class Detector:
    """The host half of an SSD program: its NPU outputs → TF Object Detection API outputs.

    Parameters
    ----------
    spec : dict
        ``meta["detection"]`` as :func:`detector_meta` writes it.
    """

    def __init__(self, spec: dict):
        if not isinstance(spec, dict) or spec.get("kind") != "ssd":
            raise UserError(f"meta 'detection' must describe an SSD head (kind 'ssd'), not {spec!r}")
        try:
            self.cfg = SsdConfig(**{k: _tuples(v) for k, v in spec.get("priors", {}).items()})
            self.loc, self.conf = spec["loc"], spec["conf"]
            self.max_detections = int(spec["max_detections"])
            self.score_threshold = float(spec["score_threshold"])
            self.iou_threshold = float(spec["iou_threshold"])
            self.background = int(spec["background"])
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"meta 'detection' is incomplete or malformed: {e}") from None
        self.priors = prior_boxes(self.cfg)

    def shapes(self) -> dict:
        """Shape of each output for one image (padded to ``max_detections``)."""
        k = self.max_detections
        return dict(zip(OUTPUTS, ([1, k, 4], [1, k], [1, k], [1])))

    def detect(self, outputs: dict) -> dict:
        """``detect`` on one run's outputs: boxes (x0, y0, x1, y1), classes, scores, best first."""
        loc, conf = outputs[self.loc], outputs[self.conf]
        try:
            return detect(loc, conf, cfg=self.cfg, score_threshold=self.score_threshold,
                          iou_threshold=self.iou_threshold, top_k=self.max_detections, background=self.background)
        except ValueError as e:
            raise UserError(f"detector: {e}") from None

    def __call__(self, outputs: dict) -> dict:
        """One run's outputs → ``OUTPUTS``: boxes as [ymin, xmin, ymax, xmax], zero-padded, batch of 1."""
        d = self.detect(outputs)
        k, n = self.max_detections, len(d["scores"])
        boxes = np.zeros((1, k, 4), np.float32)
        boxes[0, :n] = d["boxes"][:, [1, 0, 3, 2]]
        classes = np.zeros((1, k), np.float32)
        classes[0, :n] = d["classes"]
        scores = np.zeros((1, k), np.float32)
        scores[0, :n] = d["scores"]
        return dict(zip(OUTPUTS, (boxes, classes, scores, np.array([n], np.float32))))
