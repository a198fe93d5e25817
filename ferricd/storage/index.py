"""ShardIndex: a shard's key directory as a fixed-slot hash table in one flat buffer.

The byte layout is defined once in ``ferric_ipc.index_layout``. The buffer is
whatever ``allocate(nbytes)`` returns: a ``bytearray`` for an in-process store,
a writable ``mmap`` of ``run_dir/shard-K.idx`` when clients read it directly.

Deletion leaves a DELETED marker rather than shifting later entries back
(backward-shift deletion is tighter, but a reader probing concurrently could
then miss a key that is being moved). Markers are cleared when the table is
rebuilt, which happens when live entries plus markers pass MAX_LOAD.

Every slot write is seqlock-style: seq goes odd, the body is written, seq goes
even. A reader in another process that sees the same even seq before and after
copying a slot has a consistent copy.

Every probe visits each slot at most once. A table where a probe finds no free
slot after all of them is damaged (MAX_LOAD keeps a quarter free): the probe
raises CorruptDataError and ``damage`` says why, so the store stops and a fresh
shard rebuilds the table from the data files (``check_table`` does the same
for a saved table before it is used).
"""

from ferric_ipc.index_layout import (
    COUNTS,
    COUNTS_AT,
    DELETED,
    EMPTY,
    FILES_GENERATION_WORD,
    HASH_WORD,
    HEADER,
    HEADER_WORDS,
    INDEX_MAGIC,
    INDEX_VERSION,
    MAX_LOAD,
    MIN_CAPACITY,
    SLOT,
    SLOT_BYTES,
    SLOT_WORDS,
    STATE_LIVE,
    TARGET_LOAD,
    table_bytes,
)
from ferricd.storage.errors import CorruptDataError
from ferricd.storage.index_file import MemoryTables

_SEQ_MASK = 0xFFFFFFFF
_EXPIRE_WORD = 3  # expire_at_ms is word 3 of a slot


def capacity_for(count: int) -> int:
    """Slots for a fresh table holding ``count`` entries at TARGET_LOAD."""
    return max(MIN_CAPACITY, int(count / TARGET_LOAD) + 1)


