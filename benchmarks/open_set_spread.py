"""Do the open-set Gaussians hold for recordings they were not fitted on?

    python benchmarks/open_set_spread.py [--model default] [--data ../shared/data] [--cache DIR]

Each species' distance Gaussian is fitted on its validation windows, often of one or two
recordings, and the threshold is calibrated on the same windows. This fits and calibrates
on one half of the validation recordings and measures the other half: two folds by
recording, over the species with two or more validation clips (the others are fitted in
both folds and never measured). Three spreads: each species' own (as before
fieldmon.model.openset had a floor), at least the pooled spread of all species
(``fieldmon train --open-set species``), and one Gaussian shared by all (``shared``),
whatever open set the model has. Prints, per fold and spread: the threshold chosen, the share of held-out known
windows rejected, their macro-F1 drop and the share of outlier windows rejected (the
Song Meter day and the soundscape of ``--data``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from fieldmon.evaluation.metrics import UNKNOWN, classification_report
from fieldmon.model.bundle import ModelBundle
from fieldmon.model.loading import load_model
from fieldmon.model.openset import MIN_STD
from fieldmon.train.cache import EVALUATION_HOP_SECONDS, FeatureCache, WindowSet, build_window_set
from fieldmon.train.classifier import calibrated_threshold
from fieldmon.train.dataset import load_clips


def own_spreads(open_set, embeddings, labels):
    """The distance Gaussians of the species in ``labels``, each with its own spread."""
    open_set = open_set.as_kind("species")
    mean, std = open_set.distance_mean.clone(), open_set.distance_std.clone()
    for c in labels.unique().tolist():
        d = torch.linalg.vector_norm(embeddings[labels == c] - open_set.class_means[c], dim=1)
        mean[c], std[c] = d.mean(), max(float(d.std(unbiased=False)), MIN_STD)
    return replace(open_set, distance_mean=mean, distance_std=std)


def species_spreads(open_set, embeddings, labels):
    """As fieldmon train --open-set species fits them: no spread below the pooled one."""
    return open_set.as_kind("species").refit(embeddings, labels)


def shared_spread(open_set, embeddings, labels):
    """As fieldmon train --open-set shared fits it."""
    return open_set.as_kind("shared").refit(embeddings, labels)


@dataclass
class Embedded:
    """A model's embeddings of InsectSet32's splits and of the outlier recordings."""

    bundle: ModelBundle
    windows: dict[str, WindowSet]  # by split
    embeddings: dict[str, torch.Tensor]  # by split, and "song meter" and "soundscape" for the outliers


def embed_all(model: str, data: Path, cache_dir: Path | None, splits: tuple[str, ...] = ("validation",)) -> Embedded:
    bundle = load_model(model).eval()
    cache = FeatureCache(cache_dir, bundle.feature_settings, EVALUATION_HOP_SECONDS)
    clips = load_clips(data / "insectset32" / "manifest.csv", known_labels=bundle.class_names)
    windows = {split: build_window_set(clips.in_split(split), bundle.class_names, cache) for split in splits}

    @torch.no_grad()
    def embed(features: np.ndarray) -> torch.Tensor:
        return torch.cat([bundle.network(torch.from_numpy(features[i:i + 64])) for i in range(0, len(features), 64)])

    def outliers(folder: str) -> torch.Tensor:
        return embed(np.concatenate([cache.clip_features(p) for p in sorted((data / folder).glob("*.wav"))]))

    embeddings = {split: embed(w.features) for split, w in windows.items()}
    embeddings |= {"song meter": outliers("recorder-series-S4A03895"), "soundscape": outliers("soundscapes")}
    return Embedded(bundle, windows, embeddings)


def recording_folds(val: WindowSet, n_classes: int) -> list[np.ndarray]:
    """Two masks of the windows to fit on, each with alternate recordings of every species
    that has two or more (one with a single recording is in both, and never held out)."""
    folds = []
    for fold in (0, 1):
        fit = np.zeros(len(val.labels), bool)
        for c in range(n_classes):
            recordings = np.unique(val.clip_index[val.labels == c])
            fit |= np.isin(val.clip_index, recordings if len(recordings) < 2 else recordings[fold::2])
        folds.append(fit)
    return folds


def arguments(doc: str) -> argparse.Namespace:
    """--model, --data and --cache, as both open-set benchmarks take them."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--cache", type=Path, default=None)
    return parser.parse_args()


def main() -> None:
    args = arguments(__doc__)

    embedded = embed_all(args.model, args.data, args.cache)
    bundle, val = embedded.bundle, embedded.windows["validation"]
    names = bundle.class_names
    embeddings, labels = embedded.embeddings["validation"], torch.from_numpy(val.labels)
    outliers = torch.cat([embedded.embeddings["song meter"], embedded.embeddings["soundscape"]])

    def rejected(open_set, e):
        predicted = bundle.classifier(e).argmax(1)
        return (open_set.scores(e, predicted) < open_set.threshold).numpy(), predicted.numpy()

    print(f"{len(val.labels)} validation windows of {val.clip_count()} recordings, {len(outliers)} outlier windows")
    for fold, fit in enumerate(recording_folds(val, len(names))):
        held = ~fit
        for spread, fitting in (("own", own_spreads), ("pooled floor", species_spreads), ("shared", shared_spread)):
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
