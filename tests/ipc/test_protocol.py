"""Frames, request ids and error mapping; routing with hash tags."""

import msgpack
import pytest
from hypothesis import given, strategies as st

from ferric_ipc import protocol
from ferric_ipc.errors import CommandError, LimitError, ProtocolError, StorageFullError
from ferric_ipc.keys import key_hash64
from ferric_ipc.routing import hash_tag, shard_for, shard_for_hashed


def test_request_round_trip():
    assert protocol.parse_request(protocol.request(7, "set", [b"k", b"v", None, False, False])) == (
        7, "set", [b"k", b"v", None, False, False])


@pytest.mark.parametrize(
    "frame, code, request_id",
    [
        (b"\xc1", "BAD_FRAME", None),
        (msgpack.packb({"op": "get"}), "BAD_FRAME", None),
        (msgpack.packb([1, "get"]), "BAD_FRAME", None),
        (msgpack.packb([-1, "get", [b"k"]]), "BAD_FRAME", None),
        (msgpack.packb(["1", "get", [b"k"]]), "BAD_FRAME", None),
        (msgpack.packb([5, "explode", []]), "UNKNOWN_OP", 5),
        (msgpack.packb([6, "get", [b"k", b"extra"]]), "BAD_ARGS", 6),
        (msgpack.packb([6, "get", b"k"]), "BAD_ARGS", 6),
    ],
)
def test_malformed_requests_name_their_problem(frame, code, request_id):
    with pytest.raises(ProtocolError) as info:
        protocol.parse_request(frame)
    assert (info.value.code, info.value.request_id) == (code, request_id)


@given(st.binary(max_size=200))
def test_any_bytes_either_parse_or_raise_protocol_error(frame):
    try:
        protocol.parse_request(frame)
    except ProtocolError:
        pass


@pytest.mark.parametrize(
    "code, error_class",
    [("LIMIT", LimitError), ("STORAGE_FULL", StorageFullError), ("NOT_INTEGER", CommandError),
     ("BAD_FRAME", ProtocolError)],
)
def test_error_replies_raise_the_mapped_exception(code, error_class):
    with pytest.raises(error_class, match="what happened") as info:
        protocol.parse_reply(protocol.error_reply(9, code, "what happened"))
    assert (info.value.code, info.value.request_id) == (code, 9)


def test_ok_reply_and_broken_reply():
    assert protocol.parse_reply(protocol.ok_reply(3, [b"a", None])) == (3, [b"a", None])
    with pytest.raises(ProtocolError):
        protocol.parse_reply(msgpack.packb("nonsense"))


def test_hash_tags_follow_the_redis_rule():
    assert hash_tag(b"{user:42}:cart") == b"user:42"
    assert hash_tag(b"a{b}c{d}") == b"b"
    assert hash_tag(b"{}user") == b"{}user"  # an empty tag does not count
    assert hash_tag(b"user{42") == b"user{42"
    assert shard_for(b"{user:42}:cart", 8) == shard_for(b"{user:42}:profile", 8) == shard_for(b"user:42", 8)


# Keys built from braces and a few letters hit every case: no tag, an empty tag, an unclosed brace, several tags.
@given(st.text(alphabet="{}ab", max_size=12).map(str.encode), st.integers(1, 64))
def test_routing_with_a_known_key_hash_agrees_with_shard_for(key, shard_count):
    assert shard_for_hashed(key, key_hash64(key), shard_count) == shard_for(key, shard_count)


def test_routing_spreads_keys_and_is_pinned():
    counts = [0] * 4
    for i in range(4000):
        counts[shard_for(b"key:%d" % i, 4)] += 1
    assert min(counts) > 850
    # Data placement depends on this: it must never change between releases.
    assert [shard_for(b"sess:%d" % i, 4) for i in range(8)] == PINNED


PINNED = [3, 0, 2, 0, 0, 2, 2, 0]


def test_batch_items_are_checked_like_requests():
    assert protocol.parse_batch_item(["get", [b"k"]]) == ("get", [b"k"])
    for item, code in [(["batch", [[]]], "UNKNOWN_OP"), (["nope", []], "UNKNOWN_OP"), (["get", []], "BAD_ARGS"),
                       ("get", "BAD_FRAME"), (["get"], "BAD_FRAME")]:
        with pytest.raises(ProtocolError) as info:
            protocol.parse_batch_item(item)
        assert info.value.code == code


def test_batch_results_keep_order_and_turn_errors_into_exceptions():
    answers = protocol.batch_results([[0, True], [1, ["NOT_INTEGER", "not a number"]], [0, b"v"]])
    assert answers[0] is True and answers[2] == b"v"
    assert isinstance(answers[1], CommandError) and answers[1].code == "NOT_INTEGER"
    with pytest.raises(ProtocolError):
        protocol.batch_results([[7, None]])
