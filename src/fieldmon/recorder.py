"""Recorder metadata: when a file started and which recorder or site made it.

Sources, in order of trust:
- GUANO metadata (a ``guan`` chunk in the WAV): ``Timestamp`` with its zone (or, without
  an offset, the recorder's local wall-clock time: source ``guano-local``).
- AudioMoth's WAV comment: "Recorded at 05:30:00 01/01/2024 (UTC) by AudioMoth 24F3...".
- AudioMoth file names ``20240101_053000.WAV``: UTC.
- Song Meter file names ``SITE_20240101_053000.wav``: the recorder's local wall-clock
  time, zone unknown unless ``--tz`` names it.

A time that cannot be known is None, never a guess (such as the file's mtime).
"""

from __future__ import annotations

import datetime as dt
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

AUDIOMOTH_NAME = re.compile(r"^(\d{8})_(\d{6})$")
SONGMETER_NAME = re.compile(r"^(?P<site>.+?)_(\d{8})_(\d{6})(?:_.*)?$")
AUDIOMOTH_COMMENT = re.compile(
    r"Recorded at (\d{2}):(\d{2}):(\d{2}) (\d{2})/(\d{2})/(\d{4}) \(UTC([+-]\d{1,2})?(?::?(\d{2}))?\)"
    r"(?: by AudioMoth ([0-9A-Fa-f]+))?"
)


# Sources that give the recorder's wall-clock time: their UTC time needs the zone (--tz).
# The others (guano, audiomoth-comment, audiomoth-name) carry UTC themselves.
LOCAL_TIME_SOURCES = frozenset({"songmeter-name", "guano-local"})


@dataclass(frozen=True)
class RecorderInfo:
    local_start: dt.datetime | None  # naive wall-clock time at the recorder
    utc_start: dt.datetime | None  # aware (UTC) when the zone is known
    site: str | None
    time_source: str | None  # guano | guano-local | audiomoth-comment | audiomoth-name | songmeter-name


