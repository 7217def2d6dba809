"""Scan throughput, stage by stage, and peak memory.

    python benchmarks/scan.py throughput [--hours 1] [--model default|DIR] [--device cpu|cuda]
                                         [--precision fp32,fp32-onnx,int8,bf16,fp16] [--birdnet PEER_SCRIPT]
                                         [--batch-size N] [--workers N] [--stage-windows 256] [--repeats 1]
    python benchmarks/scan.py memory [--short-min 10] [--long-hours 10] [--model DIR]
    python benchmarks/scan.py process --birdnet PEER_SCRIPT [--short-min 10] [--repeats 3]
                                      [--precision fp32,int8] [--model default] [--memory-files 1,6,12]

throughput: writes a synthetic recording (noise with tones and clicks; 48 kHz as
AudioMoths record, so the scan resamples to the model's 44.1 kHz) and reports, in one
run and for each precision: decode, resample, features, CNN (network + MLP +
open set, on precomputed features) and write throughput separately in windows/s; on a
CPU also the two stages a scan runs side by side, each alone as the scan runs it (a
feature process: decode, resample and features on one thread; the network on the
cores the --workers feature processes leave); the end-to-end scan (windows/s,
multiple of real time, hours of audio per minute and per second, the GPU target) and
its ratios to the CNN alone and to the slowest of those two stages, and the same once
the first batch is through (steady state: start-up and the final commit left out). On a GPU, raise --batch-size,
--workers and --stage-windows (as benchmarks/gpu.sh does). With --birdnet, the peer
BirdNET is timed on the same file right after (../shared/tools/birdnet-peer) and the
ratios are reported. --repeats N: N rounds in turns, each figure the median over them
(the rounds' end-to-end and steady-state figures are kept too).
memory: scans a short and a long synthetic file, each in its own process, and reports
their peak resident memory; streaming decode keeps the two close. A small network is
used unless --model is given, since the network's memory does not depend on length.
The audio is written block by block, so generating 10 h needs no 10 h in memory.
process: the whole `fieldmon scan FILE` command (interpreter start, imports, model load,
scan, Parquet) against the whole BirdNET peer command on the same --short-min file, in
turns, --repeats times: wall clock, and peak resident memory of the command's whole
process tree (fieldmon's feature processes included); reports the median wall time of
each and its ratio to BirdNET's. --memory-files: then the peak memory (whole process
tree) of `fieldmon scan DIR` on folders of that many copies of the file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from fieldmon.model.loading import PRECISIONS


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


class TreeMemory:
    """Peak resident memory of a process and all its descendants together (a CPU scan
    runs its features in child processes), sampled every 10 ms from /proc (Linux).
    /usr/bin/time and getrusage give the largest single process, not the sum."""

    def __init__(self, pid: int | None = None) -> None:
        self.pid = pid or os.getpid()
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 1e6

    def _sample(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.is_set():
            total = 0
            for pid in self._tree():
                try:
                    total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
                except (OSError, IndexError, ValueError):
                    pass  # it ended between listing and reading
            self.peak_bytes = max(self.peak_bytes, total)
            self._stop.wait(0.01)

    def _tree(self) -> list[int]:
        """This process and its descendants, from /proc/PID/task/TID/children: a listing
        of all of /proc costs about 3 ms, which every 10 ms took a fifth of a core from
        the scan being measured."""
        tree, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            for children in Path(f"/proc/{pid}/task").glob("*/children"):
                try:
                    todo.extend(int(child) for child in children.read_text().split())
                except (OSError, ValueError):
                    pass  # it ended between listing and reading
        return tree


def tiny_model(folder: Path) -> Path:
    import torch

    from fieldmon import ModelBundle
    from fieldmon.model.network import MLPClassifier, MultiscaleCNN, NetworkSettings

    torch.manual_seed(0)
    bundle = ModelBundle(MultiscaleCNN(NetworkSettings(channels=4, reduce_channels=2, dense_units=(8, 8, 8))),
                         ["a", "b"], classifier=MLPClassifier(8, 2), name="bench-small")
    return bundle.save(folder / "small-model")


def run_scan(audio: Path, model: str, device: str, out: Path, precision: str = "fp32", batch_size: int = 64,
             workers: int = 2) -> dict:
    from fieldmon.scan.pipeline import RunOptions, scan

    options = RunOptions(device=device, precision=precision, batch_size=batch_size, workers=workers)
    start = time.perf_counter()
    with TreeMemory() as memory, BatchClock() as batches:
        summary = scan(audio, out, model, options=options)
    wall = time.perf_counter() - start
    steady = batches.steady_rate()
    return {
        # Once the first batch is through: start-up (imports, model, feature processes,
        # the first windows) and the Parquet commit left out.
        "steady_windows_per_s": steady,
        "startup_and_commit_s": wall - summary.windows / steady,
        "audio_hours": summary.audio_seconds / 3600,
        "windows": summary.windows,
        "wall_s": wall,
        "windows_per_s": summary.windows / wall,
        "x_real_time": summary.audio_seconds / wall,
        "audio_hours_per_minute": summary.audio_seconds / 3600 / (wall / 60),
        "audio_hours_per_second": summary.audio_seconds / 3600 / wall,
        "peak_rss_mb": memory.peak_mb,  # this process and the scan's feature processes together
    }


class BatchClock:
    """When each batch of a scan left the network, and its size (it wraps
    ``WindowPredictor._predict``, which every CPU and GPU path of a scan goes through)."""

    def __enter__(self) -> BatchClock:
        from fieldmon.scan.predictor import WindowPredictor

        self.batches: list[tuple[float, int]] = []
        self._original = WindowPredictor._predict
        clock = self

        def timed(predictor, features):
            result = clock._original(predictor, features)
            clock.batches.append((time.perf_counter(), len(features)))
            return result

        WindowPredictor._predict = timed
        return self

    def __exit__(self, *exc) -> None:
        from fieldmon.scan.predictor import WindowPredictor

        WindowPredictor._predict = self._original

    def steady_rate(self) -> float:
        """Windows/s from the end of the first batch to the end of the last."""
        (first, _), (last, _) = self.batches[0], self.batches[-1]
        return sum(n for _, n in self.batches[1:]) / (last - first)


def rate(windows: int, seconds: float) -> float:
    return windows / seconds


def stage_rates(audio: Path, model: str, device: str, precision: str, sample_windows: int = 256,
                batch_size: int = 64, workers: int = 2) -> dict:
    """Each stage alone, in windows/s of the model's 2 s windows: decode, resample,
    features and CNN on all cores, and the two stages of a CPU scan's pipeline as it
    runs them (``_pipeline_stage_rates``)."""
    import soxr
    import torch

    from fieldmon import FeatureExtractor, load_model
    from fieldmon.audio import cut_windows
    from fieldmon.recorder import RecorderInfo
    from fieldmon.scan.rows import window_rows

    bundle = load_model(model, precision).to(device).eval()
    fs = bundle.feature_settings
    info = sf.info(str(audio))
    total_windows = int(info.duration // fs.window_seconds)
    start = time.perf_counter()
    with sf.SoundFile(audio) as f:
        blocks = [b for b in f.blocks(blocksize=int(30 * f.samplerate), dtype="float32")]
    decode = time.perf_counter() - start
    start = time.perf_counter()
    stream = soxr.ResampleStream(info.samplerate, fs.sample_rate, 1, dtype="float32", quality="HQ")
    resampled = np.concatenate([stream.resample_chunk(b, last=i == len(blocks) - 1) for i, b in enumerate(blocks)])
    resample = time.perf_counter() - start
    windows = cut_windows(resampled[: sample_windows * fs.window_samples], fs.window_samples, fs.window_samples)
    sample_windows = len(windows.starts)
    del blocks, resampled
    extractor = FeatureExtractor(fs, torch.device(device))
    batches = range(0, sample_windows, batch_size)
    extractor(windows.samples[:batch_size])  # compile and warm up
    _wait_for(device)
    start = time.perf_counter()
    features = torch.cat([extractor(windows.samples[i : i + batch_size]) for i in batches])
    _wait_for(device)
    feature_s = time.perf_counter() - start
    with torch.inference_mode():
        bundle.predict(features[:batch_size], fs)
        _wait_for(device)
        start = time.perf_counter()
        predictions = [bundle.predict(features[i : i + batch_size], fs) for i in batches]
        _wait_for(device)
        cnn = time.perf_counter() - start
    probabilities = torch.cat([p.probabilities for p in predictions]).cpu().numpy()
    scores = torch.cat([p.open_set_scores for p in predictions]).cpu().numpy() if bundle.open_set else None
    import pyarrow as pa
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:  # the first write pays for pyarrow's set-up
        pq.write_table(pa.table({"x": [1]}), Path(tmp) / "warm.parquet")
    start = time.perf_counter()
    columns = window_rows("bench.wav", RecorderInfo(None, None, "bench", None), windows.starts, windows.partial, probabilities,
                          scores, bundle.open_set.threshold if bundle.open_set else None, bundle.class_names,
                          fs.sample_rate, fs.window_seconds, 3, bundle.model_id)
    with tempfile.TemporaryDirectory() as tmp:
        pq.write_table(pa.table(columns), Path(tmp) / "part.parquet")
    write = time.perf_counter() - start
    pipeline = _pipeline_stage_rates(audio, model, device, precision, batch_size, workers)
    return {
        **pipeline,
        "decode_windows_per_s": rate(total_windows, decode),
        "resample_windows_per_s": rate(total_windows, resample),
        "features_windows_per_s": rate(sample_windows, feature_s),
        "cnn_windows_per_s": rate(sample_windows, cnn),
        "cnn_audio_hours_per_second": rate(sample_windows, cnn) * fs.window_seconds / 3600,
        "write_windows_per_s": rate(sample_windows, write),
    }


def _pipeline_stage_rates(audio: Path, model: str, device: str, precision: str, batch_size: int,
                          workers: int) -> dict:
    """On a CPU a scan runs two stages side by side: a feature process (decode, resample,
    features of one file, one thread) and the network in the scan's process (the cores
    the feature processes leave). Each alone, over the whole file, as the scan runs it."""
    if device != "cpu":
        return {}
    import numba
    import torch

    from fieldmon import load_model
    from fieldmon.features import hpss_mel
    from fieldmon.scan.decoding import DecodedFile, decode_windows
    from fieldmon.scan.discovery import discover
    from fieldmon.scan.feature_workers import WINDOWS_PER_MESSAGE, cores

    saved = numba.get_num_threads(), torch.get_num_threads()
    numba.set_num_threads(1)
    torch.set_num_threads(max(1, cores() - workers))
    try:
        bundle = load_model(model, precision).eval()  # ONNX Runtime takes torch's thread count now
        fs = bundle.feature_settings
        (recording,), _ = discover(audio)
        start = time.perf_counter()
        features = [hpss_mel(w.samples, fs) for w in decode_windows(
            DecodedFile(recording), fs.sample_rate, fs.window_samples, fs.window_samples, None, None,
            batch=WINDOWS_PER_MESSAGE)]
        feature_process = time.perf_counter() - start
        features = np.concatenate(features)
        with torch.inference_mode():
            bundle.predict(torch.from_numpy(features[:batch_size]), fs)
            start = time.perf_counter()
            for i in range(0, len(features), batch_size):
                bundle.predict(torch.from_numpy(features[i : i + batch_size]), fs)
            network = time.perf_counter() - start
    finally:
        numba.set_num_threads(saved[0])
        torch.set_num_threads(saved[1])
    return {"feature_process_windows_per_s": rate(len(features), feature_process),
            "network_beside_workers_windows_per_s": rate(len(features), network),
            "network_threads": max(1, cores() - workers)}


ROUND_KEYS = ("windows_per_s", "steady_windows_per_s", "end_to_end_over_slowest_stage", "steady_over_slowest_stage")


def throughput_round(audio: Path, model: str, precision: str, args, work: Path) -> dict:
    """The stages alone, then the scan, of one precision."""
    stages = stage_rates(audio, model, args.device, precision, args.stage_windows, args.batch_size, args.workers)
    scan_result = run_scan(audio, model, args.device, work / f"throughput_{precision}.parquet", precision,
                           args.batch_size, args.workers)
    scan_result["end_to_end_over_cnn"] = scan_result["windows_per_s"] / stages["cnn_windows_per_s"]
    if "feature_process_windows_per_s" in stages:
        slowest = min(stages["feature_process_windows_per_s"], stages["network_beside_workers_windows_per_s"])
        scan_result["end_to_end_over_slowest_stage"] = scan_result["windows_per_s"] / slowest
        scan_result["steady_over_slowest_stage"] = scan_result["steady_windows_per_s"] / slowest
    for old in work.glob(f"throughput_{precision}.*parquet"):  # the next round scans afresh
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
    return {**stages, "scan": scan_result}


def median_of(rounds: list[dict]) -> dict:
    """Each number the median over the rounds (nested dicts alike); other values from the first."""
    out = {}
    for key, value in rounds[0].items():
        if isinstance(value, dict):
            out[key] = median_of([r[key] for r in rounds])
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(np.median([r[key] for r in rounds]))
        else:
            out[key] = value
    return out


def _wait_for(device: str) -> None:
    """CUDA runs asynchronously: a timer must wait for the work it measures."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _device_name(device: str) -> str:
    import torch

    if torch.device(device).type == "cuda":
        return f"{device}: {torch.cuda.get_device_name(torch.device(device))}"
    return device


