"""Recovery from damaged files: torn tails, flipped bits in data, hint and snapshot files, zero-filled tails.

Every test damages real files the engine wrote, reopens the directory, and
checks exact contents: a record the damage did not touch reads back byte for
byte, a damaged one reads as missing (or as the key's older surviving value,
as Bitcask's newest-valid-record rule gives), and no key ever reads bytes that
were never written for it. The expected state is computed from the files with
``damage.read_records``, a reader independent of the engine's.
"""

import os
import random
import shutil
from collections import defaultdict

import pytest

from ferricd.storage.records import HEADER_BYTES
from tests.storage.damage import (
    append_zeros,
    data_file_paths,
    flip_bits,
    hint_file_paths,
    hint_of,
    read_all_records,
    remove_file,
    remove_hints_and_snapshot,
    truncate_file,
    zero_range,
)

# Settings that leave hint files but no snapshot on close, so that reopening
# uses hints (or scans, once the hints are removed).
NO_SNAPSHOT = dict(fsync="never", snapshot_on_close=False)
SNAPSHOT_NAME = "keydir.snapshot"


# -- helpers -----------------------------------------------------------------------------------------


def write_history(store, rng, n_ops, n_keys, max_value, prefix="k"):
    """Apply ``n_ops`` random puts, overwrites and deletes of existing keys (so every op leaves a record)."""
    live = {}
    for _ in range(n_ops):
        key = f"{prefix}{rng.randrange(n_keys):03d}".encode()
        if key in live and rng.random() < 0.2:
            assert store.delete(key) is True
            del live[key]
        else:
            value = rng.randbytes(rng.randrange(max_value + 1))
            store.put(key, value)
            live[key] = value
    return live


def model_of(records, skip=()):
    """Key -> value that Bitcask must serve from ``records`` (in file order) when the records at
    indexes ``skip`` are lost: each key's newest surviving record decides."""
    state = {}
    for index, record in enumerate(records):
        if index in skip:
            continue
        if record.value is None:
            state.pop(record.key, None)
        else:
            state[record.key] = record.value
    return state


def versions_of(records):
    """Key -> every value ever written for it."""
    versions = defaultdict(set)
    for record in records:
        versions[record.key]  # a key only ever deleted still counts as written
        if record.value is not None:
            versions[record.key].add(record.value)
    return versions


def assert_no_foreign_values(store, versions):
    """No key reads bytes that were never written for it."""
    for key, values in versions.items():
        got = store.get(key)
        assert got is None or got in values, f"{key!r} reads bytes never written for it: {got[:40]!r}"


def assert_contents(store, expected, also_missing=()):
    """``store`` holds exactly ``expected``: same values, same key set, and every key of ``also_missing``
    that is not expected reads None."""
    for key, value in expected.items():
        assert store.get(key) == value, f"{key!r}"
    for key in also_missing:
        if key not in expected:
            assert store.get(key) is None, f"{key!r} should be missing"
    assert sorted(store.keys()) == sorted(expected)


def path_of(directory, file_id):
    return os.path.join(directory, f"{file_id:09d}.data")


def expected_damage(records, damaged, last_file_id):
    """``(truncated_bytes, corrupt_records, corrupt_bytes)`` that recovery must report for the damaged records.

    Runs of adjacent damaged records are one damaged span. A span at the end of
    the last file is a torn tail (truncated); at the end of a closed file it is
    left in place and counted; anywhere else it is skipped and counted.
    """
    by_file = defaultdict(list)
    for index, record in enumerate(records):
        by_file[record.file_id].append((index in damaged, record))
    truncated = corrupt_records = corrupt_bytes = 0
    for file_id, entries in by_file.items():
        span = 0
        for position, (is_damaged, record) in enumerate(entries):
            if is_damaged:
                span += record.length
            if span and (not is_damaged or position == len(entries) - 1):
                at_end = is_damaged
                if at_end and file_id == last_file_id:
                    truncated += span
                else:
                    corrupt_records += 1
                    corrupt_bytes += span
                span = 0
    return truncated, corrupt_records, corrupt_bytes


