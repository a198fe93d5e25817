"""SIGKILL a writing process, repeatedly: every acknowledged write survives, every acknowledged delete stays deleted.

A child process writes with fsync="always" and a small max_file_bytes (so files
rotate) and prints a line before each operation ("B") and after it returned
("A"). The test kills it mid-stream, then opens a copy of the directory and
checks the store against the acknowledged operations. Only the one operation
that had begun but was not acknowledged may go either way, key by key (a batch
that crossed a rotation can be split). The original directory goes on to the
next round untouched, so each child recovers what the previous kill left.
"""

import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from ferricd.storage import BitcaskStore, StoreSettings

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAX_FILE_BYTES = 64 * 1024
KEY_POOL = 400

CHILD = r"""
import random, sys
from ferricd.storage import BitcaskStore, StoreSettings, Put, Delete

directory, round_no, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
store = BitcaskStore(directory, StoreSettings(fsync="always", max_file_bytes=MAX_FILE_BYTES))
r = store.recovery
print(f"READY {r.keys} {r.truncated_bytes} {r.corrupt_records}", flush=True)
live = set(k.decode() for k in store.keys())

def value_of(i, key, size):
    return (f"{round_no}.{i}.{key}." + "v" * size).encode()

i = 0
while True:
    i += 1
    roll = rng.random()
    if roll < 0.55:
        n_ops = 1
    elif roll < 0.85:
        n_ops = rng.randint(2, 8)
    else:
        n_ops = 0  # a single delete
    if n_ops == 0:
        if not live:
            continue
        key = rng.choice(sorted(live))
        print(f"B {i} D:{key}", flush=True)
        existed = store.delete(key)
        live.discard(key)
        print(f"A {i} {int(existed)}", flush=True)
        continue
    ops, text = [], []
    for _ in range(n_ops):
        key = f"k{rng.randrange(KEY_POOL):04d}"
        if key in live and rng.random() < 0.25:
            ops.append(Delete(key))
            text.append(f"D:{key}")
            live.discard(key)
        else:
            size = rng.randrange(50, 700)
            ops.append(Put(key, value_of(i, key, size)))
            text.append(f"P:{key}:{size}")
            live.add(key)
    print(f"B {i} " + ",".join(text), flush=True)
    if n_ops == 1 and isinstance(ops[0], Put):
        store.put(ops[0].key, ops[0].value)
    else:
        store.write_batch(ops)
    print(f"A {i}", flush=True)
""".replace("MAX_FILE_BYTES", str(MAX_FILE_BYTES)).replace("KEY_POOL", str(KEY_POOL))


def value_of(round_no, i, key, size):
    return (f"{round_no}.{i}.{key}." + "v" * size).encode()


def parse_ops(round_no, i, text):
    """``[(key bytes, value bytes or None)]`` of a "B" line's op list."""
    ops = []
    for item in text.split(","):
        parts = item.split(":")
        if parts[0] == "P":
            ops.append((parts[1].encode(), value_of(round_no, i, parts[1], int(parts[2]))))
        else:
            assert parts[0] == "D", item
            ops.append((parts[1].encode(), None))
    return ops


def _pump(stream, lines):
    for line in stream:
        lines.put(line)
    lines.put(None)


