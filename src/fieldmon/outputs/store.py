"""The scan's output: a directory of Parquet parts that reads as one table, written so
that a crash at any instant loses nothing committed and duplicates nothing.

    detections.parquet/             pandas.read_parquet, pyarrow.dataset, DuckDB
      part-000001.parquet           ('detections.parquet/*.parquet') read it as one table
      _fieldmon/scan.json           scan key: model id and settings (readers skip '_' names)
      _fieldmon/lock                held (flock) by the scan writing here
    detections.files.parquet/       the per-file (effort) table, same layout
      part-000001.parquet

Commit protocol for part N: write the detections part to a temporary name, fsync,
rename; then the same for the files part. The files part is the commit record: a
detections part without its files part (a crash between the two renames) is deleted
when the store is next opened, and its files are scanned again. Rows of one audio
file never span two parts. Re-scanning a changed file first rewrites (atomically,
in place) the parts that hold its old rows.
"""

from __future__ import annotations

import fcntl
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

PART = re.compile(r"^part-(\d{6})\.parquet$")
META_DIR = "_fieldmon"


class StoreError(Exception):
    pass


class ScanLocked(StoreError):
    pass


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
    def __init__(self, out: str | os.PathLike, scan_key: str, scan_meta: dict) -> None:
        self.out = Path(out)
        self.files_dir = files_table_path(self.out)
        self.meta_dir = self.out / META_DIR
        self.scan_key = scan_key
        self.scan_meta = scan_meta
        self._lock_fd: int | None = None

    # -- opening ---------------------------------------------------------------

    def open(self) -> DetectionStore:
        if self.out.exists() and not self.out.is_dir():
            raise StoreError(f"{self.out} exists and is not a fieldmon output directory")
        try:
            self.meta_dir.mkdir(parents=True, exist_ok=True)
            self.files_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the output {self.out}: {exc.strerror or exc}") from exc
        self._lock()
        self._check_scan_key()
        self._recover()
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
        path = self.meta_dir / "scan.json"
        if path.exists():
            saved = json.loads(path.read_text())
            if saved.get("scan_key") != self.scan_key:
                raise StoreError(
                    f"{self.out} holds a scan made with other settings or another model "
                    f"(model {saved.get('model_id')}, settings {json.dumps(saved.get('settings'))}); "
                    "write this scan to a new --out, or delete the old output first"
                )
        else:
            atomic_write(path, json.dumps({"scan_key": self.scan_key, **self.scan_meta}, indent=2).encode())

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


def _write_parquet(table: pa.Table, path: Path) -> None:
    tmp = path.parent / f".{path.stem}.{os.getpid()}.tmp"
    try:
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StoreError(
            f"cannot write {path}: {exc.strerror or exc}; every part written before is intact, "
            "and the files of this part will be scanned again on the next run"
        ) from exc


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
