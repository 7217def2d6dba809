"""How much frequency resolution the HPSS-Mel features need, before training anything.

    python benchmarks/mel_resolution.py [--manifest ../shared/data/insectset32/manifest.csv] [--mels 40,64,128,256]
                                        [--model default]

For each number of Mel bands: the HPSS-Mel features of every training window (every 1 s)
and validation window (every 2 s) of the manifest's splits, reduced to per-band statistics
(mean and standard deviation over time, per channel), logistic regression on the training
windows, and the validation macro-F1 per window and per file (mean probability over a
file's windows). A linear probe of the input, not a model: it shows whether finer bands
carry more of what tells the species apart.

With ``--model``, also the same probe on the model's embeddings of the same windows, and on
the embeddings and the statistics side by side: do the finer bands carry what the network
missed?
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fieldmon.audio import cut_windows, load_audio
from fieldmon.evaluation.metrics import classification_report
from fieldmon.features import FeatureSettings, hpss_mel
from fieldmon.model.loading import load_model
from fieldmon.train.api import prepare_clips


def band_statistics(clips, names, hop_seconds: float, settings: FeatureSettings, audio: dict, bundle=None):
    """Per-band statistics of every window of ``clips``, their labels and clip indices, and with
    ``bundle`` the model's embeddings of the same windows."""
    stats, labels, files, embeddings = [], [], [], []
    for i, clip in enumerate(clips):
        if clip.path not in audio:
            audio[clip.path] = load_audio(clip.path, settings.sample_rate)
        samples = audio[clip.path]
        if not np.any(samples):
            continue
        windows = cut_windows(samples, settings.window_samples, round(hop_seconds * settings.sample_rate),
                              keep_partial=False).samples
        features = hpss_mel(windows, settings)
        if bundle is not None:
            with torch.no_grad():
                embeddings.append(bundle.network(torch.from_numpy(hpss_mel(windows, bundle.feature_settings))).numpy())
        stats.append(np.concatenate([features.mean(3), features.std(3)], axis=2).reshape(len(features), -1))
        labels += [names.index(clip.label)] * len(features)
        files += [i] * len(features)
    return np.concatenate(stats), np.array(labels), np.array(files), embeddings and np.concatenate(embeddings)


def probe_scores(x_train, y_train, x_val, y_val, files, names, C: float) -> tuple[float, float]:
    """Validation macro-F1 per window and per file of a logistic regression."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=3000)).fit(x_train, y_train)
    p = probe.predict_proba(x_val)
    ids = np.unique(files)
    per_file = np.stack([p[files == f].mean(0) for f in ids])
    file_labels = np.array([y_val[files == f][0] for f in ids])
    return (classification_report(y_val, p.argmax(1), names).macro_f1,
            classification_report(file_labels, per_file.argmax(1), names).macro_f1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, default=Path("../shared/data/insectset32/manifest.csv"))
    parser.add_argument("--mels", default="40,64,128,256")
    parser.add_argument("--C", type=float, default=1.0, help="inverse regularisation of the logistic regression")
    parser.add_argument("--model", default=None,
                        help="also probe this model's embeddings, alone and beside the statistics")
    args = parser.parse_args()
    clips = prepare_clips(args.manifest, 0)
    names = clips.class_names
    bundle = None if args.model is None else load_model(args.model).eval()
    if bundle is not None and bundle.class_names != names:
        parser.error(f"--model {args.model} was trained on other species than {args.manifest}")
    audio: dict = {}
    print(f"{'probe of':>28} {'per window':>11} {'per file':>9}")
    for n_mels in (int(n) for n in args.mels.split(",")):
        settings = replace(FeatureSettings(), n_mels=n_mels)
        x_train, y_train, _, e_train = band_statistics(clips.in_split("train"), names, 1.0, settings, audio, bundle)
        x_val, y_val, files, e_val = band_statistics(clips.in_split("validation"), names, 2.0, settings, audio, bundle)
        probes = {f"{n_mels} Mel bands": (x_train, x_val)}
        if bundle is not None:
            probes |= {"the model's embeddings": (e_train, e_val),
                       f"embeddings + {n_mels} bands": (np.hstack([e_train, x_train]), np.hstack([e_val, x_val]))}
        for name, (train, val) in probes.items():
            window_f1, file_f1 = probe_scores(train, y_train, val, y_val, files, names, args.C)
            print(f"{name:>28} {window_f1:>11.3f} {file_f1:>9.3f}", flush=True)


if __name__ == "__main__":
    main()
