"""Whole ResNet-style networks, quantized by onnxruntime, compiled and run on the emulator.

DESIGN.md's numerics: at least 99.9 % of output elements within one quantization
step of onnxruntime, all within two, and the same top-1, for several random inputs.
"""

import pytest

from tessera.arch import PRESETS

from ..conftest import SMALL
from .netgen import assert_network, check_against_ort, densenet, quantize, resnet
from .test_codegen import TINY

SIM = PRESETS["sim"].replace(dram_bytes=8 << 20)

NETS = {
    # name: (resnet kwargs, config)
    "basic-2stage-nonsquare": ({"in_shape": (1, 3, 13, 11), "widths": (20, 36), "blocks": 1}, SIM),
    "basic-3stage-deeper": ({"in_shape": (1, 3, 16, 12), "widths": (12, 24, 40), "blocks": 2}, SIM),
    "bottleneck-odd": ({"in_shape": (1, 3, 15, 9), "widths": (24, 52), "blocks": 2, "bottleneck": True}, SIM),
    "bottleneck-small-config": ({"in_shape": (1, 3, 11, 14), "widths": (24, 44), "blocks": 1, "bottleneck": True}, SMALL),
    "basic-tiny-config": ({"in_shape": (1, 3, 17, 13), "widths": (20, 36), "blocks": 2}, TINY),
    "ulx3s": ({"in_shape": (1, 3, 12, 10), "widths": (20, 40), "blocks": 1, "bottleneck": True}, PRESETS["ulx3s-85f"]),
    "no-stem-pool-7classes": ({"in_shape": (1, 3, 9, 9), "widths": (16,), "blocks": 3, "classes": 7, "stem_pool": False}, SIM),
}


# Every quantization flavour on `sim`; one flavour on the other configs to keep the suite short.
CASES = [(net, fmt, act) for net in sorted(NETS) for fmt in ("QDQ", "QOperator") for act in ("uint8", "int8")
         if NETS[net][1] is SIM or (fmt, act) == ("QDQ", "uint8")]


@pytest.mark.parametrize("net,fmt,act", CASES)
def test_resnet_matches_onnxruntime(net, fmt, act):
    kw, cfg = NETS[net]
    q = quantize(resnet(seed=len(net), **kw), fmt=fmt, act=act)
    assert_network(check_against_ort(q, cfg, n_inputs=3))


@pytest.mark.parametrize("fmt", ["QDQ", "QOperator"])
def test_resnet_with_softmax_host_op(fmt):
    import numpy as np
    from tessera.compiler.driver import compile_model
    from tessera.host.runtime import Runtime

    from .netgen import ort_run
    q = quantize(resnet(in_shape=(1, 3, 10, 10), widths=(16,), blocks=1, softmax=True), fmt=fmt)
    prog, _ = compile_model(q, SIM)
    assert [h["op"] for h in prog.host_ops] == ["Softmax"]
    out_name = q.graph.output[0].name
    assert prog.host_ops[0]["outputs"] == [out_name]
    rt = Runtime(prog, check_hazards=True)
    x = np.random.default_rng(0).normal(size=(1, 3, 10, 10)).astype(np.float32)
    got, ref = rt.run({"x": x})[out_name], ort_run(q, x)[out_name]
    assert got.shape == ref.shape and abs(got.sum() - 1) < 1e-4
    # The probabilities are quantized in onnxruntime (1/256 steps); ours are float.
    assert np.abs(got - ref).max() < 3 / 256 and got.argmax() == ref.argmax()


@pytest.mark.parametrize("fmt,act", [("QDQ", "uint8"), ("QOperator", "int8")])
@pytest.mark.parametrize("cfg", ["sim", "tiny"])
def test_densenet_concat_matches_onnxruntime(cfg, fmt, act):
    q = quantize(densenet(seed=3), fmt=fmt, act=act)
    assert_network(check_against_ort(q, {"sim": SIM, "tiny": TINY}[cfg], n_inputs=2))
