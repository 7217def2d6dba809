from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from conftest import start_slow_scan, RECORDER_SERIES, require_shared, write_wav
from fieldmon import load_model
from fieldmon.cli import main
from fieldmon.outputs.store import DetectionStore, ScanLocked, StoreError, files_table_path
from fieldmon.scan.pipeline import EXIT_FILES_FAILED, RunOptions, ScanSettings, scan, scan_key


def read(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_parquet(out), pd.read_parquet(files_table_path(out))


def test_window_counts_and_times_are_exact(tmp_path, tiny_model):
    rec = tmp_path / "rec"
    write_wav(rec / "a" / "20240101_053000.WAV", 7.3, sr=48000)  # AudioMoth name: UTC
    write_wav(rec / "b" / "SITE9_20240101_060000.wav", 4.0, sr=22050, channels=2)
    write_wav(rec / "b" / "short.flac", 0.5)
    out = tmp_path / "det.parquet"
    summary = scan(rec, out, tiny_model)
    assert summary.exit_code == 0 and summary.files_ok == 3
    det, files = read(out)
    a = det[det.path == "a/20240101_053000.WAV"].sort_values("window_start_s")
    assert a.window_start_s.tolist() == [0.0, 2.0, 4.0, 6.0]
    assert a.window_end_s.tolist() == [2.0, 4.0, 6.0, 8.0]
    assert a.partial.tolist() == [False, False, False, True]
    assert [t.isoformat() for t in a.start_time] == [
        f"2024-01-01T05:30:0{s}+00:00" for s in (0, 2, 4, 6)]
    b = det[det.path == "b/SITE9_20240101_060000.wav"]
    assert len(b) == 2 and b.start_time.isna().all() and b.site.unique().tolist() == ["SITE9"]
    assert str(b.local_time.iloc[1]) == "2024-01-01 06:00:02"
    short = det[det.path == "b/short.flac"]
    assert len(short) == 1 and short.partial.all() and short.local_time.isna().all()
    assert set(det.label) <= {"cricket", "katydid", "cicada", "unknown"}
    assert det.top_labels.map(len).eq(3).all()
    f = files.set_index("path")
    assert f.loc["a/20240101_053000.WAV", "windows"] == 4
    assert f.loc["a/20240101_053000.WAV", "duration_s"] == pytest.approx(7.3, abs=1e-4)
    assert f.loc["b/SITE9_20240101_060000.wav", "channels"] == 2
    assert (f.status == "ok").all()

    overlap = scan(rec / "a", tmp_path / "hop1.parquet", tiny_model, ScanSettings(hop_seconds=1.0))
    assert overlap.windows == 8  # starts 0..7 s, the last two partial


def test_rerun_skips_finished_files_and_rescans_changed_ones(tmp_path, tiny_model):
    rec = tmp_path / "rec"
    for i in range(4):
        write_wav(rec / f"f{i}.wav", 4.0, seed=i)
    out = tmp_path / "det.parquet"
    first = scan(rec, out, tiny_model)
    assert first.files_ok == 4 and first.rows == 8
    again = scan(rec, out, tiny_model)
    assert again.files_skipped == 4 and again.files_ok == 0 and again.rows == 0
    write_wav(rec / "f1.wav", 6.0, seed=9)  # changed: 3 windows now
    write_wav(rec / "new.wav", 2.0)
    third = scan(rec, out, tiny_model)
    assert third.files_ok == 2 and third.files_skipped == 3
    det, files = read(out)
    assert len(det) == 2 + 3 + 2 + 2 + 1
    assert not det.duplicated(["path", "window_start_s"]).any()
    assert sorted(files.path) == ["f0.wav", "f1.wav", "f2.wav", "f3.wav", "new.wav"]


def test_time_limit_stops_cleanly_and_the_next_run_continues(tmp_path, tiny_model):
    rec = tmp_path / "rec"
    for i in range(3):
        write_wav(rec / f"f{i}.wav", 4.0, seed=i)
    out = tmp_path / "det.parquet"
    stopped = scan(rec, out, tiny_model, options=RunOptions(time_limit_s=0.0))
    assert stopped.interrupted and stopped.exit_code == 130 and stopped.files_ok < 3
    rest = scan(rec, out, tiny_model)
    assert rest.files_ok + rest.files_skipped == 3 and rest.exit_code == 0
    det, files = read(out)
    assert len(det) == 6 and sorted(files.path) == ["f0.wav", "f1.wav", "f2.wav"]


def test_time_limit_holds_inside_a_large_batch():
    # A batch runs through the network in chunks, and the time limit is checked between
    # them: a large batch past the limit is dropped (its files are scanned again by the
    # next run), not finished.
    from types import SimpleNamespace

    from fieldmon.features import FeatureSettings
    from fieldmon.scan.pipeline import DEADLINE_CHECK_WINDOWS, _LocalEngine
    from fieldmon.scan.stages import ScanSummary, WindowPredictions

    calls, added = [], []

    class SlowPredictor:
        bundle = SimpleNamespace(feature_settings=FeatureSettings())

        def from_features(self, values):
            calls.append(len(values))
            time.sleep(0.4)
            return WindowPredictions(np.zeros((len(values), 2), np.float32), None, None)

    summary = ScanSummary()
    collector = SimpleNamespace(summary=summary, add_windows=lambda *args: added.append(args))
    n = 3 * DEADLINE_CHECK_WINDOWS  # one batch, three chunks
    engine = _LocalEngine(SlowPredictor(), ScanSettings(), RunOptions(batch_size=4096), None, collector,
                          time.monotonic() + 0.6, workers=SimpleNamespace())
    engine._add("long.wav", np.arange(n), np.zeros(n, bool), np.zeros((n, 1), np.float32))
    engine._run_batch()
    assert summary.interrupted and calls == [DEADLINE_CHECK_WINDOWS] * 2  # stopped before the third chunk
    assert added == [] and engine.batch == []


def test_a_second_signal_stops_a_scan_at_once(tmp_path, tiny_model):
    import signal

    for i in range(3):
        write_wav(tmp_path / "rec" / f"f{i}.wav", 4.0, seed=i)
    proc = start_slow_scan(tmp_path / "started", str(tmp_path / "rec"), "--out", str(tmp_path / "det.parquet"),
                           "--model", str(tiny_model), "--quiet", stderr=subprocess.PIPE, text=True)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert proc.poll() is None  # the first signal waits for the batch
    stopping = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=20)
    assert time.monotonic() - stopping < 10
    assert proc.returncode == 130 and "stopped at once" in stderr and "Traceback" not in stderr


