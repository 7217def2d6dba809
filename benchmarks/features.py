"""Feature throughput (windows/s) per median backend, the numba median filters
against their previous implementation side by side in one process, and the
difference to the librosa reference on real clips.

    python benchmarks/features.py [--batch 32] [--repeats 3] [--threads N] [--json out.json]

--threads sets both torch's and numba's thread counts (numba's is capped by
NUMBA_NUM_THREADS).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numba
import numpy as np
import torch

from fieldmon.feature_extractor import FeatureExtractor
import fieldmon.median
from fieldmon.features import FeatureSettings, stft_by_frame, repeat_to_length
from fieldmon.hpss_kernels import magnitude_of
from fieldmon.median import running_median

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
INSECTSET = ROOT.parent / "shared" / "data" / "insectset32"


def real_windows(n: int, settings: FeatureSettings) -> np.ndarray:
    import soundfile as sf

    clips = sorted(INSECTSET.glob("clips/*/*.flac"))
    if not clips:
        rng = np.random.default_rng(0)
        return rng.standard_normal((n, settings.window_samples)).astype(np.float32) * 0.1
    out = []
    for path in clips[:: max(1, len(clips) // n)][:n]:
        y, _ = sf.read(path, dtype="float32")
        out.append(repeat_to_length(y, settings.window_samples))
    return np.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    settings = FeatureSettings()
    windows = real_windows(args.batch, settings)
    results: dict = {
        "batch": len(windows), "threads": args.threads, "numba_threads": numba.get_num_threads(), "device": "cpu"
    }
    results.update(_previous_median_side_by_side(windows, settings, args.repeats))
    for median in ("numba", "torch"):
        extractor = FeatureExtractor(settings, median=median)
        extractor(windows[:2])  # compile / warm up
        best = min(_timed(extractor, windows) for _ in range(args.repeats))
        results[f"{median}_windows_per_s"] = len(windows) / best
    if INSECTSET.exists():
        from librosa_reference import reference_features_db

        got = FeatureExtractor(settings)(windows).numpy() * settings.top_db - settings.top_db
        t = time.perf_counter()
        ref = np.stack([reference_features_db(w, settings) for w in windows])
        results["librosa_windows_per_s"] = len(windows) / (time.perf_counter() - t)
        results["max_abs_diff_db_vs_librosa"] = float(np.abs(got - ref).max())
        results["clips"] = "insectset32"
    for key, value in results.items():
        print(f"{key:40s} {value:.6g}" if isinstance(value, float) else f"{key:40s} {value}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def _timed(extractor: FeatureExtractor, windows: np.ndarray) -> float:
    t = time.perf_counter()
    extractor(windows)
    return time.perf_counter() - t


def _previous_median_side_by_side(windows: np.ndarray, settings: FeatureSettings, repeats: int) -> dict:
    """The median filters alone, and the whole numba feature path, with the previous
    median implementation and the current one, alternating on the same batch so that
    both see the same load on a shared machine."""
    k = settings.hpss_kernel
    extractor = FeatureExtractor(settings, median="numba")
    magnitude = magnitude_of(stft_by_frame(windows, settings))  # [batch, frames, bins]

    def previous(x: np.ndarray, k: int) -> np.ndarray:  # running_median's interface
        return _previous_median_last_axis(np.ascontiguousarray(x.transpose(0, 2, 1)), k).transpose(0, 2, 1)

    def medians(median) -> tuple[np.ndarray, np.ndarray]:  # as the features call them
        return median(magnitude, k), median(magnitude.transpose(0, 2, 1), k).transpose(0, 2, 1)

    def features_with(median) -> torch.Tensor:
        saved = fieldmon.median.running_median
        fieldmon.median.running_median = median
        try:
            return extractor(windows)
        finally:
            fieldmon.median.running_median = saved

    # compile / warm up, and check that both give the same medians and features
    old_h, old_p = medians(previous)
    new_h, new_p = medians(running_median)
    old_f, new_f = features_with(previous), features_with(running_median)
    times: dict[str, list[float]] = {"old_median": [], "new_median": [], "old_features": [], "new_features": []}
    for _ in range(repeats):
        for key, run in (
            ("old_median", lambda: medians(previous)),
            ("new_median", lambda: medians(running_median)),
            ("old_features", lambda: features_with(previous)),
            ("new_features", lambda: features_with(running_median)),
        ):
            t = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - t)
    rate = {key: len(windows) / min(values) for key, values in times.items()}
    return {
        "median_previous_windows_per_s": rate["old_median"],
        "median_current_windows_per_s": rate["new_median"],
        "median_speedup": rate["new_median"] / rate["old_median"],
        "features_previous_median_windows_per_s": rate["old_features"],
        "features_current_median_windows_per_s": rate["new_features"],
        "features_speedup": rate["new_features"] / rate["old_features"],
        "median_max_abs_diff_previous": float(max(np.abs(old_h - new_h).max(), np.abs(old_p - new_p).max())),
        "features_max_abs_diff_previous": float((old_f - new_f).abs().max()),
    }


@numba.njit(parallel=True, cache=False)
def _previous_median_last_axis(x: np.ndarray, k: int) -> np.ndarray:
    """The median filter fieldmon used before fieldmon.median, kept as the reference
    for the side-by-side timing: one row at a time along the last axis, a sorted window
    in which each step replaces the value that leaves by the one that enters."""
    n_batch, n_rows, n = x.shape
    out = np.empty_like(x)
    half = k // 2
    idx = np.empty(n + 2 * half, dtype=np.int64)
    period = 2 * n
    for j in range(n + 2 * half):
        i = (j - half) % period
        idx[j] = period - 1 - i if i >= n else i
    for row in numba.prange(n_batch * n_rows):
        b = row // n_rows
        r = row % n_rows
        line = x[b, r]
        window = np.empty(k, dtype=x.dtype)
        for j in range(k):
            window[j] = line[idx[j]]
        window.sort()
        out[b, r, 0] = window[half]
        for t in range(1, n):
            old = line[idx[t - 1]]
            new = line[idx[t - 1 + k]]
            position_old = 0
            position_new = 0
            for j in range(k):
                position_old += window[j] < old
                position_new += window[j] < new
            if new > old:
                position_new -= 1  # `old` itself was counted below `new`
                for j in range(position_old, position_new):
                    window[j] = window[j + 1]
            else:
                for j in range(position_old, position_new, -1):
                    window[j] = window[j - 1]
            window[position_new] = new
            out[b, r, t] = window[half]
    return out


if __name__ == "__main__":
    main()
