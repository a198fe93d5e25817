"""Merge: live records move to new files, dead ones go, and a crash at any point of it loses nothing."""

import os
import random
import shutil
import time
import types

import pytest

from ferric_ipc.errors import StorageFullError
from ferricd.storage import BitcaskStore, Delete, Expire, Put, StoreSettings
from ferricd.storage.datafiles import data_path, hint_path, list_data_file_ids
from ferricd.storage.hints import read_hint
from ferricd.storage.merge import ABORTED, DONE, FINISHING, RETIRING
from ferricd.storage.merge_points import POINTS
from ferricd.storage.records import FLAG_BATCH_MORE, FLAG_TTL_ONLY, RecordScanner
from tests.fake_clock import FakeClock
from tests.storage.damage import flip_bits, read_all_records


def run_merge(store, budget_s=1.0, between=None):
    """Start a merge and step it to the end; ``between()`` runs after every step."""
    merge = store.start_merge()
    assert merge is not None
    while store.merge_step(budget_s):
        if between is not None:
            between()
        if merge.state in (FINISHING, RETIRING):
            time.sleep(0.0005)  # the worker thread is fsyncing or deleting
    assert merge.state == DONE, merge.error
    return merge


def records_of(directory, file_id):
    with open(data_path(directory, file_id), "rb") as f:
        return list(RecordScanner(f.read()))


def files_on_disk(directory):
    return sorted(name for name in os.listdir(directory) if name != "LOCK")


class Model:
    """What the store must hold: key -> (value, expire_at_ms), checked against reads at a clock."""

    def __init__(self, rng, clock, keys=60):
        self.rng = rng
        self.clock = clock
        self.keys = [f"key-{i:03d}".encode() for i in range(keys)]
        self.state = {}
        self.version = 0

    def live(self, now_ms):
        return {k: v for k, v in self.state.items() if not v[1] or v[1] > now_ms}

    def random_op(self, store):
        """Apply one random write to ``store`` and to the model."""
        rng, now = self.rng, self.clock()
        key = rng.choice(self.keys)
        self.version += 1
        roll = rng.random()
        if roll < 0.45:
            size = rng.randrange(70_000, 90_000) if rng.random() < 0.03 else rng.randrange(0, 300)  # some copied in parts
            value = f"{key.decode()}:{self.version}:".encode() + rng.randbytes(size)
            expire = rng.choice([0, 0, now + rng.randrange(1, 50), now + 100_000])
            store.put(key, value, expire)
            self.state[key] = (value, expire)
        elif roll < 0.6:
            existed = store.delete(key)
            assert existed == (key in self.live(now))
            self.state.pop(key, None)
        elif roll < 0.8:
            expire = rng.choice([0, now + rng.randrange(1, 50), now + 100_000])
            changed = store.set_expiry(key, expire)
            assert changed == (key in self.live(now))
            if changed:
                self.state[key] = (self.state[key][0], expire)
        else:
            ops, batch_keys = [], rng.sample(self.keys, 3)
            for batch_key in batch_keys:
                value = f"{batch_key.decode()}:{self.version}:batch".encode()
                ops.append(Put(batch_key, value))
            store.write_batch(ops, atomic=True)
            for batch_key, op in zip(batch_keys, ops):
                self.state[batch_key] = (op.value, 0)

    def check(self, store, now_ms=None):
        now_ms = self.clock() if now_ms is None else now_ms
        expected = self.live(now_ms)
        for key in self.keys:
            assert store.get_with_expiry(key) == expected.get(key), key
        assert sorted(store.keys()) == sorted(expected)


# -- what a merge keeps and drops ------------------------------------------------------