def test_corrupt_files_are_recorded_and_the_run_continues(tmp_path, tiny_model):
    rec = tmp_path / "rec"
    write_wav(rec / "good1.wav", 2.0)
    (rec / "bad.wav").write_bytes(os.urandom(5000))
    (rec / "empty.wav").write_bytes(b"")
    write_wav(rec / "good2.wav", 2.0)
    out = tmp_path / "det.parquet"
    result = CliRunner().invoke(main, ["scan", str(rec), "--out", str(out), "--model", str(tiny_model)])
    assert result.exit_code == EXIT_FILES_FAILED, result.output
    assert "2 failed" in result.output
    det, files = read(out)
    assert sorted(det.path.unique()) == ["good1.wav", "good2.wav"]
    failed = files[files.status == "failed"].set_index("path")
    assert sorted(failed.index) == ["bad.wav", "empty.wav"]
    assert failed.loc["empty.wav", "error"] == "the file is empty (0 bytes)"
    assert failed.loc["bad.wav", "error"].startswith("not a readable audio file")


def test_second_scan_on_the_same_output_is_refused(tmp_path, tiny_model):
    rec = tmp_path / "rec"
    write_wav(rec / "a.wav", 2.0)
    out = tmp_path / "det.parquet"
    key = scan_key(load_model(tiny_model).model_id, ScanSettings())
    with DetectionStore(out, key, {}):
        with pytest.raises(ScanLocked, match="being written by another scan"):
            scan(rec, out, tiny_model)
    assert scan(rec, out, tiny_model).files_ok == 1  # the lock went with its holder


def test_an_output_deleted_without_its_files_table_is_refused_not_skipped(tmp_path, tiny_model):
    rec = tmp_path / "rec"
    write_wav(rec / "a.wav", 2.0)
    out = tmp_path / "det.parquet"
    scan(rec, out, tiny_model)
    shutil.rmtree(out)  # the files table beside it still lists a.wav as scanned
    result = CliRunner().invoke(main, ["scan", str(rec), "--out", str(out), "--model", str(tiny_model)])
    assert result.exit_code == 1 and "det.files.parquet lists files of an earlier scan" in result.output, result.output
    shutil.rmtree(files_table_path(out))
    assert scan(rec, out, tiny_model).files_ok == 1


