"""Feature augmentations of training windows (fieldmon.train.augment)."""

import pytest
import torch

from fieldmon.features import FeatureSettings
from fieldmon.train.augment import AUGMENTATIONS, augment

BAND_TOPS_HZ = torch.from_numpy(FeatureSettings().band_upper_edges_hz).float()


def _pulses(period: int, batch: int = 4) -> torch.Tensor:
    """Windows [batch, 3, 40, 200] holding a pulse train, one pulse every ``period`` frames."""
    x = torch.zeros(batch, 3, 40, 200)
    x[..., 10:20, ::period] = 1.0
    return x


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_each_augmentation_keeps_shape_range_and_is_seeded(name):
    x = torch.rand(6, 3, 40, 200)
    first = augment(x, (name,), torch.Generator().manual_seed(3), BAND_TOPS_HZ)
    again = augment(x, (name,), torch.Generator().manual_seed(3), BAND_TOPS_HZ)
    other = augment(x, (name,), torch.Generator().manual_seed(4), BAND_TOPS_HZ)
    assert first.shape == x.shape
    assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0 + 1e-6
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first, x)


def test_stretch_changes_the_pulse_rate_by_at_most_15_percent():
    x = _pulses(period=10, batch=64)
    assert (x[:, 0, 15, :] > 0.5).sum(dim=1).unique().tolist() == [20]  # 20 pulses in each window
    stretched = augment(x, ("stretch",), torch.Generator().manual_seed(0))
    row = stretched[:, 0, 15, :]
    # Linear interpolation can split one pulse over two frames: count peaks, not frames.
    counts = ((row > row.roll(1, dims=1)) & (row >= row.roll(-1, dims=1)) & (row > 0.2)).sum(dim=1)
    assert int(counts.min()) >= 17 and int(counts.max()) <= 23  # 20 / 1.15 .. 20 * 1.15, plus a wrapped pulse
    assert len(set(counts.tolist())) > 1, "every window stretched by the same factor"
    # Mel bands are left where they are.
    assert float(stretched[..., :10, :].abs().max()) == 0.0 and float(stretched[..., 20:, :].abs().max()) == 0.0


def test_unknown_augmentation_is_refused():
    with pytest.raises(ValueError, match="unknown augmentation 'reverse'"):
        augment(torch.zeros(1, 3, 40, 200), ("reverse",), torch.Generator())


def test_mix_adds_another_window_8_to_20_db_below_its_own_song():
    x = torch.zeros(64, 3, 40, 200)
    for i in range(64):
        x[i, :, i % 40, :] = 1.0  # window i: a tone in band i % 40, at the peak
    mixed = augment(x, ("mix",), torch.Generator().manual_seed(0))
    own = torch.stack([mixed[i, :, i % 40, :] for i in range(64)])
    assert torch.allclose(own, torch.ones_like(own), atol=1e-4), "a window's own song stays its loudest sound"
    added = mixed.clone()
    for i in range(64):
        added[i, :, i % 40, :] = 0.0
    level = added.amax(dim=(1, 2, 3))
    heard = level > 0.01
    assert 16 <= int(heard.sum()) <= 48, "about half the windows get a second sound"
    # 8-20 dB below the peak on the 80 dB scale: 1 - 20/80 .. 1 - 8/80.
    assert float(level[heard].min()) >= 0.75 - 1e-4 and float(level[heard].max()) <= 0.90 + 1e-4
    assert len(level[heard].unique()) > 1, "every window mixed at the same level"


def test_lowpass_empties_the_bands_above_a_recorders_nyquist_frequency_in_half_the_windows():
    x = 0.2 + 0.1 * torch.rand(64, 3, 40, 200, generator=torch.Generator().manual_seed(1))  # background
    x[:, :, 38, :] = 1.0  # a song at about 20 kHz, the loudest sound
    x[:, :, 5, :] = 0.6  # and a quieter one low down
    out = augment(x, ("lowpass",), torch.Generator().manual_seed(0), BAND_TOPS_HZ)
    cut = out[:, 0, 38, 0] == 0.0
    assert 16 <= int(cut.sum()) <= 48, "about half the windows are band-limited"
    assert torch.allclose(out[~cut], x[~cut])
    # The low song is now the loudest sound of a band-limited window.
    assert torch.allclose(out[cut][:, :, 5, :], torch.ones(1))
    # Emptied from the band that a 16, 22.05, 24 or 32 kHz recording lacks upwards.
    emptied = {int((out[i, 0, :, 0] == 0).sum()) for i in torch.nonzero(cut).flatten().tolist()}
    tops = FeatureSettings().band_upper_edges_hz
    assert emptied <= {int((tops > hz).sum()) for hz in (8000, 11025, 12000, 16000)} and len(emptied) > 1


def test_lowpass_needs_the_band_edges():
    with pytest.raises(ValueError, match="band_tops_hz"):
        augment(torch.zeros(1, 3, 40, 200), ("lowpass",), torch.Generator())


def test_mel_shift_moves_a_tone_by_at_most_one_band_and_keeps_empty_bands_empty():
    x = torch.zeros(64, 3, 40, 200)
    x[:, :, 20, :] = 1.0
    x[:, :, 8, :] = 0.5  # a quieter tone, 40 dB down
    x[:, :, :35, -1] = 0.1  # a click in the last frame; the bands above it empty, as above a band limit
    shifted = augment(x, ("mel-shift",), torch.Generator().manual_seed(0))
    power = 10.0 ** ((shifted[:, 0, 15:26, 0] - 1.0) * 8.0)
    centre = 15 + (power * torch.arange(11)).sum(1) / power.sum(1)
    assert float((centre - 20).abs().max()) <= 1.0 + 1e-4
    assert float((centre - 20).abs().max()) > 0.5, "no window moved by more than half a band"
    assert len(set(centre.round(decimals=3).tolist())) > 10, "every window moved by the same amount"
    assert torch.allclose(shifted.amax(dim=(2, 3)), torch.ones(64, 3))  # measured again from the peak
    quiet = shifted[:, 0, 5:12, 0]
    assert float(quiet.max()) < 0.55 and float(quiet.max(dim=1).values.min()) > 0.45  # still 40 dB down
    assert float(shifted[:, :, 24:, :-1].abs().max()) == 0.0  # the floor stays at the floor
    assert float(shifted[:, :, 34, -1].min()) > 0.0 and float(shifted[:, :, 35:, :].abs().max()) == 0.0


def test_filter_colours_the_spectrum_by_at_most_12_db_and_keeps_time_untouched():
    x = torch.full((64, 3, 40, 200), 0.5)
    filtered = augment(x, ("filter",), torch.Generator().manual_seed(0))
    response = filtered[:, 0, :, 0] * 80.0  # in dB
    spread = response.amax(dim=1) - response.amin(dim=1)
    assert float(spread.max()) <= 12.0 + 1e-3 and float(spread.min()) > 0.0
    assert len(set(spread.round(decimals=2).tolist())) > 30, "every window coloured alike"
    assert torch.equal(filtered, filtered[..., :1].expand_as(filtered))  # the same response in every frame
    assert torch.equal(filtered[:, 0], filtered[:, 2])  # and in every channel
    assert torch.allclose(filtered.amax(dim=(2, 3)), torch.ones(64, 3))
    # Not a straight slope (tilt): some windows change direction along the Mel axis.
    steps = response.diff(dim=1).sign()
    assert int(((steps[:, 1:] * steps[:, :-1]) < 0).any(dim=1).sum()) > 10
