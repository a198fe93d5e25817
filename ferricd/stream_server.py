"""A shard's Unix stream endpoint: length-prefixed frames in and out, for the shard's poll loop.

The same request and reply frames as the ROUTER socket (``ferric_ipc.protocol``),
each preceded by its length (``protocol.STREAM_HEADER``). Nothing here blocks:
the shard polls the listening socket and every connection, calls ``accept`` and
``receive`` when they are readable, takes requests from ``frames`` while the
connection has ``reply_room``, and ``send`` queues a reply that ``flush``
finishes when the connection is writable again. A peer that does not read its
replies is therefore not read from either: its requests wait in its socket.
Every connection counts what it holds in the shard against one ``ClientBuffers``
per shard, which the shard's loop keeps under daemon.client_buffer_bytes.

Without ZeroMQ's I/O threads a round trip wakes two threads instead of six,
which is most of what a sequential request costs (docs/architecture.md).
"""

import errno
import os
import socket
import time
from collections import deque

from ferric_ipc.protocol import STREAM_HEADER
from ferric_ipc.stream_frames import HEADER_BYTES, FrameReader

READ_CHUNK_BYTES = 256 * 1024  # one recv per readable connection; poll is level-triggered
LISTEN_BACKLOG = 512  # every worker process of every application on the host may connect at once
# A peer that sends requests but does not read the replies is not read from any more once this
# much of its replies waits in the shard: its requests then wait in its own socket buffer.
MAX_OUTBOX_BYTES = 64 * 1024 * 1024


class ClientBuffers:
    """What a shard holds for all its stream peers together: bytes of requests received but not yet
    run (whole or partial frames) and of replies not yet sent, against ``limit_bytes``."""

    def __init__(self, limit_bytes, max_frame_bytes):
        self.limit_bytes = limit_bytes
        self.max_frame_bytes = max_frame_bytes  # the longest request frame taken
        self.used_bytes = 0

    @property
    def over(self):
        return self.used_bytes > self.limit_bytes

    @property
    def shed_to_bytes(self):
        """Where shedding stops: a quarter under the bound, so that it is not needed again at the next read."""
        return self.limit_bytes - self.limit_bytes // 4


class StreamConnection:
    """One client connection: bytes read but not yet framed, and replies not yet sent.

    ``held_bytes`` counts what it holds in the shard, also added to the shared ``buffers``:
    every chunk read until its frame is taken, and every reply byte until it is sent.
    ``progress_s`` is when the peer last sent bytes or took some of its replies (monotonic).
    """

    def __init__(self, sock, buffers):
        sock.setblocking(False)
        self.sock = sock
        self.frames = deque()  # whole request frames received and not yet taken
        self._reader = FrameReader(self.frames.append, buffers.max_frame_bytes)
        self._outbox = bytearray()
        self._buffers = buffers
        self.held_bytes = 0
        self.progress_s = time.monotonic()

    def fileno(self):
        return self.sock.fileno()

    def _hold(self, nbytes):
        self.held_bytes += nbytes
        self._buffers.used_bytes += nbytes

    @property
    def wants_write(self):
        """Whether replies are waiting for the socket to drain."""
        return bool(self._outbox)

    @property
    def reply_room(self):
        """Bytes of replies this peer may still have waiting in the shard (MAX_OUTBOX_BYTES in all)."""
        return MAX_OUTBOX_BYTES - len(self._outbox)

    @property
    def wants_read(self):
        """Whether to read more: only once every received request was taken, and replies have room."""
        return not self.frames and self.reply_room > 0

    def receive(self):
        """Read what arrived and split it into ``frames``; False when the peer has closed the connection.

        Raises FrameTooLarge for a length prefix past the limit.
        """
        try:
            chunk = self.sock.recv(READ_CHUNK_BYTES)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:  # reset by a peer that died
            return False
        if not chunk:
            return False
        self.progress_s = time.monotonic()
        self._hold(len(chunk))
        self._reader.feed(chunk)
        return True

    def take_frame(self):
        """The oldest received request frame, no longer held for the peer."""
        frame = self.frames.popleft()
        self._hold(-(HEADER_BYTES + len(frame)))
        self.progress_s = time.monotonic()  # its requests move on: not a stalled peer
        return frame

    def send(self, frame):
        """Queue one reply frame and send as much as the socket takes now."""
        if not self._outbox:
            data = STREAM_HEADER.pack(len(frame)) + frame
            try:
                sent = self.sock.send(data, socket.MSG_NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:  # the client went away; it will not read its reply
                return
            if sent < len(data):
                self._outbox += memoryview(data)[sent:]
                self._hold(len(data) - sent)
            return
        self._outbox += STREAM_HEADER.pack(len(frame))
        self._outbox += frame
        self._hold(HEADER_BYTES + len(frame))
        self.flush()

    def flush(self):
        """Send queued reply bytes; False once the peer is gone."""
        while self._outbox:
            try:
                sent = self.sock.send(self._outbox, socket.MSG_NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                self._hold(-len(self._outbox))
                self._outbox.clear()
                return False
            del self._outbox[:sent]
            self._hold(-sent)
            self.progress_s = time.monotonic()
        return True

    def close(self):
        self._hold(-self.held_bytes)  # what it held is dropped with it
        self.frames.clear()
        self._outbox = bytearray()
        self.sock.close()


class OutOfDescriptors(Exception):
    """accept() failed for want of file descriptors; the waiting connections stay in the backlog."""


class StreamListener:
    """The listening socket at ``path``; the caller must hold the shard's lock (binding replaces a stale file)."""

    def __init__(self, path, buffers):
        self.path = path
        self.buffers = buffers
        try:
            os.unlink(path)  # left by a shard that was killed: nobody listens on it any more
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)  # mode 0777 & ~umask, as libzmq's ipc sockets: the run directory decides access
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.sock = sock

    def fileno(self):
        return self.sock.fileno()

    def accept(self):
        """Connections waiting to be accepted (possibly none).

        Raises OutOfDescriptors, carrying what was accepted before, when the process or system
        has no descriptor left: the caller should stop polling the listener for a while, since it
        stays readable and poll would return at once, forever.
        """
        accepted = []
        while True:
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return accepted
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise OutOfDescriptors(accepted) from exc
                continue  # ECONNABORTED and the like: that peer gave up; the others are still there
            accepted.append(StreamConnection(sock, self.buffers))

    def close(self):
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
