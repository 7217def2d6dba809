"""The scan's output: a directory of Parquet parts that reads as one table, written so
that a crash at any instant loses nothing committed and duplicates nothing.

    detections.parquet/             pandas.read_parquet, pyarrow.dataset, DuckDB
      part-000001.parquet           ('detections.parquet/*.parquet') read it as one table
      _fieldmon/scan.json           scan key: model id and settings (readers skip '_' names)
      _fieldmon/lock                held (flock) by the scan writing here
      _fieldmon/retime.json         only while the time zone is being changed (fieldmon retime)
    detections.files.parquet/       the per-file (effort) table, same layout
      part-000001.parquet

Commit protocol for part N: write the detections part to a temporary name, fsync,
rename; then the same for the files part. The files part is the commit record: a
detections part without its files part (a crash between the two renames) is deleted
when the store is next opened, and its files are scanned again. Rows of one audio
file never span two parts. Re-scanning a changed file first rewrites (atomically,
in place) the parts that hold its old rows.

A scan with other settings or another model is refused, naming what differs; a new
time zone alone (``--tz``) is applied to the rows already there (``retime``) instead.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fieldmon.fileio import atomic_write
from fieldmon.outputs.retime import RetimeResult, retime_detections, retime_files, with_zone_metadata
from fieldmon.recorder import parse_zone

PART = re.compile(r"^part-(\d{6})\.parquet$")
META_DIR = "_fieldmon"
SCAN_JSON = "scan.json"
RETIME_MARKER = "retime.json"

# The option that sets each scan setting (fieldmon.scan.ScanSettings), to name it when an
# output refuses a scan.
SETTING_OPTIONS = {"hop_seconds": "--hop", "channel": "--channel", "top_k": "--top-k", "min_score": "--min-score",
                   "embeddings": "--embeddings", "tz": "--tz"}


class StoreError(Exception):
    pass


class ScanLocked(StoreError):
    pass


def settings_key(model_id: str, settings: dict) -> str:
    """The scan key: outputs hold rows of one model and one set of scan settings."""
    text = json.dumps({"model_id": model_id, **settings}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def files_table_path(out: Path) -> Path:
    name = out.name[: -len(".parquet")] if out.name.endswith(".parquet") else out.name
    return out.with_name(f"{name}.files.parquet")


@dataclass(frozen=True)
class FileRecord:
    size: int
    mtime_ns: int
    status: str
    part: int


class DetectionStore:
    def __init__(self, out: str | os.PathLike, scan_key: str | None, scan_meta: dict) -> None:
        self.out = Path(out)
        self.files_dir = files_table_path(self.out)
        self.meta_dir = self.out / META_DIR
        self.scan_key = scan_key  # None: an existing output opened to change it, not to scan into it
        self.scan_meta = scan_meta
        self.retimed: RetimeResult | None = None  # set when opening it applied a new --tz
        self._lock_fd: int | None = None

    @classmethod
    def existing(cls, out: str | os.PathLike) -> DetectionStore:
        """An output that a scan wrote, opened to change it (``retime``)."""
        out = Path(out)
        if not (out / META_DIR / SCAN_JSON).is_file():
            raise StoreError(f"{out} is not a fieldmon scan output (it has no {META_DIR}/{SCAN_JSON})")
        return cls(out, None, {})

    # -- opening ---------------------------------------------------------------

    def open(self) -> DetectionStore:
        if self.out.exists() and not self.out.is_dir():
            raise StoreError(f"{self.out} exists and is not a fieldmon output directory")
        if (self.scan_key is not None and not (self.meta_dir / SCAN_JSON).exists() and self.files_dir.is_dir()
                and self._parts(self.files_dir)):
            # Its files would count as scanned, and their detections are gone.
            raise StoreError(f"{self.files_dir} lists files of an earlier scan whose detections ({self.out}) are "
                             f"gone; delete {self.files_dir} to scan them again, or restore {self.out}")
        try:
            self.meta_dir.mkdir(parents=True, exist_ok=True)
            self.files_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the output {self.out}: {exc.strerror or exc}") from exc
        self._lock()
        try:
            self._recover()
            if (self.meta_dir / RETIME_MARKER).exists():  # a retime that a crash interrupted
                self.retimed = self.retime(json.loads((self.meta_dir / RETIME_MARKER).read_text())["tz"])
            if self.scan_key is not None:
                self._check_scan_key()
        except BaseException:
            self.close()  # a refused scan must not keep the output locked for the rest of the process
            raise
        return self

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> DetectionStore:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def _lock(self) -> None:
        path = self.meta_dir / "lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot open {path}: {exc.strerror or exc} (is the output read-only?)") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ScanLocked(f"{self.out} is being written by another scan ({holder}); "
                             "wait for it to finish or write to another --out") from None
        # The kernel drops a flock when its process dies, so a killed scan never leaves
        # a stale lock; the text is only there to name the holder.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        self._lock_fd = fd

    def _check_scan_key(self) -> None:
        path = self.meta_dir / SCAN_JSON
        if not path.exists():
            atomic_write(path, json.dumps({"scan_key": self.scan_key, **self.scan_meta}, indent=2).encode())
            return
        saved = json.loads(path.read_text())
        if saved.get("scan_key") == self.scan_key:
            return
        new_model, changed = _differences(saved, self.scan_meta)
        new_tz = (self.scan_meta.get("settings") or {}).get("tz")
        if not new_model and changed == ["tz"] and new_tz is not None:
            # The zone only maps recorders' wall-clock times to UTC: the rows already
            # here are retimed, not scanned again.
            self.retimed = self.retime(new_tz)
            if self._saved().get("scan_key") == self.scan_key:
                return
        raise StoreError(_refusal(self.out, saved, self.scan_meta, new_model, changed))

    def _saved(self) -> dict:
        return json.loads((self.meta_dir / SCAN_JSON).read_text())

    # -- changing the time zone --------------------------------------------------

    def retime(self, tz: str) -> RetimeResult:
        """Give the output the recorders' zone ``tz`` (``fieldmon.outputs.retime``) and
        record it in the scan settings, so that scans with ``--tz tz`` continue it.

        Crash-safe: a marker names the zone first; each part is then replaced
        atomically, and the settings last. Opening the store with the marker still
        there finishes the job: every step computes from columns that a retime never
        changes, so redoing a part that was already done changes nothing."""
        zone = parse_zone(tz)
        saved = self._saved()
        settings = saved.get("settings")
        if not isinstance(settings, dict) or "tz" not in settings or "model_id" not in saved:
            raise StoreError(f"{self.out}: {META_DIR}/{SCAN_JSON} does not record the scan's settings; "
                             "its time zone cannot be changed")
        marker = self.meta_dir / RETIME_MARKER
        old_tz = settings["tz"]
        if old_tz == tz and not marker.exists():
            return RetimeResult(old_tz, tz, 0, 0, 0)
        atomic_write(marker, json.dumps({"tz": tz}).encode())
        _fsync_dir(self.meta_dir)
        unfinished = (f"every part is intact, in the old zone or the new one; the next fieldmon retime or "
                      f"scan of {self.out} finishes the change to --tz {tz}")
        shifts: dict = {}
        for path in self._parts(self.files_dir).values():
            table, part_shifts = retime_files(pq.read_table(path), zone)
            _write_parquet(with_zone_metadata(table, tz), path, unfinished)
            shifts.update(part_shifts)
        rows = 0
        for path in self._parts(self.out).values():
            table, part_rows = retime_detections(pq.read_table(path), shifts)
            _write_parquet(with_zone_metadata(table, tz), path, unfinished)
            rows += part_rows
        settings = {**settings, "tz": tz}
        saved = {**saved, "settings": settings, "scan_key": settings_key(saved["model_id"], settings)}
        atomic_write(self.meta_dir / SCAN_JSON, json.dumps(saved, indent=2).encode())
        marker.unlink()
        _fsync_dir(self.meta_dir)
        from_local = sum(s.from_local for s in shifts.values())
        return RetimeResult(old_tz, tz, from_local, len(shifts) - from_local, rows)

    def _recover(self) -> None:
        for folder in (self.out, self.files_dir):
            for tmp in folder.glob(".part-*.tmp"):
                tmp.unlink()
        committed = set(self._parts(self.files_dir))
        for seq, path in self._parts(self.out).items():
            if seq not in committed:
                path.unlink()  # written, but its commit record never was

    @staticmethod
    def _parts(folder: Path) -> dict[int, Path]:
        out = {}
        for path in folder.iterdir():
            m = PART.match(path.name)
            if m:
                out[int(m.group(1))] = path
        return dict(sorted(out.items()))

    # -- reading ---------------------------------------------------------------

    def done_files(self) -> dict[str, FileRecord]:
        records: dict[str, FileRecord] = {}
        for seq, path in self._parts(self.files_dir).items():
            table = pq.read_table(path, columns=["path", "size", "mtime_ns", "status"])
            for p, size, mtime, status in zip(*(table.column(c).to_pylist() for c in table.column_names)):
                records[p] = FileRecord(size, mtime, status, seq)
        return records

    # -- writing ---------------------------------------------------------------

    def commit(self, detections: pa.Table | None, files: pa.Table) -> int:
        parts = list(self._parts(self.files_dir)) + list(self._parts(self.out))
        seq = max(parts, default=0) + 1
        name = f"part-{seq:06d}.parquet"
        if detections is not None and detections.num_rows:
            _write_parquet(detections, self.out / name)
        _write_parquet(files, self.files_dir / name)
        return seq

    def forget(self, paths: set[str], records: dict[str, FileRecord]) -> None:
        """Remove every row of ``paths`` (files about to be scanned again)."""
        for seq in sorted({records[p].part for p in paths if p in records}):
            name = f"part-{seq:06d}.parquet"
            for folder in (self.out, self.files_dir):  # detections first: the files part is the commit record
                path = folder / name
                if not path.exists():
                    continue
                table = pq.read_table(path)
                keep = pc.invert(pc.is_in(table.column("path"), pa.array(sorted(paths))))
                table = table.filter(keep)
                if table.num_rows or folder == self.files_dir:
                    _write_parquet(table, path)
                else:
                    path.unlink()


def retime(out: str | os.PathLike, tz: str) -> RetimeResult:
    """Change the recorders' time zone of the scan output ``out`` to ``tz`` (an IANA
    name) without scanning again; see ``DetectionStore.retime``."""
    parse_zone(tz)  # a bad zone is refused before the output is touched
    with DetectionStore.existing(out) as store:
        result = store.retime(tz)
        # opening it may have finished a retime to this zone that a crash had interrupted
        return store.retimed if not result.changed and store.retimed is not None else result


def _differences(saved: dict, meta: dict) -> tuple[bool, list[str]]:
    """Whether the model differs, and the settings that do (in the settings' order)."""
    old, new = saved.get("settings") or {}, meta.get("settings") or {}
    names = list(new) + [k for k in old if k not in new]
    missing = object()
    changed = [k for k in names if old.get(k, missing) != new.get(k, missing)]
    return saved.get("model_id") != meta.get("model_id"), changed


def _refusal(out: Path, saved: dict, meta: dict, new_model: bool, changed: list[str]) -> str:
    """One line: what differs between the output and this scan, and what to do."""
    old, new = saved.get("settings") or {}, meta.get("settings") or {}
    parts = []
    if new_model:
        parts.append(f"another model ({saved.get('model_id')} in the existing output, {meta.get('model_id')} now)")
    if changed:
        parts.append("other settings (" + "; ".join(
            f"{SETTING_OPTIONS.get(k, k)}: {_shown(old.get(k))} in the existing output, {_shown(new.get(k))} now"
            for k in changed) + ")")
    what = " and ".join(parts) or "other settings or another model"
    if changed == ["tz"] and not new_model:
        advice = (f"pass --tz {old.get('tz')} as before (fieldmon retime {out} --tz ZONE changes the zone "
                  "of the output)")
    else:
        advice = "write this scan to a new --out, or delete the old output first"
    return f"{out} holds a scan made with {what}: {advice}"


def _shown(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


# What a failed write leaves behind, said after its cause.
AFTER_FAILED_COMMIT = ("every part written before is intact, and the files of this part will be scanned again "
                       "on the next run")


def _write_parquet(table: pa.Table, path: Path, after_failure: str = AFTER_FAILED_COMMIT) -> None:
    tmp = path.parent / f".{path.stem}.{os.getpid()}.tmp"
    try:
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"cannot write {path}: {exc.strerror or exc}; {after_failure}") from exc


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
