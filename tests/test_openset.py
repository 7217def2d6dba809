from __future__ import annotations

import math

import pytest
import torch

from fieldmon.model.openset import fit_open_set


def test_fit_and_scores_match_hand_computation():
    # class 0 training embeddings average to (1, 0); class 1 to (0, 1)
    train = torch.tensor([[1.0, 0.2], [1.0, -0.2], [0.2, 1.0], [-0.2, 1.0]])
    train_labels = torch.tensor([0, 0, 1, 1])
    # validation distances from (1, 0): 0.1 and 0.3 -> mean 0.2, MLE std 0.1
    val = torch.tensor([[1.1, 0.0], [1.3, 0.0], [0.0, 1.5]])
    val_labels = torch.tensor([0, 0, 1])
    params = fit_open_set(train, train_labels, val, val_labels, n_classes=2, threshold=0.05)
    assert torch.allclose(params.class_means, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert params.distance_mean[0].item() == pytest.approx(0.2)
    assert params.distance_std[0].item() == pytest.approx(0.1)
    # one validation window for class 1: no spread of its own, so it gets the pooled
    # spread of both classes, sqrt((0.1^2 + 0.001^2) / 2)
    assert params.distance_mean[1].item() == pytest.approx(0.5)
    assert params.distance_std[1].item() == pytest.approx(math.sqrt((0.1**2 + 1e-6) / 2), rel=1e-5)

    probes = torch.tensor([[1.2, 0.0], [1.3, 0.0], [1.6, 0.0]])
    scores = params.scores(probes, torch.tensor([0, 0, 0]))
    # upper tail of N(0.2, 0.1): at the mean 0.5, one sigma above 0.1587, four sigma ~3e-5
    assert scores[0].item() == pytest.approx(0.5, abs=1e-6)
    assert scores[1].item() == pytest.approx(0.5 * math.erfc(1 / math.sqrt(2)), abs=1e-6)
    assert scores[2].item() < 1e-4
    assert params.is_known(scores).tolist() == [True, True, False]


def test_json_round_trip_and_device_move():
    emb = torch.nn.functional.normalize(torch.randn(20, 4), dim=1)
    labels = torch.arange(20) % 2
    params = fit_open_set(emb, labels, emb, labels, 2, threshold=0.01)
    again = type(params).from_json(params.to_json(), params.class_means)
    probe = torch.nn.functional.normalize(torch.randn(5, 4), dim=1)
    pred = torch.tensor([0, 1, 0, 1, 0])
    assert torch.allclose(params.scores(probe, pred), again.scores(probe, pred))
    assert torch.equal(params.to("cpu").scores(probe, pred), params.scores(probe, pred))
    with pytest.raises(ValueError, match="unknown open-set rule"):
        type(params).from_json({**params.to_json(), "rule": "magic"}, params.class_means)


def test_class_without_training_embeddings_is_an_error():
    emb = torch.randn(4, 3)
    with pytest.raises(ValueError, match="class 2"):
        fit_open_set(emb, torch.tensor([0, 0, 1, 1]), emb, torch.tensor([0, 0, 1, 1]), 3, 0.01)


def _three_classes(per_class: int, spread: float, seed: int, threshold: float):
    """Validation embeddings of three classes around the unit axes, and their open set."""
    g = torch.Generator().manual_seed(seed)
    means = torch.eye(3)
    labels = torch.arange(3).repeat_interleave(per_class)
    val = means[labels] + spread * torch.randn(len(labels), 3, generator=g)
    return means, labels, val, fit_open_set(val, labels, val, labels, 3, threshold=threshold)


def nearest_mean(embeddings: torch.Tensor) -> torch.Tensor:
    """A classifier's logits: minus the distance to each unit axis."""
    return -torch.cdist(embeddings, torch.eye(3))


NAMES = ["a", "b", "c"]


def test_threshold_rises_to_reject_reviewed_outliers_within_the_allowed_f1_drop():
    from fieldmon.train.classifier import threshold_for_rejects

    means, labels, val, open_set = _three_classes(per_class=40, spread=0.05, seed=0, threshold=0.01)
    # just beyond what the starting threshold rejects: upper-tail probability 0.015 > 0.01
    classes = torch.arange(3).repeat(5)
    distance = open_set.distance_mean[classes] + 2.17 * open_set.distance_std[classes]
    away = torch.roll(means, 1, dims=1)[classes]  # a direction orthogonal to the class mean
    far = open_set.class_means[classes] + distance[:, None] * away
    threshold, info = threshold_for_rejects(open_set, nearest_mean, val, labels, far, NAMES)
    assert threshold > 0.01 and info["rejected"] == 1.0 and info["rejected_at_start"] < 1.0
    assert 0.0 <= info["validation_macro_f1_drop"] <= 0.03
    # sounds that lie among the known windows cannot be rejected without losing them too
    typical = val[::8]
    threshold, info = threshold_for_rejects(open_set, nearest_mean, val, labels, typical, NAMES)
    assert info["validation_macro_f1_drop"] <= 0.03 and info["rejected"] < 0.5


def test_calibrated_threshold_spends_at_most_the_allowed_f1_on_rejection():
    from fieldmon.train.classifier import calibrated_threshold

    _, labels, val, open_set = _three_classes(per_class=60, spread=0.3, seed=1, threshold=0.0)
    threshold, info = calibrated_threshold(open_set, nearest_mean, val, labels, NAMES)
    assert open_set.calibration_cap == 0.5 and 0.0 < threshold <= 0.5
    drop = info["validation_macro_f1_without_rejection"] - info["validation_macro_f1_with_rejection"]
    assert 0.0 <= drop <= 0.03
    assert 0.0 < info["validation_windows_rejected"] < 0.2
    # a larger allowance buys a higher threshold, never above the cap
    looser, _ = calibrated_threshold(open_set, nearest_mean, val, labels, NAMES, max_drop=0.2)
    assert threshold < looser <= 0.5
    # no allowance: nothing that costs F1 is rejected
    strict, info = calibrated_threshold(open_set, nearest_mean, val, labels, NAMES, max_drop=0.0)
    assert strict <= threshold
    assert info["validation_macro_f1_with_rejection"] >= info["validation_macro_f1_without_rejection"]


def test_a_species_fitted_on_one_tight_recording_keeps_new_recordings_of_it():
    # species 0: validation windows of one recording, all 0.30 +- 0.005 from the mean;
    # species 1: of several recordings, 0.5 +- 0.1. A new recording of species 0 lies at 0.38.
    g = torch.Generator().manual_seed(0)
    train = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    radius = torch.cat([0.30 + 0.005 * torch.randn(200, generator=g), 0.5 + 0.1 * torch.randn(200, generator=g)])
    labels = torch.arange(2).repeat_interleave(200)
    val = train[labels] + radius[:, None] * torch.tensor([0.0, 0.0, 1.0])
    params = fit_open_set(train, torch.tensor([0, 1]), val, labels, 2, threshold=0.05)
    spreads = params.distance_std.tolist()
    # species 0 gets the pooled spread, about 0.1 / sqrt(2); species 1 keeps its own, wider one
    assert 0.06 < spreads[0] < spreads[1] and spreads[1] == pytest.approx(0.1, abs=0.03)
    new_recording = torch.tensor([[1.0, 0.0, 0.38]])
    assert params.is_known(params.scores(new_recording, torch.tensor([0]))).item()
    # far beyond both spreads it is still rejected
    assert not params.is_known(params.scores(torch.tensor([[1.0, 0.0, 0.9]]), torch.tensor([0]))).item()


def test_shared_spread_gives_every_class_the_gaussian_of_all_distances():
    train = torch.tensor([[1.0, 0.2], [1.0, -0.2], [0.2, 1.0], [-0.2, 1.0]])
    train_labels = torch.tensor([0, 0, 1, 1])
    # validation distances: 0.1 and 0.3 from (1, 0), 0.5 from (0, 1): mean 0.3, MLE std sqrt(0.08/3)
    val = torch.tensor([[1.1, 0.0], [1.3, 0.0], [0.0, 1.5]])
    val_labels = torch.tensor([0, 0, 1])
    params = fit_open_set(train, train_labels, val, val_labels, n_classes=2, threshold=0.05, kind="shared")
    assert params.spread == "shared"
    assert params.distance_mean.tolist() == pytest.approx([0.3, 0.3])
    assert params.distance_std.tolist() == pytest.approx([math.sqrt(0.08 / 3)] * 2, rel=1e-5)
    # so the score depends on the distance alone, whichever class is predicted
    probes = torch.tensor([[1.4, 0.0], [0.0, 1.4]])
    scores = params.scores(probes, torch.tensor([0, 1]))
    assert scores[0].item() == pytest.approx(scores[1].item(), abs=1e-6)
    # refitting (e.g. on int8 embeddings) keeps the spread; the JSON round trip too
    refitted = params.refit(val * 2, val_labels)
    assert refitted.spread == "shared" and refitted.distance_mean[0] == refitted.distance_mean[1]
    again = type(params).from_json(params.to_json(), params.class_means)
    assert again.spread == "shared" and torch.equal(again.scores(probes, torch.tensor([0, 1])), scores)


def test_open_set_json_from_before_the_shared_spread_reads_as_each_species_own():
    from fieldmon.model.openset import OpenSetParams

    emb = torch.nn.functional.normalize(torch.randn(20, 4), dim=1)
    labels = torch.arange(20) % 2
    data = fit_open_set(emb, labels, emb, labels, 2, threshold=0.01).to_json()
    del data["spread"]
    assert OpenSetParams.from_json(data, torch.zeros(2, 4)).spread == "species"
    with pytest.raises(ValueError, match="unknown open-set spread"):
        OpenSetParams.from_json({**data, "spread": "magic"}, torch.zeros(2, 4))


def test_nearest_window_scores_the_cosine_similarity_to_the_closest_training_window():
    from fieldmon.model.openset import OpenSetParams

    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    train_labels = torch.tensor([0, 1, 1])
    params = fit_open_set(train, train_labels, train, train_labels, 2, threshold=0.9, kind="nearest-window")
    assert params.rule == "nearest_window" and params.calibration_cap == 1.0
    probes = torch.tensor([[1.0, 0.0], [0.8, 0.6], [-1.0, 0.0]])
    # nearest: itself (cos 1); (0.6, 0.8) with cos 0.96 (not the class-0 window, 0.8); (0, 1) with cos 0
    # (1 + cos) / 2, whichever class is predicted
    expected = [1.0, 0.98, 0.5]
    for predicted in (torch.tensor([0, 0, 0]), torch.tensor([1, 1, 1])):
        assert params.scores(probes, predicted).tolist() == pytest.approx(expected, abs=1e-6)
    assert params.is_known(params.scores(probes, torch.tensor([0, 0, 0]))).tolist() == [True, True, False]
    again = OpenSetParams.from_json(params.to_json(), params.class_means, params.reference)
    assert again.rule == "nearest_window" and torch.equal(again.reference, train)
    with pytest.raises(ValueError, match="no open_set.reference"):
        OpenSetParams.from_json(params.to_json(), params.class_means)
    with pytest.raises(ValueError, match="open-set kind"):
        fit_open_set(train, train_labels, train, train_labels, 2, 0.5, kind="nearest")


def test_calibration_rejects_what_scores_below_every_known_window_even_when_one_window_costs_too_much():
    import numpy as np

    from fieldmon.train.classifier import RejectionF1

    # one validation window per species, all right: rejecting any costs a third of macro-F1
    scores, labels = np.array([0.6, 0.7, 0.8]), np.array([0, 1, 2])
    f1 = RejectionF1(scores, labels, labels, ["a", "b", "c"])
    threshold = f1.highest_affordable(0.0, 0.03, cap=0.5)
    assert threshold == 0.5  # the free range reaches the cap first
    threshold = f1.highest_affordable(0.0, 0.03, cap=1.0)
    assert threshold == 0.6 and f1(threshold) == 1.0  # no known window rejected...
    assert 0.55 < threshold  # ...but a sound scoring below them all is
    # with room for one window the search goes on past the free range as before
    many = RejectionF1(np.linspace(0.1, 0.9, 60), np.repeat([0, 1, 2], 20), np.repeat([0, 1, 2], 20), ["a", "b", "c"])
    assert many.highest_affordable(0.0, 0.03) > 0.1
