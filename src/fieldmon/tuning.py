"""Where and how fast to run: device choice and process-level CPU settings."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_INT_MAX = 2**31 - 1


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory instead of returning it to the kernel.

    A training step allocates gigabytes of activations and frees them again. By
    default glibc serves such large blocks with mmap and unmaps them on free, so the
    next step page-faults every page back in, zero-filled: on the 2-core dev machine
    that system time made a 160-window step take ~63 s instead of ~34 s
    (benchmarks/train_step.py). The cost is a higher resident size, since freed
    blocks stay with the process. No-op (False) where libc is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    results = [mallopt(option, _INT_MAX) for option in (_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD)]
    results.append(mallopt(_M_TOP_PAD, 1 << 30))
    return all(r == 1 for r in results)


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when torch sees a GPU, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(device)


def describe_device(device: torch.device) -> str:
    """What a model was trained on, for its model.json: the GPU's name, or the CPU's
    model and the threads torch used."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    name = ""
    try:
        with open("/proc/cpuinfo") as fh:
            name = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        pass
    return f"cpu ({name + ', ' if name else ''}{torch.get_num_threads()} threads)"
