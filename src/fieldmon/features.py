"""HPSS-Mel features: the one implementation shared by training and scanning.

A 2 s window becomes three 40-band Mel spectrograms (original, harmonic,
percussive), each in dB relative to its own maximum and scaled to [0, 1].
The definition follows librosa (stft + decompose.hpss + melspectrogram +
power_to_db), which the tests use as the reference:

- Hann frames of ``frame_seconds`` every ``hop_seconds``, centred with zero
  padding as librosa.stft does; of the ``1 + window/hop`` frames that gives,
  the first ``n_frames`` are kept (201 -> 200 at the defaults).
- HPSS on the magnitude spectrogram: median filters of ``hpss_kernel`` bins
  across time (harmonic) and across frequency (percussive) with scipy's
  'reflect' edges, soft masks with ``hpss_power``.
- Mel filterbank (librosa.filters.mel, Slaney) on the power spectrogram of
  each component, then 10*log10 relative to the channel's maximum, floored
  at ``-top_db`` and mapped linearly to [0, 1].

This module computes them on the CPU with numpy and numba (:func:`hpss_mel`): the STFT
in float64 (numpy's FFT unless another is passed), the median filters as an exact
sliding-window median vectorised across columns (fieldmon.median), the magnitude, masks,
power channels and Mel sums as numba loops (fieldmon.hpss_kernels). It does not import
torch, so a scan's feature processes start in a fraction of a second.
``fieldmon.feature_extractor.FeatureExtractor`` gives the same features as torch tensors
on any device: on the CPU this code with torch's STFT, on a GPU torch operations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from fieldmon.settings import settings_fingerprint, settings_from_dict, settings_to_dict

AMIN = 1e-10  # librosa.power_to_db's floor
CPU_CHUNK = 16
# An STFT: windows [batch, samples] -> complex128 [batch, frames, bins] (any strides) of
# the first n_frames centred Hann frames.
Stft = Callable[[np.ndarray, "FeatureSettings"], np.ndarray]
STFT_PART = 2


@dataclass(frozen=True)
class FeatureSettings:
    sample_rate: int = 44100
    window_seconds: float = 2.0
    frame_seconds: float = 0.02
    hop_seconds: float = 0.01
    n_frames: int = 200
    n_mels: int = 40
    fmin: float = 0.0
    fmax: float | None = None  # None: Nyquist
    hpss_kernel: int = 31
    hpss_power: float = 2.0
    top_db: float = 80.0
    # Mel bands reaching above this frequency are left empty (floor value) in every window:
    # set by training when some clips were recorded at a lower rate than the model's, so
    # that the recorder's bandwidth cannot stand in for the species (fieldmon.train.bands).
    band_limit_hz: float | None = None

    def __post_init__(self) -> None:
        if self.hpss_kernel % 2 != 1:
            raise ValueError("hpss_kernel must be odd so that the median is one sample")
        if self.band_limit_hz is not None and not 0 < self.band_limit_hz <= self.sample_rate / 2:
            raise ValueError(f"band_limit_hz must lie between 0 and {self.sample_rate / 2:g} Hz, not {self.band_limit_hz}")
        available = 1 + self.window_samples // self.hop_length
        if self.n_frames > available:
            raise ValueError(f"n_frames={self.n_frames} but a window only has {available} frames")

    @property
    def window_samples(self) -> int:
        return round(self.window_seconds * self.sample_rate)

    @property
    def frame_length(self) -> int:
        return round(self.frame_seconds * self.sample_rate)

    @property
    def hop_length(self) -> int:
        return round(self.hop_seconds * self.sample_rate)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (3, self.n_mels, self.n_frames)

    @property
    def band_upper_edges_hz(self) -> np.ndarray:
        """Where each Mel band's triangle ends."""
        return _mel_edges_hz(self.sample_rate, self.n_mels, self.fmin, self.fmax)[2:]

    @property
    def empty_bands(self) -> int:
        """How many of the top Mel bands ``band_limit_hz`` leaves empty."""
        if self.band_limit_hz is None:
            return 0
        return int(np.count_nonzero(self.band_upper_edges_hz > self.band_limit_hz * (1 + 1e-9)))

    def to_dict(self) -> dict:
        out = settings_to_dict(self)
        if out["band_limit_hz"] is None:  # so that bundles and caches from before it keep their keys
            del out["band_limit_hz"]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> FeatureSettings:
        return settings_from_dict(cls, data)

    def fingerprint(self) -> str:
        return settings_fingerprint(self.to_dict())


