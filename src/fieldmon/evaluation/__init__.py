"""Evaluation: scores for window and file predictions, with open-set rejection."""
