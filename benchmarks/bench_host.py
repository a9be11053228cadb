"""Benchmark of the host: gRPC server latency and throughput vs a bare Runtime call, in one run.

    .venv/bin/python benchmarks/bench_host.py [PROGRAM.tsp] [--requests 200] [--clients 4] [--backend emulator]

Without a program it uses the hand-assembled tiny classifier (tessera.host.tinyclassifier).
It starts ``tessera serve`` as a separate process on 127.0.0.1 (a free port), sends
one encoded JPEG per request through TensorFlow Serving's official stub, and in the
same run times ``Runtime.run`` on the same preprocessed input in this process.
Prints a markdown section (with the command that made it) on stdout.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

LOOPBACK = "127.0.0.1"


def test_image(size: int) -> bytes:
    """A smooth colour field, JPEG-encoded (a stand-in photo; the content does not change the cost)."""
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((size * 4 // 3, size),
                                                                                  Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def pct(xs, q):
    return float(np.percentile(np.asarray(xs) * 1e3, q))


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("program", nargs="?", help=".tsp program (default: the tiny classifier)")
    ap.add_argument("--requests", type=int, default=200, help="sequential requests for latency")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients for throughput")
    ap.add_argument("--backend", default="emulator")
    args = ap.parse_args(argv)

    from tessera.host.model import ImageModel
    from tessera.host.runtime import Runtime
    from tessera.program import Program

    tmp = tempfile.TemporaryDirectory()
    if args.program:
        path = Path(args.program)
        program = Program.load(path)
    else:
        from tessera.host.tinyclassifier import tiny_classifier
        program = tiny_classifier("sim")
        path = Path(tmp.name) / "tiny.tsp"
        program.save(path)
    model = ImageModel(program)
    data = test_image(max(model.preprocess.size) * 2)
    n, warm = args.requests, 10

    # ---- bare Runtime: the device call alone, and with preprocessing ---------------------
    with Runtime(program, backend=args.backend) as rt:
        inputs = model.inputs(data)
        for _ in range(warm):
            rt.run(inputs)
        bare = []
        for _ in range(n):
            t0 = time.perf_counter()
            rt.run(inputs)
            bare.append(time.perf_counter() - t0)
        local = []
        for _ in range(n):
            t0 = time.perf_counter()
            model.top(rt.run(model.inputs(data)))
            local.append(time.perf_counter() - t0)

    # ---- the server, in its own process ---------------------------------------------------
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from tessera.host._protos import predict_pb2, prediction_service_pb2_grpc
    from tessera.host.tensors import to_tensor_proto

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tessera.cli", "serve", str(path), "--port", str(port),
                             "--backend", args.backend, "--model-name", "bench"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        target = f"{LOOPBACK}:{port}"
        deadline = time.monotonic() + 120
        with grpc.insecure_channel(target) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            while True:
                try:
                    health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    break
                except grpc.RpcError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise SystemExit(f"server did not start: {proc.stderr.read().decode()[-2000:]}")
                    time.sleep(0.2)

        req = predict_pb2.PredictRequest()
        req.model_spec.name = "bench"
        req.inputs["images"].CopyFrom(to_tensor_proto([data]))
        req.output_filter.append(model.scores_name)

        def run_client(count):
            times = []
            with grpc.insecure_channel(target) as ch:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
                for _ in range(warm):
                    stub.Predict(req, timeout=60)
                for _ in range(count):
                    t0 = time.perf_counter()
                    stub.Predict(req, timeout=60)
                    times.append(time.perf_counter() - t0)
            return times

        served = run_client(n)
        per = max(1, n // args.clients)
        with ThreadPoolExecutor(args.clients) as pool:
            t0 = time.perf_counter()
            conc = [t for ts in pool.map(run_client, [per] * args.clients) for t in ts]
            wall = time.perf_counter() - t0
        total = args.clients * (per + warm)      # the wall time includes each client's warm-up requests
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        tmp.cleanup()

    t = program.inputs[0]
    cmd = "python benchmarks/bench_host.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print("## Host: gRPC server vs bare Runtime\n")
    print(f"Command: `{cmd.strip()}`  ")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ")
    print(f"Model: {program.meta.get('description', path.name)} ({t.layout} {t.shape}, config "
          f"{program.config.name}), {args.backend} backend; one {len(data)}-byte JPEG per request; "
          f"server and client on 127.0.0.1 in separate processes.\n")
    print("| measurement | p50 ms | p99 ms |")
    print("|---|---:|---:|")
    print(f"| bare `Runtime.run` (preprocessed input) | {pct(bare, 50):.2f} | {pct(bare, 99):.2f} |")
    print(f"| local: decode + preprocess + run + top-5 | {pct(local, 50):.2f} | {pct(local, 99):.2f} |")
    print(f"| server `Predict`, 1 client | {pct(served, 50):.2f} | {pct(served, 99):.2f} |")
    print(f"| server `Predict`, {args.clients} concurrent clients | {pct(conc, 50):.2f} | {pct(conc, 99):.2f} |")
    print()
    over = pct(served, 50) - pct(bare, 50)
    print(f"- Server overhead over a bare `Runtime.run` (p50): **{over:.2f} ms** "
          f"({pct(served, 50) / pct(bare, 50):.1f}x); of that, decoding and preprocessing the JPEG is "
          f"{pct(local, 50) - pct(bare, 50):.2f} ms and gRPC, queueing and protobuf the rest.")
    print(f"- Throughput, 1 client: **{1 / np.mean(served):.0f} requests/s**; {args.clients} concurrent clients: "
          f"**{total / wall:.0f} requests/s** ({total} requests in {wall:.2f} s); a bare device loop: "
          f"{1 / np.mean(bare):.0f} runs/s.")
    print(f"- {n} sequential requests (after {warm} warm-up), {per} per concurrent client.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
