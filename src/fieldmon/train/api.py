"""``fieldmon.train``: labelled clips in, a model bundle out."""

from __future__ import annotations

import csv
import io
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fieldmon.audio import AudioReadError
from fieldmon.evaluation.evaluate import evaluate_windows
from fieldmon.features import FeatureSettings
from fieldmon.fileio import atomic_write
from fieldmon.model.bundle import ModelBundle
from fieldmon.model.metadata import resolve_model_path
from fieldmon.model.loading import load_model
from fieldmon.model.network import DenseHead
from fieldmon.model.networks import build_network, network_kind, settings_class
from fieldmon.model.openset import fit_open_set
from fieldmon.provenance import provenance
from fieldmon.train.baseline import baseline_scores
from fieldmon.train.bands import limit_bands
from fieldmon.train.cache import EVALUATION_HOP_SECONDS, FeatureCache, WindowSet, build_window_set
from fieldmon.train.classifier import calibrated_threshold, threshold_for_rejects, train_mlp
from fieldmon.train.dataset import ClipSet, DatasetError, assign_splits, load_clips
from fieldmon.train.loop import (StepReport, TrainingData, TrainingLoop, as_inputs, outputs_in_batches,
                                 read_checkpoint_meta)
from fieldmon.train.same_recording import same_recordings
from fieldmon.train.settings import TrainSettings
from fieldmon.train.verified import VERIFIED_DIR, add_verified
from fieldmon.tuning import describe_device, keep_freed_memory, resolve_device

CHECKPOINT_DIR = "checkpoint"
SPLIT_FILE = "split.csv"
# Relative distance of the selected weights from their initialisation below which a
# model is reported as barely trained (the paper's Adagrad lr 1e-3 moves this network
# by ~2e-5 per step: 40 CPU steps left it at 0.04 %).
BARELY_TRAINED = 0.01


@dataclass
class TrainCallbacks:
    message: Callable[[str], None] = print
    clips_found: Callable[[ClipSet], None] | None = None
    step: Callable[[StepReport], None] | None = None
    # Warnings, how training ended, the final score and where the model went: what a
    # cron log needs (`fieldmon train --quiet` prints only these). None: ``message``.
    result: Callable[[str], None] | None = None

    def outcome(self, text: str) -> None:
        (self.result or self.message)(text)


def prepare_clips(source: str | Path, seed: int) -> ClipSet:
    clips = assign_splits(load_clips(source), seed)
    missing = [name for name in clips.class_names if not any(c.label == name for c in clips.in_split("validation"))]
    if missing:
        raise DatasetError([f"species {name!r} has no clip in the validation split" for name in missing])
    return clips


