"""Key directory snapshot: written on clean close, so a restart loads the table instead of rebuilding it.

``keydir.snapshot`` in the shard directory, little-endian::

    header    magic 8s "FERSNP01" | version u32 | file_count u32 | next_seq u64 | index_bytes u64
    files     file_count x (file_id u64 | data_file_bytes u64 | live_bytes u64)
    index     index_bytes: the ShardIndex buffer as it was
    trailer   crc32 u32 over everything before it

It is trusted only if the CRC matches and the data files on disk are exactly
the listed ones with exactly the listed sizes. It is deleted as soon as it has
been read, before the store takes a write, so a later crash can never make a
stale snapshot look current.
"""

import os
import struct
import zlib

from ferricd.storage.atomic_files import fsync_directory, write_atomically
from ferricd.storage.errors import CorruptDataError

SNAPSHOT_NAME = "keydir.snapshot"
SNAPSHOT_MAGIC = b"FERSNP01"
SNAPSHOT_VERSION = 1
HEADER = struct.Struct("<8sIIQQ")
FILE_ENTRY = struct.Struct("<QQQ")
TRAILER = struct.Struct("<I")


class Snapshot:
    def __init__(self, next_seq, file_sizes, live_bytes, index_buffer):
        self.next_seq = next_seq
        self.file_sizes = file_sizes  # file_id -> data file bytes
        self.live_bytes = live_bytes  # file_id -> live bytes
        self.index_buffer = index_buffer  # a bytearray holding the ShardIndex


def snapshot_path(directory):
    return os.path.join(directory, SNAPSHOT_NAME)


def write_snapshot(directory, next_seq, file_sizes, live_bytes, index_buffer, file_mode=0o640):
    """Write the snapshot atomically. ``file_sizes`` must list every data file of the shard."""
    parts = [HEADER.pack(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, len(file_sizes), next_seq, len(index_buffer))]
    for file_id in sorted(file_sizes):
        parts.append(FILE_ENTRY.pack(file_id, file_sizes[file_id], live_bytes.get(file_id, 0)))
    crc = zlib.crc32(index_buffer, zlib.crc32(b"".join(parts)))
    parts += [index_buffer, TRAILER.pack(crc)]
    write_atomically(snapshot_path(directory), parts, file_mode)


def read_snapshot(directory) -> Snapshot:
    """Read and check the snapshot. Raises FileNotFoundError if there is none and
    CorruptDataError, with the reason, if it cannot be trusted."""
    path = snapshot_path(directory)
    with open(path, "rb") as f:
        data = bytearray(os.fstat(f.fileno()).st_size)
        f.readinto(data)
    if len(data) < HEADER.size + TRAILER.size:
        raise CorruptDataError(f"{path}: too short")
    magic, version, file_count, next_seq, index_bytes = HEADER.unpack_from(data, 0)
    if magic != SNAPSHOT_MAGIC or version != SNAPSHOT_VERSION:
        raise CorruptDataError(f"{path}: not a version {SNAPSHOT_VERSION} snapshot")
    index_at = HEADER.size + file_count * FILE_ENTRY.size
    if index_at + index_bytes + TRAILER.size != len(data):
        raise CorruptDataError(f"{path}: size does not match its header")
    body = memoryview(data)[: index_at + index_bytes]
    if zlib.crc32(body) != TRAILER.unpack_from(data, len(data) - TRAILER.size)[0]:
        raise CorruptDataError(f"{path}: CRC mismatch")
    file_sizes, live_bytes = {}, {}
    for file_id, size, live in FILE_ENTRY.iter_unpack(body[HEADER.size:index_at]):
        file_sizes[file_id] = size
        live_bytes[file_id] = live
    body.release()
    del data[index_at + index_bytes:]
    del data[:index_at]  # leaves exactly the index buffer, without a second copy
    return Snapshot(next_seq, file_sizes, live_bytes, data)


def discard_snapshot(directory):
    """Remove the snapshot (if any) durably."""
    try:
        os.unlink(snapshot_path(directory))
    except FileNotFoundError:
        return
    fsync_directory(directory)
