"""A shard's memory for its peers is bounded: daemon.client_buffer_bytes, against a real ferricd.

Requests received but not yet run (whole or partial frames) and replies not yet sent count
against one bound per shard; past it the shard drops the peers holding the most, so a crowd of
peers that stall mid-request or never read their replies cannot grow it without limit.
"""

import os
import socket
import struct
import time

import msgpack
import psutil
import pytest

from ferric_ipc.errors import LimitError

from tests.daemon.test_stream_transport import connect, framed, still_serving


def connect_patiently(daemon):
    """A connection to shard 0, waiting while its listen backlog is full (EAGAIN), as the client does."""
    deadline = time.monotonic() + 10
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(os.path.join(daemon.run_dir, "shard-0.stream"))
            sock.settimeout(5)
            return sock
        except BlockingIOError:
            sock.close()
            assert time.monotonic() < deadline, "the shard stopped accepting"
            time.sleep(0.01)

BUFFER_BYTES = 32 << 20
CONFIG = f"""
[daemon]
client_buffer_bytes = {BUFFER_BYTES}

[storage]
max_value_bytes = "1MiB"
"""


def test_two_thousand_stalling_and_non_reading_peers_stay_within_the_bound(make_daemon):
    daemon = make_daemon(shards=1, config=CONFIG)
    client = daemon.client(timeout_ms=3000, transport="unix", local_reads=False)
    value = b"v" * (1 << 20)
    key = b"cb:big"
    assert client.set(key, value) is True
    shard = psutil.Process(client.hello()["pid"])
    rss_before = shard.memory_info().rss
    peers = []
    # 1,950 peers announce a 15 MiB request, send 100 KiB of it, and stall: 195 MiB if all were held.
    partial = struct.pack("<I", 15 << 20) + b"\x93" + b"x" * (100 << 10)
    for _ in range(1950):
        sock = connect_patiently(daemon)
        sock.sendall(partial)
        peers.append(sock)
    # 50 peers ask for 10 MiB of replies each and never read them: 500 MiB if all were held.
    gets = b"".join(framed([i, "get", [key]]) for i in range(10))
    for _ in range(50):
        sock = connect_patiently(daemon)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(gets)
        peers.append(sock)
    time.sleep(1.0)
    assert client.get(key) == value  # served throughout, within its timeout
    grown = shard.memory_info().rss - rss_before
    # The bound, plus what 2,000 connections cost in objects and socket state, plus allocator slack.
    assert grown < BUFFER_BYTES + (48 << 20), f"the shard grew by {grown >> 20} MiB"
    assert "more than daemon.client_buffer_bytes" in daemon.stderr()
    assert shard.pid == client.hello()["pid"]
    for sock in peers:
        sock.close()
    still_serving(client, "buffers")
    assert daemon.stop() == 0


def test_a_request_longer_than_half_the_bound_is_refused_with_the_limit(make_daemon):
    daemon = make_daemon(shards=1, config=CONFIG)
    client = daemon.client(timeout_ms=3000, transport="unix", local_reads=False)
    sock = connect(daemon)
    sock.sendall(struct.pack("<I", BUFFER_BYTES // 2 + 1) + b"\x93")
    inbox = b""
    while len(inbox) < 4 or len(inbox) < 4 + struct.unpack_from("<I", inbox)[0]:
        chunk = sock.recv(1 << 16)
        assert chunk, "closed without saying why"
        inbox += chunk
    reply = msgpack.unpackb(inbox[4:], raw=False)
    assert reply[:2] == [None, 1] and reply[2][0] == "BAD_FRAME", reply
    assert str(BUFFER_BYTES // 2) in reply[2][1]
    sock.close()
    still_serving(client, "long-request")


def test_the_client_refuses_a_pipeline_longer_than_the_shard_takes_before_sending_it(make_daemon):
    daemon = make_daemon(shards=1, config=CONFIG)
    for transport in ("unix", "zmq"):
        client = daemon.client(timeout_ms=3000, transport=transport, local_reads=False)
        pipe = client.pipeline()
        for i in range(20):  # 20 MiB in one frame, over the 16 MiB this shard takes
            pipe.set(f"cb:pipe:{i}", b"p" * (1 << 20))
        with pytest.raises(LimitError, match="client_buffer_bytes"):
            pipe.execute()
        assert client.get("cb:pipe:0") is None  # nothing was sent
        assert client.ping() is True  # and the connection is as good as before


def test_a_reply_longer_than_half_the_bound_is_refused_at_once_not_timed_out(make_daemon):
    """A reply that could never be held whole for its peer gets a LIMIT error saying so; before, it was
    queued past the bound, its connection shed, and the client waited out its timeout."""
    daemon = make_daemon(shards=1, config=CONFIG)
    client = daemon.client(timeout_ms=5000, transport="unix", local_reads=False)
    keys = [f"cb:large:{i}" for i in range(20)]  # 20 MiB in one reply, over the 16 MiB this shard sends
    for half in (keys[:10], keys[10:]):  # each write under the request limit
        client.mset({key: b"L" * ((1 << 20) - 64) for key in half})
    started = time.monotonic()
    with pytest.raises(LimitError, match="client_buffer_bytes"):
        client.mget(keys)
    assert time.monotonic() - started < 2, "refused only at the timeout"
    assert client.mget(keys[:4]) == [b"L" * ((1 << 20) - 64)] * 4  # fewer at once are served, same connection