class FeatureSettingsMismatch(ValueError):
    pass


def check_same_settings(expected: FeatureSettings, actual: FeatureSettings) -> None:
    if expected != actual:
        theirs = actual.to_dict()
        ours = expected.to_dict()
        diffs = [f"{k}: model {ours.get(k)!r}, features {theirs.get(k)!r}" for k in sorted(set(ours) | set(theirs))
                 if theirs.get(k) != ours.get(k)]
        raise FeatureSettingsMismatch(
            "features were computed with other settings than the model expects ("
            + "; ".join(diffs)
            + ")"
        )


def repeat_to_length(samples: np.ndarray, length: int) -> np.ndarray:
    """Repeat a clip from its start until it is ``length`` samples long (paper, III.C)."""
    if len(samples) == 0:
        raise ValueError("cannot repeat an empty clip")
    if len(samples) >= length:
        return samples[:length]
    return np.tile(samples, -(-length // len(samples)))[:length]


def hpss_mel(windows: np.ndarray, settings: FeatureSettings = FeatureSettings(), stft: Stft | None = None) -> np.ndarray:
    """Features of a batch of windows ``[batch, window_samples]`` on the CPU, float32
    ``[batch, 3, n_mels, n_frames]``. ``stft``: another implementation of the STFT
    (``FeatureExtractor`` passes torch's, which runs on torch's threads beside the
    network); by default numpy's."""
    windows = _as_windows(windows, settings)
    # Each window's temporaries (float64 STFT, medians) take ~8 MB; chunks keep a large
    # batch from holding hundreds of MB at once and its working set in cache.
    parts = [_hpss_mel_chunk(windows[i : i + CPU_CHUNK], settings, stft or stft_by_frame)
             for i in range(0, len(windows), CPU_CHUNK)]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def hpss_power_channels(windows: np.ndarray, settings: FeatureSettings, stft: Stft | None = None) -> np.ndarray:
    """Power spectrograms of the window and of its harmonic and percussive parts,
    float32 ``[batch, 3, bins, frames]`` (a view of a ``[batch, 3, frames, bins]`` array)."""
    return _power_channels_by_frame(_as_windows(windows, settings), settings, stft or stft_by_frame).transpose(0, 1, 3, 2)


def _power_channels_by_frame(windows: np.ndarray, settings: FeatureSettings, stft: Stft) -> np.ndarray:
    from fieldmon.hpss_kernels import hpss_power

    return hpss_power(*_hpss_parts(windows, settings, stft), np.float32(settings.hpss_power))


def _hpss_parts(windows: np.ndarray, settings: FeatureSettings, stft: Stft) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Magnitude, harmonic and percussive medians, each ``[batch, frames, bins]``."""
    from fieldmon.hpss_kernels import magnitude_of
    from fieldmon.median import running_median

    magnitude = magnitude_of(stft(windows, settings))
    # running_median filters along axis 1 (SIMD across axis 2): across time on the
    # magnitude as is, across frequency on its transpose.
    harmonic = running_median(magnitude, settings.hpss_kernel)
    percussive = np.ascontiguousarray(running_median(magnitude.transpose(0, 2, 1), settings.hpss_kernel)
                                      .transpose(0, 2, 1))
    return magnitude, harmonic, percussive


@lru_cache(maxsize=8)
def mel_basis(settings: FeatureSettings) -> np.ndarray:
    """The Mel filterbank of ``settings``, shared: do not modify it. The bands above
    ``band_limit_hz`` are all zero, so they stay at the floor and never set a window's
    maximum."""
    weights = slaney_mel_filterbank(settings.sample_rate, settings.frame_length, settings.n_mels, settings.fmin,
                                    settings.fmax)
    if settings.empty_bands:
        weights[settings.n_mels - settings.empty_bands:] = 0.0
    return weights


def unit_db(power: np.ndarray, top_db: float) -> np.ndarray:
    """10*log10 relative to each channel's maximum, floored at -top_db, mapped to [0, 1]."""
    db = 10.0 * np.log10(np.maximum(power, np.float32(AMIN)))
    db -= db.max(axis=(-2, -1), keepdims=True)
    np.maximum(db, np.float32(-top_db), out=db)
    return (db + np.float32(top_db)) / np.float32(top_db)


def _as_windows(windows: np.ndarray, settings: FeatureSettings) -> np.ndarray:
    windows = np.asarray(windows, dtype=np.float32)
    if windows.ndim == 1:
        windows = windows[None]
    if windows.ndim != 2 or windows.shape[1] != settings.window_samples:
        raise ValueError(f"expected windows of shape [batch, {settings.window_samples}], got {windows.shape}")
    return windows


def _hpss_mel_chunk(windows: np.ndarray, settings: FeatureSettings, stft: Stft) -> np.ndarray:
    from fieldmon.hpss_kernels import mel_sums

    features = unit_db(mel_sums(_power_channels_by_frame(windows, settings, stft), *_mel_bands(settings)),
                       settings.top_db)
    features[:, :, settings.n_mels - settings.empty_bands:] = 0.0  # at the floor, whatever a window's loudest band
    return features


@lru_cache(maxsize=8)
def _mel_bands(settings: FeatureSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Mel filterbank and, for each band, the range of bins where it is not zero."""
    basis = mel_basis(settings)
    nonzero = basis > 0
    first = np.where(nonzero.any(axis=1), nonzero.argmax(axis=1), 0)
    stop = np.where(nonzero.any(axis=1), basis.shape[1] - nonzero[:, ::-1].argmax(axis=1), 0)
    return basis, first.astype(np.int64), stop.astype(np.int64)


@lru_cache(maxsize=8)
def _hann(length: int) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(length) / length)  # periodic, as librosa's


def stft_by_frame(windows: np.ndarray, settings: FeatureSettings) -> np.ndarray:
    """Complex STFT ``[batch, frames, bins]`` of the first ``n_frames`` centred frames, with
    numpy's FFT. In float64: in float32 its rounding noise is large relative to bins 60-80 dB
    below the peak, which then differ from the reference by >1e-3 dB. In parts of a few
    windows, so that each part's float64 frames (1.4 MB a window) stay in cache."""
    return np.concatenate([_stft_part(windows[i : i + STFT_PART], settings)
                           for i in range(0, len(windows), STFT_PART)])


def _stft_part(windows: np.ndarray, settings: FeatureSettings) -> np.ndarray:
    n_fft, hop, n = settings.frame_length, settings.hop_length, windows.shape[1]
    x = np.zeros((len(windows), n + 2 * (n_fft // 2)))
    x[:, n_fft // 2 : n_fft // 2 + n] = windows
    # Non-finite samples (broken recorders, float WAVs) would turn a whole window into
    # NaN; they carry no sound, so they count as silence.
    np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft, axis=1)[:, ::hop][:, : settings.n_frames]
    return np.fft.rfft(frames * _hann(n_fft), axis=-1)


def slaney_mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                          fmax: float | None = None) -> np.ndarray:
    """``librosa.filters.mel(sr=..., n_fft=..., n_mels=..., fmin=..., fmax=...)`` (Slaney
    scale and area normalisation), float32 ``[n_mels, 1 + n_fft // 2]``, step for step so
    that it is bit-equal (tests). Computed here because librosa.filters imports scipy.signal,
    which cost every scan about a second and 100 MB before its first window."""
    mel_f = _mel_edges_hz(sample_rate, n_mels, fmin, fmax)
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate))
    rising, falling = -ramps[:-2] / fdiff[:-1, np.newaxis], ramps[2:] / fdiff[1:, np.newaxis]
    weights = np.maximum(0, np.minimum(rising, falling)).astype(np.float32)
    weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, np.newaxis]
    return weights


def _mel_edges_hz(sample_rate: int, n_mels: int, fmin: float, fmax: float | None) -> np.ndarray:
    """The n_mels + 2 frequencies where the Mel bands' triangles start, peak and end."""
    fmax = sample_rate / 2.0 if fmax is None else fmax
    return _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))


# Slaney's mel scale: linear below 1 kHz, logarithmic above (librosa.hz_to_mel, htk=False).
_F_SP, _MIN_LOG_HZ = 200.0 / 3, 1000.0
_MIN_LOG_MEL, _LOGSTEP = _MIN_LOG_HZ / _F_SP, np.log(6.4) / 27.0


def _hz_to_mel(hz: float) -> float:
    return hz / _F_SP if hz < _MIN_LOG_HZ else _MIN_LOG_MEL + np.log(hz / _MIN_LOG_HZ) / _LOGSTEP


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    return np.where(mels >= _MIN_LOG_MEL, _MIN_LOG_HZ * np.exp(_LOGSTEP * (mels - _MIN_LOG_MEL)), _F_SP * mels)
