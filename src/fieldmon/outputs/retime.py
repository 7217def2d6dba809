"""Changing the recorders' time zone (``--tz``) of a scan's output without scanning again.

The zone only maps recorders' wall-clock times to UTC; the model never sees it. So a
new zone rewrites two time columns and nothing else, as a scan with that zone would
have written them (``fieldmon.recorder.in_zone``):

- a file whose time is the recorder's wall clock (Song Meter names, GUANO without an
  offset) keeps ``local_time`` and gets ``start_time`` = ``local_time`` in the zone, as UTC;
- a file whose time is UTC (AudioMoth names and comments, GUANO with an offset) keeps
  ``start_time`` and gets ``local_time`` = ``start_time`` on the zone's wall clock;
- a file without a time keeps its nulls.

Each file has one shift between its two columns (a scan adds the same window offset to
its local and UTC start), so rows are rewritten by adding that shift, not by
converting every timestamp (which would disagree with a scan at a DST change inside
a file). The store (``fieldmon.outputs.store``) writes the tables crash-safely.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.compute as pc

from fieldmon.recorder import in_zone, wall_clock_is_source


@dataclass(frozen=True)
class RetimeResult:
    old_tz: str | None
    new_tz: str
    files_from_local: int  # files whose start_time (UTC) now comes from their local time
    files_from_utc: int  # files whose UTC start_time stays; their local_time follows the zone
    rows: int  # detection rows of those files

    @property
    def changed(self) -> bool:
        return self.old_tz != self.new_tz

    def rows_retimed(self) -> str:
        """What changed, in words: 'retimed 480 rows of 96 files'."""
        files = self.files_from_local + self.files_from_utc
        return f"retimed {self.rows} row{'s' if self.rows != 1 else ''} of {files} file{'s' if files != 1 else ''}"


@dataclass(frozen=True)
class FileShift:
    from_local: bool  # True: start_time = local_time + ms; False: local_time = start_time + ms
    ms: int


def retime_files(table: pa.Table, zone: ZoneInfo) -> tuple[pa.Table, dict[str, FileShift]]:
    """The per-file table with its recorder start times in ``zone``, and each timed
    file's shift for its detection rows."""
    columns = (table.column(c).to_pylist() for c in ("path", "time_source", "recorder_start_local",
                                                      "recorder_start_utc"))
    new_local, new_utc, shifts = [], [], {}
    for path, source, local, utc in zip(*columns):
        local2, utc2 = in_zone(source, local, utc, zone)
        new_local.append(local2)
        new_utc.append(utc2)
        if local2 is not None and utc2 is not None:
            from_local = wall_clock_is_source(source, local, utc)
            gap = utc2.replace(tzinfo=None) - local2  # UTC minus wall clock
            ms = round(gap.total_seconds() * 1000)
            shifts[path] = FileShift(from_local, ms if from_local else -ms)
    for name, values in (("recorder_start_local", new_local), ("recorder_start_utc", new_utc)):
        i = table.schema.get_field_index(name)
        table = table.set_column(i, table.schema.field(i), pa.array(values, table.schema.field(i).type))
    return table, shifts


def retime_detections(table: pa.Table, shifts: dict[str, FileShift]) -> tuple[pa.Table, int]:
    """Detection rows with start_time or local_time shifted per file; and how many rows
    belong to timed files."""
    if not shifts or not table.num_rows:
        return table, 0
    index = pc.index_in(table.column("path"), value_set=pa.array(list(shifts), pa.string()))
    from_local = pc.take(pa.array([s.from_local for s in shifts.values()], pa.bool_()), index)
    ms = pc.take(pa.array([s.ms for s in shifts.values()], pa.int64()), index)
    start = table.column("start_time").cast(pa.int64())
    local = table.column("local_time").cast(pa.int64())
    # rows of files without a time (index null) keep both columns
    new_start = pc.if_else(pc.fill_null(from_local, False), pc.add(local, ms), start)
    new_local = pc.if_else(pc.fill_null(pc.invert(from_local), False), pc.add(start, ms), local)
    for name, values in (("start_time", new_start), ("local_time", new_local)):
        i = table.schema.get_field_index(name)
        table = table.set_column(i, table.schema.field(i), values.cast(table.schema.field(i).type))
    return table, table.num_rows - index.null_count


def with_zone_metadata(table: pa.Table, tz: str) -> pa.Table:
    """The table with the zone in the scan settings of its Parquet metadata, which
    readers fall back on when the ``_fieldmon`` folder is missing."""
    metadata = dict(table.schema.metadata or {})
    if b"fieldmon" not in metadata:
        return table
    meta = json.loads(metadata[b"fieldmon"])
    if isinstance(meta.get("settings"), dict):
        meta["settings"]["tz"] = tz
    metadata[b"fieldmon"] = json.dumps(meta).encode()
    return table.replace_schema_metadata(metadata)
