"""Re-calibrate the open-set threshold of a trained bundle in place, as `fieldmon train`
does by default since the threshold became calibrated (``--open-set-threshold auto``):
the highest threshold whose validation macro-F1 per window with rejection stays within
0.03 of that without. Only the threshold and the validation metrics in model.json
change (the training settings keep the threshold the model was trained with); the
weights, the class means and the distance Gaussians (fp32 and int8) stay.

    python models/calibrate_open_set.py models/default ../shared/data/insectset32/manifest.csv
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from fieldmon.evaluation.evaluate import evaluate_windows
from fieldmon.fileio import atomic_write
from fieldmon.model.loading import load_model
from fieldmon.train.api import metrics_summary
from fieldmon.train.cache import EVALUATION_HOP_SECONDS, FeatureCache, build_window_set
from fieldmon.train.classifier import calibrated_threshold
from fieldmon.train.dataset import load_clips


def main(model: str, manifest: str) -> None:
    directory = Path(model)
    bundle = load_model(directory)
    clips = load_clips(manifest, known_labels=bundle.class_names)
    cache = FeatureCache(None, bundle.feature_settings, EVALUATION_HOP_SECONDS)
    val = build_window_set(clips.in_split("validation"), bundle.class_names, cache)
    with torch.no_grad():
        embeddings = torch.cat([bundle.network(torch.from_numpy(val.features[i:i + 64]))
                                for i in range(0, len(val.features), 64)])
    threshold, calibration = calibrated_threshold(bundle.open_set, bundle.classifier, embeddings,
                                                  torch.from_numpy(val.labels), bundle.class_names)
    bundle.open_set = replace(bundle.open_set, threshold=threshold)
    meta = json.loads((directory / "model.json").read_text())
    meta["open_set"]["threshold"] = threshold
    meta["metrics"]["open_set_calibration"] = {**calibration, "by": "models/calibrate_open_set.py, after training"}
    meta["metrics"]["validation"] = metrics_summary(evaluate_windows(bundle, val.features, val.labels, val.clip_index))
    atomic_write(directory / "model.json", (json.dumps(meta, indent=2) + "\n").encode())
    print(json.dumps(calibration, indent=2))


if __name__ == "__main__":
    main(*sys.argv[1:])