def test_merge_keeps_live_values_and_drops_overwritten_deleted_and_expired(open_store, clock, shard_dir):
    store = open_store(max_file_bytes=4096)
    for round_no in range(8):
        for i in range(40):
            store.put(f"k{i}", f"value {i} round {round_no}".encode() * 4)
    for i in range(0, 40, 4):
        store.delete(f"k{i}")
    store.put("short", b"gone soon", clock() + 10)
    store.put("long", b"stays", clock() + 100_000)
    clock.advance(20)
    before = store.stats()
    assert before["dead_bytes"] > 3 * before["live_bytes"]

    merge = run_merge(store)

    after = store.stats()
    assert after["data_bytes"] == after["live_bytes"] == before["live_bytes"] - len(b"short") - 29 - len(b"gone soon")
    assert after["dead_bytes"] == 0
    assert merge.records_copied == 31 and len(merge.outputs) >= 1
    assert not set(merge.inputs) & set(list_data_file_ids(shard_dir))
    for i in range(40):
        assert store.get(f"k{i}") == (None if i % 4 == 0 else f"value {i} round 7".encode() * 4)
    assert store.get("short") is None and store.get("long") == b"stays"
    store.close()

    reopened = BitcaskStore(shard_dir, StoreSettings(snapshot_on_close=False), clock=clock)
    try:
        assert reopened.recovery.corrupt_records == 0 and reopened.recovery.files_scanned == 0
        assert sorted(reopened.keys()) == sorted(store_keys for store_keys in
                                                  [f"k{i}".encode() for i in range(40) if i % 4] + [b"long"])
        assert reopened.get_with_expiry("long") == (b"stays", 1_700_000_100_000)
    finally:
        reopened.close()


def test_outputs_have_ids_above_every_input_and_writes_during_a_merge_go_higher(open_store):
    store = open_store(max_file_bytes=2048)
    for i in range(200):
        store.put(f"k{i % 50}", b"v" * 60)
    written_during = []

    def write():
        store.put("during", str(len(written_during)).encode())
        written_during.append(store._files.active.file_id)

    merge = run_merge(store, budget_s=0.0002, between=write)
    assert len(merge.outputs) >= 2
    assert min(merge.outputs) > max(merge.inputs)
    # Every write made after an output was opened sits in a file with a higher id than that output.
    assert written_during and max(written_during) > max(merge.outputs)
    assert store.get("during") == str(len(written_during) - 1).encode()


def test_copies_leave_atomic_batches_and_carry_the_current_expiry(open_store, clock, shard_dir):
    store = open_store()
    store.write_batch([Put("a", b"1"), Put("b", b"2"), Put("c", b"3")], atomic=True)
    store.put("c", b"3 again")  # the batch's last record is now dead, its first two live
    store.put("t", b"ttl", clock() + 1000)
    store.set_expiry("t", clock() + 5000)
    merge = run_merge(store)
    records = [rec for file_id in merge.outputs for rec in records_of(shard_dir, file_id)]
    by_key = {rec.key: rec for rec in records}
    assert sorted(by_key) == [b"a", b"b", b"c", b"t"] and len(records) == 4
    assert all(not rec.flags & (FLAG_BATCH_MORE | FLAG_TTL_ONLY) for rec in records)
    assert by_key[b"t"].expire_at_ms == clock() + 5000
    for file_id in merge.outputs:
        assert read_hint(hint_path(shard_dir, file_id), os.path.getsize(data_path(shard_dir, file_id))).count


def test_a_merge_of_nothing_but_expired_and_deleted_keys_leaves_no_files(open_store, clock, shard_dir):
    store = open_store()
    store.put("a", b"1", clock() + 10)
    store.put("b", b"2")
    store.delete("b")
    clock.advance(11)
    merge = run_merge(store)
    assert merge.outputs == [] and list_data_file_ids(shard_dir) == []
    assert store.stats()["data_bytes"] == 0
    store.put("c", b"3")  # the store goes on writing
    assert store.get("c") == b"3"


def test_start_merge_with_no_data_files_is_none(open_store):
    assert open_store().start_merge() is None


def test_merge_wanted_follows_the_dead_share_and_dead_bytes_thresholds(open_store):
    store = open_store(merge_trigger_dead_percent=50, merge_trigger_dead_bytes=10_000)
    store.put("k", b"x" * 1000)
    for _ in range(8):
        store.put("k", b"x" * 1000)  # 8 dead records of 1030 bytes: under 10 000 dead bytes
    assert not store.merge_wanted()
    for _ in range(3):
        store.put("k", b"x" * 1000)
    assert store.merge_wanted()
    for i in range(20):
        store.put(f"live{i}", b"y" * 1000)  # more live than dead now
    assert not store.merge_wanted()
    assert not open_store(os.path.join(os.path.dirname(store.directory), "other"), merge_auto=False).merge_wanted()


