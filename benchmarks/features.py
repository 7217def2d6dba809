"""Feature throughput (windows/s) per median backend, and the difference to the
librosa reference on real clips.

    python benchmarks/features.py [--batch 32] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fieldmon.features import FeatureExtractor, FeatureSettings, repeat_to_length

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
    settings = FeatureSettings()
    windows = real_windows(args.batch, settings)
    results: dict = {"batch": len(windows), "threads": args.threads, "device": "cpu"}
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
        print(f"{key:32s} {value:.6g}" if isinstance(value, float) else f"{key:32s} {value}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def _timed(extractor: FeatureExtractor, windows: np.ndarray) -> float:
    t = time.perf_counter()
    extractor(windows)
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
