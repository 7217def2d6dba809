"""Labelled clips for training and evaluation: discovery, up-front checks, and the split.

CLIPS is either a folder with one sub-folder per species, or a CSV manifest with
``path,label[,split]`` (``species`` is accepted for ``label``; relative paths are
relative to the CSV). Every problem found is reported at once, before any long work.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from fieldmon.audio import AUDIO_EXTENSIONS, AudioReadError, is_audio_file, open_sound
from fieldmon.wav_header import header_note

SPLITS = ("train", "validation", "test")
PAPER_SPLIT = (0.50, 0.15, 0.35)
# Below this many clips a species gets no test split: one clip (two from 7 clips on)
# checks the model, the rest train it. A 35 % test split of 5 clips would leave 2 to
# learn from, and a score on 1-2 test files says little anyway.
FEW_CLIPS = 10
# Fewer clips than this per species still train, with a warning that the validation
# estimate rests on a single recording.
RELIABLE_CLIPS = 5


class DatasetError(Exception):
    """Unusable training input; the message lists every problem found."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("cannot use these clips:\n  - " + "\n  - ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Clip:
    path: Path
    label: str
    split: str | None = None
    seconds: float = 0.0
    sample_rate: int = 0  # as recorded; 0: not read yet


@dataclass
class ClipSet:
    clips: list[Clip]
    source: Path
    warnings: list[str] = field(default_factory=list)

    @property
    def class_names(self) -> list[str]:
        return sorted({c.label for c in self.clips})

    def in_split(self, split: str) -> list[Clip]:
        return [c for c in self.clips if c.split == split]

    def summary(self) -> list[tuple[str, int, float]]:
        """(species, clips, minutes) per species."""
        count: Counter[str] = Counter()
        seconds: Counter[str] = Counter()
        for clip in self.clips:
            count[clip.label] += 1
            seconds[clip.label] += clip.seconds
        return [(name, count[name], seconds[name] / 60) for name in self.class_names]

    def manifest_hash(self) -> str:
        """Hash of what was trained on (paths, labels, splits), for provenance."""
        rows = sorted((str(c.path), c.label, c.split or "") for c in self.clips)
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]

    def split_table(self) -> list[dict]:
        """Rows of a manifest (absolute paths) that ``fieldmon evaluate MODEL MODEL/split.csv --split test`` reads."""
        return [{"path": str(c.path.resolve()), "label": c.label, "split": c.split} for c in self.clips]


def load_clips(source: str | Path, known_labels: list[str] | None = None) -> ClipSet:
    """Read a clip folder or manifest, checking every file before returning.

    ``known_labels``: when given (evaluation), labels outside it are an error.
    """
    source = Path(source)
    problems: list[str] = []
    if not source.exists():
        raise DatasetError([f"{source}: no such file or folder"])
    warnings: list[str] = []
    clips = _from_manifest(source, problems) if source.is_file() else _from_folder(source, problems, warnings)
    checked = []
    for clip in clips:
        if not clip.path.is_file():
            problems.append(f"{clip.path}: file not found")
            continue
        try:
            with open_sound(clip.path) as sound:
                frames, rate = sound.frames, sound.samplerate
        except AudioReadError as exc:
            problems.append(f"{clip.path}: not readable audio ({exc.problem})")
            continue
        if frames == 0:
            problems.append(f"{clip.path}: holds no audio samples")
            continue
        note = header_note(clip.path)
        if note:
            warnings.append(f"{clip.path}: {note}")
        checked.append(Clip(clip.path, clip.label, clip.split, frames / rate, rate))
    if known_labels is not None:
        unknown = sorted({c.label for c in checked} - set(known_labels))
        if unknown:
            problems.append(f"labels the model does not know: {', '.join(unknown)}")
    if not checked and not problems:
        problems.append(f"{source}: no audio clips found")
    if problems:
        raise DatasetError(problems)
    return ClipSet(checked, source, warnings)