def test_changed_settings_are_refused_naming_each_setting_that_differs(tmp_path, tiny_model, accepting_model):
    rec = tmp_path / "rec"
    write_wav(rec / "a.wav", 2.0)
    out = tmp_path / "det.parquet"
    scan(rec, out, tiny_model, ScanSettings(tz="Europe/Berlin"))

    def refusal(model, settings) -> str:
        with pytest.raises(StoreError) as caught:
            scan(rec, out, model, settings)
        message = str(caught.value)
        assert "\n" not in message and "{" not in message  # one line, no settings dump
        return message

    assert "other settings (--hop: 2.0 in the existing output, 1.0 now)" in refusal(
        tiny_model, ScanSettings(hop_seconds=1.0, tz="Europe/Berlin"))
    both = refusal(tiny_model, ScanSettings(top_k=2, embeddings=True, tz="Europe/Berlin"))
    assert "--top-k: 3 in the existing output, 2 now; --embeddings: off in the existing output, on now" in both
    assert "--hop" not in both and "write this scan to a new --out" in both
    old_id, new_id = load_model(tiny_model).model_id, load_model(accepting_model).model_id
    model = refusal(accepting_model, ScanSettings(tz="Europe/Berlin"))
    assert f"another model ({old_id} in the existing output, {new_id} now)" in model and "other settings" not in model
    # dropping --tz would leave new files without UTC times: refused, with the zone to pass
    dropped = refusal(tiny_model, ScanSettings())
    assert "--tz: Europe/Berlin in the existing output, none now" in dropped and "pass --tz Europe/Berlin" in dropped

    result = CliRunner().invoke(main, ["scan", str(rec), "--out", str(out), "--model", str(tiny_model),
                                       "--tz", "Europe/Berlin", "--hop", "1"])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "--hop: 2.0 in the existing output, 1.0 now" in errors[0], result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


KILL_SCRIPT = """
import sys
from fieldmon.scan.pipeline import RunOptions, scan
scan(sys.argv[1], sys.argv[2], sys.argv[3], options=RunOptions(workers=2, batch_size=4, commit_every_files=2))
"""


def test_sigkill_at_random_moments_then_rerun_gives_exactly_the_uninterrupted_rows(tmp_path, tiny_model):
    rec = tmp_path / "rec"
    for i in range(16):
        write_wav(rec / f"site{i % 2}" / f"f{i:02d}.wav", 2.0 + (i % 3) * 2.0, seed=i)
    reference = tmp_path / "reference.parquet"
    scan(rec, reference, tiny_model)
    expected = read(reference)[0].sort_values(["path", "window_start_s"]).reset_index(drop=True)

    # How long the whole scan takes in its own process here, so that the kills land
    # inside it however fast or busy this machine is.
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(rec), str(tmp_path / "timed.parquet"), str(tiny_model)],
                   check=True)
    whole = time.monotonic() - started

    out = tmp_path / "killed.parquet"
    rng = random.Random(0)
    kills = 0
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(rec), str(out), str(tiny_model)])
        time.sleep(rng.uniform(0.3, 0.9) * whole)
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.wait()
    assert kills >= 1
    scan(rec, out, tiny_model)
    got = read(out)[0].sort_values(["path", "window_start_s"]).reset_index(drop=True)
    columns = [c for c in expected.columns if c not in ("top_scores",)]
    pd.testing.assert_frame_equal(got[columns], expected[columns])
    np.testing.assert_allclose(np.stack(got.top_scores), np.stack(expected.top_scores), rtol=1e-5)
    files = read(out)[1]
    assert len(files) == 16 and files.path.is_unique
    assert not any(p.name.startswith(".") and p.suffix == ".tmp" for p in out.iterdir())


def scan_three_files_one_part_each(tmp_path, model):
    rec = tmp_path / "rec"
    for i in range(3):
        write_wav(rec / f"f{i}.wav", 2.0, seed=i)
    out = tmp_path / "det.parquet"
    scan(rec, out, model, options=RunOptions(commit_every_files=1))
    return rec, out


@pytest.mark.parametrize("reader", ["pandas", "pyarrow", "duckdb"])
def test_output_reads_as_one_table(tmp_path, tiny_model, reader):
    rec, out = scan_three_files_one_part_each(tmp_path, tiny_model)
    assert len(list(out.glob("part-*.parquet"))) == 3
    if reader == "pandas":
        n = len(pd.read_parquet(out))
    elif reader == "pyarrow":
        import pyarrow.dataset as ds

        n = ds.dataset(out, format="parquet").count_rows()
    else:
        duckdb = pytest.importorskip("duckdb", reason="duckdb is an optional test dependency")
        n = duckdb.sql(f"select count(*) from '{out}/*.parquet'").fetchall()[0][0]
    assert n == 3


