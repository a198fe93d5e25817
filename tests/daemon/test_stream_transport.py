"""The Unix stream transport's own framing and failure cases, against a real ferricd.

Frames on ``run_dir/shard-K.stream`` are a u32 length then the msgpack frame. The shard must
cope with frames cut anywhere, many frames per read, a length it will not accept, peers
that vanish mid-frame or never read their replies, and many peers at once; the client must
tell "never arrived whole" (send again) from "arrived, answer lost" (a write may have happened).
"""

import json
import os
import select
import signal
import socket
import struct
import threading
import time

import msgpack
import psutil
import pytest

from ferric_ipc.client import Client
from ferric_ipc.protocol import PROTOCOL_VERSION

from ferric_ipc.errors import FerricConnectionError, FerricError, FerricTimeoutError, LimitError
from ferric_ipc.protocol import MAX_STREAM_FRAME_BYTES
from ferricd.stream_server import MAX_OUTBOX_BYTES
from tests.daemon.conftest import keys_on_shard
from tests.daemon.test_supervision import RESTART_TIMEOUT_MS


def pack(obj):
    return msgpack.packb(obj, use_bin_type=True)


def framed(obj):
    body = pack(obj)
    return struct.pack("<I", len(body)) + body


def connect(daemon, shard=0):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(os.path.join(daemon.run_dir, f"shard-{shard}.stream"))
    return sock


def read_replies(sock, count):
    """``count`` decoded reply frames; fails if the connection closes first."""
    inbox, replies = b"", []
    while len(replies) < count:
        while len(inbox) >= 4 and len(inbox) >= 4 + struct.unpack_from("<I", inbox)[0]:
            length = struct.unpack_from("<I", inbox)[0]
            replies.append(msgpack.unpackb(inbox[4:4 + length], raw=False))
            inbox = inbox[4 + length:]
        if len(replies) >= count:
            break
        chunk = sock.recv(1 << 20)
        assert chunk, f"connection closed after {len(replies)} of {count} replies"
        inbox += chunk
    return replies


def closed_by_peer(sock):
    try:
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


@pytest.fixture(scope="module")
def stream_daemon(module_daemon_factory):
    return module_daemon_factory(shards=2)


@pytest.fixture(scope="module")
def normal(stream_daemon):
    return stream_daemon.client(timeout_ms=3000, transport="unix")


def still_serving(client, tag):
    key = f"st:alive:{tag}".encode()
    assert client.set(key, tag.encode()) is True
    assert client.get(key) == tag.encode()
    assert client.ping() is True


def test_a_frame_arriving_one_byte_at_a_time_is_answered_once(stream_daemon, normal):
    sock = connect(stream_daemon)
    data = framed([1, "set", [b"st:slow", b"v" * 300, None, False, False]]) + framed([2, "get", [b"st:slow"]])
    for i in range(len(data)):
        sock.send(data[i:i + 1])
        if i % 50 == 0:
            time.sleep(0.001)  # let the shard see the partial frame
    assert read_replies(sock, 2) == [[1, 0, True], [2, 0, b"v" * 300]]
    sock.close()
    still_serving(normal, "one-byte")


def test_many_frames_in_one_write_are_answered_in_order(stream_daemon, normal):
    sock = connect(stream_daemon)
    frames = [framed([i, "set", [b"st:many:%d" % i, b"%d" % i, None, False, False]]) for i in range(500)]
    frames += [framed([1000 + i, "get", [b"st:many:%d" % i]]) for i in range(500)]
    sock.sendall(b"".join(frames))
    replies = read_replies(sock, 1000)
    assert replies[:500] == [[i, 0, True] for i in range(500)]
    assert replies[500:] == [[1000 + i, 0, b"%d" % i] for i in range(500)]
    sock.close()


def test_a_length_over_the_limit_is_refused_and_the_connection_closed(stream_daemon, normal):
    sock = connect(stream_daemon)
    sock.sendall(struct.pack("<I", MAX_STREAM_FRAME_BYTES + 1) + b"\x93")
    (reply,) = read_replies(sock, 1)
    assert reply[0] is None and reply[1] == 1 and reply[2][0] == "BAD_FRAME", reply
    assert "connection is closed" in reply[2][1]
    assert closed_by_peer(sock), "the shard kept a connection whose framing it cannot follow"
    sock.close()
    still_serving(normal, "over-limit")


