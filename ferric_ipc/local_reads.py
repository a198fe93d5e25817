"""Local reads: answer get/exists/ttl from a shard's mapped index and data files, without a round trip.

Each shard publishes its key directory as ``run_dir/shard-K.idx`` (layout in
``index_layout``) and is its only writer. A reader here:

1. checks the header is LIVE (a replaced or restarted table is RETIRED: re-open);
2. probes from ``key_hash % capacity``;
3. copies a matching slot between two reads of its seq (odd or changed: retry);
4. reads the record from the mapped data file, checks key bytes and CRC;
5. re-reads the slot's seq: if it moved, the slot was rewritten meanwhile, retry.

Anything unexpected (no index file, no permission, bad magic, a seq stuck odd,
a record that does not check out, a table retired twice in a row, a data
file that is gone) returns FALLBACK, and the caller asks the shard over
ZeroMQ. A local answer is never a guess: it is either verified or not given.

Merges delete data files (docs/storage.md, "Hand-over to mapped readers").
A deleted file stays readable through a map made before, so nobody faults,
but its disk space is freed only once every map of it is gone: a reader
looks at the table's files_generation with its path check (every
_RECHECK_PATH_MS while it reads), drops every data file it has open when the
number changed (they re-open on demand), and never keeps a file it opened
after the file was unlinked.

Correct on x86-64 (TSO), where plain loads are not reordered with each other;
the seq re-checks are what makes a torn copy impossible to accept.

When the C extension is built (``ferric_ipc.native``), steps 1-5 run in C for
tables and data files already mapped; it answers SLOW for anything else (a
retired table, a file not yet mapped or grown past its mapping) and this
module's Python path takes over, re-opens or re-maps, and answers.
"""

import enum
import mmap
import os
import struct
import threading
import time
import weakref
import zlib
from collections.abc import Callable
from typing import Any, Final, Literal

from ferric_ipc import native
from ferric_ipc.file_layout import (
    ACCESS_CLOCK_AT,
    ACCESS_HEADER,
    ACCESS_HEADER_BYTES,
    ACCESS_MAGIC,
    ACCESS_STATE_AT,
    ACCESS_VERSION,
    RECORD_CRC,
    RECORD_HEADER,
    RECORD_HEADER_BYTES,
    access_path,
    data_file_name,
    index_path,
)
from ferric_ipc.index_layout import (
    EMPTY,
    FILES_GENERATION_WORD,
    HASH_WORD,
    HEADER,
    HEADER_WORDS,
    INDEX_MAGIC,
    INDEX_VERSION,
    SLOT,
    SLOT_SEQ,
    SLOT_WORDS,
    SEQ_SPINS,
    STATE_AT,
    STATE_LIVE,
    table_bytes,
)


class Answer(enum.Enum):
    """A lookup's answers other than a hit."""

    FALLBACK = "cannot answer locally: ask the shard"
    MISSING = "verified absent (or expired)"
    SLOW = "from the C lookup: take the Python path (it re-opens and re-maps)"


FALLBACK: Final = Answer.FALLBACK
MISSING: Final = Answer.MISSING
_SLOW: Final = Answer.SLOW
#: What a lookup answers: ``(value, expire_at_ms)``, MISSING or FALLBACK.
Found = tuple[bytes, int] | Literal[Answer.MISSING, Answer.FALLBACK]
# A mapped table: (map, its 64-bit words, capacity, epoch, inode).
_Table = tuple[mmap.mmap, memoryview, int, int, int]
# The shard's access times, mapped writable: (map, buckets - 1).
_Access = tuple[mmap.mmap, int]

if native.extension is not None:
    native.extension.configure(MISSING, FALLBACK, _SLOW)

_RECORD_HEADER_BYTES = RECORD_HEADER_BYTES
_RECORD_CRC_BYTES = RECORD_CRC.size  # the CRC covers the record after its own field
_STATE_WORD = STATE_AT // 8  # the header word whose high half is the state (little-endian)
_STATE = struct.Struct("<I")
_REMAP_STEP_BYTES = 4 << 10  # without the extension: re-map a growing file once it grew this much; pread until then
# With the extension, a file that grew since it was mapped is re-mapped this far past its end, so
# the records the shard appends next are read from the map with no system call (the active file).
_GROWTH_WINDOW_BYTES = 64 << 20
# A shard that was SIGKILLed never retires its table, and if the run directory is then recreated
# nothing else will: so every this often a reader checks that its file is still the one at the path.
_RECHECK_PATH_MS = 100
_RECHECK_PATH_NS = _RECHECK_PATH_MS * 1_000_000  # on the monotonic clock: a wall clock stepped back stops nothing


