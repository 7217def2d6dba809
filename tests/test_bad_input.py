"""A deployment's worth of broken and unusual files in one folder (issue: reliability)."""

from __future__ import annotations

import os
import struct

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from conftest import noise, write_wav
from fieldmon.audio import SilenceCounter
from fieldmon.outputs.report import effort
from fieldmon.outputs.store import files_table_path
from fieldmon.outputs.tables import read_scan
from fieldmon.scan.pipeline import EXIT_FILES_FAILED, scan


def wav_header_only(path):
    with sf.SoundFile(path, "w", samplerate=44100, channels=1, subtype="PCM_16"):
        pass


def truncated_copy(source, target, keep_fraction=0.5):
    data = source.read_bytes()
    target.write_bytes(data[: 44 + int((len(data) - 44) * keep_fraction)])


def claims_more_than_it_has(source, target):
    data = bytearray(source.read_bytes())
    data[40:44] = struct.pack("<I", struct.unpack("<I", bytes(data[40:44]))[0] * 10)  # data chunk size x10
    target.write_bytes(bytes(data))


def unfinished_copy(source, target):
    """As a recorder that lost power leaves it: the header's sizes never filled in."""
    data = bytearray(source.read_bytes())
    data[4:8] = data[40:44] = bytes(4)
    target.write_bytes(bytes(data))


