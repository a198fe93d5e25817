"""check_shard: a read-only verification that finds damage without changing a byte."""

import hashlib
import os

import pytest

from ferricd.ctl import main as ferricctl
from ferricd.storage.check import check_shard
from ferricd.storage.errors import DirectoryLockedError
from tests.storage.damage import flip_bits


def fingerprint(directory):
    return {
        name: hashlib.sha256(open(os.path.join(directory, name), "rb").read()).hexdigest()
        for name in sorted(os.listdir(directory)) if name != "LOCK"
    }


def test_a_clean_directory_checks_ok_and_is_left_as_it_was(open_store, shard_dir):
    store = open_store(max_file_bytes=1024)
    for i in range(60):
        store.put(f"k{i}", b"v" * 40)
    store.delete("k1")
    store.close()
    before = fingerprint(shard_dir)
    report = check_shard(shard_dir)
    assert report.ok, report
    assert (report.records, report.tombstones, report.keys) == (61, 1, 60)
    assert report.hints_valid == report.files > 1 and report.snapshot == "valid"
    assert fingerprint(shard_dir) == before


def test_damage_is_reported_and_nothing_is_repaired(open_store, shard_dir, capsys):
    store = open_store(max_file_bytes=1024)
    for i in range(60):
        store.put(f"k{i}", b"v" * 40)
    store.close()
    first = os.path.join(shard_dir, "000000001.data")
    flip_bits(first, [100])
    flip_bits(os.path.join(shard_dir, "000000002.hint"), [3])
    before = fingerprint(shard_dir)
    report = check_shard(shard_dir)
    assert not report.ok
    assert report.corrupt_records == 1 and report.hints_invalid == 1
    assert fingerprint(shard_dir) == before
    assert ferricctl(["check", os.path.dirname(shard_dir)]) == 1
    assert "DAMAGED" in capsys.readouterr().out


def test_an_open_directory_is_refused(open_store, shard_dir):
    open_store().put("k", b"v")
    with pytest.raises(DirectoryLockedError, match="in use by pid"):
        check_shard(shard_dir)
