"""Client: a process's connection to ferricd (routing, one connection per shard, timeouts, fork and thread safety)."""

import os
import platform
import secrets
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import timedelta
from typing import Any, Generic, Literal, NamedTuple, Self, TypeVar, overload

import msgpack
import zmq

from ferric_ipc import native, protocol
from ferric_ipc.connections import InFlight, ShardConnection, StreamShardConnection, ZmqShardConnection
from ferric_ipc.daemon_file import RUN_DIR_ENV, read_daemon_file
from ferric_ipc.errors import (
    CommandError,
    FerricConnectionError,
    FerricError,
    LimitError,
    LockNotAcquired,
    ProtocolError,
)
from ferric_ipc.file_layout import DAEMON_FILE, DEFAULT_RUN_DIR, shard_dir
from ferric_ipc.keys import MAX_KEY_BYTES, as_key, as_value, key_hash64
from ferric_ipc.local_reads import FALLBACK, MISSING, Answer, Found, LocalShardReader
from ferric_ipc.routing import hash_tag, shard_for, shard_for_hashed

# The C extension's multi-key read (None without it, or from a build that predates it).
_LOOKUP_MANY = getattr(native.extension, "lookup_many", None)

LOCAL_READS_SAFE = platform.machine().lower() in ("x86_64", "amd64")
DEFAULT_TIMEOUT_MS = 2_000

# The client checks types and key sizes before sending; the value limit is the daemon's to enforce.
_UNBOUNDED_VALUE = 2**32

Key = str | bytes
Value = str | bytes
#: A time to live: int milliseconds or a timedelta; None means none (or "unchanged", where a method says so).
TTL = int | timedelta | None


class _ForkCount:
    """Counts forks in this process's ancestry: a Client built before a fork sees a new count after it."""

    value = 0


def _after_fork_in_child() -> None:
    _ForkCount.value += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


class Lease(NamedTuple):
    """What ``Client.lease`` found: ``acquired``, the holder's ``token`` (ours if acquired) and its ``ttl_ms`` left."""

    acquired: bool
    token: bytes
    ttl_ms: int


class _RunNow:
    """Type marker: a ``_Commands`` whose operations run at once and return their results (Client)."""


class _Queue:
    """Type marker: a ``_Commands`` whose operations are queued and return it (Pipeline, Transaction)."""


_Mode = TypeVar("_Mode", _RunNow, _Queue)
_Queued = TypeVar("_Queued", bound="_Commands[_Queue]")


