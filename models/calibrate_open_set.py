"""Fit the open set of a trained bundle again, in place, as `fieldmon train
--open-set-spread SPREAD` fits it: the distance Gaussians on the validation windows
(fieldmon.model.openset), for fp32 and, when the bundle has one, for its int8 trunk; then
the calibrated threshold (``--open-set-threshold auto``), the highest whose validation
macro-F1 per window with rejection stays within 0.03 of that without. The weights, the
MLP and the class means stay, and so does the model id; model.json's open set, its
calibration and its validation metrics change (the training settings keep what the model
was trained with).

    python models/calibrate_open_set.py models/default ../shared/data/insectset32/manifest.csv shared
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from fieldmon.evaluation.evaluate import evaluate_windows
from fieldmon.fileio import atomic_write
from fieldmon.model.int8 import INT8_NAME, OnnxTrunk, int8_open_set
from fieldmon.model.loading import load_model
from fieldmon.train.api import metrics_summary
from fieldmon.train.cache import EVALUATION_HOP_SECONDS, FeatureCache, build_window_set
from fieldmon.train.classifier import calibrated_threshold
from fieldmon.train.dataset import load_clips


def main(model: str, manifest: str, spread: str = "species") -> None:
    directory = Path(model)
    bundle = load_model(directory)
    clips = load_clips(manifest, known_labels=bundle.class_names)
    cache = FeatureCache(None, bundle.feature_settings, EVALUATION_HOP_SECONDS)
    val = build_window_set(clips.in_split("validation"), bundle.class_names, cache)
    labels = torch.from_numpy(val.labels)
    with torch.no_grad():
        embeddings = torch.cat([bundle.network(torch.from_numpy(val.features[i:i + 64]))
                                for i in range(0, len(val.features), 64)])
    refitted = replace(bundle.open_set, spread=spread).refit(embeddings, labels)
    threshold, calibration = calibrated_threshold(refitted, bundle.classifier, embeddings, labels, bundle.class_names)
    bundle.open_set = replace(refitted, threshold=threshold)
    meta = json.loads((directory / "model.json").read_text())
    meta["open_set"] = bundle.open_set.to_json()
    meta["metrics"]["open_set_calibration"] = {**calibration, "by": f"models/calibrate_open_set.py {spread}, after training"}
    meta["metrics"]["validation"] = metrics_summary(evaluate_windows(bundle, val.features, val.labels, val.clip_index))
    if "int8" in meta and "open_set" in meta["int8"]:
        trunk = OnnxTrunk(directory / INT8_NAME, torch.get_num_threads())
        meta["int8"]["open_set"] = int8_open_set(bundle, trunk, val.features, val.labels)
    atomic_write(directory / "model.json", (json.dumps(meta, indent=2) + "\n").encode())
    print(json.dumps(calibration, indent=2))


if __name__ == "__main__":
    main(*sys.argv[1:])
