"""Provenance: every output says which fieldmon, model and settings produced it."""

from __future__ import annotations

import datetime as dt
import platform
import shlex
import sys

import torch

from fieldmon import __version__


def provenance(**extra) -> dict:
    return {
        "fieldmon_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["fieldmon", *sys.argv[1:]]) if sys.argv and sys.argv[0].endswith("fieldmon") else shlex.join(sys.argv),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        **extra,
    }
