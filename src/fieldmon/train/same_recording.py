"""Clips that hold the same recording.

A labelled set that holds one recording twice is wrong in one of three ways, and each
misleads the model or its scores: under two labels (at most one is right), in two splits
(a validation or test score that counts a clip the model trained on), or twice in one
split (it counts double). InsectSet32 itself holds one: "MHV 321 P.plumosa Ghwarriepoort
River #1" is a validation clip of Platypleura plumosa and, re-encoded as "#1_0", of Pycna
semiclara.

Copies are found by their first window's features, which training computes anyway:
each Mel band's variation over the 2 s (its level over the window removed, so that two
recordings of one steady song do not match on their spectrum alone), correlated between
every two clips. A copy, even re-encoded, correlates at 1.000; different recordings of one
species in InsectSet32 at most 0.92. Only copies that start at the same sample are found,
not clips cut from one recording at different offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fieldmon.train.cache import WindowSet
from fieldmon.train.dataset import Clip

SAME_RECORDING = 0.99
_ROWS_AT_ONCE = 1024  # of the similarity matrix, so that memory stays bounded for large sets


@dataclass(frozen=True)
class SameRecording:
    first: Clip
    second: Clip
    similarity: float

    def problem(self) -> str:
        a, b = self.first, self.second
        both = f"{a.path} ({a.label}, {a.split}) and {b.path} ({b.label}, {b.split}) hold the same recording"
        if a.label != b.label:
            return f"{both} under two labels: at most one is right"
        if a.split != b.split:
            return (f"{both} in two splits: the {b.split if a.split == 'train' else a.split} score counts a "
                    "recording the model trained on or was selected on; keep each recording in one split")
        return f"{both} twice in one split: it counts double"


def same_recordings(window_sets: list[WindowSet]) -> list[SameRecording]:
    """Every pair of clips, across the window sets (whose windows start at 0 s), whose
    first windows are the same recording."""
    clips, firsts = [], []
    for windows in window_sets:
        indices, rows = np.unique(windows.clip_index, return_index=True)
        clips += [windows.clips[i] for i in indices]
        firsts.append(windows.features[rows, 0])  # the window as recorded, without the HPSS parts
    if len(clips) < 2:
        return []
    x = np.concatenate(firsts).astype(np.float32)
    x -= x.mean(axis=2, keepdims=True)
    x = x.reshape(len(x), -1)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)  # silence stays zero, like nothing
    found = []
    for start in range(0, len(x), _ROWS_AT_ONCE):
        similarity = x[start:start + _ROWS_AT_ONCE] @ x.T
        for i, j in zip(*np.nonzero(similarity >= SAME_RECORDING)):
            if start + i < j:
                found.append(SameRecording(clips[start + i], clips[j], round(float(similarity[i, j]), 4)))
    return found
