"""Scan a folder with the shipped default model and read the detections with pandas.

    python examples/scan_and_read.py [RECORDINGS] [OUT]

Defaults: examples/recordings and detections.parquet in the current folder.
"""

import sys
from pathlib import Path

import pandas as pd

from fieldmon.scan import scan

recordings = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "recordings"
out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("detections.parquet")

summary = scan(recordings, out)  # model="default": the model shipped with fieldmon
print(f"{summary.files_ok} files scanned, {summary.files_failed} failed, {summary.rows} new windows")

detections = pd.read_parquet(out)  # one row per 2 s window
effort = pd.read_parquet(out.with_name(out.stem + ".files.parquet"))  # one row per file

# The label of each file's windows ("unknown": open-set rejection, a sound the model does not know).
per_file = detections.groupby(["path", "label"]).size().rename("windows").reset_index()
print(per_file.to_string(index=False))
print(effort[["path", "status", "duration_s", "windows"]].to_string(index=False))
