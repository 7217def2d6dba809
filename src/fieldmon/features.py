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

On CPU the median filters run as an exact sliding-window median in numba,
vectorised across columns (fieldmon.median), and the magnitude, masks and
squaring as fused numba loops; on other devices the same steps run as torch
operations (unfold + median) so that everything stays on the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numba
import numpy as np
import torch

from fieldmon.median import running_median
from fieldmon.settings import settings_fingerprint, settings_from_dict, settings_to_dict

AMIN = 1e-10  # librosa.power_to_db's floor
CPU_CHUNK = 16


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

    def __post_init__(self) -> None:
        if self.hpss_kernel % 2 != 1:
            raise ValueError("hpss_kernel must be odd so that the median is one sample")
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

    def to_dict(self) -> dict:
        return settings_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FeatureSettings:
        return settings_from_dict(cls, data)

    def fingerprint(self) -> str:
        return settings_fingerprint(self)


class FeatureSettingsMismatch(ValueError):
    pass


def check_same_settings(expected: FeatureSettings, actual: FeatureSettings) -> None:
    if expected != actual:
        theirs = actual.to_dict()
        diffs = [f"{k}: model {v!r}, features {theirs[k]!r}" for k, v in expected.to_dict().items() if theirs[k] != v]
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


class FeatureExtractor:
    """Turns batches of windows ``[batch, window_samples]`` into ``[batch, 3, n_mels, n_frames]``.

    Holds the Hann window and Mel basis on ``device`` so a scan keeps them resident.
    ``median`` picks the median-filter backend: "auto" is numba on CPU and torch elsewhere.
    """

    def __init__(
        self,
        settings: FeatureSettings = FeatureSettings(),
        device: str | torch.device = "cpu",
        median: str = "auto",
    ) -> None:
        self.settings = settings
        self.device = torch.device(device)
        if median == "auto":
            median = "numba" if self.device.type == "cpu" else "torch"
        if median not in ("numba", "torch"):
            raise ValueError(f"median must be auto, numba or torch, not {median!r}")
        if median == "numba" and self.device.type != "cpu":
            raise ValueError("the numba median filter runs on the CPU only")
        self.median = median
        # The STFT runs in float64: in float32 its rounding noise is large relative to
        # bins 60-80 dB below the peak, which then differ from the reference by >1e-3 dB.
        self._window = torch.hann_window(settings.frame_length, periodic=True, dtype=torch.float64, device=self.device)

    @cached_property
    def mel_basis(self) -> torch.Tensor:
        s = self.settings
        basis = slaney_mel_filterbank(s.sample_rate, s.frame_length, s.n_mels, s.fmin, s.fmax)
        return torch.from_numpy(basis).to(self.device)

    def __call__(self, windows: np.ndarray | torch.Tensor) -> torch.Tensor:
        if self.device.type == "cpu" and len(windows) > CPU_CHUNK:
            # Each window's temporaries (float64 STFT, medians) take ~8 MB; chunking keeps
            # a large batch from holding hundreds of MB at once and its working set in
            # cache. Windows are independent.
            return torch.cat([self(windows[i : i + CPU_CHUNK]) for i in range(0, len(windows), CPU_CHUNK)])
        mel = torch.matmul(self.mel_basis, self.power_channels(windows))
        return _to_unit_db(mel, self.settings.top_db)

    def power_channels(self, windows: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Power spectrograms of the window and of its harmonic and percussive parts,
        ``[batch, 3, bins, frames]``."""
        s = self.settings
        stft = self._stft(windows)
        if self.median == "numba":
            # Fused loops: torch's complex abs and its chain of elementwise mask
            # operations cost as much as the STFT itself; these give the same bits.
            magnitude = _magnitude(stft.numpy(), s.n_frames)
            # running_median filters along axis 1 (SIMD across axis 2): across time
            # on the transposed magnitude [batch, frames, bins], across frequency on it as is.
            harmonic = running_median(magnitude.transpose(0, 2, 1), s.hpss_kernel).transpose(0, 2, 1)
            percussive = running_median(magnitude, s.hpss_kernel)
            return torch.from_numpy(_hpss_power(magnitude, harmonic, percussive, np.float32(s.hpss_power)))
        magnitude = stft.abs()[..., : s.n_frames].float().contiguous()
        harmonic = _torch_median_last_axis(magnitude, s.hpss_kernel)
        percussive = _torch_median_last_axis(magnitude.transpose(1, 2), s.hpss_kernel).transpose(1, 2)
        mask_harm, mask_perc = _softmasks(harmonic, percussive, s.hpss_power)
        return torch.stack([magnitude, magnitude * mask_harm, magnitude * mask_perc], dim=1) ** 2

    def _stft(self, windows: np.ndarray | torch.Tensor) -> torch.Tensor:
        s = self.settings
        x = torch.as_tensor(windows, dtype=torch.float32).to(self.device)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != s.window_samples:
            raise ValueError(
                f"expected windows of shape [batch, {s.window_samples}], got {tuple(x.shape)}"
            )
        # Non-finite samples (broken recorders, float WAVs) would turn a whole window
        # into NaN; they carry no sound, so they count as silence.
        x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        return torch.stft(
            x.double(),
            n_fft=s.frame_length,
            hop_length=s.hop_length,
            window=self._window,
            center=True,
            pad_mode="constant",
            return_complex=True,
        )


def compute_features(
    windows: np.ndarray | torch.Tensor, settings: FeatureSettings = FeatureSettings()
) -> torch.Tensor:
    """Features of a batch of windows on the CPU; see :class:`FeatureExtractor`."""
    return FeatureExtractor(settings)(windows)


def slaney_mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                          fmax: float | None = None) -> np.ndarray:
    """``librosa.filters.mel(sr=..., n_fft=..., n_mels=..., fmin=..., fmax=...)`` (Slaney
    scale and area normalisation), float32 ``[n_mels, 1 + n_fft // 2]``, step for step so
    that it is bit-equal (tests). Computed here because librosa.filters imports scipy.signal,
    which cost every scan about a second and 100 MB before its first window."""
    fmax = sample_rate / 2.0 if fmax is None else fmax
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate))
    rising, falling = -ramps[:-2] / fdiff[:-1, np.newaxis], ramps[2:] / fdiff[1:, np.newaxis]
    weights = np.maximum(0, np.minimum(rising, falling)).astype(np.float32)
    weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, np.newaxis]
    return weights


# Slaney's mel scale: linear below 1 kHz, logarithmic above (librosa.hz_to_mel, htk=False).
_F_SP, _MIN_LOG_HZ = 200.0 / 3, 1000.0
_MIN_LOG_MEL, _LOGSTEP = _MIN_LOG_HZ / _F_SP, np.log(6.4) / 27.0


def _hz_to_mel(hz: float) -> float:
    return hz / _F_SP if hz < _MIN_LOG_HZ else _MIN_LOG_MEL + np.log(hz / _MIN_LOG_HZ) / _LOGSTEP


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    return np.where(mels >= _MIN_LOG_MEL, _MIN_LOG_HZ * np.exp(_LOGSTEP * (mels - _MIN_LOG_MEL)), _F_SP * mels)


def _softmasks(harm: torch.Tensor, perc: torch.Tensor, power: float) -> tuple[torch.Tensor, torch.Tensor]:
    """librosa.util.softmask(harm, perc) and softmask(perc, harm) with split_zeros=True
    (margins of 1), sharing their common terms: the same arithmetic, done once."""
    z = torch.maximum(harm, perc)
    bad = z < torch.finfo(harm.dtype).tiny
    z = torch.where(bad, torch.ones_like(z), z)
    h = (harm / z) ** power
    p = (perc / z) ** power
    total = h + p
    half = torch.full_like(z, 0.5)
    return torch.where(bad, half, h / total), torch.where(bad, half, p / total)


@numba.njit(parallel=True, cache=True)
def _magnitude(stft: np.ndarray, n_frames: int) -> np.ndarray:
    """|stft| of the first ``n_frames`` frames, float32."""
    n_batch, n_bins, _ = stft.shape
    out = np.empty((n_batch, n_bins, n_frames), dtype=np.float32)
    for row in numba.prange(n_batch * n_bins):
        b = row // n_bins
        r = row % n_bins
        for t in range(n_frames):
            z = stft[b, r, t]
            out[b, r, t] = np.sqrt(z.real * z.real + z.imag * z.imag)
    return out


@numba.njit(parallel=True, cache=True)
def _hpss_power(magnitude: np.ndarray, harm: np.ndarray, perc: np.ndarray, power: np.float32) -> np.ndarray:
    """The arithmetic of :func:`_softmasks`, then the three power channels, in one pass."""
    n_batch, n_bins, n_frames = magnitude.shape
    out = np.empty((n_batch, 3, n_bins, n_frames), dtype=np.float32)
    tiny = np.finfo(np.float32).tiny
    for row in numba.prange(n_batch * n_bins):
        b = row // n_bins
        r = row % n_bins
        for t in range(n_frames):
            m = magnitude[b, r, t]
            h = harm[b, r, t]
            p = perc[b, r, t]
            z = max(h, p)
            if z < tiny:
                mask_harm = mask_perc = np.float32(0.5)
            else:
                h = h / z
                p = p / z
                if power == 2.0:  # pow() would widen to float64
                    h = h * h
                    p = p * p
                else:
                    h = h**power
                    p = p**power
                mask_harm = h / (h + p)
                mask_perc = p / (h + p)
            out[b, 0, r, t] = m * m
            out[b, 1, r, t] = (m * mask_harm) * (m * mask_harm)
            out[b, 2, r, t] = (m * mask_perc) * (m * mask_perc)
    return out


def _to_unit_db(power: torch.Tensor, top_db: float) -> torch.Tensor:
    db = 10.0 * torch.log10(torch.clamp(power, min=AMIN))
    peak = db.amax(dim=(-2, -1), keepdim=True)
    db = torch.maximum(db - peak, torch.tensor(-top_db, device=db.device))
    return (db + top_db) / top_db


def _reflect_index(n: int, k: int) -> np.ndarray:
    """Indices of a length-n axis padded by k//2 on each side in scipy.ndimage's
    'reflect' mode (d c b a | a b c d | d c b a), repeated for very short axes."""
    i = np.arange(-(k // 2), n + k // 2)
    period = 2 * n
    i = np.mod(i, period)
    return np.where(i >= n, period - 1 - i, i)


def _torch_median_last_axis(x: torch.Tensor, k: int, max_elements: int = 1 << 27) -> torch.Tensor:
    idx = torch.from_numpy(_reflect_index(x.shape[-1], k)).to(x.device)
    padded = x.index_select(-1, idx)
    # unfold multiplies memory by k; chunk the batch to keep it bounded.
    per_item = x[0].numel() * k if len(x) else 1
    chunk = max(1, max_elements // per_item)
    parts = [
        padded[i : i + chunk].unfold(-1, k, 1).median(dim=-1).values
        for i in range(0, len(x), chunk)
    ]
    return torch.cat(parts)