class _DataFile:
    """A shard data file mapped read-only; reads past the mapped length use pread.

    The mapping is one immutable ``(view, mapped_bytes)`` pair, replaced (never
    closed under a reader) when the file has grown: a thread still reading the
    old pair keeps it alive, and it is freed when the last reference goes.
    A file seen growing is mapped _GROWTH_WINDOW_BYTES past its end when the
    extension can (``map_window``): its next records then need no re-map.
    """

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        # Closed when the last reference goes: a reader dropping its files never closes a
        # descriptor another thread is still reading through (or one the number was reused for).
        self._closer = weakref.finalize(self, os.close, self.fd)
        self.mapping: tuple[memoryview, int] = (memoryview(b""), 0)
        self.unlinked = False
        self._remap()

    def _remap(self) -> None:
        stat = os.fstat(self.fd)
        size = stat.st_size
        self.unlinked = stat.st_nlink == 0
        mapped = self.mapping[1]
        if size <= mapped:
            return
        if mapped and native.extension is not None:  # grown since mapped: the active file
            window = size + _GROWTH_WINDOW_BYTES
            self.mapping = (memoryview(native.extension.map_window(self.fd, window)), window)
        else:
            self.mapping = (memoryview(mmap.mmap(self.fd, size, prot=mmap.PROT_READ)), size)

    def read(self, offset: int, length: int) -> memoryview | bytes:
        """A zero-copy view (or bytes) of ``length`` bytes at ``offset``."""
        view, mapped = self.mapping
        end = offset + length
        if end <= mapped:
            return view[offset:end]
        data = os.pread(self.fd, length, offset)
        if end - mapped >= _REMAP_STEP_BYTES or native.extension is not None:
            self._remap()
        return data

    def close(self) -> None:
        self.mapping = (memoryview(b""), 0)
        self._closer()


