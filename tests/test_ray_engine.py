"""The Ray engine: its placement rules and stage plumbing (fast, no Ray needed), and a
real local Ray instance whose output must equal the local engine's row for row, also
after the driver is killed and the scan run again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import write_wav
from fieldmon.model.loading import load_model
from fieldmon.outputs.store import files_table_path
from fieldmon.recorder import RecorderInfo
from fieldmon.scan.discovery import Recording
from fieldmon.scan.pipeline import RayOptions, RunOptions, scan
from fieldmon.scan.ray_engine import default_temp_dir, plan_placement
from fieldmon.scan.stages import DecodedFile, ScanCollector, ScanProgress, ScanSettings, ScanSummary, WindowPredictions


def placement(cpus: float, gpus: int = 0, **ray):
    return plan_placement({"CPU": cpus, "GPU": gpus}, RunOptions(ray=RayOptions(**ray)))


def test_actor_pool_never_takes_every_cpu():
    two = placement(2)
    assert (two.actors, two.actor_cpus, two.torch_threads, two.device) == (1, 1.5, 2, "cpu")
    big = placement(64)
    assert big.actors * big.actor_cpus <= 0.75 * 64 and big.torch_threads == 4
    with pytest.raises(ValueError, match="no CPU for decoding"):
        placement(4, actors=2, actor_cpus=2)


def test_one_gpu_actor_per_gpu():
    p = placement(32, gpus=4)
    assert (p.actors, p.actor_gpus, p.device) == (4, 1, "cuda")
    assert placement(32, gpus=4, actors=2).actors == 2
    with pytest.raises(ValueError, match="no GPUs"):
        plan_placement({"CPU": 8}, RunOptions(device="cuda"))


def test_ray_temp_dir_stays_short_enough_for_unix_sockets(tmp_path):
    long_out = tmp_path / ("x" * 60) / "det.parquet"
    assert len(default_temp_dir(long_out)) <= 44
    assert default_temp_dir(Path("/d.parquet")) == "/d.parquet/_fieldmon/ray"


def test_decoded_file_survives_the_trip_between_processes():
    import datetime as dt

    info = RecorderInfo(dt.datetime(2024, 5, 1, 5, 30), dt.datetime(2024, 5, 1, 3, 30, tzinfo=dt.timezone.utc),
                        "SITE1", "songmeter-name")
    decoded = DecodedFile(Recording(Path("/r/a.wav"), "a.wav", 10, 20), info, 48000, 2, 5, 160000, None,
                          "every sample is zero", silent_seconds=2.5)
    assert DecodedFile.from_json(decoded.to_json()) == decoded


def test_collector_takes_windows_in_any_order_and_counts_repeats_once(tmp_path, tiny_model):
    from fieldmon.outputs.store import DetectionStore

    bundle = load_model(tiny_model)
    summary = ScanSummary()
    with DetectionStore(tmp_path / "o.parquet", "k", {}) as store:
        collector = ScanCollector(bundle, ScanSettings(), store, {}, summary, ScanProgress())
        sr = bundle.feature_settings.sample_rate  # window starts are at the model's rate
        decoded = DecodedFile(Recording(tmp_path / "a.wav", "a.wav", 1, 1), RecorderInfo(None, None, "s", None),
                              48000, 1, windows=3, decoded_samples=6 * sr)
        p = WindowPredictions(np.full((2, 3), 1 / 3, np.float32), np.ones(2, np.float32), None)
        collector.add_windows("a.wav", np.array([2 * sr, 4 * sr]), np.array([False, False]), p)
        collector.file_decoded(decoded)  # the closing row overtook a window
        collector.add_windows("a.wav", np.array([4 * sr]), np.array([False]), p.slice(0, 1))  # a retried task
        assert summary.files_ok == 0
        collector.add_windows("a.wav", np.array([0]), np.array([False]), p.slice(0, 1))
        assert summary.files_ok == 1 and summary.windows == 3
        collector.commit()
    det = pd.read_parquet(tmp_path / "o.parquet")
    assert det.window_start_s.tolist() == [0.0, 2.0, 4.0]


# -- a real local Ray instance -----------------------------------------------------------

RAY_TIMEOUT_S = 240  # hard limit per Ray job; Ray's fixed cost here is 10-30 s


def recordings(root: Path) -> Path:
    for i in range(6):
        write_wav(root / f"site{i % 2}" / f"r{i}.wav", 3.0 + 2.5 * i, sr=(48000, 22050)[i % 2], seed=i)
    (root / "site1" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    return root


def read_sorted(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    det = pd.read_parquet(out).sort_values(["path", "window_start_s"]).reset_index(drop=True)
    files = pd.read_parquet(files_table_path(out)).drop(columns="scanned_at").sort_values("path").reset_index(drop=True)
    return det, files


def assert_same_rows(a: Path, b: Path) -> None:
    (det_a, files_a), (det_b, files_b) = read_sorted(a), read_sorted(b)
    pd.testing.assert_frame_equal(files_a, files_b)
    exact = [c for c in det_a.columns if c not in ("score", "open_set_score", "top_scores")]
    pd.testing.assert_frame_equal(det_a[exact], det_b[exact])
    # batches are composed differently, so floats may differ in the last bits
    np.testing.assert_allclose(det_a.score, det_b.score, rtol=1e-5)
    np.testing.assert_allclose(np.stack(det_a.top_scores), np.stack(det_b.top_scores), rtol=1e-5)


RAY_SCAN = """
import sys, time
from fieldmon.scan.pipeline import RayOptions, RunOptions, scan
from fieldmon.scan.stages import ScanProgress

