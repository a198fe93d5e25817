"""BitcaskStore behaviour: reads and writes, expiry, rotation, batches, fsync policies, limits, locking."""

import os
import subprocess
import sys

import pytest

import ferricd.storage.engine
import ferricd.storage.recovery
from ferric_ipc.errors import LimitError, StorageError
from ferricd.storage import BitcaskStore, Delete, Put, StoreSettings
from ferricd.storage.datafiles import list_data_file_ids
from ferricd.storage.errors import DirectoryLockedError
from ferricd.storage.snapshot import SNAPSHOT_NAME
from tests.fake_clock import FakeClock


def data_sizes(directory):
    return {i: os.path.getsize(os.path.join(directory, f"{i:09d}.data")) for i in list_data_file_ids(directory)}


def remove(directory, suffix):
    for name in os.listdir(directory):
        if name.endswith(suffix):
            os.unlink(os.path.join(directory, name))


# -- basic operations -----------------------------------------------------------


def test_put_get_overwrite_delete(open_store):
    store = open_store()
    assert store.get("missing") is None
    store.put("k", b"one")
    store.put(b"k", "two")  # str and bytes name the same key; str values are UTF-8
    assert store.get("k") == b"two"
    store.put(b"\x00\xff binary", b"")
    assert store.get(b"\x00\xff binary") == b""  # empty value is a value, not a miss
    assert store.delete("k") is True
    assert store.delete("k") is False
    assert store.get("k") is None
    assert sorted(store.keys()) == [b"\x00\xff binary"]
    assert len(store) == 1


def test_delete_of_a_missing_key_writes_nothing(open_store, shard_dir):
    store = open_store()
    store.put("a", b"1")
    before = store.stats()["data_bytes"]
    assert store.delete("never-there") is False
    assert store.stats()["data_bytes"] == before


def test_live_and_dead_bytes(open_store):
    store = open_store()
    store.put("a", b"x" * 100)
    first = store.stats()
    assert first["live_bytes"] == first["data_bytes"] and first["dead_bytes"] == 0
    store.put("a", b"y" * 100)
    second = store.stats()
    assert second["dead_bytes"] == first["data_bytes"] and second["keys"] == 1
    store.delete("a")
    assert store.stats()["live_bytes"] == 0


def test_reopen_from_snapshot_hints_and_scan_gives_the_same_state(open_store, shard_dir, clock):
    store = open_store(max_file_bytes=2048)
    expected = {}
    for i in range(300):
        store.put(f"k{i % 120}", f"v{i}")
        expected[f"k{i % 120}".encode()] = f"v{i}".encode()
    for i in range(0, 120, 7):
        store.delete(f"k{i}")
        del expected[f"k{i}".encode()]
    store.close()
    for removed, source in [((), "from_snapshot"), ((SNAPSHOT_NAME,), "hint_files_used"),
                            ((SNAPSHOT_NAME, ".hint"), "files_scanned")]:
        for suffix in removed:
            remove(shard_dir, suffix)
        store = BitcaskStore(shard_dir, clock=clock)
        assert getattr(store.recovery, source), store.recovery
        assert {k: store.get(k) for k in store.keys()} == expected
        assert store.recovery.keys == len(expected)
        store.close()


def test_snapshot_is_consumed_on_open(open_store, shard_dir):
    store = open_store()
    store.put("k", b"v")
    store.close()
    assert os.path.exists(os.path.join(shard_dir, SNAPSHOT_NAME))
    store = open_store()
    assert store.recovery.from_snapshot
    # Gone before the first write: a crash now must not load it as current.
    assert not os.path.exists(os.path.join(shard_dir, SNAPSHOT_NAME))


# -- expiry ---------------------------------------------------------------------


