"""Augmentation of training windows, on the features (cheap: no audio is decoded again).

Features are dB relative to each channel's maximum, floored at -top_db and scaled to
[0, 1] (fieldmon.features), so changes of recording level are already gone. What
differs between recordings of one species is where the song sits in the window,
the background and its level relative to the song, the microphone's frequency
response, and what else is heard; the augmentations imitate those:

- ``roll``: circular shift along time by a random number of frames (where the
  song sits in the window).
- ``specaugment``: two time masks of up to 24 frames and two Mel masks of up to 4
  bands set to the floor (Park et al. 2019), so no single part of a window decides.
- ``noise-floor``: for half the windows, everything below a random level (up to
  half the dB range below the peak) is raised to it: a louder background, i.e. a
  lower signal-to-noise ratio, as from a more distant animal.
- ``tilt``: a random spectral slope of up to +-10 % of the dB range across the Mel
  axis, re-referenced to the peak (another microphone or distance).
- ``stretch``: time stretched or compressed by up to 15 % (log-uniform), read
  circularly like ``roll``: insects and frogs sing faster when warmer, so the pulse
  and chirp rates of one species vary between recordings. Not in the default set.
- ``mix``: another window of the mini-batch added underneath, 8 to 20 dB quieter in
  power, for half the windows (a species is not learnt from its recordings'
  background). Not in the default set.
- ``lowpass``: for half the windows, the Mel bands above a common recorder's Nyquist
  frequency (8, 11.025, 12 or 16 kHz: recordings at 16, 22.05, 24 or 32 kHz) are
  emptied and the window re-referenced to its loudest remaining band, as a recording
  at that rate looks once resampled to the model's rate. Not in the default set.
- ``mel-shift``: the whole window moved along the Mel axis by up to one band
  (about 11 % in frequency above 1 kHz), a fraction of a band interpolated: the
  carrier frequency of one species varies with body size and temperature. The top
  bands that are empty in every window (above a band limit) stay empty. Not in the default set.
- ``filter``: a random smooth frequency response (FilterAugment, linear type; Nam et
  al. 2022): gains of up to +-6 dB at 3 to 6 random points along the Mel axis (the
  two ends among them), interpolated linearly between them, then re-referenced to
  the peak. Another recorder, microphone or habitat colours the spectrum in more
  than a straight slope (``tilt``). Not in the default set.

Each draw comes from a generator seeded by the step, so a resumed run augments
exactly as an uninterrupted one.
"""

from __future__ import annotations

import math
from functools import partial

import torch

# New augmentations go at the end: the order is the order of the random draws, so an
# older run with the same names augments (and resumes) exactly as before.
AUGMENTATIONS = ("roll", "specaugment", "noise-floor", "tilt", "stretch", "mix", "lowpass", "mel-shift",
                 "filter")
DEFAULT_AUGMENTATIONS = ("roll", "specaugment", "noise-floor", "tilt")


def augment(windows: torch.Tensor, names: tuple[str, ...], generator: torch.Generator,
            band_tops_hz: torch.Tensor | None = None) -> torch.Tensor:
    """``windows`` [B, channels, mels, frames] in [0, 1] -> augmented copies.
    ``band_tops_hz``: where each Mel band ends (``FeatureSettings.band_upper_edges_hz``),
    which ``lowpass`` needs."""
    unknown = set(names) - set(AUGMENTATIONS)
    if unknown:
        raise ValueError(f"unknown augmentation {sorted(unknown)[0]!r}; one of {', '.join(AUGMENTATIONS)}")
    if "lowpass" in names and band_tops_hz is None:
        raise ValueError("the lowpass augmentation needs the Mel bands' upper edges (band_tops_hz)")
    functions = {**_FUNCTIONS, "lowpass": partial(_lowpass, band_tops_hz=band_tops_hz)}
    x = windows
    for name in AUGMENTATIONS:  # a fixed order, whatever order they were given in
        if name in names:
            x = functions[name](x, generator)
    return x


