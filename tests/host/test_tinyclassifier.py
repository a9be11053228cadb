"""The hand-assembled classifier computes what it claims, race-free, on the emulator."""

import numpy as np
import pytest

from tessera.arch import PRESETS
from tessera.host.runtime import Runtime
from tessera.host.tinyclassifier import LOGITS, PROBS, tiny_classifier, tiny_classifier_with_params
from tessera.program import Program
from tessera.sim import reference as ref



def reference_logits(info, xq):
    """Integer logits recomputed layer by layer with the slow numpy reference."""
    acc = ref.conv2d(xq - info["zp_x"], info["w1"], stride=(2, 2), pad=(1, 1, 1, 1))
    y1 = ref.requantize(acc, info["b1"][:, None, None], info["m1"][:, None, None], info["s1"][:, None, None],
                        info["zp_1"], lo=info["zp_1"])
    mult, shift = info["pool"]
    total = ref.avgpool_sum(y1 - info["zp_1"], (y1.shape[1], y1.shape[2]), (1, 1))[:, 0, 0]
    g = np.array([min(max(ref.round_half_even_shift(int(t) * mult, shift) + info["zp_1"], -128), 127)
                  for t in total])
    acc3 = info["w3"] @ (g - info["zp_1"])
    return ref.requantize(acc3, info["b3"], info["m3"], info["s3"], info["zp_out"])


@pytest.mark.parametrize("config", ["sim", "ulx3s-85f"])
def test_tiny_classifier_matches_reference_layers(config):
    cfg = PRESETS[config].replace(dram_bytes=4 << 20)
    program, info = tiny_classifier_with_params(cfg, classes=40, labels=None, seed=5)
    program = Program.from_bytes(program.to_bytes())
    t_in, t_out = program.inputs[0], program.outputs[0]
    xq = np.random.default_rng(2).integers(-128, 128, size=(3, 16, 16))
    x = ((xq - t_in.zero_point) * t_in.scale).astype(np.float32)[None]
    # Hazard checking proves the tokens order every buffer access (the program is race-free).
    with Runtime(program, check_hazards=True) as rt:
        out = rt.run({t_in.name: x})
    want = reference_logits(info, xq)
    np.testing.assert_array_equal(np.rint(out[LOGITS][0] / t_out.scale).astype(int) + t_out.zero_point, want)
    probs = out[PROBS][0]
    assert probs.shape == (40,) and abs(probs.sum() - 1) < 1e-5
    assert np.argmax(probs) == np.argmax(want)


def test_tiny_classifier_records_preprocessing_and_labels(program):
    assert program.meta["preprocess"]["style"] == "caffe"
    assert program.meta["labels"] == "imagenet1k"
    assert program.outputs[0].channels == 1000
    assert [op["op"] for op in program.host_ops] == ["Softmax"]


def test_tiny_classifier_names_the_buffer_too_small_for_its_classes():
    # 1000 classes of 8 rows are 125 PARAM words; a program that loads them into 64 would fault on the NPU.
    small = PRESETS["sim"].replace(name="small-param", lanes=4, rows=8, pbuf_words=64)
    with pytest.raises(ValueError, match="1000 classes at size 16 need 126 PARAM words; config 'small-param' has 64"):
        tiny_classifier(small)
    assert tiny_classifier(small, classes=10).config is small
