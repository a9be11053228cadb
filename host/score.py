"""``tessera score PROGRAM IMAGE... [--backend B] [--top 5] [--json]``: classify image files.

Prints the top-k labels per image (or a JSON list). Unreadable images are
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
                for item in res["top"]:
                    print(f"  {item['probability']:8.4f}  {item['label']}")
    if args.json:
        print(json.dumps(results, indent=1))
    if failed:
        raise UserError(f"{len(failed)} of {len(args.images)} images could not be scored (first: {failed[0]})")
    return 0