def parse_zone(name: str) -> ZoneInfo:
    """The IANA zone ``name`` (e.g. Europe/Berlin); ValueError naming --tz otherwise."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"--tz {name!r} is not a known time zone (use an IANA name such as Europe/Berlin)") from None


def to_utc(local: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    """A recorder's wall-clock time in zone ``tz`` as an aware UTC time. A time that the
    clocks skip or repeat at a DST change takes the offset before the change (fold 0)."""
    return local.replace(tzinfo=tz).astimezone(dt.timezone.utc)


def to_local(utc: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    """An aware time as the naive wall-clock time of zone ``tz``."""
    return utc.astimezone(tz).replace(tzinfo=None)


def in_zone(time_source: str | None, local_start: dt.datetime | None, utc_start: dt.datetime | None,
            tz: ZoneInfo) -> tuple[dt.datetime | None, dt.datetime | None]:
    """(local, UTC) start of a file as a scan with ``tz`` gives it, from the times a scan
    with another zone (or none) stored: a wall-clock time gets its UTC time from ``tz``;
    a UTC time stays and gets its wall-clock time in ``tz``. This is how ``fieldmon
    retime`` changes the zone of an output without reading the recordings again."""
    if wall_clock_is_source(time_source, local_start, utc_start):
        return local_start, to_utc(local_start, tz)
    if utc_start is not None:
        return to_local(utc_start, tz), utc_start
    return local_start, utc_start


def wall_clock_is_source(time_source: str | None, local_start: dt.datetime | None,
                         utc_start: dt.datetime | None) -> bool:
    """Whether a file's time is the recorder's wall clock, its UTC time (if any) derived
    from a zone. Outputs written before the ``guano-local`` source existed call both GUANO
    kinds ``guano``; one with a local time but no UTC time can only be a wall-clock time
    (one scanned with --tz cannot be told apart, and is taken as UTC)."""
    return local_start is not None and (time_source in LOCAL_TIME_SOURCES or utc_start is None)


def _parse_stamp(day: str, clock: str) -> dt.datetime | None:
    try:
        return dt.datetime.strptime(day + clock, "%Y%m%d%H%M%S")
    except ValueError:
        return None  # e.g. month 13 or 25 o'clock: malformed, not a time


def from_name(path: Path, tz: ZoneInfo | None = None) -> RecorderInfo | None:
    stem = path.stem
    m = AUDIOMOTH_NAME.match(stem)
    if m:
        utc = _parse_stamp(m.group(1), m.group(2))
        if utc is None:
            return None
        utc = utc.replace(tzinfo=dt.timezone.utc)
        return RecorderInfo(to_local(utc, tz) if tz else None, utc, None, "audiomoth-name")
    m = SONGMETER_NAME.match(stem)
    if m:
        local = _parse_stamp(m.group(2), m.group(3))
        if local is None:
            return None
        return RecorderInfo(local, to_utc(local, tz) if tz else None, m.group("site"), "songmeter-name")
    return None


def read_wav_chunks(path: Path, wanted: tuple[bytes, ...] = (b"guan", b"ICMT", b"LIST"), limit: int = 1 << 20) -> dict:
    """Small metadata chunks of a RIFF/WAVE file, without reading the audio."""
    found: dict[bytes, bytes] = {}
    with open(path, "rb") as fh:
        header = fh.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return found
        while True:
            head = fh.read(8)
            if len(head) < 8:
                break
            cid, size = head[:4], struct.unpack("<I", head[4:])[0]
            if cid in wanted and size <= limit:
                data = fh.read(size)
                if cid == b"LIST" and data[:4] == b"INFO":
                    found.update(_info_subchunks(data[4:]))
                else:
                    found[cid] = data
            else:
                fh.seek(size, 1)
            if size % 2:
                fh.seek(1, 1)
    return found


def _info_subchunks(data: bytes) -> dict[bytes, bytes]:
    out, i = {}, 0
    while i + 8 <= len(data):
        cid, size = data[i : i + 4], struct.unpack("<I", data[i + 4 : i + 8])[0]
        out[cid] = data[i + 8 : i + 8 + size]
        i += 8 + size + (size % 2)
    return out


def from_guano(text: str, tz: ZoneInfo | None) -> RecorderInfo | None:
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    stamp = fields.get("Timestamp", "").strip()
    if not stamp:
        return None
    try:
        when = dt.datetime.fromisoformat(stamp)
    except ValueError:
        return None
    site = (fields.get("Loc Name") or fields.get("Serial") or "").strip() or None
    if when.tzinfo is None:
        # GUANO: a timestamp without offset is local time of unknown zone.
        return RecorderInfo(when, to_utc(when, tz) if tz else None, site, "guano-local")
    local = to_local(when, tz) if tz else when.replace(tzinfo=None)
    return RecorderInfo(local, when.astimezone(dt.timezone.utc), site, "guano")


def from_audiomoth_comment(text: str, tz: ZoneInfo | None) -> RecorderInfo | None:
    m = AUDIOMOTH_COMMENT.search(text)
    if not m:
        return None
    hh, mi, ss, dd, mo, yyyy, off_h, off_m = m.groups()[:8]
    try:
        clock = dt.datetime(int(yyyy), int(mo), int(dd), int(hh), int(mi), int(ss))
    except ValueError:
        return None
    hours = int(off_h or 0)
    offset = dt.timedelta(hours=hours, minutes=(int(off_m or 0)) * (1 if hours >= 0 else -1))
    aware = clock.replace(tzinfo=dt.timezone(offset))
    local = to_local(aware, tz) if tz else (clock if offset else None)
    site = f"AudioMoth-{m.group(9)}" if m.group(9) else None
    return RecorderInfo(local, aware.astimezone(dt.timezone.utc), site, "audiomoth-comment")


def recorder_info(path: Path, tz: ZoneInfo | None = None) -> RecorderInfo:
    """Start time and site of a recording; the site falls back to the parent folder's name."""
    info = None
    if path.suffix.lower() == ".wav":
        try:
            chunks = read_wav_chunks(path)
        except OSError:
            chunks = {}
        if b"guan" in chunks:
            info = from_guano(chunks[b"guan"].decode("utf-8", "replace"), tz)
        if info is None and b"ICMT" in chunks:
            info = from_audiomoth_comment(chunks[b"ICMT"].decode("latin-1").rstrip("\0"), tz)
    info = info or from_name(path, tz) or RecorderInfo(None, None, None, None)
    if info.site is None:
        info = RecorderInfo(info.local_start, info.utc_start, path.parent.name or None, info.time_source)
    return info
