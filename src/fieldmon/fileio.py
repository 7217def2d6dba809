"""Small crash-safe file helpers shared by bundles, caches and checkpoints."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` so that ``path`` is either the old or the new file, never half of one."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    # os.open with 0o666 lets the umask decide, like any other file the user writes;
    # tempfile.mkstemp would leave models and outputs readable by their owner only.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def user_cache_dir() -> Path:
    """fieldmon's cache (features, exported graphs): $XDG_CACHE_HOME/fieldmon or ~/.cache/fieldmon."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fieldmon"
