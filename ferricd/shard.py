"""One shard process: the only writer of data_dir/shard-K, serving ipc://run_dir/shard-K.sock and run_dir/shard-K.stream.

Started by the supervisor as ``python -m ferricd.shard --shard K --settings JSON``.
Exit codes: 0 after a clean stop, EXIT_BOOT_ERROR when it cannot start
(directory locked, socket in use, bad settings), EXIT_DATA_ERROR when its data
cannot be read. The supervisor backs off instead of respawning in a hot loop.
"""

import argparse
import ctypes
import json
import logging
import os
import resource
import select
import signal
import sys
import time

import zmq

from ferric_ipc import protocol
from ferric_ipc.errors import FerricError, ProtocolError, StorageError
from ferric_ipc.file_layout import access_path, shard_dir, socket_path, stream_path
from ferric_ipc.stream_frames import FrameTooLarge
from ferricd.clock import wall_clock_ms
from ferricd.commands import ShardCommands
from ferricd.config import from_dict
from ferricd.exit_codes import EXIT_BOOT_ERROR, EXIT_DATA_ERROR
from ferricd.heartbeat import HeartbeatWriter
from ferricd.housekeeping import Housekeeping
from ferricd.storage import BitcaskStore
from ferricd.storage.errors import DirectoryLockedError
from ferricd.storage.index_file import IndexFiles
from ferricd.storage.lock import DirectoryLock
from ferricd.stream_server import ClientBuffers, OutOfDescriptors, StreamListener

TICK_MS = 100  # housekeeping (interval fsync, expiry sweep, merge checks, stop flag) at least this often
MAX_REQUESTS_PER_COMMIT = 1024  # so replies are never held back for long
WARNING_INTERVAL_S = 10  # out of descriptors, connections refused or dropped: say so at most this often
# Descriptors kept back from peers: data, hint and index files, merges, ZeroMQ's own, and the
# connections libzmq accepts before the loop counts them (it aborts when accept() finds none left).
FD_RESERVE_FRACTION = 8  # one eighth of the open-file limit
FD_RESERVE_MIN = 32
ZMQ_RELISTEN_PAUSE_S = 1.0  # at the connection cap, the ZeroMQ endpoint stops listening this long
_POLLIN, _POLLOUT = select.EPOLLIN, select.EPOLLOUT
_POLLERR = select.EPOLLERR | select.EPOLLHUP  # the peer hung up or the socket failed
_ZMQ_POLLIN = int(zmq.POLLIN)  # a plain int: pyzmq's IntFlag arithmetic costs microseconds

log = logging.getLogger("ferricd.shard")


