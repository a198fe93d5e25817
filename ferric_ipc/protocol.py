"""Wire protocol between clients and shards: msgpack frames, request ids, typed error replies.

Request frame:  ``[request_id, op, args]``
Reply frame:    ``[request_id, status, result]``

Two transports carry the same frames to a shard:

- ZeroMQ: one message part per frame, DEALER to the shard's ROUTER on
  ``ipc://run_dir/shard-K.sock``;
- a Unix stream socket ``run_dir/shard-K.stream`` (what ferric_ipc.Client uses on
  the same host: no I/O threads between the two processes), where every frame is
  preceded by its length as STREAM_HEADER.

- ``request_id`` is an unsigned integer chosen by the client; the reply echoes
  it, so a late reply is never taken for the answer to a newer request.
- ``op`` is a str from OPS; ``args`` a list. Keys and values travel as msgpack
  bin (bytes); text fields as str.
- ``status`` is STATUS_OK (``result`` is the answer) or STATUS_ERROR
  (``result`` is ``[code, message]`` with ``code`` from ERROR_CODES).

``pack`` and ``unpack`` are the one place msgpack enters and leaves.
See docs/protocol.md for every op's arguments and result.
"""

import struct
from typing import Any

import msgpack

from ferric_ipc.errors import (
    CommandError,
    FerricError,
    LimitError,
    ProtocolError,
    StorageError,
    StorageFullError,
)

PROTOCOL_VERSION = 2  # 2: pttl, getex, delete_if, patch, lease, multi, delete_prefix; incr takes ttl_ms

#: Transports a daemon lists in ferricd.json under "transports".
TRANSPORT_ZMQ = "zmq"
TRANSPORT_UNIX = "unix"

#: The length prefix of a frame on the Unix stream transport (little-endian u32).
STREAM_HEADER = struct.Struct("<I")
#: Longest frame either side accepts on the stream transport; a client splits nothing, so a
#: pipeline whose share of one shard is larger gets LimitError before anything is sent.
MAX_STREAM_FRAME_BYTES = 2**31 - 1

#: The longest TTL a request may carry (about 146 million years): now + MAX_TTL_MS stays below
#: MAX_EXPIRE_AT_MS, so every path (shard, recovery, C and Python local reads) compares expiries alike.
MAX_TTL_MS = 2**62
#: The largest absolute expiry stored (signed 64-bit, so no reader can take it for a negative time).
MAX_EXPIRE_AT_MS = 2**63 - 1

STATUS_OK = 0
STATUS_ERROR = 1

#: op name -> number of arguments.
OPS = {
    "ping": 0,
    "hello": 0,
    "get": 1,
    "mget": 1,
    "set": 5,  # key, value, ttl_ms | None, nx, xx
    "mset": 2,  # [[key, value], ...], ttl_ms | None
    "delete": 1,  # [key, ...]
    "exists": 1,  # [key, ...]
    "expire": 2,  # key, ttl_ms
    "persist": 1,
    "pttl": 1,
    "getex": 3,  # key, ttl_ms | None, persist
    "incr": 3,  # key, delta, ttl_ms | None (applies when the counter is created)
    "getdel": 1,
    "delete_if": 2,  # key, expected
    "set_if": 5,  # key, value, guard_key, expected | None, ttl_ms | None
    "patch": 5,  # key, {field: msgpack bytes}, [field, ...], ttl_ms | None, create
    "lease": 3,  # key, token, ttl_ms
    "scan": 3,  # prefix, cursor, count
    "delete_prefix": 3,  # prefix, cursor, table_capacity | None: one bounded step
    "info": 0,
    "merge": 0,  # start merging the shard's data files now; answers like merge_status
    "merge_status": 0,
    "batch": 1,  # [[op, args], ...]: many requests in one frame, answered in one frame
    "multi": 1,  # [[op, args], ...]: one shard's transaction, all or none
}

#: Ops that change nothing, so a client may resend them after a timeout.
IDEMPOTENT_OPS = frozenset({"ping", "hello", "get", "mget", "exists", "pttl", "scan", "info", "merge_status"})

#: Ops a transaction (``multi``) may hold: single-shard reads and writes of named keys.
TRANSACTION_OPS = frozenset({
    "get", "mget", "set", "mset", "delete", "exists", "expire", "persist", "pttl", "getex", "incr", "getdel",
    "delete_if", "set_if", "patch", "lease",
})

#: error code -> exception class a client raises for it.
ERROR_CODES: dict[str, type[FerricError]] = {
    "BAD_FRAME": ProtocolError,
    "UNKNOWN_OP": ProtocolError,
    "BAD_ARGS": CommandError,
    "WRONG_TYPE": CommandError,
    "NOT_INTEGER": CommandError,
    "WRONG_SHARD": CommandError,
    "LIMIT": LimitError,
    "KEYSPACE_FULL": LimitError,  # a keyspace that never evicts is at its max_bytes
    "STORAGE": StorageError,
    "STORAGE_FULL": StorageFullError,
    "INTERNAL": FerricError,
}