class LocalShardReader:
    """Reads one shard's published index and data files. Safe to share between threads.

    The mapped table is one immutable ``(map, words, capacity, epoch, inode)``
    tuple, read once per lookup: a thread that re-opens a replaced table swaps
    the tuple, and never closes a map another thread may still be probing.
    """

    def __init__(self, run_dir: str, shard_dir: str, shard_id: int) -> None:
        self.path = index_path(run_dir, shard_id)
        self.shard_dir = shard_dir
        self._lock = threading.Lock()
        self._table: _Table | None = None
        self._files: dict[int, _DataFile] = {}  # file_id -> _DataFile, for the epoch of the current table
        self._views: dict[int, memoryview] = {}  # file_id -> the mapped view of self._files[file_id], for C
        self._files_generation: int | None = None  # the table's files_generation when _files was last emptied
        self._path_checked_ns = -_RECHECK_PATH_NS  # monotonic: when _same_file last ran
        self.slow_lookups = 0  # lookups the Python path answered though the C path is loaded
        self.access_path = access_path(run_dir, shard_id)
        self._access: _Access | None = None  # re-opened with the path check while missing or retired
        self._native_lookup: Callable[[mmap.mmap, bytes, int, int, dict[int, memoryview]], Any] | None = (
            native.extension.lookup if native.extension is not None else None
        )

    # -- opening ---------------------------------------------------------------

    def _open(self, stale: _Table | None) -> _Table | None:
        """The current LIVE table, re-mapping it if ``stale`` is still the one in use; None if unusable."""
        with self._lock:
            if self._table is not stale:  # another thread re-opened meanwhile
                table = self._table
                return table if table is not None and _is_live(table[0]) else None
            table = _map_table(self.path)
            if table is not None:
                # Another table: possibly another run of the shard, whose file ids may name other
                # files, or a grown one that counts files_generation on; either way start afresh.
                self._files, self._views = {}, {}
                self._files_generation = table[1][FILES_GENERATION_WORD]
            self._table = table
            return table if table is not None and _is_live(table[0]) else None

    def _same_file(self, table: _Table) -> bool:
        """Whether ``table`` is still the file at the index path (checked every _RECHECK_PATH_MS); first drops
        this reader's data files if the shard deleted some since."""
        self._path_checked_ns = time.monotonic_ns()
        if table[1][FILES_GENERATION_WORD] != self._files_generation:
            self._drop_files(table)
        access = self._access
        if access is None or _STATE.unpack_from(access[0], ACCESS_STATE_AT)[0] != STATE_LIVE:
            self._access = _map_access(self.access_path)
        try:
            return os.stat(self.path).st_ino == table[4]
        except OSError:
            return False

    def _data_file(self, file_id: int) -> _DataFile:
        with self._lock:
            data_file = self._files.get(file_id)
            if data_file is None:
                data_file = _DataFile(os.path.join(self.shard_dir, data_file_name(file_id)))
                if not data_file.unlinked:  # a file a merge just deleted serves this read only
                    self._files[file_id] = data_file
                    self._views[file_id] = data_file.mapping[0]
            return data_file

    def _drop_files(self, table: _Table) -> None:
        """The shard deleted data files: let go of every one this reader has, so their space is freed."""
        with self._lock:
            generation = table[1][FILES_GENERATION_WORD]
            if self._table is table and generation != self._files_generation:
                self._files, self._views = {}, {}
                self._files_generation = generation

    def _share_mapping(self, file_id: int, data_file: _DataFile) -> None:
        """Let the C lookup see ``data_file``'s current mapping, unless the epoch moved on meanwhile."""
        with self._lock:
            if self._files.get(file_id) is data_file:
                self._views[file_id] = data_file.mapping[0]

    # -- reading ---------------------------------------------------------------

    def lookup(self, key: bytes, key_hash: int, now_ms: int) -> Found:
        """``(value, expire_at_ms)``, MISSING, or FALLBACK for an encoded key and its key_hash64.

        A hit marks the key as used in the shard's access times, if it has them
        (a keyspace evicts) and this process may write them: eviction then
        spares keys read here, without a round trip (docs/storage.md, "Eviction").
        """
        table = self._table
        checked_ns = time.monotonic_ns() - self._path_checked_ns
        if self._native_lookup is not None and table is not None and checked_ns < _RECHECK_PATH_NS:
            found: Found | Literal[Answer.SLOW] = self._native_lookup(table[0], key, key_hash, now_ms, self._views)
            if found is _SLOW:
                self.slow_lookups += 1
                found = self._lookup_python(key, key_hash, now_ms)
        else:
            if self._native_lookup is not None:
                self.slow_lookups += 1  # the periodic check that the table is still the one at its path
            found = self._lookup_python(key, key_hash, now_ms)
        if self._access is not None and type(found) is tuple:
            self.mark_used(key_hash)
        return found

    def native_state(self, now_ns: int) -> tuple[Any, dict[int, memoryview], Any, int] | None:
        """``(mapped table, views, access times or None, their bucket mask)`` for the C ``lookup_many`` while it
        may read this shard (``now_ns`` on the monotonic clock), else None: then ``lookup`` must answer (it
        re-checks the table's path). The access times are re-mapped here when the shard replaced them."""
        table = self._table
        if self._native_lookup is None or table is None or now_ns - self._path_checked_ns >= _RECHECK_PATH_NS:
            return None
        access = self._live_access()
        if access is None:
            return table[0], self._views, None, 0
        return table[0], self._views, access[0], access[1]

    def mark_used(self, key_hash: int) -> None:
        """Mark a key read here (a hit) as used in the shard's access times, if it has them."""
        access = self._live_access()
        if access is None:
            return
        # A plain byte store, racing nobody who matters: the shard only reads it, or pins it old.
        times, at = access[0], ACCESS_HEADER_BYTES + (key_hash & access[1])
        clock = times[ACCESS_CLOCK_AT]
        if times[at] != clock:  # no store when unchanged: the line stays shared between caches
            times[at] = clock

    def _live_access(self) -> _Access | None:
        """The access times this reader marks: when the shard replaced them by a larger file, that one, now."""
        access = self._access
        if access is not None and access[0][ACCESS_STATE_AT] != STATE_LIVE:
            access = self._access = _map_access(self.access_path)
        return access

    def _lookup_python(self, key: bytes, key_hash: int, now_ms: int) -> Found:
        for _attempt in range(2):
            table = self._table
            if (
                table is None
                or table[1][_STATE_WORD] >> 32 != STATE_LIVE
                or (time.monotonic_ns() - self._path_checked_ns >= _RECHECK_PATH_NS and not self._same_file(table))
            ):
                table = self._open(table)
                if table is None:
                    return FALLBACK
            mapped, words, capacity = table[0], table[1], table[2]
            found: Found = FALLBACK  # if the probe visits every slot: a full table should not exist
            slot = key_hash % capacity
            for _ in range(capacity):
                stored = words[HEADER_WORDS + slot * SLOT_WORDS + HASH_WORD]
                if stored == EMPTY:
                    found = MISSING
                    break
                if stored == key_hash:
                    answer = self._read_slot(mapped, slot, key, key_hash, now_ms)
                    if answer is not None:
                        found = answer
                        break
                    found = FALLBACK
                slot += 1
                if slot == capacity:
                    slot = 0
            # A miss or hit is only as good as the table it came from: if the table was
            # retired while probing, the key may have moved to its replacement.
            if found is not FALLBACK and words[_STATE_WORD] >> 32 == STATE_LIVE:
                return found
        return FALLBACK

    def _read_slot(self, mapped: mmap.mmap, slot: int, key: bytes, key_hash: int, now_ms: int) -> Found | None:
        """The answer if ``slot`` holds ``key``; None if the slot no longer holds ``key_hash``; else FALLBACK."""
        at = table_bytes(slot)
        for _ in range(SEQ_SPINS):
            seq, file_id, stored_hash, offset, record_len, expire_at_ms = SLOT.unpack_from(mapped, at)
            if seq & 1:
                continue  # the shard is writing this slot
            if stored_hash != key_hash:
                return None  # deleted or given to another key since the probe saw it
            if SLOT_SEQ.unpack_from(mapped, at)[0] != seq:
                continue  # torn copy: an offset from one write and a file from another could point past a file's end
            try:
                data_file = self._files.get(file_id) or self._data_file(file_id)
                view, mapped_bytes = data_file.mapping
                end = offset + record_len
                # One copy of the record, then cheap bytes slices (fewer objects than views).
                if end <= mapped_bytes:
                    record = bytes(view[offset:end])
                else:
                    # May re-map a grown file, and then answer with a view of the new map: copied too.
                    record = bytes(data_file.read(offset, record_len))
                    if self._native_lookup is not None:
                        self._share_mapping(file_id, data_file)
            except (OSError, ValueError):
                return FALLBACK
            if SLOT_SEQ.unpack_from(mapped, at)[0] != seq:
                continue  # the slot moved on while we read: start over
            if len(record) != record_len or record_len < _RECORD_HEADER_BYTES:
                return FALLBACK
            crc, _seq, _exp, _flags, key_len, value_len = RECORD_HEADER.unpack_from(record, 0)
            value_at = _RECORD_HEADER_BYTES + key_len
            if key_len != len(key) or record[_RECORD_HEADER_BYTES:value_at] != key:
                # Another key with the same 64-bit hash (about never), or a file that is not what
                # the table thinks: either way the shard, not a guess, must answer.
                return FALLBACK
            if zlib.crc32(memoryview(record)[_RECORD_CRC_BYTES:]) != crc:
                return FALLBACK  # damaged: the shard decides what to do about it
            if expire_at_ms and expire_at_ms <= now_ms:
                return MISSING
            return record[value_at:], expire_at_ms
        return FALLBACK  # seq stuck odd: a writer died mid-update, or is very slow

    def close(self) -> None:
        with self._lock:
            self._table = self._access = None
            for data_file in self._files.values():
                data_file.close()
            self._files, self._views = {}, {}


