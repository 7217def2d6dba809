"""A deployment's folder: many short files. Reports listing time, first scan, and the
time a rerun needs to find that nothing changed (the nightly cron case).

    python benchmarks/deployment.py [--files 2000] [--seconds 2] [--model DIR]

A small network is used unless --model is given: this measures the pipeline's
bookkeeping, not the CNN.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from scan import tiny_model  # benchmarks/scan.py

from fieldmon.scan.discovery import discover
from fieldmon.scan.pipeline import scan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--model", default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fieldmon-deploy-"))
    rec = work / "recordings"
    rng = np.random.default_rng(0)
    for i in range(args.files):
        path = rec / f"site{i % 20:02d}" / f"2024{(i // 600) % 12 + 1:02d}{i % 28 + 1:02d}_{i % 86400:06d}.WAV"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, (0.1 * rng.standard_normal(int(args.seconds * 16000))).astype(np.float32), 16000)
    model = args.model or str(tiny_model(work))
    result: dict = {"files": args.files, "seconds_per_file": args.seconds}
    t = time.perf_counter()
    found, _ = discover(rec)
    result["listing_s"] = time.perf_counter() - t
    t = time.perf_counter()
    first = scan(rec, work / "det.parquet", model)
    result["first_scan_s"] = time.perf_counter() - t
    result["first_scan_files_ok"] = first.files_ok
    result["first_scan_files_failed"] = first.files_failed
    result["first_scan_failures"] = first.failures[:5]
    t = time.perf_counter()
    again = scan(rec, work / "det.parquet", model)
    result["rerun_s"] = time.perf_counter() - t
    result["rerun_files_skipped"] = again.files_skipped
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
