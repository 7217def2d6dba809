"""``fieldmon.scan``: recordings in, per-window detections out.

The local engine, with feature processes (``feature_workers``; by default for the
precisions on ONNX Runtime): they decode, resample and compute the features of one file
at a time each, and send them in small batches over a pipe, so memory stays flat and the
features overlap with the network. Otherwise decoding threads (libsndfile and soxr
release the GIL) push windows into a bounded queue and the features are computed in this
process, on the GPU when the scan runs there. Either way the main thread
gathers windows from many files into model batches, runs the network, and hands the
results to the collector, which commits finished files in crash-safe parts.
``engine="ray"`` runs the same stages on a Ray cluster (``ray_engine``).
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fieldmon.model.loading import PRECISIONS, load_model, model_identity
from fieldmon.model.metadata import INT8_SUFFIX
from fieldmon.outputs.store import DetectionStore
from fieldmon.scan.decoding import DecodedFile, decode_windows
from fieldmon.scan.discovery import Recording
from fieldmon.scan.feature_workers import FeatureWorkers, cores, default_workers
from fieldmon.scan.options import RayOptions, RunOptions, uses_feature_processes
from fieldmon.scan.stages import (
    EXIT_ERROR, EXIT_FILES_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, ScanCollector, ScanProgress,
    ScanSettings, ScanSummary, WindowPredictions, past, plan_scan, scan_key, scan_metadata,
)
from fieldmon.signals import StopRequest

if TYPE_CHECKING:
    from fieldmon.model.bundle import ModelBundle
    from fieldmon.scan.predictor import WindowPredictor

# A batch runs through the network in chunks of this many windows, with the --time-limit
# checked between them (a default batch is one chunk).
DEADLINE_CHECK_WINDOWS = 256
# Windows per batch unless --batch-size says otherwise. On a CPU, 16 gave both the lowest
# peak memory and the fastest scan of a 10-minute file (README, "Speed and memory"); a
# GPU wants larger batches to stay busy.
CPU_BATCH_SIZE, GPU_BATCH_SIZE = 16, 64

__all__ = ["EXIT_ERROR", "EXIT_FILES_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "RayOptions", "RunOptions",
           "ScanProgress", "ScanSettings", "ScanSummary", "scan", "scan_key"]


def scan(
    root: str | Path,
    out: str | Path,
    model: str | Path | ModelBundle = "default",
    settings: ScanSettings = ScanSettings(),
    options: RunOptions = RunOptions(),
    progress: ScanProgress | None = None,
    feature_workers: FeatureWorkers | None = None,
) -> ScanSummary:
    """Scan ``root`` into ``out``. ``feature_workers``: feature processes started
    earlier (``FeatureWorkers(n)``) for the scan to use; a scan that does not use them
    (``options.uses_feature_processes``) closes them, and one that does without them
    starts its own."""
    try:
        return _scan(root, out, model, settings, options, progress or ScanProgress(), feature_workers)
    finally:
        if feature_workers is not None:
            feature_workers.close()  # a no-op when the engine took them over and closed them


def _scan(root, out, model, settings: ScanSettings, options: RunOptions, progress: ScanProgress,
          workers: FeatureWorkers | None) -> ScanSummary:
    started = time.monotonic()
    tz = settings.zone()
    if options.engine not in ("local", "ray"):
        raise ValueError(f"unknown engine {options.engine!r}: use local or ray")
    given = None if isinstance(model, (str, os.PathLike)) else model  # a loaded ModelBundle
    if options.engine == "ray" and given is not None:
        raise ValueError("the Ray engine loads the model on its workers: pass the model's name or path")
    if given is not None and options.precision == "int8" and not given.model_id.endswith(INT8_SUFFIX):
        raise ValueError("precision int8 needs the model by path, or a bundle from load_model(path, 'int8')")
    on_onnx = PRECISIONS.get(options.precision) == "cpu"
    if on_onnx and options.device == "cuda":
        raise ValueError(f"--precision {options.precision} runs on the CPU; use --device cpu "
                         "(on a GPU, use fp32, bf16 or fp16)")
    # The precisions on ONNX Runtime run on the CPU: what to scan is planned from
    # model.json, and torch imported only to load the weights after that, so that feature
    # processes start on it at once. Other precisions let torch place the scan first, so
    # that a refused device leaves no output behind.
    processes = uses_feature_processes(options)
    device = None if on_onnx else _device(options)
    if options.workers is None:
        options = replace(options, workers=default_workers(processes))
    model_id, features = (given.model_id, given.feature_settings) if given is not None else model_identity(
        model, options.precision)
    meta = scan_metadata(model_id, settings, root)
    summary = ScanSummary()
    with DetectionStore(out, scan_key(model_id, settings), meta) as store, contextlib.ExitStack() as threads:
        summary.retimed = store.retimed  # the output was in another --tz: its rows now are in this one
        plan = plan_scan(root, store, summary)
        task = {"features": features.to_dict(), "hop": round(settings.hop_seconds * features.sample_rate),
                "channel": settings.channel, "tz": settings.tz}
        if processes:
            workers = workers or FeatureWorkers(options.workers)
            workers.hand_out(plan.todo, task)
            # The network gets the cores the workers leave; ONNX Runtime takes its thread
            # count from torch's when the model is loaded.
            threads.enter_context(_torch_threads(max(1, cores() - options.workers)))
        bundle = given if given is not None else load_model(model, options.precision)
        device = device or _device(options)
        if options.batch_size is None:
            options = replace(options, batch_size=default_batch_size(device))
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
            from fieldmon.scan.predictor import WindowPredictor
            from fieldmon.tuning import keep_freed_memory

            if device.type == "cpu" and options.keep_freed_memory:
                keep_freed_memory()
            _LocalEngine(WindowPredictor(bundle, device), settings, options, tz, collector, deadline,
                         workers if processes else None).run(plan.todo)
        collector.commit()
    summary.wall_seconds = time.monotonic() - started
    return summary


@contextlib.contextmanager
def _torch_threads(count: int):
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _device(options: RunOptions):
    from fieldmon.tuning import resolve_device

    on_onnx = PRECISIONS.get(options.precision) == "cpu"
    device = resolve_device("cpu" if on_onnx and options.device == "auto" else options.device)
    if PRECISIONS.get(options.precision) == "cuda" and device.type != "cuda" and options.engine == "local":
        raise ValueError(f"--precision {options.precision} is for GPUs, and this scan runs on the CPU; "
                         "there, use fp32-onnx or int8")
    return device


def default_batch_size(device) -> int:
    """Windows per batch on ``device`` (a torch.device or its name)."""
    kind = getattr(device, "type", str(device).split(":")[0])
    return GPU_BATCH_SIZE if kind == "cuda" else CPU_BATCH_SIZE


class _LocalEngine:
    """Gathers the windows of many files into model batches, runs them through the
    network and hands the results to the collector. With feature processes
    (``feature_workers``) the windows arrive as features; otherwise as samples from
    decoding threads, and the features are computed here, on the scan's device."""

    def __init__(self, predictor: WindowPredictor, settings: ScanSettings, options: RunOptions, tz,
                 collector: ScanCollector, deadline: float | None, workers: FeatureWorkers | None) -> None:
        self.predictor = predictor
        self.settings = settings
        self.options = options
        self.tz = tz
        self.collector = collector
        self.deadline = deadline
        self.workers = workers
        fs = predictor.bundle.feature_settings
        self.feature_settings = fs
        self.hop = round(settings.hop_seconds * fs.sample_rate)
        self.batch: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []  # relative, starts, partial, values
        self.batch_windows = 0

    def run(self, todo: list[Recording]) -> None:
        with StopRequest() as stop:
            if self.workers is None:
                self._run_with_threads(todo, stop)
            else:
                self._run_with_workers(stop)
            if not self.collector.summary.interrupted and self.batch:
                self._run_batch()

    def _stopping(self, stop: StopRequest) -> bool:
        if stop.requested or past(self.deadline):
            self.collector.summary.interrupted = True
        return self.collector.summary.interrupted

    def _add(self, relative: str, starts: np.ndarray, partial: np.ndarray, values: np.ndarray) -> None:
        self.batch.append((relative, starts, partial, values))
        self.batch_windows += len(starts)
        if self.batch_windows >= self.options.batch_size:
            self._run_batch()

    def _run_with_workers(self, stop: StopRequest) -> None:
        while self.workers.alive and not self._stopping(stop):
            idle = True
            for message in self.workers.messages(timeout=0.05):
                idle = False
                if message[0] == "windows":
                    self._add(*message[1:])
                else:
                    self.collector.file_decoded(message[1])
            if idle and self.batch:
                self._run_batch()

    def _run_with_threads(self, todo: list[Recording], stop: StopRequest) -> None:
        items: queue.Queue = queue.Queue(maxsize=4 * max(1, self.options.workers))
        stop_decoding = threading.Event()
        next_file = iter(todo)
        lock = threading.Lock()
        fs = self.feature_settings

        def worker() -> None:
            while not stop_decoding.is_set():
                with lock:
                    rec = next(next_file, None)
                if rec is None:
                    return
                decoded = DecodedFile(rec)
                for windows in decode_windows(decoded, fs.sample_rate, fs.window_samples, self.hop,
                                              self.settings.channel, self.tz, stop_decoding.is_set):
                    items.put(("windows", decoded, windows))
                items.put(("done", decoded, None))

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, self.options.workers))]
        for t in threads:
            t.start()
        while not self._stopping(stop):
            try:
                kind, decoded, windows = items.get(timeout=0.05)
            except queue.Empty:
                if self.batch:
                    self._run_batch()
                elif not any(t.is_alive() for t in threads) and items.empty():
                    break
                continue
            if kind == "windows":
                self._add(decoded.recording.relative, windows.starts, windows.partial, windows.samples)
            else:
                self.collector.file_decoded(decoded)
        stop_decoding.set()
        while any(t.is_alive() for t in threads):  # unblock workers waiting on a full queue
            try:
                items.get(timeout=0.05)
            except queue.Empty:
                pass

    def _run_batch(self) -> None:
        values = np.concatenate([v for *_, v in self.batch])
        predict = self.predictor if self.workers is None else self.predictor.from_features
        parts = []
        for start in range(0, len(values), DEADLINE_CHECK_WINDOWS):
            if past(self.deadline):
                # --time-limit holds inside a large batch too: the batch is dropped, and its
                # files, not yet finished, are scanned again by the next run.
                self.collector.summary.interrupted = True
                self.batch, self.batch_windows = [], 0
                return
            parts.append(predict(values[start:start + DEADLINE_CHECK_WINDOWS]))
        predictions = WindowPredictions.concatenate(parts)
        i = 0
        for relative, starts, partial, _ in self.batch:
            n = len(starts)
            self.collector.add_windows(relative, starts, partial, predictions.slice(i, i + n))
            i += n
        self.batch, self.batch_windows = [], 0
