from __future__ import annotations

import copy
import csv
import json
import os
import signal
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import INSECTSET, require_shared
from fieldmon import load_model
from fieldmon.cli import main
from fieldmon.model.compact import CompactSettings
from fieldmon.model.network import MultiscaleCNN, NetworkSettings
from fieldmon.model.networks import build_network
from fieldmon.train.api import TrainCallbacks, train
from fieldmon.train.cache import EVALUATION_HOP_SECONDS, FeatureCache
from fieldmon.train.loop import TrainingData, TrainingLoop, fit_batch_norm
from fieldmon.train.settings import TrainSettings

TINY = NetworkSettings(channels=4, reduce_channels=2, dense_units=(8, 8, 8))
TINY_COMPACT = CompactSettings(stem_channels=4, strand_channels=(4, 4, 4), transition_channels=(4, 4, 4),
                               dense_units=(8, 8, 8))
QUIET = TrainCallbacks(message=lambda text: None)


def synthetic_data(n_classes: int = 3, per_class: int = 6) -> TrainingData:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    # class-dependent offsets so that training has something to learn
    inputs = torch.rand(len(labels), 3, 40, 20, generator=g) + labels[:, None, None, None] * 0.3
    clips = torch.arange(len(labels)) // 2  # two windows per recording
    return TrainingData(inputs, labels, inputs[::2], labels[::2], n_classes, clips)


def make_loop(tmp: Path, settings: TrainSettings) -> TrainingLoop:
    torch.manual_seed(settings.seed)
    module = MultiscaleCNN(TINY, n_classes=3 if settings.loss == "crossentropy" else None)
    return TrainingLoop(module, synthetic_data(), settings, torch.device("cpu"), tmp, on_message=lambda t: None)


@pytest.mark.parametrize(
    "options",
    [dict(loss="triplet"), dict(loss="triplet", triplet_update="paper", triplet_batch=4),
     dict(loss="crossentropy"), dict(loss="triplet", crossentropy_weight=1.0), dict(loss="triplet", sam_rho=0.05)],
    ids=["triplet-minibatch", "triplet-paper", "crossentropy", "triplet-with-crossentropy", "triplet-sam"],
)
def test_resume_continues_bit_for_bit(tmp_path, options):
    settings = TrainSettings(steps=6, windows_per_class=3, eval_every=2, checkpoint_every=3, margin_start=0.5, **options)
    straight = make_loop(tmp_path / "a", settings)
    straight.run()

    first = make_loop(tmp_path / "b", settings)
    first.on_step = lambda report: report.step == 3 and os.kill(os.getpid(), signal.SIGINT)
    assert first.run().interrupted
    resumed = make_loop(tmp_path / "b", settings)
    resumed.load_checkpoint()
    assert resumed.state.step == 3
    resumed.run()

    for name, value in straight.module.state_dict().items():
        assert torch.equal(value, resumed.module.state_dict()[name]), name
    assert straight.state.margin == resumed.state.margin
    assert straight.state.history == resumed.state.history
    assert straight.state.best_step == resumed.state.best_step
    for name, value in straight.best_weights.items():
        assert torch.equal(value, resumed.best_weights[name]), name


def test_training_changes_weights_and_finds_triplets(tmp_path):
    loop = make_loop(tmp_path, TrainSettings(steps=3, windows_per_class=3, eval_every=3))
    before = {k: v.clone() for k, v in loop.module.state_dict().items()}
    counts = []
    loop.on_step = lambda report: counts.append(report.semi_hard)
    loop.run()
    assert len(counts) == 3 and sum(counts) > 0
    assert any(not torch.equal(before[k], v) for k, v in loop.module.state_dict().items())


