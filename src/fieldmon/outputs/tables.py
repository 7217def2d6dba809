"""Reading a scan's output back, with the filters reports and exports share."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from fieldmon.model.metadata import UNKNOWN
from fieldmon.outputs.store import META_DIR, files_table_path


@dataclass(frozen=True)
class Filters:
    min_score: float = 0.0
    species: tuple[str, ...] = ()
    sites: tuple[str, ...] = ()
    start: pd.Timestamp | None = None  # inclusive, on the window's (local, else UTC) date
    end: pd.Timestamp | None = None  # inclusive
    # (species, lowest score kept) from review-summary; None: no score is kept
    thresholds: tuple[tuple[str, float | None], ...] = ()
    thresholds_file: str = ""

    def describe(self) -> str:
        parts = []
        if self.min_score:
            parts.append(f"score >= {self.min_score:g}")
        if self.species:
            parts.append("species " + ", ".join(self.species))
        if self.sites:
            parts.append("sites " + ", ".join(self.sites))
        if self.start is not None or self.end is not None:
            parts.append(f"dates {self.start.date() if self.start is not None else '...'} to "
                         f"{self.end.date() if self.end is not None else '...'}")
        if self.thresholds:
            parts.append(f"review thresholds of {len(self.thresholds)} species from {self.thresholds_file or '?'}")
        return "; ".join(parts) or "none"


@dataclass
class ScanOutput:
    detections: pd.DataFrame
    files: pd.DataFrame
    metadata: dict  # fieldmon version, model id, settings, scanned root

    @property
    def time_column(self) -> str:
        """Local wall-clock time where the recorders give it, else UTC."""
        return "local_time" if self.detections["local_time"].notna().any() else "start_time"


def species_key(name: str) -> str:
    """How a species name is matched: without spaces, underscores or case ('Kikihia muta'
    finds 'Kikihiamuta')."""
    return "".join(name.replace("_", " ").split()).lower()


def read_scan(path: str | Path) -> ScanOutput:
    path = Path(path)
    if not path.is_dir() or not list(path.glob("part-*.parquet")):
        raise FileNotFoundError(f"{path}: not a fieldmon detections output (no part-*.parquet inside)")
    detections = pd.read_parquet(path)
    if "score" not in detections.columns or "label" not in detections.columns:
        hint = " (it is the per-file table; pass the detections output beside it)" if "status" in detections else ""
        raise ValueError(f"{path}: not a fieldmon detections table{hint}")
    files_path = files_table_path(path)
    files = _read_parts(files_path) if files_path.is_dir() else pd.DataFrame()
    meta_file = path / META_DIR / "scan.json"
    if meta_file.is_file():
        metadata = json.loads(meta_file.read_text())
    else:  # e.g. a copy without the _fieldmon folder: the Parquet metadata carries the same
        schema_meta = pq.read_schema(next(path.glob("part-*.parquet"))).metadata or {}
        metadata = json.loads(schema_meta.get(b"fieldmon", b"{}"))
    return ScanOutput(detections, files, metadata)


def _read_parts(folder: Path) -> pd.DataFrame:
    """All parts of a table, with every column any part has: an output that a newer
    fieldmon went on scanning holds parts with columns the older parts lack (null there),
    where reading the folder as one dataset would keep only the first part's columns."""
    parts = sorted(folder.glob("part-*.parquet"))
    if not parts:
        return pd.DataFrame()
    schema = pa.unify_schemas([pq.read_schema(part) for part in parts])
    return ds.dataset(parts, schema=schema, format="parquet").to_table().to_pandas()


def apply_filters(output: ScanOutput, filters: Filters) -> ScanOutput:
    d = output.detections
    keep = d["score"] >= filters.min_score
    if filters.species:
        wanted = {species_key(name) for name in filters.species}
        keep &= d["label"].map(species_key).isin(wanted) | (d["label"] == UNKNOWN)
    if filters.sites:
        keep &= d["site"].isin(filters.sites)
    for name, threshold in filters.thresholds:
        of_species = d["label"].map(species_key) == species_key(name)
        keep &= ~of_species | (d["score"] >= threshold if threshold is not None else False)
    when = naive_times(d[output.time_column])
    if filters.start is not None:
        keep &= when >= filters.start.normalize()
    if filters.end is not None:
        keep &= when < filters.end.normalize() + pd.Timedelta(days=1)
    files = output.files
    if filters.sites and len(files):
        files = files[files["site"].isin(filters.sites)]
    return ScanOutput(d[keep].reset_index(drop=True), files, output.metadata)


def unmatched_filters(output: ScanOutput, filters: Filters) -> list[str]:
    """Filter values that match nothing in the scan, said in words."""
    problems = []
    labels = {species_key(label) for label in output.detections["label"].unique()}
    for name in filters.species:
        if species_key(name) not in labels:
            problems.append(f"--species {name!r} matches no species in this scan")
    sites = set(output.detections["site"].dropna().unique())
    problems += [f"--site {site!r} matches no site in this scan" for site in filters.sites if site not in sites]
    return problems


def naive_times(times: pd.Series) -> pd.Series:
    """Timestamps without zone (UTC ones converted), for grouping by date and hour."""
    return times.dt.tz_convert(None) if getattr(times.dt, "tz", None) is not None else times