def train(
    clips_source: str | Path,
    out: str | Path,
    settings: TrainSettings | None,
    base: str | Path | None = None,
    device: str = "auto",
    cache_dir: str | Path | None = None,
    resume: bool = False,
    callbacks: TrainCallbacks | None = None,
    network_settings=None,
    verified: str | Path | None = None,
) -> ModelBundle:
    """Train and write a model bundle to ``out``; see ``fieldmon train --help``.

    The network is ``settings.network``; ``network_settings`` (a settings object of
    that network) changes its layout. With ``base`` the base model's network and
    weights are the start, and the whole network is trained (only its dense head on
    cached trunk outputs with ``settings.freeze_trunk``). ``verified``: a review page's
    verdicts CSV whose verified windows join the train split (fieldmon.train.verified)."""
    cb = callbacks or TrainCallbacks()
    out = Path(out)
    checkpoint_dir = out / CHECKPOINT_DIR
    if resume:
        # The checkpoint's settings win; only the budget may be changed (to extend a run).
        saved = TrainSettings.from_dict(read_checkpoint_meta(checkpoint_dir)["settings"])
        settings = saved if settings is None else saved.with_budget(settings)
    elif settings is None:
        raise ValueError("settings (with a budget) are needed unless resuming")
    elif (checkpoint_dir / "state.json").exists():
        raise FileExistsError(f"{out} holds a training checkpoint; pass --resume to continue it or choose another --out")
    torch_device = resolve_device(device)
    out.mkdir(parents=True, exist_ok=True)  # a folder that cannot be written fails now, not after training
    if torch_device.type == "cpu":
        keep_freed_memory()

    clips = prepare_clips(clips_source, settings.seed)
    from_review, review = None, None
    if verified is not None:
        review = add_verified(clips, verified, out / VERIFIED_DIR)
        clips, from_review = review.clips, review.counts
        for note in review.notes:
            cb.message(f"review: {note}")
        cb.message(f"review: {from_review['clips_added']} verified windows join the train split "
                   f"({from_review['correct']} correct, {from_review['relabelled']} relabelled; "
                   f"{from_review['to_reject']} windows to be rejected as unknown calibrate the open set)")
    if cb.clips_found:
        cb.clips_found(clips)
    for warning in clips.warnings:
        cb.outcome(f"warning: {warning}")
    class_names = clips.class_names

    base_bundle = load_model(base) if base is not None else None
    if base_bundle is not None:
        base_pooling = getattr(base_bundle.network.settings, "pooling", None)
        if settings.pooling not in (None, base_pooling):
            raise ValueError(f"pooling {settings.pooling} does not apply with --base {base_bundle.model_id}: a model "
                             f"trained from a base keeps the base's layout ({network_kind(base_bundle.network)} network"
                             f"{', pooling ' + base_pooling if base_pooling else ''})")
        settings = replace(settings, network=network_kind(base_bundle.network))
    feature_settings, band_note = limit_bands(clips.clips, base_bundle.feature_settings if base_bundle
                                              else FeatureSettings(), settings.band_limit)
    if band_note:
        cb.outcome(band_note)
    cache_dir = Path(cache_dir) if cache_dir else None
    train_cache = FeatureCache(cache_dir, feature_settings, settings.hop_seconds)
    held_out_cache = FeatureCache(cache_dir, feature_settings, EVALUATION_HOP_SECONDS)
    cb.message(f"computing features (cache: {train_cache.directory})")
    train_set = build_window_set(clips.in_split("train"), class_names, train_cache)
    held_out = build_window_set([c for c in clips.clips if c.split != "train"], class_names, held_out_cache)
    hits, misses = train_cache.hits + held_out_cache.hits, train_cache.misses + held_out_cache.misses
    cb.message(f"{len(train_set.labels)} training windows every {settings.hop_seconds:g} s, "
               f"{len(held_out.labels)} held-out windows every {EVALUATION_HOP_SECONDS:g} s "
               f"({hits} clips from the cache, {misses} computed)")
    left_out = train_set.left_out + held_out.left_out
    for problem in left_out:
        cb.message(f"left out: {problem}")
    same = [pair.problem() for pair in same_recordings([train_set, held_out])]
    for problem in same:
        cb.outcome(f"warning: {problem}")

    splits = {"train": train_set, "validation": held_out.in_split("validation"), "test": held_out.in_split("test")}
    val_set, test_set = splits["validation"], splits["test"]
    _check_species_remain(class_names, train_set, val_set)
    baseline = {}
    if settings.baseline:
        cb.message("fitting the shallow baseline (log-Mel and MFCC statistics, logistic regression)")
        baseline = baseline_scores({name: clips.in_split(name) for name in ("train", "validation", "test")},
                                   class_names, feature_settings, settings.hop_seconds, EVALUATION_HOP_SECONDS,
                                   settings.seed)
        cb.message(f"baseline: validation macro-F1 per file {baseline['validation']['file_macro_f1']:.3f}, "
                   f"per window {baseline['validation']['macro_f1']:.3f}")
    module, inputs = _module_and_inputs(settings, splits, len(class_names), base_bundle, network_settings,
                                        torch_device, cb)
    warm_up_seconds = 0.0
    if base_bundle is not None and settings.head_warmup_steps and not resume:  # a checkpoint holds its result
        warm_up_seconds = _warm_up_head(module, settings, splits, len(class_names), torch_device, cb)
    data = TrainingData(inputs["train"], torch.from_numpy(train_set.labels), inputs["validation"],
                        torch.from_numpy(val_set.labels), len(class_names), torch.from_numpy(train_set.clip_index),
                        torch.from_numpy(val_set.clip_index),
                        torch.from_numpy(feature_settings.band_upper_edges_hz.astype("float32")))
    loop = TrainingLoop(module, data, settings, torch_device, checkpoint_dir, cb.step, cb.message)
    if resume:
        loop.load_checkpoint()
        cb.message(f"resumed at step {loop.state.step}")
    loop.state.seconds += warm_up_seconds  # the warm-up spent part of the time budget
    state = loop.run()
    if state.interrupted:
        cb.outcome("stopped early: the model is written from the best weights so far; "
                   "--resume with the same --out continues the training")
    elif state.out_of_time:
        cb.outcome(f"time budget reached after {state.step} steps")
    loop.restore_best()
    module.eval()
    cb.message(f"selected the weights of step {state.best_step} (validation macro-F1 {state.best_metric:.3f})")
    weight_change = loop.weight_change(loop.best_weights)
    start = "the base model's weights" if base_bundle is not None else "their random initialisation"
    cb.message(f"the selected weights lie {weight_change:.2%} from {start}")
    if weight_change < BARELY_TRAINED and base_bundle is None:
        cb.outcome(f"warning: the network has barely left its random start (under {BARELY_TRAINED:.0%}); "
                   "the paper trained 150,000 updates, on a GPU (README, 'Training budget')")

    network = _full_network(module, base_bundle, settings)
    classifier, open_set, mlp_info = None, None, {}
    if settings.loss == "triplet":
        cb.message("training the MLP classifier and calibrating open-set rejection")
        emb = {name: loop.outputs(x) for name, x in inputs.items()}
        classifier, mlp_info = train_mlp(emb["train"], data.labels, emb["validation"], data.val_labels,
                                         len(class_names), settings)
        # nearest-window compares against the training clips cut as the validation windows are,
        # every 2 s: what the shipped default's reference holds, a quarter of the training hop's.
        reference = (_embeddings_of(network, [c.path for c in clips.in_split("train")], held_out_cache, torch_device)
                     if settings.open_set == "nearest-window" else None)
        open_set = fit_open_set(emb["train"], data.labels, emb["validation"], data.val_labels,
                                len(class_names), settings.open_set_threshold or 0.0, settings.open_set, reference)
        if settings.open_set_threshold is None:
            threshold, mlp_info["open_set_calibration"] = calibrated_threshold(
                open_set, classifier, emb["validation"], data.val_labels, class_names)
            open_set = replace(open_set, threshold=threshold)
            calibration = mlp_info["open_set_calibration"]
            cb.message(f"open-set threshold {threshold:.3g}: rejects {calibration['validation_windows_rejected']:.0%} "
                       f"of the validation windows; their macro-F1 {calibration['validation_macro_f1_without_rejection']:.3f}"
                       f" -> {calibration['validation_macro_f1_with_rejection']:.3f} with rejection")
        reject_emb = _embeddings_of(network, review.rejects, held_out_cache, torch_device) if review else None
        if reject_emb is not None:
            threshold, calibration = threshold_for_rejects(open_set, classifier, emb["validation"], data.val_labels,
                                                           reject_emb, class_names)
            open_set = replace(open_set, threshold=threshold)
            from_review["open_set"] = calibration
            cb.message(f"review: open-set threshold {calibration['from_threshold']:g} -> {threshold:.4g}: "
                       f"{calibration['rejected']:.0%} of {calibration['reject_windows']} windows to reject are "
                       f"rejected ({calibration['rejected_at_start']:.0%} before), validation macro-F1 "
                       f"{calibration['validation_macro_f1_drop']:+.3f} lower")
    bundle = ModelBundle(network.cpu().eval(), class_names, feature_settings, classifier, open_set, name=out.name)

    criterion = "nearest_class_mean" if settings.loss == "triplet" else "softmax"
    metrics = {"selection": {"criterion": f"validation macro-F1 ({criterion})", "best_step": state.best_step,
                             "best_value": state.best_metric, "history": state.history}, **mlp_info}
    for name, split in (("validation", val_set), ("test", test_set)):
        if len(split.labels):
            metrics[name] = metrics_summary(evaluate_windows(bundle, split.features, split.labels, split.clip_index))
    if baseline:
        metrics["baseline"] = {"method": "log-Mel and MFCC statistics per window, logistic regression", **baseline}
    bundle.metrics = metrics
    if "validation" in metrics:
        val = metrics["validation"]
        low, high = val["file_macro_f1_interval"]
        compared = f"; shallow baseline {baseline['validation']['file_macro_f1']:.3f}" if baseline else ""
        cb.outcome(f"validation macro-F1 per file {val['file_macro_f1']:.3f} ({val['files']} files, 95 % bootstrap "
                   f"interval {low:.2f}-{high:.2f}{compared}), per window {val['macro_f1']:.3f}")
        if val["files"] < 2 * len(class_names):
            cb.outcome(f"note: {val['files']} validation files for {len(class_names)} species; the validation "
                       "files also chose the weights, so this estimate is optimistic and uncertain; score the "
                       "model on clips it has never seen with fieldmon evaluate")
    bundle.training = {
        "network": settings.network,
        "settings": settings.to_dict(),
        "steps_done": state.step,
        "wall_seconds": round(state.seconds, 1),
        "minibatches_done": state.minibatch,
        "final_margin": state.margin.value if settings.loss == "triplet" else None,
        "converged": state.converged,
        "weight_change": weight_change,
        "device": describe_device(torch_device),
        "base_model": base_bundle.model_id if base_bundle else None,
        "trained": "dense head only (frozen trunk)" if base_bundle and settings.freeze_trunk else "whole network",
        "clips": {name: split.clip_count() for name, split in splits.items()},
        "clips_left_out": left_out,
        "clips_same_recording": same,
        "windows": {"train": len(train_set.labels), "validation": len(val_set.labels), "test": len(test_set.labels)},
        "from_review": from_review,
    }
    bundle.provenance = provenance(data_manifest_hash=clips.manifest_hash(), clips_source=str(clips_source))
    bundle.save(out)
    _write_split(out / SPLIT_FILE, clips)
    cb.outcome(f"wrote model {bundle.model_id} to {out}")
    return bundle