def test_mixed_bad_and_unusual_files(tmp_path, tiny_model):
    rec = tmp_path / "rec"
    good = write_wav(rec / "good.wav", 4.0)
    (rec / "zero.wav").write_bytes(b"")
    wav_header_only(rec / "header_only.wav")
    truncated_copy(good, rec / "truncated.wav")
    claims_more_than_it_has(good, rec / "claims_more.wav")
    unfinished_copy(good, rec / "unfinished.wav")
    (rec / "random.wav").write_bytes(np.random.default_rng(0).bytes(20000))
    (rec / "text.flac").write_text("this is not audio\n" * 100)
    write_wav(rec / "u8.wav", 2.0, subtype="PCM_U8")
    write_wav(rec / "pcm24.wav", 2.0, subtype="PCM_24")
    y = noise(2.0)
    y[1000:1100] = np.nan
    y[5000] = np.inf
    y[6000] = -np.inf
    sf.write(rec / "float_nan.wav", y, 44100, subtype="FLOAT")
    sf.write(rec / "all_nan.wav", np.full(1000, np.nan, np.float32), 44100, subtype="FLOAT")
    sf.write(rec / "digital_silence.wav", np.zeros(88200, np.float32), 44100)
    cut_out = noise(6.0)
    cut_out[44100:44100 + 110250] = 0  # 2.5 s with the microphone cut out
    cut_out[250000:250000 + 30000] = 0  # 0.68 s: too short to be sure
    sf.write(rec / "cut_out.wav", cut_out, 44100)
    write_wav(rec / "eight_channels.wav", 2.0, channels=8)
    sf.write(rec / "one_sample.wav", np.array([0.1], np.float32), 44100)
    write_wav(rec / "rate_8k.wav", 3.0, sr=8000)
    write_wav(rec / "rate_384k.wav", 2.0, sr=384000)
    (rec / "loop_a.wav").symlink_to(rec / "loop_b.wav")
    (rec / "loop_b.wav").symlink_to(rec / "loop_a.wav")
    (rec / "dir_loop").symlink_to(rec)
    write_wav(rec / "with space ünïcode.wav", 2.0)
    write_wav(rec / os.fsdecode(b"latin1_\xe9t\xe9.wav"), 2.0)
    write_wav(rec / "site_a" / "same.wav", 2.0)
    write_wav(rec / "site_b" / "same.wav", 2.0)

    out = tmp_path / "det.parquet"
    summary = scan(rec, out, tiny_model)
    assert summary.exit_code == EXIT_FILES_FAILED
    det = pd.read_parquet(out)
    files = pd.read_parquet(files_table_path(out)).set_index("path")

    failed = files[files.status == "failed"]
    assert sorted(failed.index) == ["header_only.wav", "loop_a.wav", "loop_b.wav", "random.wav", "text.flac",
                                    "zero.wav"]
    assert failed.loc["zero.wav", "error"] == "the file is empty (0 bytes)"
    assert failed.loc["header_only.wav", "error"] == "the file holds no audio samples"
    assert "symbolic links" in failed.loc["loop_a.wav", "error"]
    assert failed.loc["random.wav", "error"].startswith("not a readable audio file")

    ok = files[files.status == "ok"]
    windows = ok["windows"].to_dict()
    assert windows["good.wav"] == 2 and windows["eight_channels.wav"] == 1 and windows["one_sample.wav"] == 1
    assert windows["rate_8k.wav"] == 2 and windows["rate_384k.wav"] == 1
    assert ok.loc["rate_384k.wav", "sample_rate"] == 384000
    assert 1 <= windows["truncated.wav"] <= 2 and 1 <= windows["claims_more.wav"] <= 2
    assert windows["unfinished.wav"] == 2 and ok.loc["unfinished.wav", "duration_s"] == 4.0
    unfinished = det[det.path == "unfinished.wav"].reset_index(drop=True)
    same = det[det.path == "good.wav"].reset_index(drop=True)
    # the same audio as good.wav (scores to float error: the batches hold other windows)
    np.testing.assert_allclose(unfinished.score, same.score, rtol=1e-4)
    assert list(unfinished.label) == list(same.label)
    assert {"site_a/same.wav", "site_b/same.wav", "with space ünïcode.wav", "latin1_\\xe9t\\xe9.wav"} <= set(ok.index)
    assert len(det) == ok["windows"].sum()
    # Scanned, since their windows are as real as any, but flagged: silence from a broken
    # recorder, or time a file lost, must not pass for "nothing detected".
    flagged = ok["error"].dropna().to_dict()
    assert flagged == {
        "truncated.wav": "cut short: the header promises 4.0 s but the file ends after 2.0 s (a full card, "
                         "an interrupted copy, or lost power?)",
        "claims_more.wav": "cut short: the header promises 40.0 s but the file ends after 4.0 s (a full card, "
                           "an interrupted copy, or lost power?)",
        "unfinished.wav": "the header says the recording holds no audio, but 4.0 s of it follow: an unfinished "
                          "file (did the recorder lose power before closing it?), read to its end",
        "float_nan.wav": "102 of 88200 samples are not numbers (NaN or infinite) and were read as silence: "
                         "a damaged file or a faulty recorder",
        "all_nan.wav": "all 1000 samples are not numbers (NaN or infinite) and were read as silence: "
                       "a damaged file or a faulty recorder",
        "digital_silence.wav": "every sample is zero (digital silence): a dead microphone or a muted input?",
        "cut_out.wav": "110250 of 264600 samples lie in stretches of 1 s or more of digital silence (every sample "
                       "zero): a microphone that cut out or a muted input? Not counted as recorded",
    }
    # that silence is no recording effort; whatever the rest of a file holds is
    silent = ok["silent_s"].to_dict()
    assert silent["cut_out.wav"] == 2.5 and silent["digital_silence.wav"] == 2.0
    assert silent["all_nan.wav"] == pytest.approx(1000 / 44100)
    assert all(silent[name] == 0 for name in ok.index if name not in ("cut_out.wav", "digital_silence.wav",
                                                                        "all_nan.wav"))
    assert sorted(summary.file_warnings) == sorted(flagged.items())
    assert any("7 files were scanned with a warning" in line for line in summary.warnings(str(out)))
    eff = effort(read_scan(out))
    assert eff.hours_silent.sum() * 3600 == pytest.approx(2.5 + 2.0 + 1000 / 44100, abs=0.5)  # rounded to 1e-4 h
    assert eff.hours_recorded.sum() * 3600 == pytest.approx(ok["duration_s"].sum() - 4.5 - 1000 / 44100, abs=0.5)
    assert eff.files_flagged.sum() == 7 and eff.files_ok.sum() == len(ok) and eff.files_failed.sum() == len(failed)
    assert np.isfinite(det.score).all() and np.isfinite(det.open_set_score).all()
    assert np.isfinite(np.stack(det.top_scores)).all()


def test_unreadable_file_is_recorded_and_the_others_scanned(tmp_path, tiny_model):
    import shutil
    import subprocess
    import sys

    rec = tmp_path / "rec"
    write_wav(rec / "good.wav", 2.0)
    write_wav(rec / "secret.wav", 2.0).chmod(0)
    out = tmp_path / "det.parquet"
    command = [sys.executable, "-c", "import sys; from fieldmon.scan.pipeline import scan; "
               f"sys.exit(scan({str(rec)!r}, {str(out)!r}, {str(tiny_model)!r}).exit_code)"]
    if os.geteuid() == 0:
        # chmod 000 does not stop root: run the scan without the capabilities that bypass it
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without util-linux setpriv, so no file can be made unreadable")
        command = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *command]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == EXIT_FILES_FAILED, result.stderr
    files = pd.read_parquet(files_table_path(out)).set_index("path")
    assert files.loc["good.wav", "status"] == "ok"
    assert files.loc["secret.wav", "status"] == "failed"
    assert "permission denied" in files.loc["secret.wav", "error"]