class ShardIndex:
    """Open-addressing table of (key_hash -> file_id, offset, record_len, expire_at_ms).

    Only hashes are stored; the caller confirms a candidate by reading the key
    from the record the slot points at (see ``candidates``).
    """

    def __init__(self, buf, tables=None):
        """Wrap an existing, initialised table buffer. Use ``create`` for a new one.

        ``tables`` provides ``allocate(nbytes)`` for new buffers and
        ``replace(old, new)``, called after the table moved into a new buffer
        (see ferricd.storage.index_file); the default keeps tables in bytearrays.
        """
        magic, version, _state, epoch, capacity, count, deleted = HEADER.unpack_from(buf, 0)
        if magic != INDEX_MAGIC or version != INDEX_VERSION:
            raise CorruptDataError(f"not a key directory (magic {magic!r}, version {version})")
        if capacity < MIN_CAPACITY:
            raise CorruptDataError(f"key directory of {capacity} slots, fewer than any table has")
        if len(buf) < table_bytes(capacity):
            raise CorruptDataError(f"key directory truncated: {len(buf)} bytes for {capacity} slots")
        self._buf = buf
        self._words = memoryview(buf).cast("Q")
        self._tables = tables or MemoryTables
        self.epoch = epoch
        self.capacity = capacity
        self.count = count
        self.deleted = deleted
        self.damage = None  # why this table cannot be trusted any more; None while it can

    @classmethod
    def create(cls, capacity=MIN_CAPACITY, epoch=0, tables=None):
        """A new empty table of at least ``capacity`` slots in a buffer from ``tables.allocate``."""
        tables = tables or MemoryTables
        capacity = max(MIN_CAPACITY, capacity)
        buf = tables.allocate(table_bytes(capacity))
        HEADER.pack_into(buf, 0, INDEX_MAGIC, INDEX_VERSION, STATE_LIVE, epoch, capacity, 0, 0)
        return cls(buf, tables)

    @classmethod
    def load(cls, image, epoch, tables=None):
        """A table holding a copy of ``image`` (a snapshot), in a buffer from ``tables.allocate``."""
        tables = tables or MemoryTables
        buf = tables.allocate(len(image))
        buf[:] = image
        _magic, _version, _state, _epoch, capacity, count, deleted = HEADER.unpack_from(buf, 0)
        HEADER.pack_into(buf, 0, INDEX_MAGIC, INDEX_VERSION, STATE_LIVE, epoch, capacity, count, deleted)
        return cls(buf, tables)

    @property
    def buffer(self):
        """The table's bytes (header and slots), e.g. to snapshot it."""
        return self._buf

    @property
    def nbytes(self) -> int:
        """Bytes the table occupies."""
        return table_bytes(self.capacity)

    # -- lookups ---------------------------------------------------------------

    def candidates(self, key_hash: int):
        """Yield ``(slot, file_id, offset, record_len, expire_at_ms)`` for every slot holding ``key_hash``.

        The caller reads the record to check the key; at most one candidate
        holds a given key. Stops at the first EMPTY slot of the probe chain.
        """
        words = self._words
        capacity = self.capacity
        slot = home = key_hash % capacity
        while True:
            stored = words[HEADER_WORDS + slot * SLOT_WORDS + HASH_WORD]
            if stored == EMPTY:
                return
            if stored == key_hash:
                _seq, file_id, _h, offset, record_len, expire_at_ms = SLOT.unpack_from(
                    self._buf, table_bytes(slot)
                )
                yield slot, file_id, offset, record_len, expire_at_ms
            slot += 1
            if slot == capacity:
                slot = 0
            if slot == home:  # every slot visited (a compare, not a range object: every lookup runs this loop)
                self._no_free_slot()

    def slot_at(self, key_hash: int, file_id: int, offset: int):
        """``(slot, expire_at_ms)`` of the slot holding ``key_hash`` and pointing at ``file_id``/``offset``, or None.

        For the shard itself (the table's only writer, so no seqlock is needed): the
        merge asks this once per record it reads, so it is one tight probe loop.
        """
        words = self._words
        capacity = self.capacity
        slot = home = key_hash % capacity
        while True:
            base = HEADER_WORDS + slot * SLOT_WORDS
            stored = words[base + HASH_WORD]
            if stored == EMPTY:
                return None
            if stored == key_hash and words[base] >> 32 == file_id and words[base + 2] & _SEQ_MASK == offset:
                return slot, words[base + _EXPIRE_WORD]
            slot += 1
            if slot == capacity:
                slot = 0
            if slot == home:
                self._no_free_slot()

    def entry(self, slot: int):
        """``(key_hash, file_id, offset, record_len, expire_at_ms)`` stored in ``slot``."""
        _seq, file_id, key_hash, offset, record_len, expire_at_ms = SLOT.unpack_from(
            self._buf, table_bytes(slot)
        )
        return key_hash, file_id, offset, record_len, expire_at_ms

    def entries(self, start=0, end=None):
        """Yield ``(slot, key_hash, file_id, offset, record_len, expire_at_ms)`` for every live slot in [start, end)."""
        buf = self._buf
        for slot in range(start, self.capacity if end is None else min(end, self.capacity)):
            _seq, file_id, key_hash, offset, record_len, expire_at_ms = SLOT.unpack_from(
                buf, table_bytes(slot)
            )
            if key_hash > DELETED:
                yield slot, key_hash, file_id, offset, record_len, expire_at_ms

    def expired_slots(self, start, end, now_ms):
        """``(entries with an expiry, [slots expired at now_ms])`` among the slots in [start, end).

        Reads only the slot words, no record: what the active expiry sweep needs.
        """
        end = min(end, self.capacity)
        if start >= end:
            return 0, []
        base, stop = HEADER_WORDS + start * SLOT_WORDS, HEADER_WORDS + end * SLOT_WORDS
        # Called for thousands of slots a tick, so the usual case (nothing expired) runs at C speed: strided
        # slices copy one field of every slot, and a free or deleted slot has expiry 0, which never expires.
        expiries = self._words[base + _EXPIRE_WORD:stop:SLOT_WORDS].tolist()
        with_expiry = len(expiries) - expiries.count(0)
        if not with_expiry or min(filter(None, expiries)) > now_ms:
            return with_expiry, []
        hashes = self._words[base + HASH_WORD:stop:SLOT_WORDS].tolist()
        expired = [start + i for i, expire_at_ms in enumerate(expiries)
                   if expire_at_ms and expire_at_ms <= now_ms and hashes[i] > DELETED]
        return with_expiry, expired

    @property
    def files_generation(self) -> int:
        return self._words[FILES_GENERATION_WORD]

    def bump_files_generation(self):
        """Tell readers that data files were deleted, so they drop their maps of them (docs/storage.md)."""
        self._words[FILES_GENERATION_WORD] += 1

    # -- writes ----------------------------------------------------------------

    def replace(self, slot, file_id, offset, record_len, expire_at_ms):
        """Point an occupied ``slot`` (same key) at a new record."""
        key_hash = self._words[HEADER_WORDS + slot * SLOT_WORDS + HASH_WORD]
        self._write_slot(slot, file_id, key_hash, offset, record_len, expire_at_ms)

    def insert(self, key_hash, file_id, offset, record_len, expire_at_ms):
        """Add an entry for a key the caller has checked is absent; returns its slot.

        Grows (rebuilds) the table first when the insert would pass MAX_LOAD.
        """
        if (self.count + self.deleted + 1) > self.capacity * MAX_LOAD:
            self.rebuild(capacity_for(self.count + 1))
        words = self._words
        capacity = self.capacity
        slot = home = key_hash % capacity
        while words[HEADER_WORDS + slot * SLOT_WORDS + HASH_WORD] > DELETED:
            slot += 1
            if slot == capacity:
                slot = 0
            if slot == home:
                self._no_free_slot()
        if words[HEADER_WORDS + slot * SLOT_WORDS + HASH_WORD] == DELETED:
            self.deleted -= 1
        self._write_slot(slot, file_id, key_hash, offset, record_len, expire_at_ms)
        self.count += 1
        self.write_counts()
        return slot

    def insert_absent(self, key_hash, file_id, offset, record_len, expire_at_ms) -> bool:
        """Bulk-load fast path: insert unless ``key_hash`` is already present; False (and no change) if it is.

        Valid only while nobody else reads the table (recovery, before it is
        published): it skips the seqlock and leaves the header counts to one
        ``write_counts()`` at the end. ``reserve()`` first to grow once, not repeatedly.
        """
        if self.count + self.deleted + 1 > self.capacity * MAX_LOAD:
            self.rebuild(capacity_for(self.count + 1))
        words = self._words
        capacity = self.capacity
        slot = home = key_hash % capacity
        free = -1
        while True:
            stored = words[HEADER_WORDS + slot * SLOT_WORDS + HASH_WORD]
            if stored == EMPTY:
                break
            if stored == key_hash:
                return False
            if stored == DELETED and free < 0:
                free = slot
            slot += 1
            if slot == capacity:
                slot = 0
            if slot == home:
                self._no_free_slot()
        if free >= 0:
            slot = free
            self.deleted -= 1
        SLOT.pack_into(self._buf, table_bytes(slot), 0, file_id, key_hash, offset, record_len, expire_at_ms)
        self.count += 1
        return True

    def remove(self, slot):
        """Mark ``slot`` DELETED; returns what it held as ``entry()`` does."""
        previous = self.entry(slot)
        self._write_slot(slot, 0, DELETED, 0, 0, 0)
        self.count -= 1
        self.deleted += 1
        self.write_counts()
        return previous

    def _write_slot(self, slot, file_id, key_hash, offset, record_len, expire_at_ms):
        # Whole aligned 64-bit words only, through the memoryview: struct.pack_into zeroes
        # its target before packing, and a key_hash that is 0 for an instant reads as EMPTY
        # to a concurrent reader, ending its probe early (a present key read as missing).
        words = self._words
        base = HEADER_WORDS + slot * SLOT_WORDS
        first = words[base]
        seq = first & _SEQ_MASK
        words[base] = ((seq + 1) & _SEQ_MASK) | (first & ~_SEQ_MASK)  # odd: readers retry
        if words[base + HASH_WORD] != key_hash:
            words[base + HASH_WORD] = key_hash
        words[base + 2] = offset | (record_len << 32)
        words[base + _EXPIRE_WORD] = expire_at_ms
        words[base] = ((seq + 2) & _SEQ_MASK) | (file_id << 32)  # even: consistent again

    def _no_free_slot(self):
        self.damage = f"no free slot in any of its {self.capacity} slots (a table is kept at most {MAX_LOAD:.0%} full)"
        raise CorruptDataError(f"the key directory is damaged: {self.damage}")

    def write_counts(self):
        """Store count and deleted in the header (besides files_generation, the rest never changes for a live table)."""
        COUNTS.pack_into(self._buf, COUNTS_AT, self.count, self.deleted)

    def reserve(self, extra):
        """Grow once, now, so that ``extra`` more inserts need no further growth."""
        if self.count + self.deleted + extra > self.capacity * MAX_LOAD:
            self.rebuild(capacity_for(self.count + extra))

    def rebuild(self, capacity):
        """Copy live entries into a fresh buffer of ``capacity`` slots (drops DELETED markers)."""
        fresh = ShardIndex.create(capacity, self.epoch, self._tables)
        old_buf, new_buf, new_words = self._buf, fresh._buf, fresh._words
        new_capacity = fresh.capacity
        count = 0
        for slot in range(self.capacity):
            at = table_bytes(slot)
            key_hash = self._words[HEADER_WORDS + slot * SLOT_WORDS + HASH_WORD]
            if key_hash <= DELETED:
                continue
            target = home = key_hash % new_capacity
            while new_words[HEADER_WORDS + target * SLOT_WORDS + HASH_WORD] != EMPTY:
                target += 1
                if target == new_capacity:
                    target = 0
                if target == home:  # more live slots than the header counted: the old table is damaged
                    fresh.close()
                    self._no_free_slot()
            new_at = table_bytes(target)
            new_buf[new_at:new_at + SLOT_BYTES] = old_buf[at:at + SLOT_BYTES]
            new_buf[new_at:new_at + 4] = b"\0\0\0\0"  # a fresh table starts every seq at 0
            count += 1
        fresh.count = count
        fresh.write_counts()
        fresh._words[FILES_GENERATION_WORD] = self._words[FILES_GENERATION_WORD]
        fresh._words = None
        self._words.release()
        old_buf = self._buf
        self._buf, self._words, self.capacity = new_buf, new_words, new_capacity
        self.count, self.deleted = count, 0
        self._tables.replace(old_buf, new_buf)  # publish the new table, retire the old one

    def move(self):
        """Copy the table, as it is, into a fresh buffer from ``tables.allocate`` (e.g. back into the run
        directory once it has room again); the old buffer goes to ``tables.replace``."""
        new_buf = self._tables.allocate(len(self._buf))
        new_buf[:] = self._buf
        old_buf = self._buf
        self._words.release()
        self._buf, self._words = new_buf, memoryview(new_buf).cast("Q")
        self._tables.replace(old_buf, new_buf)

    def close(self):
        """Let go of the buffer (required before a mapped buffer is closed)."""
        if self._words is not None:
            self._words.release()
            self._words = None

    def bytes_per_key(self) -> float:
        """Table bytes divided by live entries (the memory cost per key, keys themselves excluded)."""
        return self.nbytes / self.count if self.count else float(self.nbytes)


