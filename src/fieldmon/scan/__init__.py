"""Scanning: recordings in, per-window detections out."""

# Imported on first use (PEP 562): the feature processes import modules of this package
# (decoding, feature_workers) and must not pay for torch, which the pipeline imports.
_EXPORTS = ("RayOptions", "RunOptions", "ScanSettings", "ScanSummary", "scan")


def __getattr__(name: str):
    if name in _EXPORTS:
        from fieldmon.scan import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'fieldmon.scan' has no attribute {name!r}")


__all__ = list(_EXPORTS)
