"""One shard's request channel for a Client: a Unix stream socket or a ZeroMQ DEALER, with one retry policy.

Both carry the frames of ``ferric_ipc.protocol`` and answer ``call(requests,
timeout_ms, retry)`` the same way:

- a lock serialises the threads of a process on the channel;
- a call whose wait runs out closes the socket (a shard that stopped answering
  is left behind; replies go to their callers by request id either way);
- with ``retry`` (ops that change nothing) requests are sent again on a fresh
  socket after timeout/8, then after doubling waits, all within ``timeout_ms``,
  unless requests sent without waiting are still out on the socket: then the
  call waits its whole timeout on it;
- a request that provably never reached a shard is sent again whatever it is,
  which is how a client rides over a shard restart: no socket to connect to,
  the connection already closed when it was sent, or (stream) the connection
  reset with the request unread;
- a timed-out request that may have reached the shard says that its outcome is
  unknown, unless it is one of the ops that change nothing.

``send(requests, timeout_ms)`` puts requests on the channel without waiting and
returns an InFlight whose ``result()`` waits for their replies (a wait that
runs out leaves them waiting and the socket open); a later call on the channel
reads whatever replies came first and keeps them for their InFlight. A socket
closed for any reason ends every InFlight on it with an error saying its
requests may or may not have been applied: they are never sent twice.
"""

import errno
import select
import socket
import threading
import time
from abc import ABC, abstractmethod
from typing import Any

import zmq

from ferric_ipc import protocol
from ferric_ipc.daemon_file import check_daemon_running
from ferric_ipc.errors import FerricConnectionError, FerricError, FerricTimeoutError, LimitError
from ferric_ipc.file_layout import socket_path, stream_path
from ferric_ipc.stream_frames import HEADER_BYTES, FrameReader

_FIRST_RETRY_MS = 100  # the shortest wait before an idempotent request is sent again
# While a shard restarts (hundreds of ms), the pause before trying its socket again (both transports):
# it doubles from the first to the last, so hundreds of waiting processes do not poll the socket in step.
_FIRST_RECONNECT_PAUSE_S = 0.005
_MAX_RECONNECT_PAUSE_S = 0.05
_READ_CHUNK_BYTES = 64 * 1024
_MAX_READ_BYTES = 16 * 1024 * 1024  # one recv() allocates what it asks for, so big replies come in steps

# How long a ZeroMQ wait goes on before the client looks whether the daemon still runs, and then between looks.
_LIVENESS_CHECK_MS = 100
# connect() errors meaning "no shard listens there right now": it is starting or restarting.
_NOT_LISTENING = (errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN)

#: What ``call`` sends: ``[(op, args), ...]``.
Requests = list[tuple[str, list[Any]]]


class _NoReply(Exception):
    """A wait for replies ran out (call() decides between resending and timing out).

    ``maybe_applied`` is False only when the requests certainly never reached a shard whole.
    """

    def __init__(self, maybe_applied: bool = True) -> None:
        super().__init__()
        self.maybe_applied = maybe_applied


class _Lost(Exception):
    """The connection broke after requests were sent: they may or may not have been applied."""


class _Unread(Exception):
    """The stream connection was reset with bytes we sent still unread, so the last request never arrived whole.

    Linux resets a Unix stream connection (ECONNRESET, not end-of-file) exactly when its peer
    closes it with data left in its receive queue, or when the listening socket it waited on
    closes before accepting it; a shard that read everything and then died gives end-of-file.
    """


