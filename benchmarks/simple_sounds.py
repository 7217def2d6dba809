"""Write a folder of simple sounds that are not insects, to see which of them a model takes for one.

    python benchmarks/simple_sounds.py OUT
    fieldmon scan OUT --out simple.parquet

Four seconds each at 44.1 kHz (two windows): pure tones from 0.5 to 16 kHz (electrical
hum, whistles); the same frequencies as pulsed tones with two harmonics, five pulses a
second (frog- or bird-like calls); white, pink and brown noise (recorder self-noise,
wind, streams); rain (random drops over noise); bird-like downward sweeps from 6 to 3 kHz;
a click train at 10 per second; a 4 kHz tone amplitude-modulated at 50 Hz (a buzz). Every
one should come out ``unknown``. Some insects sing nearly pure tones (tree crickets near
3 kHz), so a tone at a species' carrier frequency is the hardest case for any acoustic
model, not a bug of this one. The files are the same for the same seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf
from synthetic_insects import SAMPLE_RATE, shaped_noise

SECONDS = 4.0
FREQUENCIES_HZ = (500, 1000, 2000, 3000, 5000, 8000, 12000, 16000)


def simple_sounds(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(int(SECONDS * SAMPLE_RATE)) / SAMPLE_RATE

    def hiss(level: float) -> np.ndarray:
        return level * rng.standard_normal(t.size)

    sounds = {}
    pulses = (np.sin(2 * np.pi * 5 * t) > 0.3).astype(float)
    for f in FREQUENCIES_HZ:
        sounds[f"tone{f}"] = np.sin(2 * np.pi * f * t) + hiss(0.01)
        sounds[f"pulsedharm{f}"] = pulses * sum(np.sin(2 * np.pi * f * k * t) / k for k in (1, 2, 3)) + hiss(0.01)
    for name, exponent in (("white", 0), ("pink", 1), ("brown", 2)):
        # DC keeps its amplitude; the scaling below removes the level anyway.
        sounds[name] = shaped_noise(rng.standard_normal(t.size),
                                    lambda freqs, e=exponent: np.where(freqs > 0, freqs, 1.0) ** (-e / 2))
    sweeps = np.zeros_like(t)
    for start in np.arange(0.1, 3.8, 0.33):
        inside = (t >= start) & (t < start + 0.15)
        tt = t[inside] - start
        sweeps[inside] = np.sin(2 * np.pi * (6000 * tt - 10000 * tt**2)) * np.hanning(inside.sum())
    sounds["birdsweeps"] = sweeps + hiss(0.01)
    clicks = np.zeros_like(t)
    clicks[(np.arange(0, SECONDS, 0.1) * SAMPLE_RATE).astype(int)] = 1.0
    sounds["clicks"] = clicks + hiss(0.001)
    sounds["amtone4k"] = (1 + np.sin(2 * np.pi * 50 * t)) * np.sin(2 * np.pi * 4000 * t) + hiss(0.01)
    sounds["rain"] = (rng.random(t.size) < 0.002) * rng.standard_normal(t.size) * 5 + hiss(0.2)
    return {name: (0.3 * x / np.max(np.abs(x))).astype(np.float32) for name, x in sounds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sounds = simple_sounds(args.seed)
    for name, samples in sounds.items():
        sf.write(args.out / f"{name}.wav", samples, SAMPLE_RATE)
    print(f"wrote {len(sounds)} files to {args.out}")


if __name__ == "__main__":
    main()
