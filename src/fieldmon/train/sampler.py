"""Mini-batches holding at least ``per_class`` windows of every species (paper, II.C)."""

from __future__ import annotations

import numpy as np


class ClassBalancedSampler:
    """Draws mini-batch ``i`` from its own seeded generator, so a resumed run draws
    exactly the batches the uninterrupted run would have drawn.

    With ``clips`` (the clip each window was cut from), a species' windows in a
    mini-batch come from as many different clips as it has: one per clip in turn,
    and a clip again only when the species has fewer clips than ``per_class``.
    Windows of one recording share its microphone, distance and background; as
    positives they let the triplet loss separate recordings instead of species.
    """

    def __init__(
        self, labels: np.ndarray, per_class: int, batch_size: int | None, seed: int, clips: np.ndarray | None = None
    ) -> None:
        self.labels = np.asarray(labels)
        self.classes = np.unique(self.labels)
        self.by_class = [np.flatnonzero(self.labels == c) for c in self.classes]
        self.by_clip = None
        if clips is not None:
            clips = np.asarray(clips)
            self.by_clip = [[idx[clips[idx] == clip] for clip in np.unique(clips[idx])] for idx in self.by_class]
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
        if self.by_clip is None:
            # A species with fewer windows than per_class repeats some of them.
            parts = [rng.choice(idx, self.per_class, replace=len(idx) < self.per_class) for idx in self.by_class]
        else:
            parts = [self._from_distinct_clips(rng, clips) for clips in self.by_clip]
        extra = self.batch_size - self.per_class * len(self.classes)
        if extra:
            parts.append(rng.choice(len(self.labels), extra, replace=False))
        return np.concatenate(parts)

    def _from_distinct_clips(self, rng: np.random.Generator, clips: list[np.ndarray]) -> np.ndarray:
        times = np.bincount(np.resize(rng.permutation(len(clips)), self.per_class), minlength=len(clips))
        return np.concatenate([rng.choice(w, n, replace=len(w) < n) for w, n in zip(clips, times) if n])

    def batches_per_epoch(self) -> int:
        return -(-len(self.labels) // self.batch_size)