def test_crossentropy_weight_trains_a_cosine_classifier_beside_the_triplet_loss(tmp_path):
    plain = make_loop(tmp_path / "plain", TrainSettings(steps=3, windows_per_class=3, eval_every=3))
    assert plain.cosine_classifier is None
    plain.run()
    mixed = make_loop(tmp_path / "mixed", TrainSettings(steps=3, windows_per_class=3, eval_every=3,
                                                        crossentropy_weight=1.0))
    start = mixed.cosine_classifier.weight.detach().clone()
    assert start.shape == (3, 8)  # species x the tiny network's embedding
    mixed.run()
    assert not torch.equal(start, mixed.cosine_classifier.weight)  # it is trained, in the optimiser
    assert any(not torch.equal(v, mixed.module.state_dict()[k]) for k, v in plain.module.state_dict().items())
    logits = mixed.cosine_classifier(torch.randn(5, 8))
    assert logits.abs().max() <= 16.0 + 1e-5  # scale x cosine
    for wrong in (dict(loss="crossentropy"), dict(triplet_update="paper")):
        with pytest.raises(ValueError, match="crossentropy_weight"):
            TrainSettings(steps=3, crossentropy_weight=1.0, **wrong)


def test_sharpness_aware_gradient_is_taken_rho_along_the_gradient_and_the_weights_stay(tmp_path):
    torch.manual_seed(0)
    module = build_network("compact", TINY_COMPACT)
    settings = TrainSettings(steps=1, windows_per_class=3, sam_rho=0.05)
    loop = TrainingLoop(module, synthetic_data(), settings, torch.device("cpu"), tmp_path, on_message=lambda t: None)
    inputs = synthetic_data().inputs[:9]

    def loss() -> torch.Tensor:
        return (module(inputs)[:, 0] * torch.arange(9.0)).sum()

    loss().backward()
    after_first_pass = {k: v.clone() for k, v in module.state_dict().items()}
    gradient = {n: p.grad.clone() for n, p in module.named_parameters()}
    norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in gradient.values()]))
    loop._sharpness_aware_gradient(loss)

    shifted = copy.deepcopy(module)
    with torch.no_grad():
        for n, p in shifted.named_parameters():
            p.add_(gradient[n] * 0.05 / norm)
    shifted.zero_grad()
    (shifted(inputs)[:, 0] * torch.arange(9.0)).sum().backward()
    for n, p in module.named_parameters():
        assert torch.allclose(p.grad, dict(shifted.named_parameters())[n].grad, rtol=1e-4, atol=1e-4), n
        assert not torch.equal(p.grad, gradient[n]) or not gradient[n].any(), n
    for k, v in module.state_dict().items():
        # the weights are back (up to rounding); batch normalisation counted the mini-batch once
        assert torch.allclose(v.float(), after_first_pass[k].float(), rtol=0, atol=1e-6), k
    for wrong in (dict(loss="crossentropy"), dict(triplet_update="paper")):
        with pytest.raises(ValueError, match="sam_rho"):
            TrainSettings(steps=3, sam_rho=0.05, **wrong)


def test_weight_change_is_the_relative_distance_from_initialisation(tmp_path):
    moved = {}
    for lr in (1e-3, 1e-1):
        loop = make_loop(tmp_path / str(lr), TrainSettings(steps=3, windows_per_class=3, eval_every=3, learning_rate=lr))
        assert loop.weight_change(loop.module.state_dict()) == 0.0
        assert loop.weight_change({k: 2 * v for k, v in loop.initial_weights.items()}) == pytest.approx(1.0)
        loop.run()
        moved[lr] = loop.weight_change(loop.module.state_dict())
        assert loop.state.history[-1]["weight_change"] == pytest.approx(moved[lr])
    assert 0.0 < moved[1e-3] < moved[1e-1]


