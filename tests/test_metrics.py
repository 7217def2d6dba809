from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fieldmon.evaluation.metrics import (
    UNKNOWN,
    ClassificationReport,
    classification_report,
    file_level,
    rejection_accuracy,
)

NAMES = ["a", "b", "c"]

# Hand example, 3 classes, 9 windows:
#   true: 0 0 0 0 1 1 2 2 2
#   pred: 0 0 0 1 1 1 2 0 0
# class a: TP 3, predicted 5, support 4 -> P 3/5, R 3/4, F1 2*(9/20)/(27/20) = 2/3
# class b: TP 2, predicted 3, support 2 -> P 2/3, R 1,   F1 2*(2/3)/(5/3)   = 4/5
# class c: TP 1, predicted 1, support 3 -> P 1,   R 1/3, F1 2*(1/3)/(4/3)   = 1/2
# macro-F1 = (2/3 + 4/5 + 1/2) / 3 = 59/90; accuracy = 6/9
HAND_TRUE = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2])
HAND_PRED = np.array([0, 0, 0, 1, 1, 1, 2, 0, 0])


def test_hand_computed_three_classes():
    report = classification_report(HAND_TRUE, HAND_PRED, NAMES)
    expected = {
        "a": (3 / 5, 3 / 4, 2 / 3, 4),
        "b": (2 / 3, 1.0, 4 / 5, 2),
        "c": (1.0, 1 / 3, 1 / 2, 3),
    }
    for name, (p, r, f, s) in expected.items():
        got = report.per_class[name]
        assert got["precision"] == pytest.approx(p)
        assert got["recall"] == pytest.approx(r)
        assert got["f1"] == pytest.approx(f)
        assert got["support"] == s
    assert report.macro_f1 == pytest.approx(59 / 90)
    assert report.accuracy == pytest.approx(6 / 9)
    assert report.confusion == [[3, 1, 0], [0, 2, 0], [2, 0, 1]]
    assert report.labels == NAMES


def test_hand_computed_with_one_rejection():
    # Same as above, but the last window (true c, wrongly predicted a) is rejected:
    # a: TP 3, predicted 4, support 4 -> P 3/4, R 3/4, F1 3/4  (rejection spared a's precision)
    # b: unchanged, F1 4/5
    # c: TP 1, predicted 1, support 3 -> R 1/3, F1 1/2        (still a miss for c's recall)
    # macro-F1 = (3/4 + 4/5 + 1/2) / 3 = 41/60; accuracy still 6/9
    pred = HAND_PRED.copy()
    pred[-1] = UNKNOWN
    report = classification_report(HAND_TRUE, pred, NAMES)
    assert report.per_class["a"]["precision"] == pytest.approx(3 / 4)
    assert report.per_class["c"]["recall"] == pytest.approx(1 / 3)
    assert report.per_class["c"]["support"] == 3
    assert report.macro_f1 == pytest.approx(41 / 60)
    assert report.accuracy == pytest.approx(6 / 9)
    assert report.labels == NAMES + ["unknown"]
    assert report.confusion == [[3, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 1]]


def test_perfect_predictions():
    y = np.array([2, 0, 1, 1, 0, 2, 2])
    report = classification_report(y, y.copy(), NAMES)
    assert report.macro_f1 == 1.0
    assert report.accuracy == 1.0
    assert all(m["precision"] == m["recall"] == m["f1"] == 1.0 for m in report.per_class.values())
    assert report.confusion == [[2, 0, 0], [0, 2, 0], [0, 0, 3]]
    assert "unknown" not in report.labels


def test_all_rejected_known_windows_score_zero():
    y_true = np.array([0, 1, 2, 2])
    report = classification_report(y_true, np.full(4, UNKNOWN), NAMES)
    assert report.macro_f1 == 0.0
    assert report.accuracy == 0.0
    assert report.labels == ["a", "b", "c", "unknown"]
    assert report.confusion == [[0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 2]]
    assert [m["support"] for m in report.per_class.values()] == [1, 1, 2]


