"""`make demo`: the main job end to end, as far as Tessera is built.

Today: a hand-assembled conv3x3 → ReLU → maxpool program, written to a .tsp
file, listed with `tessera disasm`, run with `tessera run --backend emulator`,
and checked against an independent numpy reference.
"""

import pathlib
import subprocess
import sys

import numpy as np
from tessera.sim import reference as ref
from tessera.sim.handwritten import conv_relu_pool

from tessera.arch import PRESETS

out = pathlib.Path("build/demo")
out.mkdir(parents=True, exist_ok=True)
cfg = PRESETS["sim"]
program, info = conv_relu_pool(cfg, height=8, width=8, in_ch=3, seed=7)
program.save(out / "conv_relu_pool.tsp")

rng = np.random.default_rng(0)
t_in = program.inputs[0]
xq = rng.integers(-128, 128, size=t_in.shape)
x = ((xq - t_in.zero_point) * t_in.scale).astype(np.float32)
np.savez(out / "input.npz", input=x)


def tessera(*args):
    print("$ tessera " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "tessera.cli", *args], check=True)


tessera("disasm", str(out / "conv_relu_pool.tsp"))
tessera("run", str(out / "conv_relu_pool.tsp"), "--backend", "emulator",
        "--input", str(out / "input.npz"), "--output", str(out / "output.npz"))

# Independent reference: integer conv on zero-point-corrected input, exact rounding, ReLU, maxpool.
acc = ref.conv2d(xq[0] - info["zp_x"], info["w"], pad=(1, 1, 1, 1))
p = info["params"][:acc.shape[0]]
y = ref.requantize(acc, (info["bias"])[:, None, None], p[:, 1, None, None], p[:, 2, None, None],
                   info["zp_y"], lo=max(info["zp_y"], -128))
y = ref.maxpool(y, (2, 2), (2, 2))
got = np.load(out / "output.npz")["output"]
# Compare in the integer domain: recover the int8 codes from the dequantized output.
codes = np.rint(got / np.float32(info["s_y"])).astype(np.int64) + info["zp_y"]
exact = np.array_equal(codes[0], y)
print(f"emulator output {got.shape} equals the numpy reference exactly: {exact}")
print("channel 0 of the pooled output (dequantized):")
print(np.array2string(got[0, 0], precision=3))
sys.exit(0 if exact else 1)
