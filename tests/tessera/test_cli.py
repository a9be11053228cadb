"""The CLI contract: subcommands, exit codes, one-line errors without tracebacks."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tessera.arch import PRESETS
from tessera.cli import main
from tessera.sim import reference as ref
from tessera.sim.handwritten import conv_relu_pool


@pytest.fixture(scope="module")
def hand_program(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    program, info = conv_relu_pool(PRESETS["sim"], seed=3)
    path = d / "p.tsp"
    program.save(path)
    t = program.inputs[0]
    xq = np.random.default_rng(1).integers(-128, 128, size=t.shape)
    np.savez(d / "in.npz", input=((xq - t.zero_point) * t.scale).astype(np.float32))
    return d, path, program, info, xq


def test_disasm_lists_conv_relu_pool_program(hand_program, capsys):
    _, path, program, _, _ = hand_program
    assert main(["disasm", str(path)]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if not line.startswith("#")]
    assert len(lines) == len(program.instructions)
    assert [line.split()[1] for line in lines] == ["load", "load", "load", "conv", "epilogue", "pool", "store", "end"]
    assert "# input input: NCHW [1, 3, 8, 8]" in out


def test_run_emulator_matches_numpy_and_reports_json(hand_program, capsys):
    d, path, program, info, xq = hand_program
    assert main(["run", str(path), "--backend", "emulator", "--input", str(d / "in.npz"),
                 "--output", str(d / "out.npz"), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert set(stats) == {"backend", "cycles", "macs", "utilization", "seconds"}
    assert stats["backend"] == "emulator" and stats["cycles"] is None and stats["macs"] == 8 * 8 * 9 * 16 * 16
    acc = ref.conv2d(xq[0] - info["zp_x"], info["w"], pad=(1, 1, 1, 1))
    p = info["params"][:acc.shape[0]]
    y = ref.maxpool(ref.requantize(acc, info["bias"][:, None, None], p[:, 1, None, None], p[:, 2, None, None],
                                   info["zp_y"], lo=max(info["zp_y"], -128)), (2, 2), (2, 2))
    got = np.load(d / "out.npz")["output"]
    codes = np.rint(got / np.float32(info["s_y"])).astype(np.int64) + info["zp_y"]
    np.testing.assert_array_equal(codes[0], y)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "tessera.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("make_args, message", [
    (lambda d, p: ["disasm", str(d / "missing.tsp")], "missing.tsp: cannot read"),
    (lambda d, p: ["disasm", str(d / "in.npz")], "not a Tessera program"),
    (lambda d, p: ["run", str(p), "--input", str(d / "missing.npz"), "--output", str(d / "o.npz")], "missing.npz"),
    (lambda d, p: ["run", str(p), "--input", str(d / "wrong.npz"), "--output", str(d / "o.npz")],
     "missing input(s) ['input']"),
    (lambda d, p: ["run", str(p), "--input", str(d / "in.npz")], "--output"),
    (lambda d, p: ["frobnicate"], "invalid choice"),
])
def test_bad_input_exits_2_with_one_line(hand_program, make_args, message):
    d, path, *_ = hand_program
    np.savez(d / "wrong.npz", other=np.zeros(3))
    r = _cli(*make_args(d, path))
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert len([line for line in r.stderr.splitlines() if "error" in line]) == 1


def test_corrupt_program_exits_2(hand_program):
    d, path, *_ = hand_program
    data = bytearray(path.read_bytes())
    data[-40] ^= 1
    bad = d / "corrupt.tsp"
    bad.write_bytes(bytes(data))
    r = _cli("run", str(bad), "--input", str(d / "in.npz"), "--output", str(d / "o.npz"))
    assert r.returncode == 2 and "checksum mismatch" in r.stderr and "Traceback" not in r.stderr


def test_every_contract_subcommand_exists():
    r = _cli("--help")
    for sub in ("compile", "run", "score", "serve", "synth", "bench", "disasm"):
        assert sub in r.stdout
