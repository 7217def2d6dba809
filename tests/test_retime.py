"""Changing the time zone of a scan's output (fieldmon retime, or a rerun with another
--tz) gives exactly the times a scan in that zone gives, without scanning again."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from conftest import write_wav
from fieldmon.cli import main
from fieldmon.outputs.store import META_DIR, StoreError, files_table_path, retime
from fieldmon.recorder import from_guano, in_zone
from fieldmon.scan.pipeline import ScanSettings, scan
from test_recorder import add_chunk

UTC = dt.timezone.utc
TIME_COLUMNS = ["path", "window_start_s", "start_time", "local_time"]
FILE_TIME_COLUMNS = ["path", "time_source", "recorder_start_utc", "recorder_start_local"]


def recordings(root: Path) -> Path:
    """One file of each kind of time: wall clock (Song Meter name, across the night
    Berlin skips 02:00-03:00; GUANO without offset), UTC (AudioMoth name; GUANO with
    offset) and none."""
    write_wav(root / "sm" / "SITE1_20240331_015958.wav", 4.0, seed=1)
    write_wav(root / "am" / "20240601_120000.WAV", 4.0, seed=2)
    add_chunk(write_wav(root / "gl" / "take1.wav", 2.0, seed=3), b"guan",
              b"GUANO|Version:1.0\nTimestamp:2024-07-01T21:00:00\nLoc Name:Pond\n")
    add_chunk(write_wav(root / "go" / "take2.wav", 2.0, seed=4), b"guan",
              b"GUANO|Version:1.0\nTimestamp:2024-07-01T21:00:00-04:00\nLoc Name:Pond\n")
    write_wav(root / "plain" / "x.wav", 2.0, seed=5)
    return root


def times(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    det = pd.read_parquet(out, columns=TIME_COLUMNS).sort_values(["path", "window_start_s"]).reset_index(drop=True)
    files = pd.read_parquet(files_table_path(out), columns=FILE_TIME_COLUMNS).sort_values("path").reset_index(drop=True)
    return det, files


def scanned_in(rec: Path, out: Path, model: Path, tz: str | None) -> Path:
    scan(rec, out, model, ScanSettings(tz=tz))
    return out


def assert_same_times(got: Path, expected: Path) -> None:
    for a, b in zip(times(got), times(expected)):
        pd.testing.assert_frame_equal(a, b)


def test_in_zone_keeps_the_time_the_recorder_gave():
    berlin = ZoneInfo("Europe/Berlin")
    wall = dt.datetime(2024, 7, 1, 12, 0)
    assert in_zone("songmeter-name", wall, None, berlin) == (wall, dt.datetime(2024, 7, 1, 10, 0, tzinfo=UTC))
    utc = dt.datetime(2024, 7, 1, 12, 0, tzinfo=UTC)
    assert in_zone("audiomoth-name", None, utc, berlin) == (dt.datetime(2024, 7, 1, 14, 0), utc)
    assert in_zone(None, None, None, berlin) == (None, None)
    assert from_guano("Timestamp:2024-07-01T21:00:00\n", None).time_source == "guano-local"


def test_retime_gives_the_times_of_a_scan_in_that_zone(tmp_path, tiny_model):
    rec = recordings(tmp_path / "rec")
    out = scanned_in(rec, tmp_path / "det.parquet", tiny_model, None)
    before, _ = times(out)
    berlin = scanned_in(rec, tmp_path / "berlin.parquet", tiny_model, "Europe/Berlin")

    result = CliRunner().invoke(main, ["retime", str(out), "--tz", "Europe/Berlin"])
    assert result.exit_code == 0, result.output
    assert "from --tz none to --tz Europe/Berlin" in result.output
    assert "retimed 6 rows of 4 files from --tz none to --tz Europe/Berlin" in result.output
    assert "got their UTC start_time: 2; files in UTC that got their local_time: 2" in result.output
    assert_same_times(out, berlin)
    det, files = times(out)
    sm = det[det.path == "sm/SITE1_20240331_015958.wav"]
    # one offset per file, as a scan gives it: UTC runs on where the wall clock skips an hour
    assert [str(t) for t in sm.start_time] == ["2024-03-31 00:59:58+00:00", "2024-03-31 01:00:00+00:00"]
    am = det.path == "am/20240601_120000.WAV"
    pd.testing.assert_series_equal(det[am].start_time, before[am].start_time)  # UTC already: kept
    assert files.set_index("path").loc["gl/take1.wav", "time_source"] == "guano-local"
    assert det[det.path == "plain/x.wav"][["start_time", "local_time"]].isna().all().all()

    meta = json.loads((out / META_DIR / "scan.json").read_text())
    assert meta["settings"]["tz"] == "Europe/Berlin" and not (out / META_DIR / "retime.json").exists()
    part = next(out.glob("part-*.parquet"))
    assert json.loads(pq.read_schema(part).metadata[b"fieldmon"])["settings"]["tz"] == "Europe/Berlin"
    assert not list(out.glob(".*.tmp"))
    rerun = scan(rec, out, tiny_model, ScanSettings(tz="Europe/Berlin"))  # the stored settings took the zone
    assert rerun.files_skipped == 5 and rerun.files_ok == 0 and rerun.retimed is None
    again = CliRunner().invoke(main, ["retime", str(out), "--tz", "Europe/Berlin"])
    assert again.exit_code == 0 and "already" in again.output
    assert_same_times(out, berlin)
    (tmp_path / "empty").mkdir()
    foreign = CliRunner().invoke(main, ["retime", str(tmp_path / "empty"), "--tz", "Europe/Berlin"])
    assert foreign.exit_code == 1 and "is not a fieldmon scan output" in foreign.output
    assert not (tmp_path / "empty" / META_DIR).exists()  # and it was left as it was


def test_a_rerun_with_another_tz_retimes_then_scans_new_files(tmp_path, tiny_model):
    rec = recordings(tmp_path / "rec")
    out = scanned_in(rec, tmp_path / "det.parquet", tiny_model, "Europe/Berlin")
    write_wav(rec / "sm" / "SITE1_20240601_000000.wav", 2.0, seed=9)
    result = CliRunner().invoke(main, ["scan", str(rec), "--out", str(out), "--model", str(tiny_model),
                                       "--tz", "America/Bogota", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "the output was in --tz Europe/Berlin: retimed 6 rows of 4 files to --tz America/Bogota" in result.output
    assert "1 files scanned" in result.output and "5 unchanged" in result.output
    assert_same_times(out, scanned_in(rec, tmp_path / "bogota.parquet", tiny_model, "America/Bogota"))


def test_a_retime_cut_short_is_finished_by_the_next_run(tmp_path, tiny_model, monkeypatch):
    rec = recordings(tmp_path / "rec")
    out = tmp_path / "det.parquet"
    scan(rec, out, tiny_model, ScanSettings())
    written = []
    real_write = pq.write_table

    def write_once_then_fail(table, path, **kwargs):
        if written:  # the disk fills up after the first part
            raise OSError(28, "No space left on device")
        written.append(path)
        real_write(table, path, **kwargs)

    monkeypatch.setattr(pq, "write_table", write_once_then_fail)
    with pytest.raises(StoreError, match="next fieldmon retime or scan .* finishes the change to --tz Asia/Tokyo"):
        retime(out, "Asia/Tokyo")
    monkeypatch.undo()
    assert len(written) == 1 and (out / META_DIR / "retime.json").exists()
    # the next open of the output finishes the change first: a scan without a zone is then refused
    with pytest.raises(StoreError, match="--tz: Asia/Tokyo in the existing output, none now"):
        scan(rec, out, tiny_model, ScanSettings())
    assert not (out / META_DIR / "retime.json").exists()
    summary = scan(rec, out, tiny_model, ScanSettings(tz="Asia/Tokyo"))
    assert summary.files_skipped == 5 and summary.files_ok == 0
    assert_same_times(out, scanned_in(rec, tmp_path / "tokyo.parquet", tiny_model, "Asia/Tokyo"))
