"""Features of labelled clips, cached on disk.

A clip's windows are keyed by the file's content (sha256) and the feature settings
and hop, so a second run, or a run on a renamed copy, does not recompute them, and a
change of settings can never reuse stale features.

A clip that gives no windows (silent, undecodable) is left out with its reason, not
fatal: InsectSet32 itself holds two all-zero clips, and a user's few hundred clips
should not fail for one bad file. Every clip left out is reported and recorded.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from fieldmon.audio import AudioReadError, cut_windows, load_audio
from fieldmon.feature_extractor import FeatureExtractor
from fieldmon.features import FeatureSettings
from fieldmon.fileio import atomic_write, user_cache_dir
from fieldmon.train.dataset import Clip, DatasetError


CACHE_VERSION = 2
# Held-out clips (validation, test, `fieldmon evaluate`) are cut into non-overlapping
# windows, as a scan cuts recordings by default, whatever hop training uses.
EVALUATION_HOP_SECONDS = 2.0


def default_cache_dir() -> Path:
    return user_cache_dir() / "features"


@dataclass
class WindowSet:
    """Every window of a clip set: features and where each came from."""

    features: np.ndarray  # [N, 3, n_mels, n_frames] float32
    labels: np.ndarray  # [N] class index
    clip_index: np.ndarray  # [N] index into clips
    clips: list[Clip]
    left_out: list[str] = field(default_factory=list)  # "path: reason" of clips without windows

    def subset(self, mask: np.ndarray) -> WindowSet:
        return WindowSet(self.features[mask], self.labels[mask], self.clip_index[mask], self.clips, self.left_out)

    def clip_count(self) -> int:
        return len(np.unique(self.clip_index))

    def in_split(self, split: str) -> WindowSet:
        splits = np.array([c.split for c in self.clips], dtype=object)
        return self.subset(splits[self.clip_index] == split)


class FeatureCache:
    def __init__(self, directory: Path | None, settings: FeatureSettings, hop_seconds: float, batch: int = 32) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.settings = settings
        self.hop = round(hop_seconds * settings.sample_rate)
        self.extractor = FeatureExtractor(settings)
        self.batch = batch
        self.hits = 0
        self.misses = 0

    def clip_features(self, path: Path) -> np.ndarray:
        content = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        # CACHE_VERSION: entries written before the silence check could hold a silent clip's windows.
        key_text = f"{CACHE_VERSION}:{content}:{self.settings.fingerprint()}:{self.hop}"
        key = hashlib.sha256(key_text.encode()).hexdigest()[:32]
        cached = self.directory / key[:2] / f"{key}.npy"
        if cached.is_file():
            try:
                self.hits += 1
                return np.load(cached, allow_pickle=False)
            except (ValueError, OSError):
                pass  # a damaged cache entry is recomputed, never trusted
        self.misses += 1
        samples = load_audio(path, self.settings.sample_rate)
        if not np.any(samples):
            raise AudioReadError(path, "the clip is silent (every sample is zero)")
        # Training uses full windows; a clip shorter than one window is repeated (paper, III.C).
        windows = cut_windows(samples, self.settings.window_samples, self.hop, keep_partial=False).samples
        features = np.concatenate(
            [self.extractor(windows[i : i + self.batch]).numpy() for i in range(0, len(windows), self.batch)]
        )
        cached.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.save(buffer, features, allow_pickle=False)
        atomic_write(cached, buffer.getvalue())
        return features


def build_window_set(
    clips: list[Clip],
    class_names: list[str],
    cache: FeatureCache,
    on_clip: Callable[[int], None] | None = None,
) -> WindowSet:
    """Features of every clip. Clips that cannot be used (silent, undecodable) are left
    out and listed in ``left_out``; an error only when no clip at all is usable."""
    index = {name: i for i, name in enumerate(class_names)}
    features, labels, clip_index, problems = [], [], [], []
    for i, clip in enumerate(clips):
        try:
            f = cache.clip_features(clip.path)
        except AudioReadError as exc:
            problems.append(str(exc))
            continue
        features.append(f)
        labels.append(np.full(len(f), index[clip.label], dtype=np.int64))
        clip_index.append(np.full(len(f), i, dtype=np.int64))
        if on_clip:
            on_clip(i)
    if not features:
        raise DatasetError(problems or ["no clips given"])
    return WindowSet(np.concatenate(features), np.concatenate(labels), np.concatenate(clip_index), clips, problems)
