import numpy as np
from tessera.host.detection import SSD300, decode_boxes, detect, nms, prior_boxes


def test_ssd300_has_8732_priors_inside_the_image():
    p = prior_boxes()
    assert p.shape == (8732, 4)
    assert sum(f * f * a for f, a in zip(SSD300.feature_maps, SSD300.anchors_per_cell())) == 8732
    assert (p >= 0).all() and (p <= 1).all()
    # The first cell of conv4_3 is centred at half a step from the corner.
    np.testing.assert_allclose(p[0], [4 / 300, 4 / 300, 0.1, 0.1], rtol=1e-5)


def test_decode_zero_offsets_returns_the_priors():
    p = prior_boxes()[:10]
    b = decode_boxes(np.zeros((10, 4), np.float32), p)
    np.testing.assert_allclose((b[:, :2] + b[:, 2:]) / 2, p[:, :2], atol=1e-6)
    np.testing.assert_allclose(b[:, 2:] - b[:, :2], p[:, 2:], atol=1e-6)


def test_nms_suppresses_overlaps_and_keeps_disjoint_boxes():
    boxes = np.array([[0, 0, 1, 1], [0.05, 0, 1, 1], [2, 2, 3, 3], [0, 0, 0.5, 0.5]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    assert nms(boxes, scores, 0.45).tolist() == [0, 2, 3]


def test_detect_finds_a_planted_object():
    n = 8732
    loc = np.zeros((n, 4), np.float32)
    conf = np.zeros((n, 3), np.float32)
    conf[:, 0] = 10.0          # background everywhere ...
    conf[1000, 2] = 20.0       # ... but one confident class-2 anchor
    out = detect(loc, conf, score_threshold=0.5)
    assert out["classes"].tolist() == [2]
    assert out["scores"][0] > 0.99
    np.testing.assert_allclose(out["boxes"][0], decode_boxes(loc[1000:1001], prior_boxes()[1000:1001])[0])


def test_detector_answers_tf_object_detection_api_layout():
    import json

    from tessera.host.detection import OUTPUTS, Detector, detector_meta
    # The meta goes through a .tsp's JSON, so tuples come back as lists.
    det = Detector(json.loads(json.dumps(detector_meta(max_detections=5, score_threshold=0.5)))["detection"])
    n = 8732
    loc, conf = np.zeros((1, n, 4), np.float32), np.zeros((1, n, 3), np.float32)
    conf[..., 0] = 10.0
    conf[0, 1000, 2] = 20.0
    out = det({"mbox_loc": loc, "mbox_conf": conf})
    assert list(out) == list(OUTPUTS) and {k: v.shape for k, v in out.items()} == {
        k: tuple(s) for k, s in det.shapes().items()}
    assert out["num_detections"].tolist() == [1.0] and out["detection_classes"][0].tolist() == [2, 0, 0, 0, 0]
    x0, y0, x1, y1 = decode_boxes(loc[0, 1000:1001], prior_boxes()[1000:1001])[0]
    np.testing.assert_allclose(out["detection_boxes"][0, 0], [y0, x0, y1, x1])   # TF order: y first
    assert not out["detection_boxes"][0, 1:].any() and not out["detection_scores"][0, 1:].any()


def test_detector_rejects_bad_meta_and_wrong_anchor_count():
    import pytest
    from tessera.host.detection import Detector, detector_meta

    from tessera.errors import UserError
    with pytest.raises(UserError, match="kind 'ssd'"):
        Detector({"kind": "yolo"})
    spec = detector_meta()["detection"]
    with pytest.raises(UserError, match="malformed"):
        Detector({k: v for k, v in spec.items() if k != "loc"})
    with pytest.raises(UserError, match="8732"):
        Detector(spec)({"mbox_loc": np.zeros((1, 10, 4)), "mbox_conf": np.zeros((1, 10, 3))})
