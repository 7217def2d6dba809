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
from fieldmon.wav_header import open_unfinished, read_wav_layout, unfinished_data

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff"})


class AudioReadError(Exception):
    """A file that cannot be decoded; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


def is_audio_file(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_EXTENSIONS and not path.name.startswith(".")


def open_sound(path: str | os.PathLike) -> sf.SoundFile:
    """Open an audio file, turning libsndfile's terse failures into messages a person understands."""
    if not os.path.exists(path):
        raise AudioReadError(path, "file not found")
    if not os.access(path, os.R_OK):
        raise AudioReadError(path, "permission denied (the file is not readable by this user)")
    if os.path.getsize(path) == 0:
        raise AudioReadError(path, "the file is empty (0 bytes)")
    try:
        layout = read_wav_layout(path)
        if unfinished_data(layout):
            return open_unfinished(path, layout)
        # bytes, so that names that are not valid UTF-8 still open
        return sf.SoundFile(os.fsencode(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioReadError(path, f"not a readable audio file ({exc})") from exc
    except OSError as exc:
        raise AudioReadError(path, exc.strerror or str(exc)) from exc


def to_mono(samples: np.ndarray, channel: int | None = None) -> np.ndarray:
    """``[frames, channels]`` -> ``[frames]``: one channel, or the mean of all."""
    if channel is None:
        return samples.mean(axis=1, dtype=np.float32)
    if not 0 <= channel < samples.shape[1]:
        raise ValueError(f"channel {channel} requested but the file has {samples.shape[1]} channels")
    return np.ascontiguousarray(samples[:, channel], dtype=np.float32)


def load_audio(path: str | os.PathLike, sample_rate: int, channel: int | None = None) -> np.ndarray:
    """Whole file as mono float32 at ``sample_rate``. For clips; scans stream instead."""
    with open_sound(path) as sound:
        rate = sound.samplerate
        samples = sound.read(dtype="float32", always_2d=True)
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


@dataclass(frozen=True)
class WindowBatch:
    """Consecutive windows of one file, as the stream produces them."""

    samples: np.ndarray  # [n, window]
    starts: np.ndarray  # [n] start of each window in samples at the target rate
    partial: np.ndarray  # [n] bool


@dataclass(frozen=True)
class StreamEnd:
    """What :func:`stream_windows` saw of a file once it reached the end."""

    samples: int  # at the target rate
    read: int  # at the file's rate
    nonfinite: int  # of those read, how many were NaN or infinite (in any channel)
    heard: bool  # whether any finite sample of the downmix is non-zero; False for digital silence
    silent: int  # of those read, how many lie in stretches of SILENT_STRETCH_SECONDS or more of them


# Exact zeros (or non-numbers read as zero) this long are no recording: a microphone that
# cut out, a muted input. Real audio, even the quietest 16-bit hiss, never holds them.
SILENT_STRETCH_SECONDS = 1.0


class SilenceCounter:
    """Counts the samples in stretches of at least ``min_samples`` zeros, across the blocks
    of a stream, and whether any sample was not zero (``heard``)."""

    def __init__(self, min_samples: int) -> None:
        self.min_samples = max(1, min_samples)
        self.silent = 0
        self.heard = False
        self._seen = 0
        self._open_since: int | None = None  # where a stretch still running at the last block's end began

    def add(self, block: np.ndarray) -> None:
        if not len(block):
            return
        zero = np.concatenate(([False], block == 0, [False]))
        edges = np.flatnonzero(zero[1:] != zero[:-1])
        self.heard = self.heard or not (len(edges) == 2 and edges[0] == 0 and edges[1] == len(block))
        starts, ends = edges[0::2] + self._seen, edges[1::2] + self._seen
        if self._open_since is not None:
            if len(starts) and starts[0] == self._seen:
                starts[0] = self._open_since
            else:
                self._close(self._open_since, self._seen)
            self._open_since = None
        if len(ends) and ends[-1] == self._seen + len(block):
            self._open_since = int(starts[-1])
            starts, ends = starts[:-1], ends[:-1]
        lengths = ends - starts
        self.silent += int(lengths[lengths >= self.min_samples].sum())
        self._seen += len(block)

    def finish(self) -> int:
        if self._open_since is not None:
            self._close(self._open_since, self._seen)
            self._open_since = None
        return self.silent

    def _close(self, start: int, end: int) -> None:
        if end - start >= self.min_samples:
            self.silent += end - start


def stream_windows(
    path: str | os.PathLike,
    sample_rate: int,
    window: int,
    hop: int,
    channel: int | None = None,
    block_seconds: float = 30.0,
    batch: int = 64,
):
    """Decode ``path`` block by block, downmix, resample with a streaming soxr
    resampler, and yield :class:`WindowBatch` es. Memory is bounded by the block
    size, whatever the file's length. Returns (as the generator's value) a
    :class:`StreamEnd`. Non-finite samples are read as silence.
    """
    with open_sound(path) as sound:
        if channel is not None and not 0 <= channel < sound.channels:
            raise AudioReadError(path, f"channel {channel} requested but the file has {sound.channels} channels")
        resampler = None
        if sound.samplerate != sample_rate:
            resampler = soxr.ResampleStream(sound.samplerate, sample_rate, 1, dtype="float32", quality="HQ")
        buffer = np.zeros(0, np.float32)
        offset = 0  # target-rate index of buffer[0]
        next_start = 0
        total = read = nonfinite = 0
        silence = SilenceCounter(round(SILENT_STRETCH_SECONDS * sound.samplerate))
        block = max(1, int(block_seconds * sound.samplerate))
        while True:
            try:
                data = sound.read(block, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as exc:
                raise AudioReadError(path, f"decoding failed after {total / sample_rate:.1f} s ({exc})") from exc
            last = len(data) < block
            mono = to_mono(data, channel)
            read += len(mono)
            finite = np.isfinite(mono)
            if not finite.all():
                nonfinite += int(len(mono) - finite.sum())
                mono = np.where(finite, mono, np.float32(0))
            silence.add(mono)
            if resampler is not None:
                mono = resampler.resample_chunk(mono, last=last)
            total += len(mono)
            buffer = np.concatenate([buffer, mono]) if len(buffer) else mono
            starts = []
            while next_start + window <= offset + len(buffer):
                starts.append(next_start)
                next_start += hop
            if last:
                while next_start < total:
                    starts.append(next_start)
                    next_start += hop
            for i in range(0, len(starts), batch):
                chunk = starts[i : i + batch]
                samples = np.empty((len(chunk), window), np.float32)
                for j, start in enumerate(chunk):
                    samples[j] = repeat_to_length(buffer[start - offset : start - offset + window], window)
                starts_arr = np.asarray(chunk, dtype=np.int64)
                yield WindowBatch(samples, starts_arr, starts_arr + window > total)
            drop = min(next_start, offset + len(buffer)) - offset
            if drop > 0:
                buffer = buffer[drop:]
                offset += drop
            if last:
                return StreamEnd(total, read, nonfinite, silence.heard, silence.finish())
