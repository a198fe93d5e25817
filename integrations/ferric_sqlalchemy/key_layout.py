"""Every key the cache writes: one fixed prefix, a hash tag choosing the shard, then tuple-encoded parts.

    key = prefix | "{" | 16 hex digits | "}" | tuple

The tuple says what the key is and is unique by itself (``tuple_keys``); the
hex digits are a hash of its content, there only to route. Sub-spaces (first
tuple element):

    ("e", tenant, table, "get",   shape, pk, epoch)         an entry: a get by primary key
    ("e", tenant, table, "query", shape, params, epoch)     an entry: any other select
    ("l", ...same parts as the entry...)                    the lease on computing that entry
    ("gen", tenant, "table" | "bulk", table)                 generations of a table
    ("gen", tenant, "row", table, pk)                        generation of one row
    ("region", region)                                       generation of a region

Generation keys share one tag per tenant ("gen", tenant), so a commit's bumps
for one database are one write to one shard. (Before generations were msgpack
maps they were bare tokens under "g" and "r": new names, so that an old value
is never patched.) An entry's key does not hold the
generations it was computed under: its value does (``entries.header``), so one
local multi-get reads the generations and the entry together. Its tag is a
hash of all its parts, spreading entries over the shards; its lease uses the
same tag, so storing the entry and releasing the lease is one transaction.
docs/sqlalchemy.md shows the bytes of each.
"""

import uuid
from hashlib import blake2b
from typing import NamedTuple

from ferric_sqlalchemy.tuple_keys import CodecValue, pack

_TAG_BYTES = 8  # 16 hex digits
_KEY_PART_TYPES = (int, str, bytes, float, bool, uuid.UUID)
_REMEMBERED_GENERATIONS = 10_000  # table generation keys kept per layout (tenants x tables x 3 kinds)


_ENTRY, _LEASE = pack(("e",)), pack(("l",))


class Entry(NamedTuple):
    """An entry's key, the key of the lease on computing it (same tag, so same shard), and that tag."""

    key: bytes
    lease_key: bytes
    tag: bytes


def tag_of(parts: tuple) -> bytes:
    """The routing tag for a tuple: the first 8 bytes of its BLAKE2b hash, in hex."""
    return blake2b(pack(parts), digest_size=_TAG_BYTES).hexdigest().encode("ascii")


class KeyLayout:
    """Builds the keys of one QueryCache (``prefix`` as given to it)."""

    def __init__(self, prefix, codec):
        if isinstance(prefix, str):
            prefix = prefix.encode("utf-8")
        if not isinstance(prefix, bytes) or not prefix:
            raise TypeError(f"prefix must be a non-empty str or bytes, not {prefix!r}")
        if b"{" in prefix or b"}" in prefix:
            raise ValueError(f"prefix {prefix!r} must not contain '{{' or '}}': the cache puts its hash tag after it")
        self.prefix = prefix
        self._codec = codec
        self._tenant_tags: dict[bytes, bytes] = {}
        self._generations: dict[tuple[bytes, str, str], bytes] = {}

    def _key(self, tag: bytes, parts: tuple) -> bytes:
        return b"".join((self.prefix, b"{", tag, b"}", pack(parts)))

    # -- generations -------------------------------------------------------------------

    def tenant_tag(self, tenant: bytes) -> bytes:
        """The hash tag every generation key of ``tenant`` carries (they live on one shard)."""
        tag = self._tenant_tags.get(tenant)
        if tag is None:
            tag = self._tenant_tags[tenant] = tag_of(("gen", tenant))
        return tag

    def table_generation(self, tenant: bytes, table: str) -> bytes:
        """Changes on every committed write to ``table``; every query entry reading it depends on it."""
        return self._generation(tenant, "table", table)

    def bulk_generation(self, tenant: bytes, table: str) -> bytes:
        """Changes when rows of ``table`` changed that nobody named (bulk and Core DML); gets depend on it."""
        return self._generation(tenant, "bulk", table)

    def row_generation(self, tenant: bytes, table: str, pk: tuple) -> bytes:
        """Changes when the row ``pk`` of ``table`` was written; that row's get depends on it."""
        return self._generation(tenant, "row", table) + pack((self.pk_part(pk),))

    def row_generation_head(self, tenant: bytes, table: str) -> bytes:
        """A row generation key of ``table`` without its primary key part (readers append it per row)."""
        return self._generation(tenant, "row", table)

    def _generation(self, tenant: bytes, kind: str, table: str) -> bytes:
        # Made once per tenant and table: every commit names them.
        key = self._generations.get((tenant, kind, table))
        if key is None:
            if len(self._generations) >= _REMEMBERED_GENERATIONS:
                self._generations.clear()
            key = self._generations[tenant, kind, table] = self._key(self.tenant_tag(tenant), ("gen", tenant, kind,
                                                                                               table))
        return key

    def region_generation(self, region: str) -> bytes:
        """Changes on ``invalidate_region``; every entry of a class in ``region`` depends on it."""
        parts = ("region", region)
        return self._key(tag_of(parts), parts)

    # -- entries and their leases ----------------------------------------------------------

    def entry_head(self, tenant: bytes, table: str, kind: str, shape: bytes) -> bytes:
        """The constant first parts of an entry's tuple ("e", tenant, table, kind, shape), encoded."""
        return pack(("e", tenant, table, kind, shape))

    def entry(self, head: bytes, selector_bytes: bytes, epoch: bytes) -> Entry:
        """The entry ``head`` + (selector, ``epoch``): ``selector_bytes`` is the encoded pk tuple of a get or
        digest of a query's parameters, ``epoch`` ferricd's (so nothing stored before a restart is found).
        The tag is a hash of the whole tuple, so entries spread over the shards."""
        parts = head + selector_bytes + pack((epoch,))
        tag = blake2b(parts, digest_size=_TAG_BYTES).hexdigest().encode("ascii")
        start = b"".join((self.prefix, b"{", tag, b"}"))
        return Entry(start + parts, start + _LEASE + parts[len(_ENTRY):], tag)

    def pk_part(self, pk: tuple) -> tuple:
        """A primary key as a tuple part: plain types as they are, others as their codec bytes."""
        return tuple(value if type(value) in _KEY_PART_TYPES or value is None else CodecValue(self._codec.dumps(value))
                     for value in pk)
