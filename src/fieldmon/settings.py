"""Helpers shared by the frozen settings dataclasses that are persisted with their outputs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, TypeVar

T = TypeVar("T")


def settings_to_dict(settings: Any) -> dict[str, Any]:
    out = dataclasses.asdict(settings)
    # JSON has no tuples; lists round-trip through from_dict below.
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def settings_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build ``cls`` from a persisted dict, refusing unknown keys so that an edited
    or newer file is reported instead of silently half-read."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {', '.join(unknown)}")
    kwargs = {}
    for name, value in data.items():
        default = fields[name].default
        kwargs[name] = tuple(value) if isinstance(default, tuple) else value
    return cls(**kwargs)


def settings_fingerprint(data: dict[str, Any]) -> str:
    """Stable short hash of a settings object's dict, used as a cache key."""
    text = json.dumps(data, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
