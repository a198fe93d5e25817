"""KeyDirectory: which record holds each key's newest value, and how many live bytes each file has.

The ShardIndex stores hashes only; this layer confirms every hash match
against the key bytes of the record the slot points at, so two keys with the
same 64-bit hash stay distinct.
"""

from ferric_ipc.errors import CorruptDataError
from ferricd.index import ShardIndex
from ferricd.storage.records import FLAG_TOMBSTONE, HEADER_BYTES, decode, key_matches, record_key, record_seq


class KeyDirectory:
    def __init__(self, index: ShardIndex, files, live_bytes=None):
        self.index = index
        self.files = files
        self.live_bytes = dict(live_bytes or {})  # file_id -> bytes of records the index points at

    def __len__(self):
        return self.index.count

    def find(self, key_hash, key):
        """``(slot, file_id, offset, record_len, expire_at_ms)`` of ``key``, or None.

        Reads only the header and key of each candidate record (no CRC check).
        """
        for candidate in self.index.candidates(key_hash):
            _slot, file_id, offset, _record_len, _expire = candidate
            if key_matches(self.files.read(file_id, offset, HEADER_BYTES + len(key)), key):
                return candidate
        return None

    def lookup(self, key_hash, key):
        """``(slot, Record, expire_at_ms)`` for ``key`` with its CRC verified, or None.

        Raises CorruptDataError (carrying ``.slot``) when the record whose key
        matches fails its checksum.
        """
        for slot, file_id, offset, record_len, expire_at_ms in self.index.candidates(key_hash):
            data = self.files.read(file_id, offset, record_len)
            if not key_matches(data, key):
                continue
            try:
                return slot, decode(data), expire_at_ms
            except CorruptDataError as exc:
                exc.slot = slot
                raise
        return None

    def set(self, key_hash, key, file_id, offset, record_len, expire_at_ms, found=None):
        """Point ``key`` at a new record. ``found`` is ``find()``'s answer if the caller has it."""
        if found is None:
            found = self.find(key_hash, key)
        if found is None:
            self.index.insert(key_hash, file_id, offset, record_len, expire_at_ms)
        else:
            slot, old_file, _old_offset, old_len, _old_expire = found
            self.live_bytes[old_file] -= old_len
            self.index.replace(slot, file_id, offset, record_len, expire_at_ms)
        self.live_bytes[file_id] = self.live_bytes.get(file_id, 0) + record_len

    def drop(self, slot):
        """Remove the entry in ``slot`` (a delete, an expiry, or a record found corrupt)."""
        _hash, file_id, _offset, record_len, _expire = self.index.remove(slot)
        self.live_bytes[file_id] -= record_len

    def load_file(self, file_id, entries, now_ms):
        """Apply a file's entries ``(key_hash, seq, expire_at_ms, offset, record_len, flags)`` in file order.

        A key not yet in the table takes the index's bulk-insert fast path;
        deletes, expired records and hash matches take ``load``, which reads
        and compares keys. Returns how many entries were applied.
        """
        index = self.index
        insert_absent, load = index.insert_absent, self.load
        applied = live = 0
        self.live_bytes.setdefault(file_id, 0)  # the slow path may move bytes out of this file first
        for key_hash, seq, expire_at_ms, offset, record_len, flags in entries:
            applied += 1
            is_delete = flags & FLAG_TOMBSTONE or 0 < expire_at_ms <= now_ms
            if not is_delete and insert_absent(key_hash, file_id, offset, record_len, expire_at_ms):
                live += record_len
            else:
                load(key_hash, seq, expire_at_ms, file_id, offset, record_len, is_delete)
        self.live_bytes[file_id] += live
        index.write_counts()
        return applied

    def load(self, key_hash, seq, expire_at_ms, file_id, offset, record_len, is_delete, key=None):
        """Apply one record met during recovery; a record older than the entry it meets loses.

        ``is_delete`` covers tombstones and records already expired: both
        hide any older value of the key. ``key`` is read from the record when
        not given (hint entries carry only the hash).
        """
        for candidate in self.index.candidates(key_hash):
            slot, old_file, old_offset, old_len, _old_expire = candidate
            if key is None:
                key = record_key(self.files.read(file_id, offset, record_len))
            old = self.files.read(old_file, old_offset, HEADER_BYTES + len(key))
            if not key_matches(old, key):
                continue
            old_seq = record_seq(old)
            if seq < old_seq:
                return
            if is_delete:
                self.drop(slot)
            else:
                self.set(key_hash, key, file_id, offset, record_len, expire_at_ms, found=candidate)
            return
        if not is_delete:
            self.index.insert(key_hash, file_id, offset, record_len, expire_at_ms)
            self.live_bytes[file_id] = self.live_bytes.get(file_id, 0) + record_len

    def keys(self, now_ms):
        """Yield every key not expired at ``now_ms``, reading each from its record."""
        for _slot, _hash, file_id, offset, record_len, expire_at_ms in list(self.index.entries()):
            if not expire_at_ms or expire_at_ms > now_ms:
                yield record_key(self.files.read(file_id, offset, record_len))

    def scan(self, prefix, start_slot, count, now_ms):
        """Up to ``count`` unexpired keys starting with ``prefix``, from slot ``start_slot`` on.

        Returns ``(next_slot, keys)``; ``next_slot`` is 0 when the table is
        exhausted. Keys present for the whole scan are returned at least once
        unless the table is rebuilt (grown) between calls.
        """
        keys = []
        for slot, _hash, file_id, offset, record_len, expire_at_ms in self.index.entries(start_slot):
            if expire_at_ms and expire_at_ms <= now_ms:
                continue
            key = record_key(self.files.read(file_id, offset, record_len))
            if key.startswith(prefix):
                keys.append(key)
                if len(keys) >= count:
                    return slot + 1, keys
        return 0, keys
