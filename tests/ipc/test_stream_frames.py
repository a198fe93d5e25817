"""The stream transport's frame reader: any split of the byte stream gives back the frames sent, in order."""

import pytest
from hypothesis import given, strategies as st

from ferric_ipc.protocol import MAX_STREAM_FRAME_BYTES, STREAM_HEADER
from ferric_ipc.stream_frames import HEADER_BYTES, FrameReader, FrameTooLarge


def framed(frames):
    return b"".join(STREAM_HEADER.pack(len(frame)) + frame for frame in frames)


@given(st.lists(st.binary(max_size=300), max_size=8), st.lists(st.integers(1, 400), max_size=20))
def test_any_split_of_the_stream_gives_back_every_frame_in_order(frames, cuts):
    stream = framed(frames)
    got = []
    reader = FrameReader(got.append)
    at = 0
    for size in cuts + [len(stream)]:
        reader.feed(stream[at:at + size])
        at += size
    assert got == frames
    assert reader.bytes_missing() == 0
    assert all(type(frame) is bytes for frame in got)


def test_bytes_missing_says_how_much_of_the_frame_is_still_to_come():
    reader = FrameReader(lambda frame: None)
    data = framed([b"x" * 100])
    reader.feed(data[:2])
    assert reader.bytes_missing() == 0  # the length itself has not arrived
    reader.feed(data[2:30])
    assert reader.bytes_missing() == len(data) - 30


def test_a_length_past_the_limit_is_refused():
    reader = FrameReader(lambda frame: None)
    with pytest.raises(FrameTooLarge, match=str(MAX_STREAM_FRAME_BYTES)):
        reader.feed(STREAM_HEADER.pack(MAX_STREAM_FRAME_BYTES + 1) + b"x")
    assert HEADER_BYTES == 4
