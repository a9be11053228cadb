"""The reduced CI models are the keras.applications topologies, only narrower and smaller."""

import pytest

keras = pytest.importorskip("keras")

from tessera.compiler.zoo import models  # noqa: E402


def _structure(model):
    return [(type(layer).__name__, tuple(layer.output.shape)) for layer in model.layers]


@pytest.mark.parametrize("name, mine", [
    ("resnet50", lambda: models.resnet((3, 4, 6, 3), width=64, input_size=224)),
    ("densenet121", lambda: models.densenet((6, 12, 24, 16), growth=32, input_size=224)),
])
def test_builders_at_full_width_equal_keras_applications(name, mine):
    ours, theirs = mine(), models.full(name)
    assert _structure(ours) == _structure(theirs)
    assert ours.count_params() == theirs.count_params()


def test_ssd300_has_8732_anchors_per_output():
    m = models.ssd300(width=4, classes=3)
    assert [tuple(o.shape) for o in m.outputs] == [(None, 8732, 4), (None, 8732, 3)]
    assert m.output_names == ["mbox_loc", "mbox_conf"]


@pytest.mark.parametrize("name", models.ARCHITECTURES)
def test_reduced_models_build_small(name):
    m = models.reduced(name)
    assert m.count_params() < 2_000_000
