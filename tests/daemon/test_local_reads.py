"""Local reads against a real ferricd: clients reading ``run_dir/shard-K.idx`` and the data files directly.

1. A bounded stress run (``soak``): 4 writer and 4 reader processes on 64 keys while the
   tables grow and a shard is SIGKILLed; every value a reader gets must check out.
2. Read-your-writes across processes: what A had acknowledged, B reads locally, every round.
3. Fallbacks never answer wrong: unusable index files, a shard restarted under a client
   that had its table mapped, ``local_reads=False``, expired keys.
4. A Client used before ``os.fork()`` keeps working in the child.
5. Focused reproductions of bugs found while writing these (see their docstrings): a slot
   being rewritten reads as EMPTY (existing keys read as missing), a Client shared by threads
   while a table grows, and a shard killed between publishing a grown table and retiring
   the old one.

FERRIC_SOAK_SECONDS lengthens the stress run (default 12 s).
"""

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from ferric_ipc import native
from ferric_ipc.client import Client
from ferric_ipc.errors import FerricError
from ferric_ipc.index_layout import HEADER, INDEX_MAGIC, INDEX_VERSION, STATE_LIVE, STATE_RETIRED, table_bytes
from ferric_ipc.keys import key_hash64
from tests.daemon.conftest import DaemonFactory, keys_on_shard
from tests.daemon.local_reads_helpers import (
    READERS,
    WRITERS,
    Violation,
    decode_value,
    make_value,
    overwrite_main,
    pid_alive,
    reader_main,
    ryw_writer_main,
    writer_main,
)

SOAK_SECONDS = float(os.environ.get("FERRIC_SOAK_SECONDS") or 12)
SPAWN = multiprocessing.get_context("spawn")

# Small data files, so the stress run also rotates files under the readers.
STRESS_CONFIG = '[storage]\nmax_file_bytes = "256KiB"\n'


def idx_path(run_dir, shard):
    return os.path.join(run_dir, f"shard-{shard}.idx")


