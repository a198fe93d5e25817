"""Length-prefixed frames on the Unix stream transport: the one reader client and shard both use.

Every frame is preceded by its length as ``protocol.STREAM_HEADER`` (a
little-endian u32). A reader is fed whatever ``recv`` returned and hands out
each whole frame once it has arrived; the start of a frame still arriving waits
in the reader.
"""

from collections.abc import Callable

from ferric_ipc.errors import ProtocolError
from ferric_ipc.protocol import MAX_STREAM_FRAME_BYTES, STREAM_HEADER

HEADER_BYTES = STREAM_HEADER.size


class FrameTooLarge(ProtocolError):
    """A peer announced a frame longer than the reader takes: the stream cannot be resynchronised."""


class FrameReader:
    """Splits a byte stream into frames, calling ``emit`` with each one in order."""

    def __init__(self, emit: Callable[[bytes], object], max_frame_bytes: int = MAX_STREAM_FRAME_BYTES) -> None:
        self._emit = emit
        self._max_frame_bytes = max_frame_bytes
        self._inbox = bytearray()  # the start of a frame still arriving

    def feed(self, chunk: bytes) -> None:
        """Take bytes read from the stream; emit every frame they complete.

        Raises FrameTooLarge for a length prefix past the limit.
        """
        inbox = self._inbox
        if not inbox and len(chunk) >= HEADER_BYTES:
            # The common case: one whole frame in one chunk, nothing left over.
            (length,) = STREAM_HEADER.unpack_from(chunk)
            if len(chunk) == HEADER_BYTES + length and length <= self._max_frame_bytes:
                self._emit(chunk[HEADER_BYTES:])
                return
        inbox += chunk
        start = 0
        while len(inbox) - start >= HEADER_BYTES:
            (length,) = STREAM_HEADER.unpack_from(inbox, start)
            if length > self._max_frame_bytes:
                raise FrameTooLarge(f"a frame of {length} bytes announced; at most {self._max_frame_bytes}")
            end = start + HEADER_BYTES + length
            if end > len(inbox):
                break
            self._emit(bytes(inbox[start + HEADER_BYTES:end]))
            start = end
        del inbox[:start]

    def bytes_missing(self) -> int:
        """How many more bytes the frame being received needs (0 if its length has not arrived yet)."""
        if len(self._inbox) < HEADER_BYTES:
            return 0
        length: int = STREAM_HEADER.unpack_from(self._inbox)[0]
        return HEADER_BYTES + length - len(self._inbox)
