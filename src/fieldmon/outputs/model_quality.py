"""How good the model behind a scan is, from its bundle's validation scores and card."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fieldmon.model.card import preliminary_reasons, validation_file_macro_f1
from fieldmon.outputs.tables import ScanOutput

@dataclass(frozen=True)
class ModelQuality:
    status: str  # "ok", "preliminary" or "unknown"
    text: str  # one sentence for the report
    file_macro_f1: float | None = None


def _shipped_default_dir() -> Path:
    from fieldmon.model.metadata import resolve_model_path

    return resolve_model_path("default")


def _scan_model_id(output: ScanOutput) -> str | None:
    model_id = output.metadata.get("model_id")
    if not model_id and "model_id" in output.detections and len(output.detections):
        ids = output.detections["model_id"].dropna().unique()
        model_id = ids[0] if len(ids) == 1 else None
    return str(model_id) if model_id else None


def model_quality(output: ScanOutput, model: str | os.PathLike | None = None) -> ModelQuality:
    """How good the model that made the scan is, from its bundle's model.json and card.

    The scan records only the model's id; the bundle is looked for at ``model`` (a
    bundle directory) and as the shipped default model, and used when its id is the
    scan's (fieldmon.model.card says when it is preliminary)."""
    from fieldmon.model.metadata import BundleError, read_metadata

    scan_id = _scan_model_id(output)
    if scan_id is None:
        return ModelQuality("unknown", "The scan does not record which model made it, so the model's quality is unknown.")
    candidates = [Path(model)] if model is not None else []
    try:
        candidates.append(_shipped_default_dir())
    except (BundleError, OSError):
        pass
    for path in candidates:
        try:
            card = read_metadata(path)
        except (BundleError, OSError, ValueError):
            continue
        if card.get("model_id") == scan_id:
            return _judge(scan_id, card.get("metrics") or {}, path)
    looked = "the shipped default model" + (f" and {model}" if model is not None else "")
    return ModelQuality("unknown", f"The model {scan_id} was not found (looked in {looked}), so its quality is "
                                   "unknown: check its validation scores before relying on these detections.")


def _judge(model_id: str, metrics: dict, path: Path) -> ModelQuality:
    f1 = validation_file_macro_f1(metrics)
    reasons = preliminary_reasons(metrics, path)
    if reasons:
        return ModelQuality("preliminary", f"The model {model_id} is preliminary: " + "; ".join(reasons) + ". "
                            "Treat its labels as suggestions to verify by listening (fieldmon clips), "
                            "not as confirmed detections.", f1)
    if f1 is None:
        return ModelQuality("unknown", f"The model {model_id} records no validation macro-F1 per file, so its "
                                       "quality is unknown: verify its labels before relying on them.")
    return ModelQuality("ok", f"validation macro-F1 per file {f1:.3f}", f1)