class ShardConnection(ABC):
    """Request ids, the retry policy and the lock; subclasses move frames."""

    def __init__(self, shard_id: int, endpoint: str) -> None:
        self.shard_id = shard_id
        self.endpoint = endpoint
        # The longest request frame the shard takes (ferricd.json's max_request_bytes): one past it would
        # close the connection (a stream) or drop the peer (ZeroMQ), so it is refused before it is sent.
        self.max_request_bytes = protocol.MAX_STREAM_FRAME_BYTES
        self.lock = threading.Lock()
        self._next_id = 1
        # Every request sent on the current socket and not answered yet, by id: the call waiting for it,
        # or an InFlight. Replies are handed out here, so a reply read by any wait reaches its owner.
        self._waiting: dict[int, _Replies] = {}
        # An error for no request: about the connection itself (refused, or a frame it could not follow),
        # which the shard closes after sending it. Raised instead of "connection lost" when the stream ends.
        self._refusal: FerricError | None = None

    def call(self, requests: Requests, timeout_ms: int, retry: bool) -> list[Any]:
        """Send ``[(op, args), ...]`` pipelined; return their results in order.

        Error replies become exceptions only after every reply arrived, so
        the channel stays in step; the first error is raised.
        """
        deadline = time.monotonic() + timeout_ms / 1000
        with self.lock:
            # Sending again means a new socket, which would end the requests still waiting on this one:
            # with some waiting, an idempotent call waits its whole timeout on this socket instead.
            wait_ms = max(_FIRST_RETRY_MS, timeout_ms // 8) if retry and not self._waiting else timeout_ms
            while True:
                remaining_ms = int((deadline - time.monotonic()) * 1000)
                try:
                    return self._exchange(requests, min(wait_ms, remaining_ms), deadline)
                except _NoReply as no_reply:
                    timed_out = self._timed_out(timeout_ms, no_reply.maybe_applied and not retry)
                    self._forget_waiting(self._timed_out(timeout_ms, True))
                    self._close_socket()
                    if not retry or remaining_ms <= wait_ms:
                        raise timed_out from None
                    wait_ms *= 2
                except _Lost:
                    self._close_socket()
                    if not retry:
                        raise self._lost() from None
                    if time.monotonic() >= deadline:
                        raise self._timed_out(timeout_ms, False) from None

    def send(self, requests: Requests, timeout_ms: int) -> "InFlight":
        """Send ``requests`` now (within ``timeout_ms``) and return without waiting for their replies.

        They are sent once, never again: a request that cannot be sent whole raises here, one whose
        connection is lost later makes ``InFlight.result()`` raise.
        """
        wait_until = time.monotonic() + timeout_ms / 1000
        with self.lock:
            ids, frames = self._frames(requests)
            replies = _Replies(ids)
            try:
                self._send_frames(frames, wait_until)
            except _NoReply as no_reply:
                self._close_socket()
                raise self._timed_out(timeout_ms, no_reply.maybe_applied) from None
            except _Lost:
                self._close_socket()
                raise self._lost() from None
            self._expect(replies)
            return InFlight(self, replies)

    def collect(self, replies: "_Replies", timeout_ms: int) -> list[Any]:
        """Wait (at most ``timeout_ms``) for the replies an InFlight stands for; their results.

        A wait that runs out leaves them waiting (they may still arrive: ask again) and the socket open.
        """
        with self.lock:
            if replies.pending:
                try:
                    self._await(replies, time.monotonic() + timeout_ms / 1000)
                except _NoReply:
                    raise FerricTimeoutError(
                        f"shard {self.shard_id} ({self.endpoint}) has not answered within {timeout_ms} ms; the "
                        "reply may still come (call result() again), unless the shard restarted meanwhile: then the "
                        "request may or may not have been applied (check that ferricd is running: systemctl status "
                        "ferricd)"
                    ) from None
                except (_Lost, _Unread):
                    self._close_socket()  # which ends ``replies`` with "may or may not have been applied"
                except BaseException:
                    self._close_socket()  # interrupted mid-reply: the stream cannot be used again
                    raise
        return replies.value()

    def arrived(self, replies: "_Replies") -> bool:
        """Read, without waiting, the replies that arrived; True if ``replies`` has all of its own."""
        if replies.pending and self.lock.acquire(blocking=False):
            try:
                if replies.pending:
                    self._drain()
            except (_Lost, _Unread):
                self._close_socket()
            except BaseException:
                self._close_socket()
                raise
            finally:
                self.lock.release()
        return not replies.pending

    def _expect(self, replies: "_Replies") -> None:
        for request_id in replies.pending:
            self._waiting[request_id] = replies

    def _dispatch(self, frame: bytes) -> None:
        """Hand one reply frame to whoever waits for it."""
        request_id: int | None
        result: Any
        try:
            request_id, result = protocol.parse_reply(frame)
        except FerricError as error:
            request_id, result = getattr(error, "request_id", None), error
        if request_id is None:
            if isinstance(result, FerricError):
                self._refusal = result
            return
        replies = self._waiting.pop(request_id, None)
        if replies is not None:
            replies.add(request_id, result)

    def _forget_waiting(self, error: FerricError | None = None) -> None:
        """The socket goes: every request still waiting on it ends with ``error`` (by default, the connection
        was lost), which says it may or may not have been applied."""
        waiting, self._waiting = self._waiting, {}
        self._refusal = None
        error = error or self._lost()
        for replies in set(waiting.values()):
            replies.fail(error)

    def _lost(self) -> FerricConnectionError:
        return FerricConnectionError(
            f"shard {self.shard_id} ({self.endpoint}) closed the connection before answering: "
            "the request may or may not have been applied (the shard stopped or restarted); "
            "check its state before repeating a write that must not happen twice"
        )

    @abstractmethod
    def _exchange(self, requests: Requests, timeout_ms: int, deadline: float) -> list[Any]:
        """Send ``requests`` and return their results; _NoReply or _Lost when that fails (each transport its way)."""

    @abstractmethod
    def _send_frames(self, frames: list[bytes], wait_until: float) -> None:
        """Put ``frames`` on the socket, connecting first if needed; _NoReply or _Lost when that fails."""

    @abstractmethod
    def _await(self, replies: "_Replies", wait_until: float) -> None:
        """Read replies until ``replies`` has all of its own; _NoReply, _Lost or _Unread when that fails."""

    @abstractmethod
    def _drain(self) -> None:
        """Read every reply already arrived, without waiting; _Lost or _Unread if the connection broke."""

    @abstractmethod
    def _close_socket(self) -> None:
        """Drop the transport's socket (and with it every request still waiting); the next exchange opens a new one."""

    def _timed_out(self, timeout_ms: int, maybe_applied: bool) -> FerricTimeoutError:
        """The timeout error; ``maybe_applied``: a request that changes something may have reached the shard."""
        outcome = (
            "; the request may have reached it, so it may or may not have been applied: check its state "
            "before repeating a write that must not happen twice"
        ) if maybe_applied else ""
        return FerricTimeoutError(
            f"shard {self.shard_id} ({self.endpoint}) did not answer within {timeout_ms} ms; "
            f"check that ferricd is running (systemctl status ferricd){outcome}"
        )

    def _frames(self, requests: Requests) -> tuple[list[int], list[bytes]]:
        """``(request ids, request frames)``, taking fresh ids."""
        ids: list[int] = []
        frames: list[bytes] = []
        for op, args in requests:
            request_id, self._next_id = self._next_id, (self._next_id + 1) % 2**64
            ids.append(request_id)
            frame = protocol.request(request_id, op, args)
            if len(frame) > self.max_request_bytes:
                raise LimitError(
                    f"a request of {len(frame)} bytes is over the {self.max_request_bytes} bytes shard "
                    f"{self.shard_id} takes (half of its daemon.client_buffer_bytes): send it in smaller "
                    "pipelines, or raise client_buffer_bytes"
                )
            frames.append(frame)
        return ids, frames

    def close(self) -> None:
        with self.lock:
            self._close_socket()


class _Replies:
    """Replies gathered for a set of request ids, in request order."""

    def __init__(self, ids: list[int]) -> None:
        self.pending = {request_id: position for position, request_id in enumerate(ids)}
        self.results: list[Any] = [None] * len(ids)

    def add(self, request_id: int, result: Any) -> None:
        self.results[self.pending.pop(request_id)] = result

    def fail(self, error: FerricError) -> None:
        for position in self.pending.values():
            self.results[position] = error
        self.pending = {}

    def value(self) -> list[Any]:
        for result in self.results:
            if isinstance(result, FerricError):
                raise result
        return self.results


class InFlight:
    """Requests sent without waiting (``ShardConnection.send``): ``result()`` waits for their replies."""

    def __init__(self, connection: ShardConnection, replies: _Replies) -> None:
        self._connection = connection
        self._replies = replies

    def done(self) -> bool:
        """True once every reply arrived (or the connection was lost): ``result()`` will not wait.

        Reads what has arrived, unless another thread is using the connection.
        """
        return self._connection.arrived(self._replies)

    def result(self, timeout_ms: int) -> list[Any]:
        """The replies' results, in request order; the first error reply raises."""
        return self._connection.collect(self._replies, timeout_ms)


class StreamShardConnection(ShardConnection):
    """A Unix stream socket to ``run_dir/shard-K.stream``: two threads woken per round trip, no more."""

    def __init__(self, run_dir: str, shard_id: int) -> None:
        self.run_dir = run_dir
        self.path = stream_path(run_dir, shard_id)
        super().__init__(shard_id, self.path)
        self._sock: socket.socket | None = None
        # select.poll on the socket: every wait is bounded by the call's deadline
        self._poll: select.poll | None = None
        # One reader per socket: a wait may read past its own replies into the next one's frame.
        self._reader: FrameReader | None = None

    def _exchange(self, requests: Requests, timeout_ms: int, deadline: float) -> list[Any]:
        wait_until = min(deadline, time.monotonic() + timeout_ms / 1000)
        ids, frames = self._frames(requests)
        while True:
            sock, reused = self._deliver(frames, wait_until)
            replies = _Replies(ids)
            self._expect(replies)
            try:
                self._await(replies, wait_until)
                break
            except _Unread:
                if len(frames) > 1:
                    raise _Lost from None  # the last frame never arrived whole, but earlier ones may have
                # The one frame never arrived whole: send it again to whoever listens now.
                self._close_socket()
                if not reused:
                    _pause_before_reconnecting(_FIRST_RECONNECT_PAUSE_S, wait_until)
            except (_NoReply, _Lost):
                raise
            except BaseException:
                self._close_socket()  # interrupted mid-reply: the stream cannot be used again
                raise
        # Every reply arrived whole: the stream is in step, and stays open whatever the replies say.
        return replies.value()

    def _send_frames(self, frames: list[bytes], wait_until: float) -> None:
        self._deliver(frames, wait_until)

    def _deliver(self, frames: list[bytes], wait_until: float) -> tuple[socket.socket, bool]:
        """Send ``frames`` whole; ``(socket, whether it was already open)``."""
        data = b"".join(protocol.STREAM_HEADER.pack(len(frame)) + frame for frame in frames)
        # Bytes that must arrive before the shard can have applied anything: the first frame, whole.
        first_frame_bytes = HEADER_BYTES + len(frames[0])
        pause_s = _FIRST_RECONNECT_PAUSE_S
        try:
            while True:
                reused = self._sock is not None
                sock = self._sock or self._connect(wait_until)
                sent = self._send(sock, data, wait_until)
                if sent == len(data):
                    return sock, reused
                if sent >= first_frame_bytes:
                    raise _Lost  # a whole frame went out before the connection broke: it may have been applied
                # A frame is applied only once it arrived whole, and a dead shard takes none: so nothing
                # was applied, and the requests go out again to whoever listens now. The kernel may
                # release a killed shard's connections before its listening socket, so a new connection
                # can be reset the same way: pause before the next one, unless this one was an old one.
                self._close_socket()
                if not reused:
                    pause_s = _pause_before_reconnecting(pause_s, wait_until)
        except (_NoReply, _Lost):
            raise
        except BaseException:
            # Interrupted mid-frame (KeyboardInterrupt, an exception from a signal handler): the stream
            # may hold half a request, so it cannot be used again.
            self._close_socket()
            raise

    def _send(self, sock: socket.socket, data: bytes, wait_until: float) -> int:
        """How many bytes of ``data`` went out before it was all sent or the connection broke.

        Raises _NoReply when ``wait_until`` passes first (a stalled shard, or one that drains slowly):
        closing the connection then leaves the shard a partial frame it never applies.
        """
        try:
            sent = sock.send(data, socket.MSG_NOSIGNAL)  # a request usually goes out whole, at once
        except BlockingIOError:
            sent = 0
        except OSError:
            return 0
        view = memoryview(data)
        while sent < len(data):
            try:
                sent += sock.send(view[sent:], socket.MSG_NOSIGNAL)
            except BlockingIOError:
                self._wait(select.POLLOUT, wait_until)
            except OSError:
                return sent
        return sent

    def _await(self, replies: _Replies, wait_until: float) -> None:
        sock, reader = self._sock, self._reader
        assert sock is not None and reader is not None  # requests wait only on an open socket
        answering = False  # bytes came back, so the shard was reading this connection
        while replies.pending:
            self._wait(select.POLLIN, wait_until)
            try:
                chunk = sock.recv(min(max(_READ_CHUNK_BYTES, reader.bytes_missing()), _MAX_READ_BYTES))
            except BlockingIOError:
                continue  # woken for nothing
            except ConnectionResetError:
                raise (self._refusal or (_Lost if answering else _Unread)) from None
            except OSError:
                raise _Lost from None
            if not chunk:
                raise self._refusal or _Lost()
            answering = True
            reader.feed(chunk)

    def _drain(self) -> None:
        sock, reader = self._sock, self._reader
        if sock is None or reader is None:
            return
        while True:
            try:
                chunk = sock.recv(_READ_CHUNK_BYTES)
            except BlockingIOError:
                return
            except ConnectionResetError:
                raise (self._refusal or _Lost) from None
            except OSError:
                raise _Lost from None
            if not chunk:
                raise self._refusal or _Lost()
            reader.feed(chunk)

    def _wait(self, events: int, wait_until: float) -> None:
        """Until the socket is ready for ``events`` (or hung up); _NoReply once ``wait_until`` passed.

        The socket is non-blocking and every wait is a poll() bounded by the time left, which Python
        recomputes when a signal interrupts it: no wait outlives the call's deadline.
        """
        assert self._poll is not None and self._sock is not None  # only while connected
        self._poll.register(self._sock, events)
        while not self._poll.poll(max(0, int((wait_until - time.monotonic()) * 1000) + 1)):
            if time.monotonic() >= wait_until:
                raise _NoReply

    def _connect(self, deadline: float) -> socket.socket:
        """A connected socket, trying again while the shard (re)starts; _NoReply once ``deadline`` passed."""
        pause_s = _FIRST_RECONNECT_PAUSE_S
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(max(0.001, deadline - time.monotonic()))  # a full backlog would block
                sock.connect(self.path)
                sock.setblocking(False)
            except OSError as exc:
                sock.close()
                if isinstance(exc, PermissionError):
                    raise FerricConnectionError(
                        f"cannot connect to {self.path}: permission denied; run as a member of the daemon's "
                        "group (ferricd under systemd, see docs/deploy.md)"
                    ) from None
                if exc.errno not in _NOT_LISTENING and not isinstance(exc, TimeoutError):
                    raise FerricConnectionError(f"cannot connect to {self.path}: {exc}") from None
                if exc.errno in _NOT_LISTENING:
                    check_daemon_running(self.run_dir)  # a stopped daemon fails now, not at the timeout
                pause_s = _pause_before_reconnecting(pause_s, deadline)
                continue
            self._sock = sock
            self._poll = select.poll()
            self._reader = FrameReader(self._dispatch)
            return sock

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = self._poll = self._reader = None
        self._forget_waiting()


def _pause_before_reconnecting(pause_s: float, wait_until: float) -> float:
    """Sleep ``pause_s`` (less if ``wait_until`` comes first) and return the next pause.

    Raises _NoReply, saying nothing was delivered, when ``wait_until`` has passed.
    """
    left_s = wait_until - time.monotonic()
    if left_s <= 0:
        raise _NoReply(maybe_applied=False)
    time.sleep(min(pause_s, left_s))
    return min(2 * pause_s, _MAX_RECONNECT_PAUSE_S)


class ZmqShardConnection(ShardConnection):
    """One DEALER socket to the shard's ROUTER at ``ipc://run_dir/shard-K.sock``."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], run_dir: str, shard_id: int) -> None:
        self.run_dir = run_dir
        self.path = socket_path(run_dir, shard_id)
        super().__init__(shard_id, f"ipc://{self.path}")
        self._context = context
        self._socket: zmq.Socket[bytes] | None = None

    def _exchange(self, requests: Requests, timeout_ms: int, deadline: float) -> list[Any]:
        ids, frames = self._frames(requests)
        self._send_frames(frames, deadline)
        replies = _Replies(ids)
        self._expect(replies)
        self._await(replies, time.monotonic() + timeout_ms / 1000)
        return replies.value()

    def _send_frames(self, frames: list[bytes], wait_until: float) -> None:
        if self._socket is None:
            # No check that the socket file exists: while the daemon runs (ferricd.json is there), a
            # missing socket is a shard restarting, and ZeroMQ connects as soon as it binds again.
            self._socket = self._context.socket(zmq.DEALER)
            self._socket.linger = 0
            # While the shard restarts, ZeroMQ tries its socket again with the stream's backoff
            # (its default is every 100 ms), keeping the request queued until it connects.
            self._socket.reconnect_ivl = int(_FIRST_RECONNECT_PAUSE_S * 1000)
            self._socket.reconnect_ivl_max = int(_MAX_RECONNECT_PAUSE_S * 1000)
            self._socket.connect(self.endpoint)
        for frame in frames:
            self._socket.send(frame)  # queued by ZeroMQ: never blocks a DEALER with room in its pipe

    def _await(self, replies: _Replies, wait_until: float) -> None:
        assert self._socket is not None  # requests wait only on an open socket
        while replies.pending:
            remaining_ms = int((wait_until - time.monotonic()) * 1000)
            try:
                if remaining_ms <= 0:
                    raise zmq.Again
                # A blocking recv bounded by RCVTIMEO: one call, where poll() then recv() costs a
                # second wake-up per reply (about 25 us per round trip measured here). Past the first
                # _LIVENESS_CHECK_MS, look between waits whether the daemon still runs: ZeroMQ queues
                # a request for a socket nobody will ever bind again, and would wait out the timeout.
                self._socket.rcvtimeo = min(remaining_ms, _LIVENESS_CHECK_MS)
                frame = self._socket.recv()
            except zmq.Again:
                if remaining_ms > _LIVENESS_CHECK_MS:
                    self._check_daemon(sent=True)
                    continue
                raise _NoReply from None
            self._dispatch(frame)

    def _drain(self) -> None:
        if self._socket is None:
            return
        while True:
            try:
                frame = self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._dispatch(frame)

    def _check_daemon(self, sent: bool) -> None:
        try:
            check_daemon_running(self.run_dir)
        except FerricConnectionError as exc:
            self._close_socket()
            raise FerricConnectionError(
                f"{exc}; the request was sent before it stopped, so it may or may not have been applied"
                if sent else str(exc)
            ) from None

    def _close_socket(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        self._forget_waiting()
