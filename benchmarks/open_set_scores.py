"""Which open-set score tells known species from sounds the model never heard?

    python benchmarks/open_set_scores.py [--model default] [--data ../shared/data] [--cache DIR]

Scores every validation window of InsectSet32 (known) and every window of the Song Meter
day and the soundscape of ``--data`` (outliers) by several open-set scores, higher meaning
"more like a known species", and prints per score: the AUROC of known against each
outlier source, and the share of outlier windows rejected at the threshold that rejects
the most known windows while the validation macro-F1 per window (a rejected window counted
wrong) drops by at most 0.03, the project's target. The threshold is chosen on the same
validation windows, and a model's own open set may have been fitted on them (its Gaussians
are), so its row is in-sample; the tail probability fitted on the training windows is not.

Then, out of sample, for every score but the shipped one: the threshold chosen on half of
the validation recordings (open_set_spread.py's two folds) and measured on the other half:
held-out known windows rejected, their macro-F1 drop, outlier windows rejected.
"""

from __future__ import annotations

import numpy as np
import torch
from open_set_spread import arguments, embed_all, recording_folds

from fieldmon.evaluation.metrics import classification_report
from fieldmon.train.classifier import MAX_KNOWN_F1_DROP, RejectionF1


def auroc(known: np.ndarray, outliers: np.ndarray) -> float:
    """The chance that a known window scores above an outlier window (ties count half)."""
    ranks = np.concatenate([known, outliers]).argsort(kind="stable").argsort() + 1.0
    return float((ranks[: len(known)].sum() - len(known) * (len(known) + 1) / 2) / (len(known) * len(outliers)))


@torch.no_grad()
def open_set_scores(bundle, train: torch.Tensor, train_labels: torch.Tensor, e: torch.Tensor) -> dict[str, np.ndarray]:
    logits = bundle.classifier(e)
    predicted = logits.argmax(1)
    means = bundle.open_set.class_means
    distances = torch.cdist(e, means)
    centred = train - means[train_labels]
    precision = torch.linalg.inv(centred.T @ centred / len(train) + 1e-3 * torch.eye(train.shape[1]))
    diff = e[:, None, :] - means[None]
    mahalanobis = torch.einsum("ncd,de,nce->nc", diff, precision, diff)
    similarity = e @ train.T  # embeddings are L2-normalised: cosine similarity
    on_train = bundle.open_set.as_kind("species").refit(train, train_labels)
    return {k: v.numpy() for k, v in {
        "shipped: the model's own open set": bundle.open_set.scores(e, predicted),
        "tail probability, fitted on train": on_train.scores(e, predicted),
        "-distance to predicted mean": -distances[torch.arange(len(e)), predicted],
        "-distance to nearest mean": -distances.min(1).values,
        "-Mahalanobis, nearest (tied cov.)": -mahalanobis.min(1).values,
        "nearest training window (cosine)": similarity.max(1).values,
        "5th nearest training window": similarity.topk(5, dim=1).values[:, -1],
        "MLP: max softmax": logits.softmax(1).max(1).values,
        "MLP: energy (logsumexp)": torch.logsumexp(logits, 1),
    }.items()}


def main() -> None:
    args = arguments(__doc__)

    embedded = embed_all(args.model, args.data, args.cache, splits=("train", "validation"))
    bundle, e = embedded.bundle, embedded.embeddings
    truth = embedded.windows["validation"].labels
    train_labels = torch.from_numpy(embedded.windows["train"].labels)
    predicted = bundle.classifier(e["validation"]).argmax(1).numpy()
    names = bundle.class_names
    without = classification_report(truth, predicted, names).macro_f1
    outlier_sources = ("song meter", "soundscape")
    scores = {source: open_set_scores(bundle, e["train"], train_labels, e[source])
              for source in ("validation", *outlier_sources)}
    print(f"{len(truth)} known validation windows (macro-F1 {without:.3f} without rejection); outlier windows: "
          + ", ".join(f"{source} {len(e[source])}" for source in outlier_sources))
    print(f"{'score':36s} {'AUROC: song meter':>18s} {'soundscape':>11s} | at a drop <= {MAX_KNOWN_F1_DROP}: "
          "known rejected, song meter, soundscape")
    for name, known in scores["validation"].items():
        threshold = RejectionF1(known, predicted, truth, names).highest_affordable(-np.inf, MAX_KNOWN_F1_DROP)
        outliers = [scores[source][name] for source in outlier_sources]
        print(f"{name:36s} {auroc(known, outliers[0]):18.3f} {auroc(known, outliers[1]):11.3f} | "
              f"{np.mean(known < threshold):6.1%} {np.mean(outliers[0] < threshold):10.1%} "
              f"{np.mean(outliers[1] < threshold):10.1%}")

    print("\nthreshold from half of the validation recordings, on the other half: "
          "known rejected, macro-F1 drop, outliers rejected (fold 1 | fold 2)")
    folds = recording_folds(embedded.windows["validation"], len(names))
    for name, known in scores["validation"].items():
        if name.startswith("shipped"):
            continue  # its Gaussians were fitted on every validation window
        outliers = np.concatenate([scores[source][name] for source in outlier_sources])
        cells = []
        for fit in folds:
            threshold = RejectionF1(known[fit], predicted[fit], truth[fit], names).highest_affordable(
                -np.inf, MAX_KNOWN_F1_DROP)
            held = RejectionF1(known[~fit], predicted[~fit], truth[~fit], names)
            cells.append(f"{np.mean(known[~fit] < threshold):6.1%} {held(-np.inf) - held(threshold):6.3f} "
                         f"{np.mean(outliers < threshold):6.1%}")
        print(f"{name:36s} " + " | ".join(cells))


if __name__ == "__main__":
    main()
