"""Hint files: a closed data file's index entries, so startup need not scan the data file.

``NNNNNNNNN.hint`` beside ``NNNNNNNNN.data``: one fixed-size ENTRY per record of
the data file (tombstones included, in file order), then a TRAILER. Fixed-size
entries let startup parse the whole file with one ``iter_unpack``.

Entry, 33 bytes, little-endian::

    key_hash u64 | seq u64 | expire_at_ms u64 | offset u32 | record_len u32 | flags u8

Trailer, 36 bytes::

    magic 8s "FERHNT01" | entry_count u64 | max_seq u64 | data_file_bytes u64 | crc32 u32

The CRC covers every entry byte and the trailer up to the CRC. A hint is used
only if the CRC matches and ``data_file_bytes`` equals the data file's size;
otherwise the data file is scanned instead. Hints are written to a temporary
name, fsynced, and renamed, so a crash never leaves a half-written hint.
"""

import struct
import zlib

from ferricd.storage.atomic_files import write_atomically
from ferricd.storage.errors import CorruptDataError

ENTRY = struct.Struct("<QQQIIB")  # key_hash, seq, expire_at_ms, offset, record_len, flags
TRAILER = struct.Struct("<8sQQQI")  # magic, entry_count, max_seq, data_file_bytes, crc32
_TRAILER_CHECKED = struct.Struct("<8sQQQ")
HINT_MAGIC = b"FERHNT01"

assert ENTRY.size == 33 and TRAILER.size == 36


class HintBuilder:
    """Collects the entries of the active data file as records are appended to it."""

    def __init__(self):
        self._entries = bytearray()
        self.count = 0
        self.max_seq = 0

    def add(self, key_hash, seq, expire_at_ms, offset, record_len, flags):
        self._entries += ENTRY.pack(key_hash, seq, expire_at_ms, offset, record_len, flags)
        self.count += 1
        if seq > self.max_seq:
            self.max_seq = seq

    def write(self, path, data_file_bytes, file_mode=0o640):
        """Write the hint file atomically (temp name, fsync, rename, fsync of the directory)."""
        checked = _TRAILER_CHECKED.pack(HINT_MAGIC, self.count, self.max_seq, data_file_bytes)
        crc = zlib.crc32(checked, zlib.crc32(self._entries))
        trailer = TRAILER.pack(HINT_MAGIC, self.count, self.max_seq, data_file_bytes, crc)
        write_atomically(path, (self._entries, trailer), file_mode)


class HintFile:
    """A validated hint file: ``entries()`` yields ENTRY tuples, ``max_seq`` the highest seq."""

    def __init__(self, data: bytes, entry_count: int, max_seq: int):
        self._data = data
        self.count = entry_count
        self.max_seq = max_seq

    def entries(self):
        return ENTRY.iter_unpack(memoryview(self._data)[: self.count * ENTRY.size])


def read_hint(path, data_file_bytes) -> HintFile:
    """Load and validate ``path`` for a data file of ``data_file_bytes`` bytes.

    Raises CorruptDataError (with the reason) when it cannot be trusted, and
    OSError when it cannot be read.
    """
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < TRAILER.size or (len(data) - TRAILER.size) % ENTRY.size:
        raise CorruptDataError(f"{path}: size {len(data)} is not entries plus a trailer")
    body_end = len(data) - TRAILER.size
    magic, count, max_seq, covered, crc = TRAILER.unpack_from(data, body_end)
    if magic != HINT_MAGIC:
        raise CorruptDataError(f"{path}: bad trailer magic")
    if zlib.crc32(data[body_end:body_end + _TRAILER_CHECKED.size], zlib.crc32(data[:body_end])) != crc:
        raise CorruptDataError(f"{path}: CRC mismatch")
    if count * ENTRY.size != body_end:
        raise CorruptDataError(f"{path}: entry count does not match its size")
    if covered != data_file_bytes:
        raise CorruptDataError(
            f"{path}: describes {covered} data bytes but the data file has {data_file_bytes}"
        )
    return HintFile(data, count, max_seq)

