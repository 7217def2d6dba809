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

With ``--modulation``, also each window's modulation spectrum: the log power envelopes of
16 bands from 1 to 21 kHz at 1.45 ms (a 256-sample STFT every 64 samples, far finer than the
features' 10 ms hop), and the power spectrum of each envelope over the window in 24
log-spaced bins from 2 to 340 Hz, each band's spectrum normalised to its total: how fast the
song's pulses and chirps repeat, in each band. Probed alone, beside the band statistics
(all of it, then only the rates up to 50 Hz, which the features' 100 frames a second can
show, and only those above), and with ``--model`` beside the embeddings.
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


def clip_windows(clips, hop_seconds: float, settings: FeatureSettings, audio: dict):
    """(index, clip, windows [n, samples]) of every clip that is not silent; ``audio`` keeps
    the decoded clips for the next call."""
    for i, clip in enumerate(clips):
        if clip.path not in audio:
            audio[clip.path] = load_audio(clip.path, settings.sample_rate)
        samples = audio[clip.path]
        if np.any(samples):
            yield i, clip, cut_windows(samples, settings.window_samples, round(hop_seconds * settings.sample_rate),
                                       keep_partial=False).samples


def band_statistics(clips, names, hop_seconds: float, settings: FeatureSettings, audio: dict, bundle=None):
    """Per-band statistics of every window of ``clips``, their labels and clip indices, and with
    ``bundle`` the model's embeddings of the same windows."""
    stats, labels, files, embeddings = [], [], [], []
    for i, clip, windows in clip_windows(clips, hop_seconds, settings, audio):
        features = hpss_mel(windows, settings)
        if bundle is not None:
            with torch.no_grad():
                embeddings.append(bundle.network(torch.from_numpy(hpss_mel(windows, bundle.feature_settings))).numpy())
        stats.append(np.concatenate([features.mean(3), features.std(3)], axis=2).reshape(len(features), -1))
        labels += [names.index(clip.label)] * len(features)
        files += [i] * len(features)
    return np.concatenate(stats), np.array(labels), np.array(files), embeddings and np.concatenate(embeddings)


MODULATION_FFT, MODULATION_HOP = 256, 64
MODULATION_BAND_EDGES_HZ = np.geomspace(1000, 21000, 17)
MODULATION_RATE_EDGES_HZ = np.geomspace(2, 340, 25)
VISIBLE_RATE_HZ = 50  # the fastest repetition the features' 10 ms hop resolves


def modulation_spectra(windows: np.ndarray, sample_rate: int) -> np.ndarray:
    """[windows, samples] -> [windows, 24 rates x 16 bands] log modulation power, each band's
    spectrum normalised to its total (so the level of the band does not count)."""
    bins = np.fft.rfftfreq(MODULATION_FFT, 1 / sample_rate)
    band_of_bin = np.digitize(bins, MODULATION_BAND_EDGES_HZ) - 1
    n_bands = len(MODULATION_BAND_EDGES_HZ) - 1
    frames = (windows.shape[1] - MODULATION_FFT) // MODULATION_HOP + 1
    rate_of_bin = np.digitize(np.fft.rfftfreq(frames, MODULATION_HOP / sample_rate), MODULATION_RATE_EDGES_HZ) - 1
    n_rates = len(MODULATION_RATE_EDGES_HZ) - 1
    out = []
    for window in windows.astype(np.float64):
        framed = np.lib.stride_tricks.sliding_window_view(window, MODULATION_FFT)[::MODULATION_HOP][:frames]
        power = np.abs(np.fft.rfft(framed * np.hanning(MODULATION_FFT), axis=1)) ** 2
        envelopes = np.stack([power[:, band_of_bin == b].sum(1) for b in range(n_bands)], axis=1)
        envelopes = np.log(envelopes + 1e-12 * envelopes.max() + 1e-30)
        envelopes -= envelopes.mean(0)
        spectrum = np.abs(np.fft.rfft(envelopes * np.hanning(frames)[:, None], axis=0)) ** 2
        pooled = np.stack([spectrum[rate_of_bin == r].mean(0) for r in range(n_rates)])  # [rates, bands]
        out.append(np.log(pooled / (pooled.sum(0, keepdims=True) + 1e-30) + 1e-8).ravel())
    return np.array(out)


def modulation_of(clips, hop_seconds: float, settings: FeatureSettings, audio: dict) -> np.ndarray:
    """The modulation spectra of the windows ``band_statistics`` cuts from the same clips."""
    return np.concatenate([modulation_spectra(windows, settings.sample_rate)
                           for _, _, windows in clip_windows(clips, hop_seconds, settings, audio)])


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
    parser.add_argument("--modulation", action="store_true",
                        help="also probe the windows' modulation spectra, alone and beside the others")
    args = parser.parse_args()
    clips = prepare_clips(args.manifest, 0)
    names = clips.class_names
    bundle = None if args.model is None else load_model(args.model).eval()
    if bundle is not None and bundle.class_names != names:
        parser.error(f"--model {args.model} was trained on other species than {args.manifest}")
    audio: dict = {}
    modulation = {}
    print(f"{'probe of':>36} {'per window':>11} {'per file':>9}")
    for n_mels in (int(n) for n in args.mels.split(",")):
        settings = replace(FeatureSettings(), n_mels=n_mels)
        x_train, y_train, _, e_train = band_statistics(clips.in_split("train"), names, 1.0, settings, audio, bundle)
        x_val, y_val, files, e_val = band_statistics(clips.in_split("validation"), names, 2.0, settings, audio, bundle)
        probes = {f"{n_mels} Mel bands": (x_train, x_val)}
        if bundle is not None:
            probes |= {"the model's embeddings": (e_train, e_val),
                       f"embeddings + {n_mels} bands": (np.hstack([e_train, x_train]), np.hstack([e_val, x_val]))}
        if args.modulation:
            if not modulation:
                modulation = {"train": modulation_of(clips.in_split("train"), 1.0, settings, audio),
                              "validation": modulation_of(clips.in_split("validation"), 2.0, settings, audio)}
                probes["modulation spectra"] = (modulation["train"], modulation["validation"])
                if bundle is not None:
                    probes["embeddings + modulation"] = (np.hstack([e_train, modulation["train"]]),
                                                         np.hstack([e_val, modulation["validation"]]))
            rates = np.repeat(MODULATION_RATE_EDGES_HZ[1:] <= VISIBLE_RATE_HZ, len(MODULATION_BAND_EDGES_HZ) - 1)
            for part, columns in (("", slice(None)), (f" up to {VISIBLE_RATE_HZ} Hz", rates),
                                  (f" above {VISIBLE_RATE_HZ} Hz", ~rates)):
                probes[f"{n_mels} bands + modulation{part}"] = (np.hstack([x_train, modulation["train"][:, columns]]),
                                                                np.hstack([x_val, modulation["validation"][:, columns]]))
        for name, (train, val) in probes.items():
            window_f1, file_f1 = probe_scores(train, y_train, val, y_val, files, names, args.C)
            print(f"{name:>36} {window_f1:>11.3f} {file_f1:>9.3f}", flush=True)


if __name__ == "__main__":
    main()
