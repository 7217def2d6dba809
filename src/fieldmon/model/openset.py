"""Open-set rejection (paper, IV.D): a window whose embedding lies unusually far
from the training mean of its predicted class becomes "unknown".

Per class c: mu_c = mean of the training embeddings; the Euclidean distances of
the class's validation embeddings to mu_c are fitted with a Gaussian N(m_c, s_c)
by maximum likelihood.

The paper rejects when "the likelihood of this distance is less than 0.5".
A Gaussian density is not a probability (it can exceed 1), and rejecting
distances that are unusually *small* makes no sense, so we read the score as
the one-sided tail probability

    open_set_score = P(D >= d | class c) = 1 - Phi((d - m_c) / s_c),

the chance that a genuine window of class c lies at least this far from the
class centre. It is 0.5 exactly at the mean validation distance, which is where
the paper's literal 0.5 would cut (rejecting about half of the known windows).
The threshold is a bundle setting chosen at calibration; the score is written
for every window so users can re-threshold without rescanning.

``spread="shared"`` fits one Gaussian to the distances of all classes' validation
windows (each to its own class mean) and gives it to every class, so the score is a
monotone function of the distance alone. Each class's own Gaussian is fitted on its
one or two validation recordings; a class's next recording lies further out than
they say. On an embedding that sets unknown sounds apart, one shared Gaussian carried
over to held-out recordings far better (README, "Open-set rejection"); on one that
does not, it rejected far fewer of them.

``rule="nearest_window"`` scores a window by its cosine similarity to the nearest
training window of any species, (1 + cos) / 2, so the bundle carries the training
embeddings (``reference``). A sound near none of the recordings the model learnt from
is unknown, whatever the class means say.

``fit_open_set``'s ``kind`` names the three: "species" (each species' Gaussian, no
spread below the pooled one), "shared" and "nearest-window".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch


MIN_STD = 1e-3  # a class with one validation window still gets a usable spread
SPREADS = ("species", "shared")
RULES = ("upper_tail_gaussian", "nearest_window")
OPEN_SET_KINDS = ("species", "shared", "nearest-window")


@dataclass
class OpenSetParams:
    class_means: torch.Tensor  # [C, D]
    distance_mean: torch.Tensor  # [C]
    distance_std: torch.Tensor  # [C]
    threshold: float
    rule: str = "upper_tail_gaussian"  # one of RULES
    spread: str = "species"  # one of SPREADS
    reference: torch.Tensor | None = None  # [N, D] training embeddings, for rule "nearest_window"

    @property
    def calibration_cap(self) -> float:
        """The highest threshold calibration may choose. With each species' own spread a
        calibrated threshold never rejects the typical known window: at 0.5 a window lies
        at its species' mean validation distance. The other rules say nothing of a
        species' typical window, and only the allowed macro-F1 drop bounds them."""
        return 0.5 if self.rule == "upper_tail_gaussian" and self.spread == "species" else 1.0

    def as_kind(self, kind: str, reference: torch.Tensor | None = None) -> OpenSetParams:
        """These class means and Gaussians under the open set ``kind`` names (one of
        OPEN_SET_KINDS); "nearest-window" compares against ``reference``. Refit it to
        fit the new kind's Gaussians."""
        if kind not in OPEN_SET_KINDS:
            raise ValueError(f"open-set kind must be one of {', '.join(OPEN_SET_KINDS)}, not {kind!r}")
        if kind == "nearest-window":
            return replace(self, rule="nearest_window", spread="species", reference=reference)
        return replace(self, rule="upper_tail_gaussian", spread=kind, reference=None)

    def to_json(self) -> dict:
        return {
            "rule": self.rule,
            "spread": self.spread,
            **({"reference_windows": len(self.reference)} if self.reference is not None else {}),
            "threshold": self.threshold,
            "distance_mean": [float(v) for v in self.distance_mean],
            "distance_std": [float(v) for v in self.distance_std],
        }

    @classmethod
    def from_json(cls, data: dict, class_means: torch.Tensor, reference: torch.Tensor | None = None) -> OpenSetParams:
        rule = data.get("rule")
        if rule not in RULES:
            raise ValueError(f"unknown open-set rule {rule!r}")
        if rule == "nearest_window" and reference is None:
            raise ValueError("open-set rule nearest_window: the weights hold no open_set.reference embeddings")
        spread = data.get("spread", "species")  # bundles from before the shared spread
        if spread not in SPREADS:
            raise ValueError(f"unknown open-set spread {spread!r}")
        return cls(
            class_means=class_means,
            distance_mean=torch.tensor(data["distance_mean"], dtype=torch.float32),
            distance_std=torch.tensor(data["distance_std"], dtype=torch.float32),
            threshold=float(data["threshold"]),
            rule=rule,
            spread=spread,
            reference=reference if rule == "nearest_window" else None,
        )

    def to(self, device: torch.device | str) -> OpenSetParams:
        return OpenSetParams(
            self.class_means.to(device),
            self.distance_mean.to(device),
            self.distance_std.to(device),
            self.threshold,
            self.rule,
            self.spread,
            None if self.reference is None else self.reference.to(device),
        )

    def scores(self, embeddings: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
        """Upper-tail probability of each window's distance to its predicted class; with
        rule "nearest_window", (1 + cosine similarity to the nearest training window) / 2."""
        if self.rule == "nearest_window":
            similarity = (embeddings @ self.reference.to(embeddings.dtype).T).max(dim=1).values
            return (1.0 + similarity.clamp(-1.0, 1.0)) / 2.0
        distance = torch.linalg.vector_norm(embeddings - self.class_means[predicted], dim=1)
        z = (distance - self.distance_mean[predicted]) / self.distance_std[predicted]
        return 0.5 * torch.erfc(z / math.sqrt(2.0))

    def is_known(self, scores: torch.Tensor) -> torch.Tensor:
        return scores >= self.threshold

    def refit(self, embeddings: torch.Tensor, labels: torch.Tensor) -> OpenSetParams:
        """The distance Gaussians (MLE) fitted again on ``embeddings``, for the classes
        present there; the others keep theirs. No class's spread is narrower than the
        pooled spread of all classes (the root mean square of their spreads): a species
        is often represented by the windows of one or two validation recordings, which
        lie closer together than those of its next recording will. Fitted on one
        recording, five-species site models rejected 43 % of the windows of their own
        species in new recordings; with this floor 19 %, and as many outliers (README,
        "Open-set rejection"). With ``spread="shared"``, every class gets the Gaussian of
        all the distances."""
        if self.spread == "shared":
            d = torch.linalg.vector_norm(embeddings - self.class_means[labels], dim=1)
            n = len(self.distance_mean)
            return replace(self, distance_mean=torch.full((n,), float(d.mean())),
                           distance_std=torch.full((n,), max(float(d.std(unbiased=False)), MIN_STD)))
        dist_mean, dist_std = self.distance_mean.clone(), self.distance_std.clone()
        for c in labels.unique().tolist():
            d = torch.linalg.vector_norm(embeddings[labels == c] - self.class_means[c], dim=1)
            dist_mean[c] = d.mean()
            dist_std[c] = max(float(d.std(unbiased=False)), MIN_STD)
        pooled = float(dist_std.square().mean().sqrt())
        return replace(self, distance_mean=dist_mean, distance_std=dist_std.clamp(min=pooled))


def class_means(embeddings: torch.Tensor, labels: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean embedding of each class ``[C, D]`` (zeros for a class without embeddings)
    and how many embeddings each class has ``[C]``."""
    counts = torch.bincount(labels, minlength=n_classes)
    sums = torch.zeros(n_classes, embeddings.shape[1]).index_add_(0, labels, embeddings.detach().float())
    return sums / counts.clamp(min=1)[:, None], counts


def fit_open_set(
    train_embeddings: torch.Tensor,
    train_labels: torch.Tensor,
    val_embeddings: torch.Tensor,
    val_labels: torch.Tensor,
    n_classes: int,
    threshold: float,
    kind: str = "species",
    reference: torch.Tensor | None = None,
) -> OpenSetParams:
    """Class means from the training embeddings, then the open set ``kind`` names (one
    of OPEN_SET_KINDS) on the validation embeddings; "nearest-window" compares against
    ``reference`` (default: the training embeddings)."""
    means, counts = class_means(train_embeddings, train_labels, n_classes)
    if (counts == 0).any():
        raise ValueError(f"class {int((counts == 0).nonzero()[0])} has no training embeddings")
    if kind == "nearest-window":
        reference = (train_embeddings if reference is None else reference).detach().clone()
    unfitted = OpenSetParams(means, torch.zeros(n_classes), torch.full((n_classes,), MIN_STD), threshold)
    unfitted = unfitted.as_kind(kind, reference)
    if kind == "shared":
        return unfitted.refit(val_embeddings, val_labels)
    # Without validation windows, the training distances are the only evidence.
    return unfitted.refit(train_embeddings, train_labels).refit(val_embeddings, val_labels)