class _Commands(ABC, Generic[_Mode]):
    """Operations on one key (or keys of one shard). ``Client`` runs them now, ``Pipeline`` and ``Transaction`` queue them.

    Every ``ttl_ms`` takes a positive int of milliseconds or a ``datetime.timedelta``.
    Each operation's overloads give its result on a Client and the queue itself on a
    Pipeline or Transaction (so queued calls chain); they exist for type checkers only.
    """

    @abstractmethod
    def _submit(self, key: bytes, op: str, args: list[Any]) -> Any:
        """Run the op now (Client) or queue it (Pipeline, Transaction)."""

    @abstractmethod
    def _shard_of(self, key: bytes) -> int:
        """The shard that owns ``key``."""

    @abstractmethod
    def _max_value_bytes(self) -> int:
        """The daemon's value limit (from ferricd.json)."""

    def _fits(self, data: bytes, argument: str = "value") -> bytes:
        """``data`` if the daemon accepts a value that long; LimitError before anything is sent if not."""
        limit = self._max_value_bytes()
        if len(data) > limit:
            raise LimitError(
                f"{argument} is {len(data)} bytes; this ferricd accepts at most {limit} (max_value_bytes "
                "in its configuration): raise it, or store the value in pieces"
            )
        return data

    @overload
    def get(self: "_Commands[_RunNow]", key: Key) -> bytes | None: ...
    @overload
    def get(self: _Queued, key: Key) -> _Queued: ...

    def get(self, key: Key) -> Any:
        """The value of ``key`` as bytes, or None."""
        key = as_key(key)
        return self._submit(key, "get", [key])

    @overload
    def set(self: "_Commands[_RunNow]", key: Key, value: Value, ttl_ms: TTL = None, nx: bool = False,
            xx: bool = False) -> bool: ...
    @overload
    def set(self: _Queued, key: Key, value: Value, ttl_ms: TTL = None, nx: bool = False,
            xx: bool = False) -> _Queued: ...

    def set(self, key: Key, value: Value, ttl_ms: TTL = None, nx: bool = False, xx: bool = False) -> Any:
        """Set ``key``; ``ttl_ms`` expires it; ``nx`` only if missing, ``xx`` only if present. True if set."""
        key = as_key(key)
        data, ttl = as_value(value, _UNBOUNDED_VALUE), _ttl(ttl_ms)
        return self._submit(key, "set", [key, self._fits(data), ttl, bool(nx), bool(xx)])

    @overload
    def getex(self: "_Commands[_RunNow]", key: Key, ttl_ms: TTL = None, persist: bool = False) -> bytes | None: ...
    @overload
    def getex(self: _Queued, key: Key, ttl_ms: TTL = None, persist: bool = False) -> _Queued: ...

    def getex(self, key: Key, ttl_ms: TTL = None, persist: bool = False) -> Any:
        """The value of ``key`` (None if missing), giving it a new TTL, or none with ``persist`` (Redis GETEX).

        Always a round trip: use ``get`` to read without changing the TTL.
        """
        key = as_key(key)
        if persist and ttl_ms is not None:
            raise TypeError("getex takes ttl_ms or persist=True, not both")
        return self._submit(key, "getex", [key, _ttl(ttl_ms), bool(persist)])

    @overload
    def expire(self: "_Commands[_RunNow]", key: Key, ttl_ms: TTL) -> bool: ...
    @overload
    def expire(self: _Queued, key: Key, ttl_ms: TTL) -> _Queued: ...

    def expire(self, key: Key, ttl_ms: TTL) -> Any:
        """Expire ``key`` in ``ttl_ms``, leaving its value alone; False if it is missing."""
        key = as_key(key)
        if ttl_ms is None:
            raise TypeError("expire needs ttl_ms; use persist() to remove an expiry")
        return self._submit(key, "expire", [key, _ttl(ttl_ms)])

    @overload
    def persist(self: "_Commands[_RunNow]", key: Key) -> bool: ...
    @overload
    def persist(self: _Queued, key: Key) -> _Queued: ...

    def persist(self, key: Key) -> Any:
        """Remove the expiry of ``key``; False if it is missing or had none."""
        key = as_key(key)
        return self._submit(key, "persist", [key])

    @overload
    def pttl(self: "_Commands[_RunNow]", key: Key) -> int: ...
    @overload
    def pttl(self: _Queued, key: Key) -> _Queued: ...

    def pttl(self, key: Key) -> Any:
        """Milliseconds until ``key`` expires: -1 if it never does, -2 if it is missing (Redis PTTL)."""
        key = as_key(key)
        return self._submit(key, "pttl", [key])

    @overload
    def incr(self: "_Commands[_RunNow]", key: Key, delta: int = 1, ttl_ms: TTL = None) -> int: ...
    @overload
    def incr(self: _Queued, key: Key, delta: int = 1, ttl_ms: TTL = None) -> _Queued: ...

    def incr(self, key: Key, delta: int = 1, ttl_ms: TTL = None) -> Any:
        """Add ``delta`` to the decimal integer in ``key`` (missing counts as 0); returns the new value.

        ``ttl_ms`` applies only when this call creates the counter; an existing
        counter keeps its expiry (so a generation counter cannot live forever).
        """
        key = as_key(key)
        if type(delta) is not int:
            raise TypeError(f"delta must be int, not {type(delta).__name__}")
        return self._submit(key, "incr", [key, delta, _ttl(ttl_ms)])

    @overload
    def exists(self: "_Commands[_RunNow]", *keys: Key) -> int: ...
    @overload
    def exists(self: _Queued, *keys: Key) -> _Queued: ...

    def exists(self, *keys: Key) -> Any:
        """How many of ``keys`` exist (queued, they must all live on one shard)."""
        encoded = self._one_shard("exists", keys)
        return self._submit(encoded[0], "exists", [encoded])

    @overload
    def delete(self: "_Commands[_RunNow]", *keys: Key) -> int: ...
    @overload
    def delete(self: _Queued, *keys: Key) -> _Queued: ...

    def delete(self, *keys: Key) -> Any:
        """Delete ``keys``; how many existed (queued, they must all live on one shard)."""
        encoded = self._one_shard("delete", keys)
        return self._submit(encoded[0], "delete", [encoded])

    def _one_shard(self, op: str, keys: tuple[Key, ...]) -> list[bytes]:
        encoded = [as_key(key) for key in keys]
        if not encoded:
            raise TypeError(f"{op} needs at least one key")
        if len({self._shard_of(key) for key in encoded}) > 1:
            raise CommandError(f"{op}: the keys live on different shards; queue one {op} per key, or give them "
                               "one {hash tag}", "WRONG_SHARD")
        return encoded

    @overload
    def getdel(self: "_Commands[_RunNow]", key: Key) -> bytes | None: ...
    @overload
    def getdel(self: _Queued, key: Key) -> _Queued: ...

    def getdel(self, key: Key) -> Any:
        """Delete ``key`` and return the value it had (None if missing)."""
        key = as_key(key)
        return self._submit(key, "getdel", [key])

    @overload
    def delete_if(self: "_Commands[_RunNow]", key: Key, expected: Value) -> bool: ...
    @overload
    def delete_if(self: _Queued, key: Key, expected: Value) -> _Queued: ...

    def delete_if(self, key: Key, expected: Value) -> Any:
        """Delete ``key`` only if it holds ``expected`` (compare-and-delete, atomic on the shard). True if deleted."""
        key = as_key(key)
        return self._submit(key, "delete_if", [key, as_value(expected, _UNBOUNDED_VALUE, "expected")])

    @overload
    def set_if(self: "_Commands[_RunNow]", key: Key, value: Value, guard_key: Key, expected: Value | None,
               ttl_ms: TTL = None) -> bool: ...
    @overload
    def set_if(self: _Queued, key: Key, value: Value, guard_key: Key, expected: Value | None,
               ttl_ms: TTL = None) -> _Queued: ...

    def set_if(self, key: Key, value: Value, guard_key: Key, expected: Value | None, ttl_ms: TTL = None) -> Any:
        """Set ``key`` only if ``guard_key`` holds ``expected`` (None: only if ``guard_key`` is missing).

        Both keys must live on one shard: give them the same ``{hash tag}``.
        The check and the write are atomic on that shard. True if set.
        """
        key, guard_key = as_key(key), as_key(guard_key, "guard_key")
        value_bytes, ttl = as_value(value, _UNBOUNDED_VALUE), _ttl(ttl_ms)
        expected_bytes = None if expected is None else as_value(expected, _UNBOUNDED_VALUE, "expected")
        if self._shard_of(key) != self._shard_of(guard_key):
            raise CommandError(
                f"set_if: {key!r} and {guard_key!r} live on different shards; give them the same {{hash tag}}",
                "WRONG_SHARD",
            )
        return self._submit(key, "set_if", [key, self._fits(value_bytes), guard_key, expected_bytes, ttl])

    @overload
    def patch(self: "_Commands[_RunNow]", key: Key, set: Mapping[str, Any] | None = None,  # noqa: A002
              delete: Iterable[str] = (), ttl_ms: TTL = None, create: bool = True,
              encode: Callable[[Any], bytes] | None = None) -> bool: ...
    @overload
    def patch(self: _Queued, key: Key, set: Mapping[str, Any] | None = None,  # noqa: A002
              delete: Iterable[str] = (), ttl_ms: TTL = None, create: bool = True,
              encode: Callable[[Any], bytes] | None = None) -> _Queued: ...

    def patch(self, key: Key, set: Mapping[str, Any] | None = None, delete: Iterable[str] = (),  # noqa: A002
              ttl_ms: TTL = None, create: bool = True, encode: Callable[[Any], bytes] | None = None) -> Any:
        """Change fields of the msgpack map stored at ``key``, atomically on its shard; True if written.

        The value must be one msgpack map with str keys (``patch`` creates it so;
        read it back with ``get`` and ``msgpack.unpackb``). ``set`` fields are
        encoded one by one with ``encode`` (default: plain msgpack; pass your
        own to use extension types) and spliced in as they are: the shard
        never decodes them. ``delete`` removes fields. Two patches of
        different fields both keep their change. ``ttl_ms`` None keeps the
        key's expiry (a new key: none). With ``create=False`` a missing key
        stays missing and the answer is False. A stored value that is not such
        a map raises CommandError with code WRONG_TYPE.
        """
        key = as_key(key)
        encoder = encode or _pack_field
        fields: dict[str, bytes] = {}
        for field, value in (set or {}).items():
            if not isinstance(field, str):
                raise TypeError(f"patch fields are str, not {type(field).__name__} ({field!r})")
            encoded = encoder(value)
            if not isinstance(encoded, bytes):
                raise TypeError(f"encode must return bytes, not {type(encoded).__name__} (field {field!r})")
            fields[field] = encoded
        if isinstance(delete, (str, bytes)):
            raise TypeError("delete takes a list of field names, not one string")
        removed = list(delete)
        for field in removed:
            if not isinstance(field, str):
                raise TypeError(f"patch fields are str, not {type(field).__name__} ({field!r})")
        return self._submit(key, "patch", [key, fields, removed, _ttl(ttl_ms), bool(create)])

    @overload
    def lease(self: "_Commands[_RunNow]", key: Key, ttl_ms: TTL, token: bytes | None = None) -> Lease: ...
    @overload
    def lease(self: _Queued, key: Key, ttl_ms: TTL, token: bytes | None = None) -> _Queued: ...

    def lease(self, key: Key, ttl_ms: TTL, token: bytes | None = None) -> Any:
        """Take ``key`` as a lease for ``ttl_ms`` if it is free: a Lease, ``acquired`` with a new unique token.

        If another holder has it: ``acquired`` False, the holder's ``token``
        (it names the holder's host and pid) and how long it still holds it
        (``ttl_ms``). A holder that dies loses the lease when its TTL runs out;
        passing the ``token`` you hold renews your lease for ``ttl_ms``.
        """
        key = as_key(key)
        if ttl_ms is None:
            raise TypeError("a lease needs ttl_ms, so that a holder that dies loses it")
        token = _new_token() if token is None else as_value(token, _UNBOUNDED_VALUE, "token")
        return self._submit(key, "lease", [key, token, _ttl(ttl_ms)])

    @overload
    def release(self: "_Commands[_RunNow]", key: Key, token: bytes) -> bool: ...
    @overload
    def release(self: _Queued, key: Key, token: bytes) -> _Queued: ...

    def release(self, key: Key, token: bytes) -> Any:
        """Give up a lease taken with ``token``; False if it had expired or someone else holds it now."""
        return self.delete_if(key, token)


