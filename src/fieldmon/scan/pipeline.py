"""``fieldmon.scan``: recordings in, per-window detections out.

The local engine: decoding runs in worker threads (libsndfile and soxr release the
GIL), each pushing batches of windows of one file into a bounded queue, so memory
stays flat and the model never waits for audio. The main thread gathers windows
from many files into model batches, runs the predictor on the device, and hands the
results to the collector, which commits finished files in crash-safe parts.
``engine="ray"`` runs the same stages on a Ray cluster (``ray_engine``).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from fieldmon.audio import WindowBatch
from fieldmon.model.bundle import ModelBundle
from fieldmon.model.loading import PRECISIONS, load_model
from fieldmon.outputs.store import DetectionStore
from fieldmon.scan.discovery import Recording
from fieldmon.scan.stages import (
    EXIT_ERROR, EXIT_FILES_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, DecodedFile, ScanCollector, ScanProgress,
    ScanSettings, ScanSummary, WindowPredictions, WindowPredictor, decode_windows, past, plan_scan, scan_key,
    scan_metadata,
)
from fieldmon.signals import StopRequest
from fieldmon.tuning import keep_freed_memory, resolve_device

# A batch runs through the network in chunks of this many windows, with the --time-limit
# checked between them (a default batch is one chunk).
DEADLINE_CHECK_WINDOWS = 256
# Windows per batch unless --batch-size says otherwise. On a CPU, 16 gave both the lowest
# peak memory and the fastest scan of a 10-minute file (README, "Speed and memory"); a
# GPU wants larger batches to stay busy.
CPU_BATCH_SIZE, GPU_BATCH_SIZE = 16, 64

__all__ = ["EXIT_ERROR", "EXIT_FILES_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "RayOptions", "RunOptions",
           "ScanProgress", "ScanSettings", "ScanSummary", "scan", "scan_key"]


@dataclass
class RayOptions:
    """Where and how the Ray engine runs; see ``fieldmon.scan.ray_engine``."""

    address: str | None = None  # None: start a private local instance
    num_cpus: int | None = None  # of that local instance; None: all
    temp_dir: str | None = None  # of that local instance; None: OUT/_fieldmon/ray when short enough
    object_store_gb: float = 1.0  # of that local instance
    actors: int | None = None  # model actors; None: one per GPU, or from the CPUs
    actor_cpus: float | None = None  # CPUs reserved per CPU actor; None: chosen from the cluster


@dataclass
class RunOptions:
    device: str = "auto"
    batch_size: int | None = None  # None: default_batch_size(device)
    workers: int = 2
    commit_every_files: int = 200
    commit_every_seconds: float = 60.0
    keep_freed_memory: bool = False
    precision: str = "fp32"  # "int8", "fp32-onnx": the trunk on ONNX Runtime, CPU only (fieldmon.model.int8)
    time_limit_s: float | None = None  # stop cleanly after this long; finished files are kept
    engine: str = "local"  # or "ray"
    ray: RayOptions = field(default_factory=RayOptions)


def scan(
    root: str | Path,
    out: str | Path,
    model: str | Path | ModelBundle = "default",
    settings: ScanSettings = ScanSettings(),
    options: RunOptions = RunOptions(),
    progress: ScanProgress | None = None,
) -> ScanSummary:
    progress = progress or ScanProgress()
    started = time.monotonic()
    tz = settings.zone()
    if options.engine not in ("local", "ray"):
        raise ValueError(f"unknown engine {options.engine!r}: use local or ray")
    if options.engine == "ray" and isinstance(model, ModelBundle):
        raise ValueError("the Ray engine loads the model on its workers: pass the model's name or path")
    on_onnx = PRECISIONS.get(options.precision) == "cpu"
    device = resolve_device("cpu" if on_onnx and options.device == "auto" else options.device)
    if on_onnx and device.type != "cpu":
        raise ValueError(f"--precision {options.precision} runs on the CPU; use --device cpu "
                         "(on a GPU, use fp32, bf16 or fp16)")
    if PRECISIONS.get(options.precision) == "cuda" and device.type != "cuda" and options.engine == "local":
        raise ValueError(f"--precision {options.precision} is for GPUs, and this scan runs on the CPU; "
                         "there, use fp32-onnx or int8")
    if options.batch_size is None:
        options = replace(options, batch_size=default_batch_size(device))
    if isinstance(model, ModelBundle):
        if options.precision == "int8" and not model.model_id.endswith("+int8"):
            raise ValueError("precision int8 needs the model by path, or a bundle from load_model(path, 'int8')")
        bundle = model
    else:
        bundle = load_model(model, options.precision)
    meta = scan_metadata(bundle, settings, root)
    summary = ScanSummary()
    with DetectionStore(out, scan_key(bundle.model_id, settings), meta) as store:
        summary.retimed = store.retimed  # the output was in another --tz: its rows now are in this one
        plan = plan_scan(root, store, summary)
        progress.start(len(plan.todo), sum(r.size for r in plan.todo), summary.files_skipped)
        collector = ScanCollector(bundle, settings, store, meta, summary, progress, options.commit_every_files,
                                  options.commit_every_seconds)
        for relative, problem in plan.listing_problems:
            collector.record_listing_problem(relative, problem)
        deadline = None if options.time_limit_s is None else started + options.time_limit_s
        if options.engine == "ray":
            from fieldmon.scan.ray_engine import run_on_ray

            run_on_ray(plan.todo, model, settings, options, collector, Path(out), deadline)
        else:
            if device.type == "cpu" and options.keep_freed_memory:
                keep_freed_memory()
            _LocalEngine(WindowPredictor(bundle, device), settings, options, tz, collector, deadline).run(plan.todo)
        collector.commit()
    summary.wall_seconds = time.monotonic() - started
    return summary


def default_batch_size(device: torch.device | str) -> int:
    return GPU_BATCH_SIZE if torch.device(device).type == "cuda" else CPU_BATCH_SIZE


class _LocalEngine:
    def __init__(self, predictor: WindowPredictor, settings: ScanSettings, options: RunOptions, tz,
                 collector: ScanCollector, deadline: float | None) -> None:
        self.predictor = predictor
        self.settings = settings
        self.options = options
        self.tz = tz
        self.collector = collector
        self.deadline = deadline
        fs = predictor.bundle.feature_settings
        self.sample_rate = fs.sample_rate
        self.window = fs.window_samples
        self.hop = round(settings.hop_seconds * fs.sample_rate)
        self.batch: list[tuple[DecodedFile, WindowBatch]] = []
        self.batch_windows = 0

    def _decode(self, decoded: DecodedFile, out: queue.Queue, stop: threading.Event) -> None:
        for batch in decode_windows(decoded, self.sample_rate, self.window, self.hop, self.settings, self.tz,
                                    stop.is_set):
            out.put(("windows", decoded, batch))
        out.put(("done", decoded, None))

    def run(self, todo: list[Recording]) -> None:
        items: queue.Queue = queue.Queue(maxsize=4 * max(1, self.options.workers))
        stop_decoding = threading.Event()
        next_file = iter(todo)
        lock = threading.Lock()

        def worker() -> None:
            while not stop_decoding.is_set():
                with lock:
                    rec = next(next_file, None)
                if rec is None:
                    return
                self._decode(DecodedFile(rec), items, stop_decoding)

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, self.options.workers))]
        with StopRequest() as stop:
            for t in threads:
                t.start()
            while True:
                if stop.requested or past(self.deadline):
                    self.collector.summary.interrupted = True
                    break
                try:
                    kind, decoded, batch = items.get(timeout=0.05)
                except queue.Empty:
                    if self.batch:
                        self._run_batch()
                    elif not any(t.is_alive() for t in threads) and items.empty():
                        break
                    continue
                if kind == "windows":
                    self.batch.append((decoded, batch))
                    self.batch_windows += len(batch.starts)
                    if self.batch_windows >= self.options.batch_size:
                        self._run_batch()
                else:
                    self.collector.file_decoded(decoded)
            stop_decoding.set()
            while any(t.is_alive() for t in threads):  # unblock workers waiting on a full queue
                try:
                    items.get(timeout=0.05)
                except queue.Empty:
                    pass
            if not self.collector.summary.interrupted and self.batch:
                self._run_batch()

    def _run_batch(self) -> None:
        samples = np.concatenate([b.samples for _, b in self.batch])
        parts = []
        for start in range(0, len(samples), DEADLINE_CHECK_WINDOWS):
            if past(self.deadline):
                # --time-limit holds inside a large batch too: the batch is dropped, and its
                # files, not yet finished, are scanned again by the next run.
                self.collector.summary.interrupted = True
                self.batch, self.batch_windows = [], 0
                return
            parts.append(self.predictor(samples[start:start + DEADLINE_CHECK_WINDOWS]))
        predictions = WindowPredictions.concatenate(parts)
        i = 0
        for decoded, batch in self.batch:
            n = len(batch.starts)
            self.collector.add_windows(decoded.recording.relative, batch.starts, batch.partial,
                                       predictions.slice(i, i + n))
            i += n
        self.batch, self.batch_windows = [], 0