# -- writes while the merge runs -----------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_writes_deletes_and_ttl_changes_between_slices_keep_the_latest(tmp_path, seed):
    clock = FakeClock()
    rng = random.Random(seed)
    directory = str(tmp_path / "shard")
    model = Model(rng, clock)
    store = BitcaskStore(directory, StoreSettings(max_file_bytes=3000, snapshot_on_close=False, fsync="never"), clock=clock)
    try:
        for _ in range(600):
            model.random_op(store)
            clock.advance(rng.choice([0, 0, 1]))
        for _merge_round in range(2):
            def between():
                for _ in range(rng.randrange(0, 4)):
                    model.random_op(store)
                clock.advance(rng.choice([0, 0, 0, 2]))

            run_merge(store, budget_s=0.0001, between=between)
            model.check(store)
        stats = store.stats()
        assert stats["dead_bytes"] < stats["data_bytes"]
    finally:
        store.close()
    reopened = BitcaskStore(directory, StoreSettings(max_file_bytes=3000), clock=clock)
    try:
        assert reopened.recovery.corrupt_records == 0
        model.check(reopened)
    finally:
        reopened.close()


def test_close_during_a_merge_leaves_consistent_files(tmp_path):
    clock = FakeClock()
    rng = random.Random(7)
    directory = str(tmp_path / "shard")
    model = Model(rng, clock)
    store = BitcaskStore(directory, StoreSettings(max_file_bytes=2000, fsync="never"), clock=clock)
    for _ in range(400):
        model.random_op(store)
    merge = store.start_merge()
    for _ in range(3):
        store.merge_step(0.0001)
    store.close()
    assert merge.state in (ABORTED, DONE)
    assert not [name for name in os.listdir(directory) if name.endswith(".tmp")]
    reopened = BitcaskStore(directory, StoreSettings(), clock=clock)
    try:
        assert reopened.recovery.from_snapshot
        model.check(reopened)
    finally:
        reopened.close()


# -- a crash at each point ------------------------------------------------------------------


class CopyAtPoints:
    """A merge hook that copies the shard directory at every named point, as a crash there would leave it."""

    hook_path = "in-process"

    def __init__(self, directory, copies_dir, model):
        self.directory = directory
        self.copies_dir = copies_dir
        self.model = model
        self.copies = []  # (point, path, model state, clock ms)

    def paused(self, point):
        path = os.path.join(self.copies_dir, f"{len(self.copies):03d}-{point}")
        shutil.copytree(self.directory, path, ignore=shutil.ignore_patterns("LOCK"))
        self.copies.append((point, path, dict(self.model.state), self.model.clock()))
        return False

    def wait(self, point):
        self.paused(point)


@pytest.mark.parametrize("seed", range(3))
def test_a_crash_at_any_point_of_a_merge_loses_nothing(tmp_path, seed):
    clock = FakeClock()
    rng = random.Random(100 + seed)
    directory = str(tmp_path / "shard")
    os.makedirs(tmp_path / "copies")
    model = Model(rng, clock)
    store = BitcaskStore(directory, StoreSettings(max_file_bytes=2500, fsync="never"), clock=clock)
    try:
        for _ in range(500):
            model.random_op(store)
        points = CopyAtPoints(directory, str(tmp_path / "copies"), model)
        merge = store.start_merge(points=points)
        while store.merge_step(0.0002):
            if merge.state in (FINISHING, RETIRING):
                merge._job.wait()  # writes wait until the worker's point was copied, so each copy is exact
                continue
            for _ in range(rng.randrange(0, 3)):
                model.random_op(store)
        assert merge.state == DONE, merge.error
    finally:
        store.close()
    seen = {point for point, *_ in points.copies}
    assert seen == set(POINTS), seen
    for point, path, state, now_ms in points.copies:
        expected = {key: value for key, value in state.items() if not value[1] or value[1] > now_ms}
        copy = BitcaskStore(path, StoreSettings(), clock=FakeClock(now_ms))
        try:
            assert copy.recovery.corrupt_records == 0, point
            assert {key: copy.get_with_expiry(key) for key in model.keys if copy.get_with_expiry(key)} == expected, point
            assert not [name for name in os.listdir(path) if name.endswith(".tmp")]
        finally:
            copy.close()


def test_inputs_are_deleted_oldest_first(open_store, tmp_path, shard_dir):
    store = open_store(max_file_bytes=1024)
    for i in range(60):
        store.put(f"k{i % 7}", b"z" * 100)
    seen = {}

    class Watch:
        hook_path = "in-process"

        def paused(self, point):
            if point == "input_deleted":
                seen["files"] = list_data_file_ids(shard_dir)
            return False

        def wait(self, point):
            self.paused(point)

    merge = store.start_merge(points=Watch())
    while store.merge_step(1.0):
        time.sleep(0.001)
    assert seen["files"] == merge.inputs[1:] + merge.outputs


