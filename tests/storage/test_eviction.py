"""Eviction in one store: an lru keyspace stays within its bound and keeps what was used lately."""

import mmap

import pytest

from ferric_ipc.file_layout import ACCESS_CLOCK_AT, ACCESS_HEADER, ACCESS_HEADER_BYTES, ACCESS_MAGIC
from ferric_ipc.index_layout import STATE_LIVE, STATE_RETIRED
from ferric_ipc.keys import key_hash64
from ferricd.storage import BitcaskStore, StoreSettings
from ferricd.storage.access_clock import MIN_BUCKETS, AccessClock
from ferricd.storage.keyspaces import Keyspace, KeyspaceTable
from ferricd.storage.records import HEADER_BYTES

BOUND = 256 * 1024
VALUE = b"x" * 1000
RECORD = HEADER_BYTES + len(b"sa:00000") + len(VALUE)


def table(bound=BOUND):
    return KeyspaceTable([
        Keyspace("default", b"", "never", "none", 0, 0),
        Keyspace("sessions", b"sess:", "never", "none", 0, 0),
        Keyspace("cache", b"sa:", "never", "lru", bound, 0),
    ])


@pytest.fixture
def open_cache_store(shard_dir, clock):
    opened = []

    def opener(keyspaces=None, access_path=None, **settings):
        store = BitcaskStore(shard_dir, StoreSettings(fsync="never", **settings), clock=clock,
                             keyspaces=keyspaces or table(), access_path=access_path)
        opened.append(store)
        return store

    yield opener
    for store in opened:
        store.close()


def cache(store):
    return store.stats()["keyspaces"]["cache"]


def test_a_write_flood_stays_within_the_bound_and_keeps_the_newest_writes(open_cache_store):
    store = open_cache_store()
    for i in range(50):
        store.put(f"sess:{i}", b"s" * 500)
    peak = 0
    count = 10 * BOUND // RECORD  # ten times what fits
    for i in range(count):
        store.put(f"sa:{i:05d}", VALUE)
        peak = max(peak, cache(store)["bytes"])
    held = cache(store)
    assert peak <= BOUND + RECORD  # over by at most the write that is being made room for
    assert held["bytes"] >= 0.75 * BOUND
    assert held["evictions"] == count - held["keys"]
    newest = held["keys"] // 5  # the last 7/32 to 8/32 of the bound written are never evicted (eviction.RECENT_TICKS)
    assert all(store.get(f"sa:{i:05d}") == VALUE for i in range(count - newest, count))
    assert all(store.get(f"sess:{i}") == b"s" * 500 for i in range(50))  # the keyspace beside it loses nothing
    assert store.stats()["keyspaces"]["sessions"]["evictions"] == 0


def test_keys_read_lately_outlive_keys_nobody_read(open_cache_store):
    store = open_cache_store()
    fits = BOUND // RECORD
    for i in range(fits // 2):
        store.put(f"sa:{i:05d}", VALUE)
    hot = [f"sa:{i:05d}" for i in range(0, fits // 2, 4)]
    for i in range(fits // 2, 4 * fits):
        store.put(f"sa:{i:05d}", VALUE)
        if i % 8 == 0:
            for key in hot:
                assert store.get(key) == VALUE  # a read marks the key: the hand passes it by
    cold = [f"sa:{i:05d}" for i in range(fits // 2) if i % 4]
    assert sum(store.get(key) is not None for key in cold) == 0
    assert cache(store)["bytes"] <= BOUND


def test_marks_made_through_another_mapping_of_the_access_file_count(open_cache_store, tmp_path):
    path = str(tmp_path / "shard-0.access")
    store = open_cache_store(access_path=path)
    fits = BOUND // RECORD
    for i in range(fits // 2):
        store.put(f"sa:{i:05d}", VALUE)
    hot = [f"sa:{i:05d}".encode() for i in range(0, fits // 2, 4)]
    with open(path, "r+b") as f:  # what a client's local read does (ferric_ipc.local_reads)
        mapped = mmap.mmap(f.fileno(), 0)
    magic, _version, state, buckets, _clock = ACCESS_HEADER.unpack_from(mapped)
    assert (magic, state) == (ACCESS_MAGIC, STATE_LIVE)
    for i in range(fits // 2, 4 * fits):
        store.put(f"sa:{i:05d}", VALUE)
        if i % 8 == 0:
            for key in hot:
                mapped[ACCESS_HEADER_BYTES + (key_hash64(key) & (buckets - 1))] = mapped[ACCESS_CLOCK_AT]
    assert all(store.get(key) == VALUE for key in hot)
    mapped.close()


def test_evicted_keys_stay_gone_after_a_reopen(open_cache_store):
    store = open_cache_store(snapshot_on_close=False)  # the next open reads the data files: tombstones hide keys
    count = 3 * BOUND // RECORD
    for i in range(count):
        store.put(f"sa:{i:05d}", VALUE)
    present = {i for i in range(count) if store.get(f"sa:{i:05d}") is not None}
    before = cache(store)
    store.close()
    store = open_cache_store()
    assert {i for i in range(count) if store.get(f"sa:{i:05d}") is not None} == present
    after = cache(store)
    assert (after["keys"], after["bytes"]) == (before["keys"], before["bytes"])


def test_a_smaller_bound_at_the_next_start_is_reached_by_the_next_writes(open_cache_store):
    store = open_cache_store()
    for i in range(BOUND // RECORD):
        store.put(f"sa:{i:05d}", VALUE)
    store.close()
    store = open_cache_store(keyspaces=table(BOUND // 4))
    assert cache(store)["bytes"] > BOUND // 4
    store.put("sa:new", VALUE)
    while cache(store)["bytes"] > BOUND // 4:
        assert store.evict_over_limit() > 0  # the shard's tick calls this too
    assert store.get("sa:new") == VALUE


def test_expired_keys_met_by_the_hand_are_dropped_not_evicted(open_cache_store, clock):
    store = open_cache_store()
    for i in range(BOUND // RECORD):
        store.put(f"sa:{i:05d}", VALUE, expire_at_ms=clock() + 10)
    clock.advance(10)
    store.put("sa:fresh", VALUE * 4)
    store.evict_over_limit()
    assert store.get("sa:fresh") is not None
    assert store.stats()["expired"] > 0


def test_the_access_file_grows_with_the_table_and_keeps_its_times(tmp_path):
    path = str(tmp_path / "shard-0.access")
    (tmp_path / "shard-0.access.999.new").write_bytes(b"left by a killed run")
    clock = AccessClock(16, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-0.access"]
    assert clock.buckets == MIN_BUCKETS
    for _ in range(3):
        clock.tick()
    clock.touch(12345)
    with open(path, "rb") as f:
        old = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    assert old[ACCESS_CLOCK_AT] == 3  # what readers copy
    clock.tick()
    clock.fit(10 * MIN_BUCKETS)  # a table of that many slots wants 4 buckets per slot
    assert clock.buckets == 64 * MIN_BUCKETS
    assert ACCESS_HEADER.unpack_from(old)[2] == STATE_RETIRED  # readers of the old file map the new one
    assert clock.age(12345) == 1
    assert clock.age(12345 + MIN_BUCKETS) == 1  # was the same bucket before: keeps its time
    assert clock.age(12346) == 4
    for _ in range(300):
        clock.tick()
    assert clock.age(12345) == (301 % 256)  # wraps: the eviction hand pins old keys at OLD_AGE
    clock.close()
    old.close()