def test_a_peer_that_leaves_mid_frame_changes_nothing(stream_daemon, normal):
    key = keys_on_shard(0, 1, "st:half:")[0]
    sock = connect(stream_daemon)
    whole = framed([1, "set", [key, b"never", None, False, False]])
    sock.sendall(whole[:-3])  # all but the last bytes of the value
    time.sleep(0.05)
    sock.close()
    time.sleep(0.05)
    assert normal.get(key) is None, "a frame that never arrived whole was applied"
    still_serving(normal, "half")


def test_garbage_in_a_well_framed_frame_gets_an_error_reply(stream_daemon, normal):
    sock = connect(stream_daemon)
    junk = os.urandom(1000)
    sock.sendall(struct.pack("<I", len(junk)) + junk + struct.pack("<I", 0) + framed([9, "ping", []]))
    first, empty, pong = read_replies(sock, 3)
    assert first[1] == 1 and first[2][0] in ("BAD_FRAME", "UNKNOWN_OP", "BAD_ARGS"), first
    assert empty[1] == 1 and empty[2][0] == "BAD_FRAME", empty
    assert pong == [9, 0, "pong"]
    sock.close()


def test_values_larger_than_socket_buffers_round_trip(stream_daemon, normal):
    big = os.urandom(8 * 1024 * 1024)
    assert normal.set(b"st:big", big) is True
    assert normal.get(b"st:big") == big
    remote_reader = stream_daemon.client(transport="unix", local_reads=False)
    assert remote_reader.get(b"st:big") == big, "the 8 MiB reply crossed the stream whole"
    pipe = normal.pipeline()
    for i in range(4):
        pipe.set(b"st:big:%d" % i, big[i:] + big[:i])
    assert pipe.execute() == [True] * 4
    assert remote_reader.mget([b"st:big:%d" % i for i in range(4)]) == [big[i:] + big[:i] for i in range(4)]


def test_a_peer_that_never_reads_does_not_hold_up_others_or_fill_memory(stream_daemon, normal):
    """Replies to a peer that does not read wait in the shard, not in front of other clients; past
    MAX_OUTBOX_BYTES the shard stops taking that peer's requests, so its memory stays bounded."""
    key = keys_on_shard(0, 1, "st:hog:")[0]
    assert normal.set(key, b"h" * (512 * 1024)) is True
    rss_before = normal.info()[0]["rss_bytes"]
    hog = connect(stream_daemon)
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    requests = b"".join(framed([i, "get", [key]]) for i in range(400))  # 200 MiB of replies, never read
    sender = threading.Thread(target=hog.sendall, args=(requests,), daemon=True)
    sender.start()  # blocks once the shard stops reading this peer
    time.sleep(1.0)
    reader = stream_daemon.client(transport="unix", local_reads=False, timeout_ms=2000)
    for _ in range(20):
        assert reader.get(key) == b"h" * (512 * 1024)  # within the 2 s timeout
    grown = normal.info()[0]["rss_bytes"] - rss_before
    assert grown < MAX_OUTBOX_BYTES + 48 * 1024 * 1024, f"the shard grew by {grown / 2**20:.0f} MiB for one peer"
    # The peer hangs up without closing its descriptor: the shard must notice, not spin on the event.
    hog.shutdown(socket.SHUT_RDWR)
    time.sleep(0.3)
    shard = psutil.Process(normal.hello(shard=0)["pid"])
    cpu_before = sum(shard.cpu_times()[:2])
    time.sleep(1.0)
    cpu_used = sum(shard.cpu_times()[:2]) - cpu_before
    assert cpu_used < 0.5, f"the shard used {cpu_used:.2f} s of CPU in 1 s after a peer hung up"
    hog.close()
    sender.join(5)
    still_serving(normal, "hog")


