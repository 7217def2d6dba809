"""Outputs: the crash-safe Parquet store of detections and the per-file table."""
