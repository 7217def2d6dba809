"""End-to-end scan throughput and peak memory.

    python benchmarks/scan.py throughput [--hours 1] [--model default|DIR] [--device cpu]
    python benchmarks/scan.py memory [--short-min 10] [--long-hours 10] [--model DIR]

throughput: scans a synthetic recording (noise with tones and clicks, 44.1 kHz) and
reports windows/s and the multiple of real time.
memory: scans a short and a long synthetic file, each in its own process, and reports
their peak resident memory; streaming decode keeps the two close. A small network is
used unless --model is given, since the network's memory does not depend on length.
The audio is written block by block, so generating 10 h needs no 10 h in memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf


def synthetic_recording(path: Path, seconds: float, sr: int, block_seconds: float = 60.0) -> Path:
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=sr, channels=1, subtype="PCM_16") as out:
        done = 0.0
        while done < seconds:
            n = int(min(block_seconds, seconds - done) * sr)
            t = (np.arange(n) / sr) + done
            y = 0.05 * rng.standard_normal(n) + 0.2 * np.sin(2 * np.pi * 3000 * t) * (np.sin(2 * np.pi * 0.2 * t) > 0)
            y[:: sr // 4] += 0.8
            out.write(y.astype(np.float32))
            done += n / sr
    return path


def tiny_model(folder: Path) -> Path:
    import torch

    from fieldmon import ModelBundle
    from fieldmon.model.network import MLPClassifier, MultiscaleCNN, NetworkSettings

    torch.manual_seed(0)
    bundle = ModelBundle(MultiscaleCNN(NetworkSettings(channels=4, reduce_channels=2, dense_units=(8, 8, 8))),
                         ["a", "b"], classifier=MLPClassifier(8, 2), name="bench-small")
    return bundle.save(folder / "small-model")


def run_scan(audio: Path, model: str, device: str, out: Path) -> dict:
    from fieldmon.scan.pipeline import RunOptions, scan

    start = time.perf_counter()
    summary = scan(audio, out, model, options=RunOptions(device=device))
    wall = time.perf_counter() - start
    return {
        "audio_hours": summary.audio_seconds / 3600,
        "windows": summary.windows,
        "wall_s": wall,
        "windows_per_s": summary.windows / wall,
        "x_real_time": summary.audio_seconds / wall,
        "audio_hours_per_minute": summary.audio_seconds / 3600 / (wall / 60),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["throughput", "memory", "one"])
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--short-min", type=float, default=10.0)
    parser.add_argument("--long-hours", type=float, default=10.0)
    parser.add_argument("--sample-rate", type=int, default=44100)
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--audio", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fieldmon-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    if args.mode == "one":  # a child process of `memory`
        print(json.dumps(run_scan(args.audio, args.model, args.device, work / f"{args.audio.stem}.parquet")))
        return
    model = args.model or str(tiny_model(work))
    if args.mode == "throughput":
        audio = synthetic_recording(work / f"synthetic_{args.hours:g}h.wav", args.hours * 3600, args.sample_rate)
        result = {"mode": "throughput", "model": args.model or "small test network", "device": args.device,
                  **run_scan(audio, model, args.device, work / "throughput.parquet")}
    else:
        result = {"mode": "memory", "model": args.model or "small test network", "device": args.device}
        for name, seconds in (("short", args.short_min * 60), ("long", args.long_hours * 3600)):
            audio = synthetic_recording(work / f"synthetic_{name}.wav", seconds, args.sample_rate)
            child = subprocess.run([sys.executable, __file__, "one", "--audio", str(audio), "--model", model,
                                    "--device", args.device, "--workdir", str(work)],
                                   check=True, capture_output=True, text=True)
            result[name] = json.loads(child.stdout.strip().splitlines()[-1])
            audio.unlink()
        result["peak_rss_ratio_long_over_short"] = result["long"]["peak_rss_mb"] / result["short"]["peak_rss_mb"]
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
