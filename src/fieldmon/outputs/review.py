"""``fieldmon review``: a sample of detections to listen to and mark, as one offline
HTML page with its clips and spectrograms beside it.

The sample is stratified by score, per species: a species' detected windows are split
into ``strata`` bins of equal width over that species' score range (a bin holds the
scores from its low edge up to its high edge, which belongs to the next bin; the top
bin includes the highest score), and the windows to review are spread evenly over the
bins (a bin with fewer windows gives them all, and its share goes to the others). High- and low-scoring detections are thus both
reviewed, which a threshold needs, and every reviewed window carries its bin's size
(``stratum_windows``) and design weight (windows in the bin / windows sampled from
it), so that ``fieldmon review-summary`` can weight precision back to all detections.
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import soundfile as sf

from fieldmon.audio import AudioReadError
from fieldmon.outputs.export import _spectrogram_png, cut_audio, detected
from fieldmon.outputs.tables import ScanOutput
from fieldmon.provenance import provenance

MEDIA_DIR = "media"
PAGE_NAME = "index.html"
SAMPLE_NAME = "sample.csv"
# One row per sampled window in the verdicts CSV the page saves, in this order; the
# page adds nothing but the verdict columns, so the CSV alone is enough for
# review-summary and train --add-verified.
SAMPLE_COLUMNS = ["review_id", "item", "species", "score", "path", "window_start_s", "window_end_s", "time",
                  "stratum", "stratum_low", "stratum_high", "stratum_windows", "stratum_sampled", "weight",
                  "recording", "model_id"]
VERDICT_COLUMNS = SAMPLE_COLUMNS + ["verdict", "correct_species"]
VERDICTS = ("correct", "wrong", "unsure")


@dataclass(frozen=True)
class ReviewSettings:
    per_species: int = 20
    strata: int = 4
    context_s: float = 3.0  # seconds of audio before and after the window in each clip
    seed: int = 0


@dataclass
class ReviewResult:
    page: Path
    sample: pd.DataFrame  # the windows written (those whose audio could be read)
    skipped: list[str] = field(default_factory=list)  # one line per window left out, naming its file


def stratified_sample(detections: pd.DataFrame, settings: ReviewSettings) -> pd.DataFrame:
    """Up to ``per_species`` windows of each species, spread over score strata, with
    their stratum, its bounds and size, and the design weight."""
    picked = []
    for species, group in detections.groupby("label", sort=True):
        scores = group["score"].to_numpy(dtype=float)
        low, high = float(scores.min()), float(scores.max())
        edges = np.linspace(low, high, settings.strata + 1)
        stratum = np.clip(np.searchsorted(edges[1:-1], scores, side="right"), 0, settings.strata - 1)
        sizes = np.bincount(stratum, minlength=settings.strata)
        take = _allocate(sizes, settings.per_species)
        # one generator per species, so that adding a species to the scan does not
        # change which windows of the others are drawn
        rng = np.random.default_rng([settings.seed, zlib.crc32(species.encode())])
        for s in np.flatnonzero(take):
            members = group[stratum == s]
            chosen = members.iloc[np.sort(rng.choice(len(members), size=take[s], replace=False))]
            picked.append(chosen.assign(stratum=int(s), stratum_low=float(edges[s]), stratum_high=float(edges[s + 1]),
                                        stratum_windows=int(sizes[s])))
    if not picked:
        return detections.iloc[0:0].assign(stratum=[], stratum_low=[], stratum_high=[], stratum_windows=[])
    return pd.concat(picked).sort_values(["label", "score"], ascending=[True, False]).reset_index(drop=True)


def _allocate(sizes: np.ndarray, budget: int) -> np.ndarray:
    """Equal allocation over the non-empty strata, capped at each stratum's size; what
    a small stratum cannot take goes to the others, the highest-scoring first."""
    take = np.zeros_like(sizes)
    left = min(budget, int(sizes.sum()))
    while left:
        for s in range(len(sizes) - 1, -1, -1):
            if left and take[s] < sizes[s]:
                take[s] += 1
                left -= 1
    return take


def write_review(output: ScanOutput, audio_root: str | Path, out_dir: str | Path, settings: ReviewSettings,
                 warn: Callable[[str], None] = print) -> ReviewResult:
    """Sample, cut a clip (window plus context) and a spectrogram of each sampled window
    into ``out_dir/media``, and write ``index.html``, ``sample.csv`` and ``review.json``."""
    audio_root, out_dir = Path(audio_root), Path(out_dir)
    media = out_dir / MEDIA_DIR
    media.mkdir(parents=True, exist_ok=True)
    windows = detected(output)
    sample = stratified_sample(windows, settings)
    review_id = _review_id(output, settings, sample)
    time_column = output.time_column
    rows, items, skipped = [], [], []
    for number, row in enumerate(sample.itertuples(index=False), start=1):
        source = audio_root / row.path
        start = max(0.0, row.window_start_s - settings.context_s)
        try:
            samples, sr = cut_audio(source, start, row.window_end_s + settings.context_s)
        except AudioReadError as exc:
            skipped.append(f"{source}: cannot read the audio ({exc.problem}); window at {row.window_start_s:g} s "
                           f"({row.label}) left out")
            warn(f"warning: {skipped[-1]}")
            continue
        if not len(samples):
            skipped.append(f"{source}: no audio at {row.window_start_s:g} s (the file is shorter than the scan "
                           f"saw); window ({row.label}) left out")
            warn(f"warning: {skipped[-1]}")
            continue
        stem = f"{number:04d}_{_safe_name(row.label)}"
        clip, png = media / f"{stem}.flac", media / f"{stem}.png"
        sf.write(clip, samples, sr, subtype="PCM_16")
        offset = row.window_start_s - start
        _spectrogram_png(samples.mean(axis=1), sr, png,
                         f"{row.label}  score {row.score:.2f}  {row.path} @ {row.window_start_s:g} s",
                         colorbar=True, marks=(offset, offset + row.window_end_s - row.window_start_s))
        when = getattr(row, time_column)
        record = {
            "review_id": review_id, "item": number, "species": row.label, "score": float(row.score),
            "path": row.path, "window_start_s": row.window_start_s, "window_end_s": row.window_end_s,
            "time": "" if pd.isna(when) else str(when), "stratum": row.stratum, "stratum_low": row.stratum_low,
            "stratum_high": row.stratum_high, "stratum_windows": row.stratum_windows,
            "recording": str(source.resolve()), "model_id": row.model_id,
        }
        rows.append(record)
        items.append({**record, "clip": f"{MEDIA_DIR}/{clip.name}", "spectrogram": f"{MEDIA_DIR}/{png.name}",
                      "window_in_clip_s": round(offset, 3)})
    table = pd.DataFrame(rows, columns=[c for c in SAMPLE_COLUMNS if c not in ("stratum_sampled", "weight")])
    # the design weight counts the windows actually written, so that a skipped file
    # does not leave its stratum under-weighted
    sampled = table.groupby(["species", "stratum"])["item"].transform("size") if len(table) else []
    table["stratum_sampled"] = sampled
    table["weight"] = (table["stratum_windows"] / table["stratum_sampled"]).round(6) if len(table) else []
    table = table[SAMPLE_COLUMNS]
    for item, (_, row) in zip(items, table.iterrows(), strict=True):
        item["stratum_sampled"], item["weight"] = int(row.stratum_sampled), float(row.weight)
    table.to_csv(out_dir / SAMPLE_NAME, index=False)
    meta = provenance(
        review_id=review_id, model_id=output.metadata.get("model_id"), scan_settings=output.metadata.get("settings"),
        audio_root=str(audio_root), sampling={"per_species": settings.per_species, "strata": settings.strata,
                                              "context_s": settings.context_s, "seed": settings.seed,
                                              "method": "equal-width score strata per species, equal allocation"},
        windows_detected=int(len(windows)), windows_sampled=int(len(sample)), windows_written=int(len(table)),
        skipped=skipped,
    )
    (out_dir / "review.json").write_text(json.dumps(meta, indent=2, default=str))
    page = out_dir / PAGE_NAME
    page.write_text(_page(items, meta, _species_choices(output)), encoding="utf-8")
    return ReviewResult(page, table, skipped)


def _review_id(output: ScanOutput, settings: ReviewSettings, sample: pd.DataFrame) -> str:
    """Names this sample, so that the browser keeps the verdicts of each review page
    apart and a CSV from another review is recognised as such."""
    key = json.dumps([output.metadata.get("model_id"), settings.__dict__,
                      sample[["path", "window_start_s", "label"]].astype(str).values.tolist()])
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _species_choices(output: ScanOutput) -> list[str]:
    """Species a reviewer can name as the right one: every species the scan's model
    offered for any window (its top labels)."""
    d = output.detections
    names = set(d["predicted"].dropna()) if "predicted" in d else set()
    if "top_labels" in d:
        for labels in d["top_labels"].dropna():
            names.update(labels)
    return sorted(names)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name)[:60] or "species"


def _page(items: list[dict], meta: dict, species: list[str]) -> str:
    template = resources.files("fieldmon.outputs").joinpath("review_page.html").read_text(encoding="utf-8")
    data = {"review_id": meta["review_id"], "columns": VERDICT_COLUMNS, "items": items, "species": species,
            "facts": {"model": meta.get("model_id"), "fieldmon": meta["fieldmon_version"],
                      "created": meta["created"], "sampling": meta["sampling"],
                      "windows_detected": meta["windows_detected"]}}
    # "</" inside a script element would end it early; JSON allows the escaped form
    text = json.dumps(data, default=str).replace("</", "<\\/")
    return template.replace("/*REVIEW_DATA*/", text)
