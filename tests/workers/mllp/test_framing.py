"""MLLP framing: whatever the reads look like, only whole frames come out."""

from __future__ import annotations

import asyncio

import pytest

from workers.mllp.framing import (
    END_BLOCK,
    START_BLOCK,
    FrameDecoder,
    Item,
    OversizedFrame,
    frame,
    read_frames,
)

ONE = b"MSH|^~\\&|A|B|C|D|20260101||ORU^R01|ONE|P|2.5\rPID|1\r"
TWO = b"MSH|^~\\&|A|B|C|D|20260101||ORU^R01|TWO|P|2.5\r"


def test_frame_wraps_the_payload_in_start_and_end_blocks() -> None:
    assert frame(b"X") == b"\x0bX\x1c\x0d"


def test_a_frame_read_one_byte_at_a_time_comes_out_whole_once() -> None:
    decoder = FrameDecoder()
    out: list[Item] = []
    for byte in frame(ONE):
        out += decoder.feed(bytes([byte]))
    assert out == [ONE]
    assert (decoder.discarded, decoder.partial) == (0, 0)


def test_many_frames_in_one_read_come_out_in_order() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(frame(ONE) + frame(TWO) + frame(ONE)) == [ONE, TWO, ONE]


def test_bytes_outside_frames_are_dropped_and_counted() -> None:
    decoder = FrameDecoder()
    out = decoder.feed(b"noise\r\n" + frame(ONE) + b"\n\n" + frame(TWO))
    assert out == [ONE, TWO]
    assert decoder.discarded == len(b"noise\r\n") + 2  # the CR after each end block is framing


def test_the_cr_after_an_end_block_may_arrive_in_the_next_read() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(START_BLOCK + ONE + END_BLOCK) == [ONE]
    assert decoder.feed(b"\r" + frame(TWO)) == [TWO]
    assert decoder.discarded == 0


def test_a_frame_cut_short_by_a_new_start_block_is_dropped() -> None:
    decoder = FrameDecoder()
    out = decoder.feed(START_BLOCK + ONE[:20] + frame(TWO))
    assert out == [TWO]
    assert decoder.interrupted == 1


def test_an_unfinished_frame_is_held_not_returned() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(START_BLOCK + ONE) == []
    assert decoder.partial == len(ONE)
    assert decoder.feed(END_BLOCK + b"\r") == [ONE]
    assert decoder.partial == 0


def test_a_frame_over_the_limit_comes_out_as_its_head_and_size() -> None:
    decoder = FrameDecoder(max_bytes=100)
    big = b"MSH|^~\\&|A|B|C|D|20260101||ORU^R01|BIG|P|2.5\r" + b"OBX|" + b"x" * 5000 + b"\r"
    out: list[Item] = []
    for start in range(0, len(frame(big)), 333):  # across many reads
        out += decoder.feed(frame(big)[start : start + 333])
    out += decoder.feed(frame(TWO))
    oversized, after = out
    assert isinstance(oversized, OversizedFrame)
    assert oversized.size == len(big)
    assert oversized.limit == 100
    assert oversized.head.startswith(b"MSH|^~\\&|A|B|C|D|20260101||ORU^R01|BIG|")
    assert len(oversized.head) < len(big)
    assert after == TWO


def test_a_frame_exactly_at_the_limit_is_accepted() -> None:
    decoder = FrameDecoder(max_bytes=len(ONE))
    assert decoder.feed(frame(ONE)) == [ONE]


def test_max_bytes_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(max_bytes=0)


def test_a_stream_closed_mid_frame_yields_only_the_whole_frames(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def read(data: bytes) -> list[Item]:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return [item async for item in read_frames(reader, FrameDecoder(), peer="lis:1")]

    cut = frame(ONE) + START_BLOCK + TWO[:10]
    assert asyncio.run(read(cut)) == [ONE]
    assert "lis:1 closed in the middle of a message: 10 bytes dropped" in caplog.text
    assert "ORU" not in caplog.text  # never the content
