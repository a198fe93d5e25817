"""Names and byte layouts of the files a shard writes and clients read: run directory, data directory, records."""

import os
import struct

DAEMON_FILE = "ferricd.json"  # in run_dir: {"shards", "protocol", "pid", "data_dir"}, written by the supervisor

#: A data record's header (docs/storage.md): crc32, seq, expire_at_ms, flags, key_len, value_len.
RECORD_HEADER = struct.Struct("<IQQBII")
RECORD_HEADER_BYTES = RECORD_HEADER.size  # 29
FLAG_TOMBSTONE = 0x01
#: More records of the same atomic batch follow this one; recovery keeps a batch only once its last record is read.
FLAG_BATCH_MORE = 0x02
#: The record changes only its key's expire_at_ms (0 = none): no value bytes; the key keeps the value it had.
FLAG_TTL_ONLY = 0x04
RECORD_KEY_LEN_AT = 21  # offset of key_len in the header (value_len follows it)


def socket_path(run_dir, shard_id):
    """Shard K's ROUTER socket: ``ipc://`` + this path."""
    return os.path.join(run_dir, f"shard-{shard_id}.sock")


def stream_path(run_dir, shard_id):
    """Shard K's Unix stream socket (length-prefixed frames, see protocol.STREAM_HEADER)."""
    return os.path.join(run_dir, f"shard-{shard_id}.stream")


def index_path(run_dir, shard_id):
    """Shard K's published key directory."""
    return os.path.join(run_dir, f"shard-{shard_id}.idx")


def shard_dir(data_dir, shard_id):
    """Shard K's Bitcask directory."""
    return os.path.join(data_dir, f"shard-{shard_id}")


def data_file_name(file_id):
    """``NNNNNNNNN.data``: ids zero-padded to 9 digits (more past 999999999), compared as integers."""
    return f"{file_id:09d}.data"
