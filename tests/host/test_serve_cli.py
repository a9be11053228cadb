"""`tessera serve` as a user runs it: a process on 127.0.0.1 that answers, then stops cleanly on SIGINT."""

import os
import signal
import socket
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tessera.cli import main
from tessera.host import PredictionClient

from .conftest import photo

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def wait_serving(port, seconds=60):
    deadline = time.monotonic() + seconds
    with grpc.insecure_channel(f"{LOOPBACK}:{port}") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                time.sleep(0.2)
    return False


def test_serve_command_serves_then_stops_on_sigint(program_path):
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tessera.cli", "serve", str(program_path), "--port", str(port),
                             "--model-name", "resnet50"], stderr=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    try:
        assert wait_serving(port), "server did not become healthy"
        with PredictionClient(LOOPBACK, port, service_name="resnet50", timeout=30) as client:
            top = client.score_image(photo(3))
        assert len(top) == 5 and top[0][1] >= top[-1][1]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.decode()
    text = err.decode()
    assert f"model 'resnet50' on 127.0.0.1:{port} (plaintext, emulator backend)" in text
    assert "stopped after" in text and "1 runs served" in text


def test_serve_command_bad_usage_exits_2(program_path, tmp_path, capsys):
    assert main(["serve", str(program_path), "--port", "0", "--tls-cert", str(tmp_path / "c.pem")]) == 2
    assert "needs both --tls-cert and --tls-key" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "missing.tsp")]) == 2
    assert "missing.tsp" in capsys.readouterr().err


def test_serve_command_port_in_use_exits_2(program_path, capsys):
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", str(program_path), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
