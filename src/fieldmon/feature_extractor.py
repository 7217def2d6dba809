"""The HPSS-Mel features (``fieldmon.features``) as torch tensors, on any device.

On the CPU they come from :func:`fieldmon.features.hpss_mel` (numpy and numba); on
other devices the same steps run as torch operations (torch.stft, unfold + median) so
that everything stays on the device. ``median="torch"`` runs the torch steps on the CPU
too, which the tests use to hold both paths to the same numbers.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch

from fieldmon.features import AMIN, FeatureSettings, hpss_mel, hpss_power_channels, mel_basis


class FeatureExtractor:
    """Turns batches of windows ``[batch, window_samples]`` into ``[batch, 3, n_mels, n_frames]``.

    Holds the Hann window and Mel basis on ``device`` so a scan keeps them resident.
    ``median`` picks the backend: "auto" is numba on CPU and torch elsewhere.
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
        # float64, as the CPU path: see fieldmon.features._stft
        self._window = torch.hann_window(settings.frame_length, periodic=True, dtype=torch.float64, device=self.device)

    @cached_property
    def mel_basis(self) -> torch.Tensor:
        return torch.from_numpy(mel_basis(self.settings)).to(self.device)

    def __call__(self, windows: np.ndarray | torch.Tensor) -> torch.Tensor:
        if self.median == "numba":
            return torch.from_numpy(hpss_mel(_numpy(windows), self.settings, self._stft_by_frame))
        mel = torch.matmul(self.mel_basis, self.power_channels(windows))
        features = _to_unit_db(mel, self.settings.top_db)
        features[:, :, self.settings.n_mels - self.settings.empty_bands:] = 0.0  # as fieldmon.features does
        return features

    def power_channels(self, windows: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Power spectrograms of the window and of its harmonic and percussive parts,
        ``[batch, 3, bins, frames]``."""
        s = self.settings
        if self.median == "numba":
            return torch.from_numpy(hpss_power_channels(_numpy(windows), s, self._stft_by_frame))
        magnitude = self._stft(windows).abs()[..., : s.n_frames].float().contiguous()
        harmonic = _torch_median_last_axis(magnitude, s.hpss_kernel)
        percussive = _torch_median_last_axis(magnitude.transpose(1, 2), s.hpss_kernel).transpose(1, 2)
        mask_harm, mask_perc = _softmasks(harmonic, percussive, s.hpss_power)
        return torch.stack([magnitude, magnitude * mask_harm, magnitude * mask_perc], dim=1) ** 2

    def _stft_by_frame(self, windows: np.ndarray, settings: FeatureSettings) -> np.ndarray:
        """torch's STFT for fieldmon.features: on torch's threads, where the network runs
        too (numpy's FFT on its own threads beside them made a CPU scan 10-20 % slower)."""
        return self._stft(windows).numpy()[..., : settings.n_frames].transpose(0, 2, 1)

    def _stft(self, windows: np.ndarray | torch.Tensor) -> torch.Tensor:
        s = self.settings
        x = torch.as_tensor(windows, dtype=torch.float32).to(self.device)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != s.window_samples:
            raise ValueError(
                f"expected windows of shape [batch, {s.window_samples}], got {tuple(x.shape)}"
            )
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


def _numpy(windows: np.ndarray | torch.Tensor) -> np.ndarray:
    return windows.detach().cpu().numpy() if isinstance(windows, torch.Tensor) else np.asarray(windows)


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



