"""Can field recordings without the model's species teach it what "unknown" is?

    python benchmarks/open_set_background.py [--model default] [--data ../shared/data] [--cache DIR]

Outlier exposure, tried on the MLP alone: the model's network embeds InsectSet32's training
windows and a "background" set of field windows, and an MLP with one extra class,
"unknown", is fitted on both (validation split for early stopping, as in training). The
Song Meter day (``recorder-series-S4A03895``) is split into alternate 3-hour blocks, A for
fitting and B for measuring the same site at other hours; the soundscape
(``soundscapes/``, another site and recorder) is never fitted, and shows whether what was
learnt carries to a place the background did not come from. The shipped rule (distance
to the class mean, at the model's threshold and at 0.2) is measured on the same windows.

Prints, per rule: known validation windows rejected, their macro-F1 with rejection, and
the share of windows rejected in A, B and the soundscape.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from fieldmon.evaluation.metrics import UNKNOWN, classification_report
from fieldmon.model.loading import load_model
from fieldmon.train.cache import EVALUATION_HOP_SECONDS, FeatureCache, build_window_set
from fieldmon.train.classifier import train_mlp
from fieldmon.train.dataset import load_clips
from fieldmon.train.settings import TrainSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--cache", type=Path, default=None, help="feature cache (default: fieldmon's)")
    args = parser.parse_args()
    bundle = load_model(args.model)
    network, n_classes = bundle.network.eval(), len(bundle.class_names)
    cache = FeatureCache(args.cache, bundle.feature_settings, EVALUATION_HOP_SECONDS)
    clips = load_clips(args.data / "insectset32" / "manifest.csv", known_labels=bundle.class_names)
    train = build_window_set(clips.in_split("train"), bundle.class_names, cache)
    validation = build_window_set(clips.in_split("validation"), bundle.class_names, cache)
    song_meter = sorted((args.data / "recorder-series-S4A03895").glob("*.wav"))
    block = {p: int(p.stem.split("_")[2][:2]) // 3 % 2 for p in song_meter}

    def embed(features: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([network(torch.as_tensor(features[i : i + 256])) for i in range(0, len(features), 256)])

    def embed_files(paths: list[Path]) -> torch.Tensor:
        return embed(np.concatenate([cache.clip_features(p) for p in paths]))

    emb = {"train": embed(train.features), "validation": embed(validation.features),
           "A": embed_files([p for p in song_meter if block[p] == 0]),
           "B": embed_files([p for p in song_meter if block[p] == 1]),
           "soundscape": embed_files(sorted((args.data / "soundscapes").glob("*.wav")))}
    print("windows:", {k: len(v) for k, v in emb.items()})

    def report(name: str, probabilities, rejected) -> None:
        known = probabilities(emb["validation"])
        predicted = known[:, :n_classes].argmax(1).numpy()
        rejected_known = rejected(emb["validation"], known).numpy()
        f1 = classification_report(validation.labels, np.where(rejected_known, UNKNOWN, predicted),
                                   bundle.class_names).macro_f1
        shares = {k: float(rejected(emb[k], probabilities(emb[k])).float().mean()) for k in ("A", "B", "soundscape")}
        print(f"{name:44s} known rejected {rejected_known.mean():.3f}, macro-F1 {f1:.3f}; rejected: "
              + ", ".join(f"{k} {v:.3f}" for k, v in shares.items()))

    def far_from_mean(threshold: float):
        return lambda e, p: bundle.open_set.scores(e, p[:, :n_classes].argmax(1)) < threshold

    def shipped(e: torch.Tensor) -> torch.Tensor:
        return torch.softmax(bundle.classifier(e), 1).detach()

    for threshold in (bundle.open_set.threshold, 0.2):
        report(f"distance to class mean < {threshold}", shipped, far_from_mean(threshold))
    background = emb["A"]
    mlp, _ = train_mlp(torch.cat([emb["train"], background]),
                       torch.cat([torch.as_tensor(train.labels), torch.full((len(background),), n_classes)]),
                       emb["validation"], torch.as_tensor(validation.labels), n_classes + 1, TrainSettings(steps=1))

    def exposed(e: torch.Tensor) -> torch.Tensor:
        return torch.softmax(mlp(e), 1).detach()

    report("MLP with an 'unknown' class fitted on A", exposed, lambda e, p: p.argmax(1) == n_classes)
    report("  ... or distance < model threshold", exposed,
           lambda e, p: (p.argmax(1) == n_classes) | far_from_mean(bundle.open_set.threshold)(e, p))


if __name__ == "__main__":
    main()
