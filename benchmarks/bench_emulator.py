"""Emulator throughput on representative convolution tiles (the golden model's speed)."""

import time

import numpy as np

from tessera.arch import PRESETS
from tessera.isa import Buffer, Instruction, encode_program
from tessera.sim.emulator import Emulator

CASES = [  # (name, in_h, in_w, in_cb, k, stride, out_h, out_w, ob)
    ("3x3, 14x14, 256->256 ch", 16, 16, 16, 3, 1, 14, 14, 16),
    ("1x1, 28x28, 512->128 ch", 28, 28, 32, 1, 1, 28, 28, 8),
    ("7x7/2 stem tile, 16->64 ch", 37, 229, 1, 7, 2, 16, 112, 4),
]


def main():
    cfg = PRESETS["sim"].replace(abuf_words=65536, wbuf_words=65536, accbuf_words=65536)
    rng = np.random.default_rng(0)
    rows = []
    for name, ih, iw, cb, k, s, oh, ow, ob in CASES:
        emu = Emulator(cfg)
        emu.buffers[Buffer.ACT][:ih * iw * cb] = rng.integers(-128, 128, size=(ih * iw * cb, cfg.lanes))
        emu.buffers[Buffer.WGT][:ob * k * k * cb] = rng.integers(-128, 128, size=(ob * k * k * cb, cfg.rows, cfg.lanes))
        ins = Instruction("conv", in_h=ih, in_w=iw, in_cb=cb, out_h=oh, out_w=ow, k_h=k, k_w=k, stride_h=s,
                          stride_w=s, dil_h=1, dil_w=1, ob_count=ob)
        emu.write(0, encode_program([ins, Instruction("end")]))
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            st = emu.run(0)
            best = min(best, time.perf_counter() - t0)
        rows.append((name, st.macs, best))
    print("## Emulator throughput\n")
    print("Command: `python benchmarks/bench_emulator.py` (sim config, one CONV instruction per case, best of 3).\n")
    print("| case | MACs | seconds | GMAC/s |\n|---|---|---|---|")
    for name, macs, sec in rows:
        print(f"| {name} | {macs:,} | {sec:.4f} | {macs / sec / 1e9:.2f} |")


if __name__ == "__main__":
    main()
