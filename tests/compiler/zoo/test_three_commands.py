"""From a Keras model to a served endpoint in three commands (README, docs/host.md):

    tessera zoo build vgg16 -o vgg16.tsp     (here the reduced CI size)
    tessera serve vgg16.tsp --port 8500
    a TF-Serving client (PredictionClient) scores an image
"""

import json
import os
import signal
import subprocess
import sys

import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow_serving")

from tessera.cli import main  # noqa: E402
from tessera.host import PredictionClient  # noqa: E402

from ...host.conftest import photo  # noqa: E402
from ...host.test_serve_cli import LOOPBACK, free_port, wait_serving  # noqa: E402


def test_keras_model_to_served_endpoint_in_three_commands(tmp_path, capsys):
    prog = tmp_path / "vgg16.tsp"
    assert main(["zoo", "build", "vgg16", "--reduced", "-o", str(prog)]) == 0
    assert "built vgg16 (reduced) for sim" in capsys.readouterr().out
    image = tmp_path / "photo.png"
    image.write_bytes(photo(5, size=(64, 48)))
    assert main(["score", str(prog), str(image), "--json", "--top", "3"]) == 0
    local = json.loads(capsys.readouterr().out)[0]["top"]

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tessera.cli", "serve", str(prog), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert wait_serving(port), "server did not become healthy"
        # The served name defaults to the zoo name the program records.
        with PredictionClient(LOOPBACK, port, service_name="vgg16", timeout=60) as client:
            top = client.score_file(str(image), input_name="images", top=3)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    # The served endpoint answers exactly what the local run computes on the same image.
    assert [label for label, _ in top] == [t["label"] for t in local]
    assert [p for _, p in top] == pytest.approx([t["probability"] for t in local], abs=1e-6)