def test_replies_larger_than_socket_buffers_arrive_within_the_timeout(stream_daemon, normal):
    """A reply of tens of MiB is read in large steps, not re-copied per chunk: re-copying 60 MiB per 64 KiB
    chunk copies about 28 GB, which no timeout below takes; read in steps it takes well under a second on
    a quiet machine, and the timeout leaves room for a loaded one."""
    big = [os.urandom(15 * 1024 * 1024) for _ in range(4)]
    keys = keys_on_shard(1, 4, "st:huge:")
    assert normal.mset(dict(zip(keys, big))) is True
    remote = stream_daemon.client(transport="unix", local_reads=False, timeout_ms=15_000)
    assert remote.mget(keys) == big
    normal.delete(*keys)


def test_a_call_waits_no_longer_than_its_timeout_even_while_connecting(make_daemon):
    """A shard whose socket appears late (it is starting) and that then never answers: the call still
    gives up after timeout_ms in all, counting the time spent connecting."""
    daemon = make_daemon(shards=1)
    client = daemon.client(timeout_ms=500, transport="unix", local_reads=False)
    pid = client.hello()["pid"]
    client.close()  # the next call connects afresh
    os.kill(pid, signal.SIGSTOP)  # it will accept nothing and answer nothing
    path = os.path.join(daemon.run_dir, "shard-0.stream")
    hidden = path + ".away"
    os.rename(path, hidden)
    threading.Timer(0.4, os.rename, args=(hidden, path)).start()  # the socket is back at 0.4 s
    started = time.monotonic()
    with pytest.raises(FerricTimeoutError):
        client.set(b"st:late", b"v")
    elapsed = time.monotonic() - started
    os.kill(pid, signal.SIGCONT)
    assert elapsed < 0.75, f"a 500 ms call took {elapsed:.2f} s"


def test_a_send_interrupted_mid_frame_leaves_the_next_call_working(make_daemon):
    """An exception raised by a signal handler while a large request is half sent: the connection
    holds half a frame and must not be used again, or the next request would be read as its tail."""
    daemon = make_daemon(shards=1)
    client = daemon.client(timeout_ms=5000, transport="unix", local_reads=False)
    assert client.ping() is True
    pid = client.hello()["pid"]

    class Interrupted(Exception):
        pass

    def interrupt(signum, frame):
        raise Interrupted

    # SIGUSR1 from a timer thread: SIGALRM and the real-time timer belong to pytest-timeout.
    previous = signal.signal(signal.SIGUSR1, interrupt)
    os.kill(pid, signal.SIGSTOP)  # the shard reads nothing: the big send blocks once buffers are full
    timer = threading.Timer(0.3, os.kill, args=(os.getpid(), signal.SIGUSR1))
    try:
        timer.start()
        with pytest.raises(Interrupted):
            client.set(b"st:interrupted", b"x" * (8 * 1024 * 1024))
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, previous)
        os.kill(pid, signal.SIGCONT)
    assert client.set(b"st:after", b"fine") is True
    assert client.get(b"st:after") == b"fine"
    assert client.get(b"st:interrupted") is None, "half a frame was applied"
    assert daemon.stop() == 0


def test_connections_past_the_cap_are_refused_with_a_reason_and_the_shard_keeps_serving(make_daemon):
    """Under an open-file limit of 64 a shard keeps a reserve of descriptors and takes at most the rest
    as connections: a peer past that gets a LIMIT error saying why, then its connection closes; the
    shard neither runs out of descriptors nor spins, and takes new peers once others leave."""
    daemon = make_daemon(shards=1, max_open_files=64)
    client = daemon.client(timeout_ms=3000, transport="unix", local_reads=False)
    shard_pid = client.hello()["pid"]
    socks, refused = [], 0
    for i in range(80):
        sock = connect(daemon)
        try:
            sock.sendall(framed([i, "ping", []]))
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused and closed before the ping went out; the reason is waiting to be read
        (reply,) = read_replies(sock, 1)
        if reply == [i, 0, "pong"]:
            socks.append(sock)
            continue
        assert reply[:2] == [None, 1] and reply[2][0] == "LIMIT", reply
        assert "max_connections" in reply[2][1], reply
        assert closed_by_peer(sock)
        sock.close()
        refused += 1
    assert socks and refused, (len(socks), refused)
    assert len(socks) + 1 + refused == 80 + 1  # the client's own connection counts too
    assert "open-file limit is 64" in daemon.stderr()
    shard = psutil.Process(shard_pid)
    assert shard.num_fds() < 64
    cpu_before = sum(shard.cpu_times()[:2])
    time.sleep(1.0)
    cpu_used = sum(shard.cpu_times()[:2]) - cpu_before
    assert cpu_used < 0.5, f"the shard used {cpu_used:.2f} s of CPU in 1 s while at its cap"
    with pytest.raises(LimitError, match="max_connections"):  # the client says why, at once
        daemon.client(timeout_ms=3000, transport="unix", local_reads=False).ping()
    for sock in socks[:10]:
        sock.close()
    time.sleep(0.2)
    fresh = connect(daemon)  # taken again once others left
    fresh.sendall(framed([7, "ping", []]))
    assert read_replies(fresh, 1) == [[7, 0, "pong"]]
    assert shard.pid == client.hello()["pid"]
    assert daemon.stderr().count("refused a connection") == 1  # said once, not once per peer
    still_serving(client, "fds")
    assert daemon.stop() == 0


