"""An image model view of a program: preprocessing, then the scores tensor and its labels
(classifiers) or boxes, classes and scores (detectors, ``meta["task"] == "detection"``).

Shared by ``tessera score``, the gRPC server and the examples, so they all read
``Program.meta`` the same way (see docs/host.md).
"""

from __future__ import annotations

from tessera.errors import UserError
from tessera.program import Program

from .detection import Detector
from .labels import labels_for, topk
from .preprocess import Preprocess

__all__ = ["ImageModel", "scores_tensor"]


def scores_tensor(program: Program) -> tuple[str, bool]:
    """The output to rank for top-k and whether it holds probabilities.

    ``meta["scores"]`` if given, else the output of the last Softmax host op,
    else the last NPU output (logits).
    """
    softmax_outs = [op["outputs"][0] for op in program.host_ops if op.get("op") == "Softmax"]
    names = [t.name for t in program.outputs] + [op["outputs"][0] for op in program.host_ops]
    name = program.meta.get("scores")
    if name is None:
        if softmax_outs:
            name = softmax_outs[-1]
        elif program.outputs:
            name = program.outputs[-1].name
        else:
            raise UserError("the program has no outputs")
    if name not in names:
        raise UserError(f"meta 'scores' names {name!r}, which is not an output; outputs: {names}")
    return name, name in softmax_outs


def _classes(program: Program, name: str) -> int:
    for t in program.outputs:
        if t.name == name:
            return t.channels
    for op in program.host_ops:
        if op["outputs"][0] == name:
            return _classes(program, op["inputs"][0])
    raise UserError(f"no output {name!r}")


class ImageModel:
    """Preprocessing, scores and labels of an image classifier or detector program.

    A detector (``meta["task"] == "detection"``) has ``detector`` set and no scores tensor:
    :meth:`detections` turns a run's outputs into the TF Object Detection API outputs.

    Parameters
    ----------
    program : Program
    **limits
        ``max_pixels`` / ``max_bytes`` for :func:`tessera.host.preprocess.decode_image`.
    """

    def __init__(self, program: Program, **limits):
        self.program = program
        self.preprocess = Preprocess.from_program(program, **limits)
        self.input_name = self.preprocess.tensor.name
        task = program.meta.get("task", "classification")
        if task not in ("classification", "detection"):
            raise UserError(f"meta 'task' is {task!r}; known tasks: classification, detection")
        self.detector = Detector(program.meta.get("detection")) if task == "detection" else None
        if self.detector:
            self.scores_name, self.probabilities = None, True
            spec = program.meta.get("labels")
            self.labels = labels_for(spec, len(spec)) if isinstance(spec, (list, tuple)) else None
        else:
            self.scores_name, self.probabilities = scores_tensor(program)
            self.labels = labels_for(program.meta.get("labels"), _classes(program, self.scores_name))

    def inputs(self, data: bytes) -> dict:
        """Encoded image → the ``Runtime.run`` input dict."""
        return {self.input_name: self.preprocess(data)}

    def label(self, c: int) -> str:
        return self.labels[c] if self.labels and 0 <= c < len(self.labels) else f"class_{c}"

    def detections(self, outputs: dict) -> dict:
        """A detector's outputs for one run: ``detection_boxes`` ([ymin, xmin, ymax, xmax]), ``..._classes``,
        ``..._scores`` (zero-padded to the maximum) and ``num_detections``."""
        if self.detector is None:
            raise UserError("this program is not a detector (meta 'task' is not 'detection')")
        return self.detector(outputs)

    def top(self, outputs: dict, k: int = 5) -> list[tuple[str, float]]:
        """Top-k ``(label, probability)`` of one run's outputs."""
        return topk(outputs[self.scores_name], self.labels, k, probabilities=self.probabilities)
