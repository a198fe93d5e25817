"""Keyspaces: policies chosen by key prefix (fsync, eviction, max_bytes, default TTL), and what each holds on a shard.

A key belongs to the keyspace whose prefix it starts with; prefixes never
overlap, so there is at most one, and a key matching none belongs to the
keyspace named "default" (prefix ``b""``). Keyspace number 0 is always the
default one; numbers index the per-keyspace counters.
"""

from dataclasses import dataclass

import struct

from ferric_ipc.errors import LimitError
from ferric_ipc.file_layout import RECORD_KEY_LEN_AT
from ferric_ipc.index_layout import DELETED, SLOT, table_bytes
from ferricd.storage.records import HEADER_BYTES
from ferricd.storage.settings import FSYNC_POLICIES

DEFAULT_KEYSPACE = "default"
_KEY_LEN = struct.Struct("<I")

#: What each eviction policy does once a keyspace holds more than its max_bytes.
EVICTION_POLICIES = {
    "none": "never evict: a write that would take the keyspace past max_bytes is refused (KEYSPACE_FULL)",
    "lru": "evict the least recently used keys, approximately (CLOCK, docs/storage.md \"Eviction\")",
}

#: An evicting keyspace is brought down to 1/64 below its share once it passes it (see over_limit).
EVICTION_HEADROOM = 64

#: fsync policies from the weakest to the strictest: a group commit syncs for the strictest write in it.
FSYNC_STRICTNESS = {"never": 0, "interval": 1, "always": 2}
assert set(FSYNC_STRICTNESS) == set(FSYNC_POLICIES)


class KeyspaceFullError(LimitError):
    """A write would take a keyspace that never evicts past its max_bytes; nothing was written."""

    code = "KEYSPACE_FULL"  # the protocol's code for it (ferric_ipc.protocol.ERROR_CODES)


@dataclass(frozen=True)
class Keyspace:
    """One keyspace's policy. ``max_bytes`` bounds the whole daemon (each shard keeps its share), 0 = no bound;
    ``default_ttl_ms`` (0 = none) is the TTL of writes into the keyspace that give none."""

    name: str
    prefix: bytes
    fsync: str
    eviction: str
    max_bytes: int
    default_ttl_ms: int

    def __post_init__(self):
        # The messages name the option only: the configuration puts "keyspaces.NAME." in front.
        if not isinstance(self.prefix, bytes):
            raise ValueError(f"prefix must be a string, not {self.prefix!r}")
        if self.name == DEFAULT_KEYSPACE and self.prefix:
            raise ValueError("prefix cannot be set: the default keyspace holds the keys no other prefix matches")
        if self.name != DEFAULT_KEYSPACE and not self.prefix:
            raise ValueError("prefix is missing or empty: every keyspace but [keyspaces.default] needs one")
        if self.fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {sorted(FSYNC_POLICIES)}, not {self.fsync!r}")
        if self.eviction not in EVICTION_POLICIES:
            raise ValueError(f"eviction must be one of {sorted(EVICTION_POLICIES)}, not {self.eviction!r}")
        for name in ("max_bytes", "default_ttl_ms"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"{name} must be 0 (none) or a positive integer, not {value!r}")
        if self.eviction == "lru" and not self.max_bytes:
            raise ValueError('max_bytes is missing: eviction = "lru" keeps a keyspace within max_bytes')