def write_after_recovery(store, expected, tag, versions=None):
    """New writes on a recovered store: new keys, an overwrite, a delete. Returns the new expected state
    (and adds what it wrote to ``versions``, if given)."""
    expected = dict(expected)
    for i in range(5):
        key = f"after-{tag}-{i}".encode()
        store.put(key, key * (i + 1))
        expected[key] = key * (i + 1)
    existing = sorted(k for k in expected if not k.startswith(b"after-"))
    if existing:
        store.put(existing[0], b"overwritten after recovery " + tag.encode())
        expected[existing[0]] = b"overwritten after recovery " + tag.encode()
    if len(existing) > 1:
        assert store.delete(existing[-1]) is True
        del expected[existing[-1]]
    if versions is not None:
        for key, value in expected.items():
            versions[key].add(value)
    return expected


# -- torn tail ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("last_op", ["new_key", "overwrite", "delete"])
def test_torn_last_record_at_every_offset(tmp_path, open_store, last_op):
    rng = random.Random(7)
    prepared = str(tmp_path / "prepared")
    store = open_store(prepared, max_file_bytes=2048, **NO_SNAPSHOT)
    live = write_history(store, rng, 60, 25, 120)
    store.close()
    # A second session starts a new last file: some filler records, then the record that gets torn.
    store = open_store(prepared, max_file_bytes=2048, **NO_SNAPSHOT)
    store.put(b"filler-1", rng.randbytes(40))
    store.put(b"filler-2", rng.randbytes(40))
    target = sorted(live)[3]
    if last_op == "new_key":
        target = b"last-key"
        store.put(target, rng.randbytes(60))
    elif last_op == "overwrite":
        store.put(target, rng.randbytes(60))
    else:
        assert store.delete(target) is True
    store.close()

    paths = data_file_paths(prepared)
    assert len(paths) >= 3
    remove_file(hint_of(paths[-1]))  # as after a crash: the active file has no hint
    assert not os.path.exists(os.path.join(prepared, SNAPSHOT_NAME))
    records = read_all_records(prepared)
    last = records[-1]
    assert last.key == target and (last.value is None) == (last_op == "delete")
    assert [r.key for r in records if r.file_id == last.file_id] == [b"filler-1", b"filler-2", target]
    before = model_of(records[:-1])
    assert (target in before) == (last_op != "new_key")
    written = {r.key for r in records}
    name = os.path.basename(paths[-1])

    for cut in range(last.offset, last.offset + last.length):
        directory = str(tmp_path / f"cut-{cut}")
        shutil.copytree(prepared, directory)
        victim = os.path.join(directory, name)
        truncate_file(victim, cut)

        store = open_store(directory, **NO_SNAPSHOT)
        report = store.recovery
        assert report.truncated_bytes == cut - last.offset, f"cut at {cut}"
        assert (report.files_scanned, report.hint_files_used) == (1, len(paths) - 1)
        assert (report.corrupt_records, report.invalid_hints, report.from_snapshot) == (0, 0, False)
        assert report.next_seq == max(r.seq for r in records[:-1]) + 1
        assert os.path.getsize(victim) == last.offset
        assert store.get(target) == before.get(target)
        assert_contents(store, before, written)

        after = dict(before)
        store.put(target, b"after cut %d" % cut)
        store.put(b"new-%d" % cut, b"v" * cut)
        after[target] = b"after cut %d" % cut
        after[b"new-%d" % cut] = b"v" * cut
        store.close()

        store = open_store(directory, **NO_SNAPSHOT)
        assert (store.recovery.truncated_bytes, store.recovery.files_scanned) == (0, 0)
        assert_contents(store, after, written)
        store.close()
        shutil.rmtree(directory)