def test_expired_key_reads_as_missing(open_store, clock):
    store = open_store()
    store.put("k", b"v", expire_at_ms=clock() + 1000)
    assert store.get_with_expiry("k") == (b"v", clock() + 1000)
    clock.advance(999)
    assert store.get("k") == b"v"
    clock.advance(1)
    assert store.get("k") is None
    assert "k" not in store and store.delete("k") is False
    assert store.counters["expired"] == 1


@pytest.mark.parametrize("source", ["snapshot", "hints", "scan"])
def test_expired_newer_value_hides_older_one_after_reopen(open_store, shard_dir, clock, source):
    store = open_store(max_file_bytes=1024)
    store.put("k", b"old-never-expires")
    store.put("filler", b"x" * 1100)  # pushes the next write into another file
    store.put("k", b"new", expire_at_ms=clock() + 10)
    clock.advance(10)
    store.close()
    if source != "snapshot":
        remove(shard_dir, SNAPSHOT_NAME)
    if source == "scan":
        remove(shard_dir, ".hint")
    store = open_store()
    assert store.get("k") is None


def test_expiry_survives_reopen_and_keys_skips_expired(open_store, clock):
    store = open_store()
    store.put("short", b"1", expire_at_ms=clock() + 50)
    store.put("long", b"2", expire_at_ms=clock() + 5000)
    store.close()
    store = open_store()
    clock.advance(100)
    assert store.get("short") is None
    assert list(store.keys()) == [b"long"]


# -- rotation and file ids ------------------------------------------------------


def test_rotation_closes_files_for_good(open_store, shard_dir):
    store = open_store(max_file_bytes=1024)
    for i in range(40):
        store.put(f"key{i}", b"v" * 100)
    sizes = data_sizes(shard_dir)
    assert len(sizes) > 3
    closed = dict(list(sizes.items())[:-1])
    assert all(size <= 1024 for size in closed.values())
    for i in range(40):
        store.put(f"more{i}", b"v" * 100)
    assert {i: data_sizes(shard_dir)[i] for i in closed} == closed  # never appended again
    store.close()
    store = open_store(max_file_bytes=1024)
    store.put("after-reopen", b"v")
    newest = list_data_file_ids(shard_dir)[-1]
    assert newest > max(closed) and data_sizes(shard_dir)[newest] > 0
    assert all(store.get(f"key{i}") == b"v" * 100 for i in range(40))


def test_a_record_larger_than_a_file_gets_a_file_of_its_own(open_store, shard_dir):
    store = open_store(max_file_bytes=1024)
    store.put("small", b"s")
    store.put("big", b"B" * 5000)
    store.put("small2", b"s")
    assert store.get("big") == b"B" * 5000
    assert len(data_sizes(shard_dir)) == 3


def test_file_ids_compare_as_integers(tmp_path):
    for name in ["999999999.data", "1000000000.data", "000000002.data", "notes.data", "000000003.hint"]:
        (tmp_path / name).write_bytes(b"")
    assert list_data_file_ids(str(tmp_path)) == [2, 999999999, 1000000000]


def test_ids_past_nine_digits_keep_their_order_across_reopen(shard_dir, clock):
    os.makedirs(shard_dir)
    from ferricd.storage.records import encode

    # Files 999999999 and 1000000000 hold two versions of a key; the newer must win.
    with open(os.path.join(shard_dir, "999999999.data"), "wb") as f:
        f.write(encode(1, 0, 0, b"k", b"older"))
    with open(os.path.join(shard_dir, "1000000000.data"), "wb") as f:
        f.write(encode(2, 0, 0, b"k", b"newer"))
    with BitcaskStore(shard_dir, clock=clock) as store:
        assert store.get("k") == b"newer"
        store.put("k2", b"v")
    assert list_data_file_ids(shard_dir)[-1] == 1000000001


# -- batches and fsync policies ---------------------------------------------------


def test_batch_results_follow_the_ops_in_order(open_store):
    store = open_store()
    store.put("a", b"1")
    results = store.write_batch([Delete("a"), Delete("a"), Put("b", b"2"), Delete("b"), Put("c", b"3")])
    assert results == [True, False, None, True, None]
    assert (store.get("a"), store.get("b"), store.get("c")) == (None, None, b"3")