def test_hundreds_of_connections_at_once(stream_daemon, normal):
    socks = [connect(stream_daemon, shard=i % 2) for i in range(300)]
    for i, sock in enumerate(socks):
        sock.sendall(framed([i, "ping", []]))
    for i, sock in enumerate(socks):
        assert read_replies(sock, 1) == [[i, 0, "pong"]]
        sock.close()
    still_serving(normal, "many")


def call_in_thread(function, *args):
    """Start ``function(*args)`` in a thread; returns the thread and ``{"value": ...}`` or ``{"error": ...}``."""
    outcome = {}

    def run():
        try:
            outcome["value"] = function(*args)
        except Exception as exc:  # checked by the test
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_a_write_the_dying_shard_never_read_goes_to_its_successor_once(make_daemon):
    """The request sits unread in a stopped shard's socket when the shard is killed. The kernel
    resets the connection (instead of ending it) because bytes were left unread, so the client
    knows nothing was applied and sends the write to the restarted shard, which applies it once."""
    daemon = make_daemon(shards=1)
    client = daemon.client(timeout_ms=RESTART_TIMEOUT_MS, transport="unix")
    assert client.incr(b"st:unread") == 1
    pid = client.hello()["pid"]
    os.kill(pid, signal.SIGSTOP)
    caller, outcome = call_in_thread(client.incr, b"st:unread")
    # The request now sits in the stopped shard's socket; had it not got there yet, it would find
    # the shard dead and go to its successor all the same.
    time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    caller.join(2 * RESTART_TIMEOUT_MS / 1000)
    assert outcome == {"value": 2}
    assert client.hello()["pid"] != pid
    assert client.get(b"st:unread") == b"2"
    assert daemon.stop() == 0


def test_a_connection_a_dying_shard_never_accepted_is_made_again(make_daemon):
    """A client that connects while a shard is being killed can reach its listening socket in the
    moment after its connections were closed: the connection is taken, then reset unaccepted when
    the listener goes. The write reached no shard, so it goes to the shard that listens next, once."""
    daemon = make_daemon(shards=1)
    client = daemon.client(timeout_ms=3000, transport="unix", local_reads=False)
    assert client.incr(b"st:unaccepted") == 1
    client.close()  # the next call connects afresh
    path = os.path.join(daemon.run_dir, "shard-0.stream")
    os.rename(path, path + ".away")  # the shard keeps listening on its renamed socket
    dying = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # a listener that never accepts
    dying.bind(path)
    dying.listen(8)
    caller, outcome = call_in_thread(client.incr, b"st:unaccepted")
    try:
        # Readable once a connection waits to be accepted: the client's (the supervisor keeps its own
        # connection to the shard, made before the rename).
        assert select.select([dying], [], [], 10)[0], "the client never connected"
        time.sleep(0.1)  # the request goes out into the unaccepted connection (or, later, finds it closed)
    finally:
        dying.close()
        os.rename(path + ".away", path)  # over the dead listener's file, as a new shard's bind does
    caller.join(10)
    assert outcome == {"value": 2}
    assert client.get(b"st:unaccepted") == b"2"


