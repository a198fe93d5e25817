"""Damage helpers for storage tests: cut files short and flip bits, as crashes and bad disks do."""

import os
import random
import re
import struct
import zlib
from typing import NamedTuple


def truncate_file(path, size):
    """Cut ``path`` to ``size`` bytes, as a crash mid-append leaves it."""
    os.truncate(path, size)


def flip_bits(path, offsets, rng=None):
    """Flip one random bit at each byte offset in ``offsets`` of ``path``."""
    rng = rng or random.Random(0)
    with open(path, "r+b") as f:
        for offset in offsets:
            f.seek(offset)
            byte = f.read(1)[0]
            f.seek(offset)
            f.write(bytes([byte ^ (1 << rng.randrange(8))]))


# -- locating and reading a shard directory's files, independently of the engine -------------------

_HEADER = struct.Struct("<IQQBII")  # crc32, seq, expire_at_ms, flags, key_len, value_len (29 bytes)
_TOMBSTONE = 0x01


class RawRecord(NamedTuple):
    """One record as it sits in a data file; ``value`` is None for a tombstone."""

    file_id: int
    offset: int
    length: int
    seq: int
    key: bytes
    value: object
    flags: int = 0


def data_file_paths(directory):
    """``NNNNNNNNN.data`` paths of ``directory``, oldest first (ids compared as integers)."""
    names = [name for name in os.listdir(directory) if re.fullmatch(r"\d{9,}\.data", name)]
    return [os.path.join(directory, name) for name in sorted(names, key=lambda name: int(name[:-5]))]


def hint_file_paths(directory):
    """``NNNNNNNNN.hint`` paths of ``directory``, oldest first."""
    names = [name for name in os.listdir(directory) if re.fullmatch(r"\d{9,}\.hint", name)]
    return [os.path.join(directory, name) for name in sorted(names, key=lambda name: int(name[:-5]))]


def hint_of(data_path):
    return data_path[: -len(".data")] + ".hint"


def remove_file(path):
    """Delete ``path`` if it exists."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def remove_hints_and_snapshot(directory):
    """Delete every hint file and the key directory snapshot, so that the next open scans every data file."""
    for path in hint_file_paths(directory):
        os.unlink(path)
    remove_file(os.path.join(directory, "keydir.snapshot"))


def read_records(path):
    """Every record of an undamaged data file, parsed with this module's own reader (not the engine's)."""
    file_id = int(os.path.basename(path)[:-5])
    with open(path, "rb") as f:
        data = f.read()
    records, pos = [], 0
    while pos < len(data):
        crc, seq, _expire, flags, key_len, value_len = _HEADER.unpack_from(data, pos)
        end = pos + _HEADER.size + key_len + value_len
        assert end <= len(data) and zlib.crc32(data[pos + 4:end]) == crc, f"{path}: bad record at {pos}"
        key = data[pos + _HEADER.size:pos + _HEADER.size + key_len]
        value = None if flags & _TOMBSTONE else data[pos + _HEADER.size + key_len:end]
        records.append(RawRecord(file_id, pos, end - pos, seq, key, value, flags))
        pos = end
    return records


def read_all_records(directory):
    """Every record of every data file of ``directory``, in file order."""
    return [record for path in data_file_paths(directory) for record in read_records(path)]


def append_zeros(path, count):
    """Grow ``path`` by ``count`` zero bytes, as a crash after the file grew but before its data
    reached the disk leaves it."""
    with open(path, "ab") as f:
        f.write(b"\0" * count)


def zero_range(path, offset, length):
    """Overwrite ``length`` bytes at ``offset`` with zeros, keeping the file's size."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\0" * length)