def run_and_kill(directory, round_no, seed, kill_after_acks, jitter_s=0.0, deadline_s=30):
    """Run the writer child until it has acknowledged ``kill_after_acks`` operations, SIGKILL it, and
    return ``(ready_line, acknowledged, in_flight)``: lists of ``(i, ops)`` in order; ``in_flight`` is
    the op that began without an acknowledgement, or None."""
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    stderr = open(os.path.join(os.path.dirname(directory), f"child-{round_no}.stderr"), "w+")
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, directory, str(round_no), str(seed)],
        stdout=subprocess.PIPE, stderr=stderr, text=True, env=env,
    )
    lines = queue.Queue()
    reader = threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True)
    reader.start()
    received, acks, finished = [], 0, False
    try:
        end = time.monotonic() + deadline_s
        while acks < kill_after_acks:
            try:
                line = lines.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                line = ""
            if time.monotonic() > end:
                pytest.fail(f"child acknowledged only {acks} operations in {deadline_s} s")
            if line == "":
                continue
            if line is None:
                finished = True
                break
            received.append(line)
            acks += line.startswith("A ")
        time.sleep(jitter_s)  # let the child run on a little: the kill lands in a different phase each round
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    reader.join(timeout=10)
    assert not reader.is_alive(), "the child's stdout did not close after SIGKILL"
    while True:  # everything the child wrote before it died
        line = lines.get_nowait() if not lines.empty() else None
        if line is None:
            break
        received.append(line)
    stderr.seek(0)
    errors = stderr.read()
    stderr.close()
    assert not finished, f"child exited on its own (rc {proc.returncode}):\n{errors}"
    assert proc.returncode == -signal.SIGKILL, errors

    assert received and received[0].startswith("READY "), f"child did not start:\n{errors}"
    acknowledged, begun = [], None
    for line in received[1:]:
        if not line.endswith("\n"):
            break  # a line cut by the kill: its operation never acknowledged
        kind, i, *rest = line.split()
        if kind == "B":
            assert begun is None, line
            begun = (int(i), parse_ops(round_no, int(i), rest[0]))
        else:
            assert kind == "A" and begun is not None and begun[0] == int(i), line
            acknowledged.append(begun)
            begun = None
    return received[0], acknowledged, begun


def check_store(store, model, in_flight):
    """``store`` holds exactly ``model`` except for the keys of ``in_flight``, each of which holds either
    its acknowledged state or the state after the in-flight op. Returns the state found (the new model)."""
    possible = {}  # key -> set of acceptable values (None = missing)
    if in_flight is not None:
        after = dict(model)
        for key, value in in_flight[1]:
            # Within one batch a key's last op decides; a split batch applies a prefix of it.
            if value is None:
                after.pop(key, None)
            else:
                after[key] = value
            possible.setdefault(key, {model.get(key)}).add(after.get(key))
    found = {}
    for n in range(KEY_POOL):
        key = f"k{n:04d}".encode()
        got = store.get(key)
        if key in possible:
            assert got in possible[key], f"{key!r}: {got!r} is neither acknowledged state nor the in-flight write"
        else:
            assert got == model.get(key), f"{key!r}: expected {model.get(key)!r}, read {got!r}"
        if got is not None:
            found[key] = got
    assert sorted(store.keys()) == sorted(found)
    return found


def test_sigkill_mid_stream_loses_no_acknowledged_write(tmp_path):
    directory = str(tmp_path / "shard")
    rng = random.Random(1234)
    model = {}  # key -> value, from acknowledged operations
    rounds = 3
    total_acks = 0
    for round_no in range(rounds):
        kill_after = rng.randrange(250, 450)
        ready, acknowledged, in_flight = run_and_kill(
            directory, round_no, seed=round_no * 7919 + 1, kill_after_acks=kill_after,
            jitter_s=rng.uniform(0, 0.02),
        )
        assert int(ready.split()[1]) == len(model), f"round {round_no}: child recovered {ready!r}, not {len(model)} keys"
        assert len(acknowledged) >= kill_after
        total_acks += len(acknowledged)
        for _i, ops in acknowledged:
            for key, value in ops:
                if value is None:
                    model.pop(key, None)
                else:
                    model[key] = value

        # Check a copy, so the original goes to the next child exactly as the kill left it.
        copy = str(tmp_path / f"check-{round_no}")
        shutil.copytree(directory, copy)
        store = BitcaskStore(copy, StoreSettings(fsync="never", snapshot_on_close=False))
        try:
            assert store.recovery.corrupt_records == 0
            assert store.recovery.files >= 2, "files never rotated: the test does not cover rotation"
            model = check_store(store, model, in_flight)
        finally:
            store.close()
        shutil.rmtree(copy)

    # Finally the original directory, after three crashes and two recoveries by children.
    store = BitcaskStore(directory, StoreSettings())
    try:
        assert store.recovery.corrupt_records == 0
        assert check_store(store, model, None) == model
        assert len(model) > 100
        store.put(b"after-all", b"ok")
    finally:
        store.close()
    store = BitcaskStore(directory, StoreSettings())
    try:
        assert store.recovery.from_snapshot is True
        assert store.get(b"after-all") == b"ok"
        assert store.delete(b"after-all") is True
        assert check_store(store, model, None) == model
    finally:
        store.close()
    assert total_acks >= 750
