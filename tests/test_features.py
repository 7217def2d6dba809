from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import click_train, harmonic_tone, noise, require_shared, tone, INSECTSET
from librosa_reference import reference_features_db

from fieldmon.feature_extractor import FeatureExtractor, compute_features
from fieldmon.features import (
    FeatureSettings,
    FeatureSettingsMismatch,
    check_same_settings,
    repeat_to_length,
    slaney_mel_filterbank,
)
from fieldmon.median import LANES, running_median

SETTINGS = FeatureSettings()
TOLERANCE_DB = 1e-3


def to_db(features: torch.Tensor) -> np.ndarray:
    return features.numpy().astype(np.float64) * SETTINGS.top_db - SETTINGS.top_db


def real_windows(n_files: int = 4) -> np.ndarray:
    clips = sorted(require_shared(INSECTSET).glob("clips/*/*.flac"))
    picked = clips[:: max(1, len(clips) // n_files)][:n_files]
    windows = []
    for path in picked:
        y, sr = sf.read(path, dtype="float32")
        assert sr == SETTINGS.sample_rate
        # a window from the middle of the clip, where the insect is usually calling
        start = max(0, len(y) // 2 - SETTINGS.window_samples // 2)
        windows.append(repeat_to_length(y[start:], SETTINGS.window_samples))
    return np.stack(windows)


@pytest.mark.parametrize("median", ["numba", "torch"])
def test_matches_librosa_on_real_clips(median):
    windows = real_windows()
    got = to_db(FeatureExtractor(SETTINGS, median=median)(windows))
    for window, features in zip(windows, got):
        assert np.abs(features - reference_features_db(window)).max() <= TOLERANCE_DB


@pytest.mark.parametrize(
    "signal",
    [harmonic_tone(440, 2.0), click_train(8, 2.0), harmonic_tone(2000, 2.0) + click_train(5, 2.0) + noise(2.0)],
    ids=["tone", "clicks", "mixture"],
)
def test_matches_librosa_on_synthetic_signals(signal):
    got = to_db(compute_features(signal[None]))[0]
    assert np.abs(got - reference_features_db(signal)).max() <= TOLERANCE_DB


@pytest.mark.parametrize("hpss_power", [2.0, 1.0])
def test_numba_and_torch_backends_give_the_same_power_channels(hpss_power):
    # The CPU path (numpy's FFT, then magnitude, masks and squaring fused in numba) and
    # the device path (torch.stft and torch operations) agree up to the FFTs' rounding,
    # which only shows in bins far below the 80 dB floor of the features. A silent window
    # takes the masks' zero branch (0.5 each).
    settings = FeatureSettings(hpss_power=hpss_power)
    batch = np.stack([harmonic_tone(700, 2.0) + click_train(6, 2.0), np.zeros(SETTINGS.window_samples, np.float32)])
    fused = FeatureExtractor(settings, median="numba").power_channels(batch)
    reference = FeatureExtractor(settings, median="torch").power_channels(batch)
    assert fused.shape == reference.shape == (2, 3, SETTINGS.frame_length // 2 + 1, SETTINGS.n_frames)
    torch.testing.assert_close(fused, reference, rtol=1e-6, atol=1e-12 * float(reference.max()))
    assert fused[1].abs().max() == 0


@pytest.mark.parametrize("k", [1, 3, 31])
@pytest.mark.parametrize(
    "shape",
    # short axes (reflected more than once), fewer columns than LANES, a partial last block
    [(2, 5, 3), (1, 1, 1), (3, 17, LANES + 5), (2, 200, 2 * LANES), (1, 442, 200)],
)
def test_running_median_is_scipys_median_filter(shape, k):
    # librosa.decompose.hpss calls scipy.ndimage.median_filter; the median only selects
    # values, so the result must be equal, ties (few distinct values) included.
    from scipy.ndimage import median_filter

    rng = np.random.default_rng(k)
    for x in (rng.integers(0, 4, shape).astype(np.float32), rng.random(shape, dtype=np.float32)):
        expected = median_filter(x, size=(1, k, 1), mode="reflect")
        assert np.array_equal(running_median(x, k), expected)
        # a transposed (non-contiguous) view, as the features pass for the time axis
        transposed = np.ascontiguousarray(x.transpose(0, 2, 1)).transpose(0, 2, 1)
        assert np.array_equal(running_median(transposed, k), expected)


def test_numba_features_of_real_clips_stay_close_to_librosa_everywhere():
    # The bound above per window, here also for every channel of a batch that spans
    # several CPU chunks and a partial one, so that no path escapes it.
    windows = np.concatenate([real_windows(8)] * 3)[:20]
    got = to_db(FeatureExtractor(SETTINGS, median="numba")(windows))
    reference = np.stack([reference_features_db(w) for w in windows[:8]])
    for i, features in enumerate(got):
        assert np.abs(features - reference[i % 8]).max() <= TOLERANCE_DB


def component_energy(signal: np.ndarray) -> tuple[float, float]:
    _, harmonic, percussive = FeatureExtractor().power_channels(signal[None])[0]
    return float(harmonic.sum()), float(percussive.sum())


@pytest.mark.parametrize("sr, n_fft, n_mels, fmin, fmax", [
    (44100, 882, 40, 0.0, None), (22050, 2048, 128, 0.0, None), (48000, 960, 64, 50.0, 16000.0),
    (16000, 400, 40, 300.0, None),
])
def test_mel_filterbank_is_librosas_bit_for_bit(sr, n_fft, n_mels, fmin, fmax):
    import librosa

    expected = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    np.testing.assert_array_equal(slaney_mel_filterbank(sr, n_fft, n_mels, fmin, fmax), expected)


def test_harmonic_tone_lands_in_harmonic_channel():
    harmonic, percussive = component_energy(harmonic_tone(440, 2.0))
    assert harmonic > 100 * percussive


def test_click_train_lands_in_percussive_channel():
    harmonic, percussive = component_energy(click_train(8, 2.0))
    assert percussive > 10 * harmonic


def test_shape_range_and_batch_independence():
    batch = np.stack([harmonic_tone(300, 2.0), noise(2.0), click_train(4, 2.0)])
    features = compute_features(batch)
    assert features.dtype == torch.float32
    assert features.shape == (3, *SETTINGS.shape) == (3, 3, 40, 200)
    assert features.min() >= 0 and features.max() <= 1
    # each channel's peak maps to 1 (0 dB relative to its own maximum)
    assert torch.allclose(features.amax(dim=(2, 3)), torch.ones(3, 3))
    alone = compute_features(batch[1:2])
    assert torch.equal(alone[0], features[1])


def test_non_finite_samples_never_reach_the_features():
    y = noise(2.0)
    y[100:200] = np.nan
    y[5000] = np.inf
    features = compute_features(y[None])
    assert torch.isfinite(features).all()


def test_rejects_wrong_window_length():
    with pytest.raises(ValueError, match="expected windows of shape"):
        compute_features(np.zeros((1, 1000), np.float32))


def test_repeat_to_length_repeats_from_the_start():
    clip = np.arange(3, dtype=np.float32)
    assert repeat_to_length(clip, 7).tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert repeat_to_length(np.arange(10.0), 4).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        repeat_to_length(np.zeros(0), 4)


def test_settings_round_trip_and_mismatch():
    other = FeatureSettings(n_mels=64)
    assert FeatureSettings.from_dict(SETTINGS.to_dict()) == SETTINGS
    assert SETTINGS.fingerprint() != other.fingerprint()
    with pytest.raises(FeatureSettingsMismatch, match="n_mels"):
        check_same_settings(SETTINGS, other)
    with pytest.raises(ValueError, match="unknown"):
        FeatureSettings.from_dict({**SETTINGS.to_dict(), "colour": "blue"})
    with pytest.raises(ValueError, match="odd"):
        FeatureSettings(hpss_kernel=30)


def test_other_sample_rate_keeps_200_frames():
    s = FeatureSettings(sample_rate=22050)
    features = FeatureExtractor(s)(noise(2.0, sr=22050)[None])
    assert features.shape == (1, 3, 40, 200)


def test_band_limit_leaves_the_top_bands_empty_on_both_backends():
    limited = FeatureSettings(band_limit_hz=8000.0)
    # bands whose triangle ends above 8 kHz: those from 8063 Hz up
    edges = limited.band_upper_edges_hz
    assert limited.empty_bands == 11 and edges[-12] < 8000 < edges[-11]
    quiet = noise(2.0, seed=3, amplitude=0.001)
    tones = np.stack([tone(6000.0, 2.0) + quiet, tone(12000.0, 2.0) + quiet])  # below and above the limit
    for median in ("numba", "torch"):
        features = FeatureExtractor(limited, median=median)(tones).numpy()
        full = FeatureExtractor(SETTINGS, median=median)(tones).numpy()
        assert np.all(features[:, :, -11:] == 0.0)  # at the floor, in every channel
        # the 6 kHz tone keeps its loudest band, and it stays each window's maximum
        assert features[0].max() == 1.0 and np.argmax(features[0, 0].mean(1)) == np.argmax(full[0, 0].mean(1))
        # a window whose only sound lies above the limit holds nothing louder than its noise floor there
        assert features[1, :, -11:].max() == 0.0 and full[1, :, -11:].max() == 1.0
    # the two backends agree on the band-limited features too
    cpu = FeatureExtractor(limited, median="numba")(tones)
    gpu_path = FeatureExtractor(limited, median="torch")(tones)
    assert np.abs(to_db(cpu) - to_db(gpu_path)).max() < 1e-2


def test_band_limit_is_persisted_only_when_set_so_older_keys_stay():
    limited = FeatureSettings(band_limit_hz=8000.0)
    assert "band_limit_hz" not in SETTINGS.to_dict()  # earlier bundles and feature caches keep their keys
    assert FeatureSettings.from_dict(limited.to_dict()) == limited
    assert limited.fingerprint() != SETTINGS.fingerprint()
    with pytest.raises(FeatureSettingsMismatch, match="band_limit_hz: model 8000.0, features None"):
        check_same_settings(limited, SETTINGS)
    with pytest.raises(ValueError, match="band_limit_hz must lie between 0 and 22050"):
        FeatureSettings(band_limit_hz=30000.0)