def test_a_batch_spanning_rotations_is_all_readable(open_store, shard_dir):
    store = open_store(max_file_bytes=1024)
    store.write_batch([Put(f"k{i}", b"x" * 90) for i in range(50)])
    assert len(data_sizes(shard_dir)) > 3
    assert all(store.get(f"k{i}") == b"x" * 90 for i in range(50))



def test_always_syncs_every_call_and_a_batch_once(open_store, fdatasync_calls):
    store = open_store(fsync="always")
    store.put("a", b"1")
    store.delete("a")
    assert len(fdatasync_calls) == 2
    store.write_batch([Put(f"k{i}", b"v") for i in range(100)])
    assert len(fdatasync_calls) == 3


def test_interval_syncs_once_the_interval_has_passed(shard_dir, clock, fdatasync_calls):
    monotonic = FakeClock(now_ms=0)  # the interval is timed on the monotonic clock
    store = BitcaskStore(shard_dir, StoreSettings(fsync="interval", fsync_interval_ms=100), clock=clock,
                         monotonic_clock=monotonic)
    store.put("a", b"1")
    store.put("b", b"2")
    assert fdatasync_calls == []
    store.sync_if_due()
    assert fdatasync_calls == []
    monotonic.advance(100)
    store.sync_if_due()
    assert len(fdatasync_calls) == 1
    store.sync_if_due()  # nothing new written: nothing to sync
    monotonic.advance(100)
    store.put("c", b"3")  # due at write time
    assert len(fdatasync_calls) == 2
    store.close()


def test_never_leaves_syncing_to_close(open_store, fdatasync_calls):
    store = open_store(fsync="never")
    for i in range(50):
        store.put(f"k{i}", b"v")
    assert fdatasync_calls == []
    store.close()
    assert len(fdatasync_calls) == 1


# -- bad input ------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda s: s.put(1, b"v"), TypeError, "^key must be str or bytes, not int"),
        (lambda s: s.put("k", 1.5), TypeError, "^value must be bytes or str, not float"),
        (lambda s: s.put("k", b"v", expire_at_ms="soon"), TypeError, "^expire_at_ms must be int"),
        (lambda s: s.put("k", b"v", expire_at_ms=-1), ValueError, "expire_at_ms must be between"),
        (lambda s: s.get(None), TypeError, "^key must be str or bytes"),
        (lambda s: s.delete(3), TypeError, "^key must be str or bytes"),
        (lambda s: s.put(b"k" * 65537, b"v"), LimitError, "limited to 65536 bytes"),
        (lambda s: s.put("k", b"v" * 1025), LimitError, "accepts at most 1024"),
        (lambda s: s.write_batch([Put("a", b"1"), ("b", b"2")]), TypeError, r"^ops\[1\] must be Put, Delete or Expire"),
        (lambda s: s.write_batch([Put("a", b"1"), Put("b", b"v" * 2000)]), LimitError, r"ops\[1\]\.value"),
    ],
)
def test_bad_input_is_refused_and_writes_nothing(open_store, call, error, message):
    store = open_store(max_value_bytes=1024)
    store.put("existing", b"kept")
    before = store.stats()
    with pytest.raises(error, match=message):
        call(store)
    after = store.stats()
    assert (after["data_bytes"], after["next_seq"], after["keys"]) == (
        before["data_bytes"], before["next_seq"], before["keys"])
    assert store.get("a") is None and store.get("existing") == b"kept"


def test_a_key_of_exactly_64_kib_is_accepted(open_store):
    store = open_store()
    store.put(b"k" * 65536, b"v")
    assert store.get(b"k" * 65536) == b"v"


