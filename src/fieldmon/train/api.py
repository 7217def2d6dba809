"""``fieldmon.train``: labelled clips in, a model bundle out."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fieldmon.evaluation.evaluate import evaluate_windows
from fieldmon.features import FeatureSettings
from fieldmon.fileio import atomic_write
from fieldmon.model.bundle import ModelBundle, load_model, resolve_model_path
from fieldmon.model.network import DenseHead, MultiscaleCNN, NetworkSettings
from fieldmon.model.openset import fit_open_set
from fieldmon.provenance import provenance
from fieldmon.train.cache import EVALUATION_HOP_SECONDS, FeatureCache, WindowSet, build_window_set
from fieldmon.train.classifier import train_mlp
from fieldmon.train.dataset import ClipSet, DatasetError, assign_splits, load_clips
from fieldmon.train.loop import StepReport, TrainingData, TrainingLoop, as_inputs, read_checkpoint_meta
from fieldmon.train.settings import TrainSettings
from fieldmon.tuning import keep_freed_memory, resolve_device

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
    network_settings: NetworkSettings | None = None,
) -> ModelBundle:
    """Train and write a model bundle to ``out``; see ``fieldmon train --help``.

    ``network_settings`` changes the architecture (the default is the paper's);
    with ``base`` the base model's network is used."""
    cb = callbacks or TrainCallbacks()
    out = Path(out)
    checkpoint_dir = out / CHECKPOINT_DIR
    if resume:
        # The checkpoint's settings win; only the budget may be changed (to extend a run).
        saved = TrainSettings.from_dict(read_checkpoint_meta(checkpoint_dir)["settings"])
        settings = saved if settings is None else saved.with_budget(settings.steps, settings.epochs)
    elif settings is None:
        raise ValueError("settings (with a budget) are needed unless resuming")
    elif (checkpoint_dir / "state.json").exists():
        raise FileExistsError(f"{out} holds a training checkpoint; pass --resume to continue it or choose another --out")
    torch_device = resolve_device(device)
    if torch_device.type == "cpu":
        keep_freed_memory()

    clips = prepare_clips(clips_source, settings.seed)
    if cb.clips_found:
        cb.clips_found(clips)
    class_names = clips.class_names

    base_bundle = load_model(base) if base is not None else None
    feature_settings = base_bundle.feature_settings if base_bundle else FeatureSettings()
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

    splits = {"train": train_set, "validation": held_out.in_split("validation"), "test": held_out.in_split("test")}
    val_set, test_set = splits["validation"], splits["test"]
    _check_species_remain(class_names, train_set, val_set)
    module, inputs = _module_and_inputs(settings, splits, len(class_names), base_bundle, network_settings,
                                        torch_device, cb)
    data = TrainingData(inputs["train"], torch.from_numpy(train_set.labels), inputs["validation"],
                        torch.from_numpy(val_set.labels), len(class_names), torch.from_numpy(train_set.clip_index))
    loop = TrainingLoop(module, data, settings, torch_device, checkpoint_dir, cb.step, cb.message)
    if resume:
        loop.load_checkpoint()
        cb.message(f"resumed at step {loop.state.step}")
    state = loop.run()
    if state.interrupted:
        raise KeyboardInterrupt
    module.load_state_dict(loop.best_weights)
    module.eval()
    cb.message(f"selected the weights of step {state.best_step} (validation macro-F1 {state.best_metric:.3f})")
    weight_change = loop.weight_change(loop.best_weights)
    cb.message(f"the selected weights lie {weight_change:.2%} from their random initialisation")
    if weight_change < BARELY_TRAINED:
        cb.message(f"warning: the network has barely left its random start (under {BARELY_TRAINED:.0%}); "
                   "the paper trained 150,000 updates, on a GPU (README, 'Training budget')")

    network = _full_network(module, base_bundle, settings)
    classifier, open_set, mlp_info = None, None, {}
    if settings.loss == "triplet":
        cb.message("training the MLP classifier and calibrating open-set rejection")
        emb = {name: loop.outputs(x) for name, x in inputs.items()}
        classifier, mlp_info = train_mlp(emb["train"], data.labels, emb["validation"], data.val_labels,
                                         len(class_names), settings)
        open_set = fit_open_set(emb["train"], data.labels, emb["validation"], data.val_labels,
                                len(class_names), settings.open_set_threshold)
    bundle = ModelBundle(network.cpu().eval(), class_names, feature_settings, classifier, open_set, name=out.name)

    criterion = "nearest_class_mean" if settings.loss == "triplet" else "softmax"
    metrics = {"selection": {"criterion": f"validation macro-F1 ({criterion})", "best_step": state.best_step,
                             "best_value": state.best_metric, "history": state.history}, **mlp_info}
    for name, split in (("validation", val_set), ("test", test_set)):
        if len(split.labels):
            metrics[name] = _summary(evaluate_windows(bundle, split.features, split.labels, split.clip_index))
    bundle.metrics = metrics
    bundle.training = {
        "settings": settings.to_dict(),
        "steps_done": state.step,
        "minibatches_done": state.minibatch,
        "final_margin": state.margin.value if settings.loss == "triplet" else None,
        "converged": state.converged,
        "weight_change": weight_change,
        "device": str(torch_device),
        "base_model": base_bundle.model_id if base_bundle else None,
        "clips": {name: split.clip_count() for name, split in splits.items()},
        "clips_left_out": left_out,
        "windows": {"train": len(train_set.labels), "validation": len(val_set.labels), "test": len(test_set.labels)},
    }
    bundle.provenance = provenance(data_manifest_hash=clips.manifest_hash(), clips_source=str(clips_source))
    bundle.save(out)
    _write_split(out / SPLIT_FILE, clips)
    cb.message(f"wrote model {bundle.model_id} to {out}")
    return bundle


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
    network_settings: NetworkSettings | None,
    device: torch.device,
    cb: TrainCallbacks,
) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """What the loop trains, and on what: the whole CNN on feature windows, or with
    ``base`` only a fresh dense head on the base trunk's (cached) outputs."""
    torch.manual_seed(settings.seed)
    if base is None:
        inputs = {name: as_inputs(split.features) for name, split in splits.items()}
        n_outputs = n_classes if settings.loss == "crossentropy" else None
        network = _with_dropout(network_settings or NetworkSettings(), settings)
        return MultiscaleCNN(network, n_classes=n_outputs), inputs
    if settings.loss != "triplet":
        raise ValueError("--base trains the embedding head with the triplet loss; --loss crossentropy does not apply")
    trunk = base.network.trunk.to(device).eval()
    cb.message(f"computing trunk outputs of base model {base.model_id}")
    inputs = {name: _trunk_outputs(trunk, split.features, device) for name, split in splits.items()}
    net = _with_dropout(base.network.settings, settings)
    return DenseHead(net, net.embedding_dim, normalize=True), inputs


def _with_dropout(network: NetworkSettings, settings: TrainSettings) -> NetworkSettings:
    return network if settings.dropout is None else replace(network, dropout=settings.dropout)


def _full_network(module: torch.nn.Module, base: ModelBundle | None, settings: TrainSettings) -> MultiscaleCNN:
    if base is None:
        return module
    network = MultiscaleCNN(_with_dropout(base.network.settings, settings))
    network.trunk.load_state_dict(base.network.trunk.state_dict())
    network.head.load_state_dict(module.state_dict())
    return network


def _trunk_outputs(trunk: torch.nn.Module, features: np.ndarray, device: torch.device, batch: int = 64) -> torch.Tensor:
    with torch.no_grad():
        parts = [trunk(torch.from_numpy(features[i : i + batch]).to(device)).cpu() for i in range(0, len(features), batch)]
    return torch.cat(parts) if parts else torch.zeros(0, trunk.layers[0].out_channels)


def _summary(result: dict) -> dict:
    keys = ("windows", "files", "macro_f1", "file_macro_f1", "accuracy", "macro_f1_with_rejection", "known_rejected")
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
    return quantize_bundle(directory, window_set.features[np.sort(pick)], open_set_windows)
