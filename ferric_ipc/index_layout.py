"""Byte layout of a shard's key directory (the index a shard owns and clients may map read-only).

The table is a header followed by ``capacity`` fixed-size slots, open
addressing with linear probing from ``key_hash % capacity``. Keys are not
stored: a slot points at the record, and the reader checks the key bytes there.

Header, 64 bytes, little-endian::

    offset  size  field
    0       8     magic        b"FERIDX01"
    8       4     version      INDEX_VERSION
    12      4     state        STATE_LIVE, or STATE_RETIRED once a newer table replaced it
    16      8     epoch        changes on every shard start
    24      8     capacity     number of slots
    32      8     count        live entries
    40      8     deleted      slots holding the DELETED marker
    48      8     files_generation  bumped after data files were deleted (a merge): readers then drop
                                    their maps of data files, which frees the deleted files' space
    56      8     reserved     zero

Slot, 32 bytes (four aligned 64-bit words)::

    offset  size  field
    0       4     seq          seqlock counter: odd while the writer is changing the slot
    4       4     file_id      data file holding the record
    8       8     key_hash     EMPTY (0), DELETED (1) or key_hash64(key) >= 2
    16      4     offset       where the record starts in the data file
    20      4     record_len   header + key + value bytes
    24      8     expire_at_ms absolute wall-clock milliseconds, 0 = never
"""

import struct

INDEX_MAGIC = b"FERIDX01"
INDEX_VERSION = 1
STATE_LIVE = 0
STATE_RETIRED = 1

HEADER = struct.Struct("<8sIIQQQQ16x")  # magic, version, state, epoch, capacity, count, deleted
HEADER_BYTES = HEADER.size  # 64
STATE_AT = 12  # offset of the state field: RETIRED is written here alone
CAPACITY_AT = 24
COUNTS = struct.Struct("<QQ")  # count, deleted: the header fields a live table updates
COUNTS_AT = 32
FILES_GENERATION_WORD = 6  # the header's 64-bit word holding files_generation (byte 48)
HEADER_WORDS = HEADER_BYTES // 8

SLOT_BYTES = 32
SLOT_WORDS = SLOT_BYTES // 8
SLOT = struct.Struct("<IIQIIQ")  # seq, file_id, key_hash, offset, record_len, expire_at_ms
# Where each slot field starts, from the format above: 0, 4, 8, 16, 20, 24.
SLOT_SEQ_AT, SLOT_FILE_ID_AT, SLOT_HASH_AT, SLOT_OFFSET_AT, SLOT_RECORD_LEN_AT, SLOT_EXPIRE_AT = (
    struct.calcsize(SLOT.format[:end]) for end in range(1, 7)
)
SLOT_SEQ = struct.Struct(SLOT.format[:2])
HASH_WORD = SLOT_HASH_AT // 8  # key_hash is word 1 of a slot

EMPTY = 0
DELETED = 1
RESERVED_HASHES = 2  # key hashes below this are moved above it (keys.key_hash64)

# A writer holds a slot odd for a few microseconds; a reader that sees it odd this many
# times in a row falls back to asking the shard.
SEQ_SPINS = 100

# Linear probing stays short below this load; above it the table grows.
MAX_LOAD = 0.75
# A rebuilt table starts at this load (growth by 0.75 / 0.55 = 1.36x), so a table is 55-75 %
# full: 43-58 bytes per key, under 64 even right after it grew.
TARGET_LOAD = 0.55
MIN_CAPACITY = 64

assert HEADER_BYTES == 64 and SLOT.size == SLOT_BYTES and SLOT_HASH_AT % 8 == 0


def table_bytes(capacity: int) -> int:
    """Bytes needed for a table of ``capacity`` slots, header included."""
    return HEADER_BYTES + capacity * SLOT_BYTES