def test_macro_average_ignores_classes_absent_from_truth_and_predictions():
    # "d" is neither true nor predicted: left out of the mean, so a perfect run stays 1.0.
    y = np.array([0, 1, 2])
    assert classification_report(y, y, NAMES + ["d"]).macro_f1 == 1.0
    # Predicting "d" (never true) makes it count, with F1 0: a: F1 2/3 (P 1, R 1/2), b, c: 1, d: 0.
    report = classification_report(np.array([0, 0, 1, 2]), np.array([0, 3, 1, 2]), NAMES + ["d"])
    assert report.per_class["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert report.macro_f1 == pytest.approx((2 / 3 + 1 + 1 + 0) / 4)


def brute_force_macro_f1(y_true: list[int], y_pred: list[int], n_classes: int) -> float:
    """Independent, loop-based reference with the same conventions."""
    f1_scores = []
    for c in range(n_classes):
        tp = sum(1 for t, p in zip(y_true, y_pred) if t == c and p == c)
        n_pred = sum(1 for p in y_pred if p == c)
        n_true = sum(1 for t in y_true if t == c)
        if n_pred == 0 and n_true == 0:
            continue
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_true if n_true else 0.0
        f1_scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return sum(f1_scores) / len(f1_scores)


@pytest.mark.parametrize("seed", range(20))
def test_macro_f1_matches_brute_force(seed: int):
    rng = np.random.default_rng(seed)
    n_classes = int(rng.integers(2, 7))
    n = int(rng.integers(1, 60))
    # Draw from a subset of classes so that some are absent, and bias toward correct answers.
    y_true = rng.integers(0, max(1, n_classes - 1), size=n)
    y_pred = np.where(rng.random(n) < 0.5, y_true, rng.integers(UNKNOWN, n_classes, size=n))
    names = [f"c{i}" for i in range(n_classes)]
    report = classification_report(y_true, y_pred, names)
    assert report.macro_f1 == pytest.approx(brute_force_macro_f1(y_true.tolist(), y_pred.tolist(), n_classes))
    assert report.accuracy == pytest.approx(sum(t == p for t, p in zip(y_true, y_pred)) / n)
    assert np.asarray(report.confusion).sum() == n
    assert len(report.confusion[0]) == n_classes + (1 if (y_pred == UNKNOWN).any() else 0)


@pytest.mark.parametrize(
    "y_true, y_pred",
    [
        (np.array([0, 1]), np.array([0, 3])),  # prediction beyond the classes
        (np.array([0, 1]), np.array([0, -2])),  # negative but not UNKNOWN
        (np.array([0, 3]), np.array([0, 1])),  # truth beyond the classes
        (np.array([0, UNKNOWN]), np.array([0, 1])),  # truth cannot be unknown
        (np.array([0, 1]), np.array([0])),  # length mismatch
        (np.array([], dtype=int), np.array([], dtype=int)),  # nothing to score
        (np.array([0.0, 1.0]), np.array([0.0, 1.0])),  # not indices
    ],
)
def test_rejects_bad_input(y_true, y_pred):
    with pytest.raises(ValueError):
        classification_report(y_true, y_pred, NAMES)


def test_file_level_means_in_first_appearance_order():
    file_ids = np.array(["b.wav", "a.wav", "b.wav", "c.wav", "a.wav", "b.wav"])
    probs = np.array(
        [
            [0.9, 0.1],
            [0.2, 0.8],
            [0.6, 0.4],
            [0.5, 0.5],
            [0.4, 0.6],
            [0.3, 0.7],
        ]
    )
    ids, means = file_level(probs, file_ids)
    assert ids.tolist() == ["b.wav", "a.wav", "c.wav"]  # not sorted
    # b: (0.9+0.6+0.3)/3 = 0.6; a: (0.2+0.4)/2 = 0.3; c: 0.5
    np.testing.assert_allclose(means, [[0.6, 0.4], [0.3, 0.7], [0.5, 0.5]])


def test_file_level_integer_ids_and_single_file():
    ids, means = file_level(np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), np.array([7, 7]))
    assert ids.tolist() == [7]
    np.testing.assert_allclose(means, [[0.5, 0.0, 0.5]])


def test_file_level_shape_mismatch():
    with pytest.raises(ValueError):
        file_level(np.zeros((3, 2)), np.array([0, 1]))


def test_rejection_accuracy():
    assert rejection_accuracy(np.array([True, False, True, True])) == 0.75
    assert rejection_accuracy(np.array([1, 0])) == 0.5
    assert rejection_accuracy(np.array([False, False])) == 0.0
    assert math.isnan(rejection_accuracy(np.array([], dtype=bool)))
    with pytest.raises(ValueError):
        rejection_accuracy(np.array([0, 2]))


def test_to_dict_is_json_serialisable():
    pred = HAND_PRED.copy()
    pred[-1] = UNKNOWN
    report = classification_report(HAND_TRUE, pred, NAMES)
    assert isinstance(report, ClassificationReport)
    decoded = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert decoded["macro_f1"] == pytest.approx(41 / 60)
    assert decoded["labels"] == ["a", "b", "c", "unknown"]
    assert decoded["confusion"][2] == [1, 0, 1, 1]
    assert decoded["per_class"]["b"]["support"] == 2


def test_bootstrap_interval_brackets_the_figure_and_narrows_with_more_files():
    from fieldmon.evaluation.metrics import bootstrap_macro_f1

    names = ["a", "b", "c"]
    rng = np.random.default_rng(0)
    widths = []
    for n in (12, 300):
        y_true = np.arange(n) % 3
        y_pred = np.where(rng.random(n) < 0.7, y_true, (y_true + 1) % 3)
        low, high = bootstrap_macro_f1(y_true, y_pred, names)
        assert low <= classification_report(y_true, y_pred, names).macro_f1 <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2
    perfect = bootstrap_macro_f1(np.arange(9) % 3, np.arange(9) % 3, names)
    assert perfect == (1.0, 1.0)
