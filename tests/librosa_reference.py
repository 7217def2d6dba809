"""The feature definition written with librosa's own functions: the reference
that fieldmon.features must reproduce."""

from __future__ import annotations

import librosa
import numpy as np

from fieldmon.features import FeatureSettings


def reference_features_db(window: np.ndarray, s: FeatureSettings = FeatureSettings()) -> np.ndarray:
    """``[3, n_mels, n_frames]`` in dB relative to each channel's maximum, computed in float64."""
    y = window.astype(np.float64)
    spec = np.abs(
        librosa.stft(y, n_fft=s.frame_length, hop_length=s.hop_length, window="hann", center=True, pad_mode="constant")
    )[:, : s.n_frames]
    harmonic, percussive = librosa.decompose.hpss(spec, kernel_size=s.hpss_kernel, power=s.hpss_power)
    channels = []
    for component in (spec, harmonic, percussive):
        mel = librosa.feature.melspectrogram(
            S=component**2, sr=s.sample_rate, n_fft=s.frame_length, n_mels=s.n_mels, fmin=s.fmin, fmax=s.fmax
        )
        channels.append(librosa.power_to_db(mel, ref=np.max, top_db=s.top_db))
    return np.stack(channels)
