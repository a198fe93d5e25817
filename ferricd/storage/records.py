"""Data records: encoding, checked reads, and the scan that recovers a file's valid records.

The byte layout is ``ferric_ipc.file_layout.RECORD_HEADER`` (clients read
records too): a 29-byte header (crc32, seq, expire_at_ms, flags, key_len,
value_len), then the key, then the value. This module knows bytes and
offsets only; it never calls into the engine.
"""

import logging
import zlib
from typing import NamedTuple

from ferric_ipc.file_layout import (
    FLAG_BATCH_MORE,
    FLAG_TOMBSTONE,
    FLAG_TTL_ONLY,
    RECORD_CHECKED,
    RECORD_CRC,
    RECORD_FLAGS_AT,
    RECORD_HEADER,
    RECORD_HEADER_BYTES,
)
from ferric_ipc.keys import MAX_KEY_BYTES
from ferricd.storage.errors import CorruptDataError

log = logging.getLogger(__name__)

HEADER = RECORD_HEADER  # crc32, seq, expire_at_ms, flags, key_len, value_len (shared with clients)
HEADER_BYTES = RECORD_HEADER_BYTES
_CRC_BYTES = RECORD_CRC.size  # the CRC covers everything after it

KNOWN_FLAGS = FLAG_TOMBSTONE | FLAG_BATCH_MORE | FLAG_TTL_ONLY
_NO_VALUE_FLAGS = FLAG_TOMBSTONE | FLAG_TTL_ONLY  # records that carry no value bytes


class Record(NamedTuple):
    seq: int
    expire_at_ms: int
    flags: int
    key: bytes
    value: bytes

    @property
    def is_tombstone(self) -> bool:
        return bool(self.flags & FLAG_TOMBSTONE)


class ScannedRecord(NamedTuple):
    """Where a valid record sits in its file, and what the key directory needs of it."""

    offset: int
    record_len: int
    seq: int
    expire_at_ms: int
    flags: int
    key: bytes


def encode(seq: int, expire_at_ms: int, flags: int, key: bytes, value: bytes) -> bytes:
    """The bytes of one record; its length is the ``record_len`` the index stores."""
    checked = RECORD_CHECKED.pack(seq, expire_at_ms, flags, len(key), len(value))
    crc = zlib.crc32(value, zlib.crc32(key, zlib.crc32(checked)))
    return b"".join((RECORD_CRC.pack(crc), checked, key, value))


def decode(data) -> Record:
    """Parse and verify one whole record held in ``data`` (bytes or memoryview of exactly one record).

    Raises CorruptDataError when the lengths or the CRC do not match.
    """
    if len(data) < HEADER_BYTES:
        raise CorruptDataError(f"record of {len(data)} bytes is shorter than its header")
    crc, seq, expire_at_ms, flags, key_len, value_len = HEADER.unpack_from(data, 0)
    if HEADER_BYTES + key_len + value_len != len(data):
        raise CorruptDataError("record length does not match its header")
    if zlib.crc32(data[_CRC_BYTES:]) != crc:
        raise CorruptDataError("record CRC mismatch")
    key_end = HEADER_BYTES + key_len
    return Record(seq, expire_at_ms, flags, bytes(data[HEADER_BYTES:key_end]), bytes(data[key_end:]))


def key_matches(data, key: bytes) -> bool:
    """Whether the record starting ``data`` (header plus at least ``len(key)`` bytes) is for ``key``."""
    key_len = HEADER.unpack_from(data, 0)[4]
    return key_len == len(key) and data[HEADER_BYTES:HEADER_BYTES + key_len] == key


def record_seq(data) -> int:
    """The seq of the record starting ``data``."""
    return HEADER.unpack_from(data, 0)[1]


def record_key(data) -> bytes:
    """The key of the record starting ``data``, which must hold the header and the whole key."""
    key_len = HEADER.unpack_from(data, 0)[4]
    return bytes(data[HEADER_BYTES:HEADER_BYTES + key_len])


