"""fieldmon: species detections from passive acoustic recordings.

Data flow: audio (decode, resample, windows) -> features (HPSS-Mel) -> model
(multiscale CNN embedding, MLP classifier, open-set rejection) -> outputs.
"""

__version__ = "0.1.0"

# The public names are imported on first use (PEP 562), so that `fieldmon --help` and
# `from fieldmon import __version__` do not pay for torch, numba and librosa.
_EXPORTS = {
    "FeatureExtractor": "fieldmon.feature_extractor",
    "FeatureSettings": "fieldmon.features",
    "compute_features": "fieldmon.feature_extractor",
    "BundleError": "fieldmon.model.metadata",
    "ModelBundle": "fieldmon.model.bundle",
    "load_model": "fieldmon.model.loading",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fieldmon' has no attribute {name!r}")


__all__ = [
    "__version__",
    "BundleError",
    "FeatureExtractor",
    "FeatureSettings",
    "ModelBundle",
    "compute_features",
    "load_model",
]
