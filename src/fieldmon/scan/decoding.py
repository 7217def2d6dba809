"""Decoding: one recording -> batches of 2 s windows at the model's rate, and what was
learnt about the file on the way (recorder time and site, sample rate, errors).

Shared by every engine, and free of torch, so that a scan's feature processes
(``feature_workers``) start without it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

from fieldmon.audio import (SILENT_STRETCH_SECONDS, AudioReadError, StreamEnd, WindowBatch, open_sound,
                            stream_windows)
from fieldmon.recorder import RecorderInfo, recorder_info
from fieldmon.scan.discovery import Recording
from fieldmon.wav_header import header_note


@dataclass
class DecodedFile:
    """What decoding learnt about one recording besides its windows."""

    recording: Recording
    info: RecorderInfo | None = None
    sample_rate: int | None = None
    channels: int | None = None
    windows: int = 0
    decoded_samples: int | None = None  # at the model's rate; set once the end was reached
    error: str | None = None
    # Read to the end, but a sign of a broken recorder: kept in the per-file table's error
    # column, because its windows are silence and would pass for "nothing detected".
    warning: str | None = None
    silent_seconds: float = 0.0  # no recording: see fieldmon.audio.SILENT_STRETCH_SECONDS

    def to_json(self) -> str:
        info = None if self.info is None else {
            "local_start": _iso(self.info.local_start), "utc_start": _iso(self.info.utc_start),
            "site": self.info.site, "time_source": self.info.time_source}
        rec = self.recording
        return json.dumps({"recording": [str(rec.path), rec.relative, rec.size, rec.mtime_ns], "info": info,
                           "sample_rate": self.sample_rate, "channels": self.channels, "windows": self.windows,
                           "decoded_samples": self.decoded_samples, "error": self.error,
                           "warning": self.warning, "silent_seconds": self.silent_seconds})

    @classmethod
    def from_json(cls, text: str) -> DecodedFile:
        d = json.loads(text)
        path, relative, size, mtime_ns = d.pop("recording")
        info = d.pop("info")
        if info is not None:
            info = RecorderInfo(_from_iso(info["local_start"]), _from_iso(info["utc_start"]), info["site"],
                                info["time_source"])
        return cls(Recording(Path(path), relative, size, mtime_ns), info, **d)


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _from_iso(text: str | None) -> dt.datetime | None:
    return None if text is None else dt.datetime.fromisoformat(text)


def file_warning(path: Path, end: StreamEnd) -> str | None:
    """What a person should know about a file that was read to the end: its header
    disagrees with its length (fieldmon.wav_header), or it holds no usable signal."""
    notes = [note for note in (header_note(path), signal_warning(end)) if note]
    return "; ".join(notes) or None


def signal_warning(end: StreamEnd) -> str | None:
    """Why a file read to the end holds no usable signal, or None."""
    if end.nonfinite:
        share = "all" if end.nonfinite == end.read else f"{end.nonfinite} of"
        return (f"{share} {end.read} samples are not numbers (NaN or infinite) and were read as silence: "
                "a damaged file or a faulty recorder")
    if not end.heard:
        return "every sample is zero (digital silence): a dead microphone or a muted input?"
    if end.silent:
        return (f"{end.silent} of {end.read} samples lie in stretches of {SILENT_STRETCH_SECONDS:g} s or more of "
                "digital silence (every sample zero): a microphone that cut out or a muted input? Not counted "
                "as recorded")
    return None


def decode_windows(decoded: DecodedFile, sample_rate: int, window: int, hop: int, channel: int | None,
                   tz: ZoneInfo | None, stopped=lambda: False, batch: int = 64) -> Iterator[WindowBatch]:
    """Batches of windows of ``decoded.recording`` at the model's rate; fills in
    ``decoded`` as it goes. A file that cannot be read ends the stream with
    ``decoded.error`` set; it never raises, because one bad file must never stop a
    run over thousands."""
    rec = decoded.recording
    try:
        with open_sound(rec.path) as sound:
            decoded.sample_rate, decoded.channels = sound.samplerate, sound.channels
        decoded.info = recorder_info(rec.path, tz)
        stream = stream_windows(rec.path, sample_rate, window, hop, channel, batch=batch)
        while not stopped():
            try:
                windows = next(stream)
            except StopIteration as stop:
                end: StreamEnd = stop.value
                decoded.decoded_samples = end.samples
                decoded.silent_seconds = (end.silent if end.heard else end.read) / decoded.sample_rate
                if end.samples == 0:
                    decoded.error = "the file holds no audio samples"
                else:
                    decoded.warning = file_warning(rec.path, end)
                return
            decoded.windows += len(windows.starts)
            yield windows
        decoded.error = "the scan stopped before the end of the file"
    except AudioReadError as exc:
        decoded.error = exc.problem
    except Exception as exc:
        decoded.error = f"cannot decode audio ({type(exc).__name__}: {exc})"
