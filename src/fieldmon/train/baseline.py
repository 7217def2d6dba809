"""The shallow baseline every training run is measured against.

Per 2 s window: the mean and standard deviation over time of a 64-band log-Mel
spectrogram (absolute dB) and of 20 MFCCs, and the standard deviation of the MFCC
deltas (188 numbers); standardised, then multinomial logistic regression (C = 1).
Windows are cut exactly as for the deep model (training hop for the training
clips, every 2 s for held-out clips), and files are scored by the mean of their
windows' probabilities, as ``fieldmon evaluate`` scores them. If the deep model
does not beat this, it has not earned its cost.
"""

from __future__ import annotations

import warnings

import numpy as np

from fieldmon.audio import AudioReadError, cut_windows, load_audio
from fieldmon.evaluation.metrics import classification_report, file_level
from fieldmon.features import FeatureSettings
from fieldmon.train.dataset import Clip

N_MELS = 64
N_MFCC = 20


def window_statistics(windows: np.ndarray, sample_rate: int, fmax: float | None = None) -> np.ndarray:
    """``[N, samples]`` -> ``[N, 188]`` log-Mel and MFCC statistics, of the band up to
    ``fmax`` (the deep model's band limit, so that both see the same sound)."""
    import librosa

    out = np.empty((len(windows), 2 * N_MELS + 3 * N_MFCC), dtype=np.float32)
    for i, window in enumerate(windows):
        mel = librosa.feature.melspectrogram(y=window, sr=sample_rate, n_fft=1024, hop_length=512, n_mels=N_MELS,
                                             fmax=fmax)
        db = librosa.power_to_db(mel)
        mfcc = librosa.feature.mfcc(S=db, n_mfcc=N_MFCC)
        delta = librosa.feature.delta(mfcc)
        out[i] = np.concatenate([db.mean(1), db.std(1), mfcc.mean(1), mfcc.std(1), delta.std(1)])
    return out


def clip_statistics(
    clips: list[Clip], class_names: list[str], settings: FeatureSettings, hop_seconds: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Statistics of every window of ``clips``, their labels and clip indices. Clips
    that cannot be used are skipped here; the deep model's data preparation reports them."""
    index = {name: i for i, name in enumerate(class_names)}
    stats, labels, clip_index = [], [], []
    for i, clip in enumerate(clips):
        try:
            samples = load_audio(clip.path, settings.sample_rate)
        except AudioReadError:
            continue
        if not np.any(samples):
            continue
        windows = cut_windows(samples, settings.window_samples, round(hop_seconds * settings.sample_rate),
                              keep_partial=False).samples
        stats.append(window_statistics(windows, settings.sample_rate, settings.band_limit_hz))
        labels.append(np.full(len(windows), index[clip.label]))
        clip_index.append(np.full(len(windows), i))
    if not stats:
        return np.zeros((0, 2 * N_MELS + 3 * N_MFCC), np.float32), np.zeros(0, int), np.zeros(0, int)
    return np.concatenate(stats), np.concatenate(labels), np.concatenate(clip_index)


def fit_and_score(
    train: tuple[np.ndarray, np.ndarray], held_out: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    class_names: list[str], seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Fit on ``train`` (statistics, labels); macro-F1 per window and per file of each
    held-out split (statistics, labels, clip indices)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=3000, random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs convergence notes on tiny sets say nothing a user can act on
        model.fit(*train)
    # predict_proba's columns are the classes seen in training; place them in class order.
    columns = model.classes_
    scores = {}
    for name, (stats, labels, clips) in held_out.items():
        if not len(labels):
            continue
        probabilities = np.zeros((len(labels), len(class_names)))
        probabilities[:, columns] = model.predict_proba(stats)
        files, file_probabilities = file_level(probabilities, clips)
        file_labels = np.array([labels[clips == f][0] for f in files])
        scores[name] = {
            "macro_f1": classification_report(labels, probabilities.argmax(1), class_names).macro_f1,
            "file_macro_f1": classification_report(file_labels, file_probabilities.argmax(1), class_names).macro_f1,
        }
    return scores


def baseline_scores(
    splits: dict[str, list[Clip]], class_names: list[str], settings: FeatureSettings, train_hop_seconds: float,
    held_out_hop_seconds: float, seed: int = 0,
) -> dict[str, dict[str, float]]:
    """The baseline trained on ``splits["train"]`` and scored on the other splits."""
    stats, labels, _ = clip_statistics(splits["train"], class_names, settings, train_hop_seconds)
    held_out = {name: clip_statistics(clips, class_names, settings, held_out_hop_seconds)
                for name, clips in splits.items() if name != "train" and clips}
    return fit_and_score((stats, labels), held_out, class_names, seed)