def test_bad_settings_say_what_is_allowed():
    with pytest.raises(ValueError, match="fsync must be one of"):
        StoreSettings(fsync="sometimes")
    with pytest.raises(TypeError, match="max_file_bytes must be int"):
        StoreSettings(max_file_bytes="64MiB")
    with pytest.raises(ValueError, match="max_file_bytes must be between"):
        StoreSettings(max_file_bytes=2**33)


def test_use_after_close_is_an_error(open_store):
    store = open_store()
    store.close()
    store.close()  # idempotent
    with pytest.raises(StorageError, match="closed"):
        store.put("k", b"v")


# -- hash collisions ------------------------------------------------------------


def test_keys_with_the_same_hash_stay_distinct(monkeypatch, open_store, shard_dir):
    """The index keeps only hashes: the key in the record decides. Force every key onto 3 hashes."""
    weak_hash = lambda key: 2 + len(key) % 3  # noqa: E731
    monkeypatch.setattr(ferricd.storage.engine, "key_hash64", weak_hash)
    monkeypatch.setattr(ferricd.storage.recovery, "key_hash64", weak_hash)
    store = open_store(max_file_bytes=1024)
    expected = {}
    for i in range(200):
        store.put(f"key-{i}", f"value-{i}")
        expected[f"key-{i}".encode()] = f"value-{i}".encode()
    for i in range(0, 200, 3):
        assert store.delete(f"key-{i}")
        del expected[f"key-{i}".encode()]
    store.put("key-1", b"changed")
    expected[b"key-1"] = b"changed"
    assert {k: store.get(k) for k in expected} == expected
    assert store.get("key-0") is None
    store.close()
    for removed in [(), (SNAPSHOT_NAME,), (SNAPSHOT_NAME, ".hint")]:
        for suffix in removed:
            remove(shard_dir, suffix)
        store = open_store(max_file_bytes=1024)
        assert {k: store.get(k) for k in expected} == expected and len(store) == len(expected)
        store.close()


# -- locking --------------------------------------------------------------------


def test_a_second_opener_is_refused_with_the_holders_pid(open_store, shard_dir):
    store = open_store()
    store.put("k", b"v")
    with pytest.raises(DirectoryLockedError, match=f"in use by pid {os.getpid()}"):
        BitcaskStore(shard_dir)
    code = (
        "import sys; from ferricd.storage import BitcaskStore\n"
        "try:\n    BitcaskStore(sys.argv[1])\nexcept Exception as e:\n    print(type(e).__name__, e)"
    )
    other = subprocess.run([sys.executable, "-c", code, shard_dir], capture_output=True, text=True, timeout=60)
    assert other.stdout.startswith(f"DirectoryLockedError {shard_dir} is in use by pid {os.getpid()}")
    assert store.get("k") == b"v"  # the holder is unaffected
    store.put("k2", b"v2")
    store.close()
    with BitcaskStore(shard_dir) as again:
        assert again.get("k2") == b"v2"


def test_group_commit_shares_one_fdatasync(open_store, fdatasync_calls):
    store = open_store(fsync="always")
    with store.group_commit():
        for i in range(20):
            store.put(f"k{i}", b"v")
        store.delete("k3")
        assert fdatasync_calls == []
        assert store.get("k1") == b"v"  # visible inside the block
    assert len(fdatasync_calls) == 1


def test_scan_pages_through_every_live_key_with_a_prefix(open_store, clock):
    store = open_store()
    for i in range(250):
        store.put(f"user:{i}", b"v")
        store.put(f"other:{i}", b"v")
    store.put("user:expiring", b"v", expire_at_ms=clock() + 5)
    clock.advance(5)
    seen, cursor = [], 0
    while True:
        cursor, keys = store.scan("user:", cursor, 32)
        assert len(keys) <= 32
        seen += keys
        if cursor == 0:
            break
    assert sorted(seen) == sorted(f"user:{i}".encode() for i in range(250))
    with pytest.raises(TypeError, match="cursor"):
        store.scan("user:", -1)
