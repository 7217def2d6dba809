"""Dynamic triplet loss (paper, II.C and Algorithm 1).

Distances are squared Euclidean, as in Eq. 2, for both mining and loss. A triplet
(a, p, n) is semi-hard when d(a,p) < d(a,n) < d(a,p) + margin.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def squared_distances(embeddings: torch.Tensor) -> torch.Tensor:
    diff = embeddings[:, None, :] - embeddings[None, :, :]
    return (diff * diff).sum(dim=-1)


@torch.no_grad()
def semi_hard_triplets(embeddings: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """All semi-hard triplets of a mini-batch as ``[T, 3]`` indices (anchor, positive, negative)."""
    d = squared_distances(embeddings)
    same = labels[:, None] == labels[None, :]
    positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    negative = ~same
    d_ap = d[:, :, None]  # [a, p, 1]
    d_an = d[:, None, :]  # [a, 1, n]
    mask = positive[:, :, None] & negative[:, None, :] & (d_an > d_ap) & (d_an < d_ap + margin)
    return mask.nonzero()


def triplet_loss(embeddings: torch.Tensor, triplets: torch.Tensor, margin: float) -> torch.Tensor:
    """Eq. 2, averaged over the triplets (Adagrad's per-parameter scaling makes the
    sum and the mean give nearly the same updates; the mean keeps the loss readable)."""
    if len(triplets) == 0:
        return embeddings.sum() * 0.0
    a, p, n = embeddings[triplets[:, 0]], embeddings[triplets[:, 1]], embeddings[triplets[:, 2]]
    d_ap = ((a - p) ** 2).sum(dim=1)
    d_an = ((a - n) ** 2).sum(dim=1)
    return torch.relu(d_ap - d_an + margin).mean()


@dataclass
class DynamicMargin:
    """The margin schedule of Algorithm 1: after each mini-batch's count of semi-hard
    triplets is recorded, if the last ``patience`` counts were all below ``threshold``
    the margin grows by ``step``, up to ``maximum``.

    As in Algorithm 1 the count list is not reset after a raise, so a run of low
    counts raises the margin at every further mini-batch until a count reaches the
    threshold or the maximum is hit. (Algorithm 1's literal test "alpha <= 0.6" would
    allow one step to 0.65; the text says 0.6 is the maximum, so we cap there.)
    """

    value: float = 0.2
    step: float = 0.05
    maximum: float = 0.6
    threshold: int = 15
    patience: int = 3
    recent_counts: list[int] = field(default_factory=list)

    def record(self, count: int) -> float:
        self.recent_counts = (self.recent_counts + [int(count)])[-self.patience :]
        if len(self.recent_counts) == self.patience and all(c < self.threshold for c in self.recent_counts):
            # round() keeps 0.2 + 8 * 0.05 exactly 0.6 instead of 0.6000000000000001
            self.value = round(min(self.value + self.step, self.maximum), 10)
        return self.value

    @property
    def at_maximum(self) -> bool:
        return self.value >= self.maximum