def check_table(buf, file_ids):
    """Raise CorruptDataError, saying why, unless ``buf`` holds a table a shard could have made whose live
    slots point only at the data files ``file_ids``: for a saved table, whose CRC only says it was saved whole."""
    ShardIndex(buf).close()  # header, size
    _magic, _version, _state, _epoch, capacity, count, deleted = HEADER.unpack_from(buf, 0)
    if len(buf) != table_bytes(capacity):
        raise CorruptDataError(f"key directory of {len(buf)} bytes for {capacity} slots")
    with memoryview(buf).cast("Q") as words:  # strided copies of one word per slot: C speed
        hashes = words[HEADER_WORDS + HASH_WORD::SLOT_WORDS].tolist()
        firsts = words[HEADER_WORDS::SLOT_WORDS].tolist()
    found_deleted = hashes.count(DELETED)
    found_live = capacity - hashes.count(EMPTY) - found_deleted
    if (found_live, found_deleted) != (count, deleted):
        raise CorruptDataError(f"key directory header counts {count} live and {deleted} deleted slots, "
                               f"its slots hold {found_live} and {found_deleted}")
    if count + deleted > capacity * MAX_LOAD:
        raise CorruptDataError(f"key directory {count + deleted}/{capacity} full, past the {MAX_LOAD:.0%} "
                               "any table is kept at")
    unknown = {first >> 32 for first, key_hash in zip(firsts, hashes) if key_hash > DELETED}.difference(file_ids)
    if unknown:
        raise CorruptDataError(f"key directory points at data files that do not exist: {sorted(unknown)[:5]}")

