"""Turning model outputs into the rows of the detections and per-file tables."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa

from fieldmon import __version__
from fieldmon.model.metadata import UNKNOWN
from fieldmon.recorder import RecorderInfo

def detection_schema(top_k: int, embedding_dim: int | None, metadata: dict) -> pa.Schema:
    fields = [
        pa.field("path", pa.string()),  # relative to the scanned root
        pa.field("site", pa.string()),
        pa.field("window_start_s", pa.float64()),
        pa.field("window_end_s", pa.float64()),
        pa.field("partial", pa.bool_()),  # ran past the end of the file; repeated to 2 s
        pa.field("start_time", pa.timestamp("ms", tz="UTC")),  # null when the zone is not known
        pa.field("local_time", pa.timestamp("ms")),  # recorder wall-clock time; null when unknown
        pa.field("label", pa.string()),  # a species, or "unknown" when rejected
        pa.field("score", pa.float32()),  # probability of the top species
        pa.field("open_set_score", pa.float32()),  # upper-tail probability; null without calibration
        pa.field("predicted", pa.string()),  # the top species even when rejected, to re-threshold later
        pa.field("top_labels", pa.list_(pa.string(), top_k)),
        pa.field("top_scores", pa.list_(pa.float32(), top_k)),
        pa.field("model_id", pa.string()),
    ]
    if embedding_dim:
        fields.append(pa.field("embedding", pa.list_(pa.float32(), embedding_dim)))
    return pa.schema(fields, metadata={"fieldmon": json.dumps(metadata)})


def file_schema(metadata: dict) -> pa.Schema:
    return pa.schema(
        [
            pa.field("path", pa.string()),
            pa.field("site", pa.string()),
            pa.field("size", pa.int64()),
            pa.field("mtime_ns", pa.int64()),
            pa.field("status", pa.string()),
            pa.field("error", pa.string()),
            pa.field("duration_s", pa.float64()),
            # of which no recording (digital silence, see fieldmon.audio); left out of the effort
            pa.field("silent_s", pa.float64()),
            pa.field("sample_rate", pa.int32()),
            pa.field("channels", pa.int32()),
            pa.field("recorder_start_utc", pa.timestamp("ms", tz="UTC")),
            pa.field("recorder_start_local", pa.timestamp("ms")),
            pa.field("time_source", pa.string()),
            pa.field("windows", pa.int64()),
            pa.field("model_id", pa.string()),
            pa.field("scanned_at", pa.timestamp("s", tz="UTC")),
        ],
        metadata={"fieldmon": json.dumps(metadata)},
    )


def output_metadata(model_id: str, settings: dict) -> dict:
    return {"fieldmon_version": __version__, "model_id": model_id, "settings": settings}


def window_rows(
    relative: str,
    info: RecorderInfo,
    starts: np.ndarray,
    partial: np.ndarray,
    probabilities: np.ndarray,
    open_set_scores: np.ndarray | None,
    threshold: float | None,
    class_names: list[str],
    sample_rate: int,
    window_seconds: float,
    top_k: int,
    model_id: str,
    embeddings: np.ndarray | None = None,
) -> dict[str, list | np.ndarray]:
    n = len(starts)
    offsets = starts / sample_rate
    names = np.asarray(class_names, dtype=object)
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
    top = order[:, 0]
    score = probabilities[np.arange(n), top].astype(np.float32)
    label = names[top].copy()
    if open_set_scores is not None and threshold is not None:
        label[open_set_scores < threshold] = UNKNOWN
    columns: dict[str, list | np.ndarray] = {
        "path": [relative] * n,
        "site": [info.site] * n,
        "window_start_s": offsets,
        "window_end_s": offsets + window_seconds,
        "partial": partial,
        "start_time": _times(info.utc_start, offsets),
        "local_time": _times(info.local_start, offsets),
        "label": label.tolist(),
        "score": score,
        "open_set_score": open_set_scores.astype(np.float32) if open_set_scores is not None else [None] * n,
        "predicted": names[top].tolist(),
        "top_labels": names[order].tolist(),
        "top_scores": np.take_along_axis(probabilities, order, axis=1).astype(np.float32).tolist(),
        "model_id": [model_id] * n,
    }
    if embeddings is not None:
        columns["embedding"] = embeddings.astype(np.float32).tolist()
    return columns


def _times(start: dt.datetime | None, offsets: np.ndarray) -> list:
    if start is None:
        return [None] * len(offsets)
    base = start.replace(tzinfo=None) if start.tzinfo is None else start.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return (np.datetime64(base, "ms") + np.round(offsets * 1000).astype("timedelta64[ms]")).tolist()


def concat_columns(parts: list[dict[str, list | np.ndarray]], schema: pa.Schema) -> pa.Table:
    arrays = []
    for field in schema:
        values = [v for part in parts for v in (part[field.name].tolist() if isinstance(part[field.name], np.ndarray)
                                                 else part[field.name])]
        arrays.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)
