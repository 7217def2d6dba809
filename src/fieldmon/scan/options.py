"""How a scan runs (not what it writes: that is ``ScanSettings``). Free of torch and
pyarrow, so that ``fieldmon scan`` can decide on feature processes and start them first."""

from __future__ import annotations

from dataclasses import dataclass, field

from fieldmon.model.loading import PRECISIONS


@dataclass
class RayOptions:
    """Where and how the Ray engine runs; see ``fieldmon.scan.ray_engine``."""

    address: str | None = None  # None: start a private local instance
    num_cpus: int | None = None  # of that local instance; None: all
    temp_dir: str | None = None  # of that local instance; None: OUT/_fieldmon/ray when short enough
    object_store_gb: float = 1.0  # of that local instance
    actors: int | None = None  # model actors; None: one per GPU, or from the CPUs
    actor_cpus: float | None = None  # CPUs reserved per CPU actor; None: chosen from the cluster


@dataclass
class RunOptions:
    device: str = "auto"
    batch_size: int | None = None  # None: default_batch_size(device)
    workers: int | None = None  # feature processes, or decoding threads; None: default_workers
    feature_processes: bool | None = None  # None: uses_feature_processes decides
    commit_every_files: int = 200
    commit_every_seconds: float = 60.0
    keep_freed_memory: bool = False
    precision: str = "fp32"  # "int8", "fp32-onnx": the trunk on ONNX Runtime, CPU only (fieldmon.model.int8)
    time_limit_s: float | None = None  # stop cleanly after this long; finished files are kept
    engine: str = "local"  # or "ray"
    ray: RayOptions = field(default_factory=RayOptions)


def uses_feature_processes(options: RunOptions) -> bool:
    """Whether a scan computes its features in feature processes: as asked
    (``options.feature_processes``), or by default for the precisions that run the
    network on ONNX Runtime (fp32-onnx, int8). On the 2-core dev CPU those scanned 12
    files of 10 min as fast as before and a single file 1.3 s sooner (the processes start
    while the model loads); the torch fp32 network, on the one core they leave, was the
    slower stage, and 12 files took 35 s against 28 s with the features in the scan's
    own process (README, "Speed")."""
    if options.engine != "local":
        return False
    if options.feature_processes is not None:
        return options.feature_processes
    return PRECISIONS.get(options.precision) == "cpu"
