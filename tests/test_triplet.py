from __future__ import annotations

import numpy as np
import pytest
import torch

from fieldmon.train.sampler import ClassBalancedSampler
from fieldmon.train.triplet import DynamicMargin, semi_hard_triplets, triplet_loss

# 1-D embeddings: two of class 0 at 0.0 and 0.3, two of class 1 at 0.5 and 2.0.
# Squared distances: (0,1) 0.09, (0,2) 0.25, (0,3) 4.0, (1,2) 0.04, (1,3) 2.89, (2,3) 2.25.
EMB = torch.tensor([[0.0], [0.3], [0.5], [2.0]])
LABELS = torch.tensor([0, 0, 1, 1])


def as_set(triplets: torch.Tensor) -> set[tuple[int, int, int]]:
    return {tuple(t) for t in triplets.tolist()}


def test_semi_hard_triplets_hand_computed():
    # margin 0.2: (0,1,2): 0.09 < 0.25 < 0.29 is the only semi-hard triplet;
    # (1,0,2) is hard (0.04 < 0.09); (3,2,1): 2.25 < 2.89 but not < 2.45.
    assert as_set(semi_hard_triplets(EMB, LABELS, 0.2)) == {(0, 1, 2)}
    # margin 0.7: (3,2,1) joins (2.89 < 2.95); (3,2,0) does not (4.0 > 2.95)
    assert as_set(semi_hard_triplets(EMB, LABELS, 0.7)) == {(0, 1, 2), (3, 2, 1)}


def test_triplet_loss_is_eq2_averaged():
    triplets = torch.tensor([[0, 1, 2], [3, 2, 1]])
    # max(0.09 - 0.25 + 0.7, 0) = 0.54 ; max(2.25 - 2.89 + 0.7, 0) = 0.06
    assert triplet_loss(EMB, triplets, 0.7).item() == pytest.approx((0.54 + 0.06) / 2, abs=1e-6)
    assert triplet_loss(EMB, triplets[:0], 0.7).item() == 0.0


def test_no_triplet_crosses_labels_wrongly_on_random_batches():
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(40, 8), dim=1)
    labels = torch.arange(40) % 4
    t = semi_hard_triplets(emb, labels, 0.4)
    assert len(t) > 0
    a, p, n = t.T
    assert (labels[a] == labels[p]).all() and (labels[a] != labels[n]).all() and (a != p).all()
    d = ((emb[:, None] - emb[None]) ** 2).sum(-1)
    assert (d[a, p] < d[a, n]).all() and (d[a, n] < d[a, p] + 0.4).all()


def test_margin_schedule_on_scripted_counts():
    margin = DynamicMargin()
    counts = [20, 10, 10, 10, 10, 20, 5, 5, 5]
    assert [margin.record(c) for c in counts] == [0.2, 0.2, 0.2, 0.25, 0.3, 0.3, 0.3, 0.3, 0.35]


def test_margin_stops_at_the_maximum():
    margin = DynamicMargin()
    values = [margin.record(0) for _ in range(30)]
    assert values[-1] == 0.6 and max(values) == 0.6 and margin.at_maximum
    assert values[:3] == [0.2, 0.2, 0.25]


def test_sampler_holds_per_class_minimum_and_is_reproducible():
    labels = np.repeat(np.arange(6), [30, 12, 5, 2, 40, 8])
    sampler = ClassBalancedSampler(labels, per_class=5, batch_size=None, seed=3)
    for i in range(20):
        batch = sampler.batch(i)
        assert len(batch) == 30
        assert (np.bincount(labels[batch], minlength=6) >= 5).all()
    assert np.array_equal(sampler.batch(7), ClassBalancedSampler(labels, 5, None, 3).batch(7))
    assert not np.array_equal(sampler.batch(7), sampler.batch(8))
    bigger = ClassBalancedSampler(labels, per_class=5, batch_size=40, seed=3)
    assert len(bigger.batch(0)) == 40 and (np.bincount(labels[bigger.batch(0)], minlength=6) >= 5).all()
    with pytest.raises(ValueError, match="cannot hold 5 windows"):
        ClassBalancedSampler(labels, per_class=5, batch_size=20, seed=0)


def test_sampler_spreads_a_species_over_its_clips():
    # species 0: 4 clips of 10 windows; species 1: 8 clips of 3; species 2: 1 clip of 2 windows
    clips = np.concatenate([np.repeat(np.arange(4), 10), np.repeat(np.arange(4, 12), 3), [12, 12]])
    labels = np.concatenate([np.zeros(40, int), np.ones(24, int), [2, 2]])
    sampler = ClassBalancedSampler(labels, per_class=5, batch_size=None, seed=1, clips=clips)
    for i in range(30):
        batch = sampler.batch(i)
        assert len(batch) == 15 and (np.bincount(labels[batch]) == 5).all()
        species0 = np.bincount(clips[batch][labels[batch] == 0], minlength=4)
        assert sorted(species0) == [1, 1, 1, 2]  # every clip once before any twice
        assert len(set(clips[batch][labels[batch] == 1])) == 5  # 8 clips: five different ones
        assert len(set(batch[labels[batch] == 0])) == 5  # a repeated clip gives two different windows
    assert np.array_equal(sampler.batch(4), ClassBalancedSampler(labels, 5, None, 1, clips=clips).batch(4))


def test_distinct_clips_is_the_compact_recipe_not_the_papers_nor_that_of_models_from_before():
    from fieldmon.train.settings import TrainSettings

    assert TrainSettings(steps=1).distinct_clips
    assert not TrainSettings.for_network("paper", steps=1).distinct_clips
    before = TrainSettings(steps=1).to_dict()
    del before["distinct_clips"]
    assert not TrainSettings.from_dict(before).distinct_clips
    assert TrainSettings.from_dict(TrainSettings(steps=1).to_dict()).distinct_clips