def test_recorder_series_day(tmp_path, tiny_model):
    """The shared Song Meter day: 96 files of 10 s -> 480 windows with their wall-clock times."""
    series = require_shared(RECORDER_SERIES)
    out = tmp_path / "day.parquet"
    summary = scan(series, out, tiny_model)
    assert summary.files_ok == 96 and summary.rows == 480
    det, files = read(out)
    first = det[det.path == "S4A03895_20190522_001500.wav"].sort_values("window_start_s")
    assert [str(t) for t in first.local_time] == [f"2019-05-22 00:15:0{s}" for s in (0, 2, 4, 6, 8)]
    assert det.local_time.min() == pd.Timestamp("2019-05-22 00:00:00")
    assert det.local_time.max() == pd.Timestamp("2019-05-22 23:45:08")
    assert (files.sample_rate == 22000).all()
    assert scan(series, out, tiny_model).rows == 0


def test_write_failure_is_a_clear_error_and_keeps_committed_parts(tmp_path, tiny_model, monkeypatch):
    rec, out = scan_three_files_one_part_each(tmp_path, tiny_model)
    before = sorted(p.name for p in out.glob("part-*.parquet"))
    write_wav(rec / "new.wav", 2.0, seed=7)

    import pyarrow.parquet as pq

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", disk_full)
    with pytest.raises(StoreError, match="No space left on device.*intact"):
        scan(rec, out, tiny_model)
    monkeypatch.undo()
    assert sorted(p.name for p in out.glob("part-*.parquet")) == before
    assert not list(out.glob(".*.tmp"))
    assert len(read(out)[0]) == 3
    assert scan(rec, out, tiny_model).files_ok == 1  # the next run picks up what failed to commit


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_sigint_and_sigterm_stop_cleanly_keeping_finished_files(tmp_path, tiny_model, sig):
    import signal

    rec = tmp_path / "rec"
    for i in range(30):
        write_wav(rec / f"f{i:02d}.wav", 4.0, seed=i)
    out = tmp_path / "det.parquet"
    script = ("import sys\nfrom fieldmon.scan.pipeline import RunOptions, scan\n"
              "s = scan(sys.argv[1], sys.argv[2], sys.argv[3], options=RunOptions(batch_size=4, commit_every_files=2))\n"
              "print('interrupted' if s.interrupted else 'finished', file=sys.stderr)\nsys.exit(s.exit_code)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(rec), str(out), str(tiny_model)],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(files_table_path(out).glob("part-*.parquet")) if files_table_path(out).exists() else True:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.2)
    proc.send_signal(getattr(signal, sig))
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    kept = read(out)[1]
    assert 1 <= len(kept) < 30 and (kept.status == "ok").all()
    summary = scan(rec, out, tiny_model)
    assert summary.files_skipped == len(kept) and summary.files_ok == 30 - len(kept)
    det, files = read(out)
    assert len(det) == 60 and not det.duplicated(["path", "window_start_s"]).any() and files.path.is_unique


def test_warnings_for_low_sample_rates_and_local_times_without_a_zone(tmp_path, tiny_model):
    rec = tmp_path / "rec"
    write_wav(rec / "SITE1_20240101_060000.wav", 2.0, sr=22050)  # Song Meter name: local time
    write_wav(rec / "SITE1_20240101_061000.wav", 2.0, sr=22050)
    write_wav(rec / "b.wav", 2.0, sr=16000)
    write_wav(rec / "c.wav", 2.0)  # the model's 44100 Hz
    out = tmp_path / "det.parquet"

    def warnings(*options: str) -> list[str]:
        result = CliRunner().invoke(main, ["scan", str(rec), "--out", str(out), "--model", str(tiny_model), "--quiet",
                                           *options])
        assert result.exit_code == 0, result.output
        return [line for line in result.output.splitlines() if line.startswith("warning:")]

    rates, zone = warnings()
    assert rates == ("warning: 3 files are recorded below the model's 44100 Hz (1 at 16000 Hz, 2 at 22050 Hz): "
                     "bands above half a file's rate (from 8000 Hz) are empty")
    assert zone.startswith("warning: 2 files give the recorder's local time but no time zone")
    assert f"fieldmon retime {out} --tz ZONE" in zone
    summary = scan(rec / "SITE1_20240101_060000.wav", tmp_path / "one.parquet", tiny_model, ScanSettings(tz="UTC"))
    assert summary.warnings("x") == [
        "1 file is recorded at 22050 Hz, below the model's 44100 Hz: bands above 11025 Hz are empty"]
    assert summary.files_without_utc == 0  # with --tz every local time has its UTC time
    assert warnings("--tz", "Europe/Berlin") == []  # nothing new was scanned, after the output was retimed
