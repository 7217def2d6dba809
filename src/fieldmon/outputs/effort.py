"""Recording effort: when recordings ran, in the report's time basis.

Counts of detections mean little without the recording effort behind them: an hour of
day that was never recorded has no detections because nobody listened, not because
nothing called. These functions place every recorded file (its start and duration, from
the per-file table) on the clock, split at hour boundaries. Stretches of digital silence
(the per-file table's ``silent_s``: a microphone that cut out) are no recording and do not
count; a file's audible share is spread evenly over its span.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fieldmon.outputs.tables import Filters, ScanOutput, naive_times

_HOUR_MS = 3_600_000


def time_column(output: ScanOutput) -> str:
    """The detections' time column the report groups by: the recorders' local time where
    known, else UTC. With no detections left, the per-file table decides."""
    d = output.detections
    if d["local_time"].notna().any():
        return "local_time"
    if d["start_time"].notna().any():
        return "start_time"
    f = output.files
    if len(f) and "recorder_start_local" in f and f["recorder_start_local"].notna().any():
        return "local_time"
    return "start_time"


def _start_column(output: ScanOutput) -> str:
    """The per-file table's start column in the same time basis as the detections."""
    return "recorder_start_local" if time_column(output) == "local_time" else "recorder_start_utc"


def naive(values: pd.Series) -> pd.Series:
    """Timestamps without zone (UTC ones converted), also from an all-null column."""
    if values.dtype == object:
        values = pd.to_datetime(values, utc=values.map(lambda v: getattr(v, "tzinfo", None) is not None).any())
    return naive_times(values)



def _ok_files(output: ScanOutput) -> pd.DataFrame:
    f = output.files
    if f.empty or "status" not in f:
        return pd.DataFrame(columns=["path", "site", "status", "duration_s", "recorder_start_utc",
                                     "recorder_start_local"])
    return f[(f["status"] == "ok") & (f["duration_s"].fillna(0) > 0)]


def audible_seconds(files: pd.DataFrame) -> pd.Series:
    """Each file's duration less its stretches of digital silence (absent in outputs
    written before fieldmon counted them)."""
    silent = files["silent_s"].fillna(0) if "silent_s" in files else 0.0
    return (files["duration_s"].fillna(0) - silent).clip(lower=0)


def silent_seconds(files: pd.DataFrame) -> pd.Series:
    return files["duration_s"].fillna(0) - audible_seconds(files)


def date_range(filters: Filters) -> tuple[pd.Timestamp | None, pd.Timestamp | None]:
    lo = filters.start.normalize() if filters.start is not None else None
    hi = filters.end.normalize() + pd.Timedelta(days=1) if filters.end is not None else None
    return lo, hi


def recording_intervals(output: ScanOutput, filters: Filters = Filters()) -> pd.DataFrame:
    """Start and end (zone-less, in the report's time basis) of every recorded file with a
    known start, cut to the filters' dates, and the ``share`` of that span that was not
    digital silence."""
    ok = _ok_files(output)
    column = _start_column(output)
    if ok.empty or column not in ok:
        return pd.DataFrame({"start": pd.Series(dtype="datetime64[ms]"), "end": pd.Series(dtype="datetime64[ms]"),
                             "share": pd.Series(dtype=float)})
    start = naive(ok[column])
    end = start + pd.to_timedelta(ok["duration_s"].astype(float).round(3), unit="s")
    share = audible_seconds(ok) / ok["duration_s"].astype(float)
    frame = pd.DataFrame({"start": start, "end": end, "share": share}).dropna()
    frame = frame[frame["share"] > 0]
    lo, hi = date_range(filters)
    if lo is not None:
        frame["start"] = frame["start"].clip(lower=lo)
    if hi is not None:
        frame["end"] = frame["end"].clip(upper=hi)
    return frame[frame["end"] > frame["start"]].reset_index(drop=True)


def effort_by_hour(output: ScanOutput, filters: Filters = Filters()) -> pd.DataFrame:
    """Hours of audio recorded in each hour of day (rows 0-23) and on how many days.

    A file running over an hour boundary counts in both hours, each with its own part.
    All NaN when the effort by hour is unknown: no per-file table, or recordings without
    a known start time. Zero (not recorded) where recordings are known and none fell in
    that hour."""
    index = pd.RangeIndex(24, name="hour")
    ok = _ok_files(output)
    column = _start_column(output)
    if output.files.empty or (len(ok) and (column not in ok or ok[column].isna().all())):
        # no per-file table, or no recording with a known start: effort by hour unknown
        return pd.DataFrame({"hours_recorded": np.nan, "days_recorded": np.nan}, index=index)
    intervals = recording_intervals(output, filters)
    if intervals.empty:
        return pd.DataFrame({"hours_recorded": 0.0, "days_recorded": 0}, index=index)
    s = intervals["start"].to_numpy().astype("datetime64[ms]").astype(np.int64)
    e = intervals["end"].to_numpy().astype("datetime64[ms]").astype(np.int64)
    first, last = s // _HOUR_MS, (e - 1) // _HOUR_MS  # hour bins since the epoch
    n = last - first + 1
    which = np.repeat(np.arange(len(s)), n)
    bins = np.repeat(first, n) + np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    ms = np.minimum(e[which], (bins + 1) * _HOUR_MS) - np.maximum(s[which], bins * _HOUR_MS)
    ms = ms * intervals["share"].to_numpy()[which]
    parts = pd.DataFrame({"hour": bins % 24, "day": bins // 24, "hours": ms / _HOUR_MS})
    g = parts.groupby("hour")
    table = pd.DataFrame({"hours_recorded": g["hours"].sum().round(6), "days_recorded": g["day"].nunique()})
    return table.reindex(index, fill_value=0).astype({"hours_recorded": float, "days_recorded": int})


def has_dates(filters: Filters) -> bool:
    return filters.start is not None or filters.end is not None


def unplaced_hours(output: ScanOutput) -> float:
    """Hours of recorded audio without a known start time (in the report's time basis),
    which effort by hour of day cannot place."""
    ok = _ok_files(output)
    column = _start_column(output)
    unplaced = ok[ok[column].isna()] if column in ok else ok
    return float(audible_seconds(unplaced).sum() / 3600)


def recorded_hours(output: ScanOutput, filters: Filters = Filters()) -> float:
    """Hours of audio behind the detections: every recorded file, or with a date filter
    the recorded time inside those dates (windows without a known time fail a date filter
    too); digital silence left out. NaN without a per-file table."""
    if output.files.empty:
        return float("nan")
    if has_dates(filters):
        intervals = recording_intervals(output, filters)
        seconds = (intervals["end"] - intervals["start"]).dt.total_seconds() * intervals["share"]
        return float(seconds.sum() / 3600)
    return float(audible_seconds(_ok_files(output)).sum() / 3600)
