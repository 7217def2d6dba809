"""Whether a model is preliminary: its validation score against the project's target,
and what its model card says. Shared by ``fieldmon info`` and the survey report."""

from __future__ import annotations

import re
from pathlib import Path

# The project's target for validation macro-F1 per file (README); a model below it is
# preliminary whatever its card says.
TARGET_FILE_MACRO_F1 = 0.75
_SAYS_PRELIMINARY = re.compile(r"status\W*preliminary|^#.*\bpreliminary\b", re.IGNORECASE | re.MULTILINE)


def preliminary_card(path: Path) -> str | None:
    """The name of the model card that calls the bundle at ``path`` preliminary, if any:
    README.md in the bundle, or models/README.md beside a models/default link to it (the
    shipped default in a source checkout; an installed wheel carries no card)."""
    path = Path(path).resolve()
    cards = {"README.md in the bundle": path / "README.md"}
    for parent in path.parents:
        if (parent / "models" / "default").resolve() == path:
            cards["models/README.md"] = parent / "models" / "README.md"
            break
    for name, card in cards.items():
        if card.is_file() and _SAYS_PRELIMINARY.search(card.read_text(encoding="utf-8", errors="replace")):
            return name
    return None


def preliminary_reasons(metrics: dict, path: Path) -> list[str]:
    """Why the bundle at ``path`` with these metrics is preliminary; empty if it is not."""
    reasons = []
    card = preliminary_card(path)
    if card:
        reasons.append(f"its model card ({card}) says so")
    f1 = validation_file_macro_f1(metrics)
    if f1 is not None and f1 < TARGET_FILE_MACRO_F1:
        reasons.append(f"validation macro-F1 per file {f1:.3f} is below the {TARGET_FILE_MACRO_F1} target")
    return reasons


def validation_file_macro_f1(metrics: dict) -> float | None:
    f1 = (metrics.get("validation") or {}).get("file_macro_f1") if isinstance(metrics, dict) else None
    return float(f1) if isinstance(f1, (int, float)) else None