class Client(_Commands[_RunNow]):
    """Talks to the ferricd whose run directory is ``run_dir``.

    ``run_dir`` defaults to $FERRIC_RUN_DIR, else ``./ferric-run``. Keys and
    values are str (UTF-8) or bytes; values come back as bytes; a missing key
    is None. Every call waits at most ``timeout_ms`` per shard and raises
    FerricTimeoutError past it; within that time, ops that change nothing are
    re-sent on a fresh socket if their answer does not come (docs/protocol.md).

    Safe to share between threads, and across ``os.fork()``: a forked child
    builds its own sockets on first use.

    ``transport`` picks how requests reach a shard: "unix" (a Unix stream
    socket per shard, the fastest on one host) or "zmq" (a ZeroMQ DEALER per
    shard). The default is "unix" when the daemon offers it. Both carry the
    same frames (docs/protocol.md).

    With ``local_reads`` (the default on x86-64), ``get``, ``mget``, ``exists`` and
    ``ttl`` read the shard's published index and data files directly (about a
    microsecond instead of a round trip), and ask the shard whenever the files
    cannot answer with certainty (see ``ferric_ipc.local_reads``). Turn it off
    where this process may not read the daemon's files.
    """

    def __init__(self, run_dir: str | os.PathLike[str] | None = None, timeout_ms: int = DEFAULT_TIMEOUT_MS,
                 local_reads: bool | None = None, transport: str | None = None) -> None:
        self.run_dir = os.path.abspath(run_dir or os.environ.get(RUN_DIR_ENV) or DEFAULT_RUN_DIR)
        if type(timeout_ms) is not int or timeout_ms <= 0:
            raise TypeError("timeout_ms must be a positive int")
        if transport not in (None, protocol.TRANSPORT_UNIX, protocol.TRANSPORT_ZMQ):
            raise ValueError(
                f"transport must be {protocol.TRANSPORT_UNIX!r}, {protocol.TRANSPORT_ZMQ!r} or None (the daemon's "
                f"fastest), not {transport!r}"
            )
        self.timeout_ms = timeout_ms
        self._transport_asked = transport
        #: The transport in use, once the daemon's ferricd.json was read.
        self.transport: str | None = None
        # The seqlock read relies on x86-64's ordering of plain loads: elsewhere, ask the shard.
        self.local_reads = LOCAL_READS_SAFE if local_reads is None else bool(local_reads)
        #: Reads answered from the mapped index ("local") and sent to a shard instead ("fallback").
        self.read_counts = {"local": 0, "fallback": 0}
        self._lock = threading.Lock()
        self._forks = -1  # _ForkCount.value when this process's sockets were made; -1: not yet
        self._connections: dict[int, ShardConnection] = {}
        self._readers: dict[int, LocalShardReader] = {}
        self._shard_count: int | None = None
        self._data_dir: str | None = None
        self._value_limit = _UNBOUNDED_VALUE
        self._request_limit = protocol.MAX_STREAM_FRAME_BYTES  # ferricd.json's max_request_bytes once read

    # -- plumbing --------------------------------------------------------------

    def _connection(self, shard_id: int) -> ShardConnection:
        if self._forks != _ForkCount.value:
            self._reset_after_fork()
        connection = self._connections.get(shard_id)
        if connection is None:
            self.shard_count  # noqa: B018 - reads ferricd.json, which decides the transport
            with self._lock:
                connection = self._connections.get(shard_id)
                if connection is None:
                    if self.transport == protocol.TRANSPORT_UNIX:
                        connection = StreamShardConnection(self.run_dir, shard_id)
                    else:
                        connection = ZmqShardConnection(zmq.Context.instance(), self.run_dir, shard_id)
                    connection.max_request_bytes = self._request_limit
                    self._connections[shard_id] = connection
        return connection

    def _reset_after_fork(self) -> None:
        # Never touch the parent's context or sockets here: they belong to the parent's
        # ZeroMQ I/O threads, which do not exist in this process. Drop them and start over.
        with self._lock:
            if self._forks == _ForkCount.value:
                return
            self._forks = _ForkCount.value
            # ZeroMQ connections use the process-wide context: a Client's own would be garbage-collected
            # with it, and Context.__del__ blocks in term() while a socket in the same reference cycle is
            # open. instance() is fork-aware: a child gets a fresh one.
            self._connections = {}
            self._readers = {}  # their locks may be held by a thread that did not survive the fork
            self._shard_count = None

    @property
    def slow_local_reads(self) -> int:
        """Local reads the pure-Python path answered although the C extension is loaded: a data file not
        mapped yet or grown past its mapping, and the check every 100 ms that a table is still current.
        0 without the extension, where every local read takes that path."""
        return sum(reader.slow_lookups for reader in list(self._readers.values()))

    @property
    def shard_count(self) -> int:
        """Number of shards, read once from the daemon's ``ferricd.json`` in the run directory."""
        if self._forks != _ForkCount.value:
            self._reset_after_fork()
        if self._shard_count is None:
            daemon = read_daemon_file(self.run_dir)
            path = os.path.join(self.run_dir, DAEMON_FILE)
            if not (isinstance(daemon, dict) and type(daemon.get("shards")) is int and daemon["shards"] > 0):
                raise FerricConnectionError(f"{path} does not name a shard count; restart ferricd to rewrite it")
            if daemon.get("protocol") != protocol.PROTOCOL_VERSION:
                raise ProtocolError(
                    f"ferricd speaks protocol {daemon.get('protocol')}, this client {protocol.PROTOCOL_VERSION}: "
                    "upgrade the client and the daemon together"
                )
            self.transport = self._pick_transport(daemon.get("transports") or [protocol.TRANSPORT_ZMQ])
            self._shard_count = shard_count = int(daemon["shards"])
            self._data_dir = daemon.get("data_dir")
            limit = daemon.get("max_value_bytes")
            self._value_limit = limit if type(limit) is int and limit > 0 else _UNBOUNDED_VALUE
            limit = daemon.get("max_request_bytes")
            self._request_limit = limit if type(limit) is int and limit > 0 else protocol.MAX_STREAM_FRAME_BYTES
            return shard_count
        return self._shard_count

    def _pick_transport(self, offered: list[str]) -> str:
        if self._transport_asked is None:
            return protocol.TRANSPORT_UNIX if protocol.TRANSPORT_UNIX in offered else protocol.TRANSPORT_ZMQ
        if self._transport_asked not in offered:
            raise FerricConnectionError(
                f"this ferricd offers the transports {offered}, not {self._transport_asked!r}: "
                "leave transport=None to use the best one it has, or upgrade ferricd"
            )
        return self._transport_asked

    def _shard_of(self, key: bytes) -> int:
        return shard_for(key, self.shard_count)

    def _max_value_bytes(self) -> int:
        self.shard_count  # noqa: B018 - reads ferricd.json, which names the limit
        return self._value_limit

    def _call(self, shard_id: int, op: str, args: list[Any]) -> Any:
        return _typed(op, self._call_raw(shard_id, op, args, op in protocol.IDEMPOTENT_OPS))

    def _call_raw(self, shard_id: int, op: str, args: list[Any], retry: bool) -> Any:
        return self._connection(shard_id).call([(op, args)], self.timeout_ms, retry)[0]

    def _submit(self, key: bytes, op: str, args: list[Any]) -> Any:
        return self._call(self._shard_of(key), op, args)

    def _by_shard(self, keys: list[bytes]) -> dict[int, list[tuple[int, bytes]]]:
        """``{shard: [(position, key), ...]}`` for encoded keys."""
        return self._by_shard_positions(dict(enumerate(keys)))

    def _by_shard_positions(self, keys: dict[int, bytes]) -> dict[int, list[tuple[int, bytes]]]:
        """``{shard: [(position, key), ...]}`` for ``{position: encoded key}``."""
        groups: dict[int, list[tuple[int, bytes]]] = {}
        for position, key in keys.items():
            groups.setdefault(self._shard_of(key), []).append((position, key))
        return groups

    # -- local reads -------------------------------------------------------------

    def _values_read_locally(self, keys: list[bytes]) -> list[bytes | None | Literal[Answer.FALLBACK]]:
        """Each encoded key's value read here (None if missing), or FALLBACK where its shard must answer; what
        every read shares (the clock, the shard count) is done once, and with the C extension the hashing,
        routing and probing of all of them is one call."""
        if not self.local_reads or len(keys) == 1:
            return [_value_of(self._read_locally(key)) for key in keys]
        shards = self._shard_count if self._forks == _ForkCount.value and self._shard_count else self.shard_count
        readers = self._readers
        now_ms = time.time_ns() // 1_000_000
        if _LOOKUP_MANY is not None:
            return self._values_read_natively(keys, shards, now_ms)
        values: list[bytes | None | Literal[Answer.FALLBACK]] = []
        fallbacks = local = 0
        for key in keys:
            key_hash = key_hash64(key)
            reader = readers.get(shard_for_hashed(key, key_hash, shards))
            if reader is None:
                values.append(_value_of(self._read_locally(key)))  # opens the shard's reader (and counts the read)
                continue
            found = reader.lookup(key, key_hash, now_ms)
            if found is FALLBACK:
                fallbacks += 1
            else:
                local += 1
            values.append(_value_of(found))
        counts = self.read_counts
        counts["fallback"] += fallbacks
        counts["local"] += local
        return values

    def _values_read_natively(self, keys: list[bytes], shards: int,
                              now_ms: int) -> list[bytes | None | Literal[Answer.FALLBACK]]:
        assert _LOOKUP_MANY is not None
        readers = self._readers
        now_ns = time.monotonic_ns()

        def state_of(shard_id: int) -> tuple[Any, dict[int, memoryview], Any, int] | None:  # once per shard used
            reader = readers.get(shard_id)
            return reader.native_state(now_ns) if reader is not None else None
        # Values, None, FALLBACK or SLOW; the hits are marked used in there.
        answers: list[Any] = _LOOKUP_MANY(keys, shards, now_ms, state_of, True)
        slow = answers.count(Answer.SLOW)
        fallbacks = answers.count(FALLBACK)
        counts = self.read_counts
        counts["fallback"] += fallbacks
        counts["local"] += len(answers) - fallbacks - slow
        if slow:  # a shard the C path may not read now: the reader's own path decides (and counts the read)
            for position, answer in enumerate(answers):
                if answer is Answer.SLOW:
                    answers[position] = _value_of(self._read_locally(keys[position]))
        return answers

    def _read_locally(self, key: bytes) -> Found:
        """``(value, expire_at_ms)``, MISSING, or FALLBACK for an encoded key."""
        if not self.local_reads:
            self.read_counts["fallback"] += 1  # every read goes to the daemon, and counts as such
            return FALLBACK
        shards = self._shard_count if self._forks == _ForkCount.value and self._shard_count else self.shard_count
        key_hash = key_hash64(key)
        shard_id = shard_for_hashed(key, key_hash, shards)  # one hash for routing and the index, without a tag
        reader = self._readers.get(shard_id)
        if reader is None:
            if self._data_dir is None:
                return FALLBACK  # a daemon that does not say where its data is
            with self._lock:
                reader = self._readers.setdefault(
                    shard_id, LocalShardReader(self.run_dir, shard_dir(self._data_dir, shard_id), shard_id)
                )
        found = reader.lookup(key, key_hash, time.time_ns() // 1_000_000)
        self.read_counts["fallback" if found is FALLBACK else "local"] += 1
        return found

    def get(self, key: Key) -> bytes | None:
        """The value of ``key`` as bytes, or None."""
        key = as_key(key)
        found = self._read_locally(key)
        if found is FALLBACK:
            return self._submit(key, "get", [key])  # type: ignore[no-any-return]  # bytes | None on the wire
        return None if found is MISSING else found[0]

    def pttl(self, key: Key) -> int:
        """Milliseconds until ``key`` expires: -1 if it never does, -2 if it is missing (Redis PTTL)."""
        key = as_key(key)
        found = self._read_locally(key)
        if found is FALLBACK:
            return int(self._submit(key, "pttl", [key]))
        if found is MISSING:
            return -2
        return -1 if not found[1] else max(0, found[1] - time.time_ns() // 1_000_000)

    def ttl(self, key: Key) -> int:
        """Seconds until ``key`` expires, rounded as Redis TTL rounds; -1 if it never does, -2 if it is missing."""
        remaining_ms = self.pttl(key)
        return remaining_ms if remaining_ms < 0 else (remaining_ms + 500) // 1000

    # -- operations over many keys or shards ------------------------------------

    def ping(self, shard: int | None = None) -> bool:
        """True when ``shard`` (default: every shard) answers."""
        for shard_id in range(self.shard_count) if shard is None else [shard]:
            self._call(shard_id, "ping", [])
        return True

    def hello(self, shard: int = 0) -> dict[str, Any]:
        """``{"protocol", "shards", "shard", "epoch", "max_value_bytes", "pid"}`` of one shard."""
        return self._call(shard, "hello", [])  # type: ignore[no-any-return]  # a map on the wire

    def mget(self, keys: Iterable[Key]) -> list[bytes | None]:
        """Values of ``keys`` in order (None for missing ones)."""
        encoded = [key if type(key) is bytes and len(key) <= MAX_KEY_BYTES else as_key(key) for key in keys]
        read = self._values_read_locally(encoded)
        if FALLBACK not in read:  # the common case: every key answered here
            return read  # type: ignore[return-value]  # no FALLBACK in it
        values: list[bytes | None] = [None if value is FALLBACK else value for value in read]
        remote = [position for position, value in enumerate(read) if value is FALLBACK]
        for shard_id, group in self._by_shard_positions({position: encoded[position] for position in remote}).items():
            found = self._call(shard_id, "mget", [[key for _, key in group]])
            for (position, _), value in zip(group, found):
                values[position] = value
        return values

    def mset(self, mapping: Mapping[Key, Value], ttl_ms: TTL = None) -> bool:
        """Set every key of ``mapping``; each shard writes its part as one batch (one write, one fsync).

        It is not a transaction: a local reader elsewhere may see some keys of
        a part before others, and if the disk fails midway through a part that
        spans a file rotation, the records already in the closed file stay.
        """
        pairs = [(as_key(key), as_value(value, _UNBOUNDED_VALUE)) for key, value in dict(mapping).items()]
        ttl = _ttl(ttl_ms)
        for _, data in pairs:
            self._fits(data)
        for shard_id, group in self._by_shard([key for key, _ in pairs]).items():
            self._call(shard_id, "mset", [[list(pairs[position]) for position, _ in group], ttl])
        return True

    def delete(self, *keys: Key) -> int:
        """Delete ``keys``; returns how many existed."""
        encoded = [as_key(key) for key in keys]
        groups = self._by_shard(encoded).items()
        return sum(self._call(shard_id, "delete", [[k for _, k in group]]) for shard_id, group in groups)

    def exists(self, *keys: Key) -> int:
        """How many of ``keys`` exist (a key named twice counts twice)."""
        encoded = [as_key(key) for key in keys]
        local, remote = 0, {}
        for position, key in enumerate(encoded):
            found = self._read_locally(key)
            if found is FALLBACK:
                remote[position] = key
            else:
                local += found is not MISSING
        groups = self._by_shard_positions(remote).items()
        counted: int = sum(self._call(shard_id, "exists", [[k for _, k in group]]) for shard_id, group in groups)
        return local + counted

    def scan(self, prefix: Key = b"", cursor: int = 0, count: int = 100) -> tuple[int, list[bytes]]:
        """``(next_cursor, keys)``: a page of keys starting with ``prefix``; cursor 0 starts and ends a scan."""
        prefix = as_key(prefix, "prefix")
        if type(cursor) is not int or cursor < 0:
            raise TypeError("cursor must be 0 or a cursor returned by scan")
        if type(count) is not int or not 0 < count <= 10_000:
            raise TypeError("count must be an int between 1 and 10000")
        shards = self.shard_count
        shard_id, slot = cursor % shards, cursor // shards
        next_slot, keys = self._call(shard_id, "scan", [prefix, slot, count])
        if next_slot:
            return next_slot * shards + shard_id, keys
        return (shard_id + 1 if shard_id + 1 < shards else 0), keys

    def scan_iter(self, prefix: Key = b"", count: int = 100) -> Iterator[bytes]:
        """Yield every key starting with ``prefix``."""
        cursor = 0
        while True:
            cursor, keys = self.scan(prefix, cursor, count)
            yield from keys
            if cursor == 0:
                return

    def delete_prefix(self, prefix: Key) -> int:
        """Delete every key starting with ``prefix`` on every shard; returns how many (b"" deletes everything).

        Runs as bounded steps, each a request of a few milliseconds, so the
        shards serve other clients in between. Not atomic: keys with the
        prefix written while it runs may or may not be deleted; every key
        that existed before it started and was not rewritten is.
        """
        prefix = as_key(prefix, "prefix")
        deleted = 0
        for shard_id in range(self.shard_count):
            cursor, capacity = 0, None
            while True:
                cursor, count, capacity = self._call(shard_id, "delete_prefix", [prefix, cursor, capacity])
                deleted += count
                if cursor == 0:
                    break
        return deleted

    def info(self) -> list[dict[str, Any]]:
        """Per-shard statistics: one dict per shard, in shard order."""
        return [self._call(shard_id, "info", []) for shard_id in range(self.shard_count)]

    def pipeline(self) -> "Pipeline":
        """A Pipeline: queue single-key operations, then ``execute()`` sends each shard's share at once."""
        return Pipeline(self)

    def transaction(self, hash_tag: Key) -> "Transaction":
        """A Transaction on the shard of ``{hash_tag}``: queued ops run together, all written or none."""
        return Transaction(self, hash_tag)

    def lock(self, name: Key, ttl_ms: TTL, wait_ms: int = 0) -> "Lock":
        """A lease on ``name`` as a context manager: ``with client.lock("report", 30_000, wait_ms=500): ...``.

        Entering retries the lease for up to ``wait_ms`` and raises
        LockNotAcquired past it; leaving releases it (if it is still ours).
        """
        return Lock(self, name, ttl_ms, wait_ms)

    def close(self) -> None:
        """Close this process's sockets (another call opens them again)."""
        if self._forks == _ForkCount.value:
            for connection in list(self._connections.values()):
                connection.close()
            for reader in list(self._readers.values()):
                reader.close()
            self._connections = {}
            self._readers = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Pipeline(_Commands[_Queue]):
    """Single-key operations queued on a Client and sent together by ``execute()``. Not atomic.

    Each shard receives its requests back to back in one frame, which is how a
    client reaches tens of thousands of ops/s. As a context manager it
    discards what was not executed when the block ends.
    """

    def __init__(self, client: Client) -> None:
        self._client = client
        self._queued: list[tuple[int, str, list[Any]]] = []  # (shard, op, args)

    def _shard_of(self, key: bytes) -> int:
        return self._client._shard_of(key)

    def _max_value_bytes(self) -> int:
        return self._client._max_value_bytes()

    def _submit(self, key: bytes, op: str, args: list[Any]) -> "Pipeline":
        self._queued.append((self._shard_of(key), op, args))
        return self

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Results of the queued operations, in the order they were queued.

        With ``raise_on_error`` the first error is raised once every shard has
        answered; otherwise each failed operation's exception is in its place.
        """
        queued, self._queued = self._queued, []
        by_shard: dict[int, list[tuple[int, str, list[Any]]]] = {}
        for position, (shard_id, op, args) in enumerate(queued):
            by_shard.setdefault(shard_id, []).append((position, op, args))
        results: list[Any] = [None] * len(queued)
        client = self._client
        for shard_id, group in by_shard.items():
            retry = all(op in protocol.IDEMPOTENT_OPS for _, op, _ in group)
            # One frame per shard: the shard runs the requests in order and answers in one frame.
            batch = [[op, args] for _, op, args in group]
            (reply,) = client._connection(shard_id).call([("batch", [batch])], client.timeout_ms, retry)
            for (position, op, _), answer in zip(group, protocol.batch_results(reply)):
                results[position] = _typed(op, answer)
        if raise_on_error:
            for answer in results:
                if isinstance(answer, FerricError):
                    raise answer
        return results

    def reset(self) -> None:
        """Drop the queued operations."""
        self._queued = []

    def __len__(self) -> int:
        return len(self._queued)

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.reset()


class Transaction(_Commands[_Queue]):
    """Operations on the keys of one ``{hash tag}``, run on their shard with no other request between them.

    ``execute()`` sends them in one request; the shard applies them in order,
    each seeing the ones before it, and writes all their changes as one atomic
    batch, or nothing if any fails (the error is raised). Durable as the
    keyspace's fsync policy makes every write. A local reader in another
    process may see some keys' new values before others' while the shard
    publishes them (microseconds); requests to the shard never do.
    """

    def __init__(self, client: Client, hash_tag: Key) -> None:
        tag = as_key(hash_tag, "hash_tag")
        if not tag or b"{" in tag or b"}" in tag:
            raise TypeError("hash_tag is the non-empty text between the braces of a {hash tag}, without braces")
        self._client = client
        self._marker = b"{" + tag + b"}"
        self._shard = shard_for(self._marker, client.shard_count)
        self._queued: list[tuple[str, list[Any]]] = []

    def _shard_of(self, key: bytes) -> int:
        return self._client._shard_of(key)

    def _max_value_bytes(self) -> int:
        return self._client._max_value_bytes()

    def _submit(self, key: bytes, op: str, args: list[Any]) -> "Transaction":
        if op not in protocol.TRANSACTION_OPS:
            raise TypeError(f"{op} cannot run in a transaction")
        if hash_tag(key) != self._marker[1:-1]:
            raise CommandError(
                f"{key!r} is not in this transaction's hash tag: its keys must contain {self._marker!r}", "WRONG_SHARD"
            )
        self._queued.append((op, args))
        return self

    def execute(self) -> list[Any]:
        """Run the queued operations as one transaction; their results in order."""
        queued, self._queued = self._queued, []
        if not queued:
            return []
        client = self._client
        retry = all(op in protocol.IDEMPOTENT_OPS for op, _ in queued)
        results = client._call_raw(self._shard, "multi", [[[op, args] for op, args in queued]], retry)
        return [_typed(op, result) for (op, _), result in zip(queued, results)]

    def submit(self) -> "Submitted":
        """Send the queued operations as one transaction without waiting for it to run.

        The request is on its way when this returns; ``result()`` on what it
        returns waits for the outcome (what ``execute()`` would have returned or
        raised). Other calls on this Client may run in between: the shard
        answers in order, and each reply reaches its caller. It is sent once,
        never again; if the connection is lost before the reply, ``result()``
        raises FerricConnectionError saying it may or may not have been applied.
        """
        queued, self._queued = self._queued, []
        client = self._client
        if not queued:
            return Submitted(None, [], client.timeout_ms)  # nothing to send, as execute() sends nothing
        request = ("multi", [[[op, args] for op, args in queued]])
        return Submitted(client._connection(self._shard).send([request], client.timeout_ms), [op for op, _ in queued],
                         client.timeout_ms)

    def reset(self) -> None:
        """Drop the queued operations."""
        self._queued = []

    def __len__(self) -> int:
        return len(self._queued)

    def __enter__(self) -> "Transaction":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.reset()


class Submitted:
    """A transaction sent by ``Transaction.submit()``, whose outcome has not been read yet."""

    def __init__(self, in_flight: InFlight | None, ops: list[str], timeout_ms: int) -> None:
        self._in_flight = in_flight  # None: an empty transaction, never sent
        self._ops = ops
        self._timeout_ms = timeout_ms
        self._pid = os.getpid()

    def done(self) -> bool:
        """True once the outcome arrived (or the connection was lost): ``result()`` will not wait.

        Reads what has arrived without waiting (unless another thread is using the connection).
        """
        if self._in_flight is None or os.getpid() != self._pid:
            return True  # result() answers at once
        return self._in_flight.done()

    def result(self, timeout_ms: int | None = None) -> list[Any]:
        """The operations' results in order, as ``execute()`` returns them; raises what it would raise.

        Waits at most ``timeout_ms`` (the Client's timeout by default) for the reply; if none came,
        raises FerricTimeoutError and the reply may still come: ``result()`` can be called again.
        """
        if os.getpid() != self._pid:
            raise FerricError("this transaction was submitted by the parent process; its reply is the parent's to read")
        if self._in_flight is None:
            return []
        (results,) = self._in_flight.result(self._timeout_ms if timeout_ms is None else timeout_ms)
        return [_typed(op, result) for op, result in zip(self._ops, results)]


class Lock:
    """A lease held for the length of a ``with`` block (``Client.lock``)."""

    def __init__(self, client: Client, name: Key, ttl_ms: TTL, wait_ms: int = 0) -> None:
        if type(wait_ms) is not int or wait_ms < 0:
            raise TypeError("wait_ms must be an int >= 0 (milliseconds)")
        if ttl_ms is None:
            raise TypeError("a lock needs ttl_ms, so that a holder that dies loses it")
        self._client = client
        self.name = as_key(name, "name")
        self.ttl_ms = _ttl(ttl_ms)
        self.wait_ms = wait_ms
        self.token: bytes | None = None

    def acquire(self) -> bool:
        """Take the lease, retrying until ``wait_ms`` has passed; True if taken, False otherwise."""
        deadline = time.monotonic() + self.wait_ms / 1000
        pause_s = 0.001
        while True:
            lease = self._client.lease(self.name, self.ttl_ms)
            if lease.acquired:
                self.token = lease.token
                return True
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                return False
            # Back off up to 50 ms, but never sleep past the deadline or the holder's expiry.
            holder_left_s = lease.ttl_ms / 1000 if lease.ttl_ms >= 0 else left_s
            time.sleep(max(0.0, min(pause_s, left_s, holder_left_s + 0.001)))
            pause_s = min(pause_s * 2, 0.05)

    def release(self) -> bool:
        """Give the lease back; False if it had already expired (and maybe passed to someone else)."""
        token, self.token = self.token, None
        return bool(token is not None and self._client.release(self.name, token))

    def __enter__(self) -> "Lock":
        if not self.acquire():
            raise LockNotAcquired(
                f"lock {self.name!r} is held by another process and was not released within wait_ms={self.wait_ms}"
            )
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _value_of(found: Found) -> bytes | None | Literal[Answer.FALLBACK]:
    """A local read's answer as an mget wants it: the value, None if missing, FALLBACK as it is."""
    if found is MISSING:
        return None
    if found is FALLBACK:
        return FALLBACK
    return found[0]


def _typed(op: str, answer: Any) -> Any:
    """A reply's result as the client returns it (a lease's list becomes a Lease)."""
    if op == "lease" and isinstance(answer, list):
        return Lease(*answer)
    return answer


def _pack_field(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _new_token() -> bytes:
    """A lease token naming its holder (host, pid) with 96 random bits, so two holders never share one."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(12)}".encode()


def _ttl(ttl_ms: TTL) -> int | None:
    """``ttl_ms`` as int milliseconds (or None), checked before anything is sent."""
    if ttl_ms is None:
        return None
    if isinstance(ttl_ms, timedelta):
        milliseconds = ttl_ms // timedelta(milliseconds=1)
        if milliseconds <= 0:
            raise TypeError(f"a TTL must be at least one millisecond, not {ttl_ms!r}")
        return int(milliseconds)
    if type(ttl_ms) is not int or ttl_ms <= 0:
        raise TypeError(f"ttl_ms must be a positive int (milliseconds), a timedelta or None, not {ttl_ms!r}")
    if ttl_ms > protocol.MAX_TTL_MS:
        raise ValueError(
            f"ttl_ms {ttl_ms} is over the longest TTL, 2**62 ms (146 million years): for a key that never "
            "expires, pass ttl_ms=None"
        )
    return ttl_ms
