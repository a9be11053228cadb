"""Classify images on your laptop's emulated NPU: preprocessing, run, top-5 ImageNet labels.

    python examples/score_image.py [--program MODEL.tsp] [--backend emulator|rtl] [IMAGE ...]

Without --program it builds the small hand-assembled classifier (random weights, so
its labels are arbitrary but deterministic); with a compiled ResNet-50 the same
code gives real predictions. Without images it scores a generated picture.
The CLI equivalent is `tessera score MODEL.tsp IMAGE...`.
"""

import argparse
import io

import numpy as np
from PIL import Image

from tessera.host import ImageModel, Runtime
from tessera.program import Program


def sample_image() -> bytes:
    """A sunset-like gradient, PNG-encoded."""
    y = np.linspace(0, 1, 96)[:, None, None]
    rgb = (np.array([255, 140, 40]) * (1 - y) + np.array([30, 40, 120]) * y) * np.ones((1, 128, 1))
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("images", nargs="*")
    ap.add_argument("--program", help="compiled .tsp (default: the tiny hand-assembled classifier)")
    ap.add_argument("--backend", default="emulator")
    args = ap.parse_args()

    if args.program:
        program = Program.load(args.program)
    else:
        from tessera.host.tinyclassifier import tiny_classifier
        program = tiny_classifier("sim")
    model = ImageModel(program)          # preprocessing, scores tensor and labels from the program's metadata
    print(f"preprocessing: {model.preprocess.to_dict()}")
    images = [(p, open(p, "rb").read()) for p in args.images] or [("<generated gradient>", sample_image())]
    with Runtime(program, backend=args.backend) as rt:
        for name, data in images:
            outputs = rt.run(model.inputs(data))
            print(f"{name}  ({rt.last.macs} MACs in {rt.last.seconds * 1e3:.1f} ms)")
            for label, p in model.top(outputs, 5):
                print(f"  {p:7.4f}  {label}")


if __name__ == "__main__":
    main()