# -- flipped bits in data files ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(32))
def test_random_bit_flips_in_data_records(tmp_path, open_store, seed):
    rng = random.Random(seed)
    directory = str(tmp_path / "shard")
    store = open_store(directory, max_file_bytes=8192, **NO_SNAPSHOT)
    write_history(store, rng, 300, 60, 300)
    store.close()
    remove_hints_and_snapshot(directory)  # every file is scanned
    records = read_all_records(directory)
    paths = data_file_paths(directory)
    assert len(paths) >= 4
    last_file_id = records[-1].file_id

    damaged = set(rng.sample(range(len(records)), rng.randint(1, 3)))
    # Also the places with special rules, in turn: the end of the last file (a torn tail),
    # the end of a closed file (left in place), two adjacent records (one damaged span).
    if seed % 4 == 0:
        damaged.add(len(records) - 1)
    elif seed % 4 == 1:
        closed_ends = [i for i in range(len(records) - 1) if records[i].file_id != records[i + 1].file_id]
        damaged.add(rng.choice(closed_ends))
    elif seed % 4 == 2:
        first = rng.randrange(len(records) - 1)
        damaged.update((first, first + 1))
    for index in sorted(damaged):
        record = records[index]
        offsets = rng.sample(range(record.offset, record.offset + record.length), rng.randint(1, 3))
        flip_bits(path_of(directory, record.file_id), offsets, rng)
    expected = model_of(records, skip=damaged)
    truncated, corrupt_records, corrupt_bytes = expected_damage(records, damaged, last_file_id)
    versions = versions_of(records)

    store = open_store(directory, **NO_SNAPSHOT)
    report = store.recovery
    assert_no_foreign_values(store, versions)
    assert_contents(store, expected, versions)
    assert report.files_scanned == len(paths)
    assert (report.truncated_bytes, report.corrupt_records, report.corrupt_bytes) == (
        truncated, corrupt_records, corrupt_bytes,
    ), f"damaged records {sorted(damaged)} of {len(records)}"

    expected = write_after_recovery(store, expected, f"seed{seed}", versions)
    store.close()
    store = open_store(directory, **NO_SNAPSHOT)
    assert store.recovery.files_scanned == 0  # the scan left hints behind
    assert_no_foreign_values(store, versions)
    assert_contents(store, expected, versions)


@pytest.mark.parametrize(
    "field_offset, bit", [(25, 6), (21, 6), (25, 7)], ids=["value_len+64", "key_len+64", "value_len+128"],
)
def test_damaged_length_field_does_not_hide_the_records_after_it(tmp_path, open_store, field_offset, bit):
    # Records of exactly 64 bytes: a flipped length bit can make the damaged header
    # point exactly at a later record boundary. The scan must still find the intact
    # record(s) in between.
    directory = str(tmp_path / "shard")
    store = open_store(directory, **NO_SNAPSHOT)
    values = {f"key{i:05d}".encode(): bytes([65 + i]) * (64 - HEADER_BYTES - 8) for i in range(6)}
    for key, value in values.items():
        store.put(key, value)
    store.close()
    remove_hints_and_snapshot(directory)
    records = read_all_records(directory)
    assert [r.length for r in records] == [64] * 6

    path = path_of(directory, 1)
    with open(path, "r+b") as f:  # record 1: flip one bit of one of its length fields
        f.seek(64 + field_offset)
        byte = f.read(1)[0]
        assert not byte & (1 << bit)
        f.seek(64 + field_offset)
        f.write(bytes([byte | (1 << bit)]))

    store = open_store(directory, **NO_SNAPSHOT)
    expected = dict(values)
    del expected[b"key00001"]
    assert_contents(store, expected, values)
    assert (store.recovery.corrupt_records, store.recovery.corrupt_bytes) == (1, 64)


