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


TINY_NETWORK = dict(channels=4, reduce_channels=2, dense_units=(8, 8, 8))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A small untrained but complete bundle (network, MLP, open set) for pipeline tests."""
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny", threshold=0.01)


@pytest.fixture(scope="session")
def accepting_model(tmp_path_factory) -> Path:
    """Like tiny_model, but its open-set threshold rejects nothing, so every window gets a species."""
    return make_tiny_model(tmp_path_factory.mktemp("models") / "accepting", threshold=0.0)


TINY_COMPACT_NETWORK = dict(stem_channels=4, strand_channels=(4, 4, 4), transition_channels=(4, 4, 4),
                            dense_units=(8, 8, 8))


@pytest.fixture(scope="session")
def tiny_compact_model(tmp_path_factory) -> Path:
    """tiny_model with the compact network (batch normalisation, early time strides)."""
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-compact", threshold=0.01, network="compact")


def make_tiny_model(path: Path, threshold: float, network: str = "paper") -> Path:
    import torch

    from fieldmon import ModelBundle
    from fieldmon.model.network import MLPClassifier
    from fieldmon.model.networks import build_network, settings_class
    from fieldmon.model.openset import fit_open_set

    torch.manual_seed(0)
    layout = TINY_NETWORK if network == "paper" else TINY_COMPACT_NETWORK
    network = build_network(network, settings_class(network)(**layout))
    emb = torch.nn.functional.normalize(torch.randn(12, 8), dim=1)
    labels = torch.arange(12) % 3
    bundle = ModelBundle(network, ["cricket", "katydid", "cicada"], classifier=MLPClassifier(8, 3),
                         open_set=fit_open_set(emb, labels, emb, labels, 3, threshold), name=path.name)
    bundle.save(path)
    return path


def write_wav(path: Path, seconds: float, sr: int = 44100, channels: int = 1, seed: int = 0, subtype: str = "PCM_16") -> Path:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    y = noise(seconds, sr, seed)
    data = np.stack([y] * channels, axis=1) if channels > 1 else y
    with open(path, "wb") as fh:  # a file object, so that names that are not valid UTF-8 work too
        sf.write(fh, data, sr, subtype=subtype, format=path.suffix.lstrip(".").upper())
    return path