def wait_for_new_shard(client, shard, old_pid, timeout_s=30):
    """``hello`` of ``shard`` once a process other than ``old_pid`` answers for it."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            hello = client.hello(shard=shard)
            if hello["pid"] != old_pid:
                return hello
        except FerricError as exc:
            last = exc
        time.sleep(0.05)
    pytest.fail(f"shard {shard} did not come back within {timeout_s} s (last error: {last!r})")


def hello_retrying(client, shard, timeout_s=30):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return client.hello(shard=shard)
        except FerricError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture(scope="module")
def lr_daemon():
    """A 2-shard ferricd for this module: SIGTERM at teardown (it must exit 0).

    Whatever is left of its process group is SIGKILLed afterwards, also when a test failed.
    """
    factory = DaemonFactory()
    try:
        daemon = factory(shards=2)
        yield daemon
        code = daemon.stop()
        assert code == 0, f"ferricd exited with {code} on SIGTERM:\n{daemon.stderr()[-4000:]}"
    finally:
        factory.cleanup()


@pytest.fixture
def clients():
    """``clients(run_dir, **kwargs)`` -> a Client that is closed at teardown, whatever the test did.

    Closing matters: an unclosed Client that ends up in a reference cycle (a failing test's
    traceback makes one) hangs the interpreter in gc, in zmq's Context.__del__ -> term().
    """
    made = []

    def make(run_dir, **kwargs):
        client = Client(run_dir, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


# -- 1. stress ------------------------------------------------------------------------


def stress_keys():
    """64 keys; every fifth shares one of three {hash tags} (so several land on one shard together)."""
    return [
        (f"soak:{{grp{i % 3}}}:k{i}" if i % 5 == 0 else f"soak:k{i}").encode()
        for i in range(64)
    ]


def _burst(run_dir, start_at, end_at, total, batch, out):
    """Insert ``total`` new keys in mset batches spread over [start_at, end_at]; tolerate a restarting shard."""
    out.update(inserted=0, errors=0, capacity_samples=[], exception=None)
    client = Client(run_dir, timeout_ms=1000)
    try:
        batches = total // batch
        for b in range(batches):
            delay = start_at + (end_at - start_at) * b / batches - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            mapping = {f"burst:{b}:{i}".encode(): f"burst-{b}-{i}".encode() for i in range(batch)}
            give_up = time.monotonic() + 30
            while True:
                try:
                    client.mset(mapping)
                    break
                except FerricError:
                    out["errors"] += 1
                    if time.monotonic() > give_up:
                        raise
                    time.sleep(0.02)
            out["inserted"] += batch
            if b % 8 == 7:
                try:
                    out["capacity_samples"].append([s["index_capacity"] for s in client.info()])
                except FerricError:
                    pass
    except BaseException as exc:  # reported by the test
        out["exception"] = repr(exc)
    finally:
        client.close()


@pytest.mark.soak
@pytest.mark.timeout(int(SOAK_SECONDS * 3) + 240)
def test_stress_local_reads_never_return_a_wrong_value(make_daemon, clients):
    """4 writers, 4 local readers, a 20k-key burst that grows both tables, and SIGKILLed shards.

    Writer w owns keys k with k % 4 == w, so each key's versions are totally ordered.
    Readers may see errors while a shard restarts, never a damaged, foreign or missing value,
    nor one older than a version they saw before or than one whose set() was acknowledged
    before the read began (writers publish acknowledged versions in shared memory). At the
    end every key holds its last acknowledged version, read both ways and by the readers'
    long-lived clients.
    """
    duration = SOAK_SECONDS
    daemon = make_daemon(shards=2, config=STRESS_CONFIG)
    run_dir = daemon.run_dir
    control = clients(run_dir, timeout_ms=1000, local_reads=False)
    keys = stress_keys()
    rng = random.Random(20240611)
    control.mset({key: make_value(key, 0, rng) for key in keys})
    capacity_before = [s["index_capacity"] for s in control.info()]

    ready_q, result_q = SPAWN.Queue(), SPAWN.Queue()
    start_evt, stop_evt, verify_evt = SPAWN.Event(), SPAWN.Event(), SPAWN.Event()
    acked = SPAWN.RawArray("q", len(keys))  # per key: the newest version whose write was acknowledged
    procs = []
    burst_out, kills = {}, []
    burst_thread = None
    results = []
    try:
        for w in range(WRITERS):
            procs.append(SPAWN.Process(
                target=writer_main, name=f"writer-{w}", daemon=True,
                args=(run_dir, w, keys, acked, ready_q, start_evt, stop_evt, result_q, 1000 + w, 1000),
            ))
        for r in range(READERS):
            procs.append(SPAWN.Process(
                target=reader_main, name=f"reader-{r}", daemon=True,
                args=(run_dir, r, keys, acked, ready_q, start_evt, stop_evt, verify_evt, result_q, 2000 + r, 1000,
                      r % 2 == 1),
            ))
        for proc in procs:
            proc.start()
        deadline = time.monotonic() + 90
        ready = 0
        while ready < len(procs):
            try:
                ready_q.get(timeout=max(0.1, deadline - time.monotonic()))
                ready += 1
            except Exception:
                dead = [(p.name, p.exitcode) for p in procs if p.exitcode is not None]
                pytest.fail(f"only {ready} of {len(procs)} workers became ready; exited: {dead}")

        start_evt.set()
        t0 = time.monotonic()
        burst_thread = threading.Thread(
            target=_burst, args=(run_dir, t0 + 0.15 * duration, t0 + 0.65 * duration, 20_000, 250, burst_out),
            daemon=True,
        )
        burst_thread.start()

        kill_count = max(1, int(duration // 12))
        kill_times = [t0 + duration * (0.45 + 0.45 * j / kill_count) for j in range(kill_count)]
        for j, kill_at in enumerate(kill_times):
            time.sleep(max(0.0, kill_at - time.monotonic()))
            victim = j % 2
            before = hello_retrying(control, victim)
            os.kill(before["pid"], signal.SIGKILL)
            killed_at = time.monotonic()
            after = wait_for_new_shard(control, victim, before["pid"])
            kills.append({
                "shard": victim, "before": before, "after": after, "at_s": round(killed_at - t0, 2),
                "back_after_s": round(time.monotonic() - killed_at, 2), "old_pid_alive": pid_alive(before["pid"]),
            })

        time.sleep(max(0.0, t0 + duration - time.monotonic()))
        stop_evt.set()
        while sum(r["role"] == "writer" for r in results) < WRITERS:
            results.append(result_q.get(timeout=90))
        verify_evt.set()  # every write is acknowledged: readers now read every key once more
        while len(results) < len(procs):
            results.append(result_q.get(timeout=90))
        burst_thread.join(timeout=60)
    finally:
        stop_evt.set()
        start_evt.set()
        verify_evt.set()
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=10)

    writers = sorted((r for r in results if r["role"] == "writer"), key=lambda r: r["id"])
    readers = sorted((r for r in results if r["role"] == "reader"), key=lambda r: r["id"])
    summary = {
        "duration_s": duration,
        "readers": [{k: r.get(k) for k in ("id", "path", "calls", "reads", "local", "fallback", "errors", "violations",
                                           "kinds")}
                    for r in readers],
        "writers": [{k: r[k] for k in ("id", "writes", "errors")} for r in writers],
        "burst": {k: burst_out.get(k) for k in ("inserted", "errors", "exception")},
        "capacity_before": capacity_before,
        "capacity_samples": burst_out.get("capacity_samples"),
        "kills": [{k: kill[k] for k in ("shard", "at_s", "back_after_s")} for kill in kills],
    }
    print("\nSTRESS SUMMARY " + json.dumps(summary))

    # Nothing in any worker blew up (whether a reader ever got a wrong value is checked last,
    # so that everything else is checked too when it did).
    unexpected = [u for r in results for u in r["unexpected"]]
    assert not unexpected, "worker raised:\n" + "\n".join(unexpected)
    assert len(writers) == WRITERS and len(readers) == READERS

    # Everyone did real work, and readers were mostly served from the mapped files.
    assert all(w["writes"] > 0 for w in writers), summary["writers"]
    for r in readers:
        assert r["reads"] > 1000 and r["local"] > 0, summary["readers"]
    local = sum(r["local"] for r in readers)
    fallback = sum(r["fallback"] for r in readers)
    assert local / (local + fallback) >= 0.8, summary["readers"]
    # Odd readers stay in pure Python; the others use the C lookup where it is built.
    expected_paths = {"python"} if native.extension is None else {"C", "python"}
    assert {r["path"] for r in readers} == expected_paths, summary["readers"]

    # The burst grew both tables while the readers ran.
    assert burst_out.get("exception") is None, burst_out
    assert burst_out["inserted"] == 20_000
    capacity_after = [s["index_capacity"] for s in control.info()]
    assert all(after > before for before, after in zip(capacity_before, capacity_after)), (
        capacity_before, capacity_after)

    # Every killed shard came back as a new process with a new epoch.
    assert len(kills) == kill_count
    for kill in kills:
        assert kill["after"]["pid"] != kill["before"]["pid"], kill
        assert kill["after"]["epoch"] != kill["before"]["epoch"], kill
        assert not kill["old_pid_alive"], kill
    assert f"shard {kills[0]['shard']} died (killed by SIGKILL)" in daemon.stderr()

    # Every key holds its last acknowledged version, over ZeroMQ and from the files alike.
    expected, pending = {}, {}
    for w in writers:
        expected.update({bytes.fromhex(k): v for k, v in w["versions"].items()})
        pending.update({bytes.fromhex(k): v for k, v in w["pending"].items()})
    assert set(expected) == set(keys)
    for r in readers:  # no reader saw a version that was never written
        for key_hex, seen in r["last_seen"].items():
            key = bytes.fromhex(key_hex)
            assert seen <= max(expected[key], pending.get(key, 0)), (key, seen, expected[key])
    for r in readers:  # the readers' long-lived clients (through growth and restarts) are current
        stale = {bytes.fromhex(k): (v, expected[bytes.fromhex(k)]) for k, v in r["final"].items()
                 if v not in (expected[bytes.fromhex(k)], pending.get(bytes.fromhex(k)))}
        assert not stale, f"reader {r['id']} final read (got, expected): {stale}"

    remote = clients(run_dir, timeout_ms=5000, local_reads=False)
    local_client = clients(run_dir, timeout_ms=5000, local_reads=True)
    remote_values = remote.mget(keys)
    local_values = local_client.mget(keys)
    local_singles = [local_client.get(key) for key in keys]
    assert remote.read_counts == {"local": 0, "fallback": len(keys)}  # every read went to the daemon
    assert local_client.read_counts == {"local": 2 * len(keys), "fallback": 0}
    for key, remote_value, local_value, single in zip(keys, remote_values, local_values, local_singles):
        assert local_value == remote_value == single, key
        try:
            got_key, version = decode_value(remote_value)
        except Violation as exc:
            pytest.fail(f"final value of {key!r}: {exc}")
        assert got_key == key
        assert version in (expected[key], pending.get(key)), (key, version, expected[key], pending.get(key))
    sample = [f"burst:{b}:{i}".encode() for b in range(0, 80, 7) for i in (0, 249)]
    assert local_client.mget(sample) == remote.mget(sample) == [
        f"burst-{k.decode().split(':')[1]}-{k.decode().split(':')[2]}".encode() for k in sample
    ]
    for c in (control, remote, local_client):
        c.close()
    assert daemon.stop() == 0, daemon.stderr()[-4000:]

    # No reader ever got a wrong value: damaged, foreign, missing, older than one it had seen,
    # or older than a version acknowledged before the read started.
    samples = [s for r in readers for s in r["samples"]]
    kinds = {}
    for r in readers:
        for kind, n in r["kinds"].items():
            kinds[kind] = kinds.get(kind, 0) + n
    assert sum(r["violations"] for r in readers) == 0, (
        f"integrity violations by kind {kinds} (kills at {[k['at_s'] for k in kills]} s):\n" + "\n".join(samples))


# -- 2. read-your-writes across processes ------------------------------------------


RYW_ROUNDS = 3000
RYW_BUDGET_S = 25


def test_read_your_writes_across_processes(lr_daemon, clients):
    """A writes and waits for the acknowledgement, then tells B; B's local read sees exactly that, every round."""
    run_dir = lr_daemon.run_dir
    parent_conn, child_conn = SPAWN.Pipe()
    writer = SPAWN.Process(target=ryw_writer_main, args=(run_dir, child_conn, RYW_ROUNDS, 7, 5000), daemon=True)
    writer.start()
    child_conn.close()
    reader = clients(run_dir, timeout_ms=5000)
    reader.get(b"ryw:warm-up")  # map the tables before counting
    reader.get(b"ryw:{tag}:warm-up")
    counts_before = dict(reader.read_counts)
    reads, rounds, mismatches, stats = 0, 0, [], None
    deadline = None
    try:
        while True:
            if not parent_conn.poll(60):
                pytest.fail(f"writer process silent for 60 s after {rounds} rounds (exit code {writer.exitcode})")
            message = parent_conn.recv()
            if message[0] == "done":
                stats = message[1]
                break
            deadline = deadline or time.monotonic() + RYW_BUDGET_S
            i, key, expected, op = message
            got = reader.get(key)
            reads += 1
            if got != expected:
                mismatches.append(f"round {i} ({op}) {key!r}: expected {expected!r:.60}, got {got!r:.60}")
            if i % 5 == 0:
                got = reader.mget([key, b"ryw:absent"])
                reads += 2
                if got != [expected, None]:
                    mismatches.append(f"round {i} ({op}) mget {key!r}: {got!r:.80}")
            if i % 7 == 0:
                reads += 1
                if reader.exists(key) != (expected is not None):
                    mismatches.append(f"round {i} ({op}) exists({key!r}) wrong")
            if op == "set-ttl":
                reads += 1
                ttl = reader.pttl(key)
                if not 590_000 < ttl <= 600_000:
                    mismatches.append(f"round {i} ttl({key!r}) = {ttl}")
            elif expected is None:
                reads += 1
                if reader.pttl(key) != -2:
                    mismatches.append(f"round {i} ({op}) ttl({key!r}) != -2")
            rounds += 1
            go_on = time.monotonic() < deadline and len(mismatches) < 20
            parent_conn.send("ok" if go_on else "stop")
    finally:
        writer.join(timeout=30)
        if writer.is_alive():
            writer.kill()
            writer.join()
    assert stats["unexpected"] is None, stats["unexpected"]
    assert not mismatches, "\n".join(mismatches)
    assert rounds == stats["rounds"]
    assert rounds == RYW_ROUNDS or rounds >= 500, f"only {rounds} rounds in {RYW_BUDGET_S} s"
    local = reader.read_counts["local"] - counts_before["local"]
    fallback = reader.read_counts["fallback"] - counts_before["fallback"]
    print(f"\nRYW {rounds} rounds, {reads} reads: local {local}, fallback {fallback}")
    assert local + fallback == reads
    assert fallback <= max(3, reads // 200), (local, fallback)
    reader.close()


# -- 3. fallbacks ------------------------------------------------------------------


def _header(state=STATE_LIVE, version=INDEX_VERSION, capacity=64, magic=INDEX_MAGIC):
    return HEADER.pack(magic, version, state, 1, capacity, 0, 0)


INDEX_FILE_VARIANTS = {
    # name: writes what a client finds at run_dir/shard-0.idx (None: nothing there)
    "missing": None,
    "empty": lambda: b"",
    "garbage": lambda: b"NOTANIDX" + bytes(range(256)) * 16,
    "retired": lambda: _header(state=STATE_RETIRED) + bytes(table_bytes(64) - 64),
    "wrong_version": lambda: _header(version=INDEX_VERSION + 98) + bytes(table_bytes(64) - 64),
    "truncated_table": lambda: _header(capacity=100_000) + bytes(32 * 4),
    "short_header": lambda: INDEX_MAGIC + b"\x01\x00\x00\x00",
    "zero_capacity": lambda: _header(capacity=0),
    "directory": "dir",
}


@pytest.mark.parametrize("variant", list(INDEX_FILE_VARIANTS))
def test_unusable_index_file_falls_back_to_the_shard(lr_daemon, clients, variant):
    """(3a) shard-0.idx renamed away (and something else, or nothing, in its place): answers come over ZeroMQ, right."""
    run_dir = lr_daemon.run_dir
    writer = clients(run_dir, local_reads=False)
    key, absent = keys_on_shard(0, 2, f"fb:{variant}:")
    writer.set(key, b"v1-" + variant.encode())
    mapped_earlier = clients(run_dir)
    assert mapped_earlier.get(key) == b"v1-" + variant.encode()
    assert mapped_earlier.read_counts == {"local": 1, "fallback": 0}

    path = idx_path(run_dir, 0)
    aside = path + ".aside"
    os.rename(path, aside)
    try:
        content = INDEX_FILE_VARIANTS[variant]
        if content == "dir":
            os.mkdir(path)
        elif content is not None:
            with open(path, "wb") as f:
                f.write(content())
        fresh = clients(run_dir, timeout_ms=3000)
        v1 = b"v1-" + variant.encode()
        assert fresh.get(key) == v1
        assert fresh.get(absent) is None
        assert fresh.mget([key, absent]) == [v1, None]
        assert fresh.exists(key, absent) == 1
        assert fresh.pttl(key) == -1
        assert fresh.pttl(absent) == -2
        assert fresh.read_counts == {"local": 0, "fallback": 8}

        # A write the shard acknowledges now: the fresh client asks the shard again; so does the
        # client that mapped the table earlier, once it sees that the file at the index path is no
        # longer the one it maps (a table nobody retired must not be trusted forever).
        assert writer.set(key, b"v2") is True
        assert fresh.get(key) == b"v2"
        assert fresh.read_counts == {"local": 0, "fallback": 9}
        time.sleep(0.15)  # past the reader's path re-check interval
        assert mapped_earlier.get(key) == b"v2"
        assert mapped_earlier.read_counts == {"local": 1, "fallback": 1}
        fresh.close()
    finally:
        if os.path.isdir(path):
            os.rmdir(path)
        elif os.path.exists(path) and INDEX_FILE_VARIANTS[variant] is not None:
            os.unlink(path)
        os.rename(aside, path)
    again = clients(run_dir)
    assert again.get(key) == b"v2"
    assert again.read_counts == {"local": 1, "fallback": 0}
    for c in (writer, mapped_earlier, again):
        c.close()


@pytest.mark.parametrize("signame", ["SIGKILL", "SIGTERM"])
def test_client_mapped_before_a_shard_restart_reads_the_new_shards_writes(make_daemon, clients, signame):
    """(3b) The restarted shard retires the table the client mapped; the client's next local read is current."""
    daemon = make_daemon(shards=2)
    writer = clients(daemon.run_dir, timeout_ms=5000)
    over, doomed, kept, later = keys_on_shard(0, 4, "rs:")
    other = keys_on_shard(1, 1, "rs:other:")[0]
    for key, value in ((over, b"old"), (doomed, b"doomed"), (kept, b"kept"), (other, b"other")):
        assert writer.set(key, value) is True
    old = clients(daemon.run_dir, timeout_ms=5000)
    assert old.mget([over, doomed, kept, later, other]) == [b"old", b"doomed", b"kept", None, b"other"]
    assert old.read_counts == {"local": 5, "fallback": 0}

    before = writer.hello(shard=0)
    os.kill(before["pid"], getattr(signal, signame))
    # In the restart window the old client may wait for the shard, but never answers wrong.
    assert old.get(over) == b"old"
    assert old.get(later) is None
    after = wait_for_new_shard(writer, 0, before["pid"])
    assert after["epoch"] != before["epoch"]

    assert writer.set(over, b"new") is True
    assert writer.delete(doomed) == 1
    assert writer.set(later, b"fresh") is True
    counts = dict(old.read_counts)
    assert old.get(over) == b"new"
    assert old.get(doomed) is None
    assert old.get(later) == b"fresh"
    assert old.get(kept) == b"kept"
    assert old.get(other) == b"other"
    assert old.pttl(doomed) == -2
    assert old.mget([over, doomed, later]) == [b"new", None, b"fresh"]
    assert old.read_counts["local"] - counts["local"] == 9, "the re-opened table should answer locally"
    assert old.read_counts["fallback"] == counts["fallback"]
    for c in (writer, old):
        c.close()
    assert daemon.stop() == 0, daemon.stderr()[-4000:]


_NO_FILES_SCRIPT = textwrap.dedent("""
    import json, os, sys
    from ferric_ipc.client import Client
    run_dir, data_dir, keys = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    c = Client(run_dir, local_reads=False)
    answers = [c.get(k) is not None for k in keys] + [c.exists(*keys), c.mget(keys) is not None]
    answers += [c.pttl(k) for k in keys]
    def ours(target):
        return target.startswith(os.path.realpath(data_dir)) or target.endswith(".idx")
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the descriptor listdir itself used
            pass
    with open("/proc/self/maps") as f:
        maps = [line.split(None, 5)[-1].strip() for line in f if len(line.split()) >= 6]
    print(json.dumps({"counts": c.read_counts, "fds": [t for t in fds if ours(t)],
                      "maps": [m for m in maps if ours(m)], "answers": answers}))
""")


def test_local_reads_off_never_uses_the_files_and_agrees(lr_daemon, clients):
    """(3c) Client(local_reads=False): same answers, every read counted as sent to the daemon, no index or data file opened or mapped."""
    run_dir = lr_daemon.run_dir
    writer = clients(run_dir, local_reads=False)
    present = keys_on_shard(0, 3, "off:a:") + keys_on_shard(1, 3, "off:b:") + [b"off:{t}:x", b"off:{t}:y"]
    values = {key: key + b"=" + bytes(range(256)) * (1 + i) for i, key in enumerate(present)}
    values[b"off:big"] = os.urandom(300_000)  # spans many pages of the data file
    writer.mset(values)
    writer.set(b"off:ttl", b"expiring", ttl_ms=600_000)
    keys = list(values) + [b"off:ttl", b"off:absent:1", b"off:{t}:absent"]

    on, off = clients(run_dir), clients(run_dir, local_reads=False)
    assert [on.get(k) for k in keys] == [off.get(k) for k in keys] == [
        values.get(k, b"expiring" if k == b"off:ttl" else None) for k in keys]
    assert on.mget(keys) == off.mget(keys)
    assert on.exists(*keys) == off.exists(*keys) == len(keys) - 2
    for key in keys:
        a, b = on.pttl(key), off.pttl(key)
        assert a == b or (a > 0 and b > 0 and abs(a - b) < 5000), (key, a, b)
    assert off.read_counts == {"local": 0, "fallback": 4 * len(keys)}  # get, mget, exists and pttl of each
    assert on.read_counts["fallback"] == 0 and on.read_counts["local"] == 4 * len(keys)

    daemon_info = json.load(open(os.path.join(run_dir, "ferricd.json")))
    out = subprocess.run(
        [sys.executable, "-c", _NO_FILES_SCRIPT, run_dir, daemon_info["data_dir"],
         json.dumps([k.decode("latin-1") for k in keys])],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["counts"] == {"local": 0, "fallback": 4 * len(keys)}  # each read went to the daemon
    assert report["fds"] == [] and report["maps"] == [], report
    for c in (writer, on, off):
        c.close()


def test_expired_keys_read_as_missing_locally(lr_daemon, clients):
    """(3d) ttl_ms=200, 300 ms later: get None, ttl -2, exists 0, all answered from the files."""
    run_dir = lr_daemon.run_dir
    c = clients(run_dir)
    off = clients(run_dir, local_reads=False)
    keys = [keys_on_shard(0, 1, "exp:")[0], keys_on_shard(1, 1, "exp:")[0]]
    for key in keys:
        assert c.set(key, b"short-lived", ttl_ms=200) is True
    before = dict(c.read_counts)
    for key in keys:
        assert c.get(key) == b"short-lived"
        assert 0 < c.pttl(key) <= 200
    assert c.read_counts["local"] - before["local"] == 4
    time.sleep(0.3)
    before = dict(c.read_counts)
    for key in keys:
        assert c.get(key) is None
        assert c.pttl(key) == -2
    assert c.exists(*keys) == 0
    assert c.mget(keys) == [None, None]
    assert c.read_counts["local"] - before["local"] == 8
    assert c.read_counts["fallback"] == before["fallback"]
    assert [off.get(k) for k in keys] == [None, None]
    assert [off.pttl(k) for k in keys] == [-2, -2]
    c.close()
    off.close()


# -- 4. fork ------------------------------------------------------------------------


def test_client_used_before_fork_keeps_working_in_the_child(lr_daemon, clients):
    run_dir = lr_daemon.run_dir
    c = clients(run_dir, timeout_ms=5000)
    k0, k1 = keys_on_shard(0, 1, "fork:")[0], keys_on_shard(1, 1, "fork:")[0]
    assert c.mset({k0: b"parent-0", k1: b"parent-1"}) is True
    assert c.mget([k0, k1]) == [b"parent-0", b"parent-1"]
    assert c.read_counts["local"] == 2 and c.ping()

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        code = 1
        try:
            os.close(read_fd)
            report = {"before": list(c.read_counts.values())}
            report["inherited"] = [c.get(k0).decode(), c.get(k1).decode()]
            report["set"] = [c.set(k0, b"child-0"), c.set(k1, b"child-1")]
            report["after_set"] = [v.decode() for v in c.mget([k0, k1])]
            report["delete"] = c.delete(k1)
            report["after_delete"] = c.get(k1)
            report["counts"] = c.read_counts
            report["hello_pid"] = c.hello(shard=0)["pid"]
            c.close()
            os.write(write_fd, json.dumps(report).encode())
            code = 0
        except BaseException:
            import traceback

            os.write(write_fd, json.dumps({"error": traceback.format_exc()}).encode())
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks = []
    while True:
        chunk = os.read(read_fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    report = json.loads(b"".join(chunks) or b"{}")
    assert "error" not in report, report.get("error")
    assert os.waitstatus_to_exitcode(status) == 0, report
    assert report["inherited"] == ["parent-0", "parent-1"]
    assert report["set"] == [True, True]
    assert report["after_set"] == ["child-0", "child-1"]
    assert report["delete"] == 1 and report["after_delete"] is None
    before_local, before_fallback = report["before"]
    assert report["counts"]["local"] - before_local == 5, report  # every child read was local
    assert report["counts"]["fallback"] == before_fallback

    # The parent's client still works, and sees what the child wrote.
    assert c.mget([k0, k1]) == [b"child-0", None]
    assert c.set(k1, b"parent-again") is True
    assert c.get(k1) == b"parent-again"
    assert c.read_counts["fallback"] == 0
    c.close()


# -- 5. bug reproductions ----------------------------------------------------------


def test_client_shared_by_threads_while_a_table_grows(lr_daemon, clients):
    """Client says it is safe to share between threads; local reads must stay so while a table is replaced.

    Found failing: LocalShardReader._open (ferric_ipc/local_reads.py, _close_index) closes the
    mmap and releases the memoryview that other threads are reading in lookup(), so their get()
    raises ValueError ("mmap closed or invalid", "operation forbidden on released memoryview
    object") or TypeError ('NoneType' object is not subscriptable) instead of answering.
    """
    run_dir = lr_daemon.run_dir
    writer = clients(run_dir, local_reads=False)
    keys = [f"thr:{i}".encode() for i in range(32)]
    writer.mset({key: key * 20 for key in keys})
    shared = clients(run_dir, timeout_ms=5000)
    assert shared.mget(keys) == [key * 20 for key in keys]
    stop = threading.Event()
    errors, wrong, reads = [], [], [0]

    def read_loop():
        while not stop.is_set():
            for key in keys:
                try:
                    value = shared.get(key)
                except Exception as exc:  # noqa: BLE001 - anything raised here is the bug
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                reads[0] += 1
                if value != key * 20:
                    wrong.append((key, value))

    threads = [threading.Thread(target=read_loop, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for b in range(60):  # about 30 growths of each table
            writer.mset({f"thr:grow:{b}:{i}".encode(): b"g" for i in range(250)})
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not wrong, wrong[:5]
    distinct = sorted(set(errors))
    assert not errors, f"{len(errors)} of {len(errors) + reads[0]} threaded local reads raised: {distinct[:5]}"
    writer.close()
    shared.close()


def test_a_slot_being_rewritten_never_reads_as_empty(make_daemon, clients):
    """While one process overwrites key A, local reads of A, and of a key B nobody writes, never say "missing".

    A and B share their home slot, so B sits after A in the probe chain and every lookup of B
    walks over A's slot. Found failing: ShardIndex._write_slot (ferricd/storage/index.py) rewrites a
    slot with SLOT_BODY.pack_into, and CPython's struct pack_into first memsets the whole
    body to zero, so the key_hash word is briefly 0 (EMPTY). LocalShardReader.lookup
    (ferric_ipc/local_reads.py) reads hash words outside the seqlock and takes that EMPTY as
    the end of the chain (MISSING); _read_slot also returns "another key" for a changed hash
    before re-checking the seq. Both keys then read as missing (get None, exists 0, ttl -2).
    """
    daemon = make_daemon(shards=1)
    run_dir = daemon.run_dir
    control = clients(run_dir, local_reads=False)
    capacity = control.info()[0]["index_capacity"]  # a fresh table: nothing else in it
    by_home = {}
    i = 0
    while True:
        key = f"slot:{i}".encode()
        home = key_hash64(key) % capacity
        if home in by_home:
            key_a, key_b = by_home[home], key
            break
        by_home[home] = key
        i += 1
    assert control.set(key_a, b"a") is True
    assert control.set(key_b, b"b-never-rewritten") is True
    assert control.info()[0]["index_capacity"] == capacity

    reader = clients(run_dir)
    ready_q, result_q, stop_evt = SPAWN.Queue(), SPAWN.Queue(), SPAWN.Event()
    writer = SPAWN.Process(target=overwrite_main, args=(run_dir, key_a, ready_q, stop_evt, result_q, 5000), daemon=True)
    writer.start()
    missing_a = missing_b = reads = 0
    try:
        ready_q.get(timeout=60)
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline and missing_a + missing_b < 50:
            if reader.get(key_a) is None:
                missing_a += 1
            if reader.get(key_b) is None:
                missing_b += 1
            reads += 2
        stop_evt.set()
        result = result_q.get(timeout=60)
    finally:
        stop_evt.set()
        writer.join(timeout=30)
        if writer.is_alive():
            writer.kill()
            writer.join()
    assert result["unexpected"] is None, result["unexpected"]
    assert result["writes"] > 100, result
    assert reader.read_counts["local"] > reads // 2
    assert (missing_a, missing_b) == (0, 0), (
        f"{missing_a} reads of {key_a!r} (being overwritten) and {missing_b} of {key_b!r} (untouched) "
        f"returned None, in {reads} local reads during {result['writes']} overwrites")


_DIE_AFTER_PUBLISH = textwrap.dedent("""
    # Installed via PYTHONPATH by test_local_reads.py: once armed, the first shard to grow its
    # published table dies (SIGKILL) inside IndexFiles.replace, between its two steps (retiring
    # the old table and publishing the new one), whichever order the implementation uses.
    import os
    import signal

    _marker = os.environ.get("FERRIC_TEST_DIE_AFTER_PUBLISH")
    if _marker:
        import ferricd.storage.index_file as _index_file

        _replace = _index_file.IndexFiles.replace
        _publish = _index_file.IndexFiles.publish
        _retire = _index_file._mark_retired
        _steps = []

        def _step(name):
            _steps.append(name)
            if len(_steps) == 2:  # the second step is about to run: die before it
                open(_marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)

        def replace(self, old, new):
            if self.published is old and os.path.exists(_marker + ".armed") and not os.path.exists(_marker):
                _steps.clear()
                _index_file.IndexFiles.publish = lambda self_, buf: (_step("publish"), _publish(self_, buf))[1]
                _index_file._mark_retired = lambda buf: (_step("retire"), _retire(buf))[1]
            return _replace(self, old, new)

        _index_file.IndexFiles.replace = replace
""")


def test_shard_killed_between_publishing_a_grown_table_and_retiring_the_old_one(make_daemon, clients):
    """A client whose mapped table was never retired must still not read past an acknowledged write.

    IndexFiles.replace retires the old table and publishes the new one. Publishing first would
    leave, after a crash between the two, the old table LIVE in every client that had it mapped
    while the restarted shard's retire_previous() retires only the file now at shard-K.idx: a
    stale value after an acknowledged write, forever. The shard is killed between the two steps
    by a sitecustomize hook (SIGKILL, as a crash would).
    """
    factory_dir = make_daemon.tempdir()
    hook_dir = os.path.join(factory_dir, "hook")
    os.mkdir(hook_dir)
    with open(os.path.join(hook_dir, "sitecustomize.py"), "w") as f:
        f.write(_DIE_AFTER_PUBLISH)
    marker = os.path.join(factory_dir, "died")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (hook_dir, env.get("PYTHONPATH")) if p)
    env["FERRIC_TEST_DIE_AFTER_PUBLISH"] = marker
    daemon = make_daemon(shards=2, env=env)

    writer = clients(daemon.run_dir, timeout_ms=5000)
    victim = keys_on_shard(0, 1, "mid:victim:")[0]
    assert writer.set(victim, b"before") is True
    old = clients(daemon.run_dir, timeout_ms=5000)
    assert old.get(victim) == b"before"
    assert old.read_counts == {"local": 1, "fallback": 0}
    before = writer.hello(shard=0)

    open(marker + ".armed", "w").close()
    filler = clients(daemon.run_dir, timeout_ms=500)
    for key in keys_on_shard(0, 400, "mid:fill:"):
        try:
            filler.set(key, b"x")
        except FerricError:
            pass
        if os.path.exists(marker):
            break
    assert os.path.exists(marker), "the shard never grew its table"
    after = wait_for_new_shard(writer, 0, before["pid"])
    assert after["epoch"] != before["epoch"]

    assert writer.set(victim, b"after") is True  # acknowledged by the restarted shard
    assert clients(daemon.run_dir, local_reads=False).get(victim) == b"after"
    assert clients(daemon.run_dir).get(victim) == b"after"  # a fresh client maps the new table
    assert old.get(victim) == b"after", (
        f"stale local read: the table this client mapped was never retired (read_counts {old.read_counts})")
    for c in (writer, old, filler):
        c.close()
    assert daemon.stop() == 0, daemon.stderr()[-4000:]