def _from_folder(folder: Path, problems: list[str], warnings: list[str]) -> list[Clip]:
    clips = []
    species_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not species_dirs:
        problems.append(f"{folder}: expected one sub-folder per species, found none")
    for species_dir in species_dirs:
        audio = sorted(p for p in species_dir.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
        files = [p for p in audio if is_audio_file(p)]
        if not files:
            problems.append(f"{species_dir}: species folder holds no audio files")
        clips += [Clip(path, species_dir.name) for path in files]
        # Hidden like the system's own files (._x.wav), but InsectSet32 has clips named ".flac".
        hidden = [p.name for p in audio if not is_audio_file(p)]
        if hidden:
            warnings.append(f"{species_dir}: {len(hidden)} file(s) whose names start with '.' are not used "
                            f"({', '.join(hidden[:3])}{', ...' if len(hidden) > 3 else ''}); rename them to train on them")
    return clips


def _from_manifest(manifest: Path, problems: list[str]) -> list[Clip]:
    try:
        with open(manifest, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (UnicodeDecodeError, csv.Error) as exc:
        problems.append(f"{manifest}: not a readable CSV ({exc})")
        return []
    if not rows:
        problems.append(f"{manifest}: the manifest has no rows")
        return []
    label_key = "label" if "label" in rows[0] else "species" if "species" in rows[0] else None
    if "path" not in rows[0] or label_key is None:
        problems.append(f"{manifest}: needs columns path and label (found {', '.join(rows[0])})")
        return []
    clips = []
    for line, row in enumerate(rows, start=2):
        split = (row.get("split") or "").strip() or None
        if split is not None and split not in SPLITS:
            problems.append(f"{manifest}:{line}: split {split!r} is not one of {', '.join(SPLITS)}")
            continue
        label = (row[label_key] or "").strip()
        if not label:
            problems.append(f"{manifest}:{line}: empty label")
            continue
        path = Path(row["path"])
        clips.append(Clip(path if path.is_absolute() else manifest.parent / path, label, split))
    return clips


def assign_splits(clips: ClipSet, seed: int, fractions: tuple[float, float, float] = PAPER_SPLIT) -> ClipSet:
    """Stratified split by file (never by window, so windows of one recording never
    straddle two splits). A manifest's own split is kept as given.

    Species with at least FEW_CLIPS clips are split by ``fractions`` (the paper's
    50/15/35 %); species with fewer give one validation clip (two from 7 on) and no
    test clip, and below RELIABLE_CLIPS a warning. One clip is not enough: nothing
    would be left to check the model with."""
    given = [c.split is not None for c in clips.clips]
    if all(given):
        _check_given_split(clips)
        return clips
    if any(given):
        raise DatasetError(["the manifest gives a split for some clips but not for others"])
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[Clip]] = defaultdict(list)
    for clip in clips.clips:
        by_label[clip.label].append(clip)
    problems, warnings, out = [], [], []
    for label in sorted(by_label):
        files = by_label[label]
        n = len(files)
        if n < 2:
            problems.append(f"species {label!r} has 1 clip; it needs at least 2: one to train on, one to check with")
            continue
        if n < RELIABLE_CLIPS:
            warnings.append(f"species {label!r} has only {n} clips: its validation score rests on one recording "
                            f"(at least {RELIABLE_CLIPS} per species give a usable estimate)")
        order = rng.permutation(n)
        if n >= FEW_CLIPS:
            n_val = max(1, round(fractions[1] * n))
            n_train = max(1, min(n - n_val - 1, round(fractions[0] * n)))
        else:
            n_val = 1 if n < 7 else 2
            n_train = n - n_val
        for rank, i in enumerate(order):
            split = "train" if rank < n_train else "validation" if rank < n_train + n_val else "test"
            out.append(replace(files[i], split=split))
    if problems:
        raise DatasetError(problems)
    return ClipSet(sorted(out, key=lambda c: (c.label, str(c.path))), clips.source, clips.warnings + warnings)


def _check_given_split(clips: ClipSet) -> None:
    problems = []
    for label in clips.class_names:
        if not any(c.label == label and c.split == "train" for c in clips.clips):
            problems.append(f"species {label!r} has no clip in the train split")
    if problems:
        raise DatasetError(problems)

