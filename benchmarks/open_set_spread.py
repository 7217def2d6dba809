"""Do the open-set Gaussians hold for recordings they were not fitted on?

    python benchmarks/open_set_spread.py [--model default] [--data ../shared/data] [--cache DIR]

Each species' distance Gaussian is fitted on its validation windows, often of one or two
recordings, and the threshold is calibrated on the same windows. This fits and calibrates
on one half of the validation recordings and measures the other half: two folds by
recording, over the species with two or more validation clips (the others are fitted in
both folds and never measured). Two spreads: each species' own (as before
fieldmon.model.openset had a floor) and the shipped one, at least the pooled spread of all
species. Prints, per fold and spread: the threshold chosen, the share of held-out known
windows rejected, their macro-F1 drop and the share of outlier windows rejected (the
Song Meter day and the soundscape of ``--data``).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from fieldmon.evaluation.metrics import UNKNOWN, classification_report
from fieldmon.model.loading import load_model
from fieldmon.model.openset import MIN_STD
from fieldmon.train.cache import EVALUATION_HOP_SECONDS, FeatureCache, build_window_set
from fieldmon.train.classifier import calibrated_threshold
from fieldmon.train.dataset import load_clips


def own_spreads(open_set, embeddings, labels):
    """The distance Gaussians of the species in ``labels``, each with its own spread."""
    mean, std = open_set.distance_mean.clone(), open_set.distance_std.clone()
    for c in labels.unique().tolist():
        d = torch.linalg.vector_norm(embeddings[labels == c] - open_set.class_means[c], dim=1)
        mean[c], std[c] = d.mean(), max(float(d.std(unbiased=False)), MIN_STD)
    return replace(open_set, distance_mean=mean, distance_std=std)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args()

    bundle = load_model(args.model).eval()
    names = bundle.class_names
    cache = FeatureCache(args.cache, bundle.feature_settings, EVALUATION_HOP_SECONDS)
    clips = load_clips(args.data / "insectset32" / "manifest.csv", known_labels=names)
    val = build_window_set(clips.in_split("validation"), names, cache)
    outlier_files = sorted((args.data / "recorder-series-S4A03895").glob("*.wav"))
    outlier_files += sorted((args.data / "soundscapes").glob("*.wav"))

    @torch.no_grad()
    def embed(features: np.ndarray) -> torch.Tensor:
        return torch.cat([bundle.network(torch.from_numpy(features[i:i + 64])) for i in range(0, len(features), 64)])

    embeddings, labels = embed(val.features), torch.from_numpy(val.labels)
    outliers = embed(np.concatenate([cache.clip_features(p) for p in outlier_files]))

    def rejected(open_set, e):
        predicted = bundle.classifier(e).argmax(1)
        return (open_set.scores(e, predicted) < open_set.threshold).numpy(), predicted.numpy()

    print(f"{len(val.labels)} validation windows of {val.clip_count()} recordings, {len(outliers)} outlier windows")
    for fold in (0, 1):
        fit = np.zeros(len(labels), bool)
        for c in range(len(names)):
            recordings = np.unique(val.clip_index[val.labels == c])
            kept = recordings if len(recordings) < 2 else recordings[fold::2]
            fit |= np.isin(val.clip_index, kept)
        held = ~fit
        for spread, fitting in (("own", own_spreads), ("pooled floor", type(bundle.open_set).refit)):
            open_set = fitting(bundle.open_set, embeddings[fit], labels[fit])
            threshold, _ = calibrated_threshold(open_set, bundle.classifier, embeddings[fit], labels[fit], names)
            open_set = replace(open_set, threshold=threshold)
            reject, predicted = rejected(open_set, embeddings[held])
            truth = val.labels[held]
            before = classification_report(truth, predicted, names).macro_f1
            after = classification_report(truth, np.where(reject, UNKNOWN, predicted), names).macro_f1
            print(f"fold {fold + 1}, {spread:12s}: threshold {threshold:.3f}; {held.sum()} held-out known windows, "
                  f"{reject.mean():.1%} rejected, macro-F1 {before:.3f} -> {after:.3f} (drop {before - after:.3f}); "
                  f"outlier windows rejected {rejected(open_set, outliers)[0].mean():.1%}")


if __name__ == "__main__":
    main()
