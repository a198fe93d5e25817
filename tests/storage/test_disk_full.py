"""A full disk, simulated with RLIMIT_FSIZE in a child process (Python ignores SIGXFSZ, so writes fail with EFBIG).

Checks that a refused write raises StorageFullError with a message that tells
the user what to do, leaves the data file exactly as it was before (nothing
torn), keeps earlier data readable, lets smaller writes that fit go through,
and that a reopen without the limit finds every acknowledged write and
nothing of the refused ones.
"""

import json
import os
import subprocess
import sys

import pytest

from ferricd.storage import BitcaskStore, StoreSettings
from ferricd.storage.records import HEADER_BYTES
from tests.storage.damage import data_file_paths, hint_file_paths

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHILD_PRELUDE = r"""
import json, os, resource, sys
from ferricd.storage import BitcaskStore, StoreSettings, Put, Delete
from ferric_ipc.errors import StorageFullError

directory, limit = sys.argv[1], int(sys.argv[2])

def emit(**event):
    print(json.dumps(event), flush=True)

def size():
    names = sorted((n for n in os.listdir(directory) if n.endswith(".data")), key=lambda n: int(n[:-5]))
    return os.path.getsize(os.path.join(directory, names[-1])) if names else 0

def attempt(name, fn):
    before = size()
    try:
        result = fn()
    except StorageFullError as exc:
        emit(op=name, ok=False, error=str(exc), applied=getattr(exc, "applied", None), before=before, after=size())
        return False
    emit(op=name, ok=True, result=result, before=before, after=size())
    return True
"""

VALUE_BYTES = 1000
KEY_BYTES = len("key-00000")
RECORD = HEADER_BYTES + KEY_BYTES + VALUE_BYTES
FITTING = 50
LIMIT = FITTING * RECORD + 500  # room for 50 records, then 500 bytes: less than a record


def value_of(i):
    return (b"%05d" % i) * (VALUE_BYTES // 5)


CHILD_SINGLE = CHILD_PRELUDE + r"""
ending = sys.argv[3]
store = BitcaskStore(directory, StoreSettings(fsync="always"))
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

def value_of(i):
    return (b"%05d" % i) * 200

i = 0
while attempt(f"put key-{i:05d}", lambda: store.put(f"key-{i:05d}", value_of(i))):
    i += 1
    if i > 10000:
        raise SystemExit("the file size limit never took effect")
emit(op="read after full", mismatches=[k for k in range(i) if store.get(f"key-{k:05d}") != value_of(k)],
     refused_is_missing=store.get(f"key-{i:05d}") is None)
attempt("put small-1", lambda: store.put("small-1", b"s" * 400))
attempt("put small-2", lambda: store.put("small-2", b"t" * 400))
attempt("batch", lambda: store.write_batch([Put("batch-a", b"a" * 10), Put("batch-b", b"b" * 10)]))
attempt("delete key-00000", lambda: store.delete("key-00000"))
attempt("delete key-00001", lambda: store.delete("key-00001"))
emit(op="final read", mismatches=[k for k in range(1, i) if store.get(f"key-{k:05d}") != value_of(k)],
     small_1=store.get("small-1") == b"s" * 400, small_2=store.get("small-2"),
     batch=[store.get("batch-a"), store.get("batch-b")],
     key_00000=store.get("key-00000"))
if ending == "close":
    store.close()
    emit(op="closed")
else:
    os._exit(0)  # as if the process died right here: no close, no hint for the active file
"""

CHILD_BATCH_ACROSS_ROTATION = CHILD_PRELUDE + r"""
store = BitcaskStore(directory, StoreSettings(fsync="always", max_file_bytes=4096))
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
ops = [Put(f"b{i}", bytes([48 + i]) * 1000) for i in range(3)] + [Put("big", b"B" * (2 * limit))]
attempt("batch", lambda: store.write_batch(ops))
emit(op="read", b=[store.get(f"b{i}") == bytes([48 + i]) * 1000 for i in range(3)], big=store.get("big"))
attempt("put after", lambda: store.put("after", b"A" * 1000))
emit(op="read", after=store.get("after") == b"A" * 1000)
os._exit(0)
"""

CHILD_HINT_REFUSED = CHILD_PRELUDE + r"""
store = BitcaskStore(directory, StoreSettings(fsync="never", max_file_bytes=limit))
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
for i in range(300):  # 33-byte records: a full file's hint (33 bytes per entry plus a trailer) exceeds the limit
    attempt(f"put t{i:03d}", lambda: store.put(f"t{i:03d}", b""))
store.close()
emit(op="closed")
"""


def run_child(code, directory, *args, timeout=60):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-c", code, directory, *map(str, args)],
        capture_output=True, text=True, env=env, timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()], proc.stderr