def _roll(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    b, c, m, t = x.shape
    shifts = torch.randint(0, t, (b,), generator=g)
    index = (torch.arange(t)[None, :] + shifts[:, None]) % t
    return torch.gather(x, 3, index[:, None, None, :].expand(b, c, m, t).to(x.device))


def _band_mask(b: int, length: int, max_width: int, g: torch.Generator) -> torch.Tensor:
    width = torch.randint(0, max_width + 1, (b,), generator=g)
    start = (torch.rand(b, generator=g) * (length - width + 1)).long()
    positions = torch.arange(length)[None, :]
    return (positions >= start[:, None]) & (positions < (start + width)[:, None])


def _specaugment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    b, _, m, t = x.shape
    for _ in range(2):
        x = x.masked_fill(_band_mask(b, t, 24, g)[:, None, None, :].to(x.device), 0.0)
        x = x.masked_fill(_band_mask(b, m, 4, g)[:, None, :, None].to(x.device), 0.0)
    return x


def _noise_floor(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    b = len(x)
    level = torch.rand(b, generator=g) * 0.5 * (torch.rand(b, generator=g) < 0.5)
    return torch.maximum(x, level.view(b, 1, 1, 1).to(x.device))


def _tilt(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    b, _, m, _ = x.shape
    slope = (torch.rand(b, generator=g) - 0.5) * 0.2
    ramp = torch.linspace(-1.0, 1.0, m)
    return _from_peak(x + (slope[:, None] * ramp[None, :]).view(b, 1, m, 1).to(x.device))


def _from_peak(x: torch.Tensor) -> torch.Tensor:
    """Each channel measured again from its own loudest bin, as the features are."""
    return (x - x.amax(dim=(2, 3), keepdim=True) + 1.0).clamp(min=0.0)


def _stretch(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    b, _, _, t = x.shape
    factor = torch.exp((torch.rand(b, generator=g) * 2.0 - 1.0) * math.log(1.15))
    position = (torch.arange(t)[None, :] * factor[:, None]) % t
    before = position.floor().long()
    return _between(x, 3, before, (before + 1) % t, position - before)


def _between(x: torch.Tensor, dim: int, before: torch.Tensor, after: torch.Tensor,
             weight: torch.Tensor) -> torch.Tensor:
    """Linear interpolation along ``dim`` (2: Mel, 3: time) of ``x`` [B, C, M, T] between
    the positions ``before`` and ``after`` [B, length of dim], ``weight`` of the way."""
    shape = [len(x), 1, 1, 1]
    shape[dim] = x.shape[dim]

    def read(index: torch.Tensor) -> torch.Tensor:
        return torch.gather(x, dim, index.view(shape).expand(x.shape).to(x.device))

    weight = weight.to(x.dtype).view(shape).to(x.device)
    return read(before) * (1.0 - weight) + read(after) * weight


FEATURE_DB_RANGE = 80.0  # the features' scale: [0, 1] spans FeatureSettings.top_db


def _mix(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    b = len(x)
    partner = torch.randperm(b, generator=g).to(x.device)
    quieter_db = 8.0 + 12.0 * torch.rand(b, generator=g)
    gain = (10.0 ** (-quieter_db / 10.0)) * (torch.rand(b, generator=g) < 0.5)
    power = _power(x) + gain.view(b, 1, 1, 1).to(x) * _power(x[partner])
    return _level(power / power.amax(dim=(2, 3), keepdim=True))


def _power(x: torch.Tensor) -> torch.Tensor:
    """Features (dB over FEATURE_DB_RANGE, 1 at the peak) -> power relative to the peak."""
    return 10.0 ** ((x - 1.0) * (FEATURE_DB_RANGE / 10.0))


def _level(power: torch.Tensor) -> torch.Tensor:
    """The inverse of _power, floored at the features' floor."""
    return (1.0 + torch.log10(power) / (FEATURE_DB_RANGE / 10.0)).clamp(min=0.0)


RECORDER_NYQUIST_HZ = (8000.0, 11025.0, 12000.0, 16000.0)


def _lowpass(x: torch.Tensor, g: torch.Generator, band_tops_hz: torch.Tensor) -> torch.Tensor:
    b, _, m, _ = x.shape
    choice = torch.randint(0, len(RECORDER_NYQUIST_HZ), (b,), generator=g)
    cutoff = torch.tensor(RECORDER_NYQUIST_HZ)[choice].masked_fill(torch.rand(b, generator=g) >= 0.5, float("inf"))
    above = (band_tops_hz.view(1, m) > cutoff.view(b, 1)).view(b, 1, m, 1).to(x.device)
    x = x.masked_fill(above, 0.0)
    # What is left is measured from its own peak, as it would be for a recording that
    # never had the upper bands. Bins at the floor (the emptied bands among them) stay there.
    return torch.where(x > 0, _from_peak(x), x)


MEL_SHIFT_BANDS = 1.0


def _mel_shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    b, _, m, _ = x.shape
    shift = (torch.rand(b, generator=g) * 2.0 - 1.0) * MEL_SHIFT_BANDS
    # Band i of the result reads band i - shift of the window; the edge bands repeat.
    position = (torch.arange(m)[None, :] - shift[:, None]).clamp(0, m - 1)
    below = position.floor().long()
    # Interpolated in power, as a tone between two bands' centres shares its power
    # between them; bins with nothing but floor on both sides stay at the floor.
    level = _level(_between(_power(x), 2, below, (below + 1).clamp(max=m - 1), position - below))
    shifted = torch.where(level > 1e-4, _from_peak(level), 0.0)
    # The top bands that a band limit empties are empty in every window of the batch.
    silent = (x.amax(dim=(0, 1, 3)) == 0).flip(0).long()
    shifted[:, :, m - int(silent.cumprod(0).sum()):, :] = 0.0
    return shifted


FILTER_DB = 6.0


def _filter(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    b, _, m, _ = x.shape
    points = torch.randint(3, 7, (b,), generator=g)
    # Every window draws the most inner points and gains; it uses as many as it needs.
    inner = torch.rand(b, 4, generator=g) * (m - 1)
    gains = (torch.rand(b, 6, generator=g) * 2.0 - 1.0) * FILTER_DB / FEATURE_DB_RANGE
    bands = torch.arange(m, dtype=x.dtype)
    response = torch.empty(b, m, dtype=x.dtype)
    for i in range(b):
        knots = torch.cat([torch.zeros(1), inner[i, : points[i] - 2].sort().values, torch.full((1,), m - 1.0)])
        right = torch.searchsorted(knots, bands, right=True).clamp(1, len(knots) - 1)
        left = right - 1
        weight = ((bands - knots[left]) / (knots[right] - knots[left]).clamp(min=1e-6)).clamp(0, 1)
        values = gains[i, : len(knots)]
        response[i] = values[left] * (1 - weight) + values[right] * weight
    return _from_peak(x + response.view(b, 1, m, 1).to(x.device))


_FUNCTIONS = {"roll": _roll, "specaugment": _specaugment, "noise-floor": _noise_floor, "tilt": _tilt,
              "stretch": _stretch, "mix": _mix, "mel-shift": _mel_shift, "filter": _filter}
