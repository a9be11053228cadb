"""The host examples run as a user copies them."""

import pathlib
import subprocess
import sys

from tessera.host.server import ModelServer

from .conftest import photo

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def test_score_image_example(program_path, tmp_path):
    img = tmp_path / "a.png"
    img.write_bytes(photo(8))
    r = subprocess.run([sys.executable, str(EXAMPLES / "score_image.py"), "--program", str(program_path), str(img)],
                       check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[1].startswith(str(img)) and len(lines) == 7


def test_client_example_against_a_server(program, tmp_path):
    img = tmp_path / "cat.jpg"
    img.write_bytes(photo(9, fmt="JPEG"))
    with ModelServer(program, host="127.0.0.1", port=0, model_name="resnet50") as srv:
        r = subprocess.run([sys.executable, str(EXAMPLES / "client.py"), str(img), "--port", str(srv.port)],
                           check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == str(img) and len(lines) == 6
    assert all(float(line.split()[0]) > 0 for line in lines[1:])