def test_trunk_lr_scale_moves_the_trunk_less_than_the_head(tmp_path):
    def moved(loop, part):
        named = dict(getattr(loop.module, part).named_parameters())
        return sum(float((p.detach() - loop.initial_weights[f"{part}.{n}"]).abs().sum()) for n, p in named.items())

    ratios = {}
    for scale in (1.0, 0.01):
        loop = make_loop(tmp_path / str(scale), TrainSettings(steps=3, windows_per_class=3, eval_every=3,
                                                              trunk_lr_scale=scale, weight_decay=0.0))
        loop.run()
        ratios[scale] = moved(loop, "trunk") / moved(loop, "head")
    assert ratios[0.01] < 0.05 * ratios[1.0]


def test_first_adagrad_update_follows_the_gradient_not_its_sign(tmp_path):
    # Keras/TensorFlow's Adagrad starts its sum of squares at 0.1; with torch's 0 the
    # first update is +-lr on every weight, however small its gradient.
    loop = make_loop(tmp_path, TrainSettings.for_network("paper", steps=1, windows_per_class=3, eval_every=10))
    assert loop.settings.optimizer == "adagrad" and loop.settings.augment == ()
    before = {n: p.detach().clone() for n, p in loop.module.named_parameters()}
    loop.run()
    step = torch.cat([(before[n] - p.detach()).flatten() for n, p in loop.module.named_parameters()]).abs()
    lr = loop.settings.learning_rate
    assert step.max() <= lr * 1.0001  # lr * g / sqrt(0.1 + g^2): lr only for large gradients
    assert (step < 0.5 * lr).float().mean() > 0.5  # with torch's 0 nearly every step is exactly lr


def test_sigint_stops_after_the_step_and_saves(tmp_path):
    loop = make_loop(tmp_path, TrainSettings(steps=50, windows_per_class=3, eval_every=100, checkpoint_every=100))

    def interrupt(report):
        if report.step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    loop.on_step = interrupt
    state = loop.run()
    assert state.interrupted and state.step == 2
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["step"] == 2


def small_manifest(tmp_path: Path, species: int = 3, train_clips: int = 2) -> Path:
    root = require_shared(INSECTSET)
    with open(root / "manifest.csv") as fh:
        rows = list(csv.DictReader(fh))
    names = sorted({r["species"] for r in rows})[:species]
    picked = []
    for name in names:
        train_rows = [r for r in rows if r["species"] == name and r["split"] == "train"][:train_clips]
        val_rows = [r for r in rows if r["species"] == name and r["split"] == "validation"][:1]
        picked += train_rows + val_rows
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "split"])
        writer.writerows((str(root / r["path"]), r["species"], r["split"]) for r in picked)
    return manifest


