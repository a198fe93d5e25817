"""Record format: exact byte layout, checked decoding, and the scanner's handling of damage."""

import struct
import zlib

import pytest
from hypothesis import given, settings, strategies as st

from ferricd.storage.errors import CorruptDataError
from ferricd.storage.records import (
    FLAG_TOMBSTONE,
    HEADER_BYTES,
    RecordScanner,
    decode,
    encode,
    key_matches,
    record_key,
    record_seq,
)


def test_layout_is_the_documented_little_endian_header():
    data = encode(7, 1234, 0, b"key", b"value")
    crc, seq, expire, flags, key_len, value_len = struct.unpack_from("<IQQBII", data)
    assert (seq, expire, flags, key_len, value_len) == (7, 1234, 0, 3, 5)
    assert HEADER_BYTES == 29 and len(data) == 29 + 3 + 5
    assert data[29:] == b"keyvalue"
    assert crc == zlib.crc32(data[4:])


@given(
    seq=st.integers(0, 2**64 - 1),
    expire=st.integers(0, 2**64 - 1),
    key=st.binary(max_size=300),
    value=st.binary(max_size=3000),
)
def test_round_trip(seq, expire, key, value):
    data = encode(seq, expire, 0, key, value)
    record = decode(data)
    assert record == (seq, expire, 0, key, value)
    assert not record.is_tombstone
    assert record_seq(data) == seq and record_key(data) == key and key_matches(data, key)


def test_tombstone_is_a_flag_not_a_magic_value():
    # A value that looks like basho's tombstone magic is an ordinary value here.
    assert not decode(encode(1, 0, 0, b"k", b"bitcask_tombstone2")).is_tombstone
    assert decode(encode(2, 0, FLAG_TOMBSTONE, b"k", b"")).is_tombstone


def test_key_matches_compares_length_not_just_prefix():
    data = encode(1, 0, 0, b"abcd", b"v")
    assert not key_matches(data, b"abc")
    assert not key_matches(data, b"abcde")


@pytest.mark.parametrize("position", range(0, 29 + 3 + 5))
def test_any_flipped_byte_is_detected(position):
    data = bytearray(encode(3, 0, 0, b"key", b"value"))
    data[position] ^= 0x40
    with pytest.raises(CorruptDataError):
        decode(data)


def test_scanner_yields_offsets_and_stops_at_a_torn_tail():
    records = [encode(i, 0, 0, b"k%d" % i, b"v" * i) for i in range(1, 6)]
    image = b"".join(records)
    scanner = RecordScanner(image + records[0][:10])
    found = list(scanner)
    assert [r.key for r in found] == [b"k1", b"k2", b"k3", b"k4", b"k5"]
    assert [r.offset for r in found] == [sum(map(len, records[:i])) for i in range(5)]
    assert scanner.valid_end == len(image)
    assert scanner.corrupt_records == 0


def test_scanner_skips_damage_in_the_middle_and_counts_it():
    records = [encode(i, 0, 0, b"k%d" % i, b"v" * 20) for i in range(1, 6)]
    image = bytearray(b"".join(records))
    image[len(records[0]) + 30] ^= 0xFF  # inside the value of k2
    scanner = RecordScanner(bytes(image))
    assert [r.key for r in scanner] == [b"k1", b"k3", b"k4", b"k5"]
    assert scanner.corrupt_records == 1 and scanner.corrupt_bytes == len(records[1])
    assert scanner.valid_end == len(image)


def test_scanner_resyncs_when_a_length_field_is_damaged():
    records = [encode(i, 0, 0, b"k%d" % i, b"v" * 20) for i in range(1, 4)]
    image = bytearray(b"".join(records))
    image[len(records[0]) + 21 + 3] ^= 0x10  # high byte of k2's key_len
    assert [r.key for r in RecordScanner(bytes(image))] == [b"k1", b"k3"]


def test_zero_filled_tail_is_a_torn_tail():
    image = encode(1, 0, 0, b"k", b"v") + bytes(4096)
    scanner = RecordScanner(image)
    assert [r.key for r in scanner] == [b"k"]
    assert scanner.valid_end == HEADER_BYTES + 2 and scanner.corrupt_records == 0


@settings(max_examples=200)
@given(st.binary(max_size=2000))
def test_scanner_never_raises_on_garbage(garbage):
    good = encode(9, 0, 0, b"after", b"garbage")
    found = list(RecordScanner(garbage + good))
    assert found[-1].key == b"after"  # a valid record after garbage is always found again
