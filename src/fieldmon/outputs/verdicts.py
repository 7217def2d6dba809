"""``fieldmon review-summary``: precision per species from a review page's verdicts,
and the score threshold per species that reaches a target precision.

Precision is the stratified estimate over all of a species' detections: a reviewed
window stands for ``stratum_windows / reviewed windows of its stratum`` detections
(windows marked unsure, or left unmarked, are not counted in the stratum; a stratum
with none reviewed drops out and the estimate covers the others). The 95 % interval is
Wilson's score interval at Kish's effective sample size (sum of weights squared over
the sum of squared weights), which is the plain Wilson interval when every stratum is
sampled in proportion. The threshold of a species is the lowest reviewed score at which
the estimated precision of the windows scoring at least that much reaches the target.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fieldmon.outputs.review import VERDICT_COLUMNS, VERDICTS
from fieldmon.provenance import provenance

THRESHOLDS_FORMAT = "fieldmon-thresholds/1"
INTERVAL = ("Wilson score interval (95 %) at Kish's effective sample size of the score-stratified sample, "
            "weighted by windows per stratum / windows reviewed in it")
Z95 = 1.959964


class VerdictsError(ValueError):
    """A verdicts or thresholds file that cannot be used; the message names it."""


def read_verdicts(path: str | Path) -> pd.DataFrame:
    """A verdicts CSV saved by the review page, checked."""
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise VerdictsError(f"{path}: not a readable CSV ({exc})") from None
    missing = [c for c in VERDICT_COLUMNS if c not in table.columns]
    if missing:
        raise VerdictsError(f"{path}: not a verdicts CSV saved by a review page (no column {', '.join(missing)})")
    bad = sorted(set(table["verdict"]) - {*VERDICTS, ""})
    if bad:
        raise VerdictsError(f"{path}: verdict {bad[0]!r} is not one of {', '.join(VERDICTS)} (or empty)")
    try:
        for column in ("item", "score", "window_start_s", "window_end_s", "stratum_windows", "stratum"):
            table[column] = pd.to_numeric(table[column])
    except ValueError as exc:
        raise VerdictsError(f"{path}: column {column} holds a value that is not a number ({exc})") from None
    return table


@dataclass(frozen=True)
class Estimate:
    precision: float
    low: float
    high: float
    effective_n: float


def wilson(p: float, n: float, z: float = Z95) -> tuple[float, float]:
    if n <= 0:
        return 0.0, 1.0
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def estimate(correct: np.ndarray, weights: np.ndarray) -> Estimate:
    """Weighted precision of reviewed windows (``correct``: 1 correct, 0 wrong)."""
    total = weights.sum()
    p = float((weights * correct).sum() / total)
    n_eff = float(total**2 / (weights**2).sum())
    return Estimate(p, *wilson(p, n_eff), n_eff)


def reviewed_weights(rows: pd.DataFrame) -> np.ndarray:
    """Each reviewed window's weight: its stratum's windows over the reviewed ones in it."""
    reviewed_in_stratum = rows.groupby("stratum")["stratum"].transform("size")
    return (rows["stratum_windows"] / reviewed_in_stratum).to_numpy(dtype=float)


def precision_table(verdicts: pd.DataFrame, target: float) -> pd.DataFrame:
    """One row per species: verdict counts, precision with its interval, and the
    threshold reaching ``target`` (NaN when no reviewed score reaches it)."""
    rows = []
    for species, group in verdicts.groupby("species", sort=True):
        counts = group["verdict"].value_counts()
        reviewed = group[group["verdict"].isin(["correct", "wrong"])]
        row = {"species": species, "correct": int(counts.get("correct", 0)), "wrong": int(counts.get("wrong", 0)),
               "unsure": int(counts.get("unsure", 0)), "not_reviewed": int(counts.get("", 0)),
               "detections": int(group.drop_duplicates("stratum")["stratum_windows"].sum())}
        if len(reviewed):
            correct = (reviewed["verdict"] == "correct").to_numpy(dtype=float)
            weights = reviewed_weights(reviewed)
            overall = estimate(correct, weights)
            row |= {"precision": overall.precision, "low": overall.low, "high": overall.high,
                    "effective_n": overall.effective_n,
                    "strata_reviewed": f"{reviewed['stratum'].nunique()}/{group['stratum'].nunique()}"}
            row |= _threshold(reviewed["score"].to_numpy(dtype=float), correct, weights, target)
        rows.append(row)
    columns = ["species", "correct", "wrong", "unsure", "not_reviewed", "detections", "strata_reviewed", "precision",
               "low", "high", "effective_n", "threshold", "precision_at_threshold", "low_at_threshold",
               "high_at_threshold", "reviewed_at_threshold"]
    return pd.DataFrame(rows).reindex(columns=columns)


def _threshold(scores: np.ndarray, correct: np.ndarray, weights: np.ndarray, target: float) -> dict:
    for t in np.unique(scores):  # ascending: the lowest threshold that reaches the target
        above = scores >= t
        at = estimate(correct[above], weights[above])
        if at.precision >= target:
            return {"threshold": float(t), "precision_at_threshold": at.precision, "low_at_threshold": at.low,
                    "high_at_threshold": at.high, "reviewed_at_threshold": int(above.sum())}
    return {"threshold": np.nan}


def write_thresholds(table: pd.DataFrame, path: str | Path, target: float, source: str) -> None:
    """The thresholds as JSON for ``report``/``export --thresholds`` (a species whose
    reviewed scores never reach the target gets null: none of its detections pass)."""
    species = {}
    for row in table.itertuples(index=False):
        if pd.isna(row.precision):
            continue  # nothing reviewed: no threshold, its detections are left as they are
        species[row.species] = {
            "threshold": None if pd.isna(row.threshold) else float(row.threshold),  # unrounded: the window at it stays
            "precision": round(float(row.precision), 4), "interval": [round(row.low, 4), round(row.high, 4)],
            "correct": int(row.correct), "wrong": int(row.wrong), "unsure": int(row.unsure),
        }
    document = {"format": THRESHOLDS_FORMAT, "target_precision": target, "interval": INTERVAL,
                "species": species, "provenance": provenance(verdicts=source)}
    Path(path).write_text(json.dumps(document, indent=2))


def read_thresholds(path: str | Path) -> dict[str, float | None]:
    """Species -> score threshold (None: no score reached the target precision)."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VerdictsError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(document, dict) or document.get("format") != THRESHOLDS_FORMAT:
        raise VerdictsError(f"{path}: not a thresholds file written by fieldmon review-summary --out")
    thresholds = {}
    for species, entry in (document.get("species") or {}).items():
        value = entry.get("threshold") if isinstance(entry, dict) else "missing"
        if value is not None and (not isinstance(value, (int, float)) or not 0 <= value <= 1):
            raise VerdictsError(f"{path}: species {species!r} has no threshold between 0 and 1 ({value!r})")
        thresholds[species] = value
    return thresholds
