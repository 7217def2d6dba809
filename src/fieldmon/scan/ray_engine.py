"""The Ray engine: the same stages as the local engine, spread over a Ray cluster.

    file list (driver) -> decode tasks (decode_windows) -> actor pool (WindowPredictor) -> driver (ScanCollector)

Only the driver writes the output, through the same crash-safe store as the local
engine, so a killed job loses at most the files not yet committed and a rerun picks
up from there (Ray's own ``write_parquet`` writes straight to final names and appends
duplicates on a rerun, so it is not used). Recordings must be readable at the same
path on every node (shared storage), and fieldmon must be installed on every node.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fieldmon.model.loading import PRECISIONS
from fieldmon.model.metadata import DEFAULT_MODEL
from fieldmon.outputs.store import META_DIR
from fieldmon.scan.discovery import Recording
from fieldmon.scan.decoding import DecodedFile, decode_windows
from fieldmon.scan.stages import ScanCollector, ScanSettings, WindowPredictions, past
from fieldmon.signals import StopRequest

# Ray's sockets live under its temp dir and a Unix socket path may not exceed 107 bytes;
# Ray adds about 63 characters (session folder, sockets/plasma_store).
_MAX_TEMP_DIR = 44
_DECODE_CPUS = 0.25  # decoding is ~1/50 of the model's work; a small share lets several run per free CPU
_DONE = -1  # the start of the row that closes a file and carries what decoding learnt about it


@dataclass(frozen=True)
class Placement:
    actors: int
    actor_cpus: float
    actor_gpus: int
    torch_threads: int
    device: str


def run_on_ray(todo: list[Recording], model: str | Path, settings: ScanSettings, options, collector: ScanCollector,
               out: Path, deadline: float | None) -> None:
    if not todo:
        return
    ray = _import_ray()
    _connect(ray, options.ray, out)
    try:
        placement = plan_placement(ray.cluster_resources(), options)
        fs = collector.bundle.feature_settings
        window, hop = fs.window_samples, round(settings.hop_seconds * fs.sample_rate)
        items = [{"recording": DecodedFile(r).to_json()} for r in todo]
        # Ray workers do not share the driver's working directory
        model_ref = str(model) if str(model) == DEFAULT_MODEL else str(Path(model).resolve())
        dataset = (
            ray.data.from_items(items, override_num_blocks=min(len(items), 1000))
            .map_batches(_decode_files, batch_size=1, batch_format="numpy", num_cpus=_DECODE_CPUS,
                         fn_kwargs={"sample_rate": fs.sample_rate, "window": window, "hop": hop, "settings": settings})
            .map_batches(_ModelActor, batch_size=options.batch_size, batch_format="numpy",
                         compute=ray.data.ActorPoolStrategy(size=placement.actors),
                         num_cpus=placement.actor_cpus, num_gpus=placement.actor_gpus,
                         fn_constructor_kwargs={"model": model_ref, "precision": options.precision,
                                                "device": placement.device, "threads": placement.torch_threads,
                                                "embeddings": settings.embeddings})
        )
        has_scores = collector.bundle.open_set is not None
        with StopRequest() as stop:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                _deliver(batch, collector, has_scores)
                if stop.requested or past(deadline):
                    collector.summary.interrupted = True
                    break
    finally:
        ray.shutdown()


def _import_ray():
    # Before Ray is imported: no usage reports from field servers, which are often offline.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ValueError("--engine ray needs Ray: pip install 'fieldmon[ray]'") from exc
    return ray


def _connect(ray, ray_options, out: Path) -> None:
    if ray_options.address:
        ray.init(address=ray_options.address, logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=ray_options.num_cpus, include_dashboard=False, logging_level=logging.WARNING,
                 object_store_memory=int(ray_options.object_store_gb * 2**30),
                 _temp_dir=ray_options.temp_dir or default_temp_dir(out))
    # fieldmon reports progress itself, and cron logs stay readable without Ray Data's
    # progress bars and per-dataset notices; its warnings and errors still show.
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ray.data.DataContext.get_current().enable_progress_bars = False


def default_temp_dir(out: Path) -> str:
    """OUT/_fieldmon/ray when that path is short enough for Ray's sockets, else a
    per-user folder in the system's temp dir."""
    under_output = (Path(out).resolve() / META_DIR / "ray").as_posix()
    if len(under_output) <= _MAX_TEMP_DIR:
        return under_output
    return os.path.join(tempfile.gettempdir(), f"fieldmon-ray-{os.getuid()}")


