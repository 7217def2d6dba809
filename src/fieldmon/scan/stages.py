"""The stages of a scan, shared by every engine so that they cannot drift apart:

    plan_scan        recordings found under the root, less those the output already holds
    decode_windows   one recording -> batches of 2 s windows, and what was learnt about the file
                     (``decoding``; on the CPU, ``feature_workers`` run it with the features)
    WindowPredictor  features + CNN + MLP + open-set scores of a batch of windows (``predictor``)
    ScanCollector    predictions -> detection rows and per-file rows, committed crash-safely

The local engine (``pipeline``) runs decoding and features in worker processes on a CPU,
decoding in threads on a GPU; the Ray engine (``ray_engine``)
runs it in Ray tasks and the predictor in Ray actors. Both hand their results to one
ScanCollector in the process that owns the output.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import numpy as np

from fieldmon.outputs.retime import RetimeResult
from fieldmon.outputs.store import DetectionStore, FileRecord, settings_key
from fieldmon.recorder import parse_zone
from fieldmon.scan.decoding import DecodedFile
from fieldmon.scan.discovery import Recording, discover
from fieldmon.scan.rows import concat_columns, detection_schema, file_schema, output_metadata, window_rows

if TYPE_CHECKING:
    from fieldmon.model.bundle import ModelBundle

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_FILES_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


@dataclass(frozen=True)
class ScanSettings:
    """Settings that change the output; a scan's output records them and refuses others."""

    hop_seconds: float = 2.0
    channel: int | None = None  # None: downmix
    top_k: int = 3
    min_score: float = 0.0  # 0 keeps every window, so absence is recorded too
    embeddings: bool = False
    tz: str | None = None  # IANA zone of recorders that name files in local time

    def key_fields(self) -> dict:
        return asdict(self)

    def zone(self) -> ZoneInfo | None:
        return None if self.tz is None else parse_zone(self.tz)


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
    retimed: RetimeResult | None = None  # the output was in another --tz; its rows were retimed to this one
    model_sample_rate: int = 0
    model_band_hz: float = 0.0  # the top of the band the model sees: its Nyquist frequency or band limit
    low_sample_rates: dict[int, int] = field(default_factory=dict)  # files whose band ends below it, by rate
    files_without_utc: int = 0  # files scanned with a local (wall-clock) time but no zone to make it UTC
    file_warnings: list[tuple[str, str]] = field(default_factory=list)  # (relative path, warning) of ok files

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FILES_FAILED if self.files_failed else EXIT_OK

    def warnings(self, out: str) -> list[str]:
        """One line each for what did not stop the scan but limits its rows."""
        lines = []
        if self.low_sample_rates:
            # resampled up to the model's rate, a file has nothing above half its own rate,
            # where the model learnt to look for sound too
            rates = sorted(self.low_sample_rates)
            n = sum(self.low_sample_rates.values())
            files = f"{n} file is" if n == 1 else f"{n} files are"
            if len(rates) == 1:
                lines.append(f"{files} recorded at {rates[0]} Hz, below the model's {self.model_sample_rate} Hz: "
                             f"bands above {rates[0] / 2:g} Hz are empty")
            else:
                each = ", ".join(f"{self.low_sample_rates[r]} at {r} Hz" for r in rates)
                lines.append(f"{files} recorded below the model's {self.model_sample_rate} Hz ({each}): bands above "
                             f"half a file's rate (from {rates[0] / 2:g} Hz) are empty")
        if self.files_without_utc:
            n = self.files_without_utc
            files = f"{n} file gives" if n == 1 else f"{n} files give"
            lines.append(f"{files} the recorder's local time but no time zone, so start_time (UTC) is empty: "
                         f"fieldmon retime {out} --tz ZONE (an IANA zone such as Europe/Berlin) fills it in; "
                         "then add --tz ZONE to this command")
        if self.file_warnings:
            n = len(self.file_warnings)
            relative, warning = self.file_warnings[0]
            files = "1 file was" if n == 1 else f"{n} files were"
            lines.append(f"{files} scanned with a warning in the per-file table's error column "
                         f"({'' if n == 1 else 'the first: '}{relative}: {warning})")
        return lines


class ScanProgress:
    """Receives progress events; the CLI renders them."""

    def start(self, files: int, total_bytes: int, skipped: int) -> None: ...
    def file_done(self, relative: str, ok: bool, audio_seconds: float, size: int, error: str | None) -> None: ...


