"""Is the open set a bandwidth detector?

    python benchmarks/band_limited.py [--model default] [--rates 22050,32000] [--data ../shared/data] [--cache DIR]

The outlier recordings the open set is measured on (README, "Open-set rejection") were
made at lower rates than InsectSet32's 44.1 kHz clips: the Song Meter day at 22.05 kHz,
the soundscape at 32 kHz. Resampled to 44.1 kHz they have nothing above 11 or 16 kHz, so
a model could reject them for that alone. This scores the validation clips of
InsectSet32, known species, as they are and resampled down to each rate (written to a
temporary folder and read back as a scan reads a low-rate recording): if the open set
only detected the missing bands, it would reject nearly every band-limited known window.

Prints, per rate: macro-F1 per file and per window, and the share of known windows
rejected as unknown.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

import soundfile as sf
import soxr

from fieldmon.evaluation.evaluate import evaluate


def band_limited_copies(manifest: Path, rate: int, folder: Path) -> Path:
    """The validation clips of ``manifest`` resampled to ``rate``, with their own manifest."""
    rows = [row for row in csv.DictReader(manifest.open()) if row["split"] == "validation"]
    out = folder / f"manifest-{rate}.csv"
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "species"])
        for i, row in enumerate(rows):
            samples, original = sf.read(manifest.parent / row["path"], dtype="float32")
            path = folder / f"{rate}-{i:03d}.wav"
            sf.write(path, soxr.resample(samples, original, rate), rate, subtype="PCM_16")
            writer.writerow([path.name, row["species"]])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--rates", default="22050,32000", help="comma-separated sample rates in Hz")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args()
    manifest = args.data / "insectset32" / "manifest.csv"
    print(f"{'validation clips':>22s} {'per file':>9s} {'per window':>11s} {'known rejected':>15s}")

    def show(name: str, result: dict) -> None:
        print(f"{name:>22s} {result['file_macro_f1']:9.3f} {result['macro_f1']:11.3f} {result['known_rejected']:15.1%}")

    show("as recorded (44.1 kHz)", evaluate(args.model, manifest, split="validation", cache_dir=args.cache))
    with tempfile.TemporaryDirectory() as folder:
        for rate in (int(r) for r in args.rates.split(",")):
            copies = band_limited_copies(manifest, rate, Path(folder))
            show(f"resampled to {rate} Hz", evaluate(args.model, copies, cache_dir=args.cache))


if __name__ == "__main__":
    main()
