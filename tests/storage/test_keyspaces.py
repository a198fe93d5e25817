"""Keyspaces in one store: which keyspace a key is in, what each holds, fsync per write, and hard limits."""


import pytest

from ferricd.storage import BitcaskStore, Delete, Put, StoreSettings
from ferricd.storage.keyspaces import Keyspace, KeyspaceFullError, KeyspaceTable
from ferricd.storage.records import HEADER_BYTES
from tests.storage.test_merge import run_merge


def keyspaces(*extra, default_fsync="never", shard_count=1):
    return KeyspaceTable([Keyspace("default", b"", default_fsync, "none", 0, 0), *extra], shard_count)


SESSIONS = Keyspace("sessions", b"sess:", "always", "none", 0, 0)
CACHE = Keyspace("cache", b"sa:", "never", "none", 0, 0)


@pytest.fixture
def open_keyspace_store(shard_dir, clock):
    opened = []

    def opener(table, directory=shard_dir, **settings):
        # One fake for both clocks: these tests move time, never the wall clock alone.
        store = BitcaskStore(directory, StoreSettings(**settings), clock=clock, keyspaces=table, monotonic_clock=clock)
        opened.append(store)
        return store

    yield opener
    for store in opened:
        store.close()


def record_bytes(key, value):
    return HEADER_BYTES + len(key) + len(value)


# -- the table ------------------------------------------------------------------------------------


def test_a_key_belongs_to_the_keyspace_whose_prefix_it_starts_with():
    table = keyspaces(SESSIONS, CACHE)
    assert [table.names[table.of(key)] for key in (b"sess:1", b"sa:{x}y", b"sess", b"other", b"")] == [
        "sessions", "cache", "default", "default", "default"]


@pytest.mark.parametrize("first, second", [(b"sess:", b"sess:admin:"), (b"a", b"a"), (b"ab", b"a")])
def test_overlapping_prefixes_are_refused(first, second):
    with pytest.raises(ValueError, match="keyspaces.one.prefix .* overlaps keyspaces.two.prefix"):
        keyspaces(Keyspace("one", first, "never", "none", 0, 0), Keyspace("two", second, "never", "none", 0, 0))


@pytest.mark.parametrize("fields, message", [
    ({"prefix": b""}, "prefix is missing or empty"),
    ({"fsync": "sometimes"}, "fsync must be one of"),
    ({"eviction": "lfu"}, "eviction must be one of"),
    ({"max_bytes": -1}, "max_bytes must be 0"),
    ({"default_ttl_ms": 1.5}, "default_ttl_ms must be 0"),
    ({"eviction": "lru"}, 'max_bytes is missing: eviction = "lru"'),
])
def test_a_bad_policy_names_its_option(fields, message):
    policy = {"name": "cache", "prefix": b"sa:", "fsync": "never", "eviction": "none", "max_bytes": 0,
              "default_ttl_ms": 0, **fields}
    with pytest.raises(ValueError, match=message):
        Keyspace(**policy)


def test_the_default_keyspace_has_no_prefix_and_must_exist():
    with pytest.raises(ValueError, match="prefix cannot be set"):
        Keyspace("default", b"x:", "never", "none", 0, 0)
    with pytest.raises(ValueError, match="keyspaces.default is missing"):
        KeyspaceTable([SESSIONS])


def test_max_bytes_is_shared_out_over_the_shards():
    table = keyspaces(Keyspace("cache", b"sa:", "never", "lru", 10_000, 0), shard_count=3)
    assert table.shard_max_bytes[table.names.index("cache")] == 3334


# -- what each keyspace holds -------------------------------------------------------------------


def held(store):
    return {name: (row["keys"], row["bytes"]) for name, row in store.stats()["keyspaces"].items()}


def test_keys_and_bytes_follow_every_change_and_survive_a_reopen(open_keyspace_store, shard_dir, clock):
    table = keyspaces(SESSIONS, CACHE)
    store = open_keyspace_store(table)
    store.put("sess:1", b"a" * 10)
    store.put("sess:1", b"a" * 30)  # an overwrite changes the bytes, not the keys
    store.put("sess:2", b"b", expire_at_ms=clock() + 10)
    store.write_batch([Put("sa:1", b"c" * 100), Put("sa:2", b"d"), Put("plain", b"e"), Delete("sa:2")])
    store.set_expiry("sa:1", clock() + 1000)  # a TTL change keeps the entry's record: same bytes
    expected = {
        "default": (1, record_bytes(b"plain", b"e")),
        "sessions": (2, record_bytes(b"sess:1", b"a" * 30) + record_bytes(b"sess:2", b"b")),
        "cache": (1, record_bytes(b"sa:1", b"c" * 100)),
    }
    assert held(store) == expected
    clock.advance(10)
    store.sweep_expired(1.0)  # the active sweep drops sess:2
    expected["sessions"] = (1, record_bytes(b"sess:1", b"a" * 30))
    assert held(store) == expected
    run_merge(store)  # records move to new files: nothing changes
    assert held(store) == expected
    store.close()
    assert held(open_keyspace_store(table)) == expected  # counted again from the recovered key directory