def past(deadline: float | None) -> bool:
    """Whether a ``time.monotonic()`` deadline (None: none) has passed."""
    return deadline is not None and time.monotonic() >= deadline


def scan_key(model_id: str, settings: ScanSettings) -> str:
    return settings_key(model_id, settings.key_fields())


# -- planning -------------------------------------------------------------------


@dataclass
class ScanPlan:
    todo: list[Recording]
    listing_problems: list[tuple[str, str]]  # (relative path, problem)


def plan_scan(root: str | Path, store: DetectionStore, summary: ScanSummary) -> ScanPlan:
    """What is left to scan under ``root``. Rows of files scanned again (changed, or
    failed last time) are removed from the output first, so they are replaced, not
    duplicated."""
    recordings, listing_problems = discover(root)
    done = store.done_files()
    todo = [r for r in recordings if not _unchanged(done.get(r.relative), r)]
    rescanned = {r.relative for r in todo} | {relative for relative, _ in listing_problems}
    store.forget(rescanned & set(done), done)
    summary.files_found = len(recordings)
    summary.files_skipped = len(recordings) - len(todo)
    return ScanPlan(todo, listing_problems)


def _unchanged(record: FileRecord | None, recording: Recording) -> bool:
    return record is not None and record.status == "ok" and (record.size, record.mtime_ns) == (
        recording.size, recording.mtime_ns)


# -- the model -------------------------------------------------------------------


@dataclass
class WindowPredictions:
    probabilities: np.ndarray  # [n, classes]
    open_set_scores: np.ndarray | None  # [n]
    embeddings: np.ndarray | None  # [n, dim]

    def slice(self, start: int, stop: int) -> WindowPredictions:
        return WindowPredictions(
            self.probabilities[start:stop],
            None if self.open_set_scores is None else self.open_set_scores[start:stop],
            None if self.embeddings is None else self.embeddings[start:stop],
        )

    @staticmethod
    def concatenate(parts: list[WindowPredictions]) -> WindowPredictions:
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        return WindowPredictions(
            np.concatenate([p.probabilities for p in parts]),
            None if first.open_set_scores is None else np.concatenate([p.open_set_scores for p in parts]),
            None if first.embeddings is None else np.concatenate([p.embeddings for p in parts]),
        )


# -- collecting and writing -----------------------------------------------------------


@dataclass
class _Pending:
    decoded: DecodedFile | None = None  # set when decoding ended
    starts: dict = field(default_factory=dict)  # window start -> (partial, probabilities, score, embedding)


