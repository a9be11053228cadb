"""`make demo`: Tessera end to end, on real data.

1. A hand-assembled conv3x3 → ReLU → maxpool program, listed with `tessera disasm`, run with
   `tessera run`, and checked against an independent numpy reference.
2. A small ResNet trained on scikit-learn's handwritten digits (real data, nothing downloaded):
   `tessera zoo train` → `tessera zoo build` (tf2onnx, calibration, int8 quantization, compile)
   → held-out accuracy, float vs int8 on the emulator → digit images scored with `tessera score`
   on the RTL-simulated NPU (Verilator), with cycles and MAC utilization.

Set TESSERA_DEMO_BACKEND=emulator to skip the Verilator build.
"""

import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

OUT = pathlib.Path("build/demo")
BACKEND = os.environ.get("TESSERA_DEMO_BACKEND", "rtl")


def tessera(*args, capture=False):
    print("$ tessera " + " ".join(str(a) for a in args), flush=True)
    r = subprocess.run([sys.executable, "-m", "tessera.cli", *map(str, args)], check=True, text=True,
                       capture_output=capture, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return r.stdout if capture else None


def hand_assembled():
    from tessera.arch import PRESETS
    from tessera.sim import reference as ref
    from tessera.sim.handwritten import conv_relu_pool

    print("== 1. a hand-assembled conv → ReLU → pool program on the emulator\n")
    program, info = conv_relu_pool(PRESETS["sim"], height=8, width=8, in_ch=3, seed=7)
    program.save(OUT / "conv_relu_pool.tsp")
    t_in = program.inputs[0]
    xq = np.random.default_rng(0).integers(-128, 128, size=t_in.shape)
    np.savez(OUT / "input.npz", input=((xq - t_in.zero_point) * t_in.scale).astype(np.float32))
    tessera("disasm", OUT / "conv_relu_pool.tsp")
    tessera("run", OUT / "conv_relu_pool.tsp", "--backend", "emulator", "--input", OUT / "input.npz",
            "--output", OUT / "output.npz")
    acc = ref.conv2d(xq[0] - info["zp_x"], info["w"], pad=(1, 1, 1, 1))
    p = info["params"][:acc.shape[0]]
    y = ref.requantize(acc, info["bias"][:, None, None], p[:, 1, None, None], p[:, 2, None, None],
                       info["zp_y"], lo=max(info["zp_y"], -128))
    y = ref.maxpool(y, (2, 2), (2, 2))
    got = np.load(OUT / "output.npz")["output"]
    codes = np.rint(got / np.float32(info["s_y"])).astype(np.int64) + info["zp_y"]
    exact = np.array_equal(codes[0], y)
    print(f"\nemulator output {got.shape} equals the independent numpy reference bit for bit: {exact}\n")
    return exact


def ascii_digit(img: np.ndarray) -> list[str]:
    shades = " .:-=+*#%@"
    return ["".join(shades[min(9, int(v * 9.99))] for v in row[::2]) for row in img[::2, :, 0]]


def digits():
    from PIL import Image

    from tessera.host.runtime import Runtime

    print("== 2. a ResNet trained on real handwritten digits, int8 on the NPU\n")
    d = OUT / "digits"
    weights = d / "digits.weights.h5"
    if not weights.exists():
        tessera("zoo", "train", "digits", "--out", d)
    tessera("zoo", "build", "digits", "--weights", weights, "--config", "sim", "-o", OUT / "digits.tsp")

    test = np.load(d / "test.npz")
    x, y = test["x"], test["y"]
    import keras
    model = keras.models.load_model(d / "digits.keras", compile=False)
    float_pred = model.predict(x, verbose=0, batch_size=256).argmax(axis=1)
    t0 = time.perf_counter()
    with Runtime(OUT / "digits.tsp", backend="emulator") as rt:
        int8_pred = np.array([rt.run({"image": x[i:i + 1]})["probabilities"].argmax() for i in range(len(x))])
    emu_s = (time.perf_counter() - t0) / len(x)
    acc_f, acc_q = (float_pred == y).mean(), (int8_pred == y).mean()
    print(f"\nheld-out accuracy on {len(y)} digits: float {acc_f:.2%}, int8 on the emulator {acc_q:.2%} "
          f"({emu_s * 1e3:.1f} ms/image); difference {100 * (acc_f - acc_q):+.2f} points")

    imgs = OUT / "images"
    imgs.mkdir(exist_ok=True)
    picks = [int(np.nonzero(y == digit)[0][0]) for digit in range(8)]
    paths = []
    for i in picks:
        p = imgs / f"test{i:03d}_label{y[i]}.png"
        Image.fromarray((x[i, :, :, 0] * 255).astype(np.uint8), mode="L").resize((64, 64), Image.NEAREST).save(p)
        paths.append(p)
    print(f"\nscoring {len(paths)} held-out digit images on the {BACKEND} backend:\n")
    arts = [ascii_digit(x[i]) for i in picks]
    for row in range(len(arts[0])):
        print("   " + "  ".join(a[row] for a in arts))
    print("   " + "  ".join(f"   {y[i]}    " for i in picks) + "  <- labels\n")
    out = tessera("score", OUT / "digits.tsp", *paths, "--backend", BACKEND, "--top", "3", "--json", capture=True)
    results = json.loads(out)
    for r in results:
        top = ", ".join(f"{t['label']} ({t['probability']:.3f})" for t in r["top"])
        stats = (f"{r['cycles']} cycles, {100 * r['utilization']:.1f} % MAC utilization"
                 if r.get("cycles") else f"{r['seconds'] * 1e3:.1f} ms")
        print(f"{pathlib.Path(r['image']).name}: {top}   [{r['backend']}: {stats}]")
    right = sum(int(r["top"][0]["label"]) == int(y[i]) for i, r in zip(picks, results))
    print(f"\n{right}/{len(results)} images classified correctly on the {BACKEND} backend")
    return abs(acc_f - acc_q) <= 0.02 and right >= len(results) - 1


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    ok = hand_assembled()
    ok = digits() and ok
    print("\ndemo", "passed" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
