"""The local engine against the Ray engine on the same folder, in one run.

    python benchmarks/engines.py [FOLDER] [--model default|DIR] [--ray-cpus N] [--json OUT]

FOLDER defaults to ../shared/data/recorder-series-S4A03895 (96 Song Meter files of
10 s). Each engine scans into a fresh output in its own process (so neither warms the
other's caches); the report gives wall time, windows/s and times real time for each,
the Ray engine's overhead, and checks that the two outputs hold the same rows. The
Ray engine starts a private local instance, so its wall time includes Ray's start.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

DEFAULT_FOLDER = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "recorder-series-S4A03895"


def run_engine(folder: Path, out: Path, model: str, engine: str, ray_cpus: int | None) -> dict:
    command = [sys.executable, "-m", "fieldmon", "scan", str(folder), "--out", str(out), "--model", model,
               "--engine", engine, "--quiet"]
    if engine == "ray" and ray_cpus:
        command += ["--ray-cpus", str(ray_cpus)]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.monotonic() - started
    if result.returncode not in (0, 3):
        sys.exit(f"{engine} engine failed ({result.returncode}):\n{result.stderr}")
    files = pd.read_parquet(out.with_name(out.stem + ".files.parquet"))
    windows, audio_s = int(files.windows.sum()), float(files.duration_s.sum())
    return {"engine": engine, "wall_s": round(wall, 2), "windows": windows, "audio_s": round(audio_s, 1),
            "windows_per_s": round(windows / wall, 2), "x_real_time": round(audio_s / wall, 1)}


def same_rows(a: Path, b: Path) -> bool:
    key = ["path", "window_start_s"]
    da, db = (pd.read_parquet(p).sort_values(key).reset_index(drop=True) for p in (a, b))
    return da[key + ["label", "predicted"]].equals(db[key + ["label", "predicted"]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument("--model", default="default")
    parser.add_argument("--ray-cpus", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not args.folder.exists():
        sys.exit(f"{args.folder}: no such folder (give a folder of recordings)")
    with tempfile.TemporaryDirectory() as tmp:
        local = run_engine(args.folder, Path(tmp) / "local.parquet", args.model, "local", None)
        ray = run_engine(args.folder, Path(tmp) / "ray.parquet", args.model, "ray", args.ray_cpus)
        identical = same_rows(Path(tmp) / "local.parquet", Path(tmp) / "ray.parquet")
    report = {"folder": str(args.folder), "model": args.model, "local": local, "ray": ray,
              "ray_overhead_s": round(ray["wall_s"] - local["wall_s"], 1),
              "ray_over_local_throughput": round(ray["windows_per_s"] / local["windows_per_s"], 3),
              "same_rows": identical}
    print(f"{'engine':8} {'wall s':>8} {'windows':>8} {'windows/s':>10} {'x real time':>12}")
    for r in (local, ray):
        print(f"{r['engine']:8} {r['wall_s']:8.1f} {r['windows']:8d} {r['windows_per_s']:10.2f} {r['x_real_time']:12.1f}")
    print(f"Ray/local throughput {report['ray_over_local_throughput']:.3f}; Ray overhead {report['ray_overhead_s']:.1f} s; "
          f"same rows: {identical}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