class ShardServer:
    """A shard's store behind a ZeroMQ ROUTER socket and a Unix stream listener.

    ``__init__`` touches nothing process-wide; ``open`` takes the locks, recovers
    the store and binds; ``serve`` runs until ``should_stop()``; ``close`` syncs,
    writes hints and the snapshot, and unbinds. Requests from both endpoints
    that are ready together share one group commit.
    """

    def __init__(self, config, shard_id):
        self.config = config
        self.shard_id = shard_id
        self.endpoint = f"ipc://{socket_path(config.run_dir, shard_id)}"
        self.stream_endpoint = stream_path(config.run_dir, shard_id)
        self.store = self.tables = self._socket_lock = self._context = self._socket = self._listener = None
        self.housekeeping = None
        self._poller = self._listener_fd = self._zmq_fd = self._heartbeat = None
        self._zmq_touched = True  # the ROUTER may hold messages its descriptor no longer signals
        self._monitor = self._monitor_fd = None  # the ROUTER's connection events, to count its peers
        self._zmq_peers = 0
        self._zmq_listening = False
        self._zmq_relisten_at = 0.0  # monotonic seconds
        self._listener_paused_until = None  # monotonic seconds: accept() ran out of descriptors
        self._warned_at = {}  # what was warned about -> monotonic seconds, to say each at most every interval
        self._buffers = ClientBuffers(config.client_buffer_bytes, config.max_request_bytes)
        self._round_reply_bytes = 0  # replies built in this round of handle_ready, not yet queued or sent
        self._max_connections = config.max_connections
        self._streams = {}  # fd -> StreamConnection
        self._masks = {}  # fd -> the poll events registered for that connection
        self._waiting = set()  # StreamConnections holding received requests not yet taken

    def open(self):
        # The lock comes before the bind: a second shard binding the same ipc path
        # would silently take the endpoint over from the first.
        self._socket_lock = DirectoryLock(self.config.run_dir, f"shard-{self.shard_id}.lock")
        # Clients may still map the table of this shard's previous run: retire it before any
        # data changes, so none of them reads past a write this run acknowledges.
        self.tables = IndexFiles(self.config.run_dir, self.shard_id, self.config.storage.file_mode)
        self.tables.retire_previous()
        epoch = time.time_ns()
        self.store = BitcaskStore(
            shard_dir(self.config.data_dir, self.shard_id), self.config.storage, epoch=epoch, tables=self.tables,
            keyspaces=self.config.keyspace_table(self.config.shards),
            access_path=access_path(self.config.run_dir, self.shard_id),
        )
        self.tables.publish(self.store.index_buffer)
        log.info("recovered: %s", " ".join(f"{k}={v}" for k, v in vars(self.store.recovery).items()))
        self.housekeeping = Housekeeping(self.store, self.config.run_dir)
        self.commands = ShardCommands(self.store, self.shard_id, self.config.shards, epoch, wall_clock_ms,
                                      self.housekeeping)
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._socket.linger = 0
        self._socket.maxmsgsize = self._buffers.max_frame_bytes  # ZeroMQ drops a peer that sends more
        self._monitor = self._socket.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        self._socket.bind(self.endpoint)
        self._zmq_listening = True
        self._listener = StreamListener(self.stream_endpoint, self._buffers)
        self._max_connections = _connection_cap(self.config.max_connections)
        # The first beat tells the supervisor this shard recovered and serves.
        self._heartbeat = HeartbeatWriter(self.config.run_dir, self.shard_id, self.config.storage.file_mode)
        log.info("serving %s and %s", self.endpoint, self.stream_endpoint)

    def serve(self, should_stop):
        """Serve until ``should_stop()``. Raises StorageError when the disk failed under an fsync:
        the shard must then exit so that a fresh one recovers from what reached the disk."""
        # One epoll set for the listener, every stream connection and the ROUTER's descriptor.
        # zmq.Poller was the alternative: it costs two poll calls and a getpid per wake-up, even
        # when only stream connections are busy, which was a fifth of a request's CPU time.
        self._poller = select.epoll()
        self._listener_fd = self._listener.fileno()
        self._poller.register(self._listener_fd, _POLLIN)
        self._zmq_fd = self._socket.getsockopt(zmq.FD)
        self._poller.register(self._zmq_fd, _POLLIN)
        self._monitor_fd = self._monitor.getsockopt(zmq.FD)
        self._poller.register(self._monitor_fd, _POLLIN)
        self._count_zmq_peers()
        while not should_stop():
            # Requests already received (but left for lack of reply room or past the per-commit
            # limit) are served without waiting for the poll; so are messages the ROUTER holds.
            runnable = self._zmq_ready() or (
                bool(self._waiting) and any(connection.reply_room > 0 for connection in self._waiting))
            timeout_s = 0 if runnable else self.housekeeping.poll_timeout_ms(TICK_MS) / 1000
            ready = self._poller.poll(timeout_s)
            if ready or runnable:
                self.handle_ready(ready)
            # Between two rounds of requests: a bounded slice of merge and expiry work (merge_slice_us).
            self.housekeeping.run()
            self.store.sync_if_due()
            self._heartbeat.beat()
            if not self._zmq_listening:
                self._count_zmq_peers()  # listen again once stream peers left too
            if self._listener_paused_until is not None and time.monotonic() >= self._listener_paused_until:
                self._listener_paused_until = None
                self._poller.register(self._listener_fd, _POLLIN)
        self.handle_ready(self._poller.poll(0))  # answer what was already queued when the stop came

    def _zmq_ready(self):
        """Whether the ROUTER holds a request. Its descriptor is edge-triggered: after any send or
        receive on the socket, only ZMQ_EVENTS tells, so it is asked then, and only then."""
        if not self._zmq_touched:
            return False
        if self._socket.getsockopt(zmq.EVENTS) & _ZMQ_POLLIN:
            return True
        self._zmq_touched = False  # reading EVENTS re-armed the descriptor
        return False

    def handle_ready(self, ready):
        """Apply every ready request (``ready``: what the poller returned) under one group commit, then reply."""
        requests = []  # (identity, frames) from the ROUTER
        for fd, events in ready:
            connection = self._streams.get(fd)
            if connection is not None:
                self._stream_ready(connection, events)
            elif fd == self._zmq_fd:
                self._zmq_touched = True
            elif fd == self._monitor_fd:
                self._count_zmq_peers()
            elif fd == self._listener_fd:
                self._accept()
        if self._zmq_touched:
            self._receive_router(requests)
        replies = []  # (reply_to, request_id, reply frame): reply_to is an identity (bytes) or a StreamConnection
        served = []
        failure = None
        try:
            with self.store.group_commit():
                for reply_to, frames in requests:
                    replies.append((reply_to, *self.handle(frames)))
                served = list(self._waiting)
                self._round_reply_bytes = 0
                for connection in served:
                    self._take_stream_requests(connection, replies)
        except StorageError as exc:  # the shared fsync failed: nothing in the batch may be acknowledged
            log.error("group commit failed: %s", exc)
            failure = exc
            message = f"{exc}; the shard restarts and recovers from what reached the disk"
            replies = [(reply_to, request_id, protocol.error_reply(request_id, "STORAGE", message))
                       for reply_to, request_id, _ in replies]
        for reply_to, request_id, reply in replies:
            if type(reply_to) is bytes:
                self._zmq_touched = True
                try:
                    self._socket.send_multipart([reply_to, reply], zmq.NOBLOCK)
                except zmq.ZMQError:  # the client went away (or its queue is full); it will time out
                    pass
            elif self._streams.get(reply_to.fileno()) is reply_to:  # not dropped meanwhile
                if len(reply) > self._buffers.max_frame_bytes:  # it could never be held whole for the peer
                    reply = protocol.error_reply(
                        request_id, "LIMIT",
                        f"the reply is {len(reply)} bytes, over the {self._buffers.max_frame_bytes} bytes a shard "
                        "sends at once (half of daemon.client_buffer_bytes): ask for fewer or smaller values at once")
                reply_to.send(reply)
        if self._buffers.over:  # replies the peers do not read
            self._shed_clients()
        for connection in served:  # stop reading those left with requests or a full outbox; resume the others
            if self._streams.get(connection.fileno()) is connection:
                self._watch(connection)
        if failure is not None:
            raise failure

    def _receive_router(self, requests):
        """Append the ROUTER's waiting requests (at most MAX_REQUESTS_PER_COMMIT) to ``requests``."""
        for _ in range(MAX_REQUESTS_PER_COMMIT):
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            requests.append((frames[0], frames[1:]))

    def _stream_ready(self, connection, events):
        """Read (or finish writing to) one stream connection; close it when its peer left or misbehaved."""
        # POLLERR: the peer hung up. A peer whose replies are queued is then flushed (EPIPE drops it);
        # leaving the event unhandled would make every poll return at once.
        if events & (_POLLOUT | _POLLERR) and connection.wants_write:
            if not connection.flush():
                self._drop_stream(connection)
                return
            self._watch(connection)
        if events & (_POLLIN | _POLLERR) and connection.wants_read:
            try:
                open_ = connection.receive()
            except FrameTooLarge as exc:
                self.commands.errors += 1
                connection.send(protocol.error_reply(None, "BAD_FRAME", f"{exc}; the connection is closed"))
                open_ = False
            if not open_:
                self._drop_stream(connection)
                return
            if self._buffers.over:
                self._shed_clients()
                if self._streams.get(connection.fileno()) is not connection:
                    return  # it was the one dropped
            if connection.frames:
                self._waiting.add(connection)  # handle_ready takes them next, then updates what to poll

    def _take_stream_requests(self, connection, replies):
        """Run ``connection``'s received requests while its replies have room (bounded per commit), and while
        the replies built this round fit in client_buffer_bytes beside what peers hold (one request at least)."""
        buffers = self._buffers
        room = min(connection.reply_room, buffers.limit_bytes - buffers.used_bytes - self._round_reply_bytes)
        for _ in range(MAX_REQUESTS_PER_COMMIT):
            if not connection.frames or connection.reply_room <= 0 or (room <= 0 and self._round_reply_bytes):
                break
            request_id, reply = self.handle([connection.take_frame()])
            room -= len(reply)
            self._round_reply_bytes += len(reply)
            replies.append((connection, request_id, reply))
        if not connection.frames:
            self._waiting.discard(connection)

    def _accept(self):
        try:
            accepted = self._listener.accept()
        except OutOfDescriptors as exc:
            accepted = exc.args[0]
            self._warn_now_and_then(
                "descriptors", "out of file descriptors (%s): new connections to %s wait in the backlog; "
                "raise LimitNOFILE or look for a client that leaks connections", exc.__cause__, self.stream_endpoint)
            self._poller.unregister(self._listener_fd)
            self._listener_paused_until = time.monotonic() + TICK_MS / 1000
        for connection in accepted:
            if len(self._streams) + self._zmq_peers >= self._max_connections:
                self._refuse(connection)
                continue
            fd = connection.fileno()
            self._streams[fd] = connection
            self._masks[fd] = _POLLIN
            self._poller.register(fd, _POLLIN)

    def _count_zmq_peers(self):
        """Follow the ROUTER's peers from its monitor; at the cap, stop listening for ZMQ_RELISTEN_PAUSE_S.

        libzmq accepts on its own thread and aborts the process when accept() finds no descriptor
        left, and it cannot refuse one peer: only closing the listener stops it accepting, and that
        also ends the connections accepted through it (their clients reconnect by themselves).
        """
        while True:  # the monitor's descriptor is edge-triggered: drain it
            try:
                event = self._monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            kind = int.from_bytes(event[0][:2], "little")
            if kind == zmq.EVENT_ACCEPTED:
                self._zmq_peers += 1
            elif kind == zmq.EVENT_DISCONNECTED:
                self._zmq_peers = max(0, self._zmq_peers - 1)
        peers = len(self._streams) + self._zmq_peers
        now = time.monotonic()
        # Past the cap, not at it: at it, the stream side still takes no more, and ZeroMQ peers keep being served.
        if self._zmq_listening and peers > self._max_connections:
            self._socket.unbind(self.endpoint)
            self._zmq_touched = True  # unbind ran libzmq's commands, which may have taken a read notification
            self._zmq_listening = False
            self._zmq_peers = 0  # ended with the listener, without a disconnect event each
            self._zmq_relisten_at = now + ZMQ_RELISTEN_PAUSE_S
            self._warn_now_and_then(
                "zmq-cap", "%d connections, the most this shard takes (daemon.max_connections, bounded by the "
                "open-file limit): %s stops listening for %g s, which also ends its ZeroMQ connections "
                "(their clients reconnect by themselves)", peers, self.endpoint, ZMQ_RELISTEN_PAUSE_S)
        elif not self._zmq_listening and now >= self._zmq_relisten_at and peers < self._max_connections:
            self._socket.bind(self.endpoint)
            self._zmq_touched = True
            self._zmq_listening = True
            log.info("%s listens again", self.endpoint)

    def _refuse(self, connection):
        """Tell a peer past the connection cap why, and close its connection."""
        message = (f"shard {self.shard_id} already serves {len(self._streams) + self._zmq_peers} connections, "
                   "the most it takes "
                   f"(daemon.max_connections, bounded by the open-file limit): close idle clients, or raise both")
        self._warn_now_and_then("cap", "refused a connection: %s", message)
        connection.send(protocol.error_reply(None, "LIMIT", message))
        connection.close()

    def _shed_clients(self):
        """Over client_buffer_bytes: drop the peers holding bytes that went longest without progress (stalled
        mid-request, or not reading their replies) until well under it. Not the largest holders: a client
        that just asked for a large value holds more, for a moment, than each of a crowd of stalled ones."""
        buffers = self._buffers
        holders = sorted((connection for connection in self._streams.values() if connection.held_bytes),
                         key=lambda connection: connection.progress_s)
        dropped = dropped_bytes = 0
        for connection in holders:
            if buffers.used_bytes <= buffers.shed_to_bytes:
                break
            dropped += 1
            dropped_bytes += connection.held_bytes
            self._drop_stream(connection)
        if dropped:
            self._warn_now_and_then(
                "buffers", "peers held more than daemon.client_buffer_bytes (%d) of requests and unread replies: "
                "dropped %d connections that had made no progress for longest (%d bytes); clients that stall "
                "mid-request or do not read their replies", buffers.limit_bytes, dropped, dropped_bytes)

    def _warn_now_and_then(self, topic, message, *args):
        now = time.monotonic()
        if now - self._warned_at.get(topic, float("-inf")) >= WARNING_INTERVAL_S:
            self._warned_at[topic] = now
            log.warning(message, *args)

    def _watch(self, connection):
        """Poll ``connection`` for what it can do now: read unless backlogged, write while replies wait."""
        fd = connection.fileno()
        mask = (_POLLIN if connection.wants_read else 0) | (_POLLOUT if connection.wants_write else 0)
        if mask != self._masks.get(fd):
            self._masks[fd] = mask
            self._poller.modify(fd, mask)

    def _drop_stream(self, connection):
        fd = connection.fileno()
        del self._masks[fd]
        self._poller.unregister(fd)
        del self._streams[fd]
        self._waiting.discard(connection)
        connection.close()

    def handle(self, frames):
        """``(request_id, reply frame)`` for one request; never raises."""
        self.commands.requests += 1
        try:
            if len(frames) != 1:
                raise ProtocolError(f"a request is one message part, got {len(frames)}")
            request_id, op, args = protocol.parse_request(frames[0])
        except ProtocolError as exc:
            self.commands.errors += 1
            request_id = getattr(exc, "request_id", None)
            return request_id, protocol.error_reply(request_id, getattr(exc, "code", "BAD_FRAME"), str(exc))
        if op == "batch":
            return request_id, protocol.ok_reply(request_id, self.run_batch(args[0]))
        status, result = self.run(op, args)
        if status == protocol.STATUS_OK:
            return request_id, protocol.ok_reply(request_id, result)
        return request_id, protocol.error_reply(request_id, *result)

    def run_batch(self, items):
        """``[[status, result], ...]`` for a batch's requests, run in order."""
        if not isinstance(items, list):
            self.commands.errors += 1
            return [[protocol.STATUS_ERROR, ["BAD_ARGS", "batch takes a list of [op, args] pairs"]]]
        self.commands.requests += len(items) - 1
        answers, plain_sets = [], []
        for item in items:
            try:
                op, args = protocol.parse_batch_item(item)
            except ProtocolError as exc:
                self.commands.errors += 1
                answers.append([protocol.STATUS_ERROR, [exc.code, str(exc)]])
                continue
            if op == "set" and args[3] is False and args[4] is False:
                # Consecutive unconditional sets become one write: one pwrite instead of many.
                plain_sets.append((len(answers), args))
                answers.append(None)
                continue
            self._write_plain_sets(plain_sets, answers)
            answers.append(list(self.run(op, args)))
        self._write_plain_sets(plain_sets, answers)
        return answers

    def _write_plain_sets(self, plain_sets, answers):
        """Run the collected sets as one batch write and fill in their answers (in place)."""
        if plain_sets:
            for (position, _), answer in zip(plain_sets, self.commands.set_many([args for _, args in plain_sets])):
                if answer[0] == protocol.STATUS_ERROR:
                    self.commands.errors += 1
                answers[position] = answer
            plain_sets.clear()

    def run(self, op, args):
        """``(STATUS_OK, result)`` or ``(STATUS_ERROR, [code, message])``; never raises."""
        try:
            return protocol.STATUS_OK, self.commands.run(op, args)
        except (FerricError, TypeError, ValueError) as exc:
            self.commands.errors += 1
            return protocol.STATUS_ERROR, [protocol.error_code(exc), str(exc)]
        except Exception as exc:  # a bug: report it to the client and keep serving
            self.commands.errors += 1
            log.exception("op %s failed", op)
            return protocol.STATUS_ERROR, ["INTERNAL", f"{type(exc).__name__}: {exc}"]

    def close(self):
        try:
            for connection in list(self._streams.values()):
                connection.flush()  # replies to the last requests, if the socket takes them now
                connection.close()
            self._streams = {}
            if self._listener is not None:
                self._listener.close()
            if self._heartbeat is not None:
                self._heartbeat.close()
            if self._poller is not None:
                self._poller.close()
            if self._monitor is not None:
                self._socket.disable_monitor()
                self._monitor.close()
            if self._socket is not None:
                self._socket.close()
                self._context.term()
                try:  # libzmq leaves the file behind; a stale socket only makes clients wait
                    os.unlink(socket_path(self.config.run_dir, self.shard_id))
                except FileNotFoundError:
                    pass
            if self.store is not None:
                self.store.close()
            if self.housekeeping is not None:
                self.housekeeping.close()
        finally:
            # Whatever happened above, clients must stop trusting this shard's table.
            if self.tables is not None:
                self.tables.close()
            if self._socket_lock is not None:
                self._socket_lock.release()