class Slow(ScanProgress):  # keeps the driver busy, so that a kill lands mid-run
    def file_done(self, *args):
        time.sleep(float(sys.argv[4]))

options = RunOptions(commit_every_files=1, engine="ray", ray=RayOptions(num_cpus=2))
sys.exit(scan(sys.argv[1], sys.argv[2], sys.argv[3], options=options, progress=Slow()).exit_code)
"""


def run_ray_scan(rec: Path, out: Path, model: Path, slow_s: float, kill_after_parts: int | None = None) -> int | None:
    """Runs a Ray scan in its own process group under a hard timeout; kills the whole
    group (driver and Ray's processes) once ``kill_after_parts`` parts are committed."""
    proc = subprocess.Popen([sys.executable, "-c", RAY_SCAN, str(rec), str(out), str(model), str(slow_s)],
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + RAY_TIMEOUT_S
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            parts = files_table_path(out)
            if kill_after_parts and parts.exists() and len(list(parts.glob("part-*.parquet"))) >= kill_after_parts:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return None
            time.sleep(0.05)
        if proc.poll() is None:
            pytest.fail(f"the Ray scan did not finish within {RAY_TIMEOUT_S} s")
        assert proc.returncode in (0, 3), proc.stdout.read()
        return proc.returncode
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.ray
def test_ray_engine_equals_local_engine_also_after_a_kill_and_rerun(tmp_path, tiny_model):
    pytest.importorskip("ray.data", reason="the Ray engine needs pip install 'fieldmon[ray]' (CI installs it)")
    rec = recordings(tmp_path / "rec")
    local = tmp_path / "local.parquet"
    assert scan(rec, local, tiny_model).files_failed == 1

    whole = tmp_path / "ray.parquet"
    assert run_ray_scan(rec, whole, tiny_model, slow_s=0) == 3  # 3: the broken file is recorded as failed
    assert_same_rows(local, whole)

    killed = tmp_path / "killed.parquet"
    assert run_ray_scan(rec, killed, tiny_model, slow_s=1.0, kill_after_parts=2) is None
    committed = len(pd.read_parquet(files_table_path(killed)))
    assert 2 <= committed < 7, f"the kill should land mid-run ({committed} of 7 files committed)"
    assert run_ray_scan(rec, killed, tiny_model, slow_s=0) == 3
    assert_same_rows(local, killed)