def test_recovery_removes_a_hint_whose_data_file_is_gone(open_store, shard_dir, clock):
    store = open_store(max_file_bytes=1024)
    for i in range(30):
        store.put(f"k{i}", b"q" * 100)
    store.close()
    orphan = hint_path(shard_dir, 999)
    shutil.copy(hint_path(shard_dir, list_data_file_ids(shard_dir)[0]), orphan)
    BitcaskStore(shard_dir, StoreSettings(), clock=clock).close()
    assert not os.path.exists(orphan)


def test_expire_ops_in_a_batch(open_store, clock, shard_dir):
    store = open_store(snapshot_on_close=False)
    assert store.write_batch([Put("a", b"1"), Expire("a", clock() + 50), Expire("missing", 5), Delete("a")],
                             atomic=True) == [None, True, False, True]
    assert store.get("a") is None
    store.write_batch([Put("b", b"2"), Expire("b", clock() + 50)])
    assert store.get_with_expiry("b") == (b"2", clock() + 50)
    store.close()
    reopened = BitcaskStore(shard_dir, StoreSettings(), clock=clock)
    try:
        assert reopened.get("a") is None and reopened.get_with_expiry("b") == (b"2", clock() + 50)
    finally:
        reopened.close()


def test_a_record_damaged_on_disk_is_not_copied_and_its_key_reads_as_missing(open_store, shard_dir):
    store = open_store(max_file_bytes=1024)
    for i in range(20):
        store.put(f"k{i}", b"v" * 100)
    store.sync()
    [damaged] = [record for record in read_all_records(shard_dir) if record.key == b"k3"]
    flip_bits(data_path(shard_dir, damaged.file_id), [damaged.offset + damaged.length - 5])
    merge = run_merge(store)
    assert merge.corrupt_records == 1 and merge.records_copied == 19
    assert store.get("k3") is None and store.get("k4") == b"v" * 100
    assert store.stats()["data_bytes"] == store.stats()["live_bytes"]


def test_a_merge_needs_room_for_the_live_bytes_it_copies(open_store, monkeypatch):
    store = open_store()
    store.put("k", b"v" * 1000)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: types.SimpleNamespace(total=10**9, used=10**9, free=100))
    with pytest.raises(StorageFullError, match="free disk space"):
        store.start_merge()
    assert not store.merging and store.get("k") == b"v" * 1000


def test_large_records_are_copied_a_part_at_a_time_and_checked(open_store, shard_dir, clock):
    store = open_store(max_file_bytes=1 << 20, snapshot_on_close=False)
    rng = random.Random(9)
    values = {f"big{i}": rng.randbytes(rng.randrange(70_000, 400_000)) for i in range(8)}
    store.write_batch([Put(key, value) for key, value in list(values.items())[:3]], atomic=True)
    for key, value in list(values.items())[3:]:
        store.put(key, value, clock() + 60_000)
    store.set_expiry("big5", clock() + 90_000)  # the copy carries the new expiry in a rewritten header
    store.put("small", b"s")
    store.sync()
    [damaged] = [record for record in read_all_records(shard_dir) if record.key == b"big6"]
    flip_bits(data_path(shard_dir, damaged.file_id), [damaged.offset + damaged.length - 100])
    merge = run_merge(store, budget_s=0.00005)
    assert merge.corrupt_records == 1 and merge.records_copied == 8
    del values["big6"]
    for key, value in values.items():
        assert store.get(key) == value, key
    assert store.get("big6") is None
    assert store.get_with_expiry("big5")[1] == clock() + 90_000
    records = [rec for file_id in merge.outputs for rec in records_of(shard_dir, file_id)]
    assert sorted(rec.key for rec in records) == sorted(key.encode() for key in [*values, "small"])
    assert all(not rec.flags & FLAG_BATCH_MORE for rec in records)
    store.close()
    reopened = BitcaskStore(shard_dir, StoreSettings(), clock=clock)
    try:
        assert reopened.recovery.corrupt_records == 0
        assert {key: reopened.get(key) for key in values} == values
        assert reopened.get_with_expiry("big5")[1] == clock() + 90_000
    finally:
        reopened.close()
