"""The band every clip has: Mel bands above the lowest Nyquist frequency among the
training clips are left empty, in training and in every scan with the model.

Why: clips of one species recorded at 16 kHz have nothing above 8 kHz once resampled to
the model's 44.1 kHz, while the other species' clips do. A network learns that shortcut
before anything about the animals, and then names that species for every band-limited
recording. With the bands that some clips lack left empty in every window
(``FeatureSettings.band_limit_hz``, applied by the Mel filterbank, so also before each
window's normalisation), the recording rate cannot stand in for a species, and scans of
full-band recordings show the model only the band it learned from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from fieldmon.features import FeatureSettings
from fieldmon.train.dataset import Clip

BAND_LIMIT_CHOICES = ("auto", "none")


def limit_bands(clips: Sequence[Clip], settings: FeatureSettings, asked: str | float) -> tuple[FeatureSettings, str | None]:
    """``settings`` with the band limit ``asked`` ("auto": the lowest Nyquist frequency
    among ``clips``; "none"; or a frequency in Hz) and a line for the user saying what it
    leaves out. A limit already in ``settings`` (a base model's) is never raised."""
    nyquist = settings.sample_rate / 2
    if asked == "none":
        return settings, None
    if asked == "auto":
        lowest = min(clips, key=lambda c: c.sample_rate or settings.sample_rate)
        limit = (lowest.sample_rate or settings.sample_rate) / 2
        why = (f"{sum(c.sample_rate == lowest.sample_rate for c in clips)} clip(s) were recorded at "
               f"{lowest.sample_rate / 1000:g} kHz (e.g. {lowest.path})")
    else:
        limit = float(asked)
        if not 0 < limit <= nyquist:
            raise ValueError(f"the band limit must lie between 0 and {nyquist:g} Hz, not {asked}")
        why = "as asked (--band-limit)"
    if settings.band_limit_hz is not None:
        limit = min(limit, settings.band_limit_hz)
    if limit >= nyquist or limit == settings.band_limit_hz:
        return settings, None
    limited = replace(settings, band_limit_hz=limit)
    return limited, (f"{why}: the top {limited.empty_bands} of {settings.n_mels} Mel bands, above "
                     f"{limit / 1000:g} kHz, are left empty in every window, in training and in scans, so that "
                     "the recording rate cannot stand in for a species (--band-limit none keeps them)")