@torch.no_grad()
def _embeddings_of(network: torch.nn.Module, paths: list[Path], cache: FeatureCache,
                   device: torch.device) -> torch.Tensor | None:
    """Embeddings (on the CPU) of every window of ``paths``; None when none is usable
    (a silent cut is left out, as in training)."""
    features = []
    for path in paths:
        try:
            features.append(cache.clip_features(path))
        except AudioReadError:
            continue
    if not features:
        return None
    return outputs_in_batches(network, as_inputs(np.concatenate(features)), device)


def _check_species_remain(class_names: list[str], train_set: WindowSet, val_set: WindowSet) -> None:
    problems = [
        f"species {name!r} has no usable clip in the {split_name} split"
        for split_name, split in (("train", train_set), ("validation", val_set))
        for i, name in enumerate(class_names)
        if not np.any(split.labels == i)
    ]
    if problems:
        raise DatasetError(problems)


def _module_and_inputs(
    settings: TrainSettings,
    splits: dict[str, WindowSet],
    n_classes: int,
    base: ModelBundle | None,
    network_settings,
    device: torch.device,
    cb: TrainCallbacks,
) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """What the loop trains, and on what: the whole CNN on feature windows (fresh, or
    from ``base``), or with ``freeze_trunk`` a fresh dense head on the base trunk's
    (cached) outputs."""
    torch.manual_seed(settings.seed)
    if base is not None and settings.loss != "triplet":
        raise ValueError("--base trains an embedding network with the triplet loss; --loss crossentropy does not apply")
    if base is not None and not settings.freeze_trunk:
        network = build_network(settings.network, _with_layout(base.network.settings, settings))
        network.load_state_dict(base.network.state_dict())
        return network, {name: as_inputs(split.features) for name, split in splits.items()}
    if base is None:
        inputs = {name: as_inputs(split.features) for name, split in splits.items()}
        n_outputs = n_classes if settings.loss == "crossentropy" else None
        expected = settings_class(settings.network)
        if network_settings is not None and not isinstance(network_settings, expected):
            raise ValueError(f"network_settings must be {expected.__name__} for network {settings.network!r}")
        network = _with_layout(network_settings or expected(), settings)
        return build_network(settings.network, network, n_classes=n_outputs), inputs
    trunk = base.network.trunk.to(device).eval()
    cb.message(f"computing trunk outputs of base model {base.model_id}")
    net = _with_layout(base.network.settings, settings)
    inputs = {name: _trunk_outputs(trunk, split.features, device, net.trunk_dim) for name, split in splits.items()}
    return DenseHead(net, net.embedding_dim, normalize=True), inputs


