"""Scanning: recordings in, per-window detections out."""

from fieldmon.scan.pipeline import ScanSettings, ScanSummary, scan

__all__ = ["ScanSettings", "ScanSummary", "scan"]
