"""Local reads: answer get/exists/ttl from a shard's mapped index and data files, without a round trip.

Each shard publishes its key directory as ``run_dir/shard-K.idx`` (layout in
``index_layout``) and is its only writer. A reader here:

1. checks the header is LIVE (a replaced or restarted table is RETIRED: re-open);
2. probes from ``key_hash % capacity``;
3. copies a matching slot between two reads of its seq (odd or changed: retry);
4. reads the record from the mapped data file, checks key bytes and CRC;
5. re-reads the slot's seq: if it moved, the slot was rewritten meanwhile, retry.

Anything unexpected (no index file, no permission, bad magic, a seq stuck odd,
a record that does not check out, a table retired twice in a row) returns
FALLBACK, and the caller asks the shard over ZeroMQ. A local answer is
never a guess: it is either verified or not given.

Correct on x86-64 (TSO), where plain loads are not reordered with each other;
the seq re-checks are what makes a torn copy impossible to accept.
"""

import mmap
import os
import struct
import threading
import zlib

from ferric_ipc.index_layout import (
    EMPTY,
    HASH_WORD,
    HEADER,
    HEADER_WORDS,
    INDEX_MAGIC,
    INDEX_VERSION,
    SLOT,
    SLOT_SEQ,
    SLOT_WORDS,
    STATE_LIVE,
    table_bytes,
)

FALLBACK = object()  # "cannot answer locally": ask the shard
MISSING = object()  # verified absent (or expired)

RECORD_HEADER = struct.Struct("<IQQBII")  # crc32, seq, expire_at_ms, flags, key_len, value_len
_RECORD_HEADER_BYTES = RECORD_HEADER.size
_STATE = struct.Struct("<I")
_STATE_AT = 12  # header offset of the state field
_SEQ_SPINS = 100  # a writer holds a slot odd for a few microseconds; past this, fall back
_REMAP_STEP_BYTES = 1 << 20  # re-map a growing data file once it grew this much; pread until then


def index_path(run_dir, shard_id):
    return os.path.join(run_dir, f"shard-{shard_id}.idx")


