"""`tessera score`: top-k per image, JSON, progress bar, unreadable images."""

import json

import pytest

from tessera.cli import main
from tessera.host.model import ImageModel
from tessera.host.runtime import Runtime

from .conftest import photo


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    paths = []
    for i in range(10):
        p = d / (f"img{i}.jpg" if i % 2 else f"img{i}.png")
        p.write_bytes(photo(i, fmt="JPEG" if i % 2 else "PNG"))
        paths.append(str(p))
    return paths


def expected_top(program, path, k):
    model = ImageModel(program)
    with Runtime(program) as rt, open(path, "rb") as f:
        return model.top(rt.run(model.inputs(f.read())), k)


def test_score_prints_topk_per_image(program, program_path, images, capsys):
    assert main(["score", str(program_path), images[0], images[1], "--top", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == images[0] and out[4] == images[1] and len(out) == 8
    for block, path in ((out[1:4], images[0]), (out[5:8], images[1])):
        want = expected_top(program, path, 3)
        assert [line.split(None, 1)[1] for line in block] == [lab for lab, _ in want]
        assert [float(line.split()[0]) for line in block] == pytest.approx([p for _, p in want], abs=1e-4)


def test_score_json_with_progress_bar_for_many_images(program, program_path, images, capsys):
    assert main(["score", str(program_path), *images, "--json", "--top", "5"]) == 0
    cap = capsys.readouterr()
    res = json.loads(cap.out)
    assert [r["image"] for r in res] == images
    assert "scoring" in cap.err and "10/10" in cap.err
    for r in res[:3]:
        want = expected_top(program, r["image"], 5)
        assert [(t["label"], t["probability"]) for t in r["top"]] == [(lab, pytest.approx(p)) for lab, p in want]
        assert r["backend"] == "emulator" and r["macs"] > 0


def test_score_skips_unreadable_images_and_exits_2(program_path, images, tmp_path, capsys):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a jpeg")
    code = main(["score", str(program_path), images[0], str(bad), str(tmp_path / "missing.png"), "--json"])
    cap = capsys.readouterr()
    assert code == 2
    assert [r["image"] for r in json.loads(cap.out)] == [images[0]]
    err = cap.err.strip().splitlines()
    assert f"{bad}: not an image" in err[0]
    assert "missing.png: cannot read" in err[1]
    assert err[-1].startswith("tessera score: error: 2 of 3 images could not be scored")


def test_score_bad_program_and_top(program_path, images, tmp_path, capsys):
    junk = tmp_path / "junk.tsp"
    junk.write_bytes(b"nope")
    assert main(["score", str(junk), images[0]]) == 2
    assert "junk.tsp" in capsys.readouterr().err
    assert main(["score", str(program_path), images[0], "--top", "0"]) == 2
    assert "--top must be at least 1" in capsys.readouterr().err
