"""Hostile and malformed frames sent straight to a shard, over a raw ZeroMQ DEALER and a raw Unix stream socket.

Every bad frame must get exactly one error reply ``[request_id or None, 1, [code, message]]``
and the shard must keep serving correct answers. "Exactly one" is checked with a sentinel:
after each batch a ping with a fresh id is sent, and the very next reply must be its pong
(both transports are FIFO, so an extra reply would arrive before it, a missing one would
leave the count short). Damage to the stream's own framing is in test_stream_transport.py.
"""

import os
import socket
import struct

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings, strategies as st

from ferric_ipc.protocol import OPS
from ferric_ipc.routing import shard_for
from tests.daemon.conftest import keys_on_shard

MAX_VALUE = 1024
K0 = keys_on_shard(0, 10, "bad:s0:")  # keys that belong to shard 0, the one the raw socket talks to
CONFIG = f"[storage]\nmax_value_bytes = {MAX_VALUE}\n"
STATUS_OK, STATUS_ERROR = 0, 1
INPUT_ERRORS = {"BAD_FRAME", "UNKNOWN_OP", "BAD_ARGS", "LIMIT"}

HYPOTHESIS = settings(
    max_examples=250, deadline=None, database=None, derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


def pack(obj):
    return msgpack.packb(obj, use_bin_type=True)


def _op_of(frame):
    try:
        message = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception:
        return None
    return message[1] if isinstance(message, list) and len(message) == 3 and isinstance(message[1], str) else None


class RawShard:
    """A bare DEALER on ``ipc://run_dir/shard-0.sock``; counts the error replies it receives."""

    def __init__(self, endpoint):
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.linger = 0
        self.socket.rcvtimeo = 3000
        self.socket.connect(endpoint)
        self.next_id = 1_000_000
        self.errors_seen = 0

    def recv_frame(self):
        try:
            return self.socket.recv()
        except zmq.Again:
            pytest.fail("the shard sent no reply within 3 s")

    def recv(self):
        reply = msgpack.unpackb(self.recv_frame(), raw=False, strict_map_key=False)
        assert isinstance(reply, list) and len(reply) == 3, f"malformed reply {reply!r}"
        assert reply[1] in (STATUS_OK, STATUS_ERROR), reply
        if reply[1] == STATUS_ERROR:
            self.errors_seen += 1
            assert isinstance(reply[2], list) and len(reply[2]) == 2, reply
            code, message = reply[2]
            assert isinstance(code, str) and isinstance(message, str) and message, reply
        return reply

    def exchange(self, frame):
        """Send one frame (one message part) and return the one reply."""
        self.send(frame)
        reply = self.recv()
        if reply[1] == STATUS_OK and _op_of(frame) == "batch":
            # A batch is answered with one entry per request inside it; its errors count too.
            assert isinstance(reply[2], list), reply
            for entry in reply[2]:
                assert isinstance(entry, list) and len(entry) == 2 and entry[0] in (STATUS_OK, STATUS_ERROR), reply
                if entry[0] == STATUS_ERROR:
                    self.errors_seen += 1
                    assert entry[1][0] not in ("INTERNAL", "STORAGE"), reply
        return reply

    def sync(self):
        """The next reply must answer a fresh ping: no reply is missing or extra before it."""
        self.next_id += 1
        self.send(pack([self.next_id, "ping", []]))
        assert self.recv() == [self.next_id, STATUS_OK, "pong"], "a reply was missing or extra"

    def send(self, frame):
        self.socket.send(frame)

    def close(self):
        self.socket.close(linger=0)
        self.context.term()


class RawStreamShard(RawShard):
    """A bare Unix stream socket on ``run_dir/shard-0.stream``: each frame preceded by its u32 length."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(3)
        self.sock.connect(path)
        self.inbox = b""
        self.next_id = 2_000_000
        self.errors_seen = 0

    def send(self, frame):
        self.sock.sendall(struct.pack("<I", len(frame)) + frame)

    def recv_frame(self):
        while True:
            if len(self.inbox) >= 4:
                (length,) = struct.unpack_from("<I", self.inbox)
                if len(self.inbox) >= 4 + length:
                    frame, self.inbox = self.inbox[4:4 + length], self.inbox[4 + length:]
                    return frame
            try:
                chunk = self.sock.recv(1 << 20)
            except socket.timeout:
                pytest.fail("the shard sent no reply within 3 s")
            assert chunk, "the shard closed the connection"
            self.inbox += chunk

    def close(self):
        self.sock.close()


@pytest.fixture(scope="module")
def bad_daemon(module_daemon_factory):
    return module_daemon_factory(shards=2, config=CONFIG)


@pytest.fixture(scope="module")
def normal(bad_daemon):
    return bad_daemon.client(timeout_ms=3000)


@pytest.fixture(scope="module", params=["unix", "zmq"])
def raw(bad_daemon, normal, request):
    """A raw connection to shard 0 over each transport, on an empty store; ``errors_before`` is the shard's
    error count then."""
    normal.delete_prefix(b"")
    errors_before = normal.info()[0]["errors"]
    if request.param == "zmq":
        shard = RawShard(f"ipc://{bad_daemon.run_dir}/shard-0.sock")
    else:
        shard = RawStreamShard(f"{bad_daemon.run_dir}/shard-0.stream")
    shard.transport = request.param
    shard.errors_before = errors_before
    yield shard
    shard.close()


class Serving:
    """Checks, with a normal client, that shard 0 (and 1) still store and return the right values."""

    def __init__(self, client):
        self.client = client
        self.round = 0
        self.keys = keys_on_shard(0, 1, "bad:alive:0:") + keys_on_shard(1, 1, "bad:alive:1:")

    def check(self):
        self.round += 1
        for key in self.keys:
            value = b"round-%d-" % self.round + key
            assert self.client.set(key, value) is True
            assert self.client.get(key) == value
        assert self.client.incr(b"bad:alive:counter") == self.round


@pytest.fixture(scope="module")
def serving(normal, raw):
    return Serving(normal)  # one per transport: the store was emptied for it


def assert_error(reply, request_id, code):
    assert reply[0] == request_id and reply[1] == STATUS_ERROR and reply[2][0] == code, (
        f"expected [{request_id!r}, 1, [{code!r}, ...]], got {reply!r}"
    )


def run_cases(raw, serving, cases):
    for frame, request_id, code in cases:
        assert_error(raw.exchange(frame), request_id, code)
    raw.sync()
    serving.check()


def test_shard_answers_a_well_formed_request(raw, serving):
    assert raw.exchange(pack([7, "ping", []])) == [7, STATUS_OK, "pong"]
    assert raw.exchange(pack([0, "set", [b"bad:k", b"v", None, False, False]])) == [0, STATUS_OK, True]
    assert raw.exchange(pack([2**64 - 1, "get", [b"bad:k"]])) == [2**64 - 1, STATUS_OK, b"v"]
    raw.sync()
    serving.check()


def test_random_bytes(raw, serving):
    valid = pack([5, "ping", []])
    run_cases(raw, serving, [
        (b"", None, "BAD_FRAME"),
        (b"\x00", None, "BAD_FRAME"),  # msgpack 0: not a list
        (b"\xc1", None, "BAD_FRAME"),  # a byte msgpack never uses
        (b"\xff" * 100, None, "BAD_FRAME"),
        (b"\xdd\xff\xff\xff\xff", None, "BAD_FRAME"),  # array of 2**32-1 items, none present
        (b"\xdb\xff\xff\xff\xff", None, "BAD_FRAME"),  # str of 4 GiB, not present
        (valid[:-1], None, "BAD_FRAME"),  # truncated
        (valid + b"\x00", None, "BAD_FRAME"),  # trailing bytes after one object
        (valid + valid, None, "BAD_FRAME"),  # two objects in one frame
        (b"\x91" * 100_000 + b"\x00", None, "BAD_FRAME"),  # nested deeper than the unpacker allows
        (b"\x93\x01\xa4ping\x90" + b"\x00" * 1000, None, "BAD_FRAME"),  # a request, then junk
    ])
    # Random bytes: whatever they decode to, one error reply about the input.
    _check_generated(raw, [os.urandom(n) for n in (1, 2, 7, 100, 5000, 200_000, 2_000_000)])
    serving.check()


def test_wrong_shapes(raw, serving):
    run_cases(raw, serving, [
        (pack(5), None, "BAD_FRAME"),
        (pack("ping"), None, "BAD_FRAME"),
        (pack(None), None, "BAD_FRAME"),
        (pack({"id": 1, "op": "ping", "args": []}), None, "BAD_FRAME"),
        (pack([]), None, "BAD_FRAME"),
        (pack([1]), None, "BAD_FRAME"),
        (pack([1, "ping"]), None, "BAD_FRAME"),
        (pack([1, "ping", [], None]), None, "BAD_FRAME"),
        (pack(["1", "ping", []]), None, "BAD_FRAME"),
        (pack([b"1", "ping", []]), None, "BAD_FRAME"),
        (pack([1.0, "ping", []]), None, "BAD_FRAME"),
        (pack([None, "ping", []]), None, "BAD_FRAME"),
        (pack([[1], "ping", []]), None, "BAD_FRAME"),
        (pack([-1, "ping", []]), None, "BAD_FRAME"),
        (pack([-(2**63), "ping", []]), None, "BAD_FRAME"),
        (pack({1: 2}), None, "BAD_FRAME"),  # int map keys are refused by the unpacker
        (pack([1, "ping", {}]), 1, "BAD_ARGS"),
        (pack([2, "ping", None]), 2, "BAD_ARGS"),
        (pack([3, "get", b"bad:k"]), 3, "BAD_ARGS"),
    ])


def test_boolean_request_id_is_not_an_integer(raw, serving):
    """msgpack true/false are not integers: a request id of true must be refused, not echoed."""
    run_cases(raw, serving, [
        (pack([True, "ping", []]), None, "BAD_FRAME"),
        (pack([False, "ping", []]), None, "BAD_FRAME"),
    ])


def test_unknown_ops(raw, serving):
    run_cases(raw, serving, [
        (pack([10, "nope", []]), 10, "UNKNOWN_OP"),
        (pack([11, "PING", []]), 11, "UNKNOWN_OP"),
        (pack([12, b"ping", []]), 12, "UNKNOWN_OP"),  # op travels as str
        (pack([13, 5, []]), 13, "UNKNOWN_OP"),
        (pack([14, None, []]), 14, "UNKNOWN_OP"),
        (pack([15, "", []]), 15, "UNKNOWN_OP"),
        (pack([16, "__init__", []]), 16, "UNKNOWN_OP"),
        (pack([17, "op_ping", []]), 17, "UNKNOWN_OP"),
        (pack([18, "run", ["ping", []]]), 18, "UNKNOWN_OP"),
        (pack([19, ["ping"], []]), 19, "UNKNOWN_OP"),
    ])


def test_wrong_argument_counts_and_types(raw, serving, bad_daemon):
    other_shard_key = keys_on_shard(1, 1, "bad:other:")[0]
    run_cases(raw, serving, [
        # counts
        (pack([20, "get", []]), 20, "BAD_ARGS"),
        (pack([21, "get", [b"a", b"b"]]), 21, "BAD_ARGS"),
        (pack([22, "ping", [1]]), 22, "BAD_ARGS"),
        (pack([23, "set", [b"k", b"v"]]), 23, "BAD_ARGS"),
        (pack([24, "set", [b"k", b"v", None, False, False, None]]), 24, "BAD_ARGS"),
        # key types: keys travel as bin
        (pack([25, "get", [5]]), 25, "BAD_ARGS"),
        (pack([26, "get", ["bad:k"]]), 26, "BAD_ARGS"),
        (pack([27, "get", [None]]), 27, "BAD_ARGS"),
        (pack([28, "get", [[b"k"]]]), 28, "BAD_ARGS"),
        (pack([29, "set", ["k", b"v", None, False, False]]), 29, "BAD_ARGS"),
        (pack([30, "mget", [b"k"]]), 30, "BAD_ARGS"),
        (pack([31, "mget", [[b"k", 5]]]), 31, "BAD_ARGS"),
        (pack([32, "delete", [[b"k", "s"]]]), 32, "BAD_ARGS"),
        (pack([33, "exists", [None]]), 33, "BAD_ARGS"),
        # values and options
        (pack([34, "set", [K0[0], 5, None, False, False]]), 34, "BAD_ARGS"),
        (pack([35, "set", [K0[0], None, None, False, False]]), 35, "BAD_ARGS"),
        (pack([36, "set", [K0[0], b"v", -1, False, False]]), 36, "BAD_ARGS"),
        (pack([37, "set", [K0[0], b"v", 0, False, False]]), 37, "BAD_ARGS"),
        (pack([38, "set", [K0[0], b"v", 1.5, False, False]]), 38, "BAD_ARGS"),
        (pack([39, "set", [K0[0], b"v", "100", False, False]]), 39, "BAD_ARGS"),
        (pack([40, "set", [K0[0], b"v", True, False, False]]), 40, "BAD_ARGS"),
        (pack([41, "set", [K0[0], b"v", 2**64 - 1, False, False]]), 41, "BAD_ARGS"),
        (pack([42, "set", [K0[0], b"v", None, 1, False]]), 42, "BAD_ARGS"),
        (pack([43, "set", [K0[0], b"v", None, True, True]]), 43, "BAD_ARGS"),
        (pack([44, "mset", [[[b"k"]], None]]), 44, "BAD_ARGS"),
        (pack([45, "mset", [b"k", None]]), 45, "BAD_ARGS"),
        (pack([46, "mset", [[[b"k", 5]], None]]), 46, "BAD_ARGS"),
        (pack([47, "mset", [[[b"k", b"v"]], -5]]), 47, "BAD_ARGS"),
        (pack([48, "incr", [b"bad:n", "1", None]]), 48, "BAD_ARGS"),
        (pack([49, "incr", [b"bad:n", 2**63, None]]), 49, "BAD_ARGS"),
        (pack([50, "incr", [b"bad:n", 1.0, None]]), 50, "BAD_ARGS"),
        (pack([51, "incr", [b"bad:n", True, None]]), 51, "BAD_ARGS"),
        (pack([52, "expire", [b"bad:k", None]]), 52, "BAD_ARGS"),
        (pack([53, "expire", [b"bad:k", -1]]), 53, "BAD_ARGS"),
        (pack([54, "scan", [b"", 0, 0]]), 54, "BAD_ARGS"),
        (pack([55, "scan", [b"", 0, 10_001]]), 55, "BAD_ARGS"),
        (pack([56, "scan", [b"", -1, 10]]), 56, "BAD_ARGS"),
        (pack([57, "scan", [b"", "0", 10]]), 57, "BAD_ARGS"),
        (pack([58, "scan", ["", 0, 10]]), 58, "BAD_ARGS"),
        (pack([59, "delete_prefix", [None, 0, None]]), 59, "BAD_ARGS"),
        (pack([60, "set_if", [K0[1], b"v", K0[2], 5, None]]), 60, "BAD_ARGS"),
        (pack([61, "set_if", [b"bad:k", b"v", "bad:g", None, None]]), 61, "BAD_ARGS"),
        (pack([62, "getdel", [1]]), 62, "BAD_ARGS"),
        (pack([63, "persist", [3]]), 63, "BAD_ARGS"),
    ])
    assert serving.client.get(K0[0]) is None, "no refused set wrote anything"
    # set_if whose guard lives on another shard: refused by the shard itself
    assert shard_for(other_shard_key, 2) == 1
    assert_error(raw.exchange(pack([64, "set_if", [b"bad:si", b"v", other_shard_key, None, None]])), 64, "WRONG_SHARD")
    raw.sync()
    assert serving.client.get(b"bad:si") is None
    assert serving.client.incr(K0[5]) == 1
    run_cases(raw, serving, [(pack([65, "incr", [K0[5], 2**63 - 1, None]]), 65, "NOT_INTEGER")])  # overflow
    assert serving.client.get(K0[5]) == b"1"


def test_scan_cursor_out_of_range(raw, serving):
    """A cursor far past the table is an empty, finished scan or BAD_ARGS, never an internal error."""
    for request_id, cursor in ((70, 2**64 - 1), (71, 2**63), (72, 10**12)):
        reply = raw.exchange(pack([request_id, "scan", [b"", cursor, 10]]))
        assert reply[0] == request_id
        assert reply[1] == STATUS_OK and reply[2] == [0, []] or reply[2][0] == "BAD_ARGS", reply
    raw.sync()
    serving.check()


def test_oversized_keys_and_values(raw, serving):
    big_key = b"k" * (64 * 1024 + 1)
    limit_key = b"K" * (64 * 1024)
    run_cases(raw, serving, [
        (pack([80, "get", [big_key]]), 80, "LIMIT"),
        (pack([81, "set", [big_key, b"v", None, False, False]]), 81, "LIMIT"),
        (pack([82, "delete", [[b"bad:small", big_key]]]), 82, "LIMIT"),
        (pack([83, "set", [K0[3], b"x" * (MAX_VALUE + 1), None, False, False]]), 83, "LIMIT"),
        (pack([84, "set", [K0[3], b"x" * (10 * 1024 * 1024), None, False, False]]), 84, "LIMIT"),
        (pack([85, "mset", [[[K0[4], b"fine"], [K0[3], b"x" * (MAX_VALUE + 1)]], None]]), 85, "LIMIT"),
        (pack([86, "set_if", [K0[3], b"x" * (MAX_VALUE + 1), K0[3], None, None]]), 86, "LIMIT"),
        (pack([87, "scan", [big_key, 0, 10]]), 87, "LIMIT"),
    ])
    assert serving.client.mget([K0[3], K0[4]]) == [None, None], "a refused mset writes nothing"
    # exactly at the limits: accepted
    assert raw.exchange(pack([88, "set", [limit_key, b"y" * MAX_VALUE, None, False, False]])) == [88, STATUS_OK, True]
    assert raw.exchange(pack([89, "get", [limit_key]])) == [89, STATUS_OK, b"y" * MAX_VALUE]
    assert raw.exchange(pack([90, "delete", [[limit_key]]])) == [90, STATUS_OK, 1]
    raw.sync()


def test_multipart_messages(raw, serving):
    if raw.transport != "zmq":
        pytest.skip("message parts are a ZeroMQ notion; the stream's framing is tested in test_stream_transport.py")
    valid = pack([95, "ping", []])
    for parts in ([valid, valid], [b"", valid], [valid, b""], [valid] * 5, [b"x", b"y", b"z"]):
        raw.socket.send_multipart(parts)
        reply = raw.recv()
        assert reply[1] == STATUS_ERROR and reply[2][0] == "BAD_FRAME", (parts, reply)
        assert reply[0] is None, "a multi-part request is not answered as if its first part were the request"
    raw.sync()
    serving.check()


# -- generated frames ----------------------------------------------------------------

MSGPACK_SCALARS = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=40)
)
MSGPACK_VALUES = st.recursive(
    MSGPACK_SCALARS,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=8) | st.binary(max_size=8), children, max_size=4),
    max_leaves=20,
)


def _looks_valid(frame):
    """Whether ``frame`` is a well-formed request by the protocol's definition (then any reply but an error
    about the frame itself is fine)."""
    try:
        message = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception:
        return False
    return (
        isinstance(message, list) and len(message) == 3 and type(message[0]) is int
        and 0 <= message[0] < 2**64 and isinstance(message[1], str) and message[1] in OPS
        and isinstance(message[2], list)
        and len(message[2]) == OPS[message[1]]
    )


def _check_generated(raw, frames):
    for frame in frames:
        reply = raw.exchange(frame)
        if _looks_valid(frame):
            assert reply[1] == STATUS_OK or reply[2][0] not in ("INTERNAL", "STORAGE", "BAD_FRAME"), reply
        else:
            assert reply[1] == STATUS_ERROR and reply[2][0] in INPUT_ERRORS, (frame[:80], reply)
    raw.sync()


@HYPOTHESIS
@given(frames=st.lists(st.binary(max_size=200), min_size=1, max_size=12))
def test_generated_binary_frames(raw, serving, frames):
    _check_generated(raw, frames)
    serving.check()


@HYPOTHESIS
@given(messages=st.lists(MSGPACK_VALUES, min_size=1, max_size=12))
def test_generated_msgpack_structures(raw, serving, messages):
    _check_generated(raw, [pack(m) for m in messages])
    serving.check()


# Requests that get past the frame checks: a real request id and op, arbitrary arguments.
ARGUMENTS = (
    st.binary(max_size=12).map(lambda b: b"bad:gen:" + b) | st.integers(-(2**63), 2**64 - 1) | st.none()
    | st.booleans() | st.text(max_size=8) | st.floats(allow_nan=False) | st.lists(st.binary(max_size=8), max_size=3)
    | st.lists(st.lists(st.binary(max_size=8), min_size=2, max_size=2), max_size=3)
)


@HYPOTHESIS
@given(requests=st.lists(
    st.tuples(
        st.integers(0, 2**64 - 1),
        st.sampled_from(sorted(set(OPS) - {"delete_prefix"}) + ["nope", "Get"]),
        st.lists(ARGUMENTS, max_size=6),
    ),
    min_size=1, max_size=12,
))
def test_generated_near_valid_requests(raw, serving, requests):
    """Requests with a good id and (mostly) a real op, but arbitrary arguments: one reply each, echoing the
    id; a wrong op or argument count is refused as such; the rest succeed or are refused as bad input."""
    for request_id, op, args in requests:
        reply = raw.exchange(pack([request_id, op, args]))
        assert reply[0] == request_id, reply
        if op not in OPS:
            assert reply[1] == STATUS_ERROR and reply[2][0] == "UNKNOWN_OP", reply
        elif len(args) != OPS[op]:
            assert reply[1] == STATUS_ERROR and reply[2][0] == "BAD_ARGS", reply
        else:
            assert reply[1] == STATUS_OK or reply[2][0] in INPUT_ERRORS | {"NOT_INTEGER", "WRONG_SHARD"}, (
                op, args, reply
            )
    raw.sync()
    serving.check()


@pytest.mark.skipif("batch" not in OPS, reason="this protocol version has no batch op")
@HYPOTHESIS
@given(items=st.lists(
    st.one_of(
        st.tuples(st.sampled_from(sorted(set(OPS) - {"delete_prefix"}) + ["batch", "nope"]), st.lists(ARGUMENTS, max_size=6))
        .map(list),
        MSGPACK_VALUES,
    ),
    max_size=8,
))
def test_generated_batches(raw, serving, items):
    """A batch op holding arbitrary items: one reply, one entry per item, none an internal error."""
    raw.next_id += 1
    reply = raw.exchange(pack([raw.next_id, "batch", [items]]))
    assert reply[0] == raw.next_id and reply[1] == STATUS_OK, reply
    assert len(reply[2]) == len(items), (items, reply)
    raw.sync()
    serving.check()


def test_error_counter_matches_error_replies(raw, normal):
    """Runs last for each transport: the shard counted exactly the error replies this connection received."""
    raw.sync()
    assert normal.info()[0]["errors"] - raw.errors_before == raw.errors_seen
    assert raw.errors_seen > 1000
