"""The MLP's start: the paper's random weights against the nearest-class-mean classifier.

    python benchmarks/mlp_init.py MODEL [MODEL ...] [--data ../shared/data/insectset32] [--cache DIR]

For each model's network: embeds the InsectSet32 training windows (at the hop it was trained with) and validation
windows (2 s), fits the MLP as ``fieldmon train`` does from each start
(``TrainSettings.mlp_init``) and prints the validation macro-F1 per file and per window, the
validation cross-entropy the early stopping minimised, the class-means start's temperature
and the epoch kept (0: the start). Only the classifier changes; the open set is the model's.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from fieldmon import load_model
from fieldmon.evaluation.evaluate import evaluate_windows
from fieldmon.train.api import prepare_clips
from fieldmon.train.cache import EVALUATION_HOP_SECONDS, FeatureCache, build_window_set
from fieldmon.train.classifier import train_mlp
from fieldmon.train.loop import outputs_in_batches
from fieldmon.train.settings import MLP_INITS, TrainSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/insectset32"))
    parser.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args()
    clips = prepare_clips(args.data / "manifest.csv", seed=0)
    print("model | start | per file | per window | validation loss | temperature | epoch kept")
    for model in args.models:
        bundle = load_model(model)
        names = bundle.class_names
        if names != clips.class_names:
            raise SystemExit(f"{model}: its species are not InsectSet32's")
        trained_with = TrainSettings.from_dict(bundle.training["settings"])
        train = build_window_set(clips.in_split("train"), names,
                                 FeatureCache(args.cache, bundle.feature_settings, trained_with.hop_seconds))
        val = build_window_set(clips.in_split("validation"), names,
                               FeatureCache(args.cache, bundle.feature_settings, EVALUATION_HOP_SECONDS))
        embedded = {name: outputs_in_batches(bundle.network, torch.from_numpy(s.features), torch.device("cpu"))
                    for name, s in (("train", train), ("validation", val))}
        for start in MLP_INITS:
            settings = replace(trained_with, mlp_init=start)
            mlp, info = train_mlp(embedded["train"], torch.from_numpy(train.labels), embedded["validation"],
                                  torch.from_numpy(val.labels), len(names), settings)
            result = evaluate_windows(replace(bundle, classifier=mlp), val.features, val.labels, val.clip_index)
            temperature = info.get("mlp_init_temperature")
            print(f"{model} | {start} | {result['file_macro_f1']:.3f} | {result['macro_f1']:.3f} | "
                  f"{info['mlp_monitored_loss']:.3f} | {'-' if temperature is None else f'{temperature:.3f}'} | "
                  f"{info['mlp_best_epoch']}", flush=True)


if __name__ == "__main__":
    main()
