"""WAV headers at odds with the file's length: unfinished recordings are read, cut-short
ones are named (fieldmon.wav_header)."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import soundfile as sf

from conftest import write_wav
from fieldmon.audio import AudioReadError, load_audio, open_sound
from fieldmon.outputs.export import cut_audio
from fieldmon.train.dataset import load_clips
from fieldmon.wav_header import header_note, read_wav_layout, unfinished_data


def data_size_offset(data: bytes) -> int:
    return data.index(b"data") + 4


def with_data_size(source, target, size: int, riff_size: int | None = None):
    data = bytearray(source.read_bytes())
    at = data_size_offset(data)
    data[at:at + 4] = struct.pack("<I", size)
    if riff_size is not None:
        data[4:8] = struct.pack("<I", riff_size)
    target.write_bytes(bytes(data))
    return target


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
@pytest.mark.parametrize("channels", [1, 2])
def test_unfinished_header_is_read_as_the_samples_that_follow(tmp_path, subtype, channels):
    good = write_wav(tmp_path / "good.wav", 1.5, sr=48000, channels=channels, subtype=subtype)
    expected, _ = sf.read(good, dtype="float32", always_2d=True)
    unfinished = with_data_size(good, tmp_path / "unfinished.wav", 0, riff_size=0)
    assert sf.info(unfinished).frames == 0  # what libsndfile alone makes of it

    layout = read_wav_layout(unfinished)
    assert layout.subtype == subtype and layout.channels == channels and layout.sample_rate == 48000
    assert unfinished_data(layout)
    with open_sound(unfinished) as sound:
        assert (sound.frames, sound.samplerate, sound.channels) == (72000, 48000, channels)
        np.testing.assert_array_equal(sound.read(dtype="float32", always_2d=True), expected)
        sound.seek(1000)
        np.testing.assert_array_equal(sound.read(10, dtype="float32", always_2d=True), expected[1000:1010])
    samples, rate = cut_audio(unfinished, 0.5, 0.75)
    assert rate == 48000
    np.testing.assert_array_equal(samples, expected[24000:36000])
    assert header_note(unfinished) == ("the header says the recording holds no audio, but 1.5 s of it follow: an "
                                       "unfinished file (did the recorder lose power before closing it?), read to "
                                       "its end")


def test_unfinished_extensible_header_is_read(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, np.random.default_rng(0).uniform(-0.5, 0.5, (44100, 4)), 44100, subtype="PCM_24", format="WAVEX")
    assert struct.unpack("<H", good.read_bytes()[20:22])[0] == 0xFFFE
    unfinished = with_data_size(good, tmp_path / "unfinished.wav", 0)
    expected = load_audio(good, 22050)
    np.testing.assert_array_equal(load_audio(unfinished, 22050), expected)


def test_a_partial_last_frame_is_left_out(tmp_path):
    good = write_wav(tmp_path / "good.wav", 1.0, channels=2, subtype="PCM_16")
    unfinished = with_data_size(good, tmp_path / "unfinished.wav", 0)
    unfinished.write_bytes(unfinished.read_bytes() + b"\x01\x02\x03")  # 3 bytes of a 4-byte frame
    with open_sound(unfinished) as sound:
        assert sound.frames == 44100


def test_cut_short_file_is_named_and_read_to_its_end(tmp_path):
    good = write_wav(tmp_path / "good.wav", 4.0)
    cut = tmp_path / "cut.wav"
    cut.write_bytes(good.read_bytes()[:44 + 2 * 44100])
    assert header_note(cut) == ("cut short: the header promises 4.0 s but the file ends after 1.0 s (a full card, "
                                "an interrupted copy, or lost power?)")
    assert len(load_audio(cut, 44100)) == 44100


def test_headers_that_need_no_note(tmp_path):
    good = write_wav(tmp_path / "good.wav", 1.0)
    assert header_note(good) is None
    # a streaming writer's "length unknown": libsndfile reads to the end, nothing is lost
    streaming = with_data_size(good, tmp_path / "streaming.wav", 0xFFFFFFFF, riff_size=0xFFFFFFFF)
    assert header_note(streaming) is None and len(load_audio(streaming, 44100)) == 44100
    assert header_note(write_wav(tmp_path / "clip.flac", 1.0)) is None  # not a WAV
    (tmp_path / "text.wav").write_text("not audio at all")
    assert read_wav_layout(tmp_path / "text.wav") is None
    assert read_wav_layout(tmp_path / "missing.wav") is None


def test_a_stale_length_is_read_to_the_end_but_not_a_chunk_or_padding_after_the_data(tmp_path):
    good = write_wav(tmp_path / "good.wav", 3.0)
    expected = load_audio(good, 44100)
    # the header last written after 1 s of the 3 (or a length that wrapped past 4 GiB)
    stale = with_data_size(good, tmp_path / "stale.wav", 2 * 44100)
    assert sf.info(stale).frames == 44100
    np.testing.assert_array_equal(load_audio(stale, 44100), expected)
    assert header_note(stale) == ("the header says the recording holds 1.0 s of audio, but 3.0 s of it follow: an "
                                  "unfinished file (did the recorder lose power before it last wrote the header?) or "
                                  "one over 4 GiB, whose length no longer fits the header; read to its end")
    # a metadata chunk after the data: the stated length is right
    tagged = tmp_path / "tagged.wav"
    tagged.write_bytes(good.read_bytes() + b"LIST" + struct.pack("<I", 50000) + bytes(50000))
    assert header_note(tagged) is None and len(load_audio(tagged, 44100)) == 3 * 44100
    # less than a second of bytes that are not a chunk (padding to a card's cluster, a tag)
    padded = tmp_path / "padded.wav"
    padded.write_bytes(good.read_bytes() + bytes(4096))
    assert header_note(padded) is None and len(load_audio(padded, 44100)) == 3 * 44100


def test_an_empty_data_chunk_before_another_chunk_is_truly_empty(tmp_path):
    header = write_wav(tmp_path / "good.wav", 0.0).read_bytes()  # 44-byte header, data size 0
    listed = tmp_path / "listed.wav"
    listed.write_bytes(header + b"LIST" + struct.pack("<I", 4) + b"INFO")
    layout = read_wav_layout(listed)
    assert layout.declared_bytes == 0 and not unfinished_data(layout)
    assert header_note(listed) is None


def test_a_header_walk_that_finds_no_data_chunk_gives_up(tmp_path):
    odd = tmp_path / "odd.wav"
    odd.write_bytes(b"RIFF" + bytes(4) + b"WAVE" + b"junk" + struct.pack("<I", 10 ** 9))
    assert read_wav_layout(odd) is None
    with pytest.raises(AudioReadError, match="odd.wav"):  # libsndfile judges it; the error names the file
        open_sound(odd)


def test_training_clips_with_such_headers_are_used_and_named(tmp_path):
    clips = tmp_path / "clips"
    for species in ("a", "b"):
        for i in range(3):
            write_wav(clips / species / f"{i}.wav", 2.0, seed=i)
    good = clips / "a" / "0.wav"
    with_data_size(good, good, 0)
    loaded = load_clips(clips)
    assert len(loaded.clips) == 6
    assert [c.seconds for c in loaded.clips if c.path == good] == [2.0]
    assert any(str(good) in w and "unfinished file" in w for w in loaded.warnings)