class RecordScanner:
    """Iterate the valid records of one data file image, stepping over damage.

    Yields ScannedRecord in file order. After iteration:
    ``valid_end`` is the end of the last valid record (a torn tail starts there),
    ``corrupt_records`` counts damaged spans that valid records follow, and
    ``corrupt_bytes`` is their total size.

    Rule (the one basho/bitcask's fold follows, made stricter): a record whose
    lengths run past the end of the file or whose CRC fails is damage. If a
    valid record can be found after it, the damage is skipped and counted;
    if none can, everything from the damage on is a torn tail.

    Atomic batches: records flagged FLAG_BATCH_MORE are held back until the
    batch's last record (the first one without the flag) is read, so a batch
    is yielded whole or not at all. A batch cut short by the end of the file is
    part of the torn tail; one cut by damage is dropped and counted as damage.
    """

    def __init__(self, data, name="<data>"):
        self._data = data
        self._name = name
        self.valid_end = 0
        self.corrupt_records = 0
        self.corrupt_bytes = 0

    def __iter__(self):
        data, size = self._data, len(self._data)
        pos = 0
        batch = []  # records of an atomic batch whose last record is not read yet
        while pos < size:
            found = self._valid_at(pos)
            if found is None:
                resume = self._resync(pos)
                if resume is None:
                    return  # torn tail (with any unfinished batch): valid_end stays at the last whole write
                log.warning(
                    "%s: skipping %d damaged bytes at offset %d (CRC or length mismatch)",
                    self._name, resume - pos, pos,
                )
                self.corrupt_records += 1
                self.corrupt_bytes += resume - pos
                if batch:
                    self._drop_batch(batch)
                    batch = []
                pos = resume
                continue
            record_len, seq, expire_at_ms, flags, key_len = found
            key = bytes(data[pos + HEADER_BYTES:pos + HEADER_BYTES + key_len])
            batch.append(ScannedRecord(pos, record_len, seq, expire_at_ms, flags, key))
            pos += record_len
            if flags & FLAG_BATCH_MORE:
                continue
            yield from batch
            batch = []
            self.valid_end = pos

    def _drop_batch(self, batch):
        start, end = batch[0].offset, batch[-1].offset + batch[-1].record_len
        log.warning("%s: dropping an atomic batch of %d records at offset %d cut short by damage",
                    self._name, len(batch), start)
        self.corrupt_records += 1
        self.corrupt_bytes += end - start

    def _valid_at(self, pos):
        """``(record_len, seq, expire_at_ms, flags, key_len)`` if a valid record starts at ``pos``."""
        data = self._data
        if len(data) - pos < HEADER_BYTES:
            return None
        crc, seq, expire_at_ms, flags, key_len, value_len = HEADER.unpack_from(data, pos)
        if flags & ~KNOWN_FLAGS or key_len > MAX_KEY_BYTES:
            return None
        if flags & _NO_VALUE_FLAGS and (value_len or flags & _NO_VALUE_FLAGS == _NO_VALUE_FLAGS):
            return None
        end = pos + HEADER_BYTES + key_len + value_len
        if end > len(data) or zlib.crc32(data[pos + _CRC_BYTES:end]) != crc:
            return None
        return end - pos, seq, expire_at_ms, flags, key_len

    def _resync(self, pos):
        """Offset of the next valid record after damage at ``pos``, or None if there is none."""
        data, size = self._data, len(self._data)
        if not bytes(data[pos:]).strip(b"\0"):
            return None  # zero-filled tail (a crash after the file grew): nothing to find
        # Search byte by byte rather than trusting the damaged header's lengths: a flipped
        # length bit can point exactly at a later record and hide the good ones before it.
        for candidate in range(pos + 1, size - HEADER_BYTES + 1):
            if data[candidate + RECORD_FLAGS_AT] <= KNOWN_FLAGS and self._valid_at(candidate) is not None:
                return candidate
        return None
