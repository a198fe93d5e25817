"""KeyDirectory: which record holds each key's newest value, and how many live bytes each file has.

The ShardIndex stores hashes only; this layer confirms every hash match
against the key bytes of the record the slot points at, so two keys with the
same 64-bit hash stay distinct.
"""

import logging
from array import array

from ferric_ipc.file_layout import RECORD_KEY_LEN_AT
from ferric_ipc.keys import key_hash64
from ferricd.storage.errors import CorruptDataError
from ferricd.storage.index import ShardIndex
from ferricd.storage.records import (
    FLAG_TOMBSTONE,
    FLAG_TTL_ONLY,
    HEADER_BYTES,
    decode,
    key_matches,
    record_key,
    record_seq,
)

log = logging.getLogger(__name__)


class KeyDirectory:
    """Key -> newest record. A slot whose record fails its CRC is dropped (and counted) wherever it is met.

    A candidate whose key does not match is checked too: that is either a
    true 64-bit hash collision (whose record is intact) or damage to the key
    bytes, which must not leave a never-written key in ``keys()``.
    """

    def __init__(self, index: ShardIndex, files, live_bytes=None):
        self.index = index
        self.files = files
        self.live_bytes = dict(live_bytes or {})  # file_id -> bytes of records the index points at
        self.corrupt_dropped = 0  # slots dropped because their record failed its CRC
        # keyspaces.KeyspaceAccounts, told of every entry added, resized or removed once recovery is done.
        self.accounts = None
        # key_hash, file_id, offset of entries that recovery loaded with an expiry already past: whether
        # they are gone is decided once every record is applied (a later TTL-only record may extend them).
        self._expired_at_load = array("Q")

    def __len__(self):
        return self.index.count

    def find(self, key_hash, key):
        """``(slot, file_id, offset, record_len, expire_at_ms)`` of ``key``, or None.

        The matching record's own CRC is not checked (callers replace or drop it).
        """
        for candidate in self.index.candidates(key_hash):
            _slot, file_id, offset, record_len, _expire = candidate
            if key_matches(self.files.read(file_id, offset, HEADER_BYTES + len(key)), key):
                return candidate
            self._drop_if_corrupt(candidate)
        return None

    def lookup(self, key_hash, key):
        """``(slot, Record, expire_at_ms)`` for ``key`` with its CRC verified, or None (also when damaged)."""
        for candidate in self.index.candidates(key_hash):
            slot, file_id, offset, record_len, expire_at_ms = candidate
            data = self.files.read(file_id, offset, record_len)
            if not key_matches(data, key):
                self._drop_if_corrupt(candidate, data)
                continue
            try:
                return slot, decode(data), expire_at_ms
            except CorruptDataError as exc:
                self._drop_corrupt(slot, file_id, offset, exc)
                return None
        return None

    def _drop_if_corrupt(self, candidate, data=None):
        """Check a candidate record's CRC; drop its slot if damaged. Returns whether it was dropped."""
        slot, file_id, offset, record_len, _expire = candidate
        try:
            decode(self.files.read(file_id, offset, record_len) if data is None else data)
        except CorruptDataError as exc:
            self._drop_corrupt(slot, file_id, offset, exc)
            return True
        return False

    def _drop_corrupt(self, slot, file_id, offset, exc):
        log.error("data file %d offset %d: %s; the key it held now reads as missing", file_id, offset, exc)
        self.corrupt_dropped += 1
        self.drop(slot)

    def set(self, key_hash, key, file_id, offset, record_len, expire_at_ms, found=None):
        """Point ``key`` at a new record. ``found`` is ``find()``'s answer if the caller has it."""
        if found is None:
            found = self.find(key_hash, key)
        if found is None:
            self.index.insert(key_hash, file_id, offset, record_len, expire_at_ms)
            if self.accounts is not None:
                self.accounts.added(key, record_len)
        else:
            slot, old_file, _old_offset, old_len, _old_expire = found
            self.live_bytes[old_file] -= old_len
            self.index.replace(slot, file_id, offset, record_len, expire_at_ms)
            if self.accounts is not None:
                self.accounts.resized(key, record_len - old_len)
        self.live_bytes[file_id] = self.live_bytes.get(file_id, 0) + record_len

    def drop(self, slot):
        """Remove the entry in ``slot`` (a delete, an expiry, or a record found corrupt)."""
        _hash, file_id, offset, record_len, _expire = self.index.remove(slot)
        self.live_bytes[file_id] -= record_len
        if self.accounts is not None:
            self.accounts.removed(file_id, offset, record_len)

    def set_expiry(self, found, expire_at_ms):
        """Give the entry ``find()`` returned a new expiry; it keeps pointing at its value's record."""
        slot, file_id, offset, record_len, _old_expire = found
        self.index.replace(slot, file_id, offset, record_len, expire_at_ms)

    def find_at(self, key_hash, file_id, offset):
        """``(slot, expire_at_ms)`` of the entry pointing at the record at ``file_id``/``offset``, or None.

        A record's position names one key, so no key bytes need comparing.
        """
        return self.index.slot_at(key_hash, file_id, offset)

    def move(self, key_hash, old_file, old_offset, new_file, new_offset, record_len):
        """Point the entry at ``old_file``/``old_offset`` at a copy of its record; False if it moved on meanwhile.

        The entry keeps its expire_at_ms (a TTL change made after the copy was taken stays).
        """
        found = self.index.slot_at(key_hash, old_file, old_offset)
        if found is None:
            return False
        slot, expire_at_ms = found
        old_len = self.index.entry(slot)[3]
        if self.accounts is not None and record_len != old_len:
            self.accounts.resized_record(old_file, old_offset, record_len - old_len)
        self.index.replace(slot, new_file, new_offset, record_len, expire_at_ms)
        self.live_bytes[old_file] -= old_len
        self.live_bytes[new_file] = self.live_bytes.get(new_file, 0) + record_len
        return True

    def load_file(self, file_id, entries, now_ms):
        """Apply a file's entries ``(key_hash, seq, expire_at_ms, offset, record_len, flags)`` in file order.

        A key not yet in the table takes the index's bulk-insert fast path;
        deletes and hash matches take ``load``, which reads and compares keys;
        TTL-only records take ``load_expiry``. Records already expired are
        loaded like any other and noted for ``drop_expired_at_load``. Returns
        how many entries were applied.
        """
        index = self.index
        insert_absent, load, expired = index.insert_absent, self.load, self._expired_at_load
        applied = live = 0
        self.live_bytes.setdefault(file_id, 0)  # the slow path may move bytes out of this file first
        for key_hash, seq, expire_at_ms, offset, record_len, flags in entries:
            applied += 1
            if flags & FLAG_TTL_ONLY:
                self.load_expiry(key_hash, seq, expire_at_ms, file_id, offset, record_len, now_ms)
                continue
            is_delete = flags & FLAG_TOMBSTONE
            if 0 < expire_at_ms <= now_ms:
                expired.extend((key_hash, file_id, offset))
            if not is_delete and insert_absent(key_hash, file_id, offset, record_len, expire_at_ms):
                live += record_len
            else:
                load(key_hash, seq, expire_at_ms, file_id, offset, record_len, is_delete)
        self.live_bytes[file_id] += live
        index.write_counts()
        return applied

    def load(self, key_hash, seq, expire_at_ms, file_id, offset, record_len, is_delete, key=None):
        """Apply one record met during recovery; a record older than the entry it meets loses.

        ``is_delete``: a tombstone, which hides any older value of the key.
        ``key`` is read from the record when not given (hint entries carry
        only the hash).
        """
        for candidate in self.index.candidates(key_hash):
            slot, old_file, old_offset, old_len, _old_expire = candidate
            if key is None:
                key = record_key(self.files.read(file_id, offset, record_len))
            if not key_matches(self.files.read(old_file, old_offset, HEADER_BYTES + len(key)), key):
                self._drop_if_corrupt(candidate)
                continue
            # The old entry's seq is only trusted if its record is intact; a damaged one loses.
            if not self._drop_if_corrupt(candidate):
                if seq < record_seq(self.files.read(old_file, old_offset, HEADER_BYTES)):
                    return
                if is_delete:
                    self.drop(slot)
                else:
                    self.set(key_hash, key, file_id, offset, record_len, expire_at_ms, found=candidate)
                return
            break  # the damaged old entry is gone: insert below as for a new key
        if not is_delete:
            self.index.insert(key_hash, file_id, offset, record_len, expire_at_ms)
            self.live_bytes[file_id] = self.live_bytes.get(file_id, 0) + record_len

    def load_expiry(self, key_hash, seq, expire_at_ms, file_id, offset, record_len, now_ms):
        """Apply a TTL-only record met during recovery to the value of its key.

        It applies only if the key's entry is older (a newer value carries its
        own expiry); with no entry (deleted) there is nothing to change. An
        expiry already past is noted for ``drop_expired_at_load``.
        """
        key = None
        for candidate in self.index.candidates(key_hash):
            _slot, old_file, old_offset, _old_len, _old_expire = candidate
            if key is None:
                key = record_key(self.files.read(file_id, offset, record_len))
            if not key_matches(self.files.read(old_file, old_offset, HEADER_BYTES + len(key)), key):
                self._drop_if_corrupt(candidate)
                continue
            if self._drop_if_corrupt(candidate) or seq < record_seq(self.files.read(old_file, old_offset, HEADER_BYTES)):
                return
            self.set_expiry(candidate, expire_at_ms)
            if 0 < expire_at_ms <= now_ms:
                self._expired_at_load.extend((key_hash, old_file, old_offset))
            return

    def drop_expired_at_load(self, now_ms):
        """After every file is loaded: drop the entries whose (final) expiry has passed; returns how many."""
        noted, self._expired_at_load = self._expired_at_load, array("Q")
        dropped = 0
        for at in range(0, len(noted), 3):
            found = self.find_at(noted[at], noted[at + 1], noted[at + 2])
            if found is not None and 0 < found[1] <= now_ms:
                self.drop(found[0])
                dropped += 1
        return dropped

    def keys(self, now_ms):
        """Yield every key not expired at ``now_ms``, reading each from its (CRC-checked) record."""
        for entry in list(self.index.entries()):
            key = self._live_key(entry, now_ms)
            if key is not None:
                yield key

    def scan(self, prefix, start_slot, count, now_ms, max_slots=None):
        """Up to ``count`` unexpired keys starting with ``prefix``, from slot ``start_slot`` on.

        Returns ``(next_slot, keys)``; ``next_slot`` is 0 when the table is
        exhausted. ``max_slots`` bounds the slots looked at (each live one
        costs a read of its key), so one call never holds the shard for long:
        it may then return fewer than ``count`` keys, even none, with a
        ``next_slot`` to go on from. Keys present for the whole scan are
        returned at least once unless the table is rebuilt (grown) between calls.
        """
        keys = []
        end = self.index.capacity if max_slots is None else min(self.index.capacity, start_slot + max_slots)
        for entry in self.index.entries(start_slot, end):
            key = self._live_key(entry, now_ms)
            if key is not None and key.startswith(prefix):
                keys.append(key)
                if len(keys) >= count:
                    return entry[0] + 1, keys
        return (0 if end >= self.index.capacity else end), keys

    def _live_key(self, entry, now_ms):
        """The key of an ``entries()`` row, or None if it expired or its record is damaged (then dropped)."""
        slot, key_hash, file_id, offset, record_len, expire_at_ms = entry
        if expire_at_ms and expire_at_ms <= now_ms:
            return None
        # Fast path for scans: read the header and key only, and trust them when the key hashes to the
        # slot's hash (64 bits); anything else gets the whole-record check, which drops a damaged record.
        key_len = int.from_bytes(self.files.read(file_id, offset + RECORD_KEY_LEN_AT, 4), "little")
        if HEADER_BYTES + key_len <= record_len:
            key = bytes(self.files.read(file_id, offset + HEADER_BYTES, key_len))
            if key_hash64(key) == key_hash:
                return key
        data = self.files.read(file_id, offset, record_len)
        if self._drop_if_corrupt((slot, file_id, offset, record_len, expire_at_ms), data):
            return None
        return record_key(data)
