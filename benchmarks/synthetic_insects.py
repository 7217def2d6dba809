"""Write a folder of synthetic "insect species" for pretraining the compact network.

    python benchmarks/synthetic_insects.py OUT [--species 40] [--per-genus 1] [--clips 8] [--seconds 10] [--seed 0]

Each species is a random but fixed song: a carrier (a pure tone, a tone with
harmonics, or a band of noise, 1.5-18 kHz) cut into pulses at a fixed rate, either
as a continuous trill or grouped into chirps. Each clip of a species varies that
song a little (carrier and pulse rate, as temperature and individuals do) and lays
it over coloured background noise at a random signal-to-noise ratio. With
``--per-genus N`` the species come in "genera" of N that share a song's kind and
differ only by 8-20 % in carrier and 15-40 % in pulse rate, as congeners do. The result,
``OUT/<species>/<n>.flac``, is a ``fieldmon train`` clip folder: pretraining on it
is meant to give the trunk filters for carrier frequency and pulse structure before
it sees the few real clips (README, "The compact recipe").
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 44100


def species_song(rng: np.random.Generator) -> dict:
    pulse_rate = float(np.exp(rng.uniform(np.log(3), np.log(300))))
    song = {
        "carrier": str(rng.choice(["tone", "harmonics", "noise"])),
        "f0": float(np.exp(rng.uniform(np.log(1500), np.log(18000)))),
        "bandwidth": float(rng.uniform(0.05, 0.6)),  # of f0, for a noise carrier
        "sweep": float(rng.uniform(-0.15, 0.15)),  # relative frequency change over a pulse
        "pulse_rate": pulse_rate,
        "duty": float(rng.uniform(0.15, 0.85)),
        "grouped": bool(rng.random() < 0.6),
    }
    if song["grouped"]:
        pulses = int(rng.integers(2, 30))
        song["pulses_per_chirp"] = pulses
        song["chirp_period"] = float(pulses / pulse_rate * rng.uniform(1.3, 4.0))
    return song


def congener(song: dict, rng: np.random.Generator) -> dict:
    """The genus's song with its carrier and pulse rate moved up or down by a species' step."""
    def moved(value: float, low: float, high: float) -> float:
        return value * float(np.exp(rng.choice([-1, 1]) * rng.uniform(np.log1p(low), np.log1p(high))))

    out = dict(song, f0=min(moved(song["f0"], 0.08, 0.2), 20000.0), pulse_rate=moved(song["pulse_rate"], 0.15, 0.4))
    if out["grouped"]:
        out["chirp_period"] = song["chirp_period"] * song["pulse_rate"] / out["pulse_rate"]
    return out


def _pulse_gate(song: dict, n: int, rng: np.random.Generator, rate_factor: float) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(n) / SAMPLE_RATE + rng.uniform(0, 2)
    rate = song["pulse_rate"] * rate_factor
    phase = (t * rate) % 1.0
    gate = np.where(phase < song["duty"], np.sin(np.pi * np.clip(phase / song["duty"], 0, 1)) ** 2, 0.0)
    if song["grouped"]:
        period = song["chirp_period"] / rate_factor
        in_chirp = (t % period) < song["pulses_per_chirp"] / rate
        gate = gate * in_chirp
    return gate, phase


def _carrier(song: dict, n: int, rng: np.random.Generator, f0: float, pulse_phase: np.ndarray) -> np.ndarray:
    nyquist = SAMPLE_RATE / 2
    if song["carrier"] == "noise":
        width = max(song["bandwidth"] * f0, 100.0)
        out = shaped_noise(rng.standard_normal(n), lambda freqs: np.exp(-0.5 * ((freqs - f0) / (width / 2)) ** 2))
    else:
        frequency = f0 * (1 + song["sweep"] * (pulse_phase - 0.5))
        phase = 2 * np.pi * np.cumsum(frequency) / SAMPLE_RATE
        harmonics = [1] if song["carrier"] == "tone" else [1, 2, 3, 4]
        out = sum(np.sin(h * phase) / h ** 1.5 for h in harmonics if h * f0 * 1.2 < nyquist)
    return out / (np.std(out) + 1e-12)


def shaped_noise(white: np.ndarray, gain: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``white`` noise with each frequency's amplitude multiplied by ``gain(frequency)``."""
    spectrum = np.fft.rfft(white) * gain(np.fft.rfftfreq(len(white), 1 / SAMPLE_RATE))
    return np.fft.irfft(spectrum, len(white))


def background(n: int, rng: np.random.Generator) -> np.ndarray:
    """Noise with a power spectrum falling as 1/f^exponent, exponent 0 (white) to 2 (brown)."""
    white = rng.standard_normal(n)
    exponent = rng.uniform(0, 2)
    out = shaped_noise(white, lambda freqs: np.maximum(freqs, 20.0) ** (-exponent / 2))
    return out / (np.std(out) + 1e-12)


def clip(song: dict, seconds: float, rng: np.random.Generator) -> np.ndarray:
    n = round(seconds * SAMPLE_RATE)
    f0 = song["f0"] * float(np.exp(rng.normal(0, 0.04)))
    gate, pulse_phase = _pulse_gate(song, n, rng, float(np.exp(rng.normal(0, 0.08))))
    signal = gate * _carrier(song, n, rng, f0, pulse_phase)
    signal /= np.sqrt(np.mean(signal ** 2)) + 1e-12
    snr_db = rng.uniform(3, 30)
    audio = signal + background(n, rng) * 10 ** (-snr_db / 20)
    return (audio / np.max(np.abs(audio)) * rng.uniform(0.1, 0.9)).astype(np.float32)


def positive(kind: type) -> Callable[[str], float]:
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
        return value
    return parse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--species", type=positive(int), default=40)
    parser.add_argument("--per-genus", type=positive(int), default=1)
    parser.add_argument("--clips", type=positive(int), default=8)
    parser.add_argument("--seconds", type=positive(float), default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    for s in range(args.species):
        if s % args.per_genus == 0:
            genus = species_song(rng)
        song = genus if args.per_genus == 1 else congener(genus, rng)
        folder = args.out / f"synthetic{s:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for c in range(args.clips):
            sf.write(folder / f"{c}.flac", clip(song, args.seconds, rng), SAMPLE_RATE)
    print(f"wrote {args.species} species x {args.clips} clips of {args.seconds:g} s to {args.out}")


if __name__ == "__main__":
    main()
