"""The model shipped with the package: it loads, scans the examples, and its model card's
validation figures are what it really scores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import EXAMPLES
from fieldmon import load_model
from fieldmon.evaluation.evaluate import evaluate
from fieldmon.scan.pipeline import scan


def test_default_model_loads_with_its_32_insects_and_int8_version():
    model = load_model("default")
    assert len(model.class_names) == 32 and "Grylluscampestris" in model.class_names
    calibration = model.metrics["open_set_calibration"]
    assert model.open_set is not None and model.open_set.threshold == calibration["threshold"] > 0.01
    drop = calibration["validation_macro_f1_without_rejection"] - calibration["validation_macro_f1_with_rejection"]
    assert 0.0 <= drop <= 0.03
    assert model.metrics["validation"]["file_macro_f1"] > 0
    pytest.importorskip("onnxruntime", reason="int8 needs the int8 extra")
    assert load_model("default", "int8").model_id == model.model_id + "+int8"


def test_default_model_is_a_trained_compact_network_that_beats_the_baseline():
    model = load_model("default")
    assert model.training["network"] == "compact" and model.training["trained"] == "whole network"
    assert model.training["weight_change"] > 0.1  # far from its random start (the old default: 0.00044)
    validation, baseline = model.metrics["validation"], model.metrics["baseline"]["validation"]
    assert validation["file_macro_f1"] > baseline["file_macro_f1"]
    assert validation["file_macro_f1"] > model.metrics["selection"]["history"][0]["val_macro_f1"] + 0.2


def test_scanning_the_examples_with_the_default_model(tmp_path):
    out = tmp_path / "detections.parquet"
    summary = scan(EXAMPLES / "recordings", out)
    assert summary.exit_code == 0 and summary.files_ok == 5
    detections = pd.read_parquet(out)
    assert set(detections.path) == {p.name for p in (EXAMPLES / "recordings").iterdir()}
    assert set(detections.label) <= set(load_model("default").class_names) | {"unknown"}
    assert len(detections) == summary.windows == 4 + 4 + 4 + 4 + 5


def test_model_card_figures_are_reproduced_on_the_validation_split(tmp_path, insectset):
    manifest = insectset / "manifest.csv"
    model = load_model("default")
    result = evaluate("default", manifest, split="validation", cache_dir=tmp_path / "cache")
    recorded = model.metrics["validation"]
    assert result["windows"] == recorded["windows"] and result["files"] == recorded["files"]
    for key in ("macro_f1", "file_macro_f1", "accuracy", "macro_f1_with_rejection", "known_rejected"):
        assert result[key] == pytest.approx(recorded[key], abs=0.01), key


def test_example_scripts_run(tmp_path):
    api = subprocess.run([sys.executable, str(EXAMPLES / "python_api.py")], capture_output=True, text=True, cwd=tmp_path)
    assert api.returncode == 0, api.stderr
    assert len(api.stdout.strip().splitlines()) == 4  # one line per window of the 8 s cricket recording
    read = subprocess.run([sys.executable, str(EXAMPLES / "scan_and_read.py")], capture_output=True, text=True,
                          cwd=tmp_path)
    assert read.returncode == 0, read.stderr
    assert "5 files scanned, 0 failed" in read.stdout and (tmp_path / "detections.parquet").is_dir()


def test_site_model_example_trains_evaluates_and_scans(tmp_path):
    # the fieldmon command installed beside this Python, as in an activated venv
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    run = subprocess.run(["bash", str(EXAMPLES / "train_site_model.sh"), str(tmp_path / "site")],
                         capture_output=True, text=True, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert load_model(tmp_path / "site").class_names == sorted(
        ["Chorthippusbiguttulus", "Chorthippusbrunneus", "Pseudochorthippusparallelus"])
    assert len(pd.read_parquet(tmp_path / "site-detections.parquet")) == 21
