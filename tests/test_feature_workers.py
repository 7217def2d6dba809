"""The feature processes of a CPU scan (fieldmon.scan.feature_workers)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import start_slow_scan, write_wav

from fieldmon import load_model
from fieldmon.audio import load_audio
from fieldmon.feature_extractor import FeatureExtractor
from fieldmon.features import FeatureSettings
from fieldmon.scan.discovery import discover
from fieldmon.scan.feature_workers import FeatureWorkers
from fieldmon.scan.pipeline import RunOptions, ScanSettings, scan

from test_scan import read

TASK = {"features": FeatureSettings().to_dict(), "hop": FeatureSettings().window_samples, "channel": None, "tz": None}


def messages_until(workers: FeatureWorkers, condition, timeout: float = 60.0) -> list:
    seen, deadline = [], time.monotonic() + timeout
    while not condition(seen):
        assert time.monotonic() < deadline, f"no such message in {timeout} s: {seen}"
        seen += list(workers.messages(timeout=0.1))
    return seen


def test_features_from_the_workers_equal_the_feature_extractor(tmp_path):
    path = write_wav(tmp_path / "rec" / "a.wav", 9.0, sr=48000)  # resampled, and a partial last window
    recordings, _ = discover(tmp_path / "rec")
    workers = FeatureWorkers(1)
    try:
        workers.hand_out(recordings, TASK)
        seen = messages_until(workers, lambda seen: any(m[0] == "done" for m in seen))
    finally:
        workers.close()
    windows = [m for m in seen if m[0] == "windows"]
    done = seen[-1][1]
    assert done.error is None and done.windows == 5 and done.sample_rate == 48000
    features = np.concatenate([m[4] for m in windows])
    assert np.concatenate([m[2] for m in windows]).tolist() == [0, 88200, 176400, 264600, 352800]
    settings = FeatureSettings()
    samples = load_audio(path, settings.sample_rate)
    first = samples[: settings.window_samples]
    np.testing.assert_array_equal(features[0], FeatureExtractor(settings)(first[None])[0].numpy())


def test_a_worker_that_dies_fails_its_file_and_a_new_worker_scans_the_rest(tmp_path):
    write_wav(tmp_path / "rec" / "a.wav", 600.0)  # 300 windows: still being worked on at the first message
    write_wav(tmp_path / "rec" / "b.wav", 20.0)
    recordings, _ = discover(tmp_path / "rec")
    workers = FeatureWorkers(1)
    try:
        workers.hand_out(recordings, TASK)
        messages_until(workers, lambda seen: any(m[0] == "windows" for m in seen))
        first = workers.workers[0]
        first.process.kill()  # as the kernel's out-of-memory killer, or a decoder's segfault, would
        seen = messages_until(workers, lambda seen: sum(m[0] == "done" for m in seen) == 2)
        assert not workers.alive or workers.workers[0] is not first
    finally:
        workers.close()
    done = {m[1].recording.relative: m[1] for m in seen if m[0] == "done"}
    assert "stopped (exit code -9) while decoding it" in done["a.wav"].error
    assert done["b.wav"].error is None and done["b.wav"].windows == 10


def test_scan_with_several_workers_equals_one_worker(tmp_path, tiny_model):
    for i in range(4):
        write_wav(tmp_path / "rec" / f"f{i}.wav", 5.0, seed=i)
    outputs = []
    for workers in (1, 3):
        out = tmp_path / f"det{workers}.parquet"
        summary = scan(tmp_path / "rec", out, tiny_model,
                       options=RunOptions(device="cpu", workers=workers, feature_processes=True))
        assert summary.files_ok == 4 and summary.exit_code == 0
        det, _ = read(out)
        outputs.append(det.sort_values(["path", "window_start_s"]).reset_index(drop=True))
    columns = ["path", "window_start_s", "label"]
    assert outputs[0][columns].equals(outputs[1][columns])
    # Windows from several workers meet in other batches, and oneDNN's kernels differ by batch size in the last bits.
    np.testing.assert_allclose(outputs[0].score, outputs[1].score, rtol=1e-5)


def test_features_in_the_scans_process_give_the_rows_of_the_feature_processes(tmp_path, tiny_model):
    for i in range(3):
        write_wav(tmp_path / "rec" / f"f{i}.wav", 5.0 + i, sr=48000, seed=i)
    for processes in (True, False):
        summary = scan(tmp_path / "rec", tmp_path / f"{processes}.parquet", tiny_model,
                       options=RunOptions(device="cpu", feature_processes=processes))
        assert summary.files_ok == 3
    columns = ["path", "window_start_s", "partial", "label", "score"]
    by_processes, in_process = (read(tmp_path / f"{processes}.parquet")[0].sort_values(columns[:2])[columns]
                                .reset_index(drop=True) for processes in (True, False))
    assert len(in_process) == 3 + 3 + 4 and in_process[columns[:4]].equals(by_processes[columns[:4]])
    # the same features; the network ran on one thread beside the processes, on two without
    np.testing.assert_allclose(in_process.score, by_processes.score, rtol=1e-5)


def test_scan_rows_equal_the_model_on_the_same_windows(tmp_path, tiny_model):
    path = write_wav(tmp_path / "rec" / "a.wav", 6.0)
    out = tmp_path / "det.parquet"
    scan(tmp_path / "rec", out, tiny_model, ScanSettings(top_k=1), RunOptions(device="cpu", feature_processes=True))
    det, _ = read(out)
    bundle = load_model(tiny_model)
    settings = bundle.feature_settings
    windows = load_audio(path, settings.sample_rate).reshape(3, settings.window_samples)
    with torch.inference_mode():
        expected = bundle.predict(FeatureExtractor(settings)(windows), settings).probabilities.max(dim=1).values
    np.testing.assert_allclose(det.sort_values("window_start_s")["score"].to_numpy(), expected.numpy(), rtol=1e-6)


def test_the_workers_import_no_torch():
    code = ("import sys\nimport fieldmon.scan.feature_workers, fieldmon.scan.decoding, fieldmon.features\n"
            "from fieldmon.features import hpss_mel\nimport numpy as np\n"
            "hpss_mel(np.zeros((1, 88200), np.float32))\nassert 'torch' not in sys.modules, 'torch'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_script_without_a_main_guard_can_scan(tmp_path, tiny_model):
    # multiprocessing's "spawn" would run such a script again in every feature process
    write_wav(tmp_path / "rec" / "a.wav", 4.0)
    script = tmp_path / "my_scan.py"
    script.write_text("from fieldmon.scan.pipeline import RunOptions, scan\n"
                      f"s = scan({str(tmp_path / 'rec')!r}, {str(tmp_path / 'det.parquet')!r}, {str(tiny_model)!r},"
                      " options=RunOptions(device='cpu', workers=2, feature_processes=True))\n"
                      "print('scanned', s.files_ok)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("scanned 1") == 1


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the feature processes in /proc (Linux)")
def test_feature_processes_end_when_the_scan_is_killed(tmp_path, tiny_model):
    for i in range(3):
        write_wav(tmp_path / "rec" / f"f{i}.wav", 30.0, seed=i)
    proc = start_slow_scan(tmp_path / "started", str(tmp_path / "rec"), "--out", str(tmp_path / "det.parquet"),
                           "--model", str(tiny_model), "--device", "cpu", "--workers", "2", "--feature-processes",
                           "--quiet")
    workers = _children(proc.pid)
    assert len(workers) == 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while any(_running(pid) for pid in workers):
        assert time.monotonic() < deadline, "a feature process outlived the scan"
        time.sleep(0.1)


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_feature_processes_by_default_with_the_onnx_precisions_only():
    from fieldmon.scan.options import RunOptions, uses_feature_processes

    assert uses_feature_processes(RunOptions(precision="int8")) and uses_feature_processes(
        RunOptions(precision="fp32-onnx"))
    assert not uses_feature_processes(RunOptions()) and not uses_feature_processes(RunOptions(precision="bf16"))
    assert uses_feature_processes(RunOptions(feature_processes=True))
    assert not uses_feature_processes(RunOptions(precision="int8", feature_processes=False))
    assert not uses_feature_processes(RunOptions(precision="int8", engine="ray"))
