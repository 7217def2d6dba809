"""Exports for manual checking: Raven Pro selection tables, Audacity label tracks,
flat CSV, and short audio clips of the best (or a random sample of) detections."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from fieldmon.audio import AudioReadError, open_sound
from fieldmon.model.metadata import UNKNOWN
from fieldmon.outputs.tables import ScanOutput

RAVEN_COLUMNS = ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                 "High Freq (Hz)", "Species", "Score", "Open-set Score"]
FORMATS = ("raven", "audacity", "csv")


def detected(output: ScanOutput) -> pd.DataFrame:
    """Windows labelled with a species (not "unknown"), in file and time order."""
    d = output.detections
    return d[d["label"] != UNKNOWN].sort_values(["path", "window_start_s"]).reset_index(drop=True)


def _per_file_name(relative: str, suffix: str) -> Path:
    # Mirror the recordings' folders so a table sits beside the audio it belongs to.
    path = Path(relative)
    return path.with_name(path.stem + suffix)


def export(output: ScanOutput, fmt: str, out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = detected(output)
    if fmt == "csv":
        path = out_dir / "detections.csv"
        flat = output.detections.copy()
        for column in ("top_labels", "top_scores"):
            flat[column] = flat[column].map(lambda v: ";".join(map(str, v)))
        flat.drop(columns=[c for c in ("embedding",) if c in flat]).to_csv(path, index=False)
        return [path]
    nyquist = _nyquist_by_file(output)
    written = []
    for relative, group in rows.groupby("path", sort=True):
        if fmt == "raven":
            target = out_dir / _per_file_name(relative, ".Table.1.selections.txt")
            table = pd.DataFrame({
                "Selection": range(1, len(group) + 1),
                "View": "Spectrogram 1",
                "Channel": 1,
                "Begin Time (s)": group["window_start_s"].round(6).to_numpy(),
                "End Time (s)": group["window_end_s"].round(6).to_numpy(),
                "Low Freq (Hz)": 0.0,
                "High Freq (Hz)": nyquist.get(relative, np.nan),
                "Species": group["label"].to_numpy(),
                "Score": group["score"].round(4).to_numpy(),
                "Open-set Score": group["open_set_score"].round(4).to_numpy(),
            })[RAVEN_COLUMNS]
            target.parent.mkdir(parents=True, exist_ok=True)
            table.to_csv(target, sep="\t", index=False, lineterminator="\n")
        elif fmt == "audacity":
            target = out_dir / _per_file_name(relative, ".labels.txt")
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "w") as fh:
                for _, row in group.iterrows():
                    fh.write(f"{row.window_start_s:.6f}\t{row.window_end_s:.6f}\t{row.label} {row.score:.2f}\n")
        else:
            raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
        written.append(target)
    return written


def _nyquist_by_file(output: ScanOutput) -> dict[str, float]:
    f = output.files
    if f.empty:
        return {}
    ok = f.dropna(subset=["sample_rate"])
    return dict(zip(ok["path"], ok["sample_rate"].astype(float) / 2))


def extract_clips(
    output: ScanOutput,
    audio_root: str | Path,
    out_dir: str | Path,
    per_species: int,
    mode: str = "best",
    seed: int = 0,
) -> pd.DataFrame:
    """The ``per_species`` best-scoring (or a random sample of) windows of each species,
    cut from the original recordings at their own sample rate, with a spectrogram PNG
    each and an index CSV."""
    audio_root, out_dir = Path(audio_root), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = detected(output)
    picked = []
    for _, group in rows.groupby("label", sort=True):
        if mode == "best":
            chosen = group.sort_values(["score", "path", "window_start_s"], ascending=[False, True, True])
        elif mode == "random":
            chosen = group.sample(frac=1.0, random_state=seed)
        else:
            raise ValueError(f"mode must be best or random, not {mode!r}")
        picked.append(chosen.head(per_species))
    index = []
    for rank, row in enumerate(pd.concat(picked).itertuples() if picked else []):
        samples, sr = cut_audio(audio_root / row.path, row.window_start_s, row.window_end_s)
        name = f"{row.label}_{rank:04d}"
        clip = out_dir / row.label / f"{name}.wav"
        clip.parent.mkdir(parents=True, exist_ok=True)
        sf.write(clip, samples, sr, subtype="FLOAT")
        png = clip.with_suffix(".png")
        _spectrogram_png(samples.mean(axis=1), sr, png, f"{row.label}  score {row.score:.2f}  {row.path} @ {row.window_start_s:g} s")
        index.append({"species": row.label, "score": row.score, "open_set_score": row.open_set_score,
                      "path": row.path, "window_start_s": row.window_start_s, "window_end_s": row.window_end_s,
                      "start_time": row.start_time, "local_time": row.local_time,
                      "clip": clip.relative_to(out_dir).as_posix(), "spectrogram": png.relative_to(out_dir).as_posix()})
    table = pd.DataFrame(index)
    table.to_csv(out_dir / "index.csv", index=False, quoting=csv.QUOTE_MINIMAL)
    return table


def cut_audio(source: Path, start_s: float, stop_s: float) -> tuple[np.ndarray, int]:
    """Samples (frames x channels) of ``source`` from ``start_s`` to ``stop_s`` (clipped
    to the file), at the file's own sample rate. Raises AudioReadError, whatever the cause."""
    with open_sound(source) as sound:
        sr = sound.samplerate
        start = min(max(0, int(round(start_s * sr))), sound.frames)
        stop = min(int(round(stop_s * sr)), sound.frames)
        try:
            sound.seek(start)
            samples = sound.read(max(0, stop - start), dtype="float32", always_2d=True)
        except (sf.SoundFileError, RuntimeError, OSError) as exc:
            raise AudioReadError(source, f"decoding failed ({exc})") from exc
    return samples, sr


def _spectrogram_png(samples: np.ndarray, sr: int, path: Path, title: str, colorbar: bool = False,
                     marks: tuple[float, ...] = ()) -> None:
    """``marks``: times (s) drawn as dashed lines, e.g. where a window starts and ends in
    a clip with context."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    nfft = min(1024, max(16, len(samples) // 4))
    with np.errstate(divide="ignore"):  # silence is -inf dB; matplotlib draws it as the lowest colour
        *_, image = ax.specgram(samples, NFFT=nfft, Fs=sr, noverlap=nfft // 2, cmap="magma")
    for mark in marks:
        ax.axvline(mark, color="cyan", linestyle="--", linewidth=1)
    if colorbar:
        fig.colorbar(image, ax=ax, label="dB", pad=0.02)
    ax.set_xlabel("s")
    ax.set_ylabel("Hz")
    ax.set_title(title, fontsize=7)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
