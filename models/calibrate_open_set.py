"""Fit the open set of a trained bundle again, in place, as `fieldmon train --open-set
KIND` fits it (KIND species, shared or nearest-window; fieldmon.model.openset): the
distance Gaussians on the validation windows, for fp32 and, when the bundle has one, for
its int8 trunk (with its own calibrated threshold); for nearest-window the embeddings of
the training clips cut every 2 s as the reference; then the calibrated threshold (``--open-set-threshold auto``). The weights,
the MLP and the class means stay. With nearest-window the weights file gains the
reference, so the model id changes and int8 needs fieldmon quantize again. model.json's
open set, its calibration and its validation metrics change (the training settings keep
what the model was trained with).

    python models/calibrate_open_set.py models/default ../shared/data/insectset32/manifest.csv nearest-window

With a fourth argument START (class-means or random; `fieldmon train --mlp-init`), the MLP
is fitted again first, from that start, on the training clips cut as training cut them,
and the model id changes too.

    python models/calibrate_open_set.py MODEL ../shared/data/insectset32/manifest.csv nearest-window class-means
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
from fieldmon.train.api import int8_threshold_rule, metrics_summary
from fieldmon.train.cache import EVALUATION_HOP_SECONDS, FeatureCache, build_window_set
from fieldmon.train.classifier import calibrated_threshold, train_mlp
from fieldmon.train.dataset import load_clips
from fieldmon.train.loop import outputs_in_batches
from fieldmon.train.settings import TrainSettings


def main(model: str, manifest: str, kind: str = "species", mlp_init: str | None = None) -> None:
    directory = Path(model)
    bundle = load_model(directory)
    clips = load_clips(manifest, known_labels=bundle.class_names)
    cache = FeatureCache(None, bundle.feature_settings, EVALUATION_HOP_SECONDS)

    def embed(features):
        return outputs_in_batches(bundle.network, torch.from_numpy(features), torch.device("cpu"))

    val = build_window_set(clips.in_split("validation"), bundle.class_names, cache)
    embeddings, labels = embed(val.features), torch.from_numpy(val.labels)
    if mlp_init is not None:
        settings = replace(TrainSettings.from_dict(bundle.training["settings"]), mlp_init=mlp_init)
        train_cache = FeatureCache(None, bundle.feature_settings, settings.hop_seconds)
        train = build_window_set(clips.in_split("train"), bundle.class_names, train_cache)
        bundle.classifier, mlp_info = train_mlp(embed(train.features), torch.from_numpy(train.labels), embeddings,
                                                labels, len(bundle.class_names), settings)
        bundle.metrics.pop("mlp_init_temperature", None)  # from the MLP this one replaces
        bundle.metrics.update(mlp_info)
        bundle.training["settings"] = settings.to_dict()
        bundle.training["mlp_refit"] = f"models/calibrate_open_set.py {kind} {mlp_init}, after training"
        print(json.dumps(mlp_info, indent=2))
    reference = None
    if kind == "nearest-window":
        reference = embed(build_window_set(clips.in_split("train"), bundle.class_names, cache).features)
    refitted = bundle.open_set.as_kind(kind, reference).refit(embeddings, labels)
    threshold, calibration = calibrated_threshold(refitted, bundle.classifier, embeddings, labels, bundle.class_names)
    bundle.open_set = replace(refitted, threshold=threshold)
    bundle.metrics["open_set_calibration"] = {**calibration, "by": f"models/calibrate_open_set.py {kind}, after training"}
    bundle.metrics["validation"] = metrics_summary(evaluate_windows(bundle, val.features, val.labels, val.clip_index))
    before = json.loads((directory / "model.json").read_text())
    bundle.save(directory)
    meta = json.loads((directory / "model.json").read_text())
    if "int8" in before and before["int8"]["weights_sha256"] == meta["weights_sha256"]:
        trunk = OnnxTrunk(directory / INT8_NAME, torch.get_num_threads())
        open_set = int8_open_set(bundle, trunk, val.features, val.labels, calibrate=int8_threshold_rule(bundle))
        meta["int8"] = {**before["int8"], "open_set": open_set}
        atomic_write(directory / "model.json", (json.dumps(meta, indent=2) + "\n").encode())
    elif "int8" in before:
        print(f"the weights file changed (model id {meta['model_id']}): run fieldmon quantize again for int8")
    print(json.dumps(calibration, indent=2))


if __name__ == "__main__":
    main(*sys.argv[1:])