# -- flipped bits in hint files ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_damaged_hint_file_is_rejected_and_its_data_file_scanned(tmp_path, open_store, seed):
    rng = random.Random(100 + seed)
    directory = str(tmp_path / "shard")
    store = open_store(directory, max_file_bytes=4096, **NO_SNAPSHOT)
    write_history(store, rng, 200, 50, 200)
    store.close()
    paths = data_file_paths(directory)
    hints = hint_file_paths(directory)
    assert len(hints) == len(paths) >= 3
    records = read_all_records(directory)
    expected = model_of(records)

    victim = rng.choice(hints)
    size = os.path.getsize(victim)
    # Anywhere but the trailer's last 4 bytes, which are padding outside the CRC and never read.
    flip_bits(victim, rng.sample(range(size - 4), rng.randint(1, 3)), rng)

    store = open_store(directory, **NO_SNAPSHOT)
    report = store.recovery
    assert (report.invalid_hints, report.files_scanned, report.hint_files_used) == (1, 1, len(paths) - 1)
    assert (report.truncated_bytes, report.corrupt_records, report.from_snapshot) == (0, 0, False)
    assert report.next_seq == records[-1].seq + 1
    assert_contents(store, expected, versions_of(records))
    store.close()

    store = open_store(directory, **NO_SNAPSHOT)  # the scan replaced the bad hint with a good one
    report = store.recovery
    assert (report.invalid_hints, report.files_scanned, report.hint_files_used) == (0, 0, len(paths))
    assert_contents(store, expected, versions_of(records))


# -- flipped bits in a data file whose hint is valid ----------------------------------------------------

RECORD_FIELDS = {  # name -> (start, end) inside a record, end None = to the end of the key / value
    "crc": (0, 4),
    "seq": (4, 12),
    "expire_at_ms": (12, 20),
    "flags": (20, 21),
    "value_len": (25, 29),
    "key_len": (21, 25),
    "key": "key",
    "value": "value",
}


def _hinted_store_with_damaged_record(tmp_path, open_store, field, seed):
    """A closed store whose files all have valid hints, with one bit flipped in ``field`` of the
    record of a key written exactly once. Returns (directory, records, target record)."""
    rng = random.Random(seed)
    directory = str(tmp_path / "shard")
    store = open_store(directory, max_file_bytes=4096, **NO_SNAPSHOT)
    write_history(store, rng, 150, 40, 150)
    for i in range(20):  # keys written exactly once, with non-empty values
        store.put(f"once-{i:02d}".encode(), rng.randbytes(rng.randrange(10, 100)))
    write_history(store, rng, 50, 40, 150)
    store.close()
    assert len(hint_file_paths(directory)) == len(data_file_paths(directory)) >= 3
    records = read_all_records(directory)
    target = records[[r.key for r in records].index(b"once-07")]
    key_start = target.offset + HEADER_BYTES
    value_start = key_start + len(target.key)
    span = RECORD_FIELDS[field]
    if span == "key":
        start, end = key_start, value_start
    elif span == "value":
        start, end = value_start, target.offset + target.length
    else:
        start, end = target.offset + span[0], target.offset + span[1]
    flip_bits(path_of(directory, target.file_id), [rng.randrange(start, end)], rng)
    return directory, records, target


@pytest.mark.parametrize("field", ["crc", "seq", "expire_at_ms", "flags", "value_len", "value"])
def test_damaged_record_behind_valid_hint_reads_as_missing_and_is_counted(tmp_path, open_store, field):
    directory, records, target = _hinted_store_with_damaged_record(tmp_path, open_store, field, seed=3)
    expected = model_of(records)
    versions = versions_of(records)

    store = open_store(directory, **NO_SNAPSHOT)
    assert (store.recovery.hint_files_used, store.recovery.files_scanned) == (len(data_file_paths(directory)), 0)
    assert store.get(target.key) is None
    assert store.stats()["corrupt_reads"] == 1
    assert store.get(target.key) is None  # dropped: still missing, not counted twice
    assert store.stats()["corrupt_reads"] == 1
    del expected[target.key]
    assert_no_foreign_values(store, versions)
    assert_contents(store, expected, versions)

    # The key can be written again, and the new value wins after a reopen.
    store.put(target.key, b"rewritten")
    expected[target.key] = b"rewritten"
    store.close()
    store = open_store(directory, **NO_SNAPSHOT)
    assert_contents(store, expected, versions)
    assert store.stats()["corrupt_reads"] == 0


