from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
INSECTSET = SHARED_DATA / "insectset32"
RECORDER_SERIES = SHARED_DATA / "recorder-series-S4A03895"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def require_shared(path: Path) -> Path:
    """Real recordings live in ../shared/data beside the clone (CI has it; a user's clone does not)."""
    if not path.exists():
        pytest.skip(f"needs the shared recordings at {path}, which only the project's CI and dev machines have")
    return path


@pytest.fixture
def insectset() -> Path:
    return require_shared(INSECTSET)


def tone(freq: float, seconds: float, sr: int = 44100, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def harmonic_tone(f0: float, seconds: float, sr: int = 44100) -> np.ndarray:
    return sum(tone(f0 * k, seconds, sr, 0.3 / k) for k in range(1, 6)).astype(np.float32)


def click_train(rate_hz: float, seconds: float, sr: int = 44100) -> np.ndarray:
    y = np.zeros(round(seconds * sr), np.float32)
    y[:: round(sr / rate_hz)] = 1.0
    return y


def noise(seconds: float, sr: int = 44100, seed: int = 0, amplitude: float = 0.1) -> np.ndarray:
    return (amplitude * np.random.default_rng(seed).standard_normal(round(seconds * sr))).astype(np.float32)
