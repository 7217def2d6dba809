"""What a WAV file's header says against what the file holds.

Field recorders write a WAV header first and fill in the data chunk's length when they
close the file. Two failures follow, and libsndfile hides both:

- **Unfinished**: the recorder lost power (or its card was pulled) before closing the
  file, so the header still says the data chunk is empty, or gives the length it had
  when the header was last written. A RIFF length also wraps past 4 GiB. libsndfile reads
  only what the header says: nothing at all ("no audio samples"), or the first part.
  :func:`unfinished_data` finds the audio that follows, and :func:`open_unfinished` reads
  it as raw samples.
- **Cut short**: the header promises more audio than the file holds (a full card, an
  interrupted copy). libsndfile reads what is there without a word.
  :func:`header_note` says so, so that the shortfall is not taken for a quiet night.

Telling them apart reads only the chunk headers (a few hundred bytes), never the audio.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass

import soundfile as sf

WAVE_FORMAT_PCM, WAVE_FORMAT_IEEE_FLOAT, WAVE_FORMAT_EXTENSIBLE = 1, 3, 0xFFFE
UNKNOWN_LENGTH = 0xFFFFFFFF  # written by streaming writers; libsndfile reads to the end
_SUBTYPES = {(WAVE_FORMAT_PCM, 8): "PCM_U8", (WAVE_FORMAT_PCM, 16): "PCM_16", (WAVE_FORMAT_PCM, 24): "PCM_24",
             (WAVE_FORMAT_PCM, 32): "PCM_32", (WAVE_FORMAT_IEEE_FLOAT, 32): "FLOAT",
             (WAVE_FORMAT_IEEE_FLOAT, 64): "DOUBLE"}
_MAX_CHUNKS = 64  # a header walk that finds no data chunk by then is not a recorder's file
# Bytes past a data chunk's stated end that are not another chunk are read as audio only
# from this much on: less is more likely padding or a tag than a recording.
_STALE_MIN_SECONDS = 1.0


@dataclass(frozen=True)
class WavLayout:
    """The header's format and where its data chunk lies."""

    format_tag: int
    channels: int
    sample_rate: int
    bits: int
    block_align: int
    data_offset: int  # of the first audio byte
    declared_bytes: int  # the data chunk's length as the header gives it
    # Bytes from data_offset that can be audio: to the end of the file, or the declared
    # length where another chunk follows it.
    available_bytes: int

    @property
    def subtype(self) -> str | None:
        """soundfile's name for the sample format, or None where fieldmon cannot read it raw."""
        return _SUBTYPES.get((self.format_tag, self.bits))

    def seconds(self, nbytes: int) -> float:
        return nbytes / (self.block_align * self.sample_rate)


def read_wav_layout(path: str | os.PathLike) -> WavLayout | None:
    """The layout of a RIFF/WAVE file's header, or None for any other file or a header
    this walk cannot follow (libsndfile then judges the file on its own)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            riff = f.read(12)
            if riff[:4] != b"RIFF" or riff[8:] != b"WAVE":
                return None
            fmt = None
            for _ in range(_MAX_CHUNKS):
                head = f.read(8)
                if len(head) < 8:
                    return None
                chunk, length = head[:4], struct.unpack("<I", head[4:])[0]
                if chunk == b"data":
                    if fmt is None:
                        return None
                    offset = f.tell()
                    available = size - offset
                    end = offset + length + (length & 1)
                    if end < size and f.seek(end) == end and _is_chunk_header(f.read(8), size - end):
                        available = length  # another chunk follows: the stated length is right
                    return WavLayout(*fmt, data_offset=offset, declared_bytes=length, available_bytes=available)
                if chunk == b"fmt " and 16 <= length <= 256:
                    fmt = _format(f.read(length))
                else:
                    f.seek(length + (length & 1), os.SEEK_CUR)
    except OSError:
        return None
    return None


def _is_chunk_header(head: bytes, room: int) -> bool:
    return (len(head) == 8 and all(32 <= c < 127 for c in head[:4])
            and struct.unpack("<I", head[4:])[0] <= room - 8)


def _format(body: bytes) -> tuple[int, int, int, int, int] | None:
    tag, channels, rate, _, block_align, bits = struct.unpack("<HHIIHH", body[:16])
    if tag == WAVE_FORMAT_EXTENSIBLE and len(body) >= 26:
        tag = struct.unpack("<H", body[24:26])[0]  # the sub-format GUID starts with the plain tag
    if not channels or not rate or not block_align:
        return None
    return tag, channels, rate, bits, block_align


def unfinished_data(layout: WavLayout | None) -> bool:
    """Whether audio follows the data chunk's stated end (the header says it is empty, or
    shorter than the audio after it), in a sample format that can be read raw."""
    if layout is None or layout.subtype is None or layout.declared_bytes == UNKNOWN_LENGTH:
        return False
    extra = layout.available_bytes - layout.declared_bytes
    if layout.declared_bytes == 0:
        return extra >= layout.block_align
    return extra >= layout.block_align * layout.sample_rate * _STALE_MIN_SECONDS


def header_note(path: str | os.PathLike) -> str | None:
    """What the header says that a reader of the audio would not notice, or None."""
    layout = read_wav_layout(path)
    if layout is None:
        return None
    if unfinished_data(layout):
        frames = layout.available_bytes // layout.block_align
        follow = f"{frames / layout.sample_rate:.1f} s of it follow"
        if layout.declared_bytes == 0:
            return (f"the header says the recording holds no audio, but {follow}: an unfinished file (did the "
                    "recorder lose power before closing it?), read to its end")
        return (f"the header says the recording holds {layout.seconds(layout.declared_bytes):.1f} s of audio, but "
                f"{follow}: an unfinished file (did the recorder lose power before it last wrote the header?) or "
                "one over 4 GiB, whose length no longer fits the header; read to its end")
    if layout.declared_bytes != UNKNOWN_LENGTH and layout.declared_bytes > layout.available_bytes:
        return (f"cut short: the header promises {layout.seconds(layout.declared_bytes):.1f} s but the file ends "
                f"after {layout.seconds(layout.available_bytes):.1f} s (a full card, an interrupted copy, "
                "or lost power?)")
    return None


class _DataChunk(io.RawIOBase):
    """The bytes of a file from ``offset`` on, as a file of their own."""

    def __init__(self, path: str | os.PathLike, offset: int) -> None:
        self._file = open(path, "rb")
        self._offset = offset
        self._file.seek(offset)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self._file.readinto(buffer)

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        return self._file.seek(pos + self._offset if whence == os.SEEK_SET else pos, whence) - self._offset

    def tell(self) -> int:
        return self._file.tell() - self._offset

    def close(self) -> None:
        self._file.close()
        super().close()


class _RawSound(sf.SoundFile):
    """A SoundFile that closes the data chunk it reads when it is closed."""

    def close(self) -> None:
        super().close()
        chunk = getattr(self, "data_chunk", None)  # absent when opening failed
        if chunk is not None:
            chunk.close()


def open_unfinished(path: str | os.PathLike, layout: WavLayout) -> sf.SoundFile:
    """The samples after an unfinished header (:func:`unfinished_data`), read raw in the
    header's format, whole frames only."""
    chunk = _DataChunk(path, layout.data_offset)
    try:
        sound = _RawSound(chunk, format="RAW", samplerate=layout.sample_rate, channels=layout.channels,
                          subtype=layout.subtype, endian="LITTLE")
    except BaseException:
        chunk.close()
        raise
    sound.data_chunk = chunk
    return sound
