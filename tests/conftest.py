from __future__ import annotations

import subprocess
import sys
import time
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


def start_slow_scan(started: Path, *cli_args: str, **popen) -> subprocess.Popen:
    """`fieldmon scan CLI_ARGS` in its own process, every batch of the network taking
    30 s; returns once the first batch began (``started`` exists), so that only a stop
    at once, or a kill, ends it within seconds."""
    script = ("import sys, time, pathlib\nimport fieldmon.scan.predictor as p\n"
              "predict, started = p.WindowPredictor._predict, pathlib.Path(sys.argv[1])\n"
              "def slow(self, w):\n    started.touch()\n    time.sleep(30)\n    return predict(self, w)\n"
              "p.WindowPredictor._predict = slow\nfrom fieldmon.cli import main\n"
              "sys.argv = ['fieldmon'] + sys.argv[2:]\nmain()\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(started), "scan", *cli_args], **popen)
    deadline = time.monotonic() + 60
    while not started.exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    return proc
