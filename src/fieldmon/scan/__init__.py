"""Scanning: recordings in, per-window detections out."""

from fieldmon.scan.pipeline import RayOptions, RunOptions, ScanSettings, ScanSummary, scan

__all__ = ["RayOptions", "RunOptions", "ScanSettings", "ScanSummary", "scan"]
