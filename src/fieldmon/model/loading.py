"""Loading a model bundle at a precision.

A bundle (fieldmon.model.bundle) holds fp32 torch networks and knows nothing of
other precisions. Each of them wraps a loaded bundle from outside by replacing its
convolutional trunk, so a new precision is a module of its own and a line here:

    fp32        the bundle as loaded (any device)
    fp32-onnx   the fp32 trunk on ONNX Runtime, same numbers (fieldmon.model.int8; CPU)
    int8        the bundle's quantised trunk on ONNX Runtime (fieldmon.model.int8; CPU)
    bf16, fp16  the trunk under torch.autocast (fieldmon.model.autocast; GPU)
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from fieldmon.model.metadata import BundleError

if TYPE_CHECKING:
    from fieldmon.features import FeatureSettings
    from fieldmon.model.bundle import ModelBundle

# precision -> the device type it runs on ("any": whatever the scan uses). Importing
# this module costs nothing (the command line reads it for its --help).
PRECISIONS = {"fp32": "any", "fp32-onnx": "cpu", "int8": "cpu", "bf16": "cuda", "fp16": "cuda"}


def model_identity(model: str | os.PathLike = "default", precision: str = "fp32") -> tuple[str, FeatureSettings]:
    """The id that :func:`load_model` will give the bundle, and its feature settings,
    from model.json alone: no torch, no weights (a scan plans its work with them while
    it loads the model)."""
    from fieldmon.features import FeatureSettings
    from fieldmon.model.metadata import INT8_SUFFIX, read_metadata, resolve_model_path

    _check_precision(precision)
    meta = read_metadata(resolve_model_path(model))
    suffix = INT8_SUFFIX if precision == "int8" else ""
    try:
        return meta["model_id"] + suffix, FeatureSettings.from_dict(meta["feature_settings"])
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{model}: its feature settings cannot be read ({exc})") from exc


def load_model(model: str | os.PathLike = "default", precision: str = "fp32") -> ModelBundle:
    """The bundle at ``model`` (a directory, or "default" for the shipped model), its
    trunk run at ``precision``."""
    from fieldmon.model.bundle import ModelBundle
    from fieldmon.model.metadata import resolve_model_path

    _check_precision(precision)
    path = resolve_model_path(model)
    bundle = ModelBundle.load(path)
    if precision == "fp32":
        return bundle
    if precision == "fp32-onnx":
        from fieldmon.fileio import user_cache_dir
        from fieldmon.model.int8 import with_onnx_fp32_trunk

        return with_onnx_fp32_trunk(bundle, user_cache_dir() / "onnx")
    if precision == "int8":
        from fieldmon.model.int8 import with_int8_trunk

        return with_int8_trunk(bundle, path)
    from fieldmon.model.autocast import with_autocast_trunk

    return with_autocast_trunk(bundle, precision)


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
