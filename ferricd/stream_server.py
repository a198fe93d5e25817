"""A shard's Unix stream endpoint: length-prefixed frames in and out, for the shard's poll loop.

The same request and reply frames as the ROUTER socket (``ferric_ipc.protocol``),
each preceded by its length (``protocol.STREAM_HEADER``). Nothing here blocks:
the shard polls the listening socket and every connection, calls ``accept`` and
``read_frames`` when they are readable, and ``send`` queues a reply that
``flush`` finishes when the connection is writable again.

Without ZeroMQ's I/O threads a round trip wakes two threads instead of six,
which is most of what a sequential request costs (docs/architecture.md).
"""

import errno
import os
import socket

from ferric_ipc.protocol import MAX_STREAM_FRAME_BYTES, STREAM_HEADER

READ_CHUNK_BYTES = 256 * 1024  # one recv per readable connection; poll is level-triggered
LISTEN_BACKLOG = 512  # every worker process of every application on the host may connect at once
_HEADER_BYTES = STREAM_HEADER.size


class FrameTooLarge(Exception):
    """A peer announced a frame longer than MAX_STREAM_FRAME_BYTES: the stream cannot be resynchronised."""


class StreamConnection:
    """One client connection: bytes read but not yet framed, and replies not yet sent."""

    def __init__(self, sock):
        sock.setblocking(False)
        self.sock = sock
        self._inbox = bytearray()
        self._outbox = bytearray()

    def fileno(self):
        return self.sock.fileno()

    @property
    def wants_write(self):
        """Whether replies are waiting for the socket to drain."""
        return bool(self._outbox)

    def read_frames(self):
        """The complete frames received so far; None when the peer has closed the connection.

        Raises FrameTooLarge for a length prefix past the limit.
        """
        try:
            chunk = self.sock.recv(READ_CHUNK_BYTES)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:  # reset by a peer that died
            return None
        if not chunk:
            return None
        inbox = self._inbox
        if not inbox and len(chunk) >= _HEADER_BYTES:
            # The common case: one whole frame in one chunk, nothing left over.
            (length,) = STREAM_HEADER.unpack_from(chunk)
            if len(chunk) == _HEADER_BYTES + length:
                return [chunk[_HEADER_BYTES:]]
        inbox += chunk
        frames = []
        start = 0
        while len(inbox) - start >= _HEADER_BYTES:
            (length,) = STREAM_HEADER.unpack_from(inbox, start)
            if length > MAX_STREAM_FRAME_BYTES:
                raise FrameTooLarge(f"a frame of {length} bytes announced; at most {MAX_STREAM_FRAME_BYTES}")
            end = start + _HEADER_BYTES + length
            if end > len(inbox):
                break
            frames.append(bytes(inbox[start + _HEADER_BYTES:end]))
            start = end
        del inbox[:start]
        return frames

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
            return
        self._outbox += STREAM_HEADER.pack(len(frame))
        self._outbox += frame
        self.flush()

    def flush(self):
        """Send queued reply bytes; False once the peer is gone."""
        while self._outbox:
            try:
                sent = self.sock.send(self._outbox, socket.MSG_NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                self._outbox.clear()
                return False
            del self._outbox[:sent]
        return True

    def close(self):
        self.sock.close()


class StreamListener:
    """The listening socket at ``path``; the caller must hold the shard's lock (binding replaces a stale file)."""

    def __init__(self, path):
        self.path = path
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
        """Connections waiting to be accepted (possibly none)."""
        accepted = []
        while True:
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return accepted
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    return accepted  # out of descriptors: the client waits in the backlog and times out
                raise
            accepted.append(StreamConnection(sock))

    def close(self):
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
