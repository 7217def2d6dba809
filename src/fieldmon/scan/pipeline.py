"""``fieldmon.scan``: recordings in, per-window detections out.

Decoding runs in worker threads (libsndfile and soxr release the GIL), each pushing
batches of windows of one file into a bounded queue, so memory stays flat and the
model never waits for audio. The main thread gathers windows from many files into
model batches, runs features, CNN, MLP and open-set scoring on the device, and
hands each finished file's rows to the store, which commits them in crash-safe parts.
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import torch

from fieldmon.audio import AudioReadError, WindowBatch, open_sound, stream_windows
from fieldmon.features import FeatureExtractor
from fieldmon.model.bundle import ModelBundle, load_model
from fieldmon.outputs.store import DetectionStore
from fieldmon.recorder import RecorderInfo, recorder_info
from fieldmon.scan.discovery import Recording, discover
from fieldmon.scan.rows import concat_columns, detection_schema, file_schema, output_metadata, window_rows
from fieldmon.signals import StopRequest
from fieldmon.tuning import keep_freed_memory, resolve_device

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_FILES_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


@dataclass(frozen=True)
class ScanSettings:
    hop_seconds: float = 2.0
    channel: int | None = None  # None: downmix
    top_k: int = 3
    min_score: float = 0.0  # 0 keeps every window, so absence is recorded too
    embeddings: bool = False
    tz: str | None = None  # IANA zone of recorders that name files in local time

    def key_fields(self) -> dict:
        return asdict(self)


@dataclass
class RunOptions:
    device: str = "auto"
    batch_size: int = 64
    workers: int = 2
    commit_every_files: int = 200
    commit_every_seconds: float = 60.0
    keep_freed_memory: bool = False
    precision: str = "fp32"  # "int8": quantised trunk on ONNX Runtime, CPU only


@dataclass
class ScanSummary:
    files_found: int = 0
    files_skipped: int = 0  # already in the output, unchanged
    files_ok: int = 0
    files_failed: int = 0
    windows: int = 0
    rows: int = 0
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    interrupted: bool = False
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FILES_FAILED if self.files_failed else EXIT_OK


class ScanProgress:
    """Receives progress events; the CLI renders them."""

    def start(self, files: int, total_bytes: int, skipped: int) -> None: ...
    def file_done(self, relative: str, ok: bool, audio_seconds: float, size: int, error: str | None) -> None: ...


@dataclass
class _FileState:
    recording: Recording
    info: RecorderInfo | None = None
    sample_rate: int | None = None
    channels: int | None = None
    produced: int = 0
    processed: int = 0
    decoded_samples: int | None = None  # set by the decoder when it reached the end
    finished: bool = False  # the main thread saw the decoder's "done"
    completed: bool = False
    error: str | None = None
    columns: list = field(default_factory=list)


def scan_key(model_id: str, settings: ScanSettings) -> str:
    text = json.dumps({"model_id": model_id, **settings.key_fields()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
    tz = _zone(settings.tz)
    int8 = options.precision == "int8"
    device = resolve_device("cpu" if int8 and options.device == "auto" else options.device)
    if int8 and device.type != "cpu":
        raise ValueError("--precision int8 runs on the CPU; use --device cpu (on a GPU, fp32 is the fast path)")
    if isinstance(model, ModelBundle):
        if int8 and not model.model_id.endswith("+int8"):
            raise ValueError("precision int8 needs the model by path, or a bundle from load_model(path, 'int8')")
        bundle = model
    else:
        bundle = load_model(model, options.precision)
    if device.type == "cpu" and options.keep_freed_memory:
        keep_freed_memory()
    bundle.to(device).eval()
    recordings, listing_problems = discover(root)
    meta = {**output_metadata(bundle.model_id, settings.key_fields()), "root": str(Path(root).resolve())}
    summary = ScanSummary(files_found=len(recordings))
    with DetectionStore(out, scan_key(bundle.model_id, settings), meta) as store:
        done = store.done_files()
        todo = [r for r in recordings if not _unchanged(done.get(r.relative), r)]
        # Rows of files scanned again (changed, or failed last time) are replaced, not duplicated.
        rescanned = {r.relative for r in todo} | {relative for relative, _ in listing_problems}
        store.forget(rescanned & set(done), done)
        summary.files_skipped = len(recordings) - len(todo)
        progress.start(len(todo), sum(r.size for r in todo), summary.files_skipped)
        runner = _Runner(bundle, device, settings, options, tz, store, meta, summary, progress)
        for relative, problem in listing_problems:
            runner.record_listing_problem(relative, problem)
        runner.run(todo)
    summary.wall_seconds = time.monotonic() - started
    return summary


def _zone(name: str | None) -> ZoneInfo | None:
    if name is None:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"--tz {name!r} is not a known time zone (use an IANA name such as Europe/Berlin)") from exc


def _unchanged(record, recording: Recording) -> bool:
    return record is not None and record.status == "ok" and (record.size, record.mtime_ns) == (
        recording.size, recording.mtime_ns)


class _Runner:
    def __init__(self, bundle, device, settings, options, tz, store, meta, summary, progress) -> None:
        self.bundle: ModelBundle = bundle
        self.device = device
        self.settings: ScanSettings = settings
        self.options: RunOptions = options
        self.tz = tz
        self.store: DetectionStore = store
        self.summary: ScanSummary = summary
        self.progress: ScanProgress = progress
        fs = bundle.feature_settings
        self.features = FeatureExtractor(fs, device)
        self.window = fs.window_samples
        self.hop = round(settings.hop_seconds * fs.sample_rate)
        emb_dim = bundle.network.settings.embedding_dim if settings.embeddings and bundle.network.is_embedding else None
        self.top_k = min(settings.top_k, len(bundle.class_names))
        self.detection_schema = detection_schema(self.top_k, emb_dim, meta)
        self.file_schema = file_schema(meta)
        self.pending_files: list[_FileState] = []
        self.pending_detections: list[dict] = []
        self.last_commit = time.monotonic()
        self.batch: list[tuple[_FileState, WindowBatch]] = []
        self.batch_windows = 0

    # -- decoding (worker threads) -------------------------------------------

    def _decode(self, state: _FileState, out: queue.Queue, stop: threading.Event) -> None:
        rec = state.recording
        try:
            with open_sound(rec.path) as sound:
                state.sample_rate, state.channels = sound.samplerate, sound.channels
            state.info = recorder_info(rec.path, self.tz)
            stream = stream_windows(rec.path, self.bundle.feature_settings.sample_rate, self.window, self.hop,
                                    self.settings.channel)
            while not stop.is_set():
                try:
                    batch = next(stream)
                except StopIteration as end:
                    state.decoded_samples = end.value
                    if end.value == 0:
                        state.error = "the file holds no audio samples"
                    break
                state.produced += len(batch.starts)
                out.put(("windows", state, batch))
        except AudioReadError as exc:
            state.error = exc.problem
        except Exception as exc:  # one bad file must never stop a run over thousands
            state.error = f"cannot decode audio ({type(exc).__name__}: {exc})"
        out.put(("done", state, None))

    # -- the main loop -----------------------------------------------------------

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
                self._decode(_FileState(rec), items, stop_decoding)

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, self.options.workers))]
        with StopRequest() as stop:
            for t in threads:
                t.start()
            while True:
                if stop.requested:
                    self.summary.interrupted = True
                    break
                try:
                    kind, state, batch = items.get(timeout=0.05)
                except queue.Empty:
                    if self.batch:
                        self._run_batch()
                    elif not any(t.is_alive() for t in threads) and items.empty():
                        break
                    continue
                if kind == "windows":
                    self.batch.append((state, batch))
                    self.batch_windows += len(batch.starts)
                    if self.batch_windows >= self.options.batch_size:
                        self._run_batch()
                else:
                    self._file_finished(state)
            stop_decoding.set()
            while any(t.is_alive() for t in threads):  # unblock workers waiting on a full queue
                try:
                    items.get(timeout=0.05)
                except queue.Empty:
                    pass
            if not self.summary.interrupted and self.batch:
                self._run_batch()
            self._commit()

    def _run_batch(self) -> None:
        windows = np.concatenate([b.samples for _, b in self.batch])
        x = torch.from_numpy(windows)
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        with torch.inference_mode():
            prediction = self.bundle.predict(self.features(x), self.bundle.feature_settings)
        probabilities = prediction.probabilities.float().cpu().numpy()
        scores = None if prediction.open_set_scores is None else prediction.open_set_scores.float().cpu().numpy()
        embeddings = None if prediction.embeddings is None else prediction.embeddings.float().cpu().numpy()
        i = 0
        for state, batch in self.batch:
            n = len(batch.starts)
            sl = slice(i, i + n)
            self._add_rows(state, batch, probabilities[sl], None if scores is None else scores[sl],
                           None if embeddings is None else embeddings[sl])
            state.processed += n
            i += n
            if state.finished and state.processed == state.produced:
                self._file_complete(state)
        self.batch, self.batch_windows = [], 0

    def _add_rows(self, state, batch, probabilities, scores, embeddings) -> None:
        fs = self.bundle.feature_settings
        threshold = self.bundle.open_set.threshold if self.bundle.open_set is not None else None
        keep = probabilities.max(axis=1) >= self.settings.min_score
        if not keep.any():
            return
        columns = window_rows(
            state.recording.relative, state.info, batch.starts[keep], batch.partial[keep], probabilities[keep],
            None if scores is None else scores[keep], threshold, self.bundle.class_names, fs.sample_rate,
            fs.window_seconds, self.top_k, self.bundle.model_id,
            embeddings[keep] if embeddings is not None and self.settings.embeddings else None,
        )
        state.columns.append(columns)

    def _file_finished(self, state: _FileState) -> None:
        """Decoding of ``state`` ended; it is complete once its last windows ran."""
        state.finished = True
        if state.error is not None or state.processed == state.produced:
            self._file_complete(state)

    def _file_complete(self, state: _FileState) -> None:
        if state.completed:  # a failed file's last windows may still come out of a batch
            return
        state.completed = True
        rec = state.recording
        ok = state.error is None
        seconds = (state.decoded_samples or 0) / self.bundle.feature_settings.sample_rate
        if ok:
            self.summary.files_ok += 1
            self.summary.windows += state.produced
            self.summary.audio_seconds += seconds
            self.pending_detections.extend(state.columns)
        else:
            self.summary.files_failed += 1
            self.summary.failures.append((rec.relative, state.error))
        self.pending_files.append(self._file_row(state, ok, seconds))
        state.columns = []
        self.progress.file_done(rec.relative, ok, seconds, rec.size, state.error)
        if (len(self.pending_files) >= self.options.commit_every_files
                or time.monotonic() - self.last_commit >= self.options.commit_every_seconds):
            self._commit()

    def _file_row(self, state: _FileState, ok: bool, seconds: float) -> dict:
        rec, info = state.recording, state.info
        return self._file_record(
            rec.relative, site=info.site if info else rec.path.parent.name, size=rec.size, mtime_ns=rec.mtime_ns,
            status="ok" if ok else "failed", error=state.error, duration_s=seconds if ok else None,
            sample_rate=state.sample_rate, channels=state.channels,
            recorder_start_utc=info.utc_start if info else None,
            recorder_start_local=info.local_start if info else None,
            time_source=info.time_source if info else None, windows=state.produced if ok else 0,
        )

    def _file_record(self, path: str, **fields) -> dict:
        """One row of the per-file table, as single-item columns; absent fields are null."""
        row = {name: [None] for name in self.file_schema.names}
        row.update({"path": [path], "windows": [0], "model_id": [self.bundle.model_id],
                    "scanned_at": [time.time_ns() // 1_000_000_000]})
        row.update({name: [value] for name, value in fields.items()})
        return row

    def record_listing_problem(self, relative: str, problem: str) -> None:
        self.summary.files_failed += 1
        self.summary.failures.append((relative, problem))
        self.pending_files.append(self._file_record(relative, status="failed", error=problem))

    def _commit(self) -> None:
        if not self.pending_files:
            return
        detections = concat_columns(self.pending_detections, self.detection_schema) if self.pending_detections else None
        files = concat_columns(self.pending_files, self.file_schema)
        self.store.commit(detections, files)
        self.summary.rows += 0 if detections is None else detections.num_rows
        self.pending_files, self.pending_detections = [], []
        self.last_commit = time.monotonic()