class ScanCollector:
    """Gathers the predictions of each file's windows, in any order and from any
    worker, and turns each finished file into detection rows and a per-file row.
    Finished files are committed to the store every ``commit_every_files`` files or
    ``commit_every_seconds``, so a crash loses at most that much work."""

    def __init__(self, bundle: ModelBundle, settings: ScanSettings, store: DetectionStore, meta: dict,
                 summary: ScanSummary, progress: ScanProgress, commit_every_files: int = 200,
                 commit_every_seconds: float = 60.0) -> None:
        self.bundle = bundle
        self.settings = settings
        self.store = store
        self.summary = summary
        self.progress = progress
        self.commit_every_files = commit_every_files
        self.commit_every_seconds = commit_every_seconds
        emb_dim = bundle.network.settings.embedding_dim if settings.embeddings and bundle.network.is_embedding else None
        self.top_k = min(settings.top_k, len(bundle.class_names))
        summary.model_sample_rate = bundle.feature_settings.sample_rate
        summary.model_band_hz = bundle.feature_settings.band_limit_hz or bundle.feature_settings.sample_rate / 2
        self.detection_schema = detection_schema(self.top_k, emb_dim, meta)
        self.file_schema = file_schema(meta)
        self.pending: dict[str, _Pending] = {}
        self.completed: set[str] = set()
        self.pending_files: list[dict] = []
        self.pending_detections: list[dict] = []
        self.last_commit = time.monotonic()

    def add_windows(self, relative: str, starts: np.ndarray, partial: np.ndarray, predictions: WindowPredictions) -> None:
        if relative in self.completed:  # late windows of a file that failed
            return
        state = self.pending.setdefault(relative, _Pending())
        scores = predictions.open_set_scores
        emb = predictions.embeddings if self.settings.embeddings else None
        for i, start in enumerate(starts.tolist()):
            # keyed by start, so a window delivered twice (a retried task) counts once
            state.starts[start] = (bool(partial[i]), predictions.probabilities[i],
                                   None if scores is None else scores[i], None if emb is None else emb[i])
        self._complete_if_done(relative, state)

    def file_decoded(self, decoded: DecodedFile) -> None:
        """Decoding of a file ended; it is complete once all its windows are in."""
        relative = decoded.recording.relative
        if relative in self.completed:
            return
        state = self.pending.setdefault(relative, _Pending())
        state.decoded = decoded
        self._complete_if_done(relative, state)

    def _complete_if_done(self, relative: str, state: _Pending) -> None:
        decoded = state.decoded
        if decoded is None or (decoded.error is None and len(state.starts) < decoded.windows):
            return
        del self.pending[relative]
        self.completed.add(relative)
        ok = decoded.error is None
        seconds = (decoded.decoded_samples or 0) / self.bundle.feature_settings.sample_rate
        if ok:
            self.summary.files_ok += 1
            self.summary.windows += decoded.windows
            self.summary.audio_seconds += seconds
            if decoded.windows:
                self.pending_detections.append(self._rows(decoded, state))
            rate = decoded.sample_rate
            if rate and rate / 2 < self.summary.model_band_hz:
                self.summary.low_sample_rates[rate] = self.summary.low_sample_rates.get(rate, 0) + 1
            info = decoded.info
            if info is not None and info.local_start is not None and info.utc_start is None:
                self.summary.files_without_utc += 1
            if decoded.warning:
                self.summary.file_warnings.append((relative, decoded.warning))
        else:
            self.summary.files_failed += 1
            self.summary.failures.append((relative, decoded.error))
        self.pending_files.append(self._file_row(decoded, ok, seconds))
        rec = decoded.recording
        self.progress.file_done(relative, ok, seconds, rec.size, decoded.error)
        if (len(self.pending_files) >= self.commit_every_files
                or time.monotonic() - self.last_commit >= self.commit_every_seconds):
            self.commit()

    def _rows(self, decoded: DecodedFile, state: _Pending) -> dict | None:
        order = sorted(state.starts)
        partial, probabilities, scores, emb = zip(*(state.starts[s] for s in order))
        probabilities = np.stack(probabilities)
        keep = probabilities.max(axis=1) >= self.settings.min_score
        if not keep.any():
            return None
        fs = self.bundle.feature_settings
        threshold = self.bundle.open_set.threshold if self.bundle.open_set is not None else None
        return window_rows(
            decoded.recording.relative, decoded.info, np.asarray(order, np.int64)[keep], np.asarray(partial)[keep],
            probabilities[keep], None if scores[0] is None else np.asarray(scores, np.float32)[keep], threshold,
            self.bundle.class_names, fs.sample_rate, fs.window_seconds, self.top_k, self.bundle.model_id,
            None if emb[0] is None else np.stack(emb)[keep],
        )

    def _file_row(self, decoded: DecodedFile, ok: bool, seconds: float) -> dict:
        rec, info = decoded.recording, decoded.info
        return self._file_record(
            rec.relative, site=info.site if info else rec.path.parent.name, size=rec.size, mtime_ns=rec.mtime_ns,
            status="ok" if ok else "failed", error=decoded.error or decoded.warning, duration_s=seconds if ok else None,
            silent_s=min(decoded.silent_seconds, seconds) if ok else None,
            sample_rate=decoded.sample_rate, channels=decoded.channels,
            recorder_start_utc=info.utc_start if info else None,
            recorder_start_local=info.local_start if info else None,
            time_source=info.time_source if info else None, windows=decoded.windows if ok else 0,
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

    def commit(self) -> None:
        if not self.pending_files:
            return
        detections = [d for d in self.pending_detections if d is not None]
        detections = concat_columns(detections, self.detection_schema) if detections else None
        self.store.commit(detections, concat_columns(self.pending_files, self.file_schema))
        self.summary.rows += 0 if detections is None else detections.num_rows
        self.pending_files, self.pending_detections = [], []
        self.last_commit = time.monotonic()


def scan_metadata(model_id: str, settings: ScanSettings, root: str | Path) -> dict:
    return {**output_metadata(model_id, settings.key_fields()), "root": str(Path(root).resolve())}
