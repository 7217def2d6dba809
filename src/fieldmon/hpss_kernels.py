"""The numba kernels of the HPSS-Mel features (``fieldmon.features``) besides the
median filters (``fieldmon.median``): the magnitude, the soft masks fused with the
power channels, and the Mel sums. As separate numpy operations each pass over the
spectrograms cost about as much as the STFT itself.
Imported only when features are computed, so that a process that only reads feature
settings (the scan's, whose features come from feature processes) never loads numba.
"""

from __future__ import annotations

import numba
import numpy as np

# magnitude_of and hpss_power are elementwise over [batch, rows, columns]; the features
# pass them arrays with frames as rows and frequency bins as columns.


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


@numba.njit(parallel=True, cache=True)
def hpss_power(magnitude: np.ndarray, harm: np.ndarray, perc: np.ndarray, power: np.float32) -> np.ndarray:
    """librosa.util.softmask(harm, perc) and softmask(perc, harm) with split_zeros=True
    (margins of 1), sharing their common terms, then the three power channels
    ``[batch, 3, rows, columns]``. Without branches (both sides computed, one selected),
    so that the inner loop runs in SIMD lanes; ``power == 2`` does not call pow(), which
    would widen to float64 and not vectorise."""
    n_batch, n_rows, n_cols = magnitude.shape
    out = np.empty((n_batch, 3, n_rows, n_cols), dtype=np.float32)
    tiny = np.finfo(np.float32).tiny
    for row in numba.prange(n_batch * n_rows):
        b = row // n_rows
        r = row % n_rows
        for c in range(n_cols):
            m = magnitude[b, r, c]
            h = harm[b, r, c]
            p = perc[b, r, c]
            z = max(h, p)
            silent = z < tiny
            z = np.float32(1.0) if silent else z
            h = h / z
            p = p / z
            if power == 2.0:
                h = h * h
                p = p * p
            else:
                h = h**power
                p = p**power
            total = h + p
            mask_harm = np.float32(0.5) if silent else h / total
            mask_perc = np.float32(0.5) if silent else p / total
            out[b, 0, r, c] = m * m
            out[b, 1, r, c] = (m * mask_harm) * (m * mask_harm)
            out[b, 2, r, c] = (m * mask_perc) * (m * mask_perc)
    return out


@numba.njit(parallel=True, cache=True)
def mel_sums(power: np.ndarray, basis: np.ndarray, first: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """Mel bands ``[batch, channels, mels, frames]`` of power spectrograms ``[batch,
    channels, frames, bins]``: each band sums only the bins where its filter is not zero
    (``first[m]:stop[m]``). A BLAS product here cost more: its idle threads spun against
    numba's (5.1 against 3.0 ms per window on two threads)."""
    n_batch, n_channels, n_frames, _ = power.shape
    n_mels = basis.shape[0]
    out = np.empty((n_batch, n_channels, n_mels, n_frames), dtype=np.float32)
    for row in numba.prange(n_batch * n_channels):
        b = row // n_channels
        c = row % n_channels
        for t in range(n_frames):
            for m in range(n_mels):
                total = np.float32(0.0)
                for f in range(first[m], stop[m]):
                    total += basis[m, f] * power[b, c, t, f]
                out[b, c, m, t] = total
    return out
