"""Names and byte layouts of the files a shard writes and clients read: run directory, data directory, records."""

import os
import struct

#: The run directory client and daemon use when told none (the client looks at $FERRIC_RUN_DIR first).
DEFAULT_RUN_DIR = "./ferric-run"
DAEMON_FILE = "ferricd.json"  # in run_dir: {"shards", "protocol", "pid", "data_dir"}, written by the supervisor

#: A data record: this header, then ``key_len`` key bytes, then ``value_len`` value bytes.
#: Little-endian, no padding (docs/storage.md)::
#:
#:     offset  size  field
#:     0       4     crc32         zlib.crc32 of every byte after this field
#:     4       8     seq           per-shard write counter: the higher seq wins (never the clock)
#:     12      8     expire_at_ms  absolute wall-clock ms, 0 = never
#:     20      1     flags         FLAG_TOMBSTONE, FLAG_BATCH_MORE, FLAG_TTL_ONLY
#:     21      4     key_len
#:     25      4     value_len
RECORD_HEADER = struct.Struct("<IQQBII")
RECORD_HEADER_BYTES = RECORD_HEADER.size  # 29
#: The crc32 field, and the rest of the header after it, which is where the CRC starts.
RECORD_CRC = struct.Struct(RECORD_HEADER.format[:2])
RECORD_CHECKED = struct.Struct("<" + RECORD_HEADER.format[2:])
# Where each header field starts, from the format above: 0, 4, 12, 20, 21, 25.
_, RECORD_SEQ_AT, RECORD_EXPIRE_AT, RECORD_FLAGS_AT, RECORD_KEY_LEN_AT, RECORD_VALUE_LEN_AT = (
    struct.calcsize(RECORD_HEADER.format[:end]) for end in range(1, 7)
)
FLAG_TOMBSTONE = 0x01
#: More records of the same atomic batch follow this one; recovery keeps a batch only once its last record is read.
FLAG_BATCH_MORE = 0x02
#: The record changes only its key's expire_at_ms (0 = none): no value bytes; the key keeps the value it had.
FLAG_TTL_ONLY = 0x04

#: A shard's access times (docs/storage.md, "Eviction"): this 64-byte header, then ``buckets`` bytes (a power
#: of two), each the clock's value when a key hashing to it was last used. A reader that finds key K copies
#: the byte at ACCESS_CLOCK_AT into byte ``key_hash64(K) & (buckets - 1)`` (only if it differs); the shard
#: advances the clock. state is index_layout's STATE_LIVE, or STATE_RETIRED once the file was replaced.
#:
#:     offset  size  field
#:     0       8     magic    ACCESS_MAGIC
#:     8       4     version  ACCESS_VERSION
#:     12      4     state
#:     16      8     buckets
#:     24      1     clock    wraps around at 256
ACCESS_HEADER = struct.Struct("<8sIIQB39x")
ACCESS_HEADER_BYTES = ACCESS_HEADER.size  # 64
ACCESS_MAGIC = b"FERACC01"
ACCESS_VERSION = 1
ACCESS_STATE_AT = 12
ACCESS_CLOCK_AT = 24


def socket_path(run_dir: str, shard_id: int) -> str:
    """Shard K's ROUTER socket: ``ipc://`` + this path."""
    return os.path.join(run_dir, f"shard-{shard_id}.sock")


def stream_path(run_dir: str, shard_id: int) -> str:
    """Shard K's Unix stream socket (length-prefixed frames, see protocol.STREAM_HEADER)."""
    return os.path.join(run_dir, f"shard-{shard_id}.stream")


def index_path(run_dir: str, shard_id: int) -> str:
    """Shard K's published key directory."""
    return os.path.join(run_dir, f"shard-{shard_id}.idx")


def access_path(run_dir: str, shard_id: int) -> str:
    """Shard K's access times (ACCESS_HEADER), mapped writable by clients; only while a keyspace evicts."""
    return os.path.join(run_dir, f"shard-{shard_id}.access")


def shard_dir(data_dir: str, shard_id: int) -> str:
    """Shard K's Bitcask directory."""
    return os.path.join(data_dir, f"shard-{shard_id}")


def data_file_name(file_id: int) -> str:
    """``NNNNNNNNN.data``: ids zero-padded to 9 digits (more past 999999999), compared as integers."""
    return f"{file_id:09d}.data"
