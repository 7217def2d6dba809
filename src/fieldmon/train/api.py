"""``fieldmon.train``: labelled clips in, a model bundle out."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fieldmon.evaluation.evaluate import evaluate_windows
from fieldmon.features import FeatureSettings
from fieldmon.fileio import atomic_write
from fieldmon.model.bundle import ModelBundle, load_model
from fieldmon.model.network import DenseHead, MultiscaleCNN, NetworkSettings
from fieldmon.model.openset import fit_open_set
from fieldmon.provenance import provenance
from fieldmon.train.cache import FeatureCache, build_window_set
from fieldmon.train.classifier import train_mlp
from fieldmon.train.dataset import ClipSet, DatasetError, assign_splits, load_clips
from fieldmon.train.loop import StepReport, TrainingData, TrainingLoop, as_inputs, read_checkpoint_meta
from fieldmon.train.settings import TrainSettings
from fieldmon.tuning import keep_freed_memory

CHECKPOINT_DIR = "checkpoint"
SPLIT_FILE = "split.csv"


@dataclass
class TrainCallbacks:
    message: Callable[[str], None] = print
    clips_found: Callable[[ClipSet], None] | None = None
    step: Callable[[StepReport], None] | None = None


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(device)


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
    cache = FeatureCache(Path(cache_dir) if cache_dir else None, feature_settings, settings.hop_seconds)
    cb.message(f"computing features (cache: {cache.directory})")
    windows = build_window_set(clips.clips, class_names, cache)
    cb.message(f"{len(windows.labels)} windows ({cache.hits} clips from the cache, {cache.misses} computed)")
    train_set, val_set, test_set = (windows.in_split(s) for s in ("train", "validation", "test"))

    if base_bundle is not None:
        network_settings = base_bundle.network.settings
    network_settings = network_settings or NetworkSettings()
    torch.manual_seed(settings.seed)
    if base_bundle is not None:
        if settings.loss != "triplet":
            raise ValueError("--base trains the embedding head with the triplet loss; --loss crossentropy does not apply")
        trunk = base_bundle.network.trunk.to(torch_device).eval()
        cb.message(f"computing trunk outputs of base model {base_bundle.model_id}")
        inputs = {name: _trunk_outputs(trunk, s.features, torch_device) for name, s in
                  (("train", train_set), ("validation", val_set), ("test", test_set))}
        module: torch.nn.Module = DenseHead(network_settings, network_settings.embedding_dim, normalize=True)
    else:
        inputs = {"train": as_inputs(train_set.features), "validation": as_inputs(val_set.features),
                  "test": as_inputs(test_set.features)}
        n_outputs = len(class_names) if settings.loss == "crossentropy" else None
        module = MultiscaleCNN(network_settings, n_classes=n_outputs)

    data = TrainingData(inputs["train"], torch.from_numpy(train_set.labels), inputs["validation"],
                        torch.from_numpy(val_set.labels), len(class_names))
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

    if base_bundle is not None:
        network = MultiscaleCNN(network_settings)
        network.trunk.load_state_dict(base_bundle.network.trunk.state_dict())
        network.head.load_state_dict(module.state_dict())
    else:
        network = module
    classifier, open_set, mlp_info = None, None, {}
    if settings.loss == "triplet":
        cb.message("training the MLP classifier and calibrating open-set rejection")
        loop.module = module.to(torch_device)
        emb = {k: loop.outputs(v) for k, v in inputs.items()}
        train_labels = data.labels
        classifier, mlp_info = train_mlp(emb["train"], train_labels, emb["validation"], data.val_labels,
                                         len(class_names), settings)
        open_set = fit_open_set(emb["train"], train_labels, emb["validation"], data.val_labels,
                                len(class_names), settings.open_set_threshold)
    bundle = ModelBundle(network.cpu().eval(), class_names, feature_settings, classifier, open_set, name=out.name)

    metrics = {"selection": {"best_step": state.best_step, "val_macro_f1_nearest_mean" if settings.loss == "triplet"
                             else "val_macro_f1": state.best_metric, "history": state.history},
               **mlp_info}
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
        "device": str(torch_device),
        "base_model": base_bundle.model_id if base_bundle else None,
        "clips": {s: len(clips.in_split(s)) for s in ("train", "validation", "test")},
        "windows": {"train": len(train_set.labels), "validation": len(val_set.labels), "test": len(test_set.labels)},
    }
    bundle.provenance = provenance(data_manifest_hash=clips.manifest_hash(), clips_source=str(clips_source))
    bundle.save(out)
    _write_split(out / SPLIT_FILE, clips)
    cb.message(f"wrote model {bundle.model_id} to {out}")
    return bundle


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

