"""The Python API without the scan pipeline: one file's windows, features and predictions.

    python examples/python_api.py [AUDIO_FILE] [MODEL]
"""

import sys
from pathlib import Path

from fieldmon import FeatureExtractor, load_model
from fieldmon.audio import cut_windows, load_audio

path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "recordings" / "Grylluscampestris.flac"
model = load_model(sys.argv[2] if len(sys.argv) > 2 else "default")
settings = model.feature_settings  # features must be computed with the model's own settings

samples = load_audio(path, settings.sample_rate)  # mono float32, resampled with soxr
windows = cut_windows(samples, settings.window_samples, hop=settings.window_samples)
features = FeatureExtractor(settings)(windows.samples)  # [windows, 3, 40, 200]
prediction = model.predict(features, settings)

known = model.open_set.is_known(prediction.open_set_scores)  # open-set rejection with the model's threshold
for start, probs, score, is_known in zip(windows.starts, prediction.probabilities, prediction.open_set_scores, known):
    best = int(probs.argmax())
    label = model.class_names[best] if is_known else "unknown"
    print(f"{start / settings.sample_rate:5.1f} s  {label:<28} p={float(probs[best]):.2f}  open-set score={float(score):.3f}")