def connection_cap(max_connections, open_files):
    """How many peers a shard serves under an open-file limit of ``open_files``: ``max_connections``, or
    fewer, so that a reserve of descriptors (an eighth, at least FD_RESERVE_MIN) stays for its files."""
    if open_files == resource.RLIM_INFINITY:
        return max_connections
    return max(1, min(max_connections, open_files - max(FD_RESERVE_MIN, open_files // FD_RESERVE_FRACTION)))


def _connection_cap(max_connections):
    """``connection_cap`` under this process's open-file limit, raised to its hard limit first (as a
    server should); says so when the limit lowers the cap."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    cap = connection_cap(max_connections, soft)
    if cap < max_connections:
        log.warning("daemon.max_connections is %d, but the open-file limit is %d: taking at most %d connections "
                    "(%d descriptors kept for files); raise LimitNOFILE (ulimit -n) to serve more",
                    max_connections, soft, cap, soft - cap)
    return cap


def _die_with_parent():
    """Ask the kernel to SIGTERM this process if the supervisor dies (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def main(argv=None):
    parser = argparse.ArgumentParser(prog="ferricd-shard")
    parser.add_argument("--shard", type=int, required=True)
    parser.add_argument("--settings", required=True, help="resolved configuration as JSON")
    parser.add_argument("--parent-pid", type=int, default=0)
    args = parser.parse_args(argv)
    config = from_dict(json.loads(args.settings))
    logging.basicConfig(
        level=config.log_level.upper(), stream=sys.stderr,
        format=f"%(asctime)s shard-{args.shard}[%(process)d] %(levelname)s %(message)s",
    )
    _die_with_parent()
    if args.parent_pid and os.getppid() != args.parent_pid:
        return EXIT_BOOT_ERROR  # the supervisor died before the death signal was armed
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor, which stops us in order

    server = ShardServer(config, args.shard)
    try:
        server.open()
    except DirectoryLockedError as exc:
        log.error("cannot start: %s", exc)
        server.close()
        return EXIT_BOOT_ERROR
    except zmq.ZMQError as exc:
        log.error("cannot bind %s: %s", server.endpoint, exc)
        server.close()
        return EXIT_BOOT_ERROR
    except (StorageError, OSError) as exc:
        log.error("cannot open %s or its index in %s: %s", server.config.data_dir, server.config.run_dir, exc)
        server.close()
        return EXIT_DATA_ERROR
    try:
        server.serve(lambda: bool(stopping))
    except StorageError as exc:
        log.error("stopping after a storage failure: %s", exc)
        server.close()
        return EXIT_DATA_ERROR
    except BaseException:
        server.close()
        raise
    server.close()
    log.info("stopped cleanly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
