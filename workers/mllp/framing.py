"""MLLP framing: each HL7 message travels as 0x0B, the message, 0x1C 0x0D.

The decoder is fed whatever the socket returns (a frame may arrive in many reads, many
frames in one) and hands back complete payloads only. A frame is what the LIS chose to
send as one unit; what is inside (one message, a batch) is intake's business, not ours.
What breaks the framing never becomes a message: bytes outside a frame are dropped and
counted (they carry no message we could answer), a frame cut short by a new start block
or by the connection closing is dropped, and a frame past the size limit is answered with
its head only (enough to read the MSH and say "too large"), never buffered whole.
"""

from __future__ import annotations

import logging
from asyncio import StreamReader
from collections.abc import AsyncIterator
from dataclasses import dataclass

from pipeline.settings import max_message_bytes

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\r"
#: The default largest frame accepted: a result with a few PDF reports is a few MiB.
DEFAULT_MAX_BYTES = max_message_bytes()  # LABDISPATCH_MAX_MESSAGE_BYTES, every intake's
#: How much of an oversized frame is kept: the MSH, to address the refusal.
OVERSIZED_HEAD_BYTES = 4096
READ_SIZE = 64 * 1024

log = logging.getLogger(__name__)


def frame(payload: bytes) -> bytes:
    """One MLLP frame around a payload."""
    return START_BLOCK + payload + END_BLOCK + CARRIAGE_RETURN


@dataclass(frozen=True)
class OversizedFrame:
    """A frame longer than the limit: its first bytes, and how long it turned out to be."""

    head: bytes
    size: int
    limit: int


Item = bytes | OversizedFrame


class FrameDecoder:
    """Incremental MLLP decoder: `feed` bytes, get the frames they complete."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        #: Bytes seen outside any frame (noise, keep-alives, a CR after a lone end block).
        self.discarded = 0
        #: Frames dropped because a new start block arrived before their end block.
        self.interrupted = 0
        self._buffer = bytearray()
        self._in_frame = False
        self._oversized: OversizedFrame | None = None  # set while skipping a long frame
        self._after_end = False  # the CR that follows an end block is part of the frame

    @property
    def partial(self) -> int:
        """Bytes of a frame begun and not finished (what a close now would lose)."""
        if self._oversized is not None:
            return self._oversized.size
        return len(self._buffer) if self._in_frame else 0

    @property
    def in_frame(self) -> bool:
        """A start block was read and its end block not yet."""
        return self._in_frame

    @property
    def buffered(self) -> int:
        """Bytes held in memory for the frame in progress (an oversized frame keeps its
        head only)."""
        if self._oversized is not None:
            return len(self._oversized.head)
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Item]:
        items: list[Item] = []
        view = memoryview(data)
        position, length = 0, len(data)
        while position < length:
            if self._after_end:
                self._after_end = False
                if view[position] == CARRIAGE_RETURN[0]:
                    position += 1
                continue
            if not self._in_frame:
                start = data.find(START_BLOCK, position)
                if start < 0:
                    self.discarded += length - position
                    break
                self.discarded += start - position
                position = start + 1
                self._in_frame = True
                continue
            end = _find_first(data, position)
            stop = length if end < 0 else end
            self._take(view[position:stop])
            if end < 0:
                break
            if data[end : end + 1] == START_BLOCK:
                # A new frame began before this one ended: the LIS gave up on it.
                self.interrupted += 1
                self._reset()
                self._in_frame = True
                position = end + 1
                continue
            items.append(self._finish())
            self._after_end = True
            position = end + 1
        return items

    def _take(self, chunk: memoryview) -> None:
        if self._oversized is not None:
            self._oversized = OversizedFrame(
                self._oversized.head, self._oversized.size + len(chunk), self.max_bytes
            )
            return
        if len(self._buffer) + len(chunk) > self.max_bytes:
            self._buffer += chunk
            self._oversized = OversizedFrame(
                bytes(self._buffer[:OVERSIZED_HEAD_BYTES]), len(self._buffer), self.max_bytes
            )
            self._buffer = bytearray()
            return
        self._buffer += chunk

    def _finish(self) -> Item:
        item: Item = self._oversized if self._oversized is not None else bytes(self._buffer)
        self._reset()
        return item

    def drop(self) -> None:
        """Forget the frame in progress (the connection is being closed)."""
        self._reset()

    def _reset(self) -> None:
        self._buffer = bytearray()
        self._oversized = None
        self._in_frame = False


def _find_first(data: bytes, position: int) -> int:
    """The first end block or start block at or after `position`, or -1."""
    end = data.find(END_BLOCK, position)
    start = data.find(START_BLOCK, position, end if end >= 0 else len(data))
    return start if start >= 0 else end


async def read_frames(
    reader: StreamReader, decoder: FrameDecoder, *, peer: str = ""
) -> AsyncIterator[Item]:
    """Every frame from a stream until it closes; a frame cut short by the close is dropped.

    Drops are logged as counts, never as content (a frame holds patient data)."""
    while True:
        data = await reader.read(READ_SIZE)
        if not data:
            break
        for item in decoder.feed(data):
            yield item
    if decoder.partial:
        log.warning(
            "MLLP %s closed in the middle of a message: %d bytes dropped, nothing stored",
            peer or "peer",
            decoder.partial,
        )
