"""Training: labelled clips -> cached features -> dynamic triplet loss (or the
cross-entropy baseline) -> MLP classifier -> open-set calibration -> model bundle."""
