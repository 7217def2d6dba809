"""Classification metrics for closed-set and open-set (rejecting) predictions.

Pure numpy so that evaluation does not pull in sklearn; the conventions follow
sklearn's ``classification_report`` / ``f1_score(average="macro")`` wherever the
two can be compared, and the one deliberate difference is noted below.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

UNKNOWN = -1  # predicted index meaning "rejected as unknown"
UNKNOWN_LABEL = "unknown"


@dataclass
class ClassificationReport:
    macro_f1: float
    accuracy: float
    per_class: dict[str, dict[str, float]]  # name -> {"precision", "recall", "f1", "support"}
    confusion: list[list[int]]  # [true][pred]; a last "unknown" column only when something was rejected
    labels: list[str]  # column names of `confusion`

    def to_dict(self) -> dict:
        # Every field is already built from Python scalars, so this is valid JSON as is.
        return asdict(self)


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    # 0/0 -> 0, as sklearn does with zero_division=0: an empty class earns no credit.
    out = np.zeros(numerator.shape, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> ClassificationReport:
    """Per-class precision/recall/F1, macro-F1, accuracy and confusion matrix.

    ``y_true`` holds indices in ``[0, C)``; ``y_pred`` the same or ``UNKNOWN``.
    A rejected known window is simply an error: it lowers that class's recall
    and no class's precision.

    Macro-F1 averages over the known classes that occur in ``y_true`` or
    ``y_pred`` (sklearn's default ``labels`` = present labels), but UNKNOWN is
    never one of the averaged labels, where sklearn would add ``-1`` as a class
    of its own. A class absent from both the test set and the predictions thus
    does not drag the mean down; a class predicted but never true does count,
    with F1 = 0. ``per_class`` still lists every class so the schema is stable.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    n_classes = len(class_names)
    if y_true.ndim != 1 or y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred must be 1-D and of equal length, got {y_true.shape} and {y_pred.shape}")
    if y_true.size == 0:
        raise ValueError("cannot score an empty set of predictions")
    if not (np.issubdtype(y_true.dtype, np.integer) and np.issubdtype(y_pred.dtype, np.integer)):
        raise ValueError("y_true and y_pred must hold integer class indices")
    if y_true.min() < 0 or y_true.max() >= n_classes:
        raise ValueError(f"y_true must lie in [0, {n_classes})")
    if y_pred.max() >= n_classes or not np.all((y_pred >= 0) | (y_pred == UNKNOWN)):
        raise ValueError(f"y_pred must lie in [0, {n_classes}) or be UNKNOWN ({UNKNOWN})")

    rejected_any = bool(np.any(y_pred == UNKNOWN))
    n_columns = n_classes + 1 if rejected_any else n_classes
    # UNKNOWN (-1) goes to the extra last column.
    pred_column = np.where(y_pred == UNKNOWN, n_classes, y_pred)
    confusion = np.bincount(y_true * n_columns + pred_column, minlength=n_classes * n_columns).reshape(n_classes, n_columns)

    known = confusion[:, :n_classes]
    true_positives = np.diag(known)
    support = confusion.sum(axis=1)  # includes rejected windows, so rejection costs recall
    predicted = known.sum(axis=0)  # rejected windows were predicted as no class
    precision = _safe_ratio(true_positives, predicted)
    recall = _safe_ratio(true_positives, support)
    f1 = _safe_ratio(2 * precision * recall, precision + recall)

    present = (support > 0) | (predicted > 0)
    per_class = {
        name: {
            "precision": float(precision[c]),
            "recall": float(recall[c]),
            "f1": float(f1[c]),
            "support": int(support[c]),
        }
        for c, name in enumerate(class_names)
    }
    return ClassificationReport(
        macro_f1=float(f1[present].mean()),  # non-empty: y_true is non-empty and in range
        accuracy=float(np.mean(y_pred == y_true)),
        per_class=per_class,
        confusion=confusion.tolist(),
        labels=list(class_names) + ([UNKNOWN_LABEL] if rejected_any else []),
    )


def file_level(probabilities: np.ndarray, file_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average window probabilities per file.

    Returns the unique file ids in order of first appearance (so output rows
    line up with the input order rather than a sorted one) and their mean
    probabilities, shape ``[F, C]``.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    file_ids = np.asarray(file_ids)
    if probabilities.ndim != 2 or file_ids.ndim != 1 or len(file_ids) != len(probabilities):
        raise ValueError(f"need probabilities [N, C] and file_ids [N], got {probabilities.shape} and {file_ids.shape}")

    unique_sorted, first_index, inverse = np.unique(file_ids, return_index=True, return_inverse=True)
    order = np.argsort(first_index, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    group = rank[inverse.reshape(-1)]

    sums = np.zeros((len(order), probabilities.shape[1]), dtype=np.float64)
    np.add.at(sums, group, probabilities)
    counts = np.bincount(group, minlength=len(order))
    return unique_sorted[order], sums / counts[:, None]


def bootstrap_macro_f1(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str], resamples: int = 1000, seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the macro-F1 over the scored items (files):
    how much the figure could move with another draw of equally many recordings.
    With a few validation files per species it is wide, and it says so."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(y_true), size=(resamples, len(y_true)))
    values = np.array([classification_report(y_true[d], y_pred[d], class_names).macro_f1 for d in draws])
    tail = (1.0 - level) / 2
    return float(np.quantile(values, tail)), float(np.quantile(values, 1.0 - tail))


def rejection_accuracy(is_rejected: np.ndarray) -> float:
    """Share of outlier (unknown-class) windows rejected as unknown (paper, Table II).

    NaN for no outlier windows: "no data" must not read as 0 % or 100 %.
    """
    is_rejected = np.asarray(is_rejected)
    if is_rejected.size == 0:
        return float("nan")
    if is_rejected.dtype != bool and not np.all((is_rejected == 0) | (is_rejected == 1)):
        raise ValueError("is_rejected must be boolean (or 0/1)")
    return float(np.mean(is_rejected.astype(bool)))