def test_train_and_evaluate_end_to_end_on_real_clips(tmp_path):
    manifest = small_manifest(tmp_path)
    # overlapping training windows; held-out clips are still cut every 2 s, as evaluate cuts them
    settings = TrainSettings.for_network("paper", steps=4, windows_per_class=3, eval_every=2, hop_seconds=1.0)
    cache = tmp_path / "cache"
    bundle = train(manifest, tmp_path / "model", settings, cache_dir=cache, callbacks=QUIET, network_settings=TINY)
    loaded = load_model(tmp_path / "model")
    assert loaded.model_id == bundle.model_id and len(loaded.class_names) == 3
    assert loaded.open_set is not None and loaded.classifier is not None
    assert loaded.training["steps_done"] == 4 and loaded.training["settings"]["steps"] == 4
    assert 0.0 <= loaded.metrics["validation"]["file_macro_f1"] <= 1.0
    assert loaded.metrics["mlp_init"] == "random"  # the paper's recipe
    assert loaded.provenance["data_manifest_hash"] and loaded.provenance["fieldmon_version"]
    with open(tmp_path / "model" / "split.csv") as fh:
        split = list(csv.DictReader(fh))
    assert {r["split"] for r in split} == {"train", "validation"} and len(split) == 9

    # features come from the cache the second time
    # (this time with the nearest-window open set: the training clips' 2 s windows go in the bundle;
    # and with the lowpass augmentation, which needs the Mel bands' edges that train() hands the loop)
    messages = []
    train(manifest, tmp_path / "model2", replace(settings, open_set="nearest-window", augment=("lowpass",)),
          cache_dir=cache, network_settings=TINY, callbacks=TrainCallbacks(message=messages.append))
    assert any("9 clips from the cache, 0 computed" in m for m in messages)
    nearest = load_model(tmp_path / "model2")
    every_2s = FeatureCache(cache, nearest.feature_settings, EVALUATION_HOP_SECONDS)
    windows = sum(len(every_2s.clip_features(Path(r["path"]))) for r in split if r["split"] == "train")
    assert nearest.open_set.rule == "nearest_window"
    assert tuple(nearest.open_set.reference.shape) == (windows, nearest.network.settings.embedding_dim)
    # four steps at the paper's lr leave the network at its random start, and fieldmon says so
    # (whichever of its three checks validation selects: with 3 files they are a coin toss)
    assert 0.0 < loaded.metrics["selection"]["history"][-1]["weight_change"] < 0.01
    assert loaded.training["weight_change"] < 0.01
    assert any("barely left its random start" in m for m in messages)

    runner = CliRunner()
    out_json = tmp_path / "eval.json"
    outliers = tmp_path / "outliers"
    outliers.mkdir()
    other = sorted((require_shared(INSECTSET) / "clips").glob("Tettigonia*/*.flac"))[0]
    (outliers / other.name).symlink_to(other)
    result = runner.invoke(main, ["evaluate", str(tmp_path / "model"), str(manifest), "--split", "validation",
                                  "--outliers", str(outliers), "--json", str(out_json), "--cache", str(cache)])
    assert result.exit_code == 0, result.output
    metrics = json.loads(out_json.read_text())
    for key in ("macro_f1", "file_macro_f1", "accuracy", "per_class", "rejection_accuracy", "macro_f1_with_rejection"):
        assert key in metrics
    assert metrics["files"] == 3 and metrics["split"] == "validation"
    assert metrics["windows"] == loaded.metrics["validation"]["windows"] == loaded.training["windows"]["validation"]
    assert metrics["macro_f1"] == pytest.approx(loaded.metrics["validation"]["macro_f1"])


def test_compact_network_learns_real_species_beyond_its_untrained_start(tmp_path):
    # Four InsectSet32 species, up to five training clips each, the default recipe on the
    # default network for 40 short steps: validation must improve clearly over the
    # untrained network (the selection history's step 0), or the recipe does not learn.
    manifest = small_manifest(tmp_path, species=4, train_clips=5)
    settings = TrainSettings(steps=40, windows_per_class=4, eval_every=10, warmup_steps=5)
    bundle = train(manifest, tmp_path / "model", settings, cache_dir=tmp_path / "cache", callbacks=QUIET)
    history = bundle.metrics["selection"]["history"]
    assert history[0]["step"] == 0 and history[0]["weight_change"] == 0.0
    untrained = history[0]["val_macro_f1_window"]
    trained = max(h["val_macro_f1_window"] for h in history[1:])
    assert trained >= untrained + 0.2, history
    assert bundle.metrics["mlp_init"] == "class-means" and bundle.metrics["mlp_init_temperature"] > 0
    assert bundle.training["network"] == "compact" and bundle.training["weight_change"] > 0.01