@pytest.mark.parametrize("ending", ["close", "exit"])
def test_full_disk_refuses_the_write_cleanly_and_keeps_everything_acknowledged(tmp_path, ending):
    directory = str(tmp_path / "shard")
    events, _stderr = run_child(CHILD_SINGLE, directory, LIMIT, ending)
    by_op = {event["op"]: event for event in events}

    acknowledged = [e["op"].split()[1] for e in events if e["op"].startswith("put key-") and e["ok"]]
    assert acknowledged == [f"key-{i:05d}" for i in range(FITTING)]
    refused = events[FITTING]
    assert refused["op"] == f"put key-{FITTING:05d}" and refused["ok"] is False
    message = refused["error"]
    assert "free disk space" in message and "nothing from this write was stored" in message
    assert os.path.join(directory, "000000001.data") in message
    assert refused["applied"] == 0
    full_size = FITTING * RECORD
    assert refused["before"] == refused["after"] == full_size  # nothing torn left behind

    # Reads keep working after the error, and the refused key is not there.
    assert by_op["read after full"] == {"op": "read after full", "mismatches": [], "refused_is_missing": True}

    # A smaller write that fits goes through; one that does not fit is refused without a trace.
    small = HEADER_BYTES + len("small-1") + 400
    assert full_size + small <= LIMIT < full_size + 2 * small
    assert (by_op["put small-1"]["ok"], by_op["put small-1"]["after"]) == (True, full_size + small)
    after_small = full_size + small
    assert (by_op["put small-2"]["ok"], by_op["put small-2"]["before"], by_op["put small-2"]["after"]) == (
        False, after_small, after_small,
    )
    # The batch (92 bytes) does not fit the 64 bytes left: the partial write is undone, nothing applied.
    batch_bytes = 2 * (HEADER_BYTES + len("batch-a") + 10)
    assert after_small + batch_bytes > LIMIT
    assert (by_op["batch"]["ok"], by_op["batch"]["applied"], by_op["batch"]["after"]) == (False, 0, after_small)
    # A delete is a 38-byte tombstone: the first fits, the second does not.
    tombstone = HEADER_BYTES + KEY_BYTES
    assert after_small + tombstone <= LIMIT < after_small + 2 * tombstone
    assert (by_op["delete key-00000"]["ok"], by_op["delete key-00000"]["result"]) == (True, True)
    final_size = after_small + tombstone
    assert (by_op["delete key-00001"]["ok"], by_op["delete key-00001"]["after"]) == (False, final_size)
    assert "free disk space" in by_op["delete key-00001"]["error"]
    assert by_op["final read"] == {
        "op": "final read", "mismatches": [], "small_1": True, "small_2": None, "batch": [None, None],
        "key_00000": None,
    }
    assert ("closed" in by_op) == (ending == "close")

    # Reopen without the limit: exactly the acknowledged writes, nothing of the refused ones.
    assert not [name for name in os.listdir(directory) if name.endswith(".tmp")]
    assert [os.path.getsize(p) for p in data_file_paths(directory)] == [final_size]
    store = BitcaskStore(directory, StoreSettings(snapshot_on_close=False))
    try:
        report = store.recovery
        assert (report.truncated_bytes, report.corrupt_records, report.invalid_hints) == (0, 0, 0)
        assert report.files_scanned == (0 if ending == "close" else 1)
        expected = {f"key-{i:05d}".encode(): value_of(i) for i in range(1, FITTING)}
        expected[b"small-1"] = b"s" * 400
        for key, value in expected.items():
            assert store.get(key) == value, key
        for key in (b"key-00000", f"key-{FITTING:05d}".encode(), b"small-2", b"batch-a", b"batch-b"):
            assert store.get(key) is None, key
        assert sorted(store.keys()) == sorted(expected)
        store.put(b"after reopen", b"x" * 10_000)  # no limit now
    finally:
        store.close()
    store = BitcaskStore(directory, StoreSettings())
    try:
        assert store.get(b"after reopen") == b"x" * 10_000
        assert store.get(b"key-00001") == value_of(1)
    finally:
        store.close()


def test_full_disk_during_a_batch_that_crossed_a_rotation(tmp_path):
    # The first three puts fill file 1, which is closed (fsynced) before the big put goes to
    # file 2 and is refused: those three stay applied and the error says so (applied == 3).
    limit = 8192
    directory = str(tmp_path / "shard")
    events, _stderr = run_child(CHILD_BATCH_ACROSS_ROTATION, directory, limit)
    batch, read, after, read_after = events
    assert (batch["op"], batch["ok"], batch["applied"]) == ("batch", False, 3)
    assert "free disk space" in batch["error"]
    assert (batch["before"], batch["after"]) == (0, 0)  # file 2 cut back to empty
    assert read == {"op": "read", "b": [True, True, True], "big": None}
    assert (after["ok"], after["after"]) == (True, HEADER_BYTES + len("after") + 1000)
    assert read_after == {"op": "read", "after": True}

    store = BitcaskStore(directory, StoreSettings(snapshot_on_close=False))
    try:
        assert (store.recovery.truncated_bytes, store.recovery.corrupt_records) == (0, 0)
        expected = {f"b{i}".encode(): bytes([48 + i]) * 1000 for i in range(3)}
        expected[b"after"] = b"A" * 1000
        for key, value in expected.items():
            assert store.get(key) == value
        assert store.get(b"big") is None
        assert sorted(store.keys()) == sorted(expected)
    finally:
        store.close()


def test_hint_and_snapshot_refused_by_a_full_disk_cost_only_a_scan(tmp_path):
    limit = 4096
    directory = str(tmp_path / "shard")
    events, stderr = run_child(CHILD_HINT_REFUSED, directory, limit)
    assert [e["ok"] for e in events[:-1]] == [True] * 300 and events[-1]["op"] == "closed"
    assert "could not write hint" in stderr and "could not write key directory snapshot" in stderr
    assert not os.path.exists(os.path.join(directory, "keydir.snapshot"))
    assert not [name for name in os.listdir(directory) if name.endswith(".tmp")]
    n_files = len(data_file_paths(directory))
    assert n_files >= 3 and len(hint_file_paths(directory)) < n_files

    store = BitcaskStore(directory, StoreSettings())
    try:
        report = store.recovery
        assert (report.truncated_bytes, report.corrupt_records, report.invalid_hints) == (0, 0, 0)
        assert report.from_snapshot is False
        assert report.files_scanned >= 1 and report.files_scanned + report.hint_files_used == n_files
        assert sorted(store.keys()) == sorted(f"t{i:03d}".encode() for i in range(300))
        assert all(store.get(f"t{i:03d}") == b"" for i in range(300))
    finally:
        store.close()
