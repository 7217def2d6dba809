"""A model bundle's description (model.json), read without torch: what a scan needs
to plan its work (model id, feature settings) before it loads any weights."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

FORMAT = "fieldmon-model"
FORMAT_VERSION = 1
JSON_NAME = "model.json"
WEIGHTS_NAME = "model.safetensors"
DEFAULT_MODEL = "default"
UNKNOWN = "unknown"  # the label of windows the open set rejects
INT8_SUFFIX = "+int8"  # of the model id of a bundle run with its int8 trunk

PICKLE_SIGNATURES = (b"\x80", b"PK\x03\x04")  # pickle protocol 2+, torch.save zip archives


class BundleError(Exception):
    """A model bundle that cannot be used, with the reason."""


def read_metadata(directory: Path) -> dict:
    """model.json of a bundle, checked for format and version, without loading weights."""
    if not directory.exists():
        raise BundleError(f"{directory}: no such model directory")
    if directory.is_file():
        with open(directory, "rb") as fh:
            head = fh.read(4)
        hint = ""
        if head.startswith(PICKLE_SIGNATURES):
            hint = " It looks like a pickled PyTorch checkpoint; fieldmon never unpickles model files."
        raise BundleError(
            f"{directory}: is a file; a fieldmon model is a directory holding {JSON_NAME} and {WEIGHTS_NAME}.{hint}"
        )
    path = directory / JSON_NAME
    if not path.is_file():
        raise BundleError(f"{directory}: not a fieldmon model ({JSON_NAME} is missing)")
    try:
        meta = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BundleError(f"{path}: not a fieldmon model description (format is not {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{path}: model format version {meta.get('format_version')!r}; "
            f"this fieldmon reads version {FORMAT_VERSION}"
        )
    required = ("model_id", "name", "loss", "class_names", "feature_settings", "network_settings",
                "classifier", "open_set", "weights_sha256")
    missing = [k for k in required if k not in meta]
    if missing:
        raise BundleError(f"{path}: missing fields {', '.join(missing)}")
    return meta


def resolve_model_path(model: str | os.PathLike) -> Path:
    """A path, or "default" for the model shipped inside the package."""
    if str(model) == DEFAULT_MODEL and not Path(model).exists():
        path = Path(str(resources.files("fieldmon") / "models" / DEFAULT_MODEL))
        if not path.exists():
            raise BundleError(
                f"the default model is not installed with this copy of fieldmon ({path}); "
                "pass --model DIR with a model trained by `fieldmon train`"
            )
        return path
    return Path(model)
