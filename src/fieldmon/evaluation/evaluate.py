"""Evaluate a model bundle on labelled windows: window- and file-level macro-F1,
and, with outliers (species the model never saw), the open-set rejection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fieldmon.audio import is_audio_file
from fieldmon.evaluation.metrics import (
    UNKNOWN,
    bootstrap_macro_f1,
    classification_report,
    file_level,
    rejection_accuracy,
)
from fieldmon.model.bundle import ModelBundle
from fieldmon.model.loading import load_model
from fieldmon.train.cache import EVALUATION_HOP_SECONDS, FeatureCache, build_window_set
from fieldmon.train.dataset import DatasetError, load_clips
from fieldmon.train.same_recording import same_recordings


def predict_features(bundle: ModelBundle, features: np.ndarray, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities ``[N, C]`` and open-set scores ``[N]`` (NaN without calibration)."""
    probabilities, scores = [], []
    for i in range(0, len(features), batch):
        p = bundle.predict(torch.from_numpy(features[i : i + batch]), bundle.feature_settings)
        probabilities.append(p.probabilities.cpu().numpy())
        s = p.open_set_scores
        scores.append(np.full(len(p.probabilities), np.nan) if s is None else s.cpu().numpy())
    if not probabilities:
        return np.zeros((0, len(bundle.class_names))), np.zeros(0)
    return np.concatenate(probabilities), np.concatenate(scores)


def rejected(bundle: ModelBundle, scores: np.ndarray) -> np.ndarray:
    if bundle.open_set is None:
        return np.zeros(len(scores), dtype=bool)
    return scores < bundle.open_set.threshold


def evaluate_windows(
    bundle: ModelBundle,
    features: np.ndarray,
    labels: np.ndarray,
    file_ids: np.ndarray,
    outlier_features: np.ndarray | None = None,
) -> dict:
    names = bundle.class_names
    probabilities, scores = predict_features(bundle, features)
    predicted = probabilities.argmax(axis=1)
    window = classification_report(labels, predicted, names)
    files, file_probabilities = file_level(probabilities, file_ids)
    first = {f: i for i, f in reversed(list(enumerate(file_ids)))}
    file_labels = np.array([labels[first[f]] for f in files])
    per_file = classification_report(file_labels, file_probabilities.argmax(axis=1), names)
    interval = bootstrap_macro_f1(file_labels, file_probabilities.argmax(axis=1), names)
    result = {
        "windows": int(len(labels)),
        "files": int(len(files)),
        "macro_f1": window.macro_f1,
        "file_macro_f1": per_file.macro_f1,
        "file_macro_f1_interval": list(interval),
        "accuracy": window.accuracy,
        "file_accuracy": per_file.accuracy,
        "per_class": window.per_class,
        "confusion": window.confusion,
        "labels": window.labels,
    }
    if bundle.open_set is not None:
        with_rejection = np.where(rejected(bundle, scores), UNKNOWN, predicted)
        report = classification_report(labels, with_rejection, names)
        result["macro_f1_with_rejection"] = report.macro_f1
        result["known_rejected"] = float(rejected(bundle, scores).mean()) if len(scores) else float("nan")
        result["open_set_threshold"] = bundle.open_set.threshold
    if outlier_features is not None:
        if bundle.open_set is None:
            raise ValueError(f"model {bundle.model_id} has no open-set calibration; it cannot reject outliers")
        _, outlier_scores = predict_features(bundle, outlier_features)
        result["outlier_windows"] = int(len(outlier_scores))
        result["rejection_accuracy"] = rejection_accuracy(rejected(bundle, outlier_scores))
    return result


def evaluate(
    model: str | Path,
    clips_source: str | Path,
    outliers: str | Path | None = None,
    split: str | None = None,
    cache_dir: str | Path | None = None,
    precision: str = "fp32",
) -> dict:
    """``fieldmon evaluate``: metrics of a model on labelled clips (optionally one
    split of a manifest), plus rejection of outlier clips when given."""
    bundle = load_model(model, precision)
    clips = load_clips(clips_source, known_labels=bundle.class_names)
    chosen = clips.clips if split is None else clips.in_split(split)
    if not chosen:
        raise DatasetError([f"{clips_source}: no clips in split {split!r}"])
    cache = FeatureCache(Path(cache_dir) if cache_dir else None, bundle.feature_settings, EVALUATION_HOP_SECONDS)
    windows = build_window_set(chosen, bundle.class_names, cache)
    outlier_features = None
    if outliers is not None:
        files = sorted(p for p in Path(outliers).rglob("*") if p.is_file() and is_audio_file(p))
        if not files:
            raise DatasetError([f"{outliers}: no audio files"])
        outlier_features = np.concatenate([cache.clip_features(p) for p in files])
    result = evaluate_windows(bundle, windows.features, windows.labels, windows.clip_index, outlier_features)
    result["model_id"] = bundle.model_id
    result["split"] = split
    result["clips_left_out"] = windows.left_out
    result["clips_same_recording"] = [pair.problem() for pair in same_recordings([windows])]
    return result