def test_cli_base_training_and_resume_refusal(tmp_path):
    manifest = small_manifest(tmp_path)
    cache = str(tmp_path / "cache")
    train(manifest, tmp_path / "base",
          TrainSettings.for_network("paper", steps=2, windows_per_class=3, eval_every=2, dropout=0.25),
          cache_dir=cache, callbacks=QUIET, network_settings=TINY)
    runner = CliRunner()
    args = ["train", str(manifest), "--out", str(tmp_path / "site"), "--base", str(tmp_path / "base"),
            "--steps", "20", "--windows-per-class", "3", "--eval-every", "10", "--cache", cache, "--dropout", "0",
            "--freeze-trunk", "--open-set", "shared", "--quiet"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    # --quiet: no progress, but the outcome a cron log needs
    lines = result.output.splitlines()
    assert lines[-1].startswith("wrote model ") and any(line.startswith("validation macro-F1 per file") for line in lines)
    assert not any(line.startswith(("step ", "computing ")) for line in lines), result.output
    site = load_model(tmp_path / "site")
    base = load_model(tmp_path / "base")
    assert site.training["base_model"] == base.model_id
    # the dropout variant is what the network was trained with, and what it records
    assert base.network.settings.dropout == 0.25 and TINY.dropout == 0.5
    assert site.network.settings.dropout == 0.0 and site.training["settings"]["dropout"] == 0.0
    # --freeze-trunk trains the dense head only: the base's trunk comes through bit for bit
    assert site.training["trained"] == "dense head only (frozen trunk)"
    # one distance Gaussian for all species, kept in the bundle
    assert site.open_set.spread == "shared" and site.training["settings"]["open_set"] == "shared"
    assert len(set(site.open_set.distance_mean.tolist())) == 1 and base.open_set.spread == "species"
    for name, value in base.network.trunk.state_dict().items():
        assert torch.equal(value, site.network.trunk.state_dict()[name])
    again = runner.invoke(main, args)
    assert again.exit_code == 1 and "--resume" in again.output
    resumed = runner.invoke(main, args[:6] + ["--steps", "30", "--resume", "--cache", cache])
    assert resumed.exit_code == 0, resumed.output
    site = load_model(tmp_path / "site")
    assert site.training["steps_done"] == 30 and site.network.settings.dropout == 0.0
    with pytest.raises(ValueError, match="dropout"):
        TrainSettings(steps=1, dropout=1.0)


def test_pooling_option_trains_statistics_pooling_and_a_base_keeps_its_layout(tmp_path):
    manifest = small_manifest(tmp_path)
    runner = CliRunner()
    args = ["train", str(manifest), "--steps", "2", "--windows-per-class", "3", "--eval-every", "2",
            "--cache", str(tmp_path / "cache"), "--no-baseline", "--quiet"]
    result = runner.invoke(main, args + ["--out", str(tmp_path / "stats"), "--pooling", "mean-std"])
    assert result.exit_code == 0, result.output
    model = load_model(tmp_path / "stats")
    assert model.network.settings.pooling == "mean-std" and model.network.settings.trunk_dim == 128
    assert model.training["settings"]["pooling"] == "mean-std"
    refused = runner.invoke(main, args + ["--out", str(tmp_path / "p"), "--network", "paper", "--pooling", "mean"])
    assert refused.exit_code == 2 and "pooling applies to the compact network" in refused.output
    refused = runner.invoke(main, args + ["--out", str(tmp_path / "s"), "--base", str(tmp_path / "stats"),
                                          "--pooling", "mean"])
    assert refused.exit_code == 2 and "--pooling does not apply with --base" in refused.output
    # through the Python API too: a base's layout is what a model trained from it has
    with pytest.raises(ValueError, match="keeps the base's layout .compact network, pooling mean-std"):
        train(manifest, tmp_path / "s", TrainSettings(steps=1, pooling="mean"), base=tmp_path / "stats",
              cache_dir=tmp_path / "cache", callbacks=QUIET)
    with pytest.raises(ValueError, match="pooling must be one of"):
        TrainSettings(steps=1, pooling="max")


def test_cli_requires_a_budget_and_reports_bad_clips(tmp_path):
    runner = CliRunner()
    (tmp_path / "clips" / "empty_species").mkdir(parents=True)
    result = runner.invoke(main, ["train", str(tmp_path / "clips"), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2 and "--steps" in result.output
    result = runner.invoke(main, ["train", str(tmp_path / "clips"), "--out", str(tmp_path / "m"), "--steps", "1"])
    assert result.exit_code == 1 and "empty_species: species folder holds no audio files" in result.output


def test_epoch_budget_counts_passes_over_the_training_windows(tmp_path):
    # 18 training windows, 3 species x 3 per mini-batch = 9 windows: 2 mini-batches per epoch
    loop = make_loop(tmp_path, TrainSettings(epochs=3, windows_per_class=3, eval_every=100))
    state = loop.run()
    assert state.minibatch == 6 and state.step == 6
    with pytest.raises(ValueError, match="steps or epochs, not both"):
        TrainSettings(steps=5, epochs=1)


def test_species_left_with_only_silent_training_clips_is_refused(tmp_path):
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    rows = []
    for species in ("a", "b"):
        for split in ("train", "validation"):
            path = tmp_path / f"{species}_{split}.wav"
            silent = species == "b" and split == "train"
            samples = np.zeros(44100, np.float32) if silent else rng.normal(0, 0.1, 44100).astype(np.float32)
            sf.write(path, samples, 44100)
            rows.append({"path": path.name, "label": species, "split": split})
    with open(tmp_path / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    result = CliRunner().invoke(main, ["train", str(tmp_path / "manifest.csv"), "--out", str(tmp_path / "m"),
                                       "--steps", "1", "--cache", str(tmp_path / "cache")])
    assert result.exit_code == 1, result.output
    assert "left out: " in result.output and "b_train.wav: the clip is silent" in result.output
    assert "species 'b' has no usable clip in the train split" in result.output


@pytest.mark.slow
def test_gpu_training_script_runs_both_networks_on_the_cpu(tmp_path):
    # benchmarks/gpu_train.sh is meant for a GPU machine; with a tiny manifest and budget it
    # checks itself on the CPU: both networks train, and their scores are collected.
    import subprocess
    import sys

    manifest = small_manifest(tmp_path)
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_train.sh"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    run = subprocess.run(["bash", str(script), str(tmp_path / "out"), str(manifest), "15s"],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    scores = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert set(scores) == {"paper", "compact"}
    for network, score in scores.items():
        assert score["steps"] >= 1 and 0.0 <= score["validation"]["file_macro_f1"] <= 1.0
        assert load_model(tmp_path / "out" / network).training["network"] == network


def test_weight_average_is_what_is_validated_kept_and_resumed(tmp_path):
    settings = TrainSettings(steps=6, windows_per_class=3, eval_every=2, checkpoint_every=3, average=0.9)
    straight = make_loop(tmp_path / "a", settings)
    straight.run()
    averaged = straight.averaged.state_dict()
    assert any(not torch.equal(averaged[k], v) for k, v in straight.module.state_dict().items())
    first = make_loop(tmp_path / "b", settings)
    first.on_step = lambda report: report.step == 3 and os.kill(os.getpid(), signal.SIGINT)
    assert first.run().interrupted
    resumed = make_loop(tmp_path / "b", settings)
    resumed.load_checkpoint()
    resumed.run()
    for name, value in averaged.items():
        assert torch.equal(value, resumed.averaged.state_dict()[name]), name
    assert straight.state.history == resumed.state.history
    best_step = straight.state.best_step
    straight.restore_best()
    assert straight.evaluated is straight.module and best_step in [h["step"] for h in straight.state.history]


def test_head_warmup_trains_the_head_alone_and_the_cli_offers_it(tmp_path):
    from types import SimpleNamespace

    import numpy as np

    from fieldmon.train.api import _warm_up_head

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 6)
    split = SimpleNamespace(features=(rng.random((18, 3, 40, 200)) + labels[:, None, None, None] * 0.3)
                            .astype(np.float32), labels=labels, clip_index=np.arange(18))
    torch.manual_seed(0)
    network = build_network("compact", TINY_COMPACT)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    messages = []
    seconds = _warm_up_head(network, TrainSettings(steps=1, windows_per_class=3, head_warmup_steps=30),
                            {"train": split, "validation": split}, 3, torch.device("cpu"),
                            TrainCallbacks(message=messages.append))
    after = network.state_dict()
    assert seconds > 0 and messages[0].startswith("head warm-up: 30 steps of the dense head")
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("trunk."))  # frozen
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("head."))  # trained

    manifest = small_manifest(tmp_path)
    cache = str(tmp_path / "cache")
    train(manifest, tmp_path / "base", TrainSettings(steps=2, windows_per_class=3, eval_every=2),
          cache_dir=cache, callbacks=QUIET, network_settings=TINY_COMPACT)
    runner = CliRunner()
    args = ["train", str(manifest), "--out", str(tmp_path / "site"), "--base", str(tmp_path / "base"),
            "--steps", "3", "--windows-per-class", "3", "--eval-every", "3", "--cache", cache, "--no-baseline"]
    result = runner.invoke(main, [*args, "--head-warmup", "20"])
    assert result.exit_code == 0, result.output
    assert "head warm-up: 20 steps of the dense head" in result.output
    site = load_model(tmp_path / "site")
    assert site.training["settings"]["head_warmup_steps"] == 20 and site.training["trained"] == "whole network"
    # only with --base, and not with --freeze-trunk
    refused = runner.invoke(main, [*args[:2], "--out", str(tmp_path / "other"), "--steps", "1", "--head-warmup", "5"])
    assert refused.exit_code == 2 and "--head-warmup needs --base" in refused.output
    refused = runner.invoke(main, [*args, "--head-warmup", "5", "--freeze-trunk"])
    assert refused.exit_code == 2 and "--head-warmup needs --base" in refused.output


def test_fit_batch_norm_gives_plain_statistics_with_dropout_off_and_restores_the_module():
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.BatchNorm2d(3), torch.nn.Dropout(0.5), torch.nn.Conv2d(3, 2, 1),
                                  torch.nn.BatchNorm2d(2)).train()
    inputs = torch.randn(32, 3, 4, 5) * 2 + 1
    fit_batch_norm(network, inputs, torch.device("cpu"), batch=8)
    first, second = network[0], network[3]
    torch.testing.assert_close(first.running_mean, inputs.mean(dim=(0, 2, 3)))
    batch_vars = torch.stack([inputs[i : i + 8].var(dim=(0, 2, 3)) for i in range(0, 32, 8)])
    torch.testing.assert_close(first.running_var, batch_vars.mean(0))  # the mean of the batches' variances
    assert network.training and first.momentum == second.momentum == 0.1
    statistics = second.running_mean.clone()
    fit_batch_norm(network, inputs, torch.device("cpu"), batch=8)
    assert torch.equal(second.running_mean, statistics)  # dropout was off: the same numbers again


def test_clean_batch_norm_keeps_the_statistics_of_clean_training_windows(tmp_path):
    kept = {}
    for clean in (True, False):
        torch.manual_seed(0)
        settings = TrainSettings(steps=4, windows_per_class=3, eval_every=2, checkpoint_every=2,
                                 clean_batch_norm=clean)
        loop = TrainingLoop(build_network("compact", TINY_COMPACT), synthetic_data(), settings, torch.device("cpu"),
                            tmp_path / str(clean), on_message=lambda t: None)
        loop.run()
        loop.restore_best()
        kept[clean] = {k: v.clone() for k, v in loop.module.state_dict().items() if "running" in k}
        fit_batch_norm(loop.module, loop.data.inputs[loop.batch_norm_index], torch.device("cpu"))
        refitted = loop.module.state_dict()
        assert all(torch.allclose(v, refitted[k]) for k, v in kept[clean].items()) == clean
    assert len(loop.batch_norm_index) == len(loop.data.labels)  # fewer than 1,024: all of them
