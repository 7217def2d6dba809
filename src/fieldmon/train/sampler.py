"""Mini-batches holding at least ``per_class`` windows of every species (paper, II.C)."""

from __future__ import annotations

import numpy as np


class ClassBalancedSampler:
    """Draws mini-batch ``i`` from its own seeded generator, so a resumed run draws
    exactly the batches the uninterrupted run would have drawn."""

    def __init__(self, labels: np.ndarray, per_class: int, batch_size: int | None, seed: int) -> None:
        self.labels = np.asarray(labels)
        self.classes = np.unique(self.labels)
        self.by_class = [np.flatnonzero(self.labels == c) for c in self.classes]
        self.per_class = per_class
        minimum = per_class * len(self.classes)
        self.batch_size = minimum if batch_size is None else batch_size
        if self.batch_size < minimum:
            raise ValueError(
                f"batch size {self.batch_size} cannot hold {per_class} windows of each of {len(self.classes)} species "
                f"(needs {minimum})"
            )
        self.seed = seed

    def batch(self, index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, index])
        # A species with fewer windows than per_class repeats some of them.
        parts = [rng.choice(idx, self.per_class, replace=len(idx) < self.per_class) for idx in self.by_class]
        extra = self.batch_size - self.per_class * len(self.classes)
        if extra:
            parts.append(rng.choice(len(self.labels), extra, replace=False))
        return np.concatenate(parts)

    def batches_per_epoch(self) -> int:
        return -(-len(self.labels) // self.batch_size)
