"""Audio input: decoding any soundfile-readable file to mono float32 at the model's
rate, and cutting 2 s windows."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from fieldmon.features import repeat_to_length

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff"})


class AudioReadError(Exception):
    """A file that cannot be decoded; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


def is_audio_file(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_EXTENSIONS and not path.name.startswith(".")


def to_mono(samples: np.ndarray, channel: int | None = None) -> np.ndarray:
    """``[frames, channels]`` -> ``[frames]``: one channel, or the mean of all."""
    if channel is None:
        return samples.mean(axis=1, dtype=np.float32)
    if not 0 <= channel < samples.shape[1]:
        raise ValueError(f"channel {channel} requested but the file has {samples.shape[1]} channels")
    return np.ascontiguousarray(samples[:, channel], dtype=np.float32)


def load_audio(path: str | os.PathLike, sample_rate: int, channel: int | None = None) -> np.ndarray:
    """Whole file as mono float32 at ``sample_rate``. For clips; scans stream instead."""
    try:
        samples, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioReadError(path, f"cannot decode audio ({exc})") from exc
    except OSError as exc:
        raise AudioReadError(path, exc.strerror or str(exc)) from exc
    if samples.shape[0] == 0:
        raise AudioReadError(path, "the file holds no audio samples")
    try:
        mono = to_mono(samples, channel)
    except ValueError as exc:
        raise AudioReadError(path, str(exc)) from exc
    mono = np.nan_to_num(mono, nan=0.0, posinf=0.0, neginf=0.0)
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate, quality="HQ").astype(np.float32, copy=False)
    return mono


@dataclass(frozen=True)
class Windows:
    samples: np.ndarray  # [n, window_samples]
    starts: np.ndarray  # [n] start sample of each window
    partial: np.ndarray  # [n] bool: shorter than a window, repeated to fill it


def cut_windows(samples: np.ndarray, window: int, hop: int, keep_partial: bool = True) -> Windows:
    """Windows of ``window`` samples every ``hop`` samples.

    A window that runs past the end is repeated from its own start to full length
    (as the paper does for short clips) and flagged as partial. With
    ``keep_partial=False`` such a trailing window is dropped unless it is the
    only one, so a clip shorter than a window still yields one.
    """
    n = len(samples)
    if n == 0:
        return Windows(np.zeros((0, window), np.float32), np.zeros(0, np.int64), np.zeros(0, bool))
    starts = np.arange(0, n, hop, dtype=np.int64)
    if not keep_partial and n >= window:
        starts = starts[starts + window <= n]
    partial = starts + window > n
    out = np.empty((len(starts), window), dtype=np.float32)
    for i, start in enumerate(starts):
        out[i] = repeat_to_length(samples[start : start + window], window)
    return Windows(out, starts, partial)