class AnswerlessShard:
    """A stand-in for a shard that dies after reading a request whole and before answering, which a
    real one cannot be made to do on cue: it accepts one connection on ``run_dir/shard-0.stream``,
    reads one whole frame, and closes the connection."""

    def __init__(self, run_dir):
        with open(os.path.join(run_dir, "ferricd.json"), "w") as f:
            json.dump({"shards": 1, "protocol": PROTOCOL_VERSION, "pid": os.getpid(), "transports": ["unix"]}, f)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(os.path.join(run_dir, "shard-0.stream"))
        self.listener.listen(1)
        self.frames = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        conn, _ = self.listener.accept()
        conn.settimeout(10)
        data = b""
        while len(data) < 4 or len(data) < 4 + struct.unpack_from("<I", data)[0]:
            chunk = conn.recv(1 << 16)
            if not chunk:
                break
            data += chunk
        self.frames.append(data)
        conn.close()  # everything read: the client sees the connection end, not reset

    def close(self):
        self.thread.join(10)
        self.listener.close()


def test_a_write_whose_answer_is_lost_is_reported_as_maybe_applied(make_daemon):
    """The shard read the whole request and went away without answering: the client cannot know
    whether it was applied, and says so instead of sending a write that changes something again."""
    run_dir = os.path.join(make_daemon.tempdir(), "run")
    os.makedirs(run_dir)
    shard = AnswerlessShard(run_dir)
    client = Client(run_dir, timeout_ms=3000, transport="unix", local_reads=False)
    try:
        with pytest.raises(FerricConnectionError, match="may or may not have been applied"):
            client.incr(b"st:lost")
    finally:
        client.close()
        shard.close()
    assert len(shard.frames) == 1, "the write was sent once"


def test_a_write_to_a_restarted_shard_is_sent_again_on_a_new_connection(make_daemon):
    """A connection whose shard died refuses the send outright: nothing was delivered, so the write
    goes to the new shard, once."""
    daemon = make_daemon(shards=1)
    client = daemon.client(timeout_ms=RESTART_TIMEOUT_MS, transport="unix")
    assert client.incr(b"st:resend") == 1
    old_pid = client.hello()["pid"]
    os.kill(old_pid, signal.SIGKILL)
    time.sleep(0.1)
    assert client.incr(b"st:resend") == 2
    assert client.hello()["pid"] != old_pid
    assert daemon.stop() == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root connects whatever the socket's mode")
def test_no_permission_on_the_socket_names_the_group(make_daemon):
    daemon = make_daemon(shards=1)
    os.chmod(os.path.join(daemon.run_dir, "shard-0.stream"), 0o000)
    client = daemon.client(timeout_ms=500, transport="unix", local_reads=False)
    with pytest.raises(FerricConnectionError, match="permission denied"):
        client.ping()


class SlowShard:
    """A stand-in for a shard that misbehaves at the socket level, which a real one cannot be made to:
    it accepts one connection on ``run_dir/shard-0.stream``, then reads ``chunk`` bytes every
    ``every_s`` seconds after ``start_after_s``, and never answers."""

    def __init__(self, run_dir, start_after_s, chunk, every_s):
        with open(os.path.join(run_dir, "ferricd.json"), "w") as f:
            json.dump({"shards": 1, "protocol": PROTOCOL_VERSION, "pid": os.getpid(), "transports": ["unix"]}, f)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(os.path.join(run_dir, "shard-0.stream"))
        self.listener.listen(1)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(start_after_s, chunk, every_s), daemon=True)
        self.thread.start()

    def _run(self, start_after_s, chunk, every_s):
        conn, _ = self.listener.accept()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.stop.wait(start_after_s)
        while not self.stop.is_set():
            try:
                if not conn.recv(chunk):
                    break
            except OSError:
                break
            self.stop.wait(every_s)
        conn.close()

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.listener.close()


@pytest.mark.parametrize("start_after_s, chunk, every_s", [
    (0.0, 64 * 1024, 0.05),  # drains slowly, but never stops taking bytes
    (0.45, 1 << 24, 0.01),  # takes nothing for most of the timeout, then everything, then never answers
])
def test_a_call_to_a_shard_that_drains_slowly_ends_at_its_timeout(make_daemon, start_after_s, chunk, every_s):
    run_dir = os.path.join(make_daemon.tempdir(), "run")
    os.makedirs(run_dir)
    shard = SlowShard(run_dir, start_after_s, chunk, every_s)
    client = Client(run_dir, timeout_ms=500, transport="unix", local_reads=False)
    try:
        started = time.monotonic()
        with pytest.raises(FerricTimeoutError):
            client.set(b"st:slow", b"x" * (8 * 1024 * 1024))
        elapsed = time.monotonic() - started
        assert elapsed < 0.75, f"a 500 ms call took {elapsed:.2f} s"
    finally:
        client.close()
        shard.close()


