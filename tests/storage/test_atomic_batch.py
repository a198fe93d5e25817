"""Atomic batches (transactions): one file, FLAG_BATCH_MORE on all but the last record, all or none after a crash."""

import os

import pytest

from ferric_ipc.file_layout import FLAG_BATCH_MORE
from ferricd.storage import Delete, Put
from ferricd.storage.records import RecordScanner, encode
from tests.storage.damage import data_file_paths, read_records, remove_hints_and_snapshot, truncate_file


def test_every_record_but_the_last_is_flagged(open_store, shard_dir):
    store = open_store()
    store.put(b"old", b"1")
    store.write_batch([Put(b"a", b"x"), Delete(b"old"), Put(b"b", b"y")], atomic=True)
    store.close()
    flags = [(record.key, record.flags & FLAG_BATCH_MORE) for record in read_records(data_file_paths(shard_dir)[-1])]
    assert flags == [(b"old", 0), (b"a", FLAG_BATCH_MORE), (b"old", FLAG_BATCH_MORE), (b"b", 0)]


def test_a_plain_batch_carries_no_batch_flag(open_store, shard_dir):
    store = open_store()
    store.write_batch([Put(b"a", b"x"), Put(b"b", b"y")])
    store.close()
    assert all(not record.flags & FLAG_BATCH_MORE for record in read_records(data_file_paths(shard_dir)[-1]))


@pytest.mark.parametrize("cut", ["inside the last record", "between records", "after the first record"])
def test_a_batch_torn_by_a_crash_is_gone_entirely(open_store, shard_dir, cut):
    store = open_store(fsync="never", snapshot_on_close=False)
    store.put(b"before", b"kept")
    store.put(b"a", b"old-a")
    store.write_batch([Put(b"a", b"new-a"), Put(b"b", b"new-b"), Put(b"c", b"new-c")], atomic=True)
    store.close()
    path = data_file_paths(shard_dir)[-1]
    records = read_records(path)
    batch = [r for r in records if r.key in (b"a", b"b", b"c") and r.value.startswith(b"new")]
    end_of = {r.key: r.offset + r.length for r in records}
    cut_at = {
        "inside the last record": end_of[b"c"] - 3,
        "between records": end_of[b"b"],
        "after the first record": batch[0].offset + batch[0].length,
    }[cut]
    truncate_file(path, cut_at)
    remove_hints_and_snapshot(shard_dir)
    store = open_store(fsync="never")
    assert store.get(b"before") == b"kept"
    assert store.get(b"a") == b"old-a", "the batch's first write must go with the rest"
    assert store.get(b"b") is None and store.get(b"c") is None
    assert store.recovery.truncated_bytes == cut_at - batch[0].offset
    assert os.path.getsize(path) == batch[0].offset
    store.put(b"after", b"ok")  # the file goes on from where the torn batch began
    store.close()
    store = open_store()
    assert store.get(b"after") == b"ok" and store.get(b"a") == b"old-a"


def test_a_batch_never_spans_two_files(open_store, shard_dir):
    store = open_store(max_file_bytes=1024)
    store.put(b"filler", b"f" * 800)
    store.write_batch([Put(b"k%d" % i, b"v" * 100) for i in range(3)], atomic=True)
    store.close()
    files = [[r.key for r in read_records(path)] for path in data_file_paths(shard_dir)]
    assert [b"k0", b"k1", b"k2"] in files, files


def test_a_batch_larger_than_a_file_gets_one_file_of_its_own(open_store, shard_dir):
    store = open_store(max_file_bytes=1024)
    store.put(b"filler", b"f" * 100)
    store.write_batch([Put(b"k%d" % i, b"v" * 400) for i in range(4)], atomic=True)
    store.close()
    files = [[r.key for r in read_records(path)] for path in data_file_paths(shard_dir)]
    assert [b"k0", b"k1", b"k2", b"k3"] in files, files
    store = open_store(max_file_bytes=1024)
    assert [store.get(b"k%d" % i) for i in range(4)] == [b"v" * 400] * 4


def test_the_scanner_drops_a_batch_cut_by_damage_and_counts_it():
    plain = encode(1, 0, 0, b"p", b"1")
    first = encode(2, 0, FLAG_BATCH_MORE, b"a", b"2")
    damaged = bytearray(encode(3, 0, FLAG_BATCH_MORE, b"b", b"3"))
    damaged[-1] ^= 0xFF
    after = encode(5, 0, 0, b"q", b"5")
    scanner = RecordScanner(plain + first + bytes(damaged) + after)
    assert [r.key for r in scanner] == [b"p", b"q"]
    assert scanner.corrupt_records == 2  # the damaged record, and the batch it cut short
    assert scanner.valid_end == len(plain + first + damaged + after)
