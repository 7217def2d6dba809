"""The band limit that keeps a recording rate from standing in for a species."""

from __future__ import annotations

from pathlib import Path

import pytest

from fieldmon.features import FeatureSettings
from fieldmon.train.bands import limit_bands
from fieldmon.train.dataset import Clip

FULL = FeatureSettings()


def clips(*rates: int) -> list[Clip]:
    return [Clip(Path(f"c{i}.wav"), "a", "train", 3.0, rate) for i, rate in enumerate(rates)]


def test_auto_takes_the_lowest_nyquist_frequency_among_the_clips():
    settings, note = limit_bands(clips(44100, 16000, 16000, 22050), FULL, "auto")
    assert settings.band_limit_hz == 8000.0 and settings.empty_bands == 11
    assert note.startswith("2 clip(s) were recorded at 16 kHz (e.g. c1.wav): the top 11 of 40 Mel bands, above 8 kHz")


@pytest.mark.parametrize("rates", [(44100, 48000), (96000,)])
def test_auto_leaves_full_band_clips_alone(rates):
    assert limit_bands(clips(*rates), FULL, "auto") == (FULL, None)


def test_none_and_a_number():
    assert limit_bands(clips(8000), FULL, "none") == (FULL, None)
    settings, note = limit_bands(clips(44100), FULL, 10000.0)
    assert settings.band_limit_hz == 10000.0 and note.startswith("as asked (--band-limit)")
    with pytest.raises(ValueError, match="between 0 and 22050 Hz"):
        limit_bands(clips(44100), FULL, 30000.0)


def test_a_base_models_limit_is_never_raised():
    base = FeatureSettings(band_limit_hz=8000.0)
    assert limit_bands(clips(44100), base, "auto") == (base, None)
    assert limit_bands(clips(44100), base, "none") == (base, None)
    settings, _ = limit_bands(clips(8000), base, "auto")
    assert settings.band_limit_hz == 4000.0
