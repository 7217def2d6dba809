"""Clips that hold the same recording are named: under two labels, in two splits, twice
in one split (fieldmon.train.same_recording)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fieldmon.evaluation.evaluate import evaluate
from fieldmon.features import FeatureSettings
from fieldmon.train.cache import FeatureCache, build_window_set
from fieldmon.train.dataset import load_clips
from fieldmon.train.same_recording import SAME_RECORDING, same_recordings

SR = 44100


def trill(seconds: float, seed: int, carrier: float = 5000.0) -> np.ndarray:
    """A steady pulsed song in noise; every seed its own recording of the same song."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SR)) / SR
    pulses = (np.sin(2 * np.pi * 30 * t + rng.uniform(0, 2 * np.pi)) > 0).astype(np.float32)
    return (0.3 * pulses * np.sin(2 * np.pi * carrier * t) + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


def write(path: Path, samples: np.ndarray, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples, SR, subtype=subtype)
    return path


def pairs(tmp_path: Path, manifest: str) -> list[tuple[str, str, str]]:
    (tmp_path / "manifest.csv").write_text(manifest)
    clips = load_clips(tmp_path / "manifest.csv")
    cache = tmp_path / "cache"
    train = build_window_set(clips.in_split("train"), clips.class_names, FeatureCache(cache, FeatureSettings(), 0.5))
    held_out = build_window_set([c for c in clips.clips if c.split != "train"], clips.class_names,
                                FeatureCache(cache, FeatureSettings(), 2.0))
    found = same_recordings([train, held_out])
    assert all(pair.similarity >= SAME_RECORDING for pair in found)
    return sorted((pair.first.path.name, pair.second.path.name, pair.problem()) for pair in found)


def test_copies_are_named_and_other_recordings_of_the_same_song_are_not(tmp_path):
    song = trill(5.0, seed=0)
    write(tmp_path / "a" / "one.wav", song)
    write(tmp_path / "b" / "one_copy.flac", song, subtype="PCM_24")  # re-encoded, under another label
    write(tmp_path / "a" / "one_again.wav", song, subtype="FLOAT")  # in the validation split
    for seed in (1, 2, 3):  # the same song, other recordings
        write(tmp_path / "a" / f"other{seed}.wav", trill(5.0, seed))
    write(tmp_path / "b" / "b1.wav", trill(5.0, seed=4, carrier=8000))
    write(tmp_path / "b" / "b2.wav", trill(5.0, seed=5, carrier=8000))
    found = pairs(tmp_path, "path,species,split\n"
                            "a/one.wav,a,train\n"
                            "a/other1.wav,a,train\n"
                            "a/other2.wav,a,validation\n"
                            "a/other3.wav,a,train\n"
                            "a/one_again.wav,a,validation\n"
                            "b/one_copy.flac,b,train\n"
                            "b/b1.wav,b,train\n"
                            "b/b2.wav,b,validation\n")
    problems = {frozenset((first, second)): problem for first, second, problem in found}
    assert set(problems) == {frozenset(pair) for pair in (("one.wav", "one_copy.flac"), ("one.wav", "one_again.wav"),
                                                          ("one_again.wav", "one_copy.flac"))}
    assert problems[frozenset(("one.wav", "one_copy.flac"))].endswith(
        "one.wav (a, train) and " + str(tmp_path / "b" / "one_copy.flac") + " (b, train) hold the same recording "
        "under two labels: at most one is right")
    assert problems[frozenset(("one.wav", "one_again.wav"))].endswith(
        "hold the same recording in two splits: the validation score counts a recording the model trained on or "
        "was selected on; keep each recording in one split")


def test_twice_in_one_split(tmp_path):
    song = trill(3.0, seed=0)
    write(tmp_path / "a" / "x.wav", song)
    write(tmp_path / "a" / "y.wav", song)
    write(tmp_path / "a" / "v.wav", trill(3.0, seed=1))
    write(tmp_path / "b" / "z.wav", trill(3.0, seed=2, carrier=8000))
    found = pairs(tmp_path, "path,species,split\na/x.wav,a,train\na/y.wav,a,train\na/v.wav,a,validation\n"
                            "b/z.wav,b,train\n")
    assert [(first, second) for first, second, _ in found] == [("x.wav", "y.wav")]
    assert found[0][2].endswith("twice in one split: it counts double")


@pytest.mark.skipif(not (Path(__file__).parents[2] / "shared" / "data" / "insectset32").is_dir(),
                    reason="needs ../shared/data/insectset32 (the project's shared data), absent in a user's clone")
def test_insectset32_holds_one_recording_under_two_labels(tmp_path):
    manifest = Path(__file__).parents[2] / "shared" / "data" / "insectset32" / "manifest.csv"
    result = evaluate("default", manifest, split="validation", cache_dir=tmp_path / "cache")
    [problem] = result["clips_same_recording"]
    assert problem.endswith("MHV%20321%20P.plumosa%20Ghwarriepoort%20River%20%231_0.flac (Pycnasemiclara, "
                            "validation) hold the same recording under two labels: at most one is right")
    assert "MHV%20321%20P.plumosa%20Ghwarriepoort%20River%20%231.flac (Platypleuraplumosa, validation)" in problem
