"""The real-model bench's task metrics on hand-made arrays whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.real_models import metrics


def _boxes(xyxy: list[list[float]], scores: list[float], classes: list[int]) -> metrics.Boxes:
    return np.array(xyxy, dtype=np.float64).reshape(-1, 4), np.array(scores), np.array(classes)


def test_sqnr_and_worst_channel() -> None:
    assert metrics.sqnr_db(np.array([1.0, 1.0]), np.array([1.0, 0.0])) == pytest.approx(3.0103)
    assert metrics.sqnr_db(np.ones(3), np.ones(3)) == math.inf
    reference = np.array([[100.0, 1.0], [100.0, 1.0]])  # channel 0 large, channel 1 small
    test = np.array([[100.0, 0.9], [100.0, 1.1]])  # only the small channel is hurt
    assert metrics.sqnr_db(reference, test) > 50  # the large channel hides it ...
    assert metrics.worst_channel_sqnr_db(reference, test, axis=1) == pytest.approx(20.0)


def test_box_iou_and_per_class_nms() -> None:
    assert metrics.box_iou(np.array([0, 0, 2, 2]), np.array([1, 0, 3, 2]))[0, 0] == pytest.approx(
        1 / 3
    )
    boxes = _boxes(
        [[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]],
        [0.6, 0.9, 0.8, 0.3],
        [0, 0, 1, 0],
    )
    xyxy, scores, classes = metrics.nms(boxes, iou_threshold=0.45)
    assert scores.tolist() == [0.9, 0.8, 0.3]  # the 0.6 box lost to the 0.9 of its class
    assert classes.tolist() == [0, 1, 0]
    assert xyxy[0].tolist() == [1, 1, 10, 10]


def test_box_f1_counts_class_and_overlap() -> None:
    reference = _boxes([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.9], [0, 1])
    same = _boxes([[0, 0, 10, 10], [20, 20, 30, 30]], [0.8, 0.7], [0, 1])
    assert metrics.box_f1(reference, same) == 1.0
    one_right = _boxes([[0, 0, 10, 11], [20, 20, 30, 30]], [0.8, 0.7], [0, 0])  # wrong class
    assert metrics.box_f1(reference, one_right) == pytest.approx(0.5)
    shifted = _boxes([[5, 0, 15, 10]], [0.8], [0])  # IoU 1/3 < 0.5
    assert metrics.box_f1(reference, shifted) == 0.0
    empty = _boxes([], [], [])
    assert metrics.box_f1(empty, empty) == 1.0
    assert metrics.box_f1(reference, empty) == 0.0
    # pooled: 2 matched of 2+2 on the first image, 0 of 1+0 on the second
    pooled = metrics.mean_box_f1([reference, _boxes([[0, 0, 1, 1]], [1], [0])], [same, empty])
    assert pooled == pytest.approx(4 / 5)


def test_decode_yolov8() -> None:
    head = np.zeros((4 + 2, 3))
    head[:4, 0] = [50, 40, 20, 10]  # centre x, y, w, h
    head[5, 0] = 0.9  # class 1
    head[:4, 1] = [51, 40, 20, 10]  # same object, lower score: suppressed
    head[5, 1] = 0.7
    head[:4, 2] = [10, 10, 4, 4]
    head[4, 2] = 0.1  # below the threshold
    xyxy, scores, classes = metrics.decode_yolov8(head, score_threshold=0.25)
    assert xyxy.tolist() == [[40, 35, 60, 45]]
    assert scores.tolist() == [0.9] and classes.tolist() == [1]


def test_decode_yolox() -> None:
    grid = metrics.yolox_grid((32, 32))
    assert len(grid) == 16 + 4 + 1
    assert grid[9].tolist() == [1, 2, 8]  # row 2, column 1 at stride 8
    head = np.zeros((21, 5 + 2))
    head[9] = [0.5, 0.5, math.log(2), math.log(2), 0.9, 0.1, 1.0]
    xyxy, scores, classes = metrics.decode_yolox(head, (32, 32), score_threshold=0.1)
    np.testing.assert_allclose(xyxy, [[4, 12, 20, 28]])
    assert scores == pytest.approx([0.9]) and classes.tolist() == [1]


def test_decode_gfl() -> None:
    bins = 8
    scores = [np.zeros((4, 3)), np.zeros((1, 3))]  # 16x16 input: 2x2 cells at 8, 1 cell at 16
    scores[0][1, 2] = 0.8  # row 0, column 1, class 2
    distributions = [np.full((4, 4 * bins), -50.0), np.full((1, 4 * bins), -50.0)]
    distributions[0][:, 1::bins] = 50.0  # every side: all weight on bin 1, one stride
    xyxy, found, classes = metrics.decode_gfl(scores, distributions, (16, 16), strides=(8, 16))
    np.testing.assert_allclose(xyxy, [[4, -4, 20, 12]])
    assert found.tolist() == pytest.approx([0.8]) and classes.tolist() == [2]


def test_ctc_decoding_and_agreement() -> None:
    labels = [1, 1, 0, 1, 2, 2, 0]
    logits = np.eye(3)[labels]
    assert metrics.ctc_greedy(logits) == [1, 1, 2]
    assert metrics.edit_distance(list("kitten"), list("sitting")) == 3
    reference = [[1, 2, 3], [4, 5]]
    assert metrics.ctc_agreement(reference, [[1, 2, 3], [4]]) == 0.5
    assert metrics.character_agreement(reference, [[1, 2, 3], [4]]) == pytest.approx(0.8)


def test_landmark_error_is_in_box_units() -> None:
    reference = np.concatenate([np.full(5, 0.3), np.full(5, 0.6)])[None]  # x1..x5, y1..y5
    moved = reference + np.concatenate([np.full(5, 0.03), np.full(5, 0.04)])[None]
    assert metrics.landmark_error(reference, moved) == pytest.approx(0.05)


def test_agreements() -> None:
    assert metrics.top1_agreement(np.eye(4), np.eye(4)[[0, 1, 3, 3]]) == 0.75
    assert metrics.decision_agreement(np.array([0.1, 0.6, 0.7]), np.array([0.2, 0.4, 0.9])) == (
        pytest.approx(2 / 3)
    )
    reference = np.array([[0.9, 0.9, 0.0, 0.0]])
    assert metrics.mask_iou(reference, np.array([[0.9, 0.0, 0.9, 0.0]]), 0.3) == pytest.approx(
        1 / 3
    )


def test_onet_shapes() -> None:
    """The rebuilt ONet takes 48x48 crops to 4 box offsets, 10 landmark values, 2 probabilities;
    its flatten size must match the trained dense layer (128 x 3 x 3)."""
    import torch

    from bench.real_models.onet import ONet

    box, landmarks, probability = ONet().eval()(torch.zeros(2, 3, 48, 48))
    assert box.shape == (2, 4) and landmarks.shape == (2, 10)
    assert torch.allclose(probability.sum(1), torch.ones(2))


def test_rules_fired_tells_applied_from_skipped() -> None:
    from bench.real_models.tools import rules_fired

    report = {
        "rules": [
            {"rule": "sensitive_tensor", "action": "16-bit activations"},
            {"rule": "sensitive_tensor", "action": "16-bit activations"},
            {"rule": "sensitive_tensor", "action": "not applied: pricing would cost too long"},
            {"rule": "wide_join", "action": "kept the join in float"},
        ]
    }
    assert rules_fired(report) == (
        "sensitive_tensor x2, sensitive_tensor (not applied) x1, wide_join x1"
    )
    assert rules_fired({"rules": []}) == "-"


def test_probability_rows_are_judged_in_log_odds_beside_raw() -> None:
    """A box row beside a class row whose probabilities stay near 0: raw, the class row's small
    power makes a 10% error its worst channel; in log-odds (as the engine judges it) the same
    error is small against the row's own scale, and the box row is the worst."""
    rng = np.random.default_rng(0)
    boxes = rng.uniform(0, 320, (8, 1, 50))
    probs = rng.uniform(0.01, 0.02, (8, 1, 50))
    reference = np.concatenate([boxes, probs], axis=1)
    test = reference.copy()
    test[:, 0] += rng.normal(0, 0.5, (8, 50))  # about 50 dB on the box row
    test[:, 1] *= 1.1  # 20 dB raw on the class row
    raw = metrics.worst_channel_sqnr_db(reference, test, axis=1)
    judged = metrics.log_odds_worst_channel_sqnr_db(reference, test, 1, ((1, 2),))
    assert raw == pytest.approx(20.0, abs=0.01)
    logits = np.log(probs / (1 - probs))
    moved = np.log(1.1 * probs / (1 - 1.1 * probs))
    class_row = 10 * np.log10(np.sum(logits**2) / np.sum((logits - moved) ** 2))
    box_row = metrics.worst_channel_sqnr_db(reference[:, :1], test[:, :1], axis=1)
    assert judged == pytest.approx(min(class_row, box_row), abs=1e-3)
    assert judged > raw + 10
    # no probability rows: the raw figure
    assert metrics.log_odds_worst_channel_sqnr_db(reference, test, 1, ()) == pytest.approx(
        raw, abs=1e-3
    )
