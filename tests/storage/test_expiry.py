"""Expiry: TTL-only records, the active sweep, and expired keys leaving the disk through a merge."""

import os

import pytest

from ferricd.storage import BitcaskStore, StoreSettings
from ferricd.storage.datafiles import hint_path, list_data_file_ids
from ferricd.storage.hints import read_hint
from ferricd.storage.records import FLAG_TTL_ONLY, HEADER_BYTES
from tests.storage.test_merge import run_merge


def reopen(directory, clock, **settings):
    return BitcaskStore(directory, StoreSettings(**settings), clock=clock)


# -- TTL-only records ---------------------------------------------------------------------------------


def test_set_expiry_writes_the_header_and_key_only(open_store, clock):
    store = open_store()
    store.put("session:1", b"s" * 4096, clock() + 1000)
    before = store.stats()["data_bytes"]
    assert store.set_expiry("session:1", clock() + 60_000) is True
    assert store.stats()["data_bytes"] - before == HEADER_BYTES + len(b"session:1")
    assert store.get_with_expiry("session:1") == (b"s" * 4096, clock() + 60_000)
    assert store.set_expiry("session:1", 0) is True  # persist
    assert store.get_with_expiry("session:1") == (b"s" * 4096, 0)


def test_five_thousand_refreshes_of_a_4_kib_value_add_kilobytes_not_megabytes(open_store, clock):
    store = open_store()
    store.put("sess:abc", b"v" * 4096, clock() + 1000)
    before = store.stats()["data_bytes"]
    for _ in range(5000):
        clock.advance(1)
        store.set_expiry("sess:abc", clock() + 1000)
    assert store.stats()["data_bytes"] - before == 5000 * (HEADER_BYTES + len(b"sess:abc"))  # 180 KB, not 20 MiB


def test_set_expiry_of_a_missing_or_expired_key_writes_nothing(open_store, clock):
    store = open_store()
    store.put("gone", b"1", clock() + 5)
    clock.advance(10)
    before = store.stats()["data_bytes"]
    assert store.set_expiry("gone", clock() + 100) is False
    assert store.set_expiry("never", clock() + 100) is False
    assert store.stats()["data_bytes"] == before
    assert store.get("gone") is None


def test_an_expiry_in_the_past_removes_the_key(open_store, clock):
    store = open_store()
    store.put("k", b"1")
    assert store.set_expiry("k", clock() - 1) is True
    assert store.get("k") is None and len(store) == 0


@pytest.mark.parametrize("source", ["snapshot", "hints", "scan"])
def test_ttl_changes_survive_a_restart(open_store, shard_dir, clock, source):
    store = open_store(max_file_bytes=1024, snapshot_on_close=source == "snapshot")
    store.put("refreshed", b"a" * 300, clock() + 100)
    store.put("persisted", b"b" * 300, clock() + 100)
    store.put("shortened", b"c" * 300)
    for _ in range(10):
        store.set_expiry("refreshed", clock() + 50_000)
    store.set_expiry("persisted", 0)
    store.set_expiry("shortened", clock() + 500)
    store.close()
    if source == "scan":
        for file_id in list_data_file_ids(shard_dir):
            os.unlink(hint_path(shard_dir, file_id))
    clock.advance(200)
    store = open_store()
    assert store.recovery.from_snapshot == (source == "snapshot")
    assert store.recovery.files_scanned == (len(list_data_file_ids(shard_dir)) if source == "scan" else 0)
    assert store.get_with_expiry("refreshed") == (b"a" * 300, clock() - 200 + 50_000)
    assert store.get_with_expiry("persisted") == (b"b" * 300, 0)
    assert store.get_with_expiry("shortened") == (b"c" * 300, clock() - 200 + 500)


def test_an_expiry_that_passed_before_a_restart_hides_every_older_value(open_store, shard_dir, clock):
    store = open_store(max_file_bytes=1024, snapshot_on_close=False)
    store.put("k", b"1" * 400)
    store.put("k", b"2" * 400)  # another file
    store.set_expiry("k", clock() + 10)
    store.close()
    clock.advance(20)
    assert open_store().get("k") is None


def test_a_ttl_record_older_than_the_value_does_not_apply(open_store, shard_dir, clock):
    store = open_store(max_file_bytes=1024, snapshot_on_close=False)
    store.put("k", b"1" * 400, clock() + 1000)
    store.set_expiry("k", clock() + 10)
    store.put("k", b"2" * 400)  # a new value with no expiry
    store.close()
    clock.advance(20)
    assert open_store().get_with_expiry("k") == (b"2" * 400, 0)


def test_hint_entries_mark_ttl_only_records(open_store, shard_dir, clock):
    store = open_store()
    store.put("k", b"value")
    store.set_expiry("k", clock() + 99)
    store.close()
    file_id = list_data_file_ids(shard_dir)[0]
    hint = read_hint(hint_path(shard_dir, file_id), os.path.getsize(os.path.join(shard_dir, f"{file_id:09d}.data")))
    entries = list(hint.entries())
    assert [entry[5] for entry in entries] == [0, FLAG_TTL_ONLY]
    assert entries[1][2] == clock() + 99 and entries[1][4] == HEADER_BYTES + 1


# -- the active sweep ---------------------------------------------------------------------------------


def test_the_sweep_drops_expired_keys_nobody_reads(open_store, clock):
    store = open_store(expiry_sweep_slots=256)
    for i in range(1000):
        store.put(f"k{i}", b"x" * 50, clock() + 10 if i % 2 else 0)
    live_before = store.stats()["live_bytes"]
    clock.advance(11)
    gets = store.stats()["gets"]
    dropped = 0
    for _ in range(store.table_capacity // 256 + 1):
        dropped += store.sweep_expired(1.0)
    stats = store.stats()
    assert dropped == 500 and stats["keys"] == 500 and stats["expired"] == 500
    assert stats["gets"] == gets  # nothing was read
    assert stats["live_bytes"] == live_before // 2
    run_merge(store)
    assert store.stats()["data_bytes"] == store.stats()["live_bytes"] == live_before // 2


def test_a_sweep_slice_looks_at_a_few_slots_unless_many_have_expired(open_store, clock):
    store = open_store(expiry_sweep_slots=64)
    for i in range(2000):
        store.put(f"k{i}", b"x", clock() + 1000 + i)
    assert store.sweep_expired(1.0) == 0
    assert store._sweep.cursor == 64  # one slice: nothing expired, nothing more to do
    clock.advance(5000)  # everything expired: slices follow each other within the budget
    assert store.sweep_expired(1.0) > 64 * 4


def test_the_sweep_keeps_keys_that_have_not_expired(open_store, clock):
    store = open_store(expiry_sweep_slots=16)
    store.put("forever", b"1")
    store.put("later", b"2", clock() + 10_000)
    for _ in range(20):
        store.sweep_expired(1.0)
    assert store.get("forever") == b"1" and store.get("later") == b"2"