def error_code(exc: BaseException) -> str:
    """The code a shard answers for ``exc``: the ``code`` it carries (a CommandError's, or a class's own, such as
    a keyspace being full), else the first code of ERROR_CODES for its nearest class; BAD_ARGS for a plain
    TypeError or ValueError (bad arguments), INTERNAL for anything else."""
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code in ERROR_CODES:
        return code
    for cls in type(exc).__mro__:
        if cls in _FIRST_CODE:
            return _FIRST_CODE[cls]
    return "BAD_ARGS" if isinstance(exc, (TypeError, ValueError)) else "INTERNAL"


_FIRST_CODE = {cls: code for code, cls in reversed(list(ERROR_CODES.items()))}

_packer_options: dict[str, Any] = {"use_bin_type": True}
# unpackb bounds every declared length by the frame's own size, so a hostile header cannot
# make it allocate more than the frame; strict_map_key refuses non-str/bytes map keys.
_unpack_options: dict[str, Any] = {"raw": False, "strict_map_key": True}


def pack(obj: object) -> bytes:
    return msgpack.packb(obj, **_packer_options)


def unpack(frame: bytes) -> Any:
    """Decode one frame; raises ProtocolError for anything that is not exactly one msgpack object."""
    try:
        return msgpack.unpackb(frame, **_unpack_options)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(f"malformed frame: {exc}") from None


def request(request_id: int, op: str, args: list[Any]) -> bytes:
    return pack([request_id, op, args])


def ok_reply(request_id: int, result: object) -> bytes:
    return pack([request_id, STATUS_OK, result])


def error_reply(request_id: int | None, code: str, message: str) -> bytes:
    return pack([request_id, STATUS_ERROR, [code, message]])


def parse_request(frame: bytes) -> tuple[int, str, list[Any]]:
    """``(request_id, op, args)`` of a request frame.

    Raises ProtocolError with ``.request_id`` set (None if unknown) and
    ``.code`` set to BAD_FRAME or UNKNOWN_OP.
    """
    try:
        message = unpack(frame)
    except ProtocolError as exc:
        raise _request_error(None, "BAD_FRAME", str(exc)) from None
    if not (isinstance(message, list) and len(message) == 3):
        raise _request_error(None, "BAD_FRAME", "a request is [request_id, op, args]")
    request_id, op, args = message
    if not (type(request_id) is int and 0 <= request_id < 2**64):  # bool is an int subclass: refused
        raise _request_error(None, "BAD_FRAME", "request_id must be an unsigned 64-bit integer")
    if not isinstance(op, str) or op not in OPS:
        raise _request_error(request_id, "UNKNOWN_OP", f"unknown op {op!r}; known ops: {', '.join(OPS)}")
    if not isinstance(args, list) or len(args) != OPS[op]:
        raise _request_error(request_id, "BAD_ARGS", f"{op} takes {OPS[op]} arguments in a list")
    return request_id, op, args


def parse_batch_item(item: object) -> tuple[str, list[Any]]:
    """``(op, args)`` of one request inside a batch; raises ProtocolError with ``.code`` like parse_request."""
    if not (isinstance(item, list) and len(item) == 2):
        raise _request_error(None, "BAD_FRAME", "a batch holds [op, args] pairs")
    op, args = item
    if not isinstance(op, str) or op not in OPS or op in ("batch", "multi"):
        raise _request_error(None, "UNKNOWN_OP", f"unknown op {op!r} in a batch; known ops: {', '.join(OPS)}")
    if not isinstance(args, list) or len(args) != OPS[op]:
        raise _request_error(None, "BAD_ARGS", f"{op} takes {OPS[op]} arguments in a list")
    return op, args


def batch_results(results: object) -> list[Any]:
    """The answers in a batch reply: each result, or the exception its error entry maps to."""
    if not isinstance(results, list):
        raise ProtocolError("malformed batch reply: expected a list")
    answers: list[Any] = []
    for entry in results:
        if not (isinstance(entry, list) and len(entry) == 2):
            raise ProtocolError("malformed batch reply entry")
        status, result = entry
        if status == STATUS_OK:
            answers.append(result)
        elif status == STATUS_ERROR and isinstance(result, list) and len(result) == 2:
            answers.append(_error(None, *result))
        else:
            raise ProtocolError(f"malformed batch reply status {status!r}")
    return answers


def _error(request_id: int | None, code: str, text: str) -> FerricError:
    error_class = ERROR_CODES.get(code, FerricError)
    error = error_class(text, code) if error_class is CommandError else error_class(text)
    error.code = code
    error.request_id = request_id
    return error


def parse_reply(frame: bytes) -> tuple[int | None, Any]:
    """``(request_id, result)`` of a reply frame; an error reply raises its mapped exception."""
    message = unpack(frame)
    # A request id of None answers a frame too broken to have one.
    if not (isinstance(message, list) and len(message) == 3 and isinstance(message[0], (int, type(None)))):
        raise ProtocolError("malformed reply: expected [request_id, status, result]")
    request_id, status, result = message
    if status == STATUS_OK:
        return request_id, result
    if status == STATUS_ERROR and isinstance(result, list) and len(result) == 2:
        raise _error(request_id, *result)
    raise ProtocolError(f"malformed reply status {status!r}")


def _request_error(request_id: int | None, code: str, message: str) -> ProtocolError:
    error = ProtocolError(message)
    error.request_id = request_id
    error.code = code
    return error
