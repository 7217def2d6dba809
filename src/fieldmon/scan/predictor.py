"""The model stage of a scan: features (unless computed already), network, classifier
and open-set scores of a batch of windows, on the scan's device."""

from __future__ import annotations

import numpy as np
import torch

from fieldmon.feature_extractor import FeatureExtractor
from fieldmon.model.bundle import ModelBundle
from fieldmon.scan.stages import WindowPredictions


class WindowPredictor:
    """Features, network, classifier and open-set scores for a batch of raw windows,
    on the bundle's device."""

    def __init__(self, bundle: ModelBundle, device: torch.device) -> None:
        self.bundle = bundle.to(device).eval()
        self.device = device
        self.features = FeatureExtractor(bundle.feature_settings, device)

    def __call__(self, windows: np.ndarray) -> WindowPredictions:
        x = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        with torch.inference_mode():
            return self._predict(self.features(x))

    def from_features(self, features: np.ndarray) -> WindowPredictions:
        """The same for windows whose features were computed elsewhere (feature processes)."""
        with torch.inference_mode():
            return self._predict(torch.from_numpy(features).to(self.device))

    def _predict(self, features: torch.Tensor) -> WindowPredictions:
        prediction = self.bundle.predict(features, self.bundle.feature_settings)
        return WindowPredictions(
            prediction.probabilities.float().cpu().numpy(),
            None if prediction.open_set_scores is None else prediction.open_set_scores.float().cpu().numpy(),
            None if prediction.embeddings is None else prediction.embeddings.float().cpu().numpy(),
        )