def test_file_still_being_copied_is_rescanned_once_complete(tmp_path, tiny_model):
    # A cron scan can meet a file mid-copy: it gets whatever was there, and the next
    # run sees the new size and mtime and replaces that file's rows.
    rec = tmp_path / "rec"
    full = write_wav(tmp_path / "source" / "night.wav", 12.0)
    write_wav(rec / "other.wav", 2.0)
    target = rec / "night.wav"
    truncated_copy(full, target, keep_fraction=0.3)  # header written, copy under way
    out = tmp_path / "det.parquet"
    first = scan(rec, out, tiny_model)
    assert first.exit_code == 0 and first.files_ok == 2

    target.write_bytes(full.read_bytes())  # the copy completes
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    second = scan(rec, out, tiny_model)
    assert second.files_ok == 1 and second.files_skipped == 1

    reference = tmp_path / "ref.parquet"
    scan(rec, reference, tiny_model)
    columns = ["path", "window_start_s", "label", "score"]
    got = pd.read_parquet(out)[columns].sort_values(columns[:2]).reset_index(drop=True)
    want = pd.read_parquet(reference)[columns].sort_values(columns[:2]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want)
    assert (got.path == "night.wav").sum() == 6


def test_read_only_output_is_a_clear_error_and_stays_intact(tmp_path, tiny_model):
    import shutil
    import subprocess
    import sys

    rec = tmp_path / "rec"
    write_wav(rec / "a.wav", 2.0)
    out = tmp_path / "det.parquet"
    scan(rec, out, tiny_model)
    def contents():  # everything but the lock file, which holds the holder's pid
        return {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "lock"}

    before = contents()
    write_wav(rec / "b.wav", 2.0, seed=1)
    for p in [out, *[d for d in out.rglob("*") if d.is_dir()]]:
        p.chmod(0o555)
    command = [sys.executable, "-m", "fieldmon", "scan", str(rec), "--out", str(out), "--model", str(tiny_model)]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without util-linux setpriv, so no folder can be made read-only")
        command = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *command]
    try:
        result = subprocess.run(command, capture_output=True, text=True)
    finally:
        for p in [out, *[d for d in out.rglob("*") if d.is_dir()]]:
            p.chmod(0o755)
    assert result.returncode == 1, result.stderr
    assert str(out) in result.stderr and "ermission denied" in result.stderr
    assert "Traceback" not in result.stderr
    assert contents() == before


def test_silence_counter_matches_a_sample_by_sample_count_across_any_blocks():
    rng = np.random.default_rng(0)
    for _ in range(500):
        samples = (rng.random(rng.integers(0, 300)) < rng.random()).astype(np.float32)  # runs of zeros
        shortest = int(rng.integers(1, 30))
        expected, run = 0, 0
        for value in np.append(samples, 1):
            if value == 0:
                run += 1
            else:
                expected += run if run >= shortest else 0
                run = 0
        counter = SilenceCounter(shortest)
        for block in np.split(samples, np.sort(rng.integers(0, len(samples) + 1, rng.integers(0, 8)))):
            counter.add(block)
        assert counter.finish() == expected


def test_an_output_from_before_silence_was_counted_reads_and_goes_on(tmp_path, tiny_model):
    rec = tmp_path / "rec"
    write_wav(rec / "old.wav", 4.0)
    out = tmp_path / "det.parquet"
    scan(rec, out, tiny_model)
    for part in files_table_path(out).glob("part-*.parquet"):  # as an older fieldmon wrote it
        pq.write_table(pq.read_table(part).drop_columns(["silent_s"]), part)
    sf.write(rec / "dead.wav", np.zeros(88200, np.float32), 44100)
    scan(rec, out, tiny_model)
    files = read_scan(out).files.set_index("path")
    assert files.loc["dead.wav", "silent_s"] == 2.0 and np.isnan(files.loc["old.wav", "silent_s"])
    assert effort(read_scan(out)).hours_recorded.sum() == pytest.approx(4.0 / 3600, abs=1e-4)
