"""An image classifier view of a program: preprocessing, the scores tensor and its labels.

Shared by ``tessera score``, the gRPC server and the examples, so they all read
``Program.meta`` the same way (see docs/host.md).
"""

from __future__ import annotations

from tessera.errors import UserError
from tessera.program import Program

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
    """Preprocessing, scores and labels of an image classifier program.

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
        self.scores_name, self.probabilities = scores_tensor(program)
        self.labels = labels_for(program.meta.get("labels"), _classes(program, self.scores_name))

    def inputs(self, data: bytes) -> dict:
        """Encoded image → the ``Runtime.run`` input dict."""
        return {self.input_name: self.preprocess(data)}

    def top(self, outputs: dict, k: int = 5) -> list[tuple[str, float]]:
        """Top-k ``(label, probability)`` of one run's outputs."""
        return topk(outputs[self.scores_name], self.labels, k, probabilities=self.probabilities)
