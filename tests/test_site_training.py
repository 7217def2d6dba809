"""Site models: a wall-clock budget, Ctrl-C that still writes the model, few clips, odd clips."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from conftest import INSECTSET, noise, require_shared, tone
from fieldmon import load_model
from fieldmon.cli import main
from fieldmon.train.api import TrainCallbacks, train
from fieldmon.train.settings import TrainSettings
from test_training import TINY_COMPACT, make_loop


class SimulatedClock:
    """Stands in for the training loop's ``time`` module: time passes only in training
    steps, so the budget tests do not depend on how busy the machine is."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def simulate_steps(monkeypatch, loop, seconds_of_step) -> None:
    """Each training step of ``loop`` takes ``seconds_of_step(step)`` simulated seconds."""
    import fieldmon.train.loop as loop_module

    clock = SimulatedClock()
    monkeypatch.setattr(loop_module, "time", clock)
    step = loop._step

    def timed_step():
        clock.now += seconds_of_step(loop.state.step)
        return step()

    monkeypatch.setattr(loop, "_step", timed_step)


def test_time_budget_fits_the_schedule_and_stops_on_time(tmp_path, monkeypatch):
    settings = TrainSettings(time_budget_seconds=3.0, windows_per_class=3, eval_every=2, warmup_steps=2)
    loop = make_loop(tmp_path, settings)
    messages = []
    loop.on_message = messages.append
    simulate_steps(monkeypatch, loop, lambda step: 0.2)
    state = loop.run()
    assert state.out_of_time and not state.interrupted
    assert 3.0 <= state.seconds < 3.0 + 0.2 + 1e-9  # stops after the step that crosses the budget
    assert state.step == 15
    assert state.planned_steps is not None and any("fit the" in m for m in messages)
    assert loop.learning_rate(state.planned_steps) == 0.0  # the cosine ends where the budget was expected to
    best = max(h["val_macro_f1"] for h in state.history)
    assert state.best_metric == best
    assert [h["step"] for h in state.history if h["val_macro_f1"] == best][0] == state.best_step


def test_the_schedule_follows_a_pace_that_changes(tmp_path, monkeypatch):
    settings = TrainSettings(time_budget_seconds=4.0, windows_per_class=3, eval_every=5, warmup_steps=0)
    loop = make_loop(tmp_path, settings)
    plans = []
    loop.on_message = lambda text: "fit the" in text and plans.append(loop.state.planned_steps)
    simulate_steps(monkeypatch, loop, lambda step: 0.3 if step < 5 else 0.05)  # a shared machine, then alone
    state = loop.run()
    assert state.out_of_time
    first_plan = plans[0]
    assert state.step > first_plan + settings.eval_every  # the pace did change
    # planned again as the pace changed: the cosine ran to the end of the budget, not to the first plan
    assert state.planned_steps >= state.step - settings.eval_every


def test_ctrl_c_writes_the_model_from_the_best_weights_and_resume_continues(tmp_path):
    from test_training import small_manifest

    manifest = small_manifest(tmp_path)
    settings = TrainSettings(steps=50, windows_per_class=3, eval_every=2, baseline=False)
    callbacks = TrainCallbacks(message=lambda text: None,
                               step=lambda report: report.step == 3 and os.kill(os.getpid(), signal.SIGINT))
    bundle = train(manifest, tmp_path / "model", settings, cache_dir=tmp_path / "cache", callbacks=callbacks,
                   network_settings=TINY_COMPACT)
    saved = load_model(tmp_path / "model")
    assert saved.model_id == bundle.model_id and saved.training["steps_done"] == 3
    history = saved.metrics["selection"]["history"]
    assert saved.metrics["selection"]["best_step"] in [h["step"] for h in history]
    resumed = train(manifest, tmp_path / "model", TrainSettings(steps=6, windows_per_class=3, baseline=False),
                    cache_dir=tmp_path / "cache", resume=True, callbacks=TrainCallbacks(message=lambda text: None),
                    network_settings=TINY_COMPACT)
    assert resumed.training["steps_done"] == 6


def test_few_shot_site_model_from_a_folder_with_the_cli(tmp_path):
    # Three species, five clips each, in a folder without a split: one clip of each is
    # held out for selection, four train; the shallow baseline is printed beside the model.
    root = require_shared(INSECTSET) / "clips"
    folder = tmp_path / "clips"
    for species in ("Chorthippusbiguttulus", "Grylluscampestris", "Platypleuraplumosa"):
        (folder / species).mkdir(parents=True)
        for clip in sorted(c for c in (root / species).glob("*.flac") if not c.name.startswith("."))[:5]:
            (folder / species / clip.name).symlink_to(clip)
    result = CliRunner().invoke(main, ["train", str(folder), "--out", str(tmp_path / "site"), "--time-budget", "20s",
                                       "--windows-per-class", "3", "--eval-every", "5",
                                       "--cache", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert "baseline: validation macro-F1 per file" in result.output
    assert "; shallow baseline" in result.output and "time budget reached" in result.output
    assert "95 % bootstrap interval" in result.output and "optimistic" in result.output
    model = load_model(tmp_path / "site")
    assert model.training["clips"] == {"train": 12, "validation": 3, "test": 0}
    assert "baseline" in model.metrics and model.training["settings"]["time_budget_seconds"] == 20.0


def write_clip(path: Path, samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples, rate, subtype=subtype)


def test_tiny_and_odd_clips_train(tmp_path):
    # 0.3 s stereo at 16 kHz; 8 kHz mono; 96 kHz 24-bit; 3 minutes at 8 kHz: all one folder.
    folder = tmp_path / "clips"
    for i in range(3):
        short = tone(3000 + 100 * i, 0.3, 16000)
        write_clip(folder / "short" / f"s{i}.wav", np.stack([short, short[::-1]], axis=1), 16000)
        write_clip(folder / "low" / f"l{i}.wav", tone(1500, 3.0, 8000) + noise(3.0, 8000, seed=i, amplitude=0.05), 8000)
        write_clip(folder / "high" / f"h{i}.flac", tone(30000, 2.5, 96000) + noise(2.5, 96000, seed=i), 96000,
                   "PCM_24")
    write_clip(folder / "low" / "long.wav", noise(180.0, 8000, seed=9), 8000)
    result = CliRunner().invoke(main, ["train", str(folder), "--out", str(tmp_path / "m"), "--steps", "2",
                                       "--windows-per-class", "2", "--eval-every", "1",
                                       "--cache", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    model = load_model(tmp_path / "m")
    assert model.class_names == ["high", "low", "short"]
    # the 8 kHz clips set the band every clip has: nothing above 4 kHz, for every species
    assert model.feature_settings.band_limit_hz == 4000.0
    assert "4 clip(s) were recorded at 8 kHz" in result.output and "above 4 kHz, are left empty" in result.output
    info = CliRunner().invoke(main, ["info", str(tmp_path / "m")])
    assert "40 Mel bands (the top 17 left empty: the band ends at 4 kHz)" in info.output
    assert model.training["windows"]["train"] > 0


@pytest.mark.parametrize("args, message", [
    (["--time-budget", "20"], "not a duration with units"),
    (["--time-budget", "0s"], "must be longer than zero"),
    (["--freeze-trunk", "--steps", "1"], "--freeze-trunk needs --base"),
])
def test_budget_options_are_checked(tmp_path, args, message):
    (tmp_path / "clips" / "a").mkdir(parents=True)
    result = CliRunner().invoke(main, ["train", str(tmp_path / "clips"), "--out", str(tmp_path / "m"), *args])
    assert result.exit_code == 2 and message in result.output
