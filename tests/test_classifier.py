"""The MLP on embeddings: its class-means start and its settings."""

from __future__ import annotations

import pytest
import torch

from fieldmon.train.classifier import class_means_mlp, class_means_temperature, train_mlp
from fieldmon.train.settings import TrainSettings


def _clusters(n_per_class: int, spread: float, seed: int, n_classes: int = 4, dim: int = 16):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(n_classes, dim, generator=torch.Generator().manual_seed(99)), dim=1)
    labels = torch.arange(n_classes).repeat_interleave(n_per_class)
    points = centres[labels] + spread * torch.randn(len(labels), dim, generator=generator)
    return torch.nn.functional.normalize(points, dim=1), labels


def test_class_means_mlp_gives_the_nearest_class_mean_softmax():
    embeddings, labels = _clusters(20, 0.5, seed=0)
    probes, _ = _clusters(10, 0.8, seed=1)
    temperature = 0.3
    mlp = class_means_mlp(embeddings, labels, 4, temperature).eval()
    means = torch.stack([embeddings[labels == c].mean(0) for c in range(4)])
    expected = torch.softmax(-torch.cdist(probes, means).square() / temperature, dim=1)
    with torch.no_grad():
        got = torch.softmax(mlp(probes), dim=1)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.equal(got.argmax(1), torch.cdist(probes, means).argmin(1))


def test_a_species_without_training_windows_is_never_predicted():
    embeddings, labels = _clusters(5, 0.3, seed=0, n_classes=3)
    mlp = class_means_mlp(embeddings, labels, 4, 0.1)
    with torch.no_grad():
        predicted = mlp(torch.nn.functional.normalize(torch.randn(200, 16), dim=1)).argmax(1)
    assert set(predicted.tolist()) <= {0, 1, 2}


def test_validation_chooses_a_softer_temperature_when_new_windows_lie_farther_from_the_means():
    train, train_labels = _clusters(30, 0.3, seed=0)
    near, near_labels = _clusters(10, 0.3, seed=1)
    far, far_labels = _clusters(10, 1.0, seed=2)
    sharp = class_means_temperature(train, train_labels, near, near_labels, 4)
    soft = class_means_temperature(train, train_labels, far, far_labels, 4)
    assert soft > sharp


def test_training_from_the_class_means_never_ends_worse_on_validation_than_it_starts():
    train, train_labels = _clusters(8, 0.9, seed=0)
    val, val_labels = _clusters(10, 0.9, seed=1)
    settings = TrainSettings(steps=1, mlp_max_epochs=300, mlp_patience=50)
    mlp, info = train_mlp(train, train_labels, val, val_labels, 4, settings)
    start = class_means_mlp(train, train_labels, 4, info["mlp_init_temperature"])
    with torch.no_grad():
        start_loss = float(torch.nn.functional.cross_entropy(start(val), val_labels))
        end_loss = float(torch.nn.functional.cross_entropy(mlp(val), val_labels))
    assert info["mlp_init"] == "class-means"
    assert end_loss <= start_loss + 1e-6
    assert end_loss == pytest.approx(info["mlp_monitored_loss"], rel=1e-5)


def test_the_random_start_is_the_paper_recipe_and_that_of_models_from_before_the_choice():
    assert TrainSettings(steps=1).mlp_init == "class-means"
    assert TrainSettings.for_network("paper", steps=1).mlp_init == "random"
    before = TrainSettings(steps=1).to_dict()
    del before["mlp_init"]
    assert TrainSettings.from_dict(before).mlp_init == "random"
    with pytest.raises(ValueError, match="mlp_init"):
        TrainSettings(steps=1, mlp_init="zeros")
    _, info = train_mlp(*_clusters(5, 0.3, seed=0), *_clusters(3, 0.3, seed=1), 4,
                        TrainSettings(steps=1, mlp_init="random", mlp_max_epochs=5))
    assert info["mlp_init"] == "random" and "mlp_init_temperature" not in info
