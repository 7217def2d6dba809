"""The MLP on embeddings (paper II.B.2) and the open-set calibration (IV.D)."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from fieldmon.evaluation.metrics import UNKNOWN, classification_report
from fieldmon.model.network import MLPClassifier
from fieldmon.model.openset import OpenSetParams, class_means
from fieldmon.train.settings import TrainSettings


# Candidate softmax temperatures of the class-means MLP: squared distances between unit
# embeddings lie in [0, 4], so these span near-uniform to near-one-hot probabilities.
TEMPERATURES = np.geomspace(1e-3, 10.0, 81)


def class_means_mlp(embeddings: torch.Tensor, labels: torch.Tensor, n_classes: int,
                    temperature: float) -> MLPClassifier:
    """An MLP whose logits are the nearest-class-mean classifier's: -|e - m_c|^2 / T up to
    a constant, with m_c the mean training embedding of species c.

    For unit-length embeddings that is the linear map (2 e.m_c - |m_c|^2) / T, and a ReLU
    layer of 2 x dim units passes e through exactly as relu(e) - relu(-e). A species
    without training windows is never predicted."""
    dim = embeddings.shape[1]
    mlp = MLPClassifier(dim, n_classes)
    hidden, out = mlp.layers[0], mlp.layers[2]
    if hidden.out_features < 2 * dim:
        raise ValueError(f"a class-means MLP needs {2 * dim} hidden units for {dim}-D embeddings, "
                         f"not {hidden.out_features}")
    means, counts = class_means(embeddings, labels, n_classes)
    bias = torch.where(counts > 0, -means.square().sum(1) / temperature, torch.tensor(-1e4))
    with torch.no_grad():
        hidden.weight.zero_()
        hidden.weight[:2 * dim].copy_(torch.cat([torch.eye(dim), -torch.eye(dim)]))
        hidden.bias.zero_()
        out.weight.zero_()
        out.weight[:, :2 * dim].copy_(torch.cat([2 * means, -2 * means], 1) / temperature)
        out.bias.copy_(bias)
    return mlp


@torch.no_grad()
def class_means_temperature(train_embeddings: torch.Tensor, train_labels: torch.Tensor,
                            val_embeddings: torch.Tensor, val_labels: torch.Tensor, n_classes: int) -> float:
    """The temperature with the lowest validation cross-entropy (the training windows'
    own embeddings lie closer to their means than new ones do, so they would choose
    overconfident probabilities). 0.1 without validation windows."""
    if len(val_labels) == 0:
        return 0.1
    means = class_means_mlp(train_embeddings, train_labels, n_classes, 1.0)
    logits = means(val_embeddings)  # at T = 1; a temperature divides them
    losses = [float(nn.functional.cross_entropy(logits / t, val_labels)) for t in TEMPERATURES]
    return float(TEMPERATURES[int(np.argmin(losses))])


def train_mlp(
    train_embeddings: torch.Tensor,
    train_labels: torch.Tensor,
    val_embeddings: torch.Tensor,
    val_labels: torch.Tensor,
    n_classes: int,
    settings: TrainSettings,
) -> tuple[MLPClassifier, dict]:
    """Full-batch Adam; early stopping on the validation loss, keeping the weights of the
    best epoch (the starting weights included). Embeddings are few and 128-D, so each
    epoch is one cheap step.

    ``settings.mlp_init`` "class-means" starts from the nearest-class-mean classifier
    (class_means_mlp) at the temperature validation prefers; "random" is the paper's start."""
    torch.manual_seed(settings.seed)
    info = {"mlp_init": settings.mlp_init}
    if settings.mlp_init == "class-means":
        temperature = class_means_temperature(train_embeddings, train_labels, val_embeddings, val_labels, n_classes)
        mlp = class_means_mlp(train_embeddings, train_labels, n_classes, temperature)
        info["mlp_init_temperature"] = temperature
    else:
        mlp = MLPClassifier(train_embeddings.shape[1], n_classes)
    optimizer = torch.optim.Adam(mlp.parameters(), lr=settings.mlp_learning_rate, weight_decay=settings.mlp_weight_decay)
    has_val = len(val_labels) > 0
    with torch.no_grad():
        start_loss = float(nn.functional.cross_entropy(mlp(val_embeddings), val_labels)) if has_val else float("inf")
    best_loss, best_epoch, best = start_loss, 0, copy.deepcopy(mlp.state_dict())
    epoch = 0
    for epoch in range(1, settings.mlp_max_epochs + 1):
        mlp.train()
        loss = nn.functional.cross_entropy(mlp(train_embeddings), train_labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        mlp.eval()
        with torch.no_grad():
            monitored = nn.functional.cross_entropy(mlp(val_embeddings), val_labels) if has_val else loss
        if float(monitored) < best_loss:
            best_loss, best_epoch, best = float(monitored), epoch, copy.deepcopy(mlp.state_dict())
        elif epoch - best_epoch >= settings.mlp_patience:
            break
    mlp.load_state_dict(best)
    mlp.eval()
    return mlp, {**info, "mlp_epochs": epoch, "mlp_best_epoch": best_epoch, "mlp_monitored_loss": best_loss}


# How much validation macro-F1 (known windows rejected count as errors) rejection may cost:
# the project's target for open-set rejection. The calibrated threshold spends it all,
# since the sounds a field recorder hears but the model does not know outnumber its
# species; a threshold that reviewed rejects call for may spend it again on top.
MAX_KNOWN_F1_DROP = 0.03


class RejectionF1:
    """Validation macro-F1 per window with the windows whose open-set score lies below a
    threshold called unknown."""

    def __init__(self, scores: np.ndarray, predicted: np.ndarray, labels: np.ndarray, class_names: list[str]) -> None:
        self.scores, self.predicted, self.labels, self.class_names = scores, predicted, labels, class_names

    @classmethod
    def of(cls, open_set: OpenSetParams, classifier: MLPClassifier, val_embeddings: torch.Tensor,
           val_labels: torch.Tensor, class_names: list[str]) -> RejectionF1:
        predicted = classifier(val_embeddings).argmax(1)
        return cls(open_set.scores(val_embeddings, predicted).numpy(), predicted.numpy(), val_labels.numpy(), class_names)

    def __call__(self, threshold: float) -> float:
        kept = np.where(self.scores < threshold, UNKNOWN, self.predicted)
        return classification_report(self.labels, kept, self.class_names).macro_f1

    def highest_affordable(self, start: float, max_drop: float, cap: float = np.inf) -> float:
        """The highest threshold, from ``start`` up to ``cap``, whose macro-F1 stays within
        ``max_drop`` of that at ``start``. Up to the lowest score nothing is rejected, so
        that much is free even when a single window costs more than ``max_drop`` (a few
        validation windows per species). Each candidate above it rejects one more window
        than the one below it; the first that costs too much ends the search."""
        floor, threshold = self(start) - max_drop, max(start, min(float(self.scores.min()), cap))
        for candidate in np.unique(np.nextafter(self.scores, np.inf)):
            if candidate <= start:
                continue
            if candidate > cap or self(float(candidate)) < floor:
                break
            threshold = float(candidate)
        return threshold


@torch.no_grad()
def calibrated_threshold(
    open_set: OpenSetParams,
    classifier: MLPClassifier,
    val_embeddings: torch.Tensor,
    val_labels: torch.Tensor,
    class_names: list[str],
    max_drop: float = MAX_KNOWN_F1_DROP,
) -> tuple[float, dict]:
    """The highest open-set threshold (at most 0.5 with each species' own spread) up to which the validation macro-F1
    with rejection stays within ``max_drop`` of the macro-F1 without rejection: as
    many unknown sounds rejected as the known species can afford.

    The validation windows also fitted the distance Gaussians, so this is in-sample: on
    new recordings of the known species somewhat more windows are rejected."""
    macro_f1 = RejectionF1.of(open_set, classifier, val_embeddings, val_labels, class_names)
    without = macro_f1(0.0)
    cap = open_set.calibration_cap
    threshold = macro_f1.highest_affordable(0.0, max_drop, cap=cap)
    return threshold, {
        "rule": f"highest threshold (at most {cap:g}) with validation macro-F1 per window "
                f"within {max_drop} of that without rejection",
        "threshold": threshold, "validation_macro_f1_without_rejection": without,
        "validation_macro_f1_with_rejection": macro_f1(threshold),
        "validation_windows_rejected": float((macro_f1.scores < threshold).mean()),
    }


@torch.no_grad()
def threshold_for_rejects(
    open_set: OpenSetParams,
    classifier: MLPClassifier,
    val_embeddings: torch.Tensor,
    val_labels: torch.Tensor,
    reject_embeddings: torch.Tensor,
    class_names: list[str],
    max_drop: float = MAX_KNOWN_F1_DROP,
) -> tuple[float, dict]:
    """The open-set threshold, raised from ``open_set.threshold`` as far as reviewed
    windows the model must call unknown call for, while the validation macro-F1 with
    rejection stays within ``max_drop`` of its value at the starting threshold.

    The validation windows also fitted the distance Gaussians, so their rejection is
    measured in-sample: on new recordings somewhat more known windows are rejected."""
    macro_f1 = RejectionF1.of(open_set, classifier, val_embeddings, val_labels, class_names)
    reject_scores = open_set.scores(reject_embeddings, classifier(reject_embeddings).argmax(1)).numpy()
    start = open_set.threshold
    at_start = macro_f1(start)
    # Each candidate rejects one more reviewed window than the one below it.
    candidates = np.unique(np.nextafter(reject_scores, np.inf))
    threshold = max([start, *(float(t) for t in candidates if t > start and macro_f1(t) >= at_start - max_drop)])
    return threshold, {
        "threshold": threshold, "from_threshold": start, "reject_windows": len(reject_scores),
        "rejected_at_start": float((reject_scores < start).mean()), "rejected": float((reject_scores < threshold).mean()),
        "validation_macro_f1_drop": at_start - macro_f1(threshold), "max_drop": max_drop,
    }