@pytest.mark.parametrize("field", ["key_len", "key"])
def test_damaged_key_behind_valid_hint_is_detected(tmp_path, open_store, field):
    directory, records, target = _hinted_store_with_damaged_record(tmp_path, open_store, field, seed=3)
    expected = model_of(records)
    versions = versions_of(records)

    store = open_store(directory, **NO_SNAPSHOT)
    assert store.get(target.key) is None  # never wrong bytes
    del expected[target.key]
    assert_no_foreign_values(store, versions)
    for key, value in expected.items():
        assert store.get(key) == value
    # The damaged record fails its CRC like any other: it must be noticed and counted,
    # and must not make keys() list a key twice or list a key that was never written.
    assert store.stats()["corrupt_reads"] == 1
    assert sorted(store.keys()) == sorted(expected)


def test_damaged_seq_of_an_older_record_does_not_hide_a_newer_write(tmp_path, open_store):
    # v1 in file 1, v2 in file 2, both with valid hints; only v1's bytes are damaged,
    # in its seq field (a high bit). v2 is intact and acknowledged: it must win on reload.
    directory = str(tmp_path / "shard")
    store = open_store(directory, **NO_SNAPSHOT)
    store.put(b"a", b"old value")
    store.put(b"b", b"other")
    store.close()
    store = open_store(directory, **NO_SNAPSHOT)
    store.put(b"a", b"new value")
    store.close()
    assert len(hint_file_paths(directory)) == 2
    first = read_all_records(directory)[0]
    assert first.key == b"a" and first.seq == 1
    with open(path_of(directory, 1), "r+b") as f:  # seq is bytes 4..12 of the record: seq += 2**48
        f.seek(first.offset + 10)
        byte = f.read(1)[0]
        f.seek(first.offset + 10)
        f.write(bytes([byte ^ 1]))

    store = open_store(directory, **NO_SNAPSHOT)
    assert store.recovery.hint_files_used == 2
    assert store.get(b"b") == b"other"
    assert store.get(b"a") == b"new value"


# -- the key directory snapshot -----------------------------------------------------------------------------


def _store_with_snapshot(directory, open_store, rng):
    store = open_store(directory, max_file_bytes=4096, fsync="never")
    write_history(store, rng, 200, 50, 200)
    store.close()
    assert os.path.exists(os.path.join(directory, SNAPSHOT_NAME))
    return read_all_records(directory)


def test_intact_snapshot_is_used(tmp_path, open_store):
    directory = str(tmp_path / "shard")
    records = _store_with_snapshot(directory, open_store, random.Random(5))
    store = open_store(directory, fsync="never")
    assert (store.recovery.from_snapshot, store.recovery.hint_files_used, store.recovery.files_scanned) == (True, 0, 0)
    assert store.recovery.next_seq == records[-1].seq + 1
    assert_contents(store, model_of(records), versions_of(records))


@pytest.mark.parametrize("seed", range(6))
def test_damaged_snapshot_is_ignored(tmp_path, open_store, seed):
    rng = random.Random(200 + seed)
    directory = str(tmp_path / "shard")
    records = _store_with_snapshot(directory, open_store, rng)
    expected, versions = model_of(records), versions_of(records)
    snapshot = os.path.join(directory, SNAPSHOT_NAME)
    flip_bits(snapshot, rng.sample(range(os.path.getsize(snapshot)), rng.randint(1, 3)), rng)

    store = open_store(directory, fsync="never")
    report = store.recovery
    n_files = len(data_file_paths(directory))
    assert (report.from_snapshot, report.hint_files_used, report.files_scanned) == (False, n_files, 0)
    assert report.next_seq == records[-1].seq + 1
    assert not os.path.exists(snapshot)
    assert_contents(store, expected, versions)
    expected = write_after_recovery(store, expected, f"snap{seed}", versions)
    store.close()

    store = open_store(directory, fsync="never")  # a fresh snapshot from this clean close
    assert store.recovery.from_snapshot is True
    assert_contents(store, expected, versions)