def _warm_up_head(network: torch.nn.Module, settings: TrainSettings, splits: dict[str, WindowSet], n_classes: int,
                  device: torch.device, cb: TrainCallbacks) -> float:
    """Train ``network.head`` in place on the outputs of its (frozen) trunk for
    ``settings.head_warmup_steps`` steps, keeping the best by validation. Seconds on a
    CPU: the trunk runs once per window. Returns the seconds it took, which the whole
    network's time budget then lacks."""
    started = time.perf_counter()
    trunk = network.trunk.to(device).eval()
    dim = network.settings.trunk_dim
    train_set, val_set = splits["train"], splits["validation"]
    data = TrainingData(_trunk_outputs(trunk, train_set.features, device, dim), torch.from_numpy(train_set.labels),
                        _trunk_outputs(trunk, val_set.features, device, dim), torch.from_numpy(val_set.labels),
                        n_classes, torch.from_numpy(train_set.clip_index), torch.from_numpy(val_set.clip_index))
    steps = settings.head_warmup_steps
    warm_up = replace(settings, steps=steps, epochs=None, time_budget_seconds=None, average=None,
                      eval_every=max(1, steps // 10), checkpoint_every=steps, warmup_steps=min(settings.warmup_steps, steps))
    with tempfile.TemporaryDirectory() as checkpoints:
        loop = TrainingLoop(network.head, data, warm_up, device, Path(checkpoints), on_message=lambda _: None)
        state = loop.run()
        loop.restore_best()
    cb.message(f"head warm-up: {steps} steps of the dense head on the base trunk's outputs in {state.seconds:.1f} s; "
               f"validation macro-F1 {state.history[0]['val_macro_f1']:.3f} -> {state.best_metric:.3f} "
               f"(step {state.best_step})")
    return time.perf_counter() - started


def _with_layout(network, settings: TrainSettings):
    """``network``'s settings with the dropout and pooling that ``settings`` ask for."""
    asked = {"dropout": settings.dropout, "pooling": settings.pooling}
    return replace(network, **{name: value for name, value in asked.items() if value is not None})


def _full_network(module: torch.nn.Module, base: ModelBundle | None, settings: TrainSettings) -> torch.nn.Module:
    if base is None or not settings.freeze_trunk:
        return module
    network = build_network(settings.network, _with_layout(base.network.settings, settings))
    network.trunk.load_state_dict(base.network.trunk.state_dict())
    network.head.load_state_dict(module.state_dict())
    return network


def _trunk_outputs(trunk: torch.nn.Module, features: np.ndarray, device: torch.device, dim: int,
                   batch: int = 64) -> torch.Tensor:
    out = outputs_in_batches(trunk, as_inputs(features), device, batch)
    return out if len(out) else torch.zeros(0, dim)


def metrics_summary(result: dict) -> dict:
    """The headline figures of an evaluation, as model.json keeps them."""
    keys = ("windows", "files", "macro_f1", "file_macro_f1", "file_macro_f1_interval", "accuracy",
            "macro_f1_with_rejection", "known_rejected")
    return {k: result[k] for k in keys if k in result}


def _write_split(path: Path, clips: ClipSet) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["path", "label", "split"])
    writer.writeheader()
    writer.writerows(clips.split_table())
    atomic_write(path, buffer.getvalue().encode())


def quantize(
    model: str | Path, clips_source: str | Path, windows: int = 1024, seed: int = 0, cache_dir: str | Path | None = None
) -> dict:
    """Write the bundle's int8 trunk (``fieldmon quantize``), calibrated on ``windows``
    feature windows drawn from the training split of ``clips_source``; the open-set
    distances are fitted again on int8 embeddings of its validation split."""
    from fieldmon.model.int8 import quantize_bundle

    directory = resolve_model_path(model)
    bundle = load_model(directory)
    clips = assign_splits(load_clips(clips_source, known_labels=bundle.class_names), seed)
    chosen = clips.in_split("train") or clips.clips
    cache = FeatureCache(Path(cache_dir) if cache_dir else None, bundle.feature_settings, EVALUATION_HOP_SECONDS)
    window_set = build_window_set(chosen, bundle.class_names, cache)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(window_set.labels), size=min(windows, len(window_set.labels)), replace=False)
    validation = clips.in_split("validation")
    open_set_windows = None
    if validation:
        val_set = build_window_set(validation, bundle.class_names, cache)
        open_set_windows = (val_set.features, val_set.labels)
    return quantize_bundle(directory, window_set.features[np.sort(pick)], open_set_windows,
                           calibrate=int8_threshold_rule(bundle))


def int8_threshold_rule(bundle: ModelBundle):
    """fp32's calibration rule for int8's own scores, when the fp32 threshold is still
    the one calibration chose; a threshold set by hand or raised by reviewed windows is
    kept as it is."""
    calibration = bundle.metrics.get("open_set_calibration") or {}
    if bundle.open_set is None or calibration.get("threshold") != bundle.open_set.threshold:
        return None
    return lambda open_set, embeddings, labels: calibrated_threshold(
        open_set, bundle.classifier, embeddings, labels, bundle.class_names)