def test_a_key_shorter_than_a_prefix_is_not_taken_for_it_when_counted_again(open_keyspace_store):
    table = keyspaces(SESSIONS, CACHE)
    store = open_keyspace_store(table)
    store.write_batch([Put("sa", b":looks like a cache key"), Put("s", b"ess:x"), Put("sa:real", b"v")])
    before = held(store)
    assert before["default"][0] == 2 and before["cache"][0] == 1
    store.close()
    assert held(open_keyspace_store(table)) == before


def test_every_write_is_synced_as_its_keyspace_asks(open_keyspace_store, fdatasync_calls):
    store = open_keyspace_store(keyspaces(SESSIONS, CACHE))
    store.put("sa:1", b"v")
    store.put("plain", b"v")
    assert fdatasync_calls == []
    store.put("sess:1", b"v")
    assert len(fdatasync_calls) == 1
    store.write_batch([Put("sa:2", b"v"), Put("sess:2", b"v")])  # mixed: the strictest wins
    assert len(fdatasync_calls) == 2
    store.delete("sa:1")
    assert store.write_batch([Delete("sess:missing"), Delete("sa:missing")]) == [False, False]  # nothing to write
    assert len(fdatasync_calls) == 2
    store.delete("sess:1")  # deletes and TTL changes follow their key's keyspace too
    store.set_expiry("sess:2", 0)
    assert len(fdatasync_calls) == 4


def test_a_group_commit_syncs_once_if_any_write_in_it_asks(open_keyspace_store, fdatasync_calls):
    store = open_keyspace_store(keyspaces(SESSIONS, CACHE))
    with store.group_commit():
        for i in range(20):
            store.put(f"sa:{i}", b"v")
    assert fdatasync_calls == []
    with store.group_commit():
        store.put("sa:x", b"v")
        store.put("sess:x", b"v")
        store.put("sa:y", b"v")
        assert fdatasync_calls == []
    assert len(fdatasync_calls) == 1


def test_interval_writes_are_synced_by_the_tick_and_never_writes_are_not(open_keyspace_store, clock, fdatasync_calls):
    store = open_keyspace_store(keyspaces(CACHE, default_fsync="interval"), fsync_interval_ms=1000)
    store.put("sa:1", b"v")
    clock.advance(1000)
    store.sync_if_due()
    assert fdatasync_calls == []  # only "never" writes were pending
    store.put("plain", b"v")  # an interval write, a whole interval after the last sync: synced at once
    assert len(fdatasync_calls) == 1
    store.put("plain", b"w")
    clock.advance(999)
    store.sync_if_due()
    assert len(fdatasync_calls) == 1
    clock.advance(1)
    store.sync_if_due()
    assert len(fdatasync_calls) == 2



# -- a keyspace that never evicts, with a bound -----------------------------------------------------


def test_a_full_keyspace_that_never_evicts_refuses_writes_and_keeps_everything(open_keyspace_store):
    bound = 10 * record_bytes(b"sess:0", b"v" * 100) + 10
    store = open_keyspace_store(keyspaces(Keyspace("sessions", b"sess:", "always", "none", bound, 0)))
    for i in range(10):
        store.put(f"sess:{i}", b"v" * 100)
    with pytest.raises(KeyspaceFullError, match=r"'sessions' is full: .* raise \[keyspaces.sessions\] max_bytes"):
        store.put("sess:10", b"v" * 100)
    with pytest.raises(KeyspaceFullError):
        store.write_batch([Put("other", b"x"), Put("sess:11", b"v")], atomic=True)
    assert store.get("other") is None  # nothing of a refused batch was written
    store.put("sess:3", b"v" * 50)  # an overwrite that shrinks is fine
    with pytest.raises(KeyspaceFullError):
        store.put("sess:3", b"v" * 200)
    store.put("sess:4", b"v" * 150)  # ... and one that grows into the room left
    store.delete("sess:0")
    store.put("sess:10", b"v" * 100)
    store.put("elsewhere", b"x" * 10_000)  # other keyspaces are not limited
    assert all(store.get(f"sess:{i}") is not None for i in range(1, 11))
    assert store.stats()["keyspaces"]["sessions"]["evictions"] == 0
