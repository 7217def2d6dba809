"""``fieldmon train --add-verified``: reviewed windows as training clips.

A window marked correct becomes a clip of its species; one marked wrong with the right
species named becomes a clip of that species. Both are cut from the original
recording (the window only, no context) and join the train split: validation keeps
to the curated clips, so that the model's scores stay comparable with and without
review. Windows marked wrong without a species, and windows of a species the training
clips do not have, are sounds the new model must call unknown: they are cut too, as
``rejects``, on which the open-set threshold is calibrated
(``fieldmon.train.classifier.threshold_for_rejects``). Everything is counted in the
model's ``training.from_review``. Unsure and unmarked windows are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf

from fieldmon.audio import AudioReadError
from fieldmon.outputs.export import cut_audio
from fieldmon.outputs.tables import species_key
from fieldmon.outputs.verdicts import read_verdicts
from fieldmon.train.dataset import Clip, ClipSet

VERIFIED_DIR = "verified_clips"
REJECTS_DIR = "_to_reject"  # beside the species folders; a leading "_" keeps it apart from species names


@dataclass
class Verified:
    clips: ClipSet
    rejects: list[Path] = field(default_factory=list)  # windows the model must call unknown
    counts: dict = field(default_factory=dict)  # what happened to the verdicts, for model.json
    notes: list[str] = field(default_factory=list)


def add_verified(clips: ClipSet, verdicts_path: str | Path, out_dir: str | Path) -> Verified:
    """``clips`` (split already assigned) plus the verified windows of ``verdicts_path``
    as train clips, cut into ``out_dir/<species>/``."""
    out_dir = Path(out_dir)
    table = read_verdicts(verdicts_path)
    by_key = {species_key(name): name for name in clips.class_names}
    counts = {"verdicts": str(verdicts_path), "correct": 0, "relabelled": 0, "wrong_without_species": 0,
              "species_not_trained": 0, "unreadable": 0, "unsure_or_unmarked": 0}
    notes, added, rejects = [], [], []
    for row in table.itertuples(index=False):
        if row.verdict == "correct":
            named, kind = row.species, "correct"
        elif row.verdict == "wrong" and row.correct_species:
            named, kind = row.correct_species, "relabelled"
        elif row.verdict == "wrong":
            named, kind = None, "wrong_without_species"
        else:
            counts["unsure_or_unmarked"] += 1
            continue
        label = by_key.get(species_key(named)) if named else None
        if named and label is None:
            kind = "species_not_trained"
            notes.append(f"window {row.item} ({row.path} at {row.window_start_s:g} s) is {named!r}, which the "
                         "training clips do not have: an example to reject, not to train on")
        try:
            samples, sr = cut_audio(Path(row.recording), row.window_start_s, row.window_end_s)
        except AudioReadError as exc:
            counts["unreadable"] += 1
            notes.append(f"{row.recording}: cannot read the audio ({exc.problem}); window {row.item} not trained on")
            continue
        if not len(samples):
            counts["unreadable"] += 1
            notes.append(f"{row.recording}: no audio at {row.window_start_s:g} s; window {row.item} not trained on")
            continue
        path = out_dir / (label or REJECTS_DIR) / f"review-{row.review_id}-{row.item:04d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, samples, sr, subtype="FLOAT")
        if label is None:
            rejects.append(path)
        else:
            added.append(Clip(path, label, "train", len(samples) / sr, sr))
        counts[kind] += 1
    counts["clips_added"] = len(added)
    counts["to_reject"] = len(rejects)
    return Verified(ClipSet(clips.clips + added, clips.source, clips.warnings), rejects, counts, notes)