def plan_placement(resources: dict, options) -> Placement:
    """Actors for the model: one per GPU when the cluster has GPUs; on CPUs, a pool
    that leaves a quarter of the CPUs to decoding, because an actor pool that takes
    every CPU starves the decode tasks and the job hangs without an error."""
    cpus, gpus = float(resources.get("CPU", 0)), int(resources.get("GPU", 0))
    ray_options = options.ray
    if gpus and options.device != "cpu" and PRECISIONS.get(options.precision) in ("any", "cuda"):
        return Placement(ray_options.actors or gpus, ray_options.actor_cpus or 1.0, 1, 1, "cuda")
    if PRECISIONS.get(options.precision) == "cuda":
        raise ValueError(f"--precision {options.precision} runs on GPUs: the Ray cluster has none, "
                         "or --device cpu was given")
    if options.device not in ("auto", "cpu"):
        raise ValueError(f"--device {options.device} asked for, but the Ray cluster has no GPUs")
    actor_cpus = ray_options.actor_cpus or (max(0.5, cpus - 0.5) if cpus <= 4 else 4.0)
    actors = ray_options.actors or max(1, int(cpus * 0.75 // actor_cpus))
    if actors * actor_cpus > cpus - _DECODE_CPUS:
        raise ValueError(
            f"{actors} model actors of {actor_cpus:g} CPUs leave no CPU for decoding on a cluster of {cpus:g} CPUs; "
            "use fewer --ray-actors or smaller --ray-actor-cpus")
    return Placement(actors, actor_cpus, 0, max(1, math.ceil(actor_cpus)), "cpu")


def _decode_files(batch: dict, sample_rate: int, window: int, hop: int, settings: ScanSettings):
    """Ray task: windows of each recording, then one closing row per recording."""
    tz = settings.zone()
    for text in batch["recording"]:
        decoded = DecodedFile.from_json(text)
        relative = decoded.recording.relative
        for windows in decode_windows(decoded, sample_rate, window, hop, settings.channel, tz):
            n = len(windows.starts)
            yield {"path": np.full(n, relative, object), "start": windows.starts, "partial": windows.partial,
                   "samples": windows.samples, "decoded": np.full(n, "", object)}
        yield {"path": np.array([relative], object), "start": np.array([_DONE], np.int64),
               "partial": np.zeros(1, bool), "samples": np.zeros((1, window), np.float32),
               "decoded": np.array([decoded.to_json()], object)}


class _ModelActor:
    """Ray actor: holds the model and runs the shared predictor on window batches."""

    def __init__(self, model: str, precision: str, device: str, threads: int, embeddings: bool) -> None:
        import torch

        from fieldmon.model.loading import load_model
        from fieldmon.scan.predictor import WindowPredictor

        torch.set_num_threads(threads)
        self.predictor = WindowPredictor(load_model(model, precision), torch.device(device))
        bundle = self.predictor.bundle
        self.classes = len(bundle.class_names)
        # a fixed set of columns in every batch, so that Ray can concatenate them
        self.embedding_dim = bundle.network.settings.embedding_dim if embeddings and bundle.network.is_embedding else 0

    def __call__(self, batch: dict) -> dict:
        windows = batch["start"] != _DONE
        n = len(windows)
        probabilities = np.zeros((n, self.classes), np.float32)
        scores = np.full(n, np.nan, np.float32)
        embeddings = np.zeros((n, self.embedding_dim), np.float32)
        if windows.any():
            predictions = self.predictor(batch["samples"][windows])
            probabilities[windows] = predictions.probabilities
            if predictions.open_set_scores is not None:
                scores[windows] = predictions.open_set_scores
            if self.embedding_dim:
                embeddings[windows] = predictions.embeddings
        out = {name: batch[name] for name in ("path", "start", "partial", "decoded")}
        out.update(probabilities=probabilities, open_set_score=scores)
        if self.embedding_dim:
            out["embedding"] = embeddings
        return out


def _deliver(batch: dict, collector: ScanCollector, has_scores: bool) -> None:
    """Hands one batch of actor output to the collector, file by file."""
    starts = batch["start"]
    closing = starts == _DONE
    for text in batch["decoded"][closing]:
        collector.file_decoded(DecodedFile.from_json(text))
    windows = np.flatnonzero(~closing)
    if not len(windows):
        return
    paths = batch["path"][windows]
    for relative in dict.fromkeys(paths.tolist()):
        rows = windows[paths == relative]
        predictions = WindowPredictions(
            batch["probabilities"][rows], batch["open_set_score"][rows] if has_scores else None,
            batch["embedding"][rows] if "embedding" in batch else None)
        collector.add_windows(relative, starts[rows], batch["partial"][rows], predictions)