class _DataFile:
    """A shard data file mapped read-only; reads past the mapped length use pread."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.map = self.view = None
        self.mapped = 0
        self._remap()

    def _remap(self):
        size = os.fstat(self.fd).st_size
        if size and size > self.mapped:
            old_map, old_view = self.map, self.view
            self.map = mmap.mmap(self.fd, size, prot=mmap.PROT_READ)
            self.view = memoryview(self.map)
            self.mapped = size
            if old_map is not None:
                old_view.release()
                old_map.close()

    def read(self, offset, length):
        """Bytes (or a zero-copy view) of ``length`` bytes at ``offset``."""
        end = offset + length
        if end <= self.mapped:
            return self.view[offset:end]
        data = os.pread(self.fd, length, offset)
        if end - self.mapped >= _REMAP_STEP_BYTES:
            self._remap()
        return data

    def close(self):
        if self.map is not None:
            self.view.release()
            try:
                self.map.close()
            except BufferError:  # a caller still holds a view; the map closes when it is freed
                pass
        os.close(self.fd)


class LocalShardReader:
    """Reads one shard's published index and data files. Thread-safe; after fork, each process has its own."""

    def __init__(self, run_dir, shard_dir, shard_id):
        self.path = index_path(run_dir, shard_id)
        self.shard_dir = shard_dir
        self._lock = threading.Lock()
        self._map = None
        self._words = None
        self._capacity = 0
        self._files = {}  # file_id -> _DataFile

    # -- opening ---------------------------------------------------------------

    def _open(self):
        """Map the current index file; False if there is no usable one."""
        with self._lock:
            self._close_index()
            try:
                with open(self.path, "rb") as f:
                    mapped = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
            except (OSError, ValueError):  # missing, unreadable, or empty
                return False
            magic, version, state, _epoch, capacity, _count, _deleted = HEADER.unpack_from(mapped, 0)
            if magic != INDEX_MAGIC or version != INDEX_VERSION or len(mapped) < table_bytes(capacity):
                mapped.close()
                return False
            self._map, self._capacity = mapped, capacity
            self._words = memoryview(mapped).cast("Q")
            return state == STATE_LIVE

    def _close_index(self):
        if self._words is not None:
            self._words.release()
        if self._map is not None:
            self._map.close()
        self._map = self._words = None

    def _live(self):
        """The index is mapped and LIVE, re-opening it once if it was replaced."""
        if self._map is not None and _STATE.unpack_from(self._map, _STATE_AT)[0] == STATE_LIVE:
            return True
        return self._open()

    def _data_file(self, file_id):
        data_file = self._files.get(file_id)
        if data_file is None:
            data_file = self._files[file_id] = _DataFile(os.path.join(self.shard_dir, f"{file_id:09d}.data"))
        return data_file

    # -- reading ---------------------------------------------------------------

    def lookup(self, key, key_hash, now_ms):
        """``(value, expire_at_ms)``, MISSING, or FALLBACK for an encoded key and its key_hash64."""
        for _attempt in range(2):
            mapped = self._map
            if (mapped is None or _STATE.unpack_from(mapped, _STATE_AT)[0] != STATE_LIVE) and not self._open():
                return FALLBACK
            mapped, words, capacity = self._map, self._words, self._capacity
            found = FALLBACK  # if the probe visits every slot: a full table should not exist
            slot = key_hash % capacity
            for _ in range(capacity):
                stored = words[HEADER_WORDS + slot * SLOT_WORDS + HASH_WORD]
                if stored == EMPTY:
                    found = MISSING
                    break
                if stored == key_hash:
                    found = self._read_slot(mapped, slot, key, key_hash, now_ms)
                    if found is not None:
                        break
                    found = FALLBACK
                slot += 1
                if slot == capacity:
                    slot = 0
            # A miss or hit is only as good as the table it came from: if the table was
            # retired while probing, the key may have moved to its replacement.
            if found is not FALLBACK and _STATE.unpack_from(mapped, _STATE_AT)[0] == STATE_LIVE:
                return found
        return FALLBACK

    def _read_slot(self, mapped, slot, key, key_hash, now_ms):
        """The answer if ``slot`` holds ``key``; None if it holds another key; FALLBACK if unsure."""
        at = table_bytes(slot)
        for _ in range(_SEQ_SPINS):
            seq, file_id, stored_hash, offset, record_len, expire_at_ms = SLOT.unpack_from(mapped, at)
            if seq & 1:
                continue  # the shard is writing this slot
            if stored_hash != key_hash:
                return None  # rewritten for another key since the probe saw it
            try:
                data_file = self._files.get(file_id) or self._data_file(file_id)
                record = data_file.read(offset, record_len)
            except (OSError, ValueError):
                return FALLBACK
            if SLOT_SEQ.unpack_from(mapped, at)[0] != seq:
                continue  # the slot moved on while we read: start over
            if len(record) != record_len:
                return FALLBACK
            crc, _seq, _exp, _flags, key_len, value_len = RECORD_HEADER.unpack_from(record, 0)
            if key_len != len(key) or record[_RECORD_HEADER_BYTES:_RECORD_HEADER_BYTES + key_len] != key:
                return None  # a different key with the same 64-bit hash
            if zlib.crc32(record[4:]) != crc:
                return FALLBACK  # damaged: the shard decides what to do about it
            if expire_at_ms and expire_at_ms <= now_ms:
                return MISSING
            return bytes(record[_RECORD_HEADER_BYTES + key_len:]), expire_at_ms
        return FALLBACK  # seq stuck odd: a writer died mid-update, or is very slow

    def close(self):
        with self._lock:
            self._close_index()
            for data_file in self._files.values():
                data_file.close()
            self._files = {}