def _is_live(mapped: mmap.mmap) -> bool:
    state: int = _STATE.unpack_from(mapped, STATE_AT)[0]
    return state == STATE_LIVE


def _map_access(path: str) -> _Access | None:
    """The shard's access times at ``path`` mapped writable, or None (no evicting keyspace, no write permission)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        mapped = mmap.mmap(fd, 0)
    except (OSError, ValueError):  # empty, or a mapping refused
        return None
    finally:
        os.close(fd)
    if len(mapped) >= ACCESS_HEADER_BYTES:
        magic, version, state, buckets, _clock = ACCESS_HEADER.unpack_from(mapped, 0)
        if (magic, version, state) == (ACCESS_MAGIC, ACCESS_VERSION, STATE_LIVE) and buckets > 0 and (
                buckets & (buckets - 1) == 0 and len(mapped) >= ACCESS_HEADER_BYTES + buckets):
            return mapped, buckets - 1
    mapped.close()
    return None


def _map_table(path: str) -> _Table | None:
    """``(map, words, capacity, epoch, inode)`` of the index file at ``path``, or None if it is not a usable table."""
    try:
        with open(path, "rb") as f:
            inode = os.fstat(f.fileno()).st_ino
            mapped = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    except (OSError, ValueError):  # missing, unreadable, a directory, or empty
        return None
    if len(mapped) < HEADER.size:
        mapped.close()
        return None
    magic, version, _state, epoch, capacity, _count, _deleted = HEADER.unpack_from(mapped, 0)
    if magic != INDEX_MAGIC or version != INDEX_VERSION or capacity <= 0 or len(mapped) < table_bytes(capacity):
        mapped.close()
        return None
    return mapped, memoryview(mapped).cast("Q"), capacity, epoch, inode
