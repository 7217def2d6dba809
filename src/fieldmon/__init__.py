"""fieldmon: species detections from passive acoustic recordings.

Data flow: audio (decode, resample, windows) -> features (HPSS-Mel) -> model
(multiscale CNN embedding, MLP classifier, open-set rejection) -> outputs.
"""

__version__ = "0.1.0"

from fieldmon.features import FeatureExtractor, FeatureSettings, compute_features  # noqa: E402
from fieldmon.model.bundle import BundleError, ModelBundle, load_model  # noqa: E402

__all__ = [
    "__version__",
    "BundleError",
    "FeatureExtractor",
    "FeatureSettings",
    "ModelBundle",
    "compute_features",
    "load_model",
]
