"""How much frequency resolution the HPSS-Mel features need, before training anything.

    python benchmarks/mel_resolution.py [--manifest ../shared/data/insectset32/manifest.csv] [--mels 40,64,128,256]

For each number of Mel bands: the HPSS-Mel features of every training window (every 1 s)
and validation window (every 2 s) of the manifest's splits, reduced to per-band statistics
(mean and standard deviation over time, per channel), logistic regression on the training
windows, and the validation macro-F1 per window and per file (mean probability over a
file's windows). A linear probe of the input, not a model: it shows whether finer bands
carry more of what tells the species apart.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fieldmon.audio import cut_windows, load_audio
from fieldmon.evaluation.metrics import classification_report
from fieldmon.features import FeatureSettings, hpss_mel
from fieldmon.train.api import prepare_clips


def band_statistics(clips, names, hop_seconds: float, settings: FeatureSettings, audio: dict):
    stats, labels, files = [], [], []
    for i, clip in enumerate(clips):
        if clip.path not in audio:
            audio[clip.path] = load_audio(clip.path, settings.sample_rate)
        samples = audio[clip.path]
        if not np.any(samples):
            continue
        windows = cut_windows(samples, settings.window_samples, round(hop_seconds * settings.sample_rate),
                              keep_partial=False).samples
        features = hpss_mel(windows, settings)
        stats.append(np.concatenate([features.mean(3), features.std(3)], axis=2).reshape(len(features), -1))
        labels += [names.index(clip.label)] * len(features)
        files += [i] * len(features)
    return np.concatenate(stats), np.array(labels), np.array(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, default=Path("../shared/data/insectset32/manifest.csv"))
    parser.add_argument("--mels", default="40,64,128,256")
    parser.add_argument("--C", type=float, default=1.0, help="inverse regularisation of the logistic regression")
    args = parser.parse_args()
    clips = prepare_clips(args.manifest, 0)
    names = clips.class_names
    audio: dict = {}
    print(f"{'Mel bands':>9} {'per window':>11} {'per file':>9}")
    for n_mels in (int(n) for n in args.mels.split(",")):
        settings = replace(FeatureSettings(), n_mels=n_mels)
        x_train, y_train, _ = band_statistics(clips.in_split("train"), names, 1.0, settings, audio)
        x_val, y_val, files = band_statistics(clips.in_split("validation"), names, 2.0, settings, audio)
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=args.C, max_iter=3000)).fit(x_train, y_train)
        p = probe.predict_proba(x_val)
        ids = np.unique(files)
        per_file = np.stack([p[files == f].mean(0) for f in ids])
        file_labels = np.array([y_val[files == f][0] for f in ids])
        window_f1 = classification_report(y_val, p.argmax(1), names).macro_f1
        file_f1 = classification_report(file_labels, per_file.argmax(1), names).macro_f1
        print(f"{n_mels:>9} {window_f1:>11.3f} {file_f1:>9.3f}", flush=True)


if __name__ == "__main__":
    main()
