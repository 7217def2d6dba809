"""The command line itself: start-up cost and option checks."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from fieldmon.cli import main


def test_help_imports_no_heavy_library():
    # `fieldmon --help` and every command's --help must not wait for torch, numba,
    # librosa, pandas or matplotlib (seconds on a small machine); commands import them
    # when they run.
    code = ("import sys; from click.testing import CliRunner; from fieldmon.cli import main\n"
            "for args in (['--help'], ['scan', '--help'], ['train', '--help'], ['report', '--help']):\n"
            "    assert CliRunner().invoke(main, args).exit_code == 0, args\n"
            "heavy = {'torch', 'numba', 'librosa', 'pandas', 'matplotlib'} & set(sys.modules)\n"
            "print(sorted(heavy))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


SWEEP = {
    "scan": (["REC", "--out", "OUT/d.parquet"], [
        ("--hop", "0"), ("--hop", "-1"), ("--hop", "abc"), ("--top-k", "0"), ("--batch-size", "0"),
        ("--workers", "0"), ("--min-score", "-0.1"), ("--min-score", "2"), ("--time-limit", "0"),
        ("--channel", "-1"), ("--device", "tpu"), ("--precision", "int4"), ("--ray-cpus", "0"),
        ("--ray-object-store-gb", "0"), ("--ray-actors", "0"), ("--ray-actor-cpus", "0"), ("--engine", "spark"),
    ]),
    "train": (["CLIPS", "--out", "OUT/m", "--steps", "1"], [
        ("--steps", "0"), ("--epochs", "-1"), ("--lr", "-1"), ("--hop", "0"), ("--windows-per-class", "1"),
        ("--batch-size", "0"), ("--dropout", "1"), ("--margin-start", "-0.1"), ("--margin-max", "9"),
        ("--eval-every", "0"), ("--checkpoint-every", "0"), ("--open-set-threshold", "1.5"),
        ("--weight-decay", "-1"), ("--time-budget", "soon"), ("--network", "resnet"), ("--optimizer", "lbfgs"),
        ("--augment", "reverse"), ("--device", "tpu"), ("--seed", "-1"), ("--warmup-steps", "-5"),
    ]),
    "clips": (["DET", "--out", "OUT/c"], [("--per-species", "-1"), ("--per-species", "0"), ("--min-score", "3")]),
    "report": (["DET", "--out", "OUT/r"], [("--min-score", "-1")]),
    "export": (["DET", "--format", "csv", "--out", "OUT/e"], [("--min-score", "5"), ("--format", "xls")]),
    "quantize": (["default", "CLIPS"], [("--windows", "0")]),
    "evaluate": (["default", "CLIPS"], [("--split", "holdout"), ("--precision", "int4")]),
}


def sweep_cases():
    for command, (base, bad) in SWEEP.items():
        for option, value in bad:
            yield pytest.param(command, base, option, value, id=f"{command} {option} {value}")


@pytest.mark.parametrize("command, base, option, value", list(sweep_cases()))
def test_every_invalid_option_value_is_refused_with_a_usage_error(tmp_path, command, base, option, value):
    (tmp_path / "REC").mkdir()
    (tmp_path / "CLIPS" / "a").mkdir(parents=True)
    (tmp_path / "DET").mkdir()
    (tmp_path / "OUT").mkdir()
    args = [command, *(str(tmp_path / a) if a.isupper() or a.startswith("OUT/") else a for a in base), option, value]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and option in errors[0], result.output


def test_scanning_a_folder_without_audio_warns(tmp_path, tiny_model):
    (tmp_path / "rec").mkdir()
    (tmp_path / "rec" / "notes.txt").write_text("not audio")
    result = CliRunner().invoke(main, ["scan", str(tmp_path / "rec"), "--out", str(tmp_path / "d.parquet"),
                                       "--model", str(tiny_model), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "warning: no audio files (" in result.output and str(tmp_path / "rec") in result.output