def birdnet(peer: str, audio: Path) -> dict:
    child = subprocess.run([peer, str(audio)], check=True, capture_output=True, text=True)
    line = next(x for x in child.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def whole_processes(audio: Path, model: str, precisions: list[str], peer: str, repeats: int, work: Path) -> dict:
    fieldmon = str(Path(sys.executable).with_name("fieldmon"))
    commands = {p: [fieldmon, "scan", str(audio), "--out", str(work / f"process_{p}.parquet"), "--model", model,
                    "--precision", p, "--quiet"] for p in precisions}
    commands["birdnet"] = [peer, str(audio)]
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(repeats):
        for name, command in commands.items():
            for old in work.glob(f"process_{name}.*parquet"):  # an existing output would skip the file
                shutil.rmtree(old)
            start = time.perf_counter()
            child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            with TreeMemory(child.pid) as memory:
                _, stderr = child.communicate()
            wall = time.perf_counter() - start
            if child.returncode != 0:
                raise RuntimeError(f"{name} failed: {stderr[-2000:]}")
            runs[name].append((wall, memory.peak_mb))
    result = {"audio_s": sf.info(str(audio)).duration, "repeats": repeats}
    for name, values in runs.items():
        result[name] = {"wall_s": [w for w, _ in values], "median_wall_s": float(np.median([w for w, _ in values])),
                        "peak_rss_mb": max(m for _, m in values)}
    for name in precisions:
        result[name]["speed_over_birdnet"] = result["birdnet"]["median_wall_s"] / result[name]["median_wall_s"]
    return result


def memory_by_files(audio: Path, model: str, precisions: list[str], counts: list[int], work: Path) -> dict:
    """Peak memory of the whole `fieldmon scan DIR` process tree (default settings) over
    folders of 1, 6, 12 ... copies of ``audio`` (hard links: no disk used)."""
    fieldmon = str(Path(sys.executable).with_name("fieldmon"))
    result: dict = {}
    for count in counts:
        folder = work / f"files_{count}"
        folder.mkdir(exist_ok=True)
        for i in range(count):
            if not (folder / f"copy{i}.wav").exists():
                os.link(audio, folder / f"copy{i}.wav")
        for precision in precisions:
            out = work / f"memory_{count}_{precision}.parquet"
            for old in work.glob(f"memory_{count}_{precision}.*parquet"):
                shutil.rmtree(old)
            start = time.perf_counter()
            child = subprocess.Popen([fieldmon, "scan", str(folder), "--out", str(out), "--model", model,
                                      "--precision", precision, "--quiet"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
            with TreeMemory(child.pid) as memory:
                _, stderr = child.communicate()
            if child.returncode != 0:
                raise RuntimeError(f"{count} files, {precision} failed: {stderr[-2000:]}")
            result.setdefault(precision, {})[str(count)] = {"peak_rss_mb": memory.peak_mb,
                                                            "wall_s": time.perf_counter() - start}
    return result


def print_table(result: dict) -> None:
    precisions = [k for k in PRECISIONS if k in result]
    rows = [("feature process", "feature_process_windows_per_s"),
            ("network beside it", "network_beside_workers_windows_per_s"),
            ("decode", "decode_windows_per_s"), ("resample", "resample_windows_per_s"),
            ("features", "features_windows_per_s"), ("CNN alone", "cnn_windows_per_s"),
            ("write", "write_windows_per_s"), ("CNN alone, h of audio/s", "cnn_audio_hours_per_second")]
    print(f"{'windows/s':<24}" + "".join(f"{p:>12}" for p in precisions))
    for name, key in rows:
        if not all(key in result[p] for p in precisions):
            continue
        print(f"{name:<24}" + "".join(f"{result[p][key]:>12.{3 if 'hours' in key else 1}f}" for p in precisions))
    scans = [result[p]["scan"] for p in precisions]
    for name, key in (("end to end", "windows_per_s"), ("end to end / CNN alone", "end_to_end_over_cnn"),
                      ("end to end / slowest", "end_to_end_over_slowest_stage"),
                      ("steady state", "steady_windows_per_s"),
                      ("steady / slowest", "steady_over_slowest_stage"),
                      ("start-up and commit (s)", "startup_and_commit_s"),
                      ("x real time", "x_real_time"), ("h of audio per minute", "audio_hours_per_minute"),
                      ("h of audio per second", "audio_hours_per_second"),
                      ("peak RSS (MB)", "peak_rss_mb"), ("speed / BirdNET", "speed_over_birdnet")):
        if all(key in s for s in scans):
            print(f"{name:<24}" + "".join(f"{s[key]:>12.{3 if 'second' in key else 2}f}" for s in scans))
    if "birdnet" in result:
        peer = result["birdnet"]
        print(f"BirdNET: {peer['t_predict_s']} s for {peer['audio_s'] / 3600:.2f} h "
              f"({peer['windows_per_s_predict']} windows of 3 s per s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["throughput", "memory", "process", "one"])
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--short-min", type=float, default=10.0)
    parser.add_argument("--long-hours", type=float, default=10.0)
    parser.add_argument("--sample-rate", type=int, default=48000)
    parser.add_argument("--precision", default="fp32", help="comma-separated: " + ",".join(PRECISIONS))
    parser.add_argument("--batch-size", type=int, default=None, help="default: the scan's (16 on a CPU, 64 on a GPU)")
    parser.add_argument("--workers", type=int, default=None,
                        help="feature processes (GPU: decoding threads) of the scan; default: the scan's")
    parser.add_argument("--stage-windows", type=int, default=256, help="windows timed per stage")
    parser.add_argument("--birdnet", default=None, help="path of ../shared/tools/birdnet-peer")
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--audio", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=None,
                        help="process: runs of each command (default 3); throughput: rounds, each number "
                             "then the median over them (default 1)")
    parser.add_argument("--memory-files", default=None,
                        help="process: also the peak memory of scanning folders of this many copies, e.g. 1,6,12")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fieldmon-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    if args.mode == "one":  # a child process of `memory`
        print(json.dumps(run_scan(args.audio, args.model, args.device, work / f"{args.audio.stem}.parquet")))
        return
    if args.mode == "process":
        if not args.birdnet:
            parser.error("process needs --birdnet")
        audio = synthetic_recording(work / f"synthetic_{args.short_min:g}min.wav", args.short_min * 60, args.sample_rate)
        result = whole_processes(audio, args.model or "default", args.precision.split(","), args.birdnet,
                                 args.repeats or 3, work)
        if args.memory_files:
            result["memory_by_files"] = memory_by_files(audio, args.model or "default", args.precision.split(","),
                                                        [int(n) for n in args.memory_files.split(",")], work)
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return
    model = args.model or str(tiny_model(work))
    if args.workers is None:
        from fieldmon.scan.feature_workers import default_workers

        args.workers = default_workers(args.device == "cpu")
    if args.batch_size is None:
        from fieldmon.scan.pipeline import default_batch_size

        args.batch_size = default_batch_size(args.device)
    if args.mode == "throughput":
        import torch

        audio = synthetic_recording(work / f"synthetic_{args.hours:g}h.wav", args.hours * 3600, args.sample_rate)
        result = {"mode": "throughput", "model": args.model or "small test network", "device": _device_name(args.device),
                  "batch_size": args.batch_size, "workers": args.workers,
                  "sample_rate": args.sample_rate, "torch_threads": torch.get_num_threads()}
        precisions = args.precision.split(",")
        rounds: dict[str, list[dict]] = {p: [] for p in precisions}
        for _ in range(args.repeats or 1):  # in turns, so that a slow spell of the machine hits every precision
            for precision in precisions:
                rounds[precision].append(throughput_round(audio, model, precision, args, work))
        for precision in precisions:
            result[precision] = median_of(rounds[precision])
            result[precision]["scan"]["rounds"] = [{k: r["scan"][k] for k in ROUND_KEYS if k in r["scan"]}
                                                   for r in rounds[precision]]
        if args.birdnet:
            peer = birdnet(args.birdnet, audio)
            result["birdnet"] = peer
            for precision in args.precision.split(","):
                result[precision]["scan"]["speed_over_birdnet"] = (
                    peer["t_predict_s"] / result[precision]["scan"]["wall_s"])
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
    if args.mode == "throughput":
        print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
