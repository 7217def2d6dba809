from __future__ import annotations

import datetime as dt
import struct
from pathlib import Path
from zoneinfo import ZoneInfo

from conftest import write_wav
from fieldmon.recorder import from_name, recorder_info

UTC = dt.timezone.utc


def test_audiomoth_names_are_utc():
    info = from_name(Path("20240101_053000.WAV"))
    assert info.utc_start == dt.datetime(2024, 1, 1, 5, 30, tzinfo=UTC)
    assert info.local_start is None and info.time_source == "audiomoth-name"
    berlin = from_name(Path("20240701_053000.WAV"), ZoneInfo("Europe/Berlin"))
    assert berlin.local_start == dt.datetime(2024, 7, 1, 7, 30)


def test_songmeter_names_are_local_wall_clock():
    info = from_name(Path("S4A03895_20190522_000000.wav"))
    assert info.local_start == dt.datetime(2019, 5, 22, 0, 0) and info.utc_start is None
    assert info.site == "S4A03895" and info.time_source == "songmeter-name"
    zoned = from_name(Path("SITE-A_20190522_013000.wav"), ZoneInfo("America/Bogota"))
    assert zoned.local_start == dt.datetime(2019, 5, 22, 1, 30)
    assert zoned.utc_start == dt.datetime(2019, 5, 22, 6, 30, tzinfo=UTC)
    assert zoned.site == "SITE-A"


def test_malformed_names_give_no_time():
    for name in ("20241301_053000.WAV", "20240101_256000.wav", "SITE_2019052_000000.wav", "recording.wav",
                 "SITE_20190230_000000.wav", "2024-01-01 05.30.00.wav"):
        assert from_name(Path(name)) is None, name


def add_chunk(path: Path, cid: bytes, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    chunk = cid + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")
    raw += chunk
    raw[4:8] = struct.pack("<I", len(raw) - 8)
    path.write_bytes(bytes(raw))


def test_audiomoth_comment_and_device_id(tmp_path):
    path = write_wav(tmp_path / "site7" / "clip.wav", 0.5)
    comment = b"Recorded at 21:15:00 03/06/2023 (UTC+2) by AudioMoth 24F319055FDF2F5B at medium gain\0"
    info_list = b"INFO" + b"ICMT" + struct.pack("<I", len(comment)) + comment
    add_chunk(path, b"LIST", info_list)
    info = recorder_info(path)
    assert info.time_source == "audiomoth-comment"
    assert info.utc_start == dt.datetime(2023, 6, 3, 19, 15, tzinfo=UTC)
    assert info.local_start == dt.datetime(2023, 6, 3, 21, 15)
    assert info.site == "AudioMoth-24F319055FDF2F5B"


def test_guano_timestamp_wins_over_the_name(tmp_path):
    path = write_wav(tmp_path / "20200101_000000.wav", 0.5)
    add_chunk(path, b"guan", b"GUANO|Version:1.0\nTimestamp:2021-08-09T22:05:30-04:00\nLoc Name:Pond 3\n")
    info = recorder_info(path)
    assert info.time_source == "guano" and info.site == "Pond 3"
    assert info.utc_start == dt.datetime(2021, 8, 10, 2, 5, 30, tzinfo=UTC)
    assert info.local_start == dt.datetime(2021, 8, 9, 22, 5, 30)


def test_unknown_time_and_site_from_folder(tmp_path):
    info = recorder_info(write_wav(tmp_path / "north-ridge" / "take1.wav", 0.2))
    assert info.utc_start is None and info.local_start is None and info.site == "north-ridge"
