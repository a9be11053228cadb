"""``tessera score PROGRAM IMAGE... [--backend B] [--top 5] [--json]``: classify image files.

Prints the top-k labels per image (or a JSON list); for a detector (``meta["task"] ==
"detection"``) the top-k detections instead: score, label and box [ymin, xmin, ymax, xmax]. Unreadable images are
reported one line each on stderr and skipped; the command then exits with
status 2 after scoring the rest.
"""

from __future__ import annotations

import json
import sys

from tqdm import tqdm

from tessera.errors import UserError
from tessera.program import Program

from .model import ImageModel
from .preprocess import ImageError
from .runtime import Runtime

__all__ = ["score_command", "score_files"]

#: From this many images on, a progress bar runs on stderr.
PROGRESS_FROM = 8


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ImageError(f"cannot read: {e.strerror}") from None


def score_files(runtime: Runtime, model: ImageModel, paths, top: int = 5, *, progress: bool | None = None):
    """Yield ``(path, result)`` per image; ``result`` is a dict or an :class:`ImageError`."""
    show = len(paths) >= PROGRESS_FROM if progress is None else progress
    for path in tqdm(paths, desc="scoring", unit="image", disable=not show, file=sys.stderr):
        try:
            inputs = model.inputs(_read(path))
        except ImageError as e:
            yield path, e
            continue
        outputs = runtime.run(inputs)
        if model.detector:
            d = model.detections(outputs)
            n = min(int(d["num_detections"][0]), top)
            found = [{"label": model.label(int(c)), "class": int(c), "score": float(sc),
                      "box": [round(float(v), 4) for v in b]}
                     for b, c, sc in zip(d["detection_boxes"][0, :n], d["detection_classes"][0, :n],
                                         d["detection_scores"][0, :n])]
            yield path, {"image": path, "detections": found, **runtime.last.to_dict()}
            continue
        yield path, {"image": path, "top": [{"label": lab, "probability": p} for lab, p in model.top(outputs, top)],
                     **runtime.last.to_dict()}


def score_command(args) -> int:
    if args.top < 1:
        raise UserError(f"--top must be at least 1, not {args.top}")
    program = Program.load(args.program)
    model = ImageModel(program)
    results, failed = [], []
    with Runtime(program, backend=args.backend) as rt:
        for path, res in score_files(rt, model, args.images, args.top):
            if isinstance(res, ImageError):
                failed.append(path)
                print(f"tessera score: {path}: {res}", file=sys.stderr)
                continue
            results.append(res)
            if not args.json:
                print(path)
                for item in res.get("top", ()):
                    print(f"  {item['probability']:8.4f}  {item['label']}")
                for item in res.get("detections", ()):
                    print(f"  {item['score']:8.4f}  {item['label']:<12} [{', '.join(f'{v:.3f}' for v in item['box'])}]")
                if "detections" in res and not res["detections"]:
                    print("  (no detections)")
    if args.json:
        print(json.dumps(results, indent=1))
    if failed:
        raise UserError(f"{len(failed)} of {len(args.images)} images could not be scored (first: {failed[0]})")
    return 0
