"""The numba kernels of the HPSS-Mel features (``fieldmon.features``) besides the
median filters (``fieldmon.median``): the magnitude, and the soft masks and power
channels fused with the squaring and the Mel sums. Fused, because as separate numpy
operations each pass over the spectrograms cost about as much as the STFT itself.
Imported only when features are computed, so that a process that only reads feature
settings (the scan's, whose features come from feature processes) never loads numba.
"""

from __future__ import annotations

import numba
import numpy as np

def allowed_threads() -> int:
    """The threads numba may use here: the features' other steps use as many."""
    return numba.get_num_threads()


# Both loops are elementwise over [batch, rows, columns]; the features pass them arrays
# with frames as rows and frequency bins as columns, contiguous as numpy's FFT writes them.


@numba.njit(parallel=True, cache=True)
def magnitude_of(stft: np.ndarray) -> np.ndarray:
    """|stft|, float32."""
    n_batch, n_rows, n_cols = stft.shape
    out = np.empty((n_batch, n_rows, n_cols), dtype=np.float32)
    for row in numba.prange(n_batch * n_rows):
        b = row // n_rows
        r = row % n_rows
        for c in range(n_cols):
            z = stft[b, r, c]
            out[b, r, c] = np.sqrt(z.real * z.real + z.imag * z.imag)
    return out


@numba.njit(cache=True, inline="always")
def _power_channels_at(m: np.float32, h: np.float32, p: np.float32, power: np.float32, tiny: np.float32):
    """librosa.util.softmask(harm, perc) and softmask(perc, harm) with split_zeros=True
    (margins of 1), sharing their common terms, then the three power channels."""
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
    return m * m, (m * mask_harm) * (m * mask_harm), (m * mask_perc) * (m * mask_perc)


@numba.njit(parallel=True, cache=True)
def hpss_power(magnitude: np.ndarray, harm: np.ndarray, perc: np.ndarray, power: np.float32) -> np.ndarray:
    """The three power channels ``[batch, 3, rows, columns]``."""
    n_batch, n_rows, n_cols = magnitude.shape
    out = np.empty((n_batch, 3, n_rows, n_cols), dtype=np.float32)
    tiny = np.finfo(np.float32).tiny
    for row in numba.prange(n_batch * n_rows):
        b = row // n_rows
        r = row % n_rows
        for c in range(n_cols):
            out[b, 0, r, c], out[b, 1, r, c], out[b, 2, r, c] = _power_channels_at(
                magnitude[b, r, c], harm[b, r, c], perc[b, r, c], power, tiny)
    return out


@numba.njit(parallel=True, cache=True)
def hpss_mel_power(magnitude: np.ndarray, harm: np.ndarray, perc: np.ndarray, power: np.float32,
                    basis: np.ndarray, first: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """The Mel bands of the three power channels, ``[batch, 3, mels, frames]``, from
    ``[batch, frames, bins]`` inputs, without writing the power channels out: each
    frame's are summed into the bands (bins ``first[m]:stop[m]`` of band m) at once.
    A BLAS product here cost more than the sums: its idle threads spin against numba's."""
    n_batch, n_frames, n_bins = magnitude.shape
    n_mels = basis.shape[0]
    out = np.empty((n_batch, 3, n_mels, n_frames), dtype=np.float32)
    tiny = np.finfo(np.float32).tiny
    for row in numba.prange(n_batch * n_frames):
        b = row // n_frames
        t = row % n_frames
        frame = np.empty((3, n_bins), dtype=np.float32)
        for f in range(n_bins):
            frame[0, f], frame[1, f], frame[2, f] = _power_channels_at(
                magnitude[b, t, f], harm[b, t, f], perc[b, t, f], power, tiny)
        for channel in range(3):
            for m in range(n_mels):
                total = 0.0
                for f in range(first[m], stop[m]):
                    total += basis[m, f] * frame[channel, f]
                out[b, channel, m, t] = total
    return out
