from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import tone
from fieldmon.train.dataset import DatasetError, assign_splits, load_clips


def write_clip(path: Path, seconds: float = 1.0, sr: int = 22050, channels: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    y = tone(500, seconds, sr)
    sf.write(path, np.stack([y] * channels, axis=1) if channels > 1 else y, sr)
    return path


def species_folder(root: Path, counts: dict[str, int]) -> Path:
    for name, n in counts.items():
        for i in range(n):
            write_clip(root / name / f"{name}_{i}.wav")
    return root


def test_folder_discovery_and_summary(tmp_path):
    root = species_folder(tmp_path / "clips", {"b_species": 3, "a_species": 4})
    write_clip(root / "a_species" / "stereo.flac", seconds=2.0, channels=2)
    (root / "a_species" / ".hidden.wav").write_bytes(b"")
    (root / "a_species" / "notes.txt").write_text("not audio")
    clips = load_clips(root)
    assert clips.class_names == ["a_species", "b_species"]
    summary = {name: (n, round(minutes * 60, 3)) for name, n, minutes in clips.summary()}
    assert summary == {"a_species": (5, 6.0), "b_species": (3, 3.0)}
    assert len(clips.warnings) == 1 and "a_species: 1 file(s) whose names start with '.' are not used (.hidden.wav)" in clips.warnings[0]
    assert any(".hidden.wav" in w for w in assign_splits(clips, seed=0).warnings)  # still there when training prints them


def test_split_is_stratified_by_file_and_seeded(tmp_path):
    clips = load_clips(species_folder(tmp_path, {"x": 20, "y": 7, "z": 3}))
    split = assign_splits(clips, seed=1)
    per = Counter((c.label, c.split) for c in split.clips)
    assert (per["x", "train"], per["x", "validation"], per["x", "test"]) == (10, 3, 7)
    # species with fewer than 10 clips get no test split (they need their clips to learn from)
    assert (per["y", "train"], per["y", "validation"], per["y", "test"]) == (5, 2, 0)
    assert (per["z", "train"], per["z", "validation"], per["z", "test"]) == (2, 1, 0)
    paths = [c.path for c in split.clips]
    assert len(paths) == len(set(paths)) == 30  # each file in exactly one split
    assert [c.split for c in assign_splits(clips, seed=1).clips] == [c.split for c in split.clips]
    assert [c.split for c in assign_splits(clips, seed=2).clips] != [c.split for c in split.clips]


def test_few_clips_keep_most_for_training_and_warn(tmp_path):
    clips = assign_splits(load_clips(species_folder(tmp_path, {"x": 5, "y": 8, "rare": 2})), seed=0)
    per = Counter((c.label, c.split) for c in clips.clips)
    assert (per["x", "train"], per["x", "validation"], per["x", "test"]) == (4, 1, 0)
    assert (per["y", "train"], per["y", "validation"], per["y", "test"]) == (6, 2, 0)
    assert (per["rare", "train"], per["rare", "validation"]) == (1, 1)
    assert len(clips.warnings) == 1 and "'rare' has only 2 clips" in clips.warnings[0]


def test_one_clip_is_too_few(tmp_path):
    clips = load_clips(species_folder(tmp_path / "one", {"x": 5, "lonely": 1}))
    with pytest.raises(DatasetError, match="'lonely' has 1 clip; it needs at least 2"):
        assign_splits(clips, seed=0)


def test_manifest_with_split_and_every_problem_listed(tmp_path):
    good = write_clip(tmp_path / "a.wav")
    write_clip(tmp_path / "b.wav")
    (tmp_path / "broken.wav").write_bytes(b"RIFF0000WAVEjunk")
    (tmp_path / "empty.wav").write_bytes(b"")
    rows = [("a.wav", "cricket", "train"), ("b.wav", "cricket", "validation"), ("missing.wav", "cricket", "train"),
            ("broken.wav", "katydid", "train"), ("empty.wav", "katydid", "test"), ("a.wav", "", "train"),
            ("b.wav", "katydid", "holdout")]
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        csv.writer(fh).writerows([("path", "label", "split"), *rows])
    with pytest.raises(DatasetError) as err:
        load_clips(manifest)
    text = str(err.value)
    for expected in ("missing.wav: file not found", "broken.wav: not readable audio", "empty.wav",
                     "empty label", "'holdout' is not one of"):
        assert expected in text
    assert len(err.value.problems) == 5

    with open(manifest, "w", newline="") as fh:
        csv.writer(fh).writerows([("path", "species", "split"), ("a.wav", "cricket", "train"),
                                  (str(good.with_name("b.wav")), "cricket", "validation")])
    clips = assign_splits(load_clips(manifest), seed=0)
    assert [(c.path.name, c.split) for c in clips.clips] == [("a.wav", "train"), ("b.wav", "validation")]


def test_empty_inputs(tmp_path):
    with pytest.raises(DatasetError, match="one sub-folder per species, found none"):
        load_clips(tmp_path)
    (tmp_path / "lonely").mkdir()
    with pytest.raises(DatasetError, match="holds no audio files"):
        load_clips(tmp_path)
    with pytest.raises(DatasetError, match="no such file"):
        load_clips(tmp_path / "nope")


def test_unknown_labels_for_evaluation(tmp_path):
    root = species_folder(tmp_path, {"x": 1, "y": 1})
    with pytest.raises(DatasetError, match="labels the model does not know: y"):
        load_clips(root, known_labels=["x"])


def test_silent_clips_are_left_out_and_named(tmp_path):
    from fieldmon.features import FeatureSettings
    from fieldmon.train.cache import FeatureCache, build_window_set

    root = species_folder(tmp_path / "clips", {"x": 2})
    sf.write(root / "x" / "silent.wav", np.zeros(44100, np.float32), 44100)
    sf.write(root / "x" / "also_silent.wav", np.zeros(22050, np.float32), 22050)
    clips = load_clips(root)
    for attempt in ("computed", "cached"):  # the cache must not let a silent clip back in
        cache = FeatureCache(tmp_path / "cache", FeatureSettings(), 2.0)
        windows = build_window_set(clips.clips, clips.class_names, cache)
        assert len(windows.left_out) == 2, attempt
        assert all("silent" in p for p in windows.left_out)
        assert {p.split(":")[0].rsplit("/", 1)[-1] for p in windows.left_out} == {"silent.wav", "also_silent.wav"}
        silent = [i for i, c in enumerate(clips.clips) if "silent" in c.path.name]
        assert windows.clip_count() == 2 and not np.isin(windows.clip_index, silent).any()


def test_only_silent_clips_is_an_error(tmp_path):
    from fieldmon.features import FeatureSettings
    from fieldmon.train.cache import FeatureCache, build_window_set

    root = tmp_path / "clips"
    (root / "x").mkdir(parents=True)
    sf.write(root / "x" / "silent.wav", np.zeros(44100, np.float32), 44100)
    clips = load_clips(root)
    with pytest.raises(DatasetError, match="silent.wav: the clip is silent"):
        build_window_set(clips.clips, clips.class_names, FeatureCache(tmp_path / "cache", FeatureSettings(), 2.0))