def test_stale_snapshot_is_ignored_when_a_data_file_was_added(tmp_path, open_store):
    rng = random.Random(11)
    directory = str(tmp_path / "shard")
    _store_with_snapshot(directory, open_store, rng)
    snapshot = os.path.join(directory, SNAPSHOT_NAME)
    with open(snapshot, "rb") as f:
        stale = f.read()

    store = open_store(directory, max_file_bytes=4096, fsync="never", snapshot_on_close=False)
    assert store.recovery.from_snapshot is True
    assert not os.path.exists(snapshot)  # consumed before the first write
    existing = sorted(store.keys())
    store.put(existing[0], b"newer value")
    assert store.delete(existing[1]) is True
    store.put(b"newer-key", b"new")
    store.close()
    with open(snapshot, "wb") as f:  # the old snapshot comes back, e.g. restored from a backup
        f.write(stale)

    records = read_all_records(directory)
    expected = model_of(records)
    assert expected[existing[0]] == b"newer value" and existing[1] not in expected
    store = open_store(directory, fsync="never")
    report = store.recovery
    assert (report.from_snapshot, report.hint_files_used, report.files_scanned) == (
        False, len(data_file_paths(directory)), 0,
    )
    assert report.next_seq == records[-1].seq + 1
    assert_contents(store, expected, versions_of(records))


def test_stale_snapshot_is_ignored_when_the_last_data_file_was_cut(tmp_path, open_store):
    rng = random.Random(12)
    directory = str(tmp_path / "shard")
    records = _store_with_snapshot(directory, open_store, rng)
    last = records[-1]
    truncate_file(path_of(directory, last.file_id), last.offset + last.length - 5)

    store = open_store(directory, fsync="never")
    report = store.recovery
    assert (report.from_snapshot, report.invalid_hints, report.files_scanned) == (False, 1, 1)
    assert report.truncated_bytes == last.length - 5
    assert_contents(store, model_of(records[:-1]), versions_of(records))


# -- zero-filled tails -----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["appended_no_hint", "appended_stale_hint_and_snapshot", "last_record_zeroed"])
def test_zero_filled_tail_is_a_torn_tail(tmp_path, open_store, how):
    rng = random.Random(13)
    directory = str(tmp_path / "shard")
    settings = dict(fsync="never", snapshot_on_close=how == "appended_stale_hint_and_snapshot")
    store = open_store(directory, max_file_bytes=4096, **settings)
    write_history(store, rng, 120, 40, 150)
    store.close()
    records = read_all_records(directory)
    paths = data_file_paths(directory)
    last = records[-1]
    size = os.path.getsize(paths[-1])
    assert last.offset + last.length == size
    versions = versions_of(records)

    if how == "appended_no_hint":
        remove_file(hint_of(paths[-1]))
        append_zeros(paths[-1], 4096)
        expected, cut = model_of(records), 4096
    elif how == "appended_stale_hint_and_snapshot":
        append_zeros(paths[-1], 4096)
        expected, cut = model_of(records), 4096
    else:  # the file grew to its full size but the last record's bytes never reached the disk
        remove_file(hint_of(paths[-1]))
        zero_range(paths[-1], last.offset, last.length)
        expected, cut = model_of(records[:-1]), last.length

    store = open_store(directory, fsync="never", snapshot_on_close=False)
    report = store.recovery
    assert report.truncated_bytes == cut
    assert (report.corrupt_records, report.files_scanned, report.from_snapshot) == (0, 1, False)
    assert report.invalid_hints == (1 if how == "appended_stale_hint_and_snapshot" else 0)
    assert os.path.getsize(paths[-1]) == size - (cut if how == "last_record_zeroed" else 0)
    assert_no_foreign_values(store, versions)
    assert_contents(store, expected, versions)

    expected = write_after_recovery(store, expected, how, versions)
    store.close()
    store = open_store(directory, fsync="never", snapshot_on_close=False)
    assert (store.recovery.truncated_bytes, store.recovery.files_scanned) == (0, 0)
    assert_contents(store, expected, versions)
