"""The command line itself: start-up cost and option checks."""

from __future__ import annotations

import json
import shutil
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
            "for args in (['--help'], ['scan', '--help'], ['train', '--help'], ['report', '--help'],\n"
            "             ['retime', '--help'], ['info', '--help'], ['review', '--help']):\n"
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
        ("--tz", "Mars/Olympus"), ("--tz", "../etc"),
    ]),
    "retime": (["DET"], [("--tz", "Mars/Olympus"), ("--tz", "")]),
    "train": (["CLIPS", "--out", "OUT/m", "--steps", "1"], [
        ("--steps", "0"), ("--epochs", "-1"), ("--lr", "-1"), ("--hop", "0"), ("--windows-per-class", "1"),
        ("--batch-size", "0"), ("--dropout", "1"), ("--margin-start", "-0.1"), ("--margin-max", "9"),
        ("--eval-every", "0"), ("--checkpoint-every", "0"), ("--open-set-threshold", "1.5"),
        ("--open-set-threshold", "often"), ("--open-set-threshold", "nan"),
        ("--weight-decay", "-1"), ("--time-budget", "soon"), ("--network", "resnet"), ("--optimizer", "lbfgs"),
        ("--augment", "reverse"), ("--device", "tpu"), ("--seed", "-1"), ("--warmup-steps", "-5"),
        ("--head-warmup", "-1"), ("--band-limit", "30000"), ("--band-limit", "0"), ("--band-limit", "low"),
        ("--open-set", "wide"), ("--crossentropy-weight", "-1"), ("--crossentropy-weight", "11"),
        ("--sam-rho", "-0.01"), ("--sam-rho", "2"), ("--pooling", "max"),
    ]),
    "clips": (["DET", "--out", "OUT/c"], [("--per-species", "-1"), ("--per-species", "0"), ("--min-score", "3")]),
    "report": (["DET", "--out", "OUT/r"], [("--min-score", "-1"), ("--model", "/nonexistent/model")]),
    "review": (["DET", "--out", "OUT/v"], [("--per-species", "0"), ("--strata", "0"), ("--strata", "50"),
                                          ("--context", "-1"), ("--seed", "-1"), ("--min-score", "2"),
                                          ("--audio-root", "/nonexistent/recordings")]),
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


def test_info_summarises_the_default_model_and_json_prints_model_json():
    result = CliRunner().invoke(main, ["info", "default"])
    assert result.exit_code == 0, result.output
    out = result.output
    from fieldmon.model.metadata import resolve_model_path

    meta = json.loads((resolve_model_path("default") / "model.json").read_text())
    assert f"model id {meta['model_id']}" in out.splitlines()[0]
    status = next(line for line in out.splitlines() if line.startswith("status:"))
    assert "PRELIMINARY" in status  # its model card says so, and it scores below the target
    assert f"species:    {len(meta['class_names'])}: {meta['class_names'][0]}" in out
    assert f"{meta['metrics']['validation']['file_macro_f1']:.3f}" in out
    assert "shallow baseline" in out and f"threshold {meta['open_set']['threshold']:.3g}" in out and "GFLOP" in out
    rejected = meta["metrics"]["open_set_calibration"]["validation_windows_rejected"]
    assert f"calibrated: rejects {rejected:.0%} of the validation windows" in " ".join(out.split())
    assert f"its own open-set threshold {meta['int8']['open_set']['threshold']:.4g}" in out
    metrics = meta["metrics"]
    assert (f"MLP 128->256->32, started from the nearest class mean (temperature {metrics['mlp_init_temperature']:.3g}); "
            f"kept epoch {metrics['mlp_best_epoch']} of {metrics['mlp_epochs']}") in " ".join(out.split())
    assert "{" not in out  # no settings dump
    for secret in (meta["provenance"]["command"], meta["provenance"]["clips_source"], "/work/"):
        assert secret not in out

    raw = CliRunner().invoke(main, ["info", "default", "--json"])
    assert raw.exit_code == 0 and json.loads(raw.output) == meta


def test_info_marks_a_model_below_the_target_and_prints_no_local_paths(tmp_path, tiny_model):
    bundle = tmp_path / "site"
    shutil.copytree(tiny_model, bundle)
    meta = json.loads((bundle / "model.json").read_text())
    meta["metrics"] = {"validation": {"files": 9, "macro_f1": 0.51234, "file_macro_f1": 0.61789},
                       "baseline": {"validation": {"macro_f1": 0.4, "file_macro_f1": 0.45678}},
                       "mlp_init": "random", "mlp_best_epoch": 12, "mlp_epochs": 112}
    meta["training"] = {"clips": {"train": 20, "validation": 9, "test": 0}, "steps_done": 400, "wall_seconds": 1250.0,
                        "device": "cpu", "clips_left_out": ["/home/alice/field/clips/a/x.wav: silent"],
                        "clips_same_recording": ["/home/alice/field/clips/a/y.wav (a, train) and ... (b, train) hold "
                                                 "the same recording under two labels: at most one is right"]}
    meta["provenance"] = {"command": "fieldmon train /home/alice/field/clips --out /home/alice/models/site",
                          "clips_source": "/home/alice/field/clips", "fieldmon_version": "0.1.0"}
    (bundle / "model.json").write_text(json.dumps(meta))
    result = CliRunner().invoke(main, ["info", str(bundle)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "/home/alice" not in out and "from clips" in out
    assert "PRELIMINARY: validation macro-F1 per file 0.618 is below the 0.75 target" in " ".join(out.split())
    assert "per window 0.512; shallow baseline 0.457 per file, 0.400 per window" in " ".join(out.split())
    assert "400 steps in 20 min 50 s on cpu" in " ".join(out.split())
    assert ("1 left out (silent or unusable); 1 pair(s) holding the same recording (model.json: "
            "training.clips_same_recording)") in " ".join(out.split())
    assert "started from random weights; kept epoch 12 of 112 by validation loss" in " ".join(out.split())
    meta["metrics"]["validation"]["file_macro_f1"] = 0.8
    (bundle / "model.json").write_text(json.dumps(meta))
    good = CliRunner().invoke(main, ["info", str(bundle)]).output
    assert "PRELIMINARY" not in good and "0.800 meets the 0.75 target" in good


def test_every_option_has_a_help_text_and_shows_its_default():
    import click

    for name, command in main.commands.items():
        for param in command.params:
            if not isinstance(param, click.Option) or param.hidden:
                continue
            assert param.help, f"fieldmon {name} {param.opts[0]} has no help text"
            no_default = (None, getattr(click.core, "UNSET", None))  # click 8.2+ marks "none given" with UNSET
            if not param.is_flag and not param.required and all(param.default is not v for v in no_default):
                assert param.show_default, f"fieldmon {name} {param.opts[0]} does not show its default"