class KeyspaceTable:
    """A store's keyspaces and which one each key belongs to. Number 0 is the default keyspace."""

    def __init__(self, keyspaces, shard_count=1):
        """``keyspaces``: Keyspace objects, one of them named "default". ValueError if two prefixes overlap."""
        by_name = {}
        for keyspace in keyspaces:
            if keyspace.name in by_name:
                raise ValueError(f"keyspaces.{keyspace.name} is declared twice")
            by_name[keyspace.name] = keyspace
        if DEFAULT_KEYSPACE not in by_name:
            raise ValueError("keyspaces.default is missing: it holds the keys no other prefix matches")
        others = sorted((k for k in by_name.values() if k.name != DEFAULT_KEYSPACE), key=lambda k: k.name)
        for position, first in enumerate(others):
            for second in others[position + 1:]:
                if first.prefix.startswith(second.prefix) or second.prefix.startswith(first.prefix):
                    raise ValueError(
                        f"keyspaces.{first.name}.prefix {first.prefix.decode(errors='replace')!r} overlaps "
                        f"keyspaces.{second.name}.prefix {second.prefix.decode(errors='replace')!r}: "
                        "a key must belong to one keyspace only"
                    )
        self.keyspaces = (by_name[DEFAULT_KEYSPACE], *others)
        self.names = tuple(keyspace.name for keyspace in self.keyspaces)
        self._prefixed = tuple((keyspace.prefix, number) for number, keyspace in enumerate(self.keyspaces) if number)
        #: Bytes of a key that decide its keyspace: a classifier reads no more of a stored key than this.
        self.prefix_bytes = max((len(keyspace.prefix) for keyspace in others), default=0)
        self.fsync_strictness = tuple(FSYNC_STRICTNESS[keyspace.fsync] for keyspace in self.keyspaces)
        #: Each shard's share of max_bytes (keys spread evenly over shards by hash), 0 = no bound.
        self.shard_max_bytes = tuple(-(-keyspace.max_bytes // shard_count) for keyspace in self.keyspaces)
        self.evictable = tuple(n for n, k in enumerate(self.keyspaces) if k.eviction == "lru")
        self.refusing = tuple(n for n, k in enumerate(self.keyspaces) if k.eviction == "none" and k.max_bytes)

    @classmethod
    def single(cls, fsync):
        """One keyspace holding every key: no bound, no default TTL, ``fsync`` for every write."""
        return cls([Keyspace(DEFAULT_KEYSPACE, b"", fsync, "none", 0, 0)])

    def __len__(self):
        return len(self.keyspaces)

    def of(self, key):
        """The number of the keyspace ``key`` (bytes) belongs to."""
        for prefix, number in self._prefixed:
            if key.startswith(prefix):
                return number
        return 0

    def default_ttl_ms(self, key):
        """The TTL a write of ``key`` that gives none gets: its keyspace's default_ttl_ms (0 = none)."""
        return self.keyspaces[self.of(key)].default_ttl_ms


class KeyspaceAccounts:
    """Keys, bytes and evictions of each keyspace on one shard, kept in step with the key directory.

    Bytes are whole records (29-byte header, key, value) of the entries the
    key directory holds: what the keyspace occupies on disk and in the page
    cache. The key directory reports every change (``added``, ``resized``,
    ``removed``); an entry it removes is classified by reading the start of
    its key from the record, which is still in its data file then.
    """

    def __init__(self, table, files):
        self.table = table
        self.files = files
        self.keys = [0] * len(table)
        self.bytes = [0] * len(table)
        self.evictions = [0] * len(table)

    def count(self, keydir):
        """Count what ``keydir`` holds, from scratch: a store does this once, after recovery.

        With prefixes to tell apart, that reads the start of every key (about
        1-2 s per million keys), before the shard serves.
        """
        table = self.table
        keys, held = [0] * len(table), [0] * len(table)
        if not table.prefix_bytes:
            keys[0], held[0] = len(keydir), sum(keydir.live_bytes.values())
            self.keys, self.bytes = keys, held
            return
        # The hot loop of a start: slots unpacked in bulk, keys read straight from the maps of closed files.
        of, prefix_bytes, files, index = table.of, table.prefix_bytes, self.files, keydir.index
        unpack_key_len = _KEY_LEN.unpack_from
        views = {}
        active = files.active.file_id if files.active is not None else None
        with memoryview(index.buffer)[table_bytes(0):table_bytes(index.capacity)] as slots:
            for _seq, file_id, key_hash, offset, record_len, _expire in SLOT.iter_unpack(slots):
                if key_hash <= DELETED:
                    continue
                if file_id == active:
                    number = self.of_record(file_id, offset)
                else:
                    view = views.get(file_id)
                    if view is None:
                        view = views[file_id] = files.view(file_id)
                    key_len = unpack_key_len(view, offset + RECORD_KEY_LEN_AT)[0]
                    number = of(bytes(view[offset + HEADER_BYTES:offset + HEADER_BYTES + min(key_len, prefix_bytes)]))
                keys[number] += 1
                held[number] += record_len
        for view in views.values():
            view.release()  # the maps must close when their files go
        self.keys, self.bytes = keys, held

    def of_record(self, file_id, offset):
        """The keyspace number of the record at ``file_id``/``offset``, from the start of its key."""
        if not self.table.prefix_bytes:
            return 0
        return self.of_head(self.files.read(file_id, offset, self.head_bytes))

    @property
    def head_bytes(self):
        """How much of a record ``of_head`` needs: the header and as much of the key as decides its keyspace."""
        return HEADER_BYTES + self.table.prefix_bytes

    def of_head(self, head):
        """The keyspace number of a record from its first ``head_bytes`` (fewer if the record ends sooner)."""
        key_len = int.from_bytes(head[RECORD_KEY_LEN_AT:RECORD_KEY_LEN_AT + 4], "little")
        return self.table.of(bytes(head[HEADER_BYTES:HEADER_BYTES + min(key_len, self.table.prefix_bytes)]))

    # -- what the key directory reports ----------------------------------------

    def added(self, key, record_len):
        number = self.table.of(key)
        self.keys[number] += 1
        self.bytes[number] += record_len

    def resized(self, key, delta):
        if delta:
            self.bytes[self.table.of(key)] += delta

    def resized_record(self, file_id, offset, delta):
        self.bytes[self.of_record(file_id, offset)] += delta

    def removed(self, file_id, offset, record_len):
        number = self.of_record(file_id, offset)
        self.keys[number] -= 1
        self.bytes[number] -= record_len

    # -- limits ------------------------------------------------------------------

    def over_limit(self):
        """``{number: bytes to free}`` for every evictable keyspace holding more than its shard's share.

        Eviction frees down to 1/EVICTION_HEADROOM below the share, so that one
        round (one write of tombstones) serves many writes, not one each.
        """
        shares, held, over = self.table.shard_max_bytes, self.bytes, {}
        for number in self.table.evictable:  # a loop, not a comprehension: every write asks
            if held[number] > shares[number]:
                over[number] = held[number] - shares[number] + shares[number] // EVICTION_HEADROOM
        return over

    def check_room(self, growth):
        """Raise KeyspaceFullError if ``growth`` (``{number: bytes}``) takes a refusing keyspace past its share."""
        table = self.table
        for number, grown in growth.items():
            share = table.shard_max_bytes[number]
            if grown > 0 and number in table.refusing and self.bytes[number] + grown > share:
                keyspace = table.keyspaces[number]
                raise KeyspaceFullError(
                    f"keyspace {keyspace.name!r} is full: this shard holds {self.bytes[number]:,} bytes of its "
                    f"{share:,}-byte share of max_bytes {keyspace.max_bytes:,}, and this write adds {grown:,}; "
                    f"nothing was written: delete keys or raise [keyspaces.{keyspace.name}] max_bytes"
                )

    def summary(self):
        """``{name: {"keys", "bytes", "max_bytes", "evictions"}}`` for ``info`` (max_bytes: this shard's share)."""
        return {
            name: {"keys": self.keys[n], "bytes": self.bytes[n], "max_bytes": self.table.shard_max_bytes[n],
                   "evictions": self.evictions[n]}
            for n, name in enumerate(self.table.names)
        }