def test_signals_arriving_during_a_wait_do_not_extend_it(make_daemon):
    """A process taking a signal every 50 ms (a profiler, a heartbeat) while a shard does not answer:
    every interrupted wait resumes with the time left, not with a fresh timeout."""
    daemon = make_daemon(shards=1)
    client = daemon.client(timeout_ms=300, transport="unix", local_reads=False)
    pid = client.hello()["pid"]
    previous = signal.signal(signal.SIGUSR1, lambda *_: None)
    stop = threading.Event()

    def tick():  # SIGALRM and the real-time timer belong to pytest-timeout
        while not stop.wait(0.05):
            os.kill(os.getpid(), signal.SIGUSR1)

    ticker = threading.Thread(target=tick, daemon=True)
    os.kill(pid, signal.SIGSTOP)
    try:
        ticker.start()
        started = time.monotonic()
        with pytest.raises(FerricTimeoutError):
            client.set(b"st:signals", b"v")
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        ticker.join(5)
        signal.signal(signal.SIGUSR1, previous)
        os.kill(pid, signal.SIGCONT)
    assert elapsed < 0.6, f"a 300 ms call took {elapsed:.2f} s under a 50 ms timer"
    assert daemon.stop() == 0



def test_an_error_reply_keeps_the_connection(stream_daemon):
    """An error reply arrives whole, like any other: the stream stays in step, so the client keeps
    its connection instead of paying a new connect (and a new accept in the shard) after every error."""
    client = stream_daemon.client(timeout_ms=3000, transport="unix", local_reads=False)
    key = b"st:error-keeps"
    shard_id = client._shard_of(key)
    client.set(key, b"not a number")
    sock = client._connection(shard_id)._sock
    assert sock is not None
    for _ in range(5):
        with pytest.raises(FerricError, match="integer"):
            client.incr(key)
        assert client._connection(shard_id)._sock is sock, "the client dropped its connection after an error reply"
    assert client.get(key) == b"not a number"


def test_zeromq_peers_past_the_cap_do_not_abort_the_shard(make_daemon):
    """libzmq accepts on its own thread and aborts the process (SIGABRT) when accept() finds no
    descriptor left: the shard counts its ZeroMQ peers and stops listening for a while at the cap
    instead (which ends its ZeroMQ connections; their clients reconnect by themselves)."""
    import zmq

    daemon = make_daemon(shards=1, max_open_files=64)
    client = daemon.client(timeout_ms=3000, transport="unix", local_reads=False)
    shard_pid = client.hello()["pid"]
    context = zmq.Context()
    dealers, answered = [], 0
    try:
        for i in range(80):
            dealer = context.socket(zmq.DEALER)
            dealer.linger = 0
            dealer.connect(f"ipc://{daemon.run_dir}/shard-0.sock")
            dealer.send(pack([i, "ping", []]))
            dealers.append(dealer)
            if dealer.poll(200):
                assert msgpack.unpackb(dealer.recv(), raw=False) == [i, 0, "pong"]
                answered += 1
        assert "SIGABRT" not in daemon.stderr() and client.hello()["pid"] == shard_pid, "the shard was replaced"
        assert 0 < answered < 80, answered
        assert daemon.stderr().count("stops listening for") == 1  # said once, not once per pause
        for dealer in dealers:
            dealer.close()
        dealers = []
        deadline = time.monotonic() + 5
        while "listens again" not in daemon.stderr():
            assert time.monotonic() < deadline, "ZeroMQ did not listen again once its peers left"
            time.sleep(0.1)
        zmq_client = daemon.client(timeout_ms=3000, transport="zmq", local_reads=False)
        assert zmq_client.ping() is True
        still_serving(client, "zmq-cap")
    finally:
        for dealer in dealers:
            dealer.close()
        context.term()
    assert daemon.stop() == 0
